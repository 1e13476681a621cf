//! `sluice runs|show|logs|cancel|changes`: what CI did and what changed.

use std::process::ExitCode;

use anyhow::Result;
use futures::StreamExt;
use reqwest::Method;
use serde_json::Value;

use crate::client::Client;
use crate::output::{duration, rows_of, short_sha, table, text, time};

pub async fn list(
    client: &Client,
    repo: Option<String>,
    status: Option<String>,
    limit: i64,
    json: bool,
) -> Result<ExitCode> {
    let runs = client
        .get_with(
            "/runs",
            &[
                ("limit", Some(limit.to_string())),
                ("repo", repo),
                ("status", status),
            ],
        )
        .await?;
    if json {
        crate::say!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows = rows_of(&runs, |r| {
        vec![
            text(&r["id"]),
            text(&r["status"]),
            text(&r["repo"]),
            text(&r["branch"]),
            short_sha(&r["sha"]),
            text(&r["kind"]),
            duration(&r["started_at"], &r["finished_at"]),
            text(&r["title"]),
        ]
    });
    if rows.is_empty() {
        crate::say!("no runs yet; add a repository with `sluice repo add PATH` and commit to it");
    } else {
        table(
            &[
                "RUN", "STATUS", "REPO", "BRANCH", "SHA", "KIND", "TOOK", "TITLE",
            ],
            &rows,
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn show(client: &Client, run: i64, json: bool) -> Result<ExitCode> {
    let detail = client.get(&format!("/runs/{run}")).await?;
    if json {
        crate::say!("{}", serde_json::to_string_pretty(&detail)?);
        return Ok(ExitCode::SUCCESS);
    }
    crate::say!(
        "run {}  {}",
        text(&detail["id"]),
        text(&detail["status"]).to_uppercase()
    );
    if let Some(reason) = detail["reason"].as_str() {
        crate::say!("  why:      {reason}");
    }
    crate::say!(
        "  change:   {} {} on {} ({}): {}",
        text(&detail["repo"]),
        short_sha(&detail["sha"]),
        text(&detail["branch"]),
        text(&detail["kind"]),
        text(&detail["title"])
    );
    crate::say!("  queued:   {}", time(&detail["created_at"]));
    crate::say!(
        "  took:     {}",
        duration(&detail["started_at"], &detail["finished_at"])
    );
    if let Some(sha) = detail["artifact_sha256"].as_str() {
        crate::say!("  artifact: sha256:{sha}");
    }
    for job in detail["jobs"].as_array().into_iter().flatten() {
        crate::say!();
        let why = job["reason"]
            .as_str()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        crate::say!(
            "  job {}  {}  {}{why}",
            text(&job["name"]),
            text(&job["status"]),
            duration(&job["started_at"], &job["finished_at"])
        );
        for step in job["steps"].as_array().into_iter().flatten() {
            let code = step["exit_code"]
                .as_i64()
                .map(|c| format!("exit {c}"))
                .unwrap_or_default();
            crate::say!(
                "    {:<9} {:<8} {:>8}  {}",
                text(&step["status"]),
                code,
                duration(&step["started_at"], &step["finished_at"]),
                text(&step["name"])
            );
        }
        for attempt in job["attempts"].as_array().into_iter().flatten() {
            let why = attempt["reason"]
                .as_str()
                .map(|r| format!(": {r}"))
                .unwrap_or_default();
            crate::say!(
                "    on agent {} (claim {}): {}{why}",
                text(&attempt["agent"]),
                attempt["generation"],
                text(&attempt["state"])
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_line(line: &Value) {
    let at = line["at"]
        .as_i64()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%H:%M:%S")
                .to_string()
        })
        .unwrap_or_default();
    let job = line["job"]
        .as_str()
        .filter(|j| !j.is_empty())
        .unwrap_or("sluice");
    let mark = match line["stream"].as_str() {
        Some("stderr") => "!",
        Some("sluice") => "»",
        _ => "|",
    };
    crate::say!("{at} {job} {mark} {}", text(&line["line"]));
}

pub async fn logs(client: &Client, run: i64, follow: bool) -> Result<ExitCode> {
    if !follow {
        // Page by page: a long log is never one answer.
        let mut after = -1;
        loop {
            let logs = client
                .get(&format!("/runs/{run}/logs?after={after}"))
                .await?;
            for line in logs["lines"].as_array().into_iter().flatten() {
                print_line(line);
            }
            match logs["next_after"].as_i64() {
                Some(next) => after = next,
                None => return Ok(ExitCode::SUCCESS),
            }
        }
    }
    let response = client
        .send(client.request(Method::GET, &format!("/runs/{run}/logs/stream")))
        .await?;
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    while let Some(chunk) = body.next().await {
        buffer.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(end) = buffer.find("\n\n") {
            let message: String = buffer.drain(..end + 2).collect();
            let event = message
                .lines()
                .find_map(|l| l.strip_prefix("event:"))
                .map(str::trim)
                .unwrap_or("");
            let data: String = message
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            let value: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
            match event {
                "line" => print_line(&value),
                "end" => {
                    let why = value["reason"]
                        .as_str()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default();
                    crate::say!("run {run} ended {}{why}", text(&value["status"]));
                    return Ok(ExitCode::SUCCESS);
                }
                _ => {}
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn cancel(client: &Client, run: i64) -> Result<ExitCode> {
    client
        .json(client.request(Method::POST, &format!("/runs/{run}/cancel")))
        .await?;
    crate::say!("run {run} cancelled");
    Ok(ExitCode::SUCCESS)
}

pub async fn changes(
    client: &Client,
    service: Option<String>,
    env: Option<String>,
    kind: Option<String>,
    since: Option<String>,
    limit: i64,
    json: bool,
) -> Result<ExitCode> {
    let params = [
        ("limit", Some(limit.to_string())),
        ("service", service),
        ("env", env),
        ("kind", kind),
        ("since", since),
    ];
    let events = client.get_with("/changelog", &params).await?;
    if json {
        crate::say!("{}", serde_json::to_string_pretty(&events)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows = rows_of(&events, |e| {
        vec![
            time(&e["at"]),
            text(&e["kind"]),
            text(&e["actor"]),
            text(&e["environment"]),
            text(&e["summary"]),
        ]
    });
    table(&["WHEN", "KIND", "WHO", "ENV", "WHAT"], &rows);
    Ok(ExitCode::SUCCESS)
}
