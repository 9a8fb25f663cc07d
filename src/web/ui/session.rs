//! Who is looking at the dashboard: the session cookie, the CSRF token every state-changing
//! form carries, and the address allowlist. The cookie holds a random id (HttpOnly,
//! SameSite=Strict, Secure under TLS); the store keeps only its SHA-256.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use sha2::{Digest, Sha256};

use crate::store::sessions::Session;
use crate::web::AppState;

pub const COOKIE: &str = "fleet_session";

/// A logged-in dashboard user. As an extractor it is the check: without a valid session the
/// request is sent to the login page (and back here afterwards).
#[derive(Debug, Clone)]
pub struct Viewer {
    pub who: String,
    pub csrf: String,
    id_hash: String,
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
        if given.len() == self.csrf.len()
            && constant_time_eq(given.as_bytes(), self.csrf.as_bytes())
        {
            Ok(())
        } else {
            Err(Refused(
                "the form's CSRF token is missing or wrong: reload the page and try again",
            ))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Equal length is checked by the caller; compare without an early exit.
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The SHA-256 of a session id, as stored.
pub fn hash_id(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

/// Password checks at once: each costs about 20 MiB and tens of milliseconds of one core
/// (Argon2id's point), so a flood of login attempts waits here instead of exhausting memory.
static PASSWORD_CHECKS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Checks a user's password against `[ui] users`, off the async threads. An unknown user costs
/// the same as a wrong password, so timing does not tell which names exist.
pub async fn check_user(users: &[crate::config::UiUser], name: &str, password: &str) -> bool {
    let known = users.iter().find(|u| u.name == name);
    let phc = known.map_or_else(|| UNKNOWN_USER.clone(), |u| u.password_hash.clone());
    let password = password.to_owned();
    // A login waits its turn at most this long: a flood is refused, not queued without end.
    let Ok(Ok(_permit)) = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        PASSWORD_CHECKS.acquire(),
    )
    .await
    else {
        return false;
    };
    let matches = tokio::task::spawn_blocking(move || password_matches(&phc, &password))
        .await
        .unwrap_or(false);
    matches && known.is_some()
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
            Ok(Some(Session { who, csrf, .. })) => Ok(Viewer { who, csrf, id_hash }),
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
