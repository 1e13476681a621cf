//! `sluice channel add|list|remove|test|messages|show|retry`.

use std::process::ExitCode;

use anyhow::{Context, Result};
use reqwest::Method;
use serde_json::{Value, json};

use crate::cli::{ChannelAdd, ChannelCommand};
use crate::client::Client;
use crate::output::{print_json, rows_of, table, text, time};

pub async fn run(client: &Client, command: ChannelCommand) -> Result<ExitCode> {
    match command {
        ChannelCommand::Add(add) => return self::add(client, *add).await,
        ChannelCommand::List { json } => {
            let channels = client.get("/channels").await?;
            if json {
                return print_json(&channels);
            }
            let rows = rows_of(&channels, |c| {
                vec![
                    text(&c["name"]),
                    text(&c["kind"]),
                    routes(&c["routes"]),
                    time(&c["created_at"]),
                ]
            });
            table(&["NAME", "KIND", "SERVER-WIDE ROUTES", "ADDED"], &rows);
        }
        ChannelCommand::Remove { name } => {
            client
                .send(client.request(Method::DELETE, &format!("/channels/{name}")))
                .await?;
            crate::say!("channel {name} removed");
        }
        ChannelCommand::Test { name } => {
            let answer = client
                .json(client.request(Method::POST, &format!("/channels/{name}/test")))
                .await?;
            if answer["sent"] == json!(true) {
                crate::say!("a test message went to {name}");
            } else {
                eprintln!(
                    "the test message to {name} was not delivered: {}",
                    text(&answer["error"])
                );
                return Ok(ExitCode::FAILURE);
            }
        }
        ChannelCommand::Messages {
            channel,
            limit,
            json,
        } => {
            let messages = client
                .get_with(
                    "/messages",
                    &[("channel", channel), ("limit", Some(limit.to_string()))],
                )
                .await?;
            if json {
                return print_json(&messages);
            }
            let rows = rows_of(&messages, |m| {
                vec![
                    text(&m["id"]),
                    text(&m["channel"]),
                    text(&m["status"]),
                    text(&m["attempts"]),
                    time(&m["created_at"]),
                    text(&m["last_error"]),
                ]
            });
            table(
                &["ID", "CHANNEL", "STATUS", "ATTEMPTS", "MADE", "LAST ERROR"],
                &rows,
            );
        }
        ChannelCommand::Show { id, json } => {
            let shown = client.get(&format!("/messages/{id}")).await?;
            if json {
                return print_json(&shown);
            }
            let m = &shown["message"];
            crate::say!(
                "message {} to {}: {} after {} attempt(s), key {}",
                text(&m["id"]),
                text(&m["channel"]),
                text(&m["status"]),
                text(&m["attempts"]),
                text(&m["idempotency_key"])
            );
            for e in shown["events"].as_array().into_iter().flatten() {
                crate::say!(
                    "  {}  {:<22} {}",
                    time(&e["at"]),
                    text(&e["kind"]),
                    text(&e["summary"])
                );
            }
            for a in shown["attempts"].as_array().into_iter().flatten() {
                let outcome = match (a["http_status"].as_i64(), a["error"].as_str()) {
                    (_, Some(error)) => error.to_string(),
                    (Some(status), None) => format!("answered {status}"),
                    (None, None) => "sent".into(),
                };
                crate::say!("  attempt at {}: {outcome}", time(&a["at"]));
            }
        }
        ChannelCommand::Retry { id } => {
            client
                .json(client.request(Method::POST, &format!("/messages/{id}/retry")))
                .await?;
            crate::say!("message {id} is pending again");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn add(client: &Client, add: ChannelAdd) -> Result<ExitCode> {
    let ca_pem = match &add.ca_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("could not read the CA certificate {}", path.display()))?,
        ),
        None => None,
    };
    let body = json!({
        "name": add.name, "kind": add.kind, "url": add.url, "signing_key": add.signing_key,
        "smtp": add.smtp, "from": add.from, "to": add.to, "ca_pem": ca_pem,
        "on": add.on, "env": add.env, "wait": add.wait, "interval": add.interval,
    });
    let made = client
        .json(client.request(Method::POST, "/channels").json(&body))
        .await?;
    crate::say!(
        "channel {} ({}) is ready; `sluice channel test {}` sends a test message",
        text(&made["name"]),
        text(&made["kind"]),
        text(&made["name"])
    );
    if let Some(key) = made["signing_key"].as_str() {
        eprintln!(
            "its signing key, shown only now (receivers check X-Sluice-Signature-256 with it):"
        );
        crate::say!("{key}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `deployment.failed, experiment.* in prod`.
fn routes(routes: &Value) -> String {
    let shown: Vec<String> = routes
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let kind = match (text(&r["kind"]).as_str(), r["prefix"] == json!(true)) {
                ("", true) => "*".to_string(),
                (k, true) => format!("{k}*"),
                (k, false) => k.to_string(),
            };
            match r["environment"].as_str() {
                Some(env) => format!("{kind} in {env}"),
                None => kind,
            }
        })
        .collect();
    if shown.is_empty() {
        "-".into()
    } else {
        shown.join(", ")
    }
}
