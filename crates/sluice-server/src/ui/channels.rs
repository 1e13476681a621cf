//! Notifications: each channel with its routes, the latest messages with
//! their state and last error, a button that sends a failed one again, and
//! for admins the forms that add, test and remove channels.

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use serde::Deserialize;
use sluice_notify::{ChannelInput, ChannelKind};
use sluice_store::{Channel, Message, MessageStatus};

use super::session::{Viewer, encode};
use super::{Chrome, Done, PageResult, error_page, failed, render};
use crate::AppState;
use crate::access::Operation;

#[derive(Template)]
#[template(path = "channels.html")]
struct ChannelsPage {
    page: Chrome,
    channels: Vec<Channel>,
    messages: Vec<Message>,
    developer: Operation,
    admin: Operation,
    kinds: Vec<&'static str>,
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

pub async fn list(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<Done>,
) -> PageResult {
    page(&state, &viewer, q.done).await
}

async fn page(state: &AppState, viewer: &Viewer, flash: Option<String>) -> PageResult {
    let channels = state.store.channels().await.map_err(failed)?;
    let messages = state.store.messages(None, 50).await.map_err(failed)?;
    let mut page = Chrome::new(viewer, "Notifications", "channels");
    page.flash = flash;
    Ok(render(ChannelsPage {
        page,
        channels,
        messages,
        developer: Operation::RetryMessage,
        admin: Operation::ManageChannels,
        kinds: ChannelKind::ALL.iter().map(|k| k.as_str()).collect(),
    }))
}

/// The add form: lists are written space- or comma-separated.
#[derive(Deserialize)]
pub struct AddForm {
    csrf: String,
    name: String,
    kind: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    smtp: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    on: String,
    #[serde(default)]
    env: String,
}

fn words(text: &str) -> Vec<String> {
    text.split([' ', ','])
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}

fn given(text: String) -> Option<String> {
    let text = text.trim().to_string();
    (!text.is_empty()).then_some(text)
}

/// Adds a channel; answers the page itself (not a redirect), so that a
/// made-up signing key is shown once and never travels in a URL.
pub async fn add(
    State(state): State<AppState>,
    viewer: Viewer,
    Form(form): Form<AddForm>,
) -> PageResult {
    viewer.check_csrf(&form.csrf)?;
    viewer.may(Operation::ManageChannels)?;
    let input = ChannelInput {
        name: form.name.trim().to_string(),
        kind: form.kind,
        url: given(form.url),
        smtp: given(form.smtp),
        from: given(form.from),
        to: words(&form.to),
        on: words(&form.on),
        env: words(&form.env),
        ..Default::default()
    };
    let (channel, made_key) = sluice_notify::validate(input).map_err(|why| {
        error_page(
            StatusCode::BAD_REQUEST,
            &format!("The channel was not added: {why}."),
            "Go back, correct it and add it again; docs/notifications.md describes each kind.",
        )
    })?;
    let name = channel.name.clone();
    state
        .store
        .put_channel(channel, &viewer.caller.name)
        .await
        .map_err(failed)?;
    let flash = match made_key {
        Some(key) => format!(
            "Channel {name} is ready. Its signing key, shown only now (receivers check X-Sluice-Signature-256 with it): {key}"
        ),
        None => format!("Channel {name} is ready."),
    };
    page(&state, &viewer, Some(flash)).await
}

pub async fn act(
    State(state): State<AppState>,
    viewer: Viewer,
    Path((name, verb)): Path<(String, String)>,
    Form(form): Form<Csrf>,
) -> PageResult {
    viewer.check_csrf(&form.csrf)?;
    let done = match verb.as_str() {
        "remove" => {
            viewer.may(Operation::ManageChannels)?;
            state
                .store
                .remove_channel(&name, &viewer.caller.name)
                .await
                .map_err(failed)?;
            format!("Channel {name} is removed.")
        }
        "test" => {
            viewer.may(Operation::ManageChannels)?;
            state.store.channel(&name).await.map_err(failed)?;
            match sluice_notify::test_channel(
                &state.store,
                &name,
                &viewer.caller.name,
                &state.public_url,
            )
            .await
            .map_err(|e| failed(crate::ApiError::internal(e)))?
            {
                Ok(()) => format!("A test message went to {name}."),
                Err(why) => format!("The test message to {name} was not delivered: {why}"),
            }
        }
        other => {
            return Err(error_page(
                StatusCode::NOT_FOUND,
                &format!("A channel can be tested or removed, not `{other}`."),
                "",
            ));
        }
    };
    Ok(Redirect::to(&format!("/channels?done={}", encode(&done))).into_response())
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
    viewer.may(Operation::RetryMessage)?;
    state.store.retry_message(id).await.map_err(failed)?;
    let done = format!("Message {id} is pending again.");
    Ok(Redirect::to(&format!("/channels?done={}", encode(&done))).into_response())
}
