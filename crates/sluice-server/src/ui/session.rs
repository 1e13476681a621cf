//! Signing in to the web UI: a token exchanged for an HttpOnly,
//! SameSite=Strict session cookie; a CSRF token per session checked on every
//! form; failed sign-ins limited per client address.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use sha2::{Digest, Sha256};
use sluice_store::Store;

use crate::access::{Operation, capitalised};
use crate::auth::{Caller, Gate, Tokens};

pub const SESSION_COOKIE: &str = "sluice_session";
/// Carries the sign-in form's CSRF token until the form comes back.
pub const LOGIN_COOKIE: &str = "sluice_login";
const SESSION_FOR: Duration = Duration::from_secs(12 * 3600);
/// Failed sign-ins allowed per address within [`FAILURE_WINDOW`].
const MAX_FAILURES: u32 = 5;
const FAILURE_WINDOW: Duration = Duration::from_secs(300);

/// Recent failed sign-ins by address. The sessions themselves are rows in
/// the store (see [`sluice_store::UiSession`]), so that a restart, a
/// hand-over or a takeover by another server signs no one out.
pub struct Sessions {
    pub sign_ins: crate::limit::Attempts,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            sign_ins: crate::limit::Attempts::new(MAX_FAILURES, FAILURE_WINDOW),
        }
    }
}

/// 32 random bytes as hex.
pub fn random_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// How the store names the session of cookie `id`: only its digest is kept.
fn session_digest(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

/// Opens a session for a verified caller; returns the cookie's value.
pub async fn open(store: &sluice_store::Store, caller: &Caller) -> sluice_store::Result<String> {
    let id = random_token();
    let for_ms = i64::try_from(SESSION_FOR.as_millis()).unwrap_or(i64::MAX);
    store
        .open_session(
            &session_digest(&id),
            &caller.token_id,
            &random_token(),
            for_ms,
        )
        .await?;
    Ok(id)
}

pub async fn close(store: &sluice_store::Store, id: &str) {
    if let Err(e) = store.close_session(&session_digest(id)).await {
        tracing::warn!(error = %e, "could not end a dashboard session");
    }
}

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// `Set-Cookie` for a cookie only this site's own pages send back.
pub fn set_cookie(name: &str, value: &str, max_age: Duration) -> String {
    format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        max_age.as_secs()
    )
}

pub fn session_cookie(id: &str) -> String {
    set_cookie(SESSION_COOKIE, id, SESSION_FOR)
}

/// The client's address, or the unspecified one when unknown (tests).
pub fn client_ip(parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip())
}

/// The client's address, as an extractor.
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(client_ip(parts)))
    }
}

/// Equal strings, compared in constant time through their digests.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (x, y) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

/// The caller behind a session cookie, if any: its token is read again,
/// so that a revoked token ends its sessions at once.
pub async fn caller_from_cookie(
    parts: &Parts,
    store: &Store,
    tokens: &Tokens,
) -> Option<(Caller, String)> {
    let id = cookie(&parts.headers, SESSION_COOKIE).filter(|id| id.len() <= 128)?;
    let session = store.session(&session_digest(&id)).await.ok()??;
    match tokens.caller_by_id(store, &session.token_id).await {
        Ok(caller) => Some((caller, session.csrf)),
        Err(_) => {
            close(store, &id).await;
            None
        }
    }
}

/// A signed-in person looking at the UI, with the CSRF token their forms carry.
pub struct Viewer {
    pub caller: Caller,
    pub csrf: String,
}

impl Viewer {
    /// Refuses someone whose role does not allow `operation` with a page
    /// saying what it needs and who can give it.
    #[allow(clippy::result_large_err)]
    pub fn may(&self, operation: Operation) -> Result<(), Response> {
        if operation.allows(self.caller.role) {
            return Ok(());
        }
        Err(super::error_page(
            StatusCode::FORBIDDEN,
            &format!(
                "{}.",
                operation.refusal(&self.caller.name, self.caller.role)
            ),
            &format!("{}.", capitalised(operation.ask())),
        ))
    }

    /// Refuses a form whose CSRF token is not the session's. (The error is
    /// the page the browser gets, returned as handlers return theirs.)
    #[allow(clippy::result_large_err)]
    pub fn check_csrf(&self, sent: &str) -> Result<(), Response> {
        if same_secret(&self.csrf, sent) {
            Ok(())
        } else {
            Err(super::error_page(
                StatusCode::FORBIDDEN,
                "The form is stale or did not come from Sluice (CSRF check failed).",
                "Reload the page and try again.",
            ))
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Viewer
where
    Gate: FromRef<S>,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let gate = Gate::from_ref(state);
        if let Some((caller, csrf)) = caller_from_cookie(parts, &gate.store, &gate.tokens).await {
            // Every page reads; a token that may not read sees none.
            if !crate::access::Operation::Read.allows(caller.role) {
                return Err(super::error_page(
                    StatusCode::FORBIDDEN,
                    "This token cannot read the dashboard.",
                    "Sign in with a person's token.",
                ));
            }
            return Ok(Viewer { caller, csrf });
        }
        if parts.method == Method::GET {
            let next = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            let to = format!("/login?next={}", encode(next));
            return Err(Redirect::to(&to).into_response());
        }
        Err(super::error_page(
            StatusCode::UNAUTHORIZED,
            "You are not signed in, or your session ended.",
            "Sign in again at /login.",
        ))
    }
}

/// Percent-encodes what a query value may not carry as is.
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_sign_ins_are_limited_per_address() {
        let sessions = Sessions::default();
        let ip: IpAddr = [10, 0, 0, 1].into();
        for _ in 0..MAX_FAILURES {
            assert!(sessions.sign_ins.begin(ip).is_ok());
        }
        assert!(sessions.sign_ins.begin(ip).is_err());
        assert!(sessions.sign_ins.begin([10, 0, 0, 2].into()).is_ok());
        sessions.sign_ins.succeeded(ip);
        assert!(sessions.sign_ins.begin(ip).is_ok());
    }

    #[test]
    fn cookies_are_read_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "a=1; sluice_session=xyz; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE).as_deref(), Some("xyz"));
        assert!(same_secret("abc", "abc") && !same_secret("abc", "abd"));
    }
}
