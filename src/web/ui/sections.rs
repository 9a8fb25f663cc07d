//! The node page's data sections, gathered from the stores: the host charts, web traffic per
//! vhost, checks and plugins, top processes, shipped log lines, the apps' records, and a chart
//! for every other series, so that everything a node reports is shown somewhere. The page and
//! its live stream both render them here (the stream re-renders the sections whose collectors
//! sent something), so what a reload shows and what the stream sends are the same.
//!
//! Reads only; one thinned read per collector whatever the number of charts drawn from it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use maud::Markup;
use serde_json::Value;

use super::chart::{Chart, Line, StripState, Threshold, Unit};
use super::node::Range;
use super::pages::sections as render;
use crate::model::{is_agent_collector, metric};
use crate::store::durable::{Resolution, Series};
use crate::web::AppState;
use crate::web::error::ApiError;

/// Points per chart line at most: about one per two pixels of a chart's width.
pub const CHART_POINTS: i64 = 300;
/// Lines on one chart at most (a host with 40 interfaces shows the first eight by name).
const LINES_MAX: usize = 8;
/// Log lines the page shows, newest first.
pub const LOG_LINES: usize = 50;
/// Records read from a `check` or `plugin` ring to find each item's newest.
const ITEM_RECORDS: usize = 400;
/// App collectors shown at most.
const APPS_MAX: usize = 16;

/// What a page asked for: the range, the vhost of its traffic charts, its log filter.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub range: Range,
    pub vhost: Option<String>,
    pub lines: Option<String>,
}

/// A section of the node page: its element id is what the live stream replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Section {
    Host,
    Traffic,
    Checks,
    Processes,
    Lines,
    Apps,
    Other,
}

impl Section {
    pub const ALL: [Section; 7] = [
        Section::Host,
        Section::Traffic,
        Section::Checks,
        Section::Processes,
        Section::Lines,
        Section::Apps,
        Section::Other,
    ];

    /// The sections a new record of `collector` may change.
    pub fn fed_by(collector: &str) -> &'static [Section] {
        match collector {
            "system" | "disk" | "network" => &[Section::Host, Section::Other],
            "check" | "plugin" => &[Section::Checks, Section::Other],
            "processes" => &[Section::Processes, Section::Other],
            "nginx" | "agent" => &[Section::Other],
            c if c.starts_with("web.") => &[Section::Traffic],
            c if c.starts_with("tail.") => &[Section::Other],
            c if c.starts_with("logs.") => &[Section::Lines],
            _ => &[Section::Apps],
        }
    }
}

/// One chart before its points are read: which series, how labelled.
struct Plan {
    id: String,
    title: String,
    unit: Unit,
    metrics: String,
    lines: Vec<(String, Series)>,
    thresholds: Vec<Threshold>,
    idle: Option<&'static str>,
}

impl Plan {
    fn new(id: impl Into<String>, title: impl Into<String>, unit: Unit) -> Self {
        Self {
            id: id.into(),
            title: title.into(),
            unit,
            metrics: String::new(),
            lines: Vec::new(),
            thresholds: Vec::new(),
            idle: None,
        }
    }

    /// Names the series' metric as this chart's, without a line of its own.
    fn add_metric(&mut self, series: &Series) {
        if !self.metrics.split(' ').any(|m| m == series.name) {
            if !self.metrics.is_empty() {
                self.metrics.push(' ');
            }
            self.metrics.push_str(&series.name);
        }
    }

    fn add(&mut self, label: impl Into<String>, series: &Series) {
        self.add_metric(series);
        if self.lines.len() < LINES_MAX {
            self.lines.push((label.into(), series.clone()));
        }
    }
}

/// The six host charts: (id, title, unit, [(metric, the line's word)]).
type HostChart = (
    &'static str,
    &'static str,
    Unit,
    &'static [(&'static str, &'static str)],
);
const HOST_CHARTS: [HostChart; 6] = [
    (
        "chart-cpu",
        "CPU",
        Unit::Percent,
        &[
            (metric::CPU_USED_PERCENT, "used"),
            ("cpu.user_percent", "user"),
            ("cpu.system_percent", "system"),
            ("cpu.iowait_percent", "iowait"),
        ],
    ),
    (
        "chart-memory",
        "Memory",
        Unit::Percent,
        &[(metric::MEMORY_USED_PERCENT, "used")],
    ),
    (
        "chart-swap",
        "Swap",
        Unit::Bytes,
        &[("swap.used_bytes", "used")],
    ),
    (
        "chart-disk",
        "Disk",
        Unit::Percent,
        &[(metric::DISK_USED_PERCENT, "used")],
    ),
    (
        "chart-network",
        "Network",
        Unit::BytesPerSecond,
        &[
            ("net.rx_bytes_per_sec", "received"),
            ("net.tx_bytes_per_sec", "sent"),
        ],
    ),
    (
        "chart-load",
        "Load",
        Unit::Number,
        &[
            (metric::LOAD1, "1 min"),
            ("load.5", "5 min"),
            ("load.15", "15 min"),
        ],
    ),
];

/// A series' line label: the metric's own word, then its labels (`received eth0`), leaving
/// out the labels the chart is already about.
fn line_label(word: &str, series: &Series, skip: &[&str]) -> String {
    let mut label = word.to_owned();
    for (key, value) in &series.labels {
        if skip.contains(&key.as_str()) {
            continue;
        }
        if !label.is_empty() {
            label.push(' ');
        }
        label.push_str(value);
    }
    if label.is_empty() {
        series.name.clone()
    } else {
        label
    }
}

/// How long without a point breaks a line: three buckets, or three of the node's intervals.
pub fn gap_ms(bucket_ms: i64, interval_ms: i64) -> i64 {
    (bucket_ms * 3).max(interval_ms * 3).max(1)
}

/// A unit guessed from a metric's name, for the charts of series fleet does not know.
fn unit_of(name: &str) -> Unit {
    if name.ends_with("_percent") {
        Unit::Percent
    } else if name.ends_with("bytes_per_second") || name.ends_with("bytes_per_sec") {
        Unit::BytesPerSecond
    } else if name.ends_with("_bytes") {
        Unit::Bytes
    } else if name.ends_with("_ms") {
        Unit::Millis
    } else if name.ends_with("per_second") {
        Unit::PerSecond
    } else {
        Unit::Number
    }
}

/// An element id made of a prefix and names a node supplied: only `[a-z0-9-]`, so it is safe
/// in any attribute and selector, with a short hash so two names that clean alike stay apart.
pub fn element_id(prefix: &str, parts: &[&str]) -> String {
    use std::hash::{Hash, Hasher};
    let mut id = prefix.to_owned();
    let mut cleaned = false;
    for part in parts {
        id.push('-');
        for (i, c) in part.chars().enumerate() {
            let kept = if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                c
            } else {
                '-'
            };
            cleaned |= kept != c || i >= 40;
            if i < 40 {
                id.push(kept);
            }
        }
    }
    if !cleaned {
        // `chart-plugin-load`: a plain name is its own id.
        return id;
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut hasher);
    format!("{id}-{:04x}", hasher.finish() & 0xffff)
}

/// The state of a check (`check.up`) as a strip shows it.
pub fn check_state(up: f64) -> StripState {
    if up >= 0.5 {
        StripState {
            class: "state-up",
            word: "up",
            fill: "#1a7f37",
        }
    } else {
        StripState {
            class: "state-down",
            word: "down",
            fill: "#cf222e",
        }
    }
}

/// The state of a Nagios plugin (`plugin.status`, its exit code) as a strip shows it.
pub fn plugin_state(code: f64) -> StripState {
    match code.round() as i64 {
        0 => StripState {
            class: "state-ok",
            word: "OK",
            fill: "#1a7f37",
        },
        1 => StripState {
            class: "state-warning",
            word: "WARNING",
            fill: "#bf8700",
        },
        2 => StripState {
            class: "state-critical",
            word: "CRITICAL",
            fill: "#cf222e",
        },
        _ => StripState {
            class: "state-unknown",
            word: "UNKNOWN",
            fill: "#8c959f",
        },
    }
}

/// One row of the checks and plugins table.
pub struct ItemRow {
    /// `check` or `plugin`.
    pub kind: &'static str,
    pub name: String,
    /// The newest value of `check.up` / `plugin.status`, if any.
    pub value: Option<f64>,
    /// When the state last changed within the range; `None`: not in the range.
    pub since_ms: Option<i64>,
    /// Latency, the error, or the plugin's first line.
    pub detail: String,
    pub cert_days: Option<f64>,
    pub strip: Markup,
}

/// One process of the newest `processes` record.
pub struct ProcessRow {
    pub name: String,
    pub pid: u64,
    pub cpu_percent: f64,
    pub rss_bytes: f64,
    pub cmdline: String,
}

/// One shipped log line.
pub struct LogLine {
    pub log: String,
    pub ts_ms: i64,
    pub data: Value,
}

/// One app collector: its charts and its newest record's fields.
pub struct App {
    pub collector: String,
    pub charts: Vec<Markup>,
    pub fields: Vec<(String, String)>,
    pub ts_ms: Option<i64>,
}

/// Everything the sections show; each part filled only when its section was asked for.
#[derive(Default)]
pub struct Gathered {
    pub host: Vec<Markup>,
    pub vhosts: Vec<String>,
    pub vhost: Option<String>,
    pub traffic: Vec<Markup>,
    pub items: Vec<ItemRow>,
    pub item_charts: Vec<Markup>,
    /// `None`: no `processes` record in the hot ring.
    pub processes: Option<(i64, Vec<ProcessRow>)>,
    pub lines: Vec<LogLine>,
    pub apps: Vec<App>,
    pub other: Vec<Markup>,
    /// Why the hot ring could not be read, if it could not.
    pub hot_problem: Option<String>,
}

/// The sections `which` of `node`'s page, rendered, in page order.
pub async fn sections(
    state: &AppState,
    node: &str,
    view: &View,
    interval_ms: i64,
    now: i64,
    which: &BTreeSet<Section>,
) -> Result<Vec<(Section, Markup)>, ApiError> {
    let g = gather(state, node, view, interval_ms, now, which).await?;
    let base = format!("/nodes/{node}?range={}", view.range.as_str());
    Ok(which
        .iter()
        .map(|s| (*s, render::section(*s, &g, view, &base, now)))
        .collect())
}

async fn gather(
    state: &AppState,
    node: &str,
    view: &View,
    interval_ms: i64,
    now: i64,
    which: &BTreeSet<Section>,
) -> Result<Gathered, ApiError> {
    let all = state.durable.series(node, None).await?;
    let from = now - view.range.ms();
    let bucket = view.range.ms() / CHART_POINTS;
    let gap = gap_ms(bucket, interval_ms);
    let mut g = Gathered::default();
    let mut drawn: BTreeSet<i64> = BTreeSet::new();

    // --- plans: which series each chart draws -------------------------------------------
    let mut host = Vec::new();
    for (id, title, unit, metrics) in HOST_CHARTS {
        let mut plan = Plan::new(id, title, unit);
        if id == "chart-swap" {
            plan.idle = Some("No swap in use in this range.");
        }
        plan.metrics = metrics
            .iter()
            .map(|(m, _)| *m)
            .collect::<Vec<_>>()
            .join(" ");
        for (name, word) in metrics {
            // Loopback interfaces left out: always idle or always busy, never what an
            // operator looks for.
            for s in all.iter().filter(|s| s.name == *name) {
                if s.labels.get("interface").is_some_and(|i| i == "lo") {
                    continue;
                }
                plan.add(line_label(word, s, &[]), s);
            }
        }
        host.push(plan);
    }

    let web: Vec<&Series> = all
        .iter()
        .filter(|s| s.collector.starts_with("web.") && s.name.starts_with("web."))
        .collect();
    g.vhosts = web
        .iter()
        .filter_map(|s| s.labels.get("vhost").cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    g.vhost = view
        .vhost
        .clone()
        .filter(|v| g.vhosts.contains(v))
        .or_else(|| g.vhosts.first().cloned());
    let logs_of_vhost: BTreeSet<&str> = web
        .iter()
        .filter(|s| s.labels.get("vhost") == g.vhost.as_ref())
        .filter_map(|s| s.labels.get("log").map(String::as_str))
        .collect();
    let several_logs = logs_of_vhost.len() > 1;
    let mut traffic = [
        Plan::new("chart-web-requests", "Requests", Unit::PerSecond),
        Plan::new("chart-web-bytes", "Bytes sent", Unit::BytesPerSecond),
        Plan::new("chart-web-time", "Request time", Unit::Millis),
    ];
    for plan in &mut traffic {
        plan.idle = Some("No requests in this range.");
    }
    // (total, 5xx) series pairs for the error share, by log.
    let mut shares: Vec<(Series, Series)> = Vec::new();
    for s in web
        .iter()
        .filter(|s| s.labels.get("vhost") == g.vhost.as_ref())
    {
        let log = if several_logs {
            s.labels.get("log").cloned().unwrap_or_default()
        } else {
            String::new()
        };
        let with_log = |word: &str| {
            if log.is_empty() {
                word.to_owned()
            } else {
                format!("{word} {log}")
            }
        };
        match s.name.as_str() {
            "web.requests_per_second" => {
                // The total is drawn as the classes' sum; it is the error share's divisor.
                let Some(class) = s.labels.get("class").map(String::as_str) else {
                    traffic[0].add_metric(s);
                    continue;
                };
                traffic[0].add(with_log(class), s);
                if class == "5xx" {
                    let total = web.iter().find(|t| {
                        t.name == s.name
                            && !t.labels.contains_key("class")
                            && t.labels.get("vhost") == s.labels.get("vhost")
                            && t.labels.get("log") == s.labels.get("log")
                    });
                    if let Some(total) = total {
                        shares.push(((*total).clone(), (*s).clone()));
                    }
                }
            }
            "web.bytes_per_second" => traffic[1].add(with_log("sent"), s),
            "web.request_time_avg_ms" => traffic[2].add(with_log("mean"), s),
            "web.request_time_max_ms" => traffic[2].add(with_log("slowest"), s),
            _ => {}
        }
    }
    // The other vhosts' web series are drawn when their vhost is chosen.
    for s in &web {
        drawn.insert(s.id);
    }

    // Checks and plugins: a strip per item from `check.up` / `plugin.status`; a chart of each
    // plugin's perfdata.
    let item_series: Vec<(&'static str, &Series)> = all
        .iter()
        .filter_map(|s| match (s.name.as_str(), &s.labels) {
            ("check.up", l) if l.contains_key("check") => Some(("check", s)),
            ("plugin.status", l) if l.contains_key("plugin") => Some(("plugin", s)),
            _ => None,
        })
        .collect();
    let mut perf_plans: BTreeMap<String, Plan> = BTreeMap::new();
    for s in all.iter().filter(|s| s.name == "plugin.perf") {
        let plugin = s.labels.get("plugin").cloned().unwrap_or_default();
        let uom = s.labels.get("uom").map_or("", String::as_str);
        let unit = match uom {
            "%" => Unit::Percent,
            "ms" => Unit::Millis,
            "B" => Unit::Bytes,
            _ => Unit::Number,
        };
        perf_plans
            .entry(plugin.clone())
            .or_insert_with(|| {
                Plan::new(
                    element_id("chart-plugin", &[&plugin]),
                    format!("{plugin} perfdata"),
                    unit,
                )
            })
            .add(line_label("", s, &["plugin", "uom"]), s);
    }
    // The items' series are theirs whichever sections are drawn, so "Other series" is the
    // same on the page and in the live stream.
    drawn.extend(item_series.iter().map(|(_, s)| s.id));
    drawn.extend(all.iter().filter(|s| s.name == "plugin.perf").map(|s| s.id));

    // Apps: every collector the agent does not fill itself, a chart per metric.
    let mut app_names: BTreeSet<String> = all
        .iter()
        .filter(|s| !is_agent_collector(&s.collector))
        .map(|s| s.collector.clone())
        .collect();
    let rings = if which.contains(&Section::Apps) || which.contains(&Section::Lines) {
        match state
            .hot
            .collectors(node, crate::store::hot::RINGS_PER_NODE_MAX)
            .await
        {
            Ok(rings) => rings,
            Err(e) => {
                g.hot_problem = Some(e.public_message().to_owned());
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    app_names.extend(rings.iter().filter(|c| !is_agent_collector(c)).cloned());
    let app_names: Vec<String> = app_names.into_iter().take(APPS_MAX).collect();
    let mut app_plans: BTreeMap<String, Vec<Plan>> = BTreeMap::new();
    for s in all.iter().filter(|s| !is_agent_collector(&s.collector)) {
        drawn.insert(s.id);
        if !app_names.contains(&s.collector) {
            continue;
        }
        let plans = app_plans.entry(s.collector.clone()).or_default();
        let plan = match plans.iter_mut().position(|p| p.title == s.name) {
            Some(i) => &mut plans[i],
            None => {
                plans.push(Plan::new(
                    element_id("chart-app", &[&s.collector, &s.name]),
                    s.name.clone(),
                    unit_of(&s.name),
                ));
                plans.last_mut().expect("just pushed")
            }
        };
        plan.add(line_label("", s, &[]), s);
    }

    // Host charts' series are drawn; every other series gets a chart of its metric.
    for plan in &host {
        drawn.extend(plan.lines.iter().map(|(_, s)| s.id));
    }
    for s in all.iter().filter(|s| s.collector == "system") {
        // The host charts' metrics on other lines (more than LINES_MAX) are still theirs.
        if HOST_CHARTS
            .iter()
            .any(|(_, _, _, m)| m.iter().any(|(name, _)| *name == s.name))
        {
            drawn.insert(s.id);
        }
    }
    let mut other: Vec<Plan> = Vec::new();
    for s in all.iter().filter(|s| !drawn.contains(&s.id)) {
        let plan = match other.iter_mut().position(|p| p.metrics == s.name) {
            Some(i) => &mut other[i],
            None => {
                other.push(Plan::new(
                    element_id("chart-other", &[&s.name]),
                    s.name.clone(),
                    unit_of(&s.name),
                ));
                other.last_mut().expect("just pushed")
            }
        };
        plan.add(line_label("", s, &[]), s);
    }

    // --- points: one read per collector for every chart asked for --------------------------
    let mut by_collector: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    let mut want = |series: &Series| {
        by_collector
            .entry(series.collector.clone())
            .or_default()
            .insert(series.id);
    };
    let perf_list: Vec<Plan> = perf_plans.into_values().collect();
    let mut asked: Vec<&Plan> = Vec::new();
    if which.contains(&Section::Host) {
        asked.extend(&host);
    }
    if which.contains(&Section::Traffic) {
        asked.extend(&traffic);
        for (total, errors) in &shares {
            want(total);
            want(errors);
        }
    }
    if which.contains(&Section::Checks) {
        asked.extend(&perf_list);
        for (_, s) in &item_series {
            want(s);
        }
    }
    if which.contains(&Section::Apps) {
        asked.extend(app_plans.values().flatten());
    }
    if which.contains(&Section::Other) {
        asked.extend(&other);
    }
    for plan in asked {
        for (_, s) in &plan.lines {
            want(s);
        }
    }
    let mut points: HashMap<i64, Vec<(i64, f64)>> = HashMap::new();
    for (collector, ids) in by_collector {
        let ids: Vec<i64> = ids.into_iter().collect();
        let lists = state
            .durable
            .points(
                node,
                &collector,
                &ids,
                from,
                now,
                Resolution::Buckets {
                    bucket_ms: bucket,
                    interval_ms,
                },
            )
            .await?;
        points.extend(ids.into_iter().zip(lists));
    }
    let draw = |plan: &Plan| {
        let lines: Vec<Line> = plan
            .lines
            .iter()
            .map(|(label, s)| Line {
                label: label.clone(),
                points: points.get(&s.id).cloned().unwrap_or_default(),
                colour: s.labels.get("class").and_then(|c| class_colour(c)),
            })
            // A status class nobody was answered with in the range is not a line at zero.
            .filter(|l| plan.id != "chart-web-requests" || l.points.iter().any(|p| p.1 != 0.0))
            .collect();
        super::chart::line_chart(&Chart {
            id: &plan.id,
            title: &plan.title,
            unit: plan.unit,
            metrics: &plan.metrics,
            from_ms: from,
            to_ms: now,
            gap_ms: gap,
            lines: &lines,
            thresholds: &plan.thresholds,
            idle: plan.idle,
        })
    };

    // --- the sections' contents ----------------------------------------------------------
    if which.contains(&Section::Host) {
        g.host = host.iter().map(draw).collect();
    }
    if which.contains(&Section::Traffic) && g.vhost.is_some() {
        let mut charts: Vec<Markup> = Vec::new();
        charts.push(draw(&traffic[0]));
        let share_lines: Vec<Line> = shares
            .iter()
            .map(|(total, errors)| Line {
                label: match (several_logs, total.labels.get("log")) {
                    (true, Some(log)) => format!("5xx share {log}"),
                    _ => "5xx share".to_owned(),
                },
                points: error_share(
                    points.get(&total.id).map_or(&[][..], Vec::as_slice),
                    points.get(&errors.id).map_or(&[][..], Vec::as_slice),
                ),
                colour: class_colour("5xx"),
            })
            .collect();
        charts.push(super::chart::line_chart(&Chart {
            id: "chart-web-errors",
            title: "Server errors",
            unit: Unit::Percent,
            metrics: "web.requests_per_second",
            from_ms: from,
            to_ms: now,
            gap_ms: gap,
            lines: &share_lines,
            thresholds: &[],
            idle: Some("No server errors in this range."),
        }));
        charts.push(draw(&traffic[1]));
        charts.push(draw(&traffic[2]));
        g.traffic = charts;
    }
    if which.contains(&Section::Checks) {
        let mut newest: HashMap<(&str, String), Value> = HashMap::new();
        for kind in ["check", "plugin"] {
            match state.hot.recent(node, kind, ITEM_RECORDS).await {
                Ok(records) => {
                    for record in records {
                        let name = record["data"][kind].as_str().unwrap_or_default().to_owned();
                        newest.entry((kind, name)).or_insert(record);
                    }
                }
                Err(e) => g.hot_problem = Some(e.public_message().to_owned()),
            }
        }
        let mut perf_list = perf_list;
        for (kind, s) in &item_series {
            let name = s.labels.get(*kind).cloned().unwrap_or_default();
            let list = points.get(&s.id).map_or(&[][..], Vec::as_slice);
            let record = newest.get(&(*kind, name.clone()));
            let value = record
                .and_then(|r| item_value(kind, r))
                .or_else(|| list.last().map(|p| p.1));
            let state_of = |v: f64| {
                if *kind == "check" {
                    check_state(v)
                } else {
                    plugin_state(v)
                }
            };
            let since_ms = value.and_then(|v| {
                let now_class = state_of(v).class;
                let changed = list.windows(2).rev().find(|w| {
                    state_of(w[0].1).class != now_class && state_of(w[1].1).class == now_class
                });
                changed.map(|w| w[1].0)
            });
            let data = record.map(|r| &r["data"]);
            let detail = match (*kind, data) {
                ("check", Some(d)) => match d["error"].as_str() {
                    Some(error) => error.to_owned(),
                    None => d["latency_ms"]
                        .as_f64()
                        .map(|ms| Unit::Millis.format(ms))
                        .unwrap_or_default(),
                },
                ("plugin", Some(d)) => d["text"]
                    .as_str()
                    .and_then(|t| t.lines().next())
                    .unwrap_or_default()
                    .to_owned(),
                _ => String::new(),
            };
            let cert_days = record.and_then(|r| sample_value(r, "check.cert_days_left"));
            if *kind == "plugin"
                && let Some(plan) = perf_list
                    .iter_mut()
                    .find(|p| p.id == element_id("chart-plugin", &[&name]))
                && let Some(d) = data
            {
                plan.thresholds = thresholds(d);
            }
            g.items.push(ItemRow {
                kind,
                name: name.clone(),
                value,
                since_ms,
                detail,
                cert_days,
                strip: super::chart::strip(list, from, now, gap, state_of, &name),
            });
        }
        g.items
            .sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
        g.item_charts = perf_list.iter().map(draw).collect();
    }
    if which.contains(&Section::Processes) {
        match state.hot.recent(node, "processes", 1).await {
            Ok(records) => {
                g.processes = records.first().map(|r| {
                    let rows = r["data"]["top"]
                        .as_array()
                        .map(|top| top.iter().map(process_row).collect())
                        .unwrap_or_default();
                    (r["ts"].as_i64().unwrap_or_default(), rows)
                });
            }
            Err(e) => g.hot_problem = Some(e.public_message().to_owned()),
        }
    }
    if which.contains(&Section::Lines) {
        let filter = view.lines.as_deref().map(str::to_lowercase);
        for ring in rings.iter().filter(|c| c.starts_with("logs.")) {
            match state.hot.recent(node, ring, LOG_LINES * 4).await {
                Ok(records) => g.lines.extend(
                    records
                        .into_iter()
                        .filter(|r| {
                            filter
                                .as_deref()
                                .is_none_or(|f| r["data"].to_string().to_lowercase().contains(f))
                        })
                        .map(|r| LogLine {
                            log: ring.trim_start_matches("logs.").to_owned(),
                            ts_ms: r["ts"].as_i64().unwrap_or_default(),
                            data: r["data"].clone(),
                        }),
                ),
                Err(e) => g.hot_problem = Some(e.public_message().to_owned()),
            }
        }
        g.lines.sort_by_key(|l| std::cmp::Reverse(l.ts_ms));
        g.lines.truncate(LOG_LINES);
    }
    if which.contains(&Section::Apps) {
        for collector in &app_names {
            let newest = state
                .hot
                .recent(node, collector, 1)
                .await
                .ok()
                .and_then(|mut r| r.pop());
            g.apps.push(App {
                collector: collector.clone(),
                charts: app_plans
                    .get(collector)
                    .map(|plans| plans.iter().map(draw).collect())
                    .unwrap_or_default(),
                fields: newest
                    .as_ref()
                    .map(|r| fields(&r["data"]))
                    .unwrap_or_default(),
                ts_ms: newest.as_ref().and_then(|r| r["ts"].as_i64()),
            });
        }
    }
    if which.contains(&Section::Other) {
        g.other = other.iter().map(draw).collect();
    }
    Ok(g)
}

/// The colour of a status class's line: what people expect of them.
fn class_colour(class: &str) -> Option<&'static str> {
    match class {
        "2xx" => Some("#1a7f37"),
        "3xx" => Some("#0969da"),
        "4xx" => Some("#9a6700"),
        "5xx" => Some("#cf222e"),
        _ => None,
    }
}

/// 5xx requests as a percentage of all, at the times both were measured.
fn error_share(total: &[(i64, f64)], errors: &[(i64, f64)]) -> Vec<(i64, f64)> {
    let errors: HashMap<i64, f64> = errors.iter().copied().collect();
    total
        .iter()
        .map(|(ts, all)| {
            let bad = errors.get(ts).copied().unwrap_or(0.0);
            let share = if *all > 0.0 { bad / all * 100.0 } else { 0.0 };
            (*ts, share)
        })
        .collect()
}

/// The value of a check's `check.up` or a plugin's `plugin.status` in its newest record.
fn item_value(kind: &str, record: &Value) -> Option<f64> {
    sample_value(
        record,
        if kind == "check" {
            "check.up"
        } else {
            "plugin.status"
        },
    )
}

/// The value of the first sample named `name` in a hot ring entry.
fn sample_value(record: &Value, name: &str) -> Option<f64> {
    record["samples"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
        .and_then(|s| s["value"].as_f64())
}

/// The warning and critical thresholds a plugin's newest perfdata gives, per label.
fn thresholds(data: &Value) -> Vec<Threshold> {
    let mut out = Vec::new();
    for perf in data["perfdata"].as_array().into_iter().flatten() {
        let label = perf["label"].as_str().unwrap_or_default();
        for (key, class, word) in [("warn", "warn", "warning"), ("crit", "crit", "critical")] {
            // Nagios ranges (`10`, `~:10`, `@5:10`): the number after the last `:` is the
            // line a value crosses going up, which is what is drawn.
            let value = match &perf[key] {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.rsplit(':').next().and_then(|v| v.parse().ok()),
                _ => None,
            };
            if let Some(value) = value {
                out.push(Threshold {
                    class,
                    label: format!("{label} {word}"),
                    value,
                });
            }
        }
    }
    out
}

fn process_row(p: &Value) -> ProcessRow {
    ProcessRow {
        name: p["name"].as_str().unwrap_or_default().to_owned(),
        pid: p["pid"].as_u64().unwrap_or_default(),
        cpu_percent: p["cpu_percent"].as_f64().unwrap_or_default(),
        rss_bytes: p["rss_bytes"].as_f64().unwrap_or_default(),
        cmdline: p["cmdline"].as_str().unwrap_or_default().to_owned(),
    }
}

/// A record's top-level fields as text: strings as they are, anything else as compact JSON.
fn fields(data: &Value) -> Vec<(String, String)> {
    match data {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), text)
            })
            .collect(),
        Value::Null => Vec::new(),
        other => vec![("value".to_owned(), other.to_string())],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_ids_are_safe_and_tell_names_apart() {
        let a = element_id("chart-plugin", &["<img src=x>"]);
        assert!(
            a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "{a}"
        );
        assert_ne!(a, element_id("chart-plugin", &["<img src=y>"]));
        assert_eq!(element_id("chart-plugin", &["load"]), "chart-plugin-load");
        assert_ne!(
            element_id("chart-plugin", &["Load"]),
            element_id("chart-plugin", &["load"])
        );
    }

    #[test]
    fn the_error_share_is_5xx_over_all_requests() {
        let share = error_share(&[(1, 10.0), (2, 0.0), (3, 4.0)], &[(1, 1.0), (3, 2.0)]);
        assert_eq!(share, vec![(1, 10.0), (2, 0.0), (3, 50.0)]);
    }

    #[test]
    fn thresholds_come_from_perfdata_ranges() {
        let data = serde_json::json!({"perfdata": [
            {"label": "load", "warn": "4", "crit": "@2:10"},
            {"label": "users", "warn": 5.0, "crit": null},
        ]});
        let t = thresholds(&data);
        let values: Vec<(&str, f64)> = t.iter().map(|t| (t.class, t.value)).collect();
        assert_eq!(values, vec![("warn", 4.0), ("crit", 10.0), ("warn", 5.0)]);
    }

    #[test]
    fn units_are_guessed_from_metric_names() {
        assert_eq!(unit_of("tail.bytes_per_second"), Unit::BytesPerSecond);
        assert_eq!(unit_of("tail.lines_per_second"), Unit::PerSecond);
        assert_eq!(unit_of("check.latency_ms"), Unit::Millis);
        assert_eq!(unit_of("memory.used_bytes"), Unit::Bytes);
        assert_eq!(unit_of("processes.count"), Unit::Number);
    }
}
