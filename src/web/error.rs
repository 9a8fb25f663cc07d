//! The one error type of the HTTP layer: a status and a sentence, sent as `{"error": "…"}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::pipeline::IngestError;
use crate::store::StoreError;
use crate::store::durable::Fault;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Sent as `Retry-After` (429, 503): when the client may try again.
    pub retry_after: Option<std::time::Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, after: std::time::Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

/// Parses a JSON body; the error names the field at fault.
pub fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        if path.is_empty() || path == "." || path == "?" {
            ApiError::bad_request(format!("the body is not valid: {}", e.into_inner()))
        } else {
            ApiError::bad_request(format!("{path}: {}", e.into_inner()))
        }
    })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, error = %self.message, "request failed");
        }
        let mut response = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if let Some(after) = self.retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                super::intake::retry_after_value(after),
            );
        }
        response
    }
}

impl From<StoreError> for ApiError {
    /// The status follows the error's [`Fault`] (data: 400, never a 503 a client would resend
    /// forever); the client reads our sentence, the log gets the database's.
    fn from(err: StoreError) -> Self {
        let fault = err.fault();
        tracing::warn!(cause = %format!("{err:#}"), ?fault, "a request failed in the store");
        Self::new(fault_status(fault), err.public_message())
    }
}

/// The HTTP status of a store [`Fault`] (`pipeline::fault_status`).
pub fn fault_status(fault: Fault) -> StatusCode {
    StatusCode::from_u16(crate::pipeline::fault_status(fault))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl From<IngestError> for ApiError {
    fn from(err: IngestError) -> Self {
        let status =
            StatusCode::from_u16(err.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self::new(status, err.to_string())
    }
}

impl From<crate::model::InvalidInput> for ApiError {
    fn from(err: crate::model::InvalidInput) -> Self {
        Self::bad_request(err.to_string())
    }
}

impl From<crate::pipeline::heartbeats::HeartbeatError> for ApiError {
    fn from(err: crate::pipeline::heartbeats::HeartbeatError) -> Self {
        use crate::pipeline::heartbeats::HeartbeatError;
        match err {
            HeartbeatError::Invalid(e) => e.into(),
            HeartbeatError::Forbidden(e) => Self::new(StatusCode::FORBIDDEN, e),
            HeartbeatError::NotFound(_) => Self::not_found(format!(
                "{err}: see GET {}",
                crate::web::heartbeats::HEARTBEATS_PATH
            )),
            HeartbeatError::Store(fault) => Self::new(fault_status(fault), fault.public_message()),
            HeartbeatError::TooMany(e) => Self::new(StatusCode::TOO_MANY_REQUESTS, e)
                .retry_after(std::time::Duration::from_secs(60)),
            HeartbeatError::Unavailable(e) => Self::new(StatusCode::SERVICE_UNAVAILABLE, e),
        }
    }
}

impl From<crate::pipeline::events::EventError> for ApiError {
    fn from(err: crate::pipeline::events::EventError) -> Self {
        use crate::pipeline::events::EventError;
        match err {
            EventError::Invalid(e) => e.into(),
            EventError::Forbidden(e) => Self::new(StatusCode::FORBIDDEN, e),
            EventError::Store(e) => e.into(),
        }
    }
}

impl From<crate::pipeline::CommandError> for ApiError {
    fn from(err: crate::pipeline::CommandError) -> Self {
        use crate::pipeline::CommandError;
        let status = match err {
            CommandError::BadRequest(_) => StatusCode::BAD_REQUEST,
            CommandError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            CommandError::Forbidden(_) => StatusCode::FORBIDDEN,
            CommandError::NotFound(_) => StatusCode::NOT_FOUND,
            CommandError::Store(store) => return store.into(),
        };
        Self::new(status, err.to_string())
    }
}

impl From<crate::pipeline::node_auth::NodeAuthError> for ApiError {
    fn from(err: crate::pipeline::node_auth::NodeAuthError) -> Self {
        use crate::pipeline::node_auth::NodeAuthError;
        if let NodeAuthError::Unavailable(ref cause) = err {
            tracing::warn!(%cause, "cannot remember a node's request");
        }
        let status =
            StatusCode::from_u16(err.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self::new(status, err.to_string())
    }
}
