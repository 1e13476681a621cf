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
