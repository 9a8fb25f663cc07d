//! The event log's way in: an event from an operator, a node (HTTP or NATS) or the watchTower
//! listener is checked by one rule and stored, whatever door it came in by.
//!
//! Knows nothing of HTTP or NATS: the adapters parse their requests into [`EventRequest`] (or a
//! [`NewEvent`] of their own protocol) and map [`EventError`] to their answers.

use serde::Deserialize;

use super::Requester;
use crate::heartbeat;
use crate::model::InvalidInput;
use crate::store::events::NewEvent;
use crate::store::{Durable, StoreError};

/// The body of a new event (`POST /api/v1/events`, NATS `<prefix>.<node>.Event`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRequest {
    pub service: Option<String>,
    pub node: Option<String>,
    pub level: Option<serde_json::Value>,
    pub message: String,
    pub fields: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// A node named another node.
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl EventError {
    /// The status this refusal is answered with, over HTTP and in NATS replies.
    pub fn status(&self) -> u16 {
        match self {
            EventError::Invalid(_) => 400,
            EventError::Forbidden(_) => 403,
            EventError::Store(err) => super::fault_status(err.fault()),
        }
    }
}

/// Checks and stores events.
#[derive(Clone)]
pub struct Events {
    durable: Durable,
}

impl Events {
    pub fn new(durable: Durable) -> Self {
        Self { durable }
    }

    /// An event sent by `who`: a node's events always carry its own name. Returns its id.
    pub async fn add_request(
        &self,
        who: &Requester,
        request: EventRequest,
    ) -> Result<i64, EventError> {
        let event = NewEvent {
            node: who
                .speaks_for(request.node)
                .map_err(EventError::Forbidden)?,
            service: request.service,
            level: match &request.level {
                Some(level) => heartbeat::parse_level(level)?,
                None => 1,
            },
            message: request.message,
            fields: serde_json::Value::Object(request.fields.unwrap_or_default()),
            category: "event",
        };
        self.add(&event).await
    }

    /// An event made by an adapter of another protocol (watchTower's): checked, then stored.
    pub async fn add(&self, event: &NewEvent) -> Result<i64, EventError> {
        check_event(event)?;
        Ok(self
            .durable
            .add_event(event, crate::timefmt::now_ms())
            .await?)
    }
}

/// The rules every new event meets, whichever door it came in by.
pub fn check_event(event: &NewEvent) -> Result<(), InvalidInput> {
    if event.service.is_none() && event.node.is_none() {
        return Err(InvalidInput::new(
            "service",
            "an event needs a service or a node",
        ));
    }
    if let Some(service) = &event.service {
        heartbeat::check_service(service)?;
    }
    if let Some(node) = &event.node {
        crate::model::NodeName::parse(node).map_err(|e| InvalidInput::new("node", e.problem))?;
    }
    heartbeat::check_message(&event.message)?;
    if event.fields.to_string().len() > heartbeat::limits::FIELDS_MAX {
        return Err(InvalidInput::new(
            "fields",
            format!(
                "are more than {} bytes as JSON",
                heartbeat::limits::FIELDS_MAX
            ),
        ));
    }
    Ok(())
}
