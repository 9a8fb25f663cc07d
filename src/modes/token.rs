//! `fleet token create | list | revoke`: operator tokens in the controller's durable store.
//! Creating stores only the hash; listing shows ids, never secrets; revoking ends the token's
//! dashboard sessions at once and its use on every controller within the registry refresh
//! (`DELETE /api/v1/tokens/{id}` does it at once on the controller that answers).

use std::fmt::Write;

use crate::config::ControllerConfig;
use crate::pipeline::registry::{Registry, new_token, token_hash};

/// Creates a token and returns it (it is shown once; only its hash is kept).
pub async fn create(config: &ControllerConfig, label: &str) -> anyhow::Result<String> {
    let store = super::controller::open_store(config).await?;
    let token = new_token();
    store
        .add_token(&token_hash(&token), label, crate::timefmt::now_ms())
        .await?;
    store.close().await;
    Ok(token)
}

fn when(ms: Option<i64>) -> String {
    ms.map_or_else(|| "-".to_owned(), crate::timefmt::rfc3339)
}

/// The tokens as an aligned table: id, label, created, last used, revoked.
pub async fn list(config: &ControllerConfig) -> anyhow::Result<String> {
    let store = super::controller::open_store(config).await?;
    let registry = Registry::new(Vec::new(), &config.api_tokens);
    let tokens = registry.list_tokens(&store).await;
    store.close().await;
    let rows: Vec<[String; 5]> = tokens?
        .into_iter()
        .map(|t| {
            let created = if t.source == "config" {
                "(config file)".to_owned()
            } else {
                when(Some(t.info.created_at_ms))
            };
            [
                t.info.id,
                crate::termsafe::visible(&t.info.label, crate::termsafe::Shape::OneLine)
                    .into_owned(),
                created,
                when(t.info.last_used_ms),
                when(t.info.revoked_at_ms),
            ]
        })
        .collect();
    if rows.is_empty() {
        return Ok("no tokens; create one with `fleet token create --label WHO`\n".to_owned());
    }
    let header = ["ID", "LABEL", "CREATED", "LAST USED", "REVOKED"].map(String::from);
    let mut widths = [0usize; 5];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    Ok(out)
}

/// Revokes the token with this id; says what was revoked.
pub async fn revoke(config: &ControllerConfig, id: &str) -> anyhow::Result<String> {
    let store = super::controller::open_store(config).await?;
    let registry = Registry::new(Vec::new(), &config.api_tokens);
    let revoked = registry.revoke(&store, id.trim()).await;
    store.close().await;
    let info = revoked?;
    Ok(format!(
        "revoked token {} ({}) at {}; running controllers refuse it within their registry refresh (2 s by default)\n",
        info.id,
        crate::termsafe::visible(&info.label, crate::termsafe::Shape::OneLine),
        when(info.revoked_at_ms),
    ))
}
