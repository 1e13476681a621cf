//! `sluice token create|list|revoke`.

use std::process::ExitCode;

use anyhow::Result;
use reqwest::Method;
use serde_json::json;

use crate::cli::TokenCommand;
use crate::client::Client;
use crate::output::{rows_of, table, text, time};

pub async fn run(client: &Client, command: TokenCommand) -> Result<ExitCode> {
    match command {
        TokenCommand::Create { name, role, groups } => {
            let made = client
                .json(
                    client
                        .request(Method::POST, "/tokens")
                        .json(&json!({ "name": name, "role": role, "groups": groups })),
                )
                .await?;
            eprintln!(
                "token `{}` ({}) created; it is shown only now:",
                text(&made["name"]),
                text(&made["role"])
            );
            crate::say!("{}", text(&made["token"]));
        }
        TokenCommand::List => {
            let tokens = client.get("/tokens").await?;
            let rows = rows_of(&tokens, |t| {
                vec![
                    text(&t["id"]),
                    text(&t["name"]),
                    text(&t["role"]),
                    time(&t["created_at"]),
                    if t["revoked_at"].is_null() {
                        "active".into()
                    } else {
                        format!("revoked {}", time(&t["revoked_at"]))
                    },
                ]
            });
            table(&["ID", "NAME", "ROLE", "CREATED", "STATE"], &rows);
        }
        TokenCommand::Revoke { id } => {
            client
                .send(client.request(Method::DELETE, &format!("/tokens/{id}")))
                .await?;
            crate::say!("token {id} revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}
