//! `sluice serve`: start the server and run until Ctrl-C or SIGTERM.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use sluice_server::{ServeOptions, Server};

use crate::cli::{Global, Serve};

pub async fn serve(global: &Global, options: Serve) -> Result<ExitCode> {
    let isolation = if options.isolation == "none" {
        sluice_ci::sandbox::Isolation::None
    } else {
        sluice_ci::sandbox::Isolation::User
    };
    let on = options.local_agent.as_deref() != Some("off");
    let local_agent = match on {
        true => Some(sluice_server::local_agent::LocalAgent {
            program: std::env::current_exe()?,
            isolation,
        }),
        false => None,
    };
    let server = Server::start(ServeOptions {
        data_dir: global.data_dir.clone(),
        listen: options.listen,
        database: options.database,
        poll_interval: options.poll_interval,
        parallelism: options.parallelism,
        keep_workspaces: options.keep_workspaces,
        log_cap: options.log_cap,
        public_url: options.public_url,
        agent_lease: options.agent_lease,
        jobs_on_agents: options.jobs_on == "agents",
        controller_lease: options.controller_lease,
        advertise: options.advertise,
        socket_keeper: std::env::current_exe().ok(),
        isolation,
        local_agent,
    })
    .await?;
    let data_dir = global
        .data_dir
        .canonicalize()
        .unwrap_or_else(|_| global.data_dir.clone());
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "sluice {} listening on http://{}",
        env!("CARGO_PKG_VERSION"),
        server.addr
    )?;
    writeln!(out, "  data:     {}", data_dir.display())?;
    writeln!(out, "  database: {}", server.database)?;
    if let Some(log) = server.local_agent_log() {
        writeln!(
            out,
            "  local agent: runs the environments without `hosts:` and outlives this server (log: {})",
            log.display()
        )?;
    }
    if server.standing_by() {
        writeln!(
            out,
            "  standing by: another server runs the controllers; requests are forwarded to it, and this one takes over if it stops"
        )?;
    }
    if let Some(token) = &server.initial_admin_token {
        writeln!(
            out,
            "initial admin token (shown once; also in {}):",
            sluice_spec::Layout::new(&data_dir)
                .initial_admin_token()
                .display()
        )?;
        writeln!(out, "  {token}")?;
    }
    out.flush()?;
    drop(out);
    if let Err(e) = server.run_until(stop_signal()).await {
        // At once: the engines' tasks must not act a moment longer.
        eprintln!("sluice: {e:#}");
        std::process::exit(75);
    }
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM or Ctrl-C stops everything; SIGUSR2 hands over to the next
/// server (an upgrade): the environments keep running and serving.
async fn stop_signal() -> sluice_server::Stop {
    let mut hand_over =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2()).ok();
    tokio::select! {
        _ = shutdown_signal() => sluice_server::Stop::Everything,
        _ = async { match hand_over.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {
            eprintln!("sluice: handing over; the environments keep running for the next server");
            sluice_server::Stop::HandOver
        }
    }
}

pub(crate) async fn shutdown_signal() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match terminate.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
    }
    eprintln!("sluice: shutting down");
}
