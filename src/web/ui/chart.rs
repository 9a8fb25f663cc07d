//! Charts as inline SVG, drawn on the server: a line chart with axes, units and a legend that
//! also says the latest values in words, and the overview's sparklines. No script draws
//! anything; a page with its charts is complete as sent.
//!
//! Pure functions of the points they are given: no store, no HTTP.

use maud::{Markup, html};

/// What a chart's values are, for its axis labels and legend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unit {
    /// 0–100; the axis always spans it all.
    Percent,
    Bytes,
    BytesPerSecond,
    /// A plain number (load).
    Number,
    /// Milliseconds (request time, latency): "12 ms", "1.50 s".
    Millis,
    /// Events per second (requests): "4.50/s".
    PerSecond,
}

impl Unit {
    /// `value` for people: "42 %", "1.5 GiB", "320 KiB/s", "0.75".
    pub fn format(self, value: f64) -> String {
        match self {
            Unit::Percent => format!("{value:.0} %"),
            Unit::Bytes => binary(value),
            Unit::BytesPerSecond => format!("{}/s", binary(value)),
            Unit::Number => plain(value),
            Unit::Millis if value.abs() >= 1000.0 => format!("{:.2} s", value / 1000.0),
            Unit::Millis => format!("{} ms", plain(value)),
            Unit::PerSecond => format!("{}/s", plain(value)),
        }
    }
}

/// A number with two decimals, or none from 100 up.
fn plain(value: f64) -> String {
    if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

/// Bytes with a binary prefix, three significant figures or so.
fn binary(value: f64) -> String {
    const PREFIXES: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = value;
    let mut i = 0;
    while v.abs() >= 1024.0 && i + 1 < PREFIXES.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 || v.abs() >= 100.0 {
        format!("{v:.0} {}", PREFIXES[i])
    } else if v.abs() >= 10.0 {
        format!("{v:.1} {}", PREFIXES[i])
    } else {
        format!("{v:.2} {}", PREFIXES[i])
    }
}

/// One line of a chart.
pub struct Line {
    pub label: String,
    /// (ms since the epoch, value), oldest first.
    pub points: Vec<(i64, f64)>,
}

/// Line colours, told apart by the legend's text as well (a chart is readable without them).
const COLOURS: [&str; 8] = [
    "#0969da", "#cf222e", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#1b7c83", "#57606a",
];

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 200.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 24.0;

/// The top of the value axis: 100 for percentages, else a round number at or above `max`
/// (1, 2 or 5 times a power of ten; for bytes a power of 1024 times 1, 2, 4 or 8).
fn axis_top(unit: Unit, max: f64) -> f64 {
    if unit == Unit::Percent {
        return 100.0;
    }
    let floor = match unit {
        // Nothing swapped is "0 B of 1 KiB", not three labels of "0 B".
        Unit::Bytes | Unit::BytesPerSecond => 1024.0,
        _ => 1.0,
    };
    if max.is_nan() || max <= 0.0 || !max.is_finite() {
        return floor;
    }
    let (base, steps): (f64, &[f64]) = match unit {
        Unit::Bytes | Unit::BytesPerSecond if max >= 1024.0 => (
            1024f64.powi(max.log(1024.0).floor() as i32),
            &[
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
            ],
        ),
        _ => (
            10f64.powi(max.log10().floor() as i32),
            &[1.0, 2.0, 5.0, 10.0],
        ),
    };
    steps
        .iter()
        .map(|s| s * base)
        .find(|top| *top >= max)
        .unwrap_or(max)
        .max(floor)
}

/// A time on the axis: the hour and minute within a day, the day and hour beyond (UTC).
fn axis_time(ms: i64, span_ms: i64) -> String {
    let t = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms).unwrap_or_default();
    if span_ms > 36 * 3_600_000 {
        t.format("%a %H:%M").to_string()
    } else {
        t.format("%H:%M").to_string()
    }
}

/// A value drawn across a chart as a dashed line: a plugin's warning or critical threshold.
pub struct Threshold {
    /// `warn` or `crit`: the line's class and colour.
    pub class: &'static str,
    pub label: String,
    pub value: f64,
}

/// What a line chart draws.
pub struct Chart<'a> {
    /// The figure's element id: what the live stream replaces.
    pub id: &'a str,
    pub title: &'a str,
    pub unit: Unit,
    /// The metric names drawn, space-separated (`data-metric`): says which series are where.
    pub metrics: &'a str,
    pub from_ms: i64,
    pub to_ms: i64,
    /// A gap in the points longer than this breaks the line (the node sent nothing then), so
    /// an outage shows as a gap rather than a straight line across it.
    pub gap_ms: i64,
    pub lines: &'a [Line],
    pub thresholds: &'a [Threshold],
}

/// A line chart of `lines` over `[from_ms, to_ms]`, with the value axis in `unit`; without
/// any point, one line of text instead.
pub fn line_chart(c: &Chart) -> Markup {
    let Chart {
        id,
        title,
        unit,
        metrics,
        from_ms,
        to_ms,
        gap_ms,
        lines,
        thresholds,
    } = *c;
    let span = (to_ms - from_ms).max(1);
    let max = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .chain(thresholds.iter().map(|t| t.value))
        .fold(0.0_f64, f64::max);
    let top = axis_top(unit, max);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |ms: i64| LEFT + (ms - from_ms) as f64 / span as f64 * plot_w;
    let y = |v: f64| TOP + plot_h - (v / top).clamp(0.0, 1.0) * plot_h;
    let path_of = |points: &[(i64, f64)]| {
        let mut d = String::with_capacity(points.len() * 16);
        let mut previous: Option<i64> = None;
        for &(ts, v) in points {
            let command = match previous {
                Some(p) if ts - p <= gap_ms => 'L',
                _ => 'M',
            };
            d.push_str(&format!("{command}{:.1} {:.1}", x(ts), y(v)));
            previous = Some(ts);
        }
        d
    };
    let any_points = lines.iter().any(|l| !l.points.is_empty());
    let x_ticks: Vec<i64> = (0..=4).map(|i| from_ms + span * i / 4).collect();
    let y_ticks = [0.0, top / 2.0, top];
    html! {
        figure.chart id=(id) data-metric=(metrics) {
            figcaption { strong { (title) } }
            @if !any_points {
                p.muted.empty { "No " (title.to_lowercase()) " data in this range." }
            } @else {
                svg viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } role="img"
                    aria-label={ (title) ", " (axis_time(from_ms, span)) " to " (axis_time(to_ms, span)) " UTC" }
                    preserveAspectRatio="none" {
                    @for v in y_ticks {
                        line x1=(LEFT) x2=(WIDTH - RIGHT) y1=(y(v)) y2=(y(v)) stroke="#d0d7de" stroke-width="1" {}
                        text x=(LEFT - 6.0) y=(y(v) + 4.0) text-anchor="end" font-size="11" fill="#57606a" { (unit.format(v)) }
                    }
                    @for t in &x_ticks {
                        line x1=(x(*t)) x2=(x(*t)) y1=(TOP + plot_h) y2=(TOP + plot_h + 4.0) stroke="#8c959f" {}
                        text x=(x(*t)) y=(HEIGHT - 6.0)
                            text-anchor=(if *t == from_ms { "start" } else if *t == to_ms { "end" } else { "middle" })
                            font-size="11" fill="#57606a" { (axis_time(*t, span)) }
                    }
                    @for t in thresholds {
                        line class=(t.class) x1=(LEFT) x2=(WIDTH - RIGHT) y1=(y(t.value)) y2=(y(t.value))
                            stroke=(if t.class == "crit" { "#cf222e" } else { "#9a6700" })
                            stroke-dasharray="6 4" vector-effect="non-scaling-stroke" {
                            title { (t.label) ": " (unit.format(t.value)) }
                        }
                    }
                    @for (i, l) in lines.iter().enumerate() {
                        path d=(path_of(&l.points)) fill="none" stroke=(COLOURS[i % COLOURS.len()])
                            stroke-width="1.5" vector-effect="non-scaling-stroke" {
                            title { (l.label) }
                        }
                    }
                }
                ul.legend {
                    @for (i, l) in lines.iter().enumerate() {
                        li {
                            // A square drawn in the line's colour with SVG's `fill`, which
                            // is an attribute, not a style: the CSP allows no inline style.
                            svg.swatch viewBox="0 0 1 1" aria-hidden="true" {
                                rect width="1" height="1" fill=(COLOURS[i % COLOURS.len()]) {}
                            }
                            (l.label) ": "
                            @match l.points.last() {
                                Some((_, v)) => {
                                    strong { (unit.format(*v)) } " now"
                                    @let (lo, hi) = l.points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
                                    span.muted { " (" (unit.format(lo)) " – " (unit.format(hi)) ")" }
                                }
                                None => span.muted { "no data" },
                            }
                        }
                    }
                }
                @if !thresholds.is_empty() {
                    p.muted.axis-note {
                        "Dashed: "
                        @for (i, t) in thresholds.iter().enumerate() {
                            @if i > 0 { ", " }
                            (t.label) " " (unit.format(t.value))
                        }
                        "."
                    }
                }
                p.muted.axis-note { "Times in UTC." }
            }
        }
    }
}

/// A state of a strip: its class (`state-up`, `state-warning`, …), word and fill colour.
pub struct StripState {
    pub class: &'static str,
    pub word: &'static str,
    pub fill: &'static str,
}

/// A history strip: the state over `[from_ms, to_ms]` as coloured stretches, one per run of
/// equal states (`state_of` names a value's state); nothing where no point came for longer
/// than `gap_ms`. Each stretch says its state and times on hover.
pub fn strip(
    points: &[(i64, f64)],
    from_ms: i64,
    to_ms: i64,
    gap_ms: i64,
    state_of: impl Fn(f64) -> StripState,
    label: &str,
) -> Markup {
    const W: f64 = 120.0;
    const H: f64 = 12.0;
    let span = (to_ms - from_ms).max(1) as f64;
    let x = |ms: i64| ((ms - from_ms) as f64 / span * W).clamp(0.0, W);
    // Runs of one state: (start, end, value).
    let mut runs: Vec<(i64, i64, f64)> = Vec::new();
    for (i, &(ts, v)) in points.iter().enumerate() {
        let next = points.get(i + 1).map(|p| p.0);
        let end = match next {
            Some(n) if n - ts <= gap_ms => n,
            Some(_) => ts + gap_ms / 3,
            None => (ts + gap_ms / 3).min(to_ms).max(ts),
        };
        match runs.last_mut() {
            Some(last) if last.1 == ts && state_of(last.2).class == state_of(v).class => {
                last.1 = end
            }
            _ => runs.push((ts, end, v)),
        }
    }
    html! {
        svg.strip viewBox={ "0 0 " (W) " " (H) } preserveAspectRatio="none" role="img"
            aria-label={ (label) " over the range" } {
            rect width=(W) height=(H) fill="#f6f8fa" {}
            @for (start, end, v) in &runs {
                @let state = state_of(*v);
                rect class=(state.class) x=(x(*start)) width=((x(*end) - x(*start)).max(0.5)) height=(H)
                    fill=(state.fill) {
                    title { (state.word) ", " (crate::timefmt::rfc3339(*start)) " to " (crate::timefmt::rfc3339(*end)) }
                }
            }
        }
    }
}

/// A sparkline: one line over `[from_ms, to_ms]` on a 0–`top` scale, as a standalone SVG
/// document (the overview loads it as an image, lazily, so a page of 1,000 nodes does not wait
/// for 2,000 series).
pub fn sparkline(points: &[(i64, f64)], from_ms: i64, to_ms: i64, top: f64, gap_ms: i64) -> String {
    const W: f64 = 80.0;
    const H: f64 = 20.0;
    let span = (to_ms - from_ms).max(1) as f64;
    let mut d = String::new();
    let mut previous: Option<i64> = None;
    for &(ts, v) in points {
        let command = match previous {
            Some(p) if ts - p <= gap_ms => 'L',
            _ => 'M',
        };
        let px = (ts - from_ms) as f64 / span * W;
        let py = H - 1.0 - (v / top).clamp(0.0, 1.0) * (H - 2.0);
        d.push_str(&format!("{command}{px:.1} {py:.1}"));
        previous = Some(ts);
    }
    html! {
        svg xmlns="http://www.w3.org/2000/svg" viewBox={ "0 0 " (W) " " (H) } width=(W) height=(H) {
            line x1="0" x2=(W) y1=(H - 0.5) y2=(H - 0.5) stroke="#d0d7de" stroke-width="1" {}
            @if !d.is_empty() {
                path d=(d) fill="none" stroke="#0969da" stroke-width="1.2" {}
            }
        }
    }
    .into_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart<'a>(id: &'a str, title: &'a str, unit: Unit, lines: &'a [Line]) -> Chart<'a> {
        Chart {
            id,
            title,
            unit,
            metrics: "m",
            from_ms: 0,
            to_ms: 100,
            gap_ms: 15,
            lines,
            thresholds: &[],
        }
    }

    #[test]
    fn thresholds_are_dashed_lines_within_the_axis() {
        let lines = [Line {
            label: "load".into(),
            points: vec![(0, 1.0), (10, 2.0)],
        }];
        let thresholds = [Threshold {
            class: "crit",
            label: "load critical".into(),
            value: 10.0,
        }];
        let html = line_chart(&Chart {
            thresholds: &thresholds,
            ..chart("p", "Load", Unit::Number, &lines)
        })
        .into_string();
        assert!(html.contains("<line class=\"crit\""), "{html}");
        assert!(html.contains("load critical 10.00"), "{html}");
        assert!(html.contains("data-metric=\"m\""), "{html}");
    }

    #[test]
    fn a_strip_draws_one_stretch_per_run_of_a_state() {
        let state = |v: f64| StripState {
            class: if v > 0.5 { "state-up" } else { "state-down" },
            word: if v > 0.5 { "up" } else { "down" },
            fill: "#000",
        };
        let points = [(0, 1.0), (10, 1.0), (20, 0.0), (30, 0.0), (40, 1.0)];
        let html = strip(&points, 0, 50, 15, state, "web").into_string();
        assert_eq!(html.matches("class=\"state-up\"").count(), 2, "{html}");
        assert_eq!(html.matches("class=\"state-down\"").count(), 1, "{html}");
    }

    #[test]
    fn units_read_as_people_write_them() {
        assert_eq!(Unit::Percent.format(42.4), "42 %");
        assert_eq!(Unit::Bytes.format(512.0), "512 B");
        assert_eq!(Unit::Bytes.format(1536.0), "1.50 KiB");
        assert_eq!(
            Unit::Bytes.format(3.0 * 1024.0 * 1024.0 * 1024.0),
            "3.00 GiB"
        );
        assert_eq!(Unit::BytesPerSecond.format(20.0 * 1024.0), "20.0 KiB/s");
        assert_eq!(Unit::Number.format(0.756), "0.76");
    }

    #[test]
    fn the_axis_ends_on_a_round_number_at_or_above_the_largest_value() {
        assert_eq!(axis_top(Unit::Percent, 12.0), 100.0);
        assert_eq!(axis_top(Unit::Number, 0.0), 1.0);
        assert_eq!(axis_top(Unit::Number, 0.7), 1.0);
        assert_eq!(axis_top(Unit::Number, 3.2), 5.0);
        assert_eq!(axis_top(Unit::Number, 12.0), 20.0);
        assert_eq!(
            axis_top(Unit::Bytes, 3.0 * 1024.0 * 1024.0),
            4.0 * 1024.0 * 1024.0
        );
        assert_eq!(axis_top(Unit::Bytes, 900.0), 1024.0);
        assert_eq!(axis_top(Unit::Bytes, 0.0), 1024.0);
        assert_eq!(
            Unit::Bytes.format(axis_top(Unit::Bytes, 0.0) / 2.0),
            "512 B"
        );
    }

    #[test]
    fn a_gap_longer_than_allowed_breaks_the_line() {
        let lines = [Line {
            label: "cpu".into(),
            points: vec![(0, 10.0), (10, 20.0), (100, 30.0)],
        }];
        let svg = line_chart(&chart("c", "CPU", Unit::Percent, &lines)).into_string();
        let d = svg
            .split(" d=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(d.matches('M').count(), 2, "{d}");
        assert_eq!(d.matches('L').count(), 1, "{d}");
        assert!(
            svg.contains("30 %"),
            "the legend says the latest value: {svg}"
        );
    }

    #[test]
    fn a_chart_without_points_says_so_in_words() {
        let lines = [Line {
            label: "swap".into(),
            points: vec![],
        }];
        let html = line_chart(&chart("s", "Swap", Unit::Bytes, &lines)).into_string();
        assert!(html.contains("No swap data in this range."), "{html}");
        assert!(!html.contains("<svg"), "{html}");
    }

    #[test]
    fn labels_are_escaped_in_the_svg() {
        let lines = [Line {
            label: "<script>x</script>".into(),
            points: vec![(0, 1.0)],
        }];
        let html = line_chart(&chart("n", "Network", Unit::Number, &lines)).into_string();
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
    }
}
