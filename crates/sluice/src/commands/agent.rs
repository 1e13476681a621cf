//! `sluice agent`: runs an agent on this host until it is stopped.

use std::process::ExitCode;

use anyhow::{Result, bail};
use sluice_ci::agent::AgentConfig;
use tokio_util::sync::CancellationToken;

use crate::cli::Global;

pub async fn agent(
    global: &Global,
    name: Option<String>,
    labels: Vec<(String, String)>,
    jobs: usize,
    isolation: &str,
) -> Result<ExitCode> {
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
    let config = AgentConfig {
        server: global.server.clone(),
        token,
        name,
        labels: labels.into_iter().collect(),
        data_dir,
        jobs,
        isolation: if isolation == "none" {
            sluice_ci::sandbox::Isolation::None
        } else {
            sluice_ci::sandbox::Isolation::User
        },
    };
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        super::serve::shutdown_signal().await;
        stop.cancel();
    });
    sluice_ci::agent::run(config, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
