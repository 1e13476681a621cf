//! `sluice proxy`: the load balancer alone, in front of fixed backends, with
//! the same split, balancing and telemetry as an environment's entry point,
//! over HTTP or HTTPS.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use sluice_proxy::{Backend, Listener, Route, Split, Sticky, Telemetry, Variant};

pub async fn run(
    listen: SocketAddr,
    a: Vec<SocketAddr>,
    b: Vec<SocketAddr>,
    weight: f64,
    tls: Option<(PathBuf, PathBuf)>,
    goals: &[String],
) -> Result<ExitCode> {
    let route = Route::default();
    for (variant, addrs) in [(Variant::A, &a), (Variant::B, &b)] {
        for (i, addr) in addrs.iter().enumerate() {
            let backend = Backend::new(
                format!("{}-{}", variant.as_str(), i + 1),
                *addr,
                variant.as_str(),
            );
            backend.set_variant(variant);
            backend.set_healthy(true);
            route.add(backend);
        }
    }
    if !b.is_empty() {
        route.set_split(Some(
            Split::new(weight, Sticky::Cookie, true).map_err(anyhow::Error::msg)?,
        ));
    }
    if !goals.is_empty() {
        let goals = goals.iter().map(|g| goal(g)).collect::<Result<Vec<_>>>()?;
        let tracker = sluice_proxy::goals::GoalTracker::new(goals).map_err(anyhow::Error::msg)?;
        route.set_goals(Some(std::sync::Arc::new(tracker)));
    }
    let certificates = match &tls {
        Some((cert, key)) => Some(
            sluice_proxy::tls::Certificates::load(vec![sluice_proxy::tls::CertFiles {
                cert: cert.clone(),
                key: key.clone(),
            }])
            .map_err(anyhow::Error::msg)?,
        ),
        None => None,
    };
    let scheme = if certificates.is_some() {
        "https"
    } else {
        "http"
    };
    let listener = Listener::bind_tls(
        listen,
        route,
        "proxy",
        Telemetry::detached("proxy"),
        sluice_proxy::Limits::default(),
        certificates,
    )
    .await
    .with_context(|| format!("could not listen on {listen}"))?;
    println!(
        "sluice proxy listening on {scheme}://{} ({} A, {} B at {weight}%)",
        listener.addr,
        a.len(),
        b.len()
    );
    tokio::signal::ctrl_c().await?;
    Ok(ExitCode::SUCCESS)
}

/// `NAME` or `NAME=METHOD /path` (reached by a request answered 2xx).
fn goal(text: &str) -> Result<sluice_proxy::goals::Goal> {
    let (name, rule) = match text.split_once('=') {
        Some((name, rule)) => (name, Some(rule)),
        None => (text, None),
    };
    if sluice_proxy::goals::parse_report(name) != Some((name, None)) {
        anyhow::bail!("`{name}` is not a goal name: letters, digits, -, _ and .");
    }
    let on = match rule {
        None => None,
        Some(rule) => {
            let (method, path) = rule
                .split_once(' ')
                .filter(|(_, path)| path.starts_with('/'))
                .with_context(|| format!("`{rule}` is not `METHOD /path`"))?;
            Some(sluice_proxy::goals::RequestRule {
                method: method
                    .parse()
                    .with_context(|| format!("`{method}` is not a method"))?,
                path: path.to_string(),
                status_class: Some(2),
            })
        }
    };
    Ok(sluice_proxy::goals::Goal {
        name: name.to_string(),
        on,
        value: false,
    })
}
