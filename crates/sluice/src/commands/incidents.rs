//! `sluice incident`, `sluice postmortem` and `sluice rule`: what broke, what
//! we learned, and the rules that enforce it.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use reqwest::Method;
use serde_json::{Value, json};

use crate::cli::{IncidentCommand, PostmortemCommand, RuleCommand, RuleCommon, RuleKind};
use crate::client::Client;
use crate::output::{print_json, rows_of, table, text, time};
use crate::say;

pub async fn incident(client: &Client, command: IncidentCommand) -> Result<ExitCode> {
    match command {
        IncidentCommand::Open {
            service,
            env,
            title,
        } => {
            let body = json!({ "service": service, "environment": env, "title": title });
            let opened = client
                .json(client.request(Method::POST, "/incidents").json(&body))
                .await?;
            say!("INC-{} opened: {}", opened["id"], text(&opened["title"]));
            say!(
                "see its timeline and suspects with `sluice incident show INC-{}`",
                opened["id"]
            );
        }
        IncidentCommand::List { service, all, json } => {
            let all = client
                .get_with(
                    "/incidents",
                    &[("service", service), ("all", all.then(|| "true".into()))],
                )
                .await?;
            if json {
                return print_json(&all);
            }
            let rows = rows_of(&all, |i| {
                vec![
                    format!("INC-{}", i["id"]),
                    text(&i["status"]),
                    text(&i["service"]),
                    text(&i["environment"]),
                    time(&i["opened_at"]),
                    text(&i["title"]),
                ]
            });
            if rows.is_empty() {
                say!("no open incidents");
            } else {
                table(
                    &["ID", "STATUS", "SERVICE", "ENV", "OPENED", "TITLE"],
                    &rows,
                );
            }
        }
        IncidentCommand::Show { id, json } => {
            let view = client.get(&format!("/incidents/{id}")).await?;
            if json {
                return print_json(&view);
            }
            show(&view);
        }
        IncidentCommand::Mitigate { id, note } => transition(client, id, "mitigate", note).await?,
        IncidentCommand::Resolve { id, note } => transition(client, id, "resolve", note).await?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn transition(client: &Client, id: i64, verb: &str, note: Option<String>) -> Result<()> {
    let incident = client
        .json(
            client
                .request(Method::POST, &format!("/incidents/{id}/{verb}"))
                .json(&json!({ "note": note })),
        )
        .await?;
    say!("INC-{id} is {}", text(&incident["status"]));
    Ok(())
}

fn show(view: &Value) {
    say!("{}: {}", text(&view["name"]), text(&view["title"]));
    say!(
        "{} · {} · {} · opened {} by {} ({})",
        text(&view["status"]),
        text(&view["service"]),
        text(&view["environment"]),
        time(&view["opened_at"]),
        text(&view["opened_by"]),
        text(&view["trigger_kind"])
    );
    if let Some(detail) = view["trigger_detail"].as_str() {
        say!("{detail}");
    }
    say!();
    say!("Suspect changes, most likely first:");
    for s in view["suspects"].as_array().into_iter().flatten().take(5) {
        say!(
            "  {}. {}: {} (score {})",
            s["rank"],
            text(&s["subject"]),
            text(&s["summary"]),
            s["score"]
        );
        for why in s["why"].as_array().into_iter().flatten() {
            say!("       - {}", text(why));
        }
        for commit in s["diff"]["commits"]
            .as_array()
            .into_iter()
            .flatten()
            .take(5)
        {
            say!("       commit {}", text(commit));
        }
        for change in s["diff"]["config"].as_array().into_iter().flatten() {
            say!("       config {}", text(change));
        }
    }
    say!();
    say!("Timeline:");
    let rows = rows_of(&view["timeline"], |e| {
        vec![
            time(&e["at"]),
            text(&e["environment"]),
            text(&e["kind"]),
            text(&e["summary"]),
        ]
    });
    table(&["WHEN", "ENV", "KIND", "WHAT"], &rows);
    let rules = view["rules"].as_array().cloned().unwrap_or_default();
    if !rules.is_empty() {
        say!();
        say!("Rules from this incident:");
        for rule in rules {
            say!("  R{} {}", rule["id"], text(&rule["note"]));
        }
    }
}

pub async fn postmortem(client: &Client, command: PostmortemCommand) -> Result<ExitCode> {
    match command {
        PostmortemCommand::Show { id } => {
            say!("{}", fetch_postmortem(client, id).await?);
        }
        PostmortemCommand::Edit { id } => {
            let before = fetch_postmortem(client, id).await?;
            let file = tempfile::Builder::new()
                .prefix(&format!("INC-{id}-postmortem-"))
                .suffix(".md")
                .tempfile()?;
            std::fs::write(file.path(), &before)?;
            let editor = std::env::var("VISUAL")
                .or_else(|_| std::env::var("EDITOR"))
                .unwrap_or_else(|_| "vi".into());
            // Through the shell, so that EDITOR may carry arguments (`code --wait`).
            let status = std::process::Command::new("sh")
                .args(["-c", &format!("{editor} \"$1\""), "sh"])
                .arg(file.path())
                .status()
                .with_context(|| format!("could not start the editor `{editor}`"))?;
            if !status.success() {
                bail!(
                    "the editor `{editor}` exited with {status}; the postmortem was not saved (set EDITOR to choose another)"
                );
            }
            let after = std::fs::read_to_string(file.path())?;
            if after == before {
                say!("no changes; the postmortem of INC-{id} stays as it was");
                return Ok(ExitCode::SUCCESS);
            }
            client
                .json(
                    client
                        .request(Method::PUT, &format!("/incidents/{id}/postmortem"))
                        .body(after),
                )
                .await?;
            say!("the postmortem of INC-{id} is saved");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn fetch_postmortem(client: &Client, id: i64) -> Result<String> {
    let response = client
        .send(client.request(Method::GET, &format!("/incidents/{id}/postmortem")))
        .await?;
    Ok(response.text().await?)
}

pub async fn rule(client: &Client, command: RuleCommand) -> Result<ExitCode> {
    match command {
        RuleCommand::Add(kind) => {
            let (rule, common) = rule_body(kind);
            let body = json!({
                "service": common.service,
                "rule": rule,
                "note": common.note,
                "incident": common.incident,
                "expires_in": common.expires_in,
            });
            let made = client
                .json(client.request(Method::POST, "/rules").json(&body))
                .await?;
            let origin = made["origin"]
                .as_str()
                .map(|o| format!(" (from {o})"))
                .unwrap_or_default();
            say!(
                "rule {}{origin}: {}",
                text(&made["name"]),
                text(&made["describes"])
            );
        }
        RuleCommand::List { service, all, json } => {
            let rules = client
                .get_with(
                    "/rules",
                    &[("service", service), ("all", all.then(|| "true".into()))],
                )
                .await?;
            if json {
                return print_json(&rules);
            }
            let rows = rows_of(&rules, |r| {
                vec![
                    text(&r["name"]),
                    text(&r["service"]),
                    text(&r["spec"]["kind"]),
                    text(&r["origin"]),
                    if r["active"] == true { "yes" } else { "no" }.into(),
                    r["blocks"].as_array().map_or(0, Vec::len).to_string(),
                    text(&r["describes"]),
                ]
            });
            if rows.is_empty() {
                say!("no rules yet; a postmortem's action item becomes one with `sluice rule add`");
            } else {
                table(
                    &[
                        "ID", "SERVICE", "KIND", "FROM", "ACTIVE", "BLOCKED", "DEMANDS",
                    ],
                    &rows,
                );
            }
        }
        RuleCommand::Show { id, json } => {
            let rule = client.get(&format!("/rules/{id}")).await?;
            if json {
                return print_json(&rule);
            }
            say!("{}: {}", text(&rule["name"]), text(&rule["describes"]));
            say!(
                "from {} · made by {} at {} · {}",
                text(&rule["origin"]),
                text(&rule["created_by"]),
                time(&rule["created_at"]),
                if rule["active"] == true {
                    "active".to_string()
                } else {
                    format!("disabled: {}", text(&rule["disabled_reason"]))
                }
            );
            for block in rule["blocks"].as_array().into_iter().flatten() {
                say!(
                    "  blocked {} at {}: {}",
                    text(&block["subject"]),
                    time(&block["at"]),
                    text(&block["detail"])
                );
            }
        }
        RuleCommand::Disable { id, reason } => {
            client
                .json(
                    client
                        .request(Method::POST, &format!("/rules/{id}/disable"))
                        .json(&json!({ "reason": reason })),
                )
                .await?;
            say!("R{id} is disabled");
        }
        RuleCommand::Test {
            id,
            change,
            release,
            json,
        } => {
            let body = json!({ "change": change, "release": release });
            let answer = client
                .json(
                    client
                        .request(Method::POST, &format!("/rules/{id}/test"))
                        .json(&body),
                )
                .await;
            // 0: it would have passed; 1: it would have been blocked; 2: no answer.
            let verdict = match answer {
                Ok(verdict) => verdict,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return Ok(ExitCode::from(2));
                }
            };
            if json {
                print_json(&verdict)?;
            } else {
                say!("{}", text(&verdict["reason"]));
            }
            return Ok(match verdict["outcome"].as_str() {
                Some("passed") => ExitCode::SUCCESS,
                Some("blocked") => ExitCode::from(1),
                _ => ExitCode::from(2),
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The rule's JSON as the API takes it, and what every rule carries.
fn rule_body(kind: RuleKind) -> (Value, RuleCommon) {
    match kind {
        RuleKind::RequireJob { job, paths, common } => (
            json!({ "kind": "require_job", "job": job, "paths": paths }),
            common,
        ),
        RuleKind::HealthCheck {
            path,
            status,
            body_contains,
            max_latency,
            environments,
            common,
        } => (
            json!({ "kind": "health_check", "path": path, "status": status, "body_contains": body_contains,
                    "max_latency": max_latency, "environments": environments }),
            common,
        ),
        RuleKind::MetricGate {
            window,
            max_error_rate,
            max_p95,
            min_requests,
            environments,
            common,
        } => (
            json!({ "kind": "metric_gate", "window": window, "max_error_rate": max_error_rate,
                    "max_p95": max_p95, "min_requests": min_requests, "environments": environments }),
            common,
        ),
        RuleKind::Freeze {
            cron,
            environments,
            common,
        } => (
            json!({ "kind": "freeze", "cron": cron, "environments": environments }),
            common,
        ),
        RuleKind::ConfigGuard {
            key,
            value,
            environments,
            common,
        } => (
            json!({ "kind": "config_guard", "key": key, "value": value, "environments": environments }),
            common,
        ),
        RuleKind::Soak {
            duration,
            environments,
            common,
        } => (
            json!({ "kind": "soak", "duration": duration, "environments": environments }),
            common,
        ),
    }
}
