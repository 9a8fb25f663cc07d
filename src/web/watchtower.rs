//! The watchTower compatibility listener: watchTower's heartbeat and event protocol, served on a
//! second address of the controller so that clients written for watchTower work unchanged.
//! `docs/watchtower.md` is its prose twin.
//!
//! An adapter only: every request becomes a native pulse, cancel, event or query on the same
//! [`AppState`] the API uses, so both doors see one set of heartbeats and one event log. It must
//! never hold heartbeat or event rules of its own (those are `crate::heartbeat`'s, the
//! pipeline's: `pipeline::heartbeats`, `pipeline::events`), and never answer with anything but
//! HTTP 200: watchTower clients read the real status from the body's `result`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Form, FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, Method, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use serde_json::{Map, Value, json};
use sha2::Sha256;

use super::AppState;
use crate::heartbeat::{self, AlertRoute, Heartbeat, HeartbeatState, Owner, Pulse};
use crate::model::InvalidInput;
use crate::pipeline::heartbeats::HeartbeatError;
use crate::store::StoreError;
use crate::store::events::{EventQuery, NewEvent};

/// Largest request body read. The password is checked before any body is, so only clients
/// that know it can make the listener buffer one.
pub const BODY_MAX: usize = 64 * 1024;
/// Longest `service` or `message` pattern of `GET /events`, in bytes.
pub const PATTERN_MAX: usize = 1000;
/// Memory a compiled pattern may take: the regex crate matches in linear time, this bounds the
/// automaton a crafted pattern could make it build.
const REGEX_SIZE_MAX: usize = 1 << 20;
/// Most events fetched from the store for one `GET /events`, before the patterns filter them:
/// the patterns cannot be given to the store, and a search must not read the whole log.
const EVENTS_FETCH_MAX: i64 = 10_000;
/// The window `GET /events` searches when `from` is not given.
const DEFAULT_WINDOW_MS: i64 = 24 * 3600 * 1000;

/// The watchTower listener's shared state: the controller's state and the password its clients
/// give.
struct WatchtowerListener {
    /// The controller's state, shared with the main API.
    app: Arc<AppState>,
    password: Password,
}

/// The configured password, kept for comparison in constant time: the HMAC of each side under
/// a key made at start is compared, so neither the password's bytes nor its length show in a
/// client's stopwatch.
struct Password {
    key: [u8; 32],
    expected: Vec<u8>,
}

impl Password {
    fn new(password: &str) -> Self {
        let key = rand::random::<[u8; 32]>();
        let expected = Self::mac(&key, password.as_bytes())
            .finalize()
            .into_bytes()
            .to_vec();
        Self { key, expected }
    }

    fn mac(key: &[u8; 32], bytes: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
        mac.update(bytes);
        mac
    }

    fn matches(&self, given: &[u8]) -> bool {
        Self::mac(&self.key, given)
            .verify_slice(&self.expected)
            .is_ok()
    }
}

/// Builds the watchTower router over the controller's state. Serve it on its own address; it
/// shares nothing with the main router but `app`.
pub fn router(app: Arc<AppState>, password: &str) -> Router {
    let listener = Arc::new(WatchtowerListener {
        app,
        password: Password::new(password),
    });
    Router::new()
        .route("/heartbeat", post(pulse).delete(cancel))
        .route("/heartbeats", get(list))
        // A wildcard, so a service named `backup/db` can be asked for as written.
        .route("/heartbeat/{*service}", get(get_one))
        .route("/event", post(add_event))
        .route("/events", get(events))
        .route("/hello", get(hello))
        // The paths of watchTower's first clients.
        .route("/", post(pulse).delete(cancel))
        .route("/add-event", post(add_event))
        .route("/get/{*service}", get(get_one))
        .method_not_allowed_fallback(unknown)
        .fallback(unknown)
        .layer(axum::middleware::from_fn_with_state(
            listener.clone(),
            require_password,
        ))
        // The password is checked before any body is read, and no body is read without its
        // pace and a share (see `intake`).
        .layer(axum::middleware::from_fn_with_state(
            listener.app.intake.clone(),
            super::intake::guard,
        ))
        // Outermost: the intake's refusals answer as watchTower does, HTTP 200 and `result`.
        .layer(axum::middleware::map_response(as_watchtower_answer))
        .with_state(listener)
}

/// A watchTower error: `{"result": <status>, "hint": "…"}`, sent with HTTP 200.
#[derive(Debug)]
struct Refusal {
    result: u16,
    hint: Option<String>,
}

impl Refusal {
    fn hint(hint: impl Into<String>) -> Self {
        Self {
            result: 500,
            hint: Some(hint.into()),
        }
    }

    fn not_found() -> Self {
        Self::hint("service not found")
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = match self.hint {
            Some(hint) => json!({ "result": self.result, "hint": hint }),
            None => json!({ "result": self.result }),
        };
        Json(body).into_response()
    }
}

impl From<InvalidInput> for Refusal {
    fn from(err: InvalidInput) -> Self {
        // Name the field as the client sent it.
        let field = match err.field.as_str() {
            "next_in" => "nextIn",
            "alert.channel" => "alertType",
            "alert.target" => "alertTarget",
            other => other,
        };
        Self::hint(format!("{field}: {}", err.problem))
    }
}

impl From<StoreError> for Refusal {
    /// Our sentence for the error's fault; the database's text goes to the log only.
    fn from(err: StoreError) -> Self {
        tracing::warn!(cause = %format!("{err:#}"), "a watchTower request failed in the store");
        Self::hint(err.public_message())
    }
}

impl From<HeartbeatError> for Refusal {
    fn from(err: HeartbeatError) -> Self {
        match err {
            HeartbeatError::Invalid(invalid) => invalid.into(),
            HeartbeatError::NotFound(_) => Self::not_found(),
            HeartbeatError::Forbidden(why) => Self {
                result: 403,
                hint: Some(why),
            },
            HeartbeatError::TooMany(why) => Self {
                result: 429,
                hint: Some(why),
            },
            HeartbeatError::Store(fault) => Self::hint(fault.public_message()),
            HeartbeatError::Unavailable(why) => Self::hint(format!("{why}; try again later")),
        }
    }
}

impl From<crate::pipeline::events::EventError> for Refusal {
    fn from(err: crate::pipeline::events::EventError) -> Self {
        use crate::pipeline::events::EventError;
        match err {
            EventError::Invalid(invalid) => invalid.into(),
            EventError::Forbidden(why) => Self {
                result: 403,
                hint: Some(why),
            },
            EventError::Store(err) => err.into(),
        }
    }
}

type Answer = Result<Json<Value>, Refusal>;

/// A refusal made before a handler ran (`intake`: a body too large, too slow, or over its
/// share) in watchTower's form: HTTP 200, `{"result": <status>, "hint": "…"}`.
async fn as_watchtower_answer(response: Response) -> Response {
    if response.status() == axum::http::StatusCode::OK {
        return response;
    }
    let status = response.status().as_u16();
    let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let hint = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned));
    Refusal {
        result: status,
        hint,
    }
    .into_response()
}

async fn require_password(
    State(listener): State<Arc<WatchtowerListener>>,
    request: Request,
    next: Next,
) -> Response {
    let given = request
        .headers()
        .get("password")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !listener.password.matches(given) {
        return Refusal {
            result: 403,
            hint: None,
        }
        .into_response();
    }
    next.run(request).await
}

async fn unknown() -> Refusal {
    Refusal {
        result: 404,
        hint: None,
    }
}

/// `GET /hello`: the clock and version, for a client checking its configuration.
async fn hello() -> Json<Value> {
    Json(json!({
        "result": 200,
        "world": crate::timefmt::now_ms().div_euclid(1000),
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

/// `POST /heartbeat` (and `POST /`): `{service, alertType, alertTarget, nextIn}`, `nextIn` in
/// seconds. Answered once the pulse is stored.
async fn pulse(
    State(listener): State<Arc<WatchtowerListener>>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    let fields = read_fields(&headers, body).await?;
    let service = required(&fields, "service", "no service provided")?;
    let next_in = present(&fields, "nextIn").ok_or_else(|| Refusal::hint("no nextIn provided"))?;
    let channel = required(&fields, "alertType", "no alert type provided")?;
    let target = required(&fields, "alertTarget", "no alert target provided")?;
    let outcome = listener
        .app
        .heartbeats
        .pulse(
            Pulse {
                service,
                node: None,
                next_in_ms: heartbeat::span_ms("nextIn", next_in)?,
                grace_ms: 0,
                alert: Some(AlertRoute { channel, target }),
            },
            Owner::Watchtower,
        )
        .await?;
    Ok(Json(json!({
        "result": 200,
        "action": "pulse",
        "heartBeat": watchtower_heartbeat(&outcome.heartbeat),
    })))
}

/// `DELETE /heartbeat` (and `DELETE /`): `{service}`. The heartbeat stays listed, cancelled,
/// until it pulses again.
async fn cancel(
    State(listener): State<Arc<WatchtowerListener>>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    let fields = read_fields(&headers, body).await?;
    let service = required(&fields, "service", "no service provided")?;
    listener
        .app
        .heartbeats
        .cancel(&service, &Owner::Watchtower)
        .await?;
    let current = stored(&listener, &service).await?;
    Ok(Json(json!({
        "result": 200,
        "action": "cancel",
        "heartBeat": watchtower_heartbeat(&current),
    })))
}

/// The heartbeat of `service` as stored now, or `service not found`.
async fn stored(listener: &WatchtowerListener, service: &str) -> Result<Heartbeat, Refusal> {
    listener
        .app
        .durable
        .heartbeat(service, crate::timefmt::now_ms())
        .await?
        .ok_or_else(Refusal::not_found)
}

/// Most heartbeats `GET /heartbeats` lists (watchTower's protocol has no paging; the native
/// API does).
const LIST_MAX: i64 = 10_000;

/// `GET /heartbeats`: the heartbeats by name (the first [`LIST_MAX`]), agents' own
/// (`node:<name>`) included.
async fn list(State(listener): State<Arc<WatchtowerListener>>) -> Answer {
    let all = listener
        .app
        .durable
        .heartbeats(crate::timefmt::now_ms(), None, LIST_MAX)
        .await?;
    let all: Vec<Value> = all.iter().map(watchtower_heartbeat).collect();
    Ok(Json(json!({ "result": 200, "heartBeats": all })))
}

/// `GET /heartbeat/<service>` (and `GET /get/<service>`).
async fn get_one(
    State(listener): State<Arc<WatchtowerListener>>,
    service: Result<Path<String>, PathRejection>,
) -> Answer {
    let Path(service) = service.map_err(|e| Refusal::hint(e.body_text()))?;
    let found = stored(&listener, &service).await?;
    Ok(Json(json!({
        "result": 200,
        "heartBeat": watchtower_heartbeat(&found),
    })))
}

/// `POST /event` (and `POST /add-event`): `{service, message, level?, alert?}`, stored as a
/// native event with `alert` in its fields.
async fn add_event(
    State(listener): State<Arc<WatchtowerListener>>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    let fields = read_fields(&headers, body).await?;
    let service = required(&fields, "service", "no service provided")?;
    let message = required(&fields, "message", "no message provided")?;
    let level = match present(&fields, "level") {
        Some(level) => heartbeat::parse_level(level)?,
        None => 0,
    };
    let mut extra = Map::new();
    if let Some(alert) = present(&fields, "alert") {
        extra.insert("alert".into(), flag(alert));
    }
    let event = NewEvent {
        node: None,
        service: Some(service),
        level,
        message,
        fields: Value::Object(extra),
        category: "event",
    };
    listener.app.events.add(&event).await?;
    Ok(Json(json!({ "result": 200, "action": "event" })))
}

/// `GET /events?from=&to=&level=&service=&message=`: newest first. `from` and `to` are epoch
/// seconds (`from` defaults to a day before `to`, `to` to now); `level` is the least level;
/// `service` and `message` are case-insensitive regular expressions searched in the field.
async fn events(State(listener): State<Arc<WatchtowerListener>>, uri: Uri) -> Answer {
    let Query(params) = Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .map_err(|e| Refusal::hint(format!("the query is not valid: {}", e.body_text())))?;
    // The last of a repeated parameter wins; an empty one is no filter.
    let params: HashMap<String, String> = params
        .into_iter()
        .filter(|(_, v)| !v.trim().is_empty())
        .collect();
    let now = crate::timefmt::now_ms();
    let to_ms = params
        .get("to")
        .map(|t| epoch_ms("to", t, now))
        .transpose()?;
    let from_ms = match params.get("from") {
        Some(t) => epoch_ms("from", t, now)?,
        None => to_ms.unwrap_or(now) - DEFAULT_WINDOW_MS,
    };
    let min_level = params
        .get("level")
        .map(|l| heartbeat::level_filter(l))
        .transpose()?;
    let service = pattern("service", params.get("service"))?;
    let message = pattern("message", params.get("message"))?;
    let entries = listener
        .app
        .durable
        .events(&EventQuery {
            category: "event",
            min_level,
            from_ms: Some(from_ms),
            to_ms,
            limit: EVENTS_FETCH_MAX,
            ..EventQuery::default()
        })
        .await?;
    let events: Vec<Value> = entries
        .iter()
        .filter(|e| {
            service
                .as_ref()
                .is_none_or(|re| re.is_match(e.service.as_deref().unwrap_or_default()))
                && message.as_ref().is_none_or(|re| re.is_match(&e.message))
        })
        .map(|e| {
            json!({
                "date": e.ts_ms.div_euclid(1000),
                "level": e.level,
                "message": e.message,
                "service": e.service,
                "alert": e.fields.get("alert").cloned().unwrap_or(Value::Null),
            })
        })
        .collect();
    Ok(Json(json!({ "result": 200, "events": events })))
}

/// A heartbeat as watchTower described one: times in epoch seconds, `expected` the moment it is
/// reported down.
fn watchtower_heartbeat(h: &Heartbeat) -> Value {
    let next_in = if h.next_in_ms % 1000 == 0 {
        json!(h.next_in_ms / 1000)
    } else {
        json!(h.next_in_ms as f64 / 1000.0)
    };
    json!({
        "service": h.service,
        "alertType": h.alert.as_ref().map(|a| &a.channel),
        "alertTarget": h.alert.as_ref().map(|a| &a.target),
        "nextIn": next_in,
        "last": h.last_pulse_ms.div_euclid(1000),
        "expected": h.deadline_ms.div_euclid(1000),
        "alerted": h.state == HeartbeatState::Down,
        "cancelled": h.state == HeartbeatState::Cancelled,
    })
}

/// The body's fields, from JSON or a form: by Content-Type, else whichever parses (JSON first).
/// An empty body has no fields, so the answer names the first one missing.
async fn read_fields(headers: &HeaderMap, body: Body) -> Result<Map<String, Value>, Refusal> {
    let bytes =
        axum::body::to_bytes(body, BODY_MAX).await.map_err(
            |e| match super::intake::is_too_slow(&e) {
                true => Refusal {
                    result: 408,
                    hint: Some(super::intake::BodyTooSlow.to_string()),
                },
                false => Refusal {
                    result: 413,
                    hint: Some(format!(
                        "the body could not be read: it must be at most {} KiB",
                        BODY_MAX / 1024
                    )),
                },
            },
        )?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let kind = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        });
    match kind.as_deref() {
        Some(kind) if kind == "application/json" || kind.ends_with("+json") => json_fields(&bytes),
        Some("application/x-www-form-urlencoded") => form_fields(bytes).await,
        _ => match json_fields(&bytes) {
            Ok(fields) => Ok(fields),
            Err(_) => form_fields(bytes).await,
        },
    }
}

fn json_fields(bytes: &[u8]) -> Result<Map<String, Value>, Refusal> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(_) => Err(Refusal::hint(
            "the body must be a JSON object (or a form), like {\"service\": \"backup\"}",
        )),
        Err(err) => Err(Refusal::hint(format!("the body is not valid JSON: {err}"))),
    }
}

async fn form_fields(bytes: axum::body::Bytes) -> Result<Map<String, Value>, Refusal> {
    // axum's own form decoder, fed the bytes already read.
    let request = Request::builder()
        .method(Method::POST)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(bytes))
        .expect("a request from valid literal parts");
    let Form(pairs) = Form::<Vec<(String, String)>>::from_request(request, &())
        .await
        .map_err(|e| Refusal::hint(format!("the body is not a valid form: {}", e.body_text())))?;
    Ok(pairs
        .into_iter()
        .map(|(name, value)| (name, Value::String(value)))
        .collect())
}

/// A field that was given: not absent, null or blank.
fn present<'a>(fields: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    fields.get(name).filter(|v| match v {
        Value::Null => false,
        Value::String(s) => !s.trim().is_empty(),
        _ => true,
    })
}

/// A required text field; numbers and booleans are taken as written (watchTower's clients
/// were JavaScript).
fn required(fields: &Map<String, Value>, name: &str, missing: &str) -> Result<String, Refusal> {
    match present(fields, name) {
        None => Err(Refusal::hint(missing)),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(v.to_string()),
        Some(_) => Err(Refusal::hint(format!("{name}: must be text"))),
    }
}

/// A form can only say `true` as text: store the boolean a JSON client would have sent.
fn flag(value: &Value) -> Value {
    match value {
        Value::String(s) if s.eq_ignore_ascii_case("true") => Value::Bool(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Value::Bool(false),
        other => other.clone(),
    }
}

/// A time parameter: epoch seconds, or what operators type elsewhere (RFC 3339, `-1h`).
fn epoch_ms(field: &str, text: &str, now_ms: i64) -> Result<i64, Refusal> {
    if let Ok(seconds) = text.trim().parse::<f64>() {
        // Up to the year 5000: anything later is a mistake (milliseconds, say).
        if seconds.is_finite() && (0.0..=95_617_584_000.0).contains(&seconds) {
            return Ok((seconds * 1000.0).round() as i64);
        }
        return Err(Refusal::hint(format!(
            "{field}: {text:?} is not a time; give epoch seconds, like {}",
            now_ms / 1000
        )));
    }
    crate::timefmt::parse_time(text, now_ms).map_err(|_| {
        Refusal::hint(format!(
            "{field}: {text:?} is not a time; give epoch seconds, like {}",
            now_ms / 1000
        ))
    })
}

/// A case-insensitive pattern, bounded in length and in the memory it compiles to.
fn pattern(field: &str, text: Option<&String>) -> Result<Option<regex::Regex>, Refusal> {
    let Some(text) = text else {
        return Ok(None);
    };
    if text.len() > PATTERN_MAX {
        return Err(Refusal::hint(format!(
            "{field}: the pattern is {} bytes; at most {PATTERN_MAX} are allowed",
            text.len()
        )));
    }
    regex::RegexBuilder::new(text)
        .case_insensitive(true)
        .size_limit(REGEX_SIZE_MAX)
        .dfa_size_limit(REGEX_SIZE_MAX)
        .build()
        .map(Some)
        .map_err(|e| {
            Refusal::hint(format!(
                "{field}: not a valid regular expression: {}",
                e.to_string().replace('\n', " ")
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_epoch_seconds_or_what_operators_type() {
        let now = 1_700_000_000_000;
        assert_eq!(epoch_ms("from", "1700000000", now).unwrap(), now);
        assert_eq!(epoch_ms("from", "1.5", now).unwrap(), 1500);
        assert_eq!(epoch_ms("from", "-1h", now).unwrap(), now - 3_600_000);
        assert!(epoch_ms("from", "1700000000000000", now).is_err());
        assert!(epoch_ms("from", "yesterday", now).is_err());
    }

    #[test]
    fn patterns_are_bounded_and_case_insensitive() {
        let re = pattern("service", Some(&"^back.*".to_owned()))
            .unwrap()
            .unwrap();
        assert!(re.is_match("BACKUP"));
        assert!(pattern("service", Some(&"(".to_owned())).is_err());
        assert!(pattern("service", Some(&"a".repeat(PATTERN_MAX + 1))).is_err());
        // Compiles to far more than the size limit.
        assert!(pattern("service", Some(&"\\w{1000}\\w{1000}".to_owned())).is_err());
        assert!(pattern("service", None).unwrap().is_none());
    }

    #[test]
    fn the_password_must_match_exactly() {
        let password = Password::new("s3cret");
        assert!(password.matches(b"s3cret"));
        for wrong in [&b""[..], b"s3cre", b"s3cret ", b"S3CRET", b"s3cret\0"] {
            assert!(!password.matches(wrong), "{wrong:?}");
        }
    }

    #[test]
    fn fields_are_named_as_the_client_sent_them() {
        let hint = Refusal::from(InvalidInput::new("next_in", "must be more than 0")).hint;
        assert_eq!(hint.as_deref(), Some("nextIn: must be more than 0"));
        let hint = Refusal::from(InvalidInput::new("alert.target", "is empty")).hint;
        assert_eq!(hint.as_deref(), Some("alertTarget: is empty"));
    }
}
