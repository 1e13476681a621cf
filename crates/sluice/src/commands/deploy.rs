//! `sluice status|releases|deployments|promote|promotions|approve|reject|
//! override|rollback|unpin|diff|instance logs`: continuous deployment.

use std::process::ExitCode;

use anyhow::Result;
use reqwest::Method;
use serde_json::{Value, json};

use crate::client::Client;
use crate::output::{print_json, rows_of, short_sha, table, text, time};
use crate::say;

pub async fn status(client: &Client, service: Option<String>, json: bool) -> Result<ExitCode> {
    let all = client.get_with("/status", &[("service", service)]).await?;
    if json {
        return print_json(&all);
    }
    let envs = all.as_array().cloned().unwrap_or_default();
    if envs.is_empty() {
        say!(
            "no environment has been deployed yet; a green mainline run makes a release, and `deploy: auto` environments get it"
        );
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = envs
        .iter()
        .map(|e| {
            let instances = e["instances"].as_array().cloned().unwrap_or_default();
            let healthy = instances.iter().filter(|i| i["healthy"] == true).count();
            let pending: Vec<String> = e["pending_promotions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    format!(
                        "#{} v{} ({})",
                        p["id"],
                        p["release"],
                        p["blocked_by"]
                            .as_str()
                            .unwrap_or(p["status"].as_str().unwrap_or(""))
                    )
                })
                .collect();
            vec![
                text(&e["service"]),
                text(&e["environment"]),
                e["release"]
                    .as_i64()
                    .map_or("-".into(), |n| format!("v{n}")),
                text(&e["health"]),
                format!("{healthy}/{}", e["desired_instances"]),
                text(&e["listen"]),
                if e["pinned"] == true {
                    "pinned".into()
                } else {
                    "-".into()
                },
                if pending.is_empty() {
                    "-".into()
                } else {
                    pending.join(", ")
                },
            ]
        })
        .collect();
    table(
        &[
            "SERVICE", "ENV", "RELEASE", "HEALTH", "HEALTHY", "LISTEN", "PIN", "PENDING",
        ],
        &rows,
    );
    for e in &envs {
        for d in e["drift"].as_array().into_iter().flatten() {
            say!(
                "drift in {}/{}: {}",
                text(&e["service"]),
                text(&e["environment"]),
                text(d)
            );
        }
        for entry in e["host_entry_points"].as_array().into_iter().flatten() {
            let failing: Vec<String> = entry["failing"]
                .as_array()
                .into_iter()
                .flatten()
                .map(text)
                .collect();
            let taken_out = match failing.is_empty() {
                true => String::new(),
                false => format!("; its own check takes out {}", failing.join(", ")),
            };
            say!(
                "{}/{} is also served on host {} at {}{taken_out}",
                text(&e["service"]),
                text(&e["environment"]),
                text(&entry["agent"]),
                text(&entry["address"])
            );
        }
        if let Some(reason) = e["pin_reason"].as_str() {
            say!(
                "{}/{} is pinned: {reason}",
                text(&e["service"]),
                text(&e["environment"])
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn releases(client: &Client, service: Option<String>, json: bool) -> Result<ExitCode> {
    let all = client
        .get_with("/releases", &[("service", service)])
        .await?;
    if json {
        return print_json(&all);
    }
    let rows = rows_of(&all, |r| {
        vec![
            text(&r["service"]),
            format!("v{}", r["number"]),
            short_sha(&r["sha"]),
            text(&r["run_id"]),
            time(&r["created_at"]),
            text(&r["title"]),
        ]
    });
    table(
        &["SERVICE", "RELEASE", "SHA", "RUN", "MADE", "TITLE"],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn deployments(
    client: &Client,
    service: Option<String>,
    env: Option<String>,
    json: bool,
) -> Result<ExitCode> {
    let all = client
        .get_with("/deployments", &[("service", service), ("env", env)])
        .await?;
    if json {
        return print_json(&all);
    }
    let rows = rows_of(&all, |d| {
        vec![
            text(&d["id"]),
            text(&d["service"]),
            text(&d["environment"]),
            format!("v{}", d["release"]),
            text(&d["strategy"]),
            text(&d["cause"]),
            text(&d["status"]),
            time(&d["created_at"]),
            text(&d["reason"]),
        ]
    });
    table(
        &[
            "ID", "SERVICE", "ENV", "RELEASE", "STRATEGY", "CAUSE", "STATUS", "WHEN", "WHY",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

fn print_promotion(p: &Value) {
    let state = match (p["status"].as_str(), p["blocked_by"].as_str()) {
        (Some("pending"), Some(gate)) => format!("pending, blocked by {gate}"),
        (Some(status), _) => status.to_string(),
        _ => "-".into(),
    };
    say!(
        "promotion {}: {} v{} → {}: {state}",
        p["id"],
        text(&p["service"]),
        p["release"],
        text(&p["environment"])
    );
    for gate in p["gates"].as_array().into_iter().flatten() {
        let mark = if gate["passed"] == true {
            "passed "
        } else {
            "blocked"
        };
        let clears = gate["clears"]
            .as_str()
            .map(|c| format!("; clears with {c}"))
            .unwrap_or_default();
        say!(
            "  [{mark}] {}: {}{clears}",
            text(&gate["gate"]),
            text(&gate["detail"])
        );
    }
    if p["status"] != "pending"
        && let Some(reason) = p["reason"].as_str()
    {
        say!("  {reason}");
    }
    let approvals: Vec<String> = p["approvals"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| text(&a["approver"]))
        .collect();
    if !approvals.is_empty() {
        say!("  approved by {}", approvals.join(", "));
    }
}

pub async fn promote(
    client: &Client,
    service: String,
    to: String,
    release: Option<i64>,
    json: bool,
) -> Result<ExitCode> {
    let body = json!({ "service": service, "to": to, "release": release });
    let promotion = client
        .json(client.request(Method::POST, "/promotions").json(&body))
        .await?;
    if json {
        return print_json(&promotion);
    }
    print_promotion(&promotion);
    Ok(ExitCode::SUCCESS)
}

pub async fn promotions(
    client: &Client,
    service: Option<String>,
    all: bool,
    json: bool,
) -> Result<ExitCode> {
    let list = client
        .get_with(
            "/promotions",
            &[
                ("service", service),
                ("all", all.then(|| "true".to_string())),
            ],
        )
        .await?;
    if json {
        return print_json(&list);
    }
    let items = list.as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        say!("no open promotions");
    }
    for p in items {
        print_promotion(&p);
    }
    Ok(ExitCode::SUCCESS)
}

/// `approve`, `reject` or `override` a promotion.
pub async fn decide(
    client: &Client,
    id: i64,
    verb: &str,
    reason: Option<String>,
) -> Result<ExitCode> {
    let body = json!({ "reason": reason.unwrap_or_default() });
    let promotion = client
        .json(
            client
                .request(Method::POST, &format!("/promotions/{id}/{verb}"))
                .json(&body),
        )
        .await?;
    print_promotion(&promotion);
    Ok(ExitCode::SUCCESS)
}

pub async fn rollback(
    client: &Client,
    service: &str,
    env: &str,
    to: Option<i64>,
) -> Result<ExitCode> {
    let path = format!("/services/{service}/environments/{env}/rollback");
    let deployment = client
        .json(
            client
                .request(Method::POST, &path)
                .json(&json!({ "to": to })),
        )
        .await?;
    say!(
        "{env} rolled back to v{} (deployment {}); it is pinned until `sluice unpin {service} {env}`",
        deployment["release"],
        deployment["id"]
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn unpin(client: &Client, service: &str, env: &str) -> Result<ExitCode> {
    client
        .send(client.request(
            Method::POST,
            &format!("/services/{service}/environments/{env}/unpin"),
        ))
        .await?;
    say!("{service}/{env} unpinned; automation may deploy to it again");
    Ok(ExitCode::SUCCESS)
}

pub async fn diff(
    client: &Client,
    service: &str,
    a: &str,
    b: &str,
    json: bool,
) -> Result<ExitCode> {
    let diff = client
        .json(
            client
                .request(Method::GET, &format!("/services/{service}/diff"))
                .query(&[("a", a), ("b", b)]),
        )
        .await?;
    if json {
        return print_json(&diff);
    }
    print!("{}", text(&diff["text"]));
    Ok(ExitCode::SUCCESS)
}

pub async fn instance_logs(client: &Client, id: &str) -> Result<ExitCode> {
    let log = client.get(&format!("/instances/{id}/logs")).await?;
    print!("{}", text(&log["log"]));
    Ok(ExitCode::SUCCESS)
}

pub async fn ab(client: &Client, command: crate::cli::AbCommand) -> Result<ExitCode> {
    use crate::cli::AbCommand;
    let (id, verb) = match command {
        AbCommand::Start {
            service,
            env,
            release,
            settings,
            goals,
        } => {
            let set: serde_json::Map<String, Value> = settings
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            let body = json!({ "service": service, "env": env, "release": release, "set": set, "goals": goals });
            client
                .json(client.request(Method::POST, "/experiments").json(&body))
                .await?;
            say!(
                "experiment of {service} v{release} in {env} starting: B starts beside A, then takes its first share"
            );
            say!("follow it with `sluice ab status {service}`");
            return Ok(ExitCode::SUCCESS);
        }
        AbCommand::Status { service, json } => return ab_status(client, service, json).await,
        AbCommand::Pause { id } => (id, "pause"),
        AbCommand::Resume { id } => (id, "resume"),
        AbCommand::Promote { id } => (id, "promote"),
        AbCommand::Abort { id } => (id, "abort"),
    };
    client
        .json(client.request(Method::POST, &format!("/experiments/{id}/{verb}")))
        .await?;
    say!("experiment {id}: {verb} sent");
    Ok(ExitCode::SUCCESS)
}

async fn ab_status(client: &Client, service: Option<String>, json: bool) -> Result<ExitCode> {
    let all = client
        .get_with("/experiments", &[("service", service)])
        .await?;
    if json {
        return print_json(&all);
    }
    let items = all.as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        say!(
            "no experiments yet; promote a release into an environment with `strategy: {{ ab: {{}} }}`, or `sluice ab start`"
        );
    }
    for x in items.iter().take(5) {
        let weight = x["weight"].as_f64().unwrap_or(0.0);
        say!(
            "experiment {}: {} v{} in {}: {} at {weight}% B",
            x["id"],
            text(&x["service"]),
            x["release"],
            text(&x["environment"]),
            text(&x["status"])
        );
        let progress = &x["step_progress"];
        if progress.is_object() {
            let side = |v: &Value| {
                let ms = |k: &str| {
                    v[k].as_f64()
                        .map_or("-".to_string(), |ms| format!("{ms:.1} ms"))
                };
                format!(
                    "{} requests, {} errors, p50 {}, p95 {}",
                    v["requests"],
                    v["errors"],
                    ms("p50_ms"),
                    ms("p95_ms")
                )
            };
            say!(
                "  this step: B {} of {} requests needed",
                progress["b"]["requests"],
                progress["min_requests"]
            );
            say!("    A: {}", side(&progress["a"]));
            say!("    B: {}", side(&progress["b"]));
        }
        if let Some(last) = x["decisions"].as_array().and_then(|d| d.last()) {
            let n = &last["numbers"];
            say!(
                "  last decision: {}: {}",
                text(&last["action"]),
                text(&last["reason"])
            );
            if n.is_object() {
                say!(
                    "  A: {} requests, {:.3}% errors   B: {} requests, {:.3}% errors   split p = {:.3}",
                    n["a_requests"].as_f64().unwrap_or(0.0) as u64,
                    100.0 * n["a_error_rate"].as_f64().unwrap_or(0.0),
                    n["b_requests"].as_f64().unwrap_or(0.0) as u64,
                    100.0 * n["b_error_rate"].as_f64().unwrap_or(0.0),
                    n["split_p_value"].as_f64().unwrap_or(1.0)
                );
            }
        }
        if let Some(report) = x["report"].as_object() {
            for (variant, figures) in [("A", &report["a"]), ("B", &report["b"])] {
                say!(
                    "  {variant}: {} requests, {:.3}% errors, p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms",
                    figures["requests"],
                    100.0 * figures["error_rate"].as_f64().unwrap_or(0.0),
                    figures["p50_ms"].as_f64().unwrap_or(0.0),
                    figures["p95_ms"].as_f64().unwrap_or(0.0),
                    figures["p99_ms"].as_f64().unwrap_or(0.0)
                );
            }
            for line in goal_lines(&x["report"]) {
                say!("{line}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// An experiment's goals as its report has them: per variant the users and
/// their conversion (or value per user), and B's lift with its interval.
fn goal_lines(report: &Value) -> Vec<String> {
    let Some(goals) = report["goals"].as_array().filter(|g| !g.is_empty()) else {
        return Vec::new();
    };
    let mut lines = vec![format!("  goals ({}):", text(&report["mode"]))];
    for goal in goals {
        let value = goal["value"].as_bool().unwrap_or(false);
        let side = |v: &Value| {
            let users = v["users"].as_u64().unwrap_or(0);
            match v["mean"].as_f64() {
                Some(mean) if value => format!("{mean:.2} a user of {users}"),
                Some(mean) => format!("{:.2}% of {users} users", 100.0 * mean),
                None => format!("{users} users"),
            }
        };
        let lift = match goal["lift"].as_object() {
            Some(l) => format!(
                "lift {:+.1}% [{:+.1}%, {:+.1}%]",
                100.0 * l["estimate"].as_f64().unwrap_or(0.0),
                100.0 * l["lower"].as_f64().unwrap_or(0.0),
                100.0 * l["upper"].as_f64().unwrap_or(0.0)
            ),
            None => "too few users for a lift yet".into(),
        };
        let role = if goal["primary"] == true {
            " (primary)"
        } else {
            ""
        };
        lines.push(format!(
            "    {}{role}: A {}, B {}; {lift}",
            text(&goal["name"]),
            side(&goal["a"]),
            side(&goal["b"])
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goals_read_as_lines() {
        let report = serde_json::json!({ "mode": "test", "goals": [
            { "name": "checkout", "primary": true, "value": false,
              "a": { "users": 1097, "mean": 0.2 }, "b": { "users": 1072, "mean": 0.4 },
              "lift": { "estimate": 1.0, "lower": 0.35, "upper": 1.54 } },
            { "name": "purchase", "primary": false, "value": true,
              "a": { "users": 10, "mean": null }, "b": { "users": 12, "mean": 3.5 }, "lift": null },
        ]});
        assert_eq!(
            goal_lines(&report),
            vec![
                "  goals (test):",
                "    checkout (primary): A 20.00% of 1097 users, B 40.00% of 1072 users; lift +100.0% [+35.0%, +154.0%]",
                "    purchase: A 10 users, B 3.50 a user of 12; too few users for a lift yet",
            ]
        );
        assert!(goal_lines(&serde_json::json!({})).is_empty());
    }
}
