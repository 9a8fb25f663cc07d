//! Who is looking at the dashboard: logging in (operator tokens, names and passwords, and how
//! failed logins back off), the session cookie, the CSRF token every state-changing form
//! carries, and the address allowlist. The cookie holds a random id (HttpOnly,
//! SameSite=Strict, Secure under TLS); the store keeps only its SHA-256.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::store::sessions::Session;
use crate::store::{Durable, StoreError};
use crate::web::AppState;

pub const COOKIE: &str = "fleet_session";

/// A logged-in dashboard user. As an extractor it is the check: without a valid session the
/// request is sent to the login page (and back here afterwards).
#[derive(Debug, Clone)]
pub struct Viewer {
    pub who: String,
    pub csrf: String,
    id_hash: String,
    /// The operator token the session was opened with (its id), if one was: the session
    /// and its live streams end when it is revoked.
    pub token_id: Option<String>,
}

impl Viewer {
    pub fn id_hash(&self) -> &str {
        &self.id_hash
    }

    /// Refuses a state-changing form that another site posted or that lacks this session's
    /// CSRF token: every such form of the dashboard passes here.
    pub fn check_form(&self, headers: &HeaderMap, csrf: Option<&str>) -> Result<(), Refused> {
        same_origin(headers).and_then(|()| self.check_csrf(csrf.unwrap_or_default()))
    }

    /// Refuses a form without this session's CSRF token.
    pub fn check_csrf(&self, given: &str) -> Result<(), Refused> {
        // Tokens of another length differ at once; equal lengths compare without an early exit.
        if bool::from(given.as_bytes().ct_eq(self.csrf.as_bytes())) {
            Ok(())
        } else {
            Err(Refused(
                "the form's CSRF token is missing or wrong: reload the page and try again",
            ))
        }
    }
}

/// The SHA-256 of a session id, as stored.
pub fn hash_id(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

// ---------------------------------------------------------------------------------------------
// Failed logins back off.
//
// Every failed login is counted in the durable store (so every controller on the database
// agrees) under keys, each with its own limit (`store::logins::Backoff`): after a key's
// threshold of failures the next attempt under it waits `[ui] login_backoff` (1 s), doubled
// with each further failure up to `[ui] login_backoff_max` (15 min), and is refused at once
// (429 with Retry-After) without its password being checked. A key with no failure for a day
// is forgotten.
//
// - `pair:<address>|<name>`: a name from one address, threshold 5. The strictest, as it
//   counts only what that address did to that name.
// - `addr:<address>`: one address, whatever the names (a password spray), wrong tokens too;
//   threshold 10.
// - `user:<name>`: a name from every address (a spray from many addresses); threshold 20.
//
// An address is one IPv4 address, or an IPv6 /64 (what one host can use). The user's own
// addresses are safe from an attacker elsewhere: an address the name logged in from in the
// last 30 days is *known* for it, and a known pair answers only to its `pair:` key, so
// neither a spray from elsewhere (`user:`) nor other names tried from a shared address
// (`addr:`) hold the real user up; a success clears its pair and makes it known. Failures
// under `user:` and `addr:` are not cleared by a success (a success from one place says
// nothing about failures elsewhere): they wait to be forgotten. Unknown names are counted as
// known ones are, so no answer tells which names exist.
//
// Checking a password costs about 20 MiB and tens of milliseconds of a core (Argon2id's
// point): one check per core at once, and one more reserved for known pairs, so a flood of
// checks from elsewhere cannot make the real user wait. A login waits for a check at most a
// second and is then answered 503 "busy": never a queue that holds everyone up.
// ---------------------------------------------------------------------------------------------

/// Failures of one name from one address before that pair waits.
const PAIR_THRESHOLD: i64 = 5;
/// Failures from one address (any names, and wrong tokens) before the address waits.
const ADDR_THRESHOLD: i64 = 10;
/// Failures of one name from any addresses before the name waits (where it is not known).
const USER_THRESHOLD: i64 = 20;
/// A key without a failure for this long starts again from nothing.
const FORGET_MS: i64 = 24 * 3600 * 1000;
/// An address a name logged in from this recently is known for it.
const KNOWN_MS: i64 = 30 * 24 * 3600 * 1000;
/// Longest a login waits for a password check before it is answered "busy".
const CHECK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Password checks at once for anyone: one per core.
static PASSWORD_CHECKS: std::sync::LazyLock<tokio::sync::Semaphore> =
    std::sync::LazyLock::new(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        tokio::sync::Semaphore::new(cores.min(8))
    });
/// One more, only for a name from an address it is known at.
static KNOWN_CHECKS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// How a login attempt ended.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginOutcome {
    /// In: who logged in, as the session records it, and the id of the token used, if any.
    Allowed(String, Option<String>),
    /// A wrong token, or a name and password that do not match (counted).
    Wrong,
    /// Refused without a check: too many failures; the next attempt in this many seconds.
    Wait(u64),
    /// Every password check is taken: try again in a moment (not counted).
    Busy,
}

/// The address a login is counted under: an IPv4 address (an IPv4-mapped IPv6 one read as
/// such), or an IPv6 address's /64, which one host may use all of.
pub fn login_address(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match ipnet::Ipv6Net::new(v6, 64) {
            Ok(net) => net.trunc().to_string(),
            Err(_) => v6.to_string(),
        },
    }
}

/// A name as it appears in a key: control characters and backslashes escaped (a key stays
/// printable text on both databases), and a name longer than any user may have (64) by its
/// hash, so a key stays short.
fn name_key(name: &str) -> String {
    let escaped = name.escape_debug().to_string();
    if escaped.len() <= 128 {
        escaped
    } else {
        format!("sha256:{}", hex::encode(Sha256::digest(name.as_bytes())))
    }
}

/// One login attempt, as the limits see it.
struct Attempt {
    addr: String,
    /// The name tried (as in a key); none for a token.
    name: Option<String>,
    backoff: (i64, i64),
}

impl Attempt {
    fn new(ui: &crate::config::UiConfig, peer: IpAddr, name: Option<&str>) -> Self {
        Self {
            addr: login_address(peer),
            name: name.map(name_key),
            backoff: (
                ui.login_backoff.as_millis() as i64,
                ui.login_backoff_max.as_millis() as i64,
            ),
        }
    }

    fn backoff(&self, threshold: i64) -> crate::store::logins::Backoff {
        crate::store::logins::Backoff {
            threshold,
            first_ms: self.backoff.0,
            max_ms: self.backoff.1,
            forget_ms: FORGET_MS,
        }
    }

    /// The keys this attempt answers to, and under which its failure counts (a known pair
    /// answers only to its pair; its failures still count under every key).
    fn keys(&self, known: bool) -> Vec<(String, crate::store::logins::Backoff)> {
        let addr = (format!("addr:{}", self.addr), self.backoff(ADDR_THRESHOLD));
        match &self.name {
            None => vec![addr],
            Some(name) => {
                let pair = (
                    format!("pair:{}|{name}", self.addr),
                    self.backoff(PAIR_THRESHOLD),
                );
                if known {
                    vec![pair]
                } else {
                    let user = (format!("user:{name}"), self.backoff(USER_THRESHOLD));
                    vec![pair, addr, user]
                }
            }
        }
    }

    /// Whether this name logged in from this address lately.
    async fn known(&self, durable: &Durable, now_ms: i64) -> Result<bool, StoreError> {
        match &self.name {
            Some(name) => {
                durable
                    .login_known(name, &self.addr, now_ms - KNOWN_MS)
                    .await
            }
            None => Ok(false),
        }
    }

    /// Seconds until every key this attempt answers to allows a check; 0: now.
    async fn wait_s(&self, durable: &Durable, known: bool, now_ms: i64) -> Result<u64, StoreError> {
        let keys: Vec<String> = self.keys(known).into_iter().map(|(k, _)| k).collect();
        let until = durable
            .login_failures(&keys, now_ms - FORGET_MS)
            .await?
            .iter()
            .map(|f| f.next_allowed_ms)
            .max()
            .unwrap_or(0);
        Ok(match until - now_ms {
            ..=0 => 0,
            ms => (ms as u64).div_ceil(1000),
        })
    }

    async fn failed(&self, durable: &Durable, now_ms: i64) -> Result<(), StoreError> {
        for (key, backoff) in self.keys(false) {
            let standing = durable.record_login_failure(&key, &backoff, now_ms).await?;
            tracing::debug!(key, failures = standing.failures, "dashboard login failed");
        }
        Ok(())
    }

    async fn succeeded(&self, durable: &Durable, now_ms: i64) -> Result<(), StoreError> {
        if let Some(name) = &self.name {
            for (key, _) in self.keys(true) {
                durable.clear_login_failures(&key).await?;
            }
            durable
                .record_login_success(name, &self.addr, now_ms, now_ms - KNOWN_MS)
                .await?;
        }
        Ok(())
    }
}

/// A login with an operator token from `peer`: refused at once while its address waits;
/// a wrong token counts against the address.
pub async fn login_with_token(
    state: &crate::web::AppState,
    peer: IpAddr,
    token: &str,
) -> Result<LoginOutcome, StoreError> {
    let attempt = Attempt::new(&state.ui, peer, None);
    let wait = attempt
        .wait_s(&state.durable, false, crate::timefmt::now_ms())
        .await?;
    if wait > 0 {
        return Ok(LoginOutcome::Wait(wait));
    }
    match state.registry.token(token) {
        Some(holder) => {
            state.registry.note_use(&holder, &state.durable);
            Ok(LoginOutcome::Allowed(
                format!("token {:?}", holder.label),
                holder.id,
            ))
        }
        None => {
            tracing::warn!(peer = %peer, "dashboard login with a wrong token");
            attempt
                .failed(&state.durable, crate::timefmt::now_ms())
                .await?;
            Ok(LoginOutcome::Wrong)
        }
    }
}

/// A login with a name and password from `peer`, under the limits above: refused at once
/// while a key it answers to waits, else checked (bounded, see [`LoginOutcome::Busy`]) and
/// counted. An unknown name costs what a known one does, so timing does not tell which names
/// exist.
pub async fn login_with_password(
    state: &crate::web::AppState,
    peer: IpAddr,
    name: &str,
    password: &str,
) -> Result<LoginOutcome, StoreError> {
    let attempt = Attempt::new(&state.ui, peer, Some(name));
    let durable = &state.durable;
    let now = crate::timefmt::now_ms();
    let known = attempt.known(durable, now).await?;
    // Looked at before waiting for a check, so a flood is refused for the price of a read.
    let wait = attempt.wait_s(durable, known, now).await?;
    if wait > 0 {
        return Ok(LoginOutcome::Wait(wait));
    }
    let checks = if known {
        &KNOWN_CHECKS
    } else {
        &*PASSWORD_CHECKS
    };
    let Ok(Ok(_permit)) = tokio::time::timeout(CHECK_WAIT, checks.acquire()).await else {
        return Ok(LoginOutcome::Busy);
    };
    // Again once a check is ours: failures counted while this one waited hold it back too,
    // so a burst gets at most one check per permit past its limit.
    let wait = attempt
        .wait_s(durable, known, crate::timefmt::now_ms())
        .await?;
    if wait > 0 {
        return Ok(LoginOutcome::Wait(wait));
    }
    let user = state.ui.users.iter().find(|u| u.name == name);
    let phc = user.map_or_else(|| UNKNOWN_USER.clone(), |u| u.password_hash.clone());
    let given = password.to_owned();
    let matches = tokio::task::spawn_blocking(move || password_matches(&phc, &given))
        .await
        .unwrap_or(false)
        && user.is_some();
    let now = crate::timefmt::now_ms();
    if matches {
        attempt.succeeded(durable, now).await?;
        Ok(LoginOutcome::Allowed(format!("user {name:?}"), None))
    } else {
        tracing::warn!(peer = %peer, user = name, "dashboard login with a wrong name or password");
        attempt.failed(durable, now).await?;
        Ok(LoginOutcome::Wrong)
    }
}

/// What an unknown name's password is checked against, with the parameters every hash made
/// by `fleet operator password` has, so it costs what a known name costs. Made when the
/// dashboard's router is (see [`prepare`]), not on the first unknown name.
static UNKNOWN_USER: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| hash_password("no such user"));

/// Makes the unknown-user hash now, off any request.
pub fn prepare() {
    std::sync::LazyLock::force(&UNKNOWN_USER);
}

/// The Argon2id hash of a password, as a PHC string for `[ui] users`.
pub fn hash_password(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &SaltString::generate(&mut OsRng))
        .expect("Argon2 with default parameters hashes any password")
        .to_string()
}

/// Whether `password` is the one `phc` was made from. A malformed hash matches nothing.
pub fn password_matches(phc: &str, password: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(phc).is_ok_and(|hash| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok()
    })
}

/// A fresh random token (session ids and CSRF tokens), 32 bytes as hex.
pub fn random_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// The session id in the request's cookie, if any.
pub fn cookie_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The `Set-Cookie` value for a session (or, with `None`, one that removes it).
pub fn set_cookie(id: Option<&str>, max_age_s: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    match id {
        Some(id) => {
            format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}")
        }
        None => format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    }
}

impl FromRequestParts<Arc<AppState>> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let to_login = || {
            // Back to where they were after logging in, if that is a page; a form post
            // (say, a logout) cannot be replayed by a redirect.
            let here = match parts.method {
                axum::http::Method::GET => parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/"),
                _ => "/",
            };
            let mut url = reqwest::Url::parse("http://login.invalid/login").expect("a literal URL");
            url.query_pairs_mut().append_pair("next", here);
            Redirect::to(&format!("/login?{}", url.query().unwrap_or_default())).into_response()
        };
        let Some(id) = cookie_id(&parts.headers) else {
            return Err(to_login());
        };
        let id_hash = hash_id(&id);
        match state
            .durable
            .session(&id_hash, crate::timefmt::now_ms())
            .await
        {
            // A session of a token revoked on another controller, opened here before this
            // registry learnt of it: over as soon as it has.
            Ok(Some(Session {
                token_id: Some(id), ..
            })) if !state.registry.id_valid(&id) => {
                if let Err(err) = state.durable.delete_session(&id_hash).await {
                    tracing::warn!(cause = %format!("{err:#}"), "cannot end the session of a revoked token");
                }
                Err(to_login())
            }
            Ok(Some(Session {
                who,
                csrf,
                token_id,
                ..
            })) => Ok(Viewer {
                who,
                csrf,
                id_hash,
                token_id,
            }),
            Ok(None) => Err(to_login()),
            Err(err) => Err(crate::web::error::ApiError::from(err).into_response()),
        }
    }
}

/// Refuses dashboard requests from outside `[ui] allow`.
pub async fn allowlist(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let allow = &state.ui.allow;
    if allow.is_empty() || allow.iter().any(|net| net.contains(&peer.ip())) {
        return next.run(request).await;
    }
    (
        StatusCode::FORBIDDEN,
        format!(
            "the dashboard does not serve {}: see [ui] allow in the controller's config",
            peer.ip()
        ),
    )
        .into_response()
}

/// Refuses a state-changing request that a page of another site sent: its `Origin` (or, when
/// absent, `Referer`) must be this host. SameSite=Strict already keeps the cookie off such
/// requests; this is the second lock.
pub fn same_origin(headers: &HeaderMap) -> Result<(), Refused> {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let source = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .and_then(|v| v.to_str().ok());
    let same = match source {
        // A browser always sends one of them on a form post; a script without either is not a
        // browser page of another site.
        None => true,
        Some(source) => reqwest::Url::parse(source).ok().is_some_and(|u| {
            let authority = match u.port() {
                Some(port) => format!("{}:{port}", u.host_str().unwrap_or_default()),
                None => u.host_str().unwrap_or_default().to_owned(),
            };
            authority == host
        }),
    };
    if same {
        Ok(())
    } else {
        Err(Refused(
            "a form from another site cannot change anything here",
        ))
    }
}

/// A form refused for where it came from or what it lacks: 403 with the reason.
#[derive(Debug)]
pub struct Refused(pub &'static str);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        (StatusCode::FORBIDDEN, self.0).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_is_counted_under_its_ipv4_address_or_its_ipv6_64() {
        let at = |s: &str| login_address(s.parse().unwrap());
        assert_eq!(at("192.0.2.7"), "192.0.2.7");
        assert_eq!(
            at("::ffff:192.0.2.7"),
            "192.0.2.7",
            "an IPv4-mapped address"
        );
        assert_eq!(at("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(
            at("2001:db8:1:2:ffff:ffff:ffff:ffff"),
            "2001:db8:1:2::/64",
            "one host's /64 is one address"
        );
    }

    #[test]
    fn names_in_keys_are_printable_short_and_told_apart() {
        assert_eq!(name_key("alice"), "alice");
        assert_eq!(name_key("a\0b"), "a\\0b");
        assert_ne!(
            name_key("a\\0b"),
            name_key("a\0b"),
            "a backslash is escaped too"
        );
        let long = name_key(&"x".repeat(1024));
        assert!(long.starts_with("sha256:") && long.len() == 71, "{long}");
        assert_ne!(long, name_key(&"x".repeat(1023)));
    }

    #[test]
    fn a_known_pair_answers_only_to_its_own_count() {
        let ui = crate::config::UiConfig::default();
        let attempt = Attempt::new(&ui, "192.0.2.7".parse().unwrap(), Some("alice"));
        let keys =
            |known| -> Vec<String> { attempt.keys(known).into_iter().map(|(k, _)| k).collect() };
        assert_eq!(
            keys(false),
            ["pair:192.0.2.7|alice", "addr:192.0.2.7", "user:alice"]
        );
        assert_eq!(keys(true), ["pair:192.0.2.7|alice"]);
        let token = Attempt::new(&ui, "192.0.2.7".parse().unwrap(), None);
        let keys: Vec<String> = token.keys(false).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["addr:192.0.2.7"]);
    }
}
