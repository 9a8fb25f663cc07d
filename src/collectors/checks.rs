//! Proof of life: is the thing that should be alive alive? A file touched recently (a backup, a
//! cron job's stamp), a TCP port accepting, a unix socket accepting, an HTTP URL answering with
//! the expected status (and, over https, how many days its certificate has left); and nginx's
//! `stub_status` page read into connection and request figures.
//!
//! Each check is a [`Probe`] with its own interval and timeout. A failing target is a result
//! (`check.up` = 0 and the reason), not an error: only a check that cannot run at all errs.
//! Checks must never wait past their timeout.

use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use futures::FutureExt;
use futures::future::BoxFuture;

use super::{Collected, Probe};
use crate::config::CheckConfig;
use crate::model::Sample;

/// What a check looks at.
#[derive(Debug, Clone)]
enum Target {
    File {
        path: std::path::PathBuf,
        max_age: Duration,
    },
    Tcp(String),
    Unix(std::path::PathBuf),
    Http {
        url: String,
        expect_status: u16,
        client: reqwest::Client,
    },
    NginxStatus {
        url: String,
        client: reqwest::Client,
    },
}

/// One configured check.
pub struct Check {
    name: String,
    target: Target,
    timeout: Duration,
    /// The last `stub_status` counters, for rates.
    last_counters: Option<(Instant, [u64; 3])>,
}

impl Check {
    pub fn new(config: &CheckConfig) -> anyhow::Result<Self> {
        let client = || -> anyhow::Result<reqwest::Client> {
            let builder = reqwest::Client::builder()
                .timeout(config.timeout)
                .connect_timeout(config.timeout)
                // The status of this URL, not of where it leads.
                .redirect(reqwest::redirect::Policy::none())
                // A new connection each run: a kept one hid a listener that had gone (the
                // check said "connection closed before message completed", not "cannot
                // connect"), and its latency left out the connect and TLS handshake.
                .pool_max_idle_per_host(0)
                .tls_info(true)
                .user_agent(concat!("fleet-agent/", env!("CARGO_PKG_VERSION")));
            crate::http_client::trusting(builder, config.ca_cert.as_deref())?
                .build()
                .context("cannot build the HTTP client")
        };
        let target = if let (Some(path), Some(max_age)) = (&config.file, config.max_age) {
            Target::File {
                path: path.clone(),
                max_age,
            }
        } else if let Some(addr) = &config.tcp {
            Target::Tcp(addr.clone())
        } else if let Some(path) = &config.unix {
            Target::Unix(path.clone())
        } else if let Some(url) = &config.http {
            Target::Http {
                url: url.clone(),
                expect_status: config.expect_status,
                client: client()?,
            }
        } else if let Some(url) = &config.nginx_status {
            Target::NginxStatus {
                url: url.clone(),
                client: client()?,
            }
        } else {
            anyhow::bail!(
                "check {:?} needs one of file, tcp, unix, http, nginx_status",
                config.name
            );
        };
        Ok(Self {
            name: config.name.clone(),
            target,
            timeout: config.timeout,
            last_counters: None,
        })
    }

    fn sample(&self, name: &str, value: f64) -> Sample {
        Sample::new(name, value).with_label("check", self.name.as_str())
    }

    async fn run(&mut self) -> anyhow::Result<Collected> {
        if let Target::NginxStatus { url, client } = &self.target {
            let (url, client) = (url.clone(), client.clone());
            return self.nginx_status(&url, &client).await;
        }
        let started = Instant::now();
        let mut doc = serde_json::json!({ "check": self.name });
        let mut samples = Vec::new();
        let outcome: Result<(), String> = match &self.target {
            Target::File { path, max_age } => {
                doc["kind"] = "file".into();
                doc["target"] = path.to_string_lossy().into();
                // A stuck mount must not stall the agent's one runtime thread.
                let stat = {
                    let path = path.clone();
                    tokio::time::timeout(
                        self.timeout,
                        tokio::task::spawn_blocking(move || {
                            std::fs::metadata(path).and_then(|m| m.modified())
                        }),
                    )
                    .await
                };
                let stat = match stat {
                    Ok(Ok(result)) => result,
                    Ok(Err(_)) => Err(std::io::Error::other("the check panicked")),
                    Err(_) => Err(std::io::Error::other(format!(
                        "no answer within {:?}",
                        self.timeout
                    ))),
                };
                match stat {
                    Ok(modified) => {
                        let age = SystemTime::now()
                            .duration_since(modified)
                            .unwrap_or(Duration::ZERO);
                        doc["age_seconds"] = age.as_secs().into();
                        samples.push(self.sample("check.age_seconds", age.as_secs() as f64));
                        if age <= *max_age {
                            Ok(())
                        } else {
                            Err(format!(
                                "last modified {} ago, more than {}",
                                humantime::format_duration(Duration::from_secs(age.as_secs())),
                                humantime::format_duration(*max_age)
                            ))
                        }
                    }
                    Err(err) => Err(format!("cannot read it: {err}")),
                }
            }
            Target::Tcp(addr) => {
                doc["kind"] = "tcp".into();
                doc["target"] = addr.as_str().into();
                match tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(addr)).await
                {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(err)) => Err(format!("connect failed: {err}")),
                    Err(_) => Err(format!("no answer within {:?}", self.timeout)),
                }
            }
            Target::Unix(path) => {
                doc["kind"] = "unix".into();
                doc["target"] = path.to_string_lossy().into();
                match tokio::time::timeout(self.timeout, connect_unix(path)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(err)) => Err(format!("connect failed: {err}")),
                    Err(_) => Err(format!("no answer within {:?}", self.timeout)),
                }
            }
            Target::Http {
                url,
                expect_status,
                client,
            } => {
                doc["kind"] = "http".into();
                doc["target"] = url.as_str().into();
                match client.get(url).send().await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        doc["status"] = status.into();
                        samples.push(self.sample("check.status_code", status as f64));
                        if let Some(days) = cert_days_left(&response) {
                            doc["cert_days_left"] = super::round2(days).into();
                            samples.push(self.sample("check.cert_days_left", super::round2(days)));
                        }
                        if status == *expect_status {
                            Ok(())
                        } else {
                            Err(format!("answered {status}, expected {expect_status}"))
                        }
                    }
                    Err(err) => Err(describe(&err)),
                }
            }
            Target::NginxStatus { .. } => unreachable!("handled above"),
        };
        let latency_ms = super::round2(started.elapsed().as_secs_f64() * 1000.0);
        doc["ok"] = outcome.is_ok().into();
        doc["latency_ms"] = latency_ms.into();
        if let Err(error) = &outcome {
            doc["error"] = error.as_str().into();
        }
        samples.push(self.sample("check.up", if outcome.is_ok() { 1.0 } else { 0.0 }));
        samples.push(self.sample("check.latency_ms", latency_ms));
        Ok(Collected {
            data: doc,
            samples,
            records: Vec::new(),
        })
    }

    async fn nginx_status(
        &mut self,
        url: &str,
        client: &reqwest::Client,
    ) -> anyhow::Result<Collected> {
        let response = client
            .get(url)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{url}: {}", describe(&e)))?;
        if !response.status().is_success() {
            anyhow::bail!("{url} answered {}", response.status());
        }
        // stub_status is a few dozen bytes; anything much longer is not it.
        let body = read_bounded(response, 4096).await?;
        let status = parse_stub_status(&body)
            .with_context(|| format!("{url} does not look like nginx's stub_status page"))?;
        let now = Instant::now();
        let mut samples = vec![
            self.sample("nginx.active_connections", status.active as f64),
            self.sample("nginx.reading", status.reading as f64),
            self.sample("nginx.writing", status.writing as f64),
            self.sample("nginx.waiting", status.waiting as f64),
        ];
        let counters = [status.accepts, status.handled, status.requests];
        let mut doc = serde_json::json!({
            "check": self.name, "url": url,
            "active": status.active, "reading": status.reading, "writing": status.writing,
            "waiting": status.waiting, "accepts": status.accepts, "handled": status.handled,
            "requests": status.requests,
        });
        if let Some((then, last)) = self.last_counters {
            let elapsed = now.duration_since(then);
            if let Some(rps) = super::rate(last[2], counters[2], elapsed) {
                samples.push(self.sample("nginx.requests_per_second", super::round2(rps)));
                doc["requests_per_second"] = super::round2(rps).into();
            }
            if let Some(aps) = super::rate(last[0], counters[0], elapsed) {
                samples.push(self.sample("nginx.accepts_per_second", super::round2(aps)));
            }
        }
        samples.push(self.sample(
            "nginx.dropped_connections",
            status.accepts.saturating_sub(status.handled) as f64,
        ));
        self.last_counters = Some((now, counters));
        Ok(Collected {
            data: doc,
            samples,
            records: Vec::new(),
        })
    }
}

impl Probe for Check {
    fn name(&self) -> &str {
        match self.target {
            Target::NginxStatus { .. } => "nginx",
            _ => "check",
        }
    }

    fn probe(&mut self) -> BoxFuture<'_, anyhow::Result<Collected>> {
        self.run().boxed()
    }
}

/// Connects to a unix socket; `@name` is an abstract one.
async fn connect_unix(path: &std::path::Path) -> std::io::Result<()> {
    let text = path.to_string_lossy();
    if let Some(name) = text.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        // std connects blocking (a full backlog waits): in a blocking thread, so the caller's
        // timeout holds.
        return tokio::task::spawn_blocking(move || {
            std::os::unix::net::UnixStream::connect_addr(&addr).map(drop)
        })
        .await
        .map_err(std::io::Error::other)?;
    }
    tokio::net::UnixStream::connect(path).await.map(drop)
}

/// The reason a request failed, in words (reqwest's own message names only the URL).
fn describe(err: &reqwest::Error) -> String {
    use std::error::Error;
    let mut text = if err.is_timeout() {
        "no answer within the timeout".to_owned()
    } else if err.is_connect() {
        "cannot connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Days until the server certificate's notAfter, for an https response.
fn cert_days_left(response: &reqwest::Response) -> Option<f64> {
    let info = response.extensions().get::<reqwest::tls::TlsInfo>()?;
    let der = info.peer_certificate()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let not_after = cert.validity().not_after.timestamp();
    let now = crate::timefmt::now_ms() / 1000;
    Some((not_after - now) as f64 / 86_400.0)
}

async fn read_bounded(mut response: reqwest::Response, max: usize) -> anyhow::Result<String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        body.extend_from_slice(&chunk);
        if body.len() > max {
            anyhow::bail!("the answer is over {max} bytes");
        }
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// nginx's `stub_status` figures.
#[derive(Debug, PartialEq, Eq)]
pub struct StubStatus {
    pub active: u64,
    pub accepts: u64,
    pub handled: u64,
    pub requests: u64,
    pub reading: u64,
    pub writing: u64,
    pub waiting: u64,
}

/// Reads
/// ```text
/// Active connections: 291
/// server accepts handled requests
///  16630948 16630948 31070465
/// Reading: 6 Writing: 179 Waiting: 106
/// ```
pub fn parse_stub_status(text: &str) -> Option<StubStatus> {
    let mut lines = text.lines();
    let active = lines
        .next()?
        .strip_prefix("Active connections:")?
        .trim()
        .parse()
        .ok()?;
    lines
        .next()?
        .trim()
        .strip_prefix("server accepts handled")?;
    let mut counters = lines.next()?.split_whitespace().map(|n| n.parse::<u64>());
    let (accepts, handled, requests) = (
        counters.next()?.ok()?,
        counters.next()?.ok()?,
        counters.next()?.ok()?,
    );
    let mut words = lines.next()?.split_whitespace();
    let mut field = |name: &str| -> Option<u64> {
        (words.next()? == name).then_some(())?;
        words.next()?.parse().ok()
    };
    Some(StubStatus {
        active,
        accepts,
        handled,
        requests,
        reading: field("Reading:")?,
        writing: field("Writing:")?,
        waiting: field("Waiting:")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_status_is_read() {
        let page = "Active connections: 291 \nserver accepts handled requests\n 16630948 16630947 31070465 \nReading: 6 Writing: 179 Waiting: 106 \n";
        assert_eq!(
            parse_stub_status(page),
            Some(StubStatus {
                active: 291,
                accepts: 16630948,
                handled: 16630947,
                requests: 31070465,
                reading: 6,
                writing: 179,
                waiting: 106
            })
        );
        assert_eq!(parse_stub_status("<html>It works</html>"), None);
    }
}
