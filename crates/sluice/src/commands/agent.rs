//! `sluice agent`: runs an agent on this host until it is stopped;
//! `sluice agents`: lists the agents that registered.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use sluice_ci::agent::{AgentConfig, Stop};
use sluice_deploy::hosts::agent::HostConfig;

use crate::cli::{AgentArgs, Global};
use crate::client::Client;
use crate::output::{print_json, rows_of, table, text, time};

pub async fn list(client: &Client, json: bool) -> Result<ExitCode> {
    let agents = client.get("/agents").await?;
    if json {
        return print_json(&agents);
    }
    let rows = rows_of(&agents, |a| {
        let labels: Vec<String> = a["labels"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect();
        vec![
            text(&a["name"]),
            if a["online"] == true {
                "online"
            } else {
                "silent"
            }
            .to_string(),
            if labels.is_empty() {
                "-".into()
            } else {
                labels.join(",")
            },
            text(&a["jobs"]),
            text(&a["cores"]),
            format!("{} MiB", text(&a["memory_mb"])),
            time(&a["seen_at"]),
        ]
    });
    if rows.is_empty() {
        crate::say!(
            "no agent has registered; start one with `sluice agent --server URL --token TOKEN` (docs/agents.md)"
        );
    } else {
        table(
            &[
                "AGENT",
                "STATE",
                "LABELS",
                "JOBS",
                "CORES",
                "MEMORY",
                "LAST HEARD",
            ],
            &rows,
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn agent(global: &Global, args: AgentArgs) -> Result<ExitCode> {
    let AgentArgs {
        name,
        labels,
        jobs,
        isolation,
        address,
        metrics,
        server_data_dir,
    } = args;
    let Some(token) = global.token.clone() else {
        bail!(
            "an agent needs its token: --token or SLUICE_TOKEN (an admin makes one with `sluice token create --name NAME --role agent`)"
        );
    };
    let name = match name {
        Some(name) => name,
        None => nix::unistd::gethostname()?.to_string_lossy().into_owned(),
    };
    if !sluice_spec::is_label(&name) {
        bail!(
            "`{name}` is not a valid agent name: use 1 to 63 letters, digits, `.`, `_` or `-` (--name)"
        );
    }
    // Its own directory under the data directory, so that its steps' mark
    // is never a server's.
    let data_dir = std::path::absolute(&global.data_dir)?
        .join("agents")
        .join(&name);
    let isolation = if isolation == "none" {
        sluice_ci::sandbox::Isolation::None
    } else {
        sluice_ci::sandbox::Isolation::User
    };
    let mut registry = prometheus_client::registry::Registry::default();
    let entry_metrics = sluice_proxy::Metrics::register(&mut registry);
    if let Some(addr) = metrics {
        let bound = serve_metrics(addr, registry).await?;
        // Where it listens, for whoever asked for port 0 (the local agent's server).
        std::fs::create_dir_all(&data_dir)?;
        std::fs::write(data_dir.join("metrics-address"), format!("{bound}\n"))?;
    }
    // One list for both sides: what the host side hears of other servers
    // serves the CI side too.
    let servers = sluice_ci::servers::Servers::new(&global.server);
    let hosting = HostConfig {
        metrics: entry_metrics,
        servers: servers.clone(),
        token: token.clone(),
        name: name.clone(),
        data_dir: data_dir.join("host"),
        isolation,
        socket_keeper: std::env::current_exe().ok(),
        server_data_dir,
    };
    let config = AgentConfig {
        servers,
        token,
        name,
        labels: labels.into_iter().collect(),
        data_dir,
        jobs,
        isolation,
        address: address.map(|a| a.to_string()),
    };
    // The first SIGTERM or Ctrl-C drains (no new job; those under way
    // finish), the second cancels them. SIGUSR2 drains too, and leaves the
    // host's instances running for the next agent process (an upgrade).
    let stop = Stop::default();
    let signals = stop.clone();
    let hand_over = tokio_util::sync::CancellationToken::new();
    let handing = hand_over.clone();
    tokio::spawn(async move {
        let mut usr2 =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2()).ok();
        tokio::select! {
            _ = super::serve::shutdown_signal() => {}
            _ = async { match usr2.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {
                eprintln!("sluice: handing over; this host's instances keep running for the next agent");
                handing.cancel();
            }
        }
        tracing::info!("draining: no new job; a second signal cancels the jobs under way");
        signals.drain.cancel();
        super::serve::shutdown_signal().await;
        signals.cancel.cancel();
    });
    // The instances of environments on this host run beside the jobs, and
    // stop once the jobs are done and the agent exits (but on a hand-over).
    let done = tokio_util::sync::CancellationToken::new();
    let instances = tokio::spawn(sluice_deploy::hosts::agent::run(
        hosting,
        done.clone(),
        hand_over,
    ));
    let ran = sluice_ci::agent::run(config, stop).await;
    done.cancel();
    instances.await??;
    ran?;
    Ok(ExitCode::SUCCESS)
}

/// Serves `registry` at `http://addr/metrics` until the agent exits;
/// returns where it listens.
async fn serve_metrics(
    addr: std::net::SocketAddr,
    registry: prometheus_client::registry::Registry,
) -> Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot serve metrics at {addr} (--metrics)"))?;
    let registry = std::sync::Arc::new(registry);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || async move { sluice_server::metrics_page(&registry) }),
    );
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "serving the entry points' metrics at /metrics");
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(bound)
}
