//! `sluice repo add|list`, `sluice secret set|list` and `sluice notify`.

use std::io::Read;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use reqwest::Method;
use serde_json::json;

use crate::cli::{RepoCommand, SecretCommand};
use crate::client::Client;
use crate::output::{rows_of, table, text};

pub async fn repo(client: &Client, command: RepoCommand) -> Result<ExitCode> {
    match command {
        RepoCommand::Add {
            path_or_url,
            name,
            status_url,
            status_token,
            webhook_secret,
        } => {
            let location = if path_or_url.contains("://")
                || (path_or_url.contains('@') && path_or_url.contains(':'))
            {
                path_or_url
            } else {
                std::fs::canonicalize(&path_or_url)
                    .with_context(|| format!("`{path_or_url}` does not exist\nhint: give the path of a git repository, or its URL"))?
                    .to_string_lossy()
                    .into_owned()
            };
            let body = json!({ "name": name, "location": location, "status_url": status_url, "status_token": status_token, "webhook_secret": webhook_secret });
            let repo = client
                .json(client.request(Method::POST, "/repos").json(&body))
                .await?;
            crate::say!(
                "repository `{}` added from {}",
                text(&repo["name"]),
                text(&repo["url"])
            );
            crate::say!("  new commits noticed by: {}", text(&repo["hook"]));
            crate::say!(
                "  webhook: POST {}{}",
                client_base(client),
                text(&repo["webhook_url"])
            );
            crate::say!(
                "  webhook secret (shown once): {}",
                text(&repo["webhook_secret"])
            );
        }
        RepoCommand::List => {
            let repos = client.get("/repos").await?;
            let rows = rows_of(&repos, |r| {
                vec![text(&r["name"]), text(&r["hook"]), text(&r["url"])]
            });
            table(&["NAME", "NOTICED BY", "LOCATION"], &rows);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn client_base(client: &Client) -> String {
    client
        .request(Method::GET, "")
        .build()
        .map(|r| r.url().as_str().trim_end_matches("/api/v1").to_string())
        .unwrap_or_default()
}

pub async fn secret(client: &Client, command: SecretCommand) -> Result<ExitCode> {
    match command {
        SecretCommand::Set { repo, name, review } => {
            let mut value = String::new();
            std::io::stdin()
                .read_to_string(&mut value)
                .context("could not read the secret from standard input")?;
            let value = value.strip_suffix('\n').unwrap_or(&value).to_string();
            if value.is_empty() {
                bail!(
                    "no value on standard input\nhint: printf %s VALUE | sluice secret set {repo} {name}"
                );
            }
            let path = format!("/repos/{repo}/secrets/{name}");
            let answer = client
                .json(
                    client
                        .request(Method::PUT, &path)
                        .json(&json!({ "value": value, "review": review })),
                )
                .await?;
            let runs = if review { "every run" } else { "mainline runs" };
            crate::say!("secret {name} of {repo} set, given to {runs}");
            if let Some(warning) = answer["warning"].as_str() {
                eprintln!("warning: {warning}");
            }
        }
        SecretCommand::List { repo } => {
            let secrets = client.get(&format!("/repos/{repo}/secrets")).await?;
            for secret in secrets.as_array().into_iter().flatten() {
                let runs = if secret["review"] == true {
                    "every run"
                } else {
                    "mainline runs"
                };
                crate::say!("{}  {runs}", text(&secret["name"]));
            }
        }
        SecretCommand::Delete { repo, name } => {
            let path = format!("/repos/{repo}/secrets/{name}");
            client.json(client.request(Method::DELETE, &path)).await?;
            crate::say!("secret {name} of {repo} deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn notify(client: &Client, repo: &str) -> Result<ExitCode> {
    client
        .json(client.request(Method::POST, &format!("/repos/{repo}/notify")))
        .await?;
    crate::say!("the server looks at {repo} again; `sluice runs` shows what it queued");
    Ok(ExitCode::SUCCESS)
}
