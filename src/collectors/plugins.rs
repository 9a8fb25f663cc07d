//! Nagios-style check plugins: a command run on an interval and read the way Nagios reads it,
//! so the existing library of `check_*` plugins works as it is.
//!
//! - The exit code is the state: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (anything else, a
//!   timeout or a plugin that cannot start is UNKNOWN too, as Nagios has it).
//! - The first line is the text, up to a `|`; what follows the `|` (on the first line, and
//!   after a `|` in the lines below it) is performance data, `'label'=value[UOM];warn;crit;min;max`
//!   items that become samples `plugin.perf{plugin, label, uom}`.
//!
//! Plugins run through the executor's bounded runner (own process group, stdin closed, output
//! cut at `max_output_bytes`, the group killed at the timeout); nothing here waits unbounded.

use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::{Collected, Probe};
use crate::command::CommandState;
use crate::config::PluginConfig;
use crate::model::{Sample, limits};

/// The state a plugin reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginState {
    Ok,
    Warning,
    Critical,
    Unknown,
}

impl PluginState {
    pub fn of_exit(code: Option<i32>) -> Self {
        match code {
            Some(0) => PluginState::Ok,
            Some(1) => PluginState::Warning,
            Some(2) => PluginState::Critical,
            _ => PluginState::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PluginState::Ok => "OK",
            PluginState::Warning => "WARNING",
            PluginState::Critical => "CRITICAL",
            PluginState::Unknown => "UNKNOWN",
        }
    }

    /// Nagios's number for it.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// One item of performance data.
#[derive(Debug, Clone, PartialEq)]
pub struct Perf {
    pub label: String,
    pub value: f64,
    pub uom: String,
    pub warn: Option<String>,
    pub crit: Option<String>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// A plugin's output read: the text of its first line and its performance data.
#[derive(Debug, PartialEq)]
pub struct Output {
    pub text: String,
    pub perf: Vec<Perf>,
}

/// Reads a plugin's standard output.
pub fn parse_output(stdout: &str) -> Output {
    let mut lines = stdout.lines();
    let first = lines.next().unwrap_or("");
    let (text, mut perf_text) = match first.split_once('|') {
        Some((text, perf)) => (text.trim(), perf.to_owned()),
        None => (first.trim(), String::new()),
    };
    // Long output may follow; a `|` in it starts more performance data, to the end.
    let rest: Vec<&str> = lines.collect();
    if let Some(at) = rest.iter().position(|l| l.contains('|')) {
        let (_, tail) = rest[at].split_once('|').expect("contains a bar");
        perf_text.push(' ');
        perf_text.push_str(tail);
        for line in &rest[at + 1..] {
            perf_text.push(' ');
            perf_text.push_str(line);
        }
    }
    Output {
        text: text.to_owned(),
        perf: parse_perfdata(&perf_text),
    }
}

/// Parses `'label'=value[UOM];[warn];[crit];[min];[max]` items separated by spaces; items that
/// do not read (or whose value is `U`, unknown) are left out.
pub fn parse_perfdata(text: &str) -> Vec<Perf> {
    let mut out = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        // The label: quoted ('' inside is a quote) or up to '='.
        let (label, after) = if let Some(quoted) = rest.strip_prefix('\'') {
            let mut label = String::new();
            let mut chars = quoted.char_indices().peekable();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                if c == '\'' {
                    if matches!(chars.peek(), Some((_, '\''))) {
                        chars.next();
                        label.push('\'');
                        continue;
                    }
                    end = Some(i + 1);
                    break;
                }
                label.push(c);
            }
            match end {
                Some(end) => (label, &quoted[end..]),
                None => break,
            }
        } else {
            match rest.find('=') {
                Some(eq) if !rest[..eq].contains(' ') => (rest[..eq].to_owned(), &rest[eq..]),
                _ => {
                    // Not an item: skip a word.
                    rest = rest.split_once(' ').map_or("", |(_, r)| r).trim_start();
                    continue;
                }
            }
        };
        let Some(after) = after.strip_prefix('=') else {
            rest = after.split_once(' ').map_or("", |(_, r)| r).trim_start();
            continue;
        };
        let (item, next) = after.split_once(' ').unwrap_or((after, ""));
        rest = next.trim_start();
        let mut fields = item.split(';');
        let value_uom = fields.next().unwrap_or("");
        let split = value_uom
            .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')))
            .unwrap_or(value_uom.len());
        let Ok(value) = value_uom[..split].parse::<f64>() else {
            continue;
        };
        if !value.is_finite() || label.is_empty() {
            continue;
        }
        let field = |f: Option<&str>| f.filter(|s| !s.is_empty()).map(str::to_owned);
        let (warn, crit) = (field(fields.next()), field(fields.next()));
        let number = |f: Option<&str>| f.and_then(|s| s.parse::<f64>().ok());
        let (min, max) = (number(fields.next()), number(fields.next()));
        out.push(Perf {
            label,
            value,
            uom: value_uom[split..].to_owned(),
            warn,
            crit,
            min,
            max,
        });
    }
    out
}

/// One configured plugin.
pub struct Plugin {
    name: String,
    argv: Vec<String>,
    timeout: Duration,
    max_output: usize,
}

impl Plugin {
    pub fn new(config: &PluginConfig) -> Self {
        Self {
            name: config.name.clone(),
            argv: config.command.clone(),
            timeout: config.timeout,
            max_output: config.max_output_bytes,
        }
    }

    async fn run(&mut self) -> anyhow::Result<Collected> {
        let started = std::time::Instant::now();
        let never = CancellationToken::new();
        let (state, result) =
            crate::process::run_argv(&self.argv, self.timeout, self.max_output, &never).await;
        let duration_ms = started.elapsed().as_millis() as u64;
        let (status, output) = match state {
            CommandState::Succeeded | CommandState::Failed if result.error.is_none() => (
                PluginState::of_exit(result.exit_code),
                parse_output(&result.stdout),
            ),
            // Timed out, or could not start: UNKNOWN, with the reason as its text.
            _ => (
                PluginState::Unknown,
                Output {
                    text: result
                        .error
                        .clone()
                        .unwrap_or_else(|| "did not finish".into()),
                    perf: Vec::new(),
                },
            ),
        };
        let label = |s: Sample| s.with_label("plugin", self.name.as_str());
        let mut samples = vec![
            label(Sample::new("plugin.status", status.code() as f64)),
            label(Sample::new("plugin.duration_ms", duration_ms as f64)),
        ];
        for perf in output.perf.iter().take(limits::ITEM_SAMPLES_MAX) {
            let mut text = perf.label.clone();
            crate::command::cut(&mut text, limits::LABEL_VALUE_MAX);
            let mut sample =
                label(Sample::new("plugin.perf", perf.value)).with_label("label", text);
            if !perf.uom.is_empty() {
                let mut uom = perf.uom.clone();
                crate::command::cut(&mut uom, limits::LABEL_VALUE_MAX);
                sample = sample.with_label("uom", uom);
            }
            samples.push(sample);
        }
        let data = serde_json::json!({
            "plugin": self.name,
            "status": status.as_str(),
            "code": status.code(),
            "exit_code": result.exit_code,
            "text": output.text,
            "perfdata": output.perf.iter().map(|p| serde_json::json!({
                "label": p.label, "value": p.value, "uom": p.uom,
                "warn": p.warn, "crit": p.crit, "min": p.min, "max": p.max,
            })).collect::<Vec<_>>(),
            "duration_ms": duration_ms,
            "truncated": result.truncated,
        });
        Ok(Collected {
            data,
            samples,
            records: Vec::new(),
        })
    }
}

impl Probe for Plugin {
    fn name(&self) -> &str {
        "plugin"
    }

    fn probe(&mut self) -> BoxFuture<'_, anyhow::Result<Collected>> {
        self.run().boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_and_perfdata_read_the_nagios_way() {
        let out = parse_output(
            "DISK OK - free space: / 3326 MB (56%); | /=2643MB;5948;5958;0;5968 'inode free'=94%;;;0;100\nlong text\nmore | 'a ''q'''=1.5s;1:2;@3;; bad U=U\nz=3c",
        );
        assert_eq!(out.text, "DISK OK - free space: / 3326 MB (56%);");
        let labels: Vec<_> = out
            .perf
            .iter()
            .map(|p| (p.label.as_str(), p.value, p.uom.as_str()))
            .collect();
        assert_eq!(
            labels,
            [
                ("/", 2643.0, "MB"),
                ("inode free", 94.0, "%"),
                ("a 'q'", 1.5, "s"),
                ("z", 3.0, "c")
            ]
        );
        assert_eq!(out.perf[0].warn.as_deref(), Some("5948"));
        assert_eq!(out.perf[0].max, Some(5968.0));
        assert_eq!(out.perf[2].crit.as_deref(), Some("@3"));
        assert_eq!(parse_output("").text, "");
        assert!(parse_output("OK").perf.is_empty());
    }

    #[test]
    fn exit_codes_are_states() {
        let states: Vec<_> = [Some(0), Some(1), Some(2), Some(3), Some(4), None]
            .into_iter()
            .map(|c| PluginState::of_exit(c).as_str())
            .collect();
        assert_eq!(
            states,
            ["OK", "WARNING", "CRITICAL", "UNKNOWN", "UNKNOWN", "UNKNOWN"]
        );
    }
}
