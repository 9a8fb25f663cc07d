//! `fleet events [--follow]`: the event log in the terminal, through the controller's API as an
//! operator. Others' text is printed through `termsafe`.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};

use super::ControllerClient;
use crate::client::Api;
use crate::heartbeat;
use crate::store::events::EventEntry;
use crate::termsafe::{self, Shape};

#[derive(clap::Args, Debug, Clone)]
pub struct EventsArgs {
    /// Only this service.
    #[arg(long)]
    pub service: Option<String>,
    /// Only this node.
    #[arg(long)]
    pub node: Option<String>,
    /// At least this level: 0–7, 7 the most severe (the reverse of syslog's numbers), or a name:
    /// debug, info, notice, warning, error, critical, alert, emergency.
    #[arg(long)]
    pub level: Option<String>,
    /// Since (RFC 3339 or relative, e.g. -1h).
    #[arg(long)]
    pub from: Option<String>,
    /// Until (RFC 3339 or relative).
    #[arg(long)]
    pub to: Option<String>,
    /// Messages containing this text (any case).
    #[arg(long, short = 'q')]
    pub query: Option<String>,
    /// How many of the newest to show.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Then keep printing new ones as they come.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Print each as a line of JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ControllerClient,
}

/// `fleet events`: the newest entries oldest first, like a log; with --follow, then new ones as
/// they are written (resuming after a dropped connection without gaps or repeats).
pub async fn run(args: EventsArgs) -> anyhow::Result<u8> {
    if args.follow && args.to.is_some() {
        bail!("--to and --follow do not go together: following has no end");
    }
    let endpoint = super::operator_endpoint(
        args.client.controller.as_deref(),
        args.client.api_token.as_deref(),
        true,
    )?;
    let controller = endpoint.controller.as_str();
    let token = endpoint.token.ok_or_else(|| super::no_token(controller))?;
    let api = Api::connect(controller, &token, args.client.ca_cert.as_deref())?;
    let limit = args.limit.clamp(1, 1000).to_string();
    let page = api
        .get(&format!(
            "api/v1/events?{}",
            query_string(&[
                ("service", args.service.as_deref()),
                ("node", args.node.as_deref()),
                ("level", args.level.as_deref()),
                ("from", args.from.as_deref()),
                ("to", args.to.as_deref()),
                ("q", args.query.as_deref()),
                ("limit", Some(&limit)),
            ])
        ))
        .await?;
    let mut entries: Vec<EventEntry> = serde_json::from_value(page["events"].clone())
        .context("the controller's answer is not a list of events")?;
    entries.reverse();
    let mut out = std::io::stdout().lock();
    // Followed from the newest entry there was when the page was read, printed or not.
    let mut last_id = page["latest_id"].as_i64().unwrap_or(0);
    for entry in &entries {
        print_event(&mut out, entry, args.json)?;
        last_id = last_id.max(entry.id);
    }
    drop(out);
    if !args.follow {
        return Ok(0);
    }
    let path = format!(
        "api/v1/stream?{}",
        query_string(&[
            ("kinds", Some("events")),
            ("service", args.service.as_deref()),
            ("node", args.node.as_deref()),
            ("level", args.level.as_deref()),
            ("q", args.query.as_deref()),
        ])
    );
    loop {
        match api
            .follow(&path, Some(last_id), |entry| {
                let mut out = std::io::stdout().lock();
                print_event(&mut out, &entry, args.json)?;
                last_id = entry.id;
                Ok(())
            })
            .await
        {
            Ok(()) => {}
            Err(err) => eprintln!("fleet events: {err:#}; reconnecting"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `a=1&b=2`, escaped, leaving out the absent ones.
fn query_string(pairs: &[(&str, Option<&str>)]) -> String {
    let mut url = reqwest::Url::parse("http://query.invalid/").expect("a literal URL");
    {
        let mut query = url.query_pairs_mut();
        for (key, value) in pairs {
            if let Some(v) = value {
                query.append_pair(key, v);
            }
        }
    }
    url.query().unwrap_or_default().to_owned()
}

fn print_event(out: &mut impl Write, e: &EventEntry, json: bool) -> anyhow::Result<()> {
    // Messages and services are anyone's text (apps, nodes, watchTower clients): shown, never
    // obeyed by the terminal, in either format and whatever stdout is.
    if json {
        writeln!(out, "{}", termsafe::json(serde_json::to_string(e)?))?;
    } else {
        let level = heartbeat::LEVELS
            .get(e.level as usize)
            .copied()
            .unwrap_or("?")
            .to_uppercase();
        let source = match (&e.node, &e.service) {
            (Some(n), Some(s)) => format!("{n}/{s}"),
            (Some(n), None) => n.clone(),
            (None, Some(s)) => s.clone(),
            (None, None) => "-".into(),
        };
        writeln!(
            out,
            "{}  {level:<9} {}  {}",
            e.ts,
            termsafe::visible(&source, Shape::OneLine),
            termsafe::visible(&e.message, Shape::OneLine)
        )?;
    }
    out.flush()?;
    Ok(())
}
