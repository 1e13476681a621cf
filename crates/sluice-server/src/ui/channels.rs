//! Notifications: each channel with its routes, the latest messages with
//! their state and last error, and a button that sends a failed one again.

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use serde::Deserialize;
use sluice_store::{Channel, Message, MessageStatus, Role};

use super::session::{Viewer, encode};
use super::{Chrome, PageResult, error_page, failed, render};
use crate::AppState;

#[derive(Template)]
#[template(path = "channels.html")]
struct ChannelsPage {
    page: Chrome,
    channels: Vec<Channel>,
    messages: Vec<Message>,
    developer: Role,
}

impl ChannelsPage {
    fn routes(&self, channel: &Channel) -> String {
        let shown: Vec<String> = channel
            .routes
            .iter()
            .map(|r| {
                let kind = match (r.kind.as_str(), r.prefix.0) {
                    ("", true) => "*".to_string(),
                    (k, true) => format!("{k}*"),
                    (k, false) => k.to_string(),
                };
                match &r.environment {
                    Some(env) => format!("{kind} in {env}"),
                    None => kind,
                }
            })
            .collect();
        if shown.is_empty() {
            "only what services' notify: routes send".into()
        } else {
            shown.join(", ")
        }
    }

    fn failed(&self, message: &Message) -> bool {
        message.status == MessageStatus::Failed
    }
}

#[derive(Deserialize)]
pub struct Done {
    done: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<Done>,
) -> PageResult {
    let channels = state.store.channels().await.map_err(failed)?;
    let messages = state.store.messages(None, 50).await.map_err(failed)?;
    let mut page = Chrome::new(&viewer, "Notifications", "channels");
    page.flash = q.done;
    Ok(render(ChannelsPage {
        page,
        channels,
        messages,
        developer: Role::Developer,
    }))
}

#[derive(Deserialize)]
pub struct Csrf {
    csrf: String,
}

pub async fn retry(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<i64>,
    Form(form): Form<Csrf>,
) -> PageResult {
    viewer.check_csrf(&form.csrf)?;
    if viewer.caller.role < Role::Developer {
        return Err(error_page(
            StatusCode::FORBIDDEN,
            &format!(
                "Sending a message again needs the developer role; you ({}) have {}.",
                viewer.caller.name, viewer.caller.role
            ),
            "Ask an admin for a developer token.",
        ));
    }
    state.store.retry_message(id).await.map_err(failed)?;
    let done = format!("Message {id} is pending again.");
    Ok(Redirect::to(&format!("/channels?done={}", encode(&done))).into_response())
}
