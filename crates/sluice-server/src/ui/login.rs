//! The sign-in page: a token in, a session cookie out.

use askama::Template;
use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use std::time::Duration;

use super::session::{self, LOGIN_COOKIE, SESSION_COOKIE};
use super::{error_page, render};
use crate::AppState;

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    csrf: String,
    next: String,
    error: Option<String>,
}

#[derive(Deserialize)]
pub struct Next {
    next: Option<String>,
}

/// Only a path on this site, so that sign-in never sends anyone elsewhere.
/// Browsers read `/\host` as `//host` and drop tabs and newlines, so the
/// second character is checked after those are gone, and `\` never passes.
fn safe_next(next: Option<String>) -> String {
    next.filter(|n| {
        let seen: String = n
            .chars()
            .filter(|c| !c.is_ascii_whitespace() && !c.is_control())
            .collect();
        seen.starts_with('/')
            && !seen[1..].starts_with(['/', '\\'])
            && !n.contains('\\')
            && !n.chars().any(|c| c.is_control())
    })
    .unwrap_or_else(|| "/".into())
}

pub async fn form(Query(q): Query<Next>) -> Response {
    page(safe_next(q.next), None, StatusCode::OK)
}

fn page(next: String, error: Option<String>, status: StatusCode) -> Response {
    let csrf = session::random_token();
    let cookie = session::set_cookie(LOGIN_COOKIE, &csrf, Duration::from_secs(3600));
    let mut response = render(LoginPage { csrf, next, error });
    *response.status_mut() = status;
    if let Ok(value) = cookie.parse() {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

#[derive(Deserialize)]
pub struct SignIn {
    token: String,
    csrf: String,
    next: Option<String>,
}

pub async fn sign_in(
    State(state): State<AppState>,
    session::ClientIp(ip): session::ClientIp,
    headers: HeaderMap,
    Form(form): Form<SignIn>,
) -> Response {
    let parts = &headers;
    let expected = session::cookie(parts, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !session::same_secret(&expected, &form.csrf) {
        return error_page(
            StatusCode::FORBIDDEN,
            "The sign-in form is stale or did not come from Sluice (CSRF check failed).",
            "Reload the sign-in page and try again.",
        );
    }
    let next = safe_next(form.next);
    if let Err(wait) = state.sessions.sign_ins.begin(ip) {
        return page(
            next,
            Some(format!(
                "Too many failed sign-ins from your address; try again in {wait} s."
            )),
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    match state.tokens.verify(&state.store, form.token.trim()).await {
        Ok(caller) if !crate::access::Operation::Read.allows(caller.role) => page(
            next,
            Some(format!(
                "`{}` is an {} token: it does its work through the API and cannot sign in.",
                caller.name, caller.role
            )),
            StatusCode::FORBIDDEN,
        ),
        Ok(caller) => {
            state.sessions.sign_ins.succeeded(ip);
            let id = match session::open(&state.store, &caller).await {
                Ok(id) => id,
                Err(e) => {
                    return page(
                        next,
                        Some(format!("Could not open a session: {e}. Try again.")),
                        StatusCode::SERVICE_UNAVAILABLE,
                    );
                }
            };
            let mut response = Redirect::to(&next).into_response();
            if let Ok(value) = session::session_cookie(&id).parse() {
                response.headers_mut().append(header::SET_COOKIE, value);
            }
            response
        }
        Err(e) => page(
            next,
            Some(format!("That token does not sign you in: {}.", e.message)),
            StatusCode::UNAUTHORIZED,
        ),
    }
}

#[derive(Deserialize)]
pub struct SignOut {
    csrf: String,
}

pub async fn sign_out(
    State(state): State<AppState>,
    viewer: session::Viewer,
    headers: HeaderMap,
    Form(form): Form<SignOut>,
) -> Response {
    if let Err(refused) = viewer.check_csrf(&form.csrf) {
        return refused;
    }
    if let Some(id) = session::cookie(&headers, SESSION_COOKIE) {
        session::close(&state.store, &id).await;
    }
    let mut response = Redirect::to("/login").into_response();
    if let Ok(value) = session::set_cookie(SESSION_COOKIE, "", Duration::ZERO).parse() {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn sign_in_only_goes_on_to_a_path_of_this_site() {
        for evil in [
            "//evil.example",
            "/\\evil.example",
            "/\tevil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            "https://evil.example",
            "evil.example",
            "/x\\y",
        ] {
            assert_eq!(safe_next(Some(evil.into())), "/", "{evil:?}");
        }
        for good in ["/", "/runs/3", "/incidents?open=1"] {
            assert_eq!(safe_next(Some(good.into())), good);
        }
    }
}
