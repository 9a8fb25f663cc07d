//! `fleet token create`: a new operator token, stored hashed in the controller's durable store.

use crate::config::ControllerConfig;
use crate::pipeline::registry::{new_token, token_hash};

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
