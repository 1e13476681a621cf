//! The web UI: server-rendered pages (askama) over the same engines as the
//! API, a little JavaScript for live updates over the SSE events, and forms
//! for the actions a person's role allows. Read-only pages work without
//! JavaScript.

mod ansi;
mod board;
mod channels;
mod chart;
mod experiments;
mod incidents;
mod login;
mod promotions;
mod runs;
pub mod session;

use askama::Template;
use axum::Router;
use axum::extract::FromRef;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use sluice_store::{Role, Store};

use crate::access::Operation;
use crate::auth::Gate;

use crate::AppState;
use session::Viewer;

pub use session::Sessions;

/// The first `n` characters of a commit id, for display: never a byte
/// slice, which a stored string that is not hex would make panic.
pub fn short(sha: &str, n: usize) -> &str {
    sha.char_indices()
        .nth(n)
        .map_or(sha, |(end, _)| &sha[..end])
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(board::overview))
        .route("/login", get(login::form).post(login::sign_in))
        .route("/logout", post(login::sign_out))
        .route("/agents", get(runs::agents))
        .route(
            "/services/{service}/environments/{env}",
            get(board::environment),
        )
        .route("/services/{service}/diff", get(board::diff))
        .route("/promotions", get(promotions::list))
        .route("/promotions/{id}", get(promotions::show))
        .route("/promotions/{id}/{verb}", post(promotions::decide))
        .route("/experiments", get(experiments::list))
        .route("/experiments/{id}", get(experiments::show))
        .route("/experiments/{id}/charts", get(experiments::charts))
        .route("/experiments/{id}/{verb}", post(experiments::steer))
        .route("/incidents/{id}", get(incidents::show))
        .route("/rules/{id}/disable", post(incidents::disable_rule))
        .route("/channels", get(channels::list).post(channels::add))
        .route("/channels/{name}/{verb}", post(channels::act))
        .route("/channels/messages/{id}/retry", post(channels::retry))
        .merge(store_pages())
}

/// The pages that need nothing but the store, and the assets every page
/// uses: a standby serves them itself (a run's page follows its log's
/// stream, which a standby serves too), even while no server acts.
pub fn store_pages<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Store: FromRef<S>,
    Gate: FromRef<S>,
{
    Router::new()
        .route("/changes", get(runs::changes))
        .route("/runs/{id}", get(runs::run))
        .route("/changelog", get(board::changelog))
        .route("/incidents", get(incidents::list))
        .route("/rules", get(incidents::rules))
        .route("/assets/sluice.css", get(css))
        .route("/assets/sluice.js", get(js))
}

/// What every page's frame shows: the title, who is signed in, the CSRF
/// token for its forms, and which section is current.
pub struct Chrome {
    pub title: String,
    pub user: String,
    pub role: Role,
    pub csrf: String,
    pub section: &'static str,
    /// A message after an action, such as "approved promotion 4".
    pub flash: Option<String>,
}

impl Chrome {
    pub fn new(viewer: &Viewer, title: impl Into<String>, section: &'static str) -> Chrome {
        Chrome {
            title: title.into(),
            user: viewer.caller.name.clone(),
            role: viewer.caller.role,
            csrf: viewer.csrf.clone(),
            section,
            flash: None,
        }
    }

    /// Whether the person may press buttons that need `role`.
    pub fn may(&self, operation: &Operation) -> bool {
        operation.allows(self.role)
    }

    pub fn current(&self, section: &str) -> &'static str {
        if self.section == section {
            "page"
        } else {
            "false"
        }
    }
}

/// Renders a page, or a plain 500 that says why.
pub fn render(page: impl Template) -> Response {
    match page.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("The page could not be rendered: {e}"),
            "This is a bug in Sluice; the server log has more.",
        ),
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    message: &'a str,
    hint: &'a str,
}

pub fn error_page(status: StatusCode, message: &str, hint: &str) -> Response {
    let page = ErrorPage {
        status: status.as_u16(),
        message,
        hint,
    };
    let html = page.render().unwrap_or_else(|_| message.to_string());
    (status, Html(html)).into_response()
}

/// A failure of the engines, shown as a page with the API's words.
pub fn failed(error: impl Into<crate::ApiError>) -> Response {
    let error: crate::ApiError = error.into();
    error_page(
        error.status,
        &error.message,
        error.hint.as_deref().unwrap_or(""),
    )
}

pub type PageResult = Result<Response, Response>;

/// `?done=…`: what an action did, shown once on the page it leads back to.
#[derive(serde::Deserialize)]
pub struct Done {
    pub done: Option<String>,
}

/// Milliseconds since the epoch as `2026-11-26 14:03:07 UTC`.
pub fn when(ms: impl std::borrow::Borrow<i64>) -> String {
    chrono::DateTime::from_timestamp_millis(*ms.borrow())
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "-".into())
}

async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../assets/sluice.css"),
    )
        .into_response()
}

async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../assets/sluice.js"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_short_sha_never_panics_on_what_is_stored() {
        assert_eq!(super::short("0123456789abcdef", 10), "0123456789");
        assert_eq!(super::short("abc", 10), "abc");
        assert_eq!(super::short("ééééééééééé", 10), "éééééééééé");
        assert_eq!(super::short("", 10), "");
    }
}
