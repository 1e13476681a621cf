//! The agent's side of the instances on its host: it reports what runs,
//! is told what is to run, fetches each new instance's files, starts it
//! with the local runtime (restarted with backoff when it dies) and stops
//! what it is no longer to run. When the server is out of reach, what runs
//! goes on running.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio_util::sync::CancellationToken;

use super::wire::{HostReport, HostWork, Hosted, RunningInstance};
use crate::runtime::{InstanceSpec, LocalRuntime, Recorder, Runtime};

/// How long a report waits at the server for a change: an instance's exits
/// reach the server at least this often.
const REPORT_WAIT: Duration = Duration::from_secs(2);

/// How the agent runs its host's instances.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// The server's base URL (`http://host:port`).
    pub server: String,
    pub token: String,
    pub name: String,
    /// Where instances' files, data and logs go: the agent's own.
    pub data_dir: PathBuf,
    pub isolation: sluice_ci::sandbox::Isolation,
}

/// The processes the runtime started, as the agent reports them.
#[derive(Default)]
struct Started(Mutex<HashMap<String, i64>>);

impl Recorder for Started {
    fn started<'a>(
        &'a self,
        id: &'a str,
        pid: i32,
        _start_ticks: i64,
        _restarts: i64,
    ) -> crate::runtime::Boxed<'a, ()> {
        self.0.lock().unwrap().insert(id.to_string(), pid.into());
        Box::pin(async {})
    }
}

struct HostAgent {
    config: HostConfig,
    http: reqwest::Client,
    runtime: LocalRuntime,
    started: Arc<Started>,
    /// What runs here now, by id.
    running: Mutex<HashMap<String, Hosted>>,
}

/// Runs the host's instances until `stop`; then stops them.
pub async fn run(config: HostConfig, stop: CancellationToken) -> Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let killed = crate::runtime::kill_leftovers(&config.data_dir, &[]);
    if !killed.is_empty() {
        tracing::warn!(
            killed = killed.len(),
            "stopped the instances a previous agent left running"
        );
    }
    let started = Arc::new(Started::default());
    let agent = HostAgent {
        runtime: LocalRuntime::recording_to(started.clone(), &config.data_dir),
        started,
        http: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // Past its wait, a report is lost (a cut link): ask again soon.
            .timeout(REPORT_WAIT + Duration::from_secs(5))
            .build()?,
        running: Mutex::default(),
        config,
    };
    loop {
        let work = tokio::select! {
            work = agent.report() => work,
            _ = stop.cancelled() => break,
        };
        match work {
            Ok(work) => agent.reconcile(work).await,
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "cannot reach the server; the instances go on");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.cancelled() => break,
                }
            }
        }
    }
    agent.runtime.stop_all().await;
    Ok(())
}

impl HostAgent {
    /// Says what runs; hears what is to run.
    async fn report(&self) -> Result<HostWork> {
        let report = HostReport {
            running: self
                .running
                .lock()
                .unwrap()
                .keys()
                .map(|id| RunningInstance {
                    id: id.clone(),
                    pid: self.started.0.lock().unwrap().get(id).copied(),
                    exits: self.runtime.exits(id),
                })
                .collect(),
        };
        let url = format!(
            "{}/api/v1/agents/{}/instances?wait_ms={}",
            self.config.server.trim_end_matches('/'),
            self.config.name,
            REPORT_WAIT.as_millis()
        );
        let response = self
            .http
            .post(url)
            .bearer_auth(&self.config.token)
            .json(&report)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("the server answered {}", response.status());
        }
        Ok(response.json().await?)
    }

    /// Starts what is new, stops what is no longer asked for.
    async fn reconcile(&self, work: HostWork) {
        let gone: Vec<String> = {
            let running = self.running.lock().unwrap();
            running
                .keys()
                .filter(|id| !work.instances.iter().any(|h| &h.id == *id))
                .cloned()
                .collect()
        };
        for id in gone {
            tracing::info!(instance = %id, "stopping an instance the server no longer asks for");
            self.runtime.stop(&id).await;
            self.running.lock().unwrap().remove(&id);
            self.started.0.lock().unwrap().remove(&id);
            let _ = tokio::fs::remove_dir_all(self.instance_dir(&id)).await;
        }
        for hosted in work.instances {
            if self.running.lock().unwrap().contains_key(&hosted.id) {
                continue;
            }
            let id = hosted.id.clone();
            match self.start(&hosted).await {
                Ok(()) => {
                    tracing::info!(instance = %id, port = hosted.port, "started an instance");
                    self.running.lock().unwrap().insert(id, hosted);
                }
                Err(e) => {
                    tracing::warn!(instance = %id, error = %format!("{e:#}"), "could not start an instance; trying again at the next report")
                }
            }
        }
    }

    fn instance_dir(&self, id: &str) -> PathBuf {
        self.config.data_dir.join("instances").join(id)
    }

    /// Fetches the instance's files and starts it, with its paths and
    /// address this host's own.
    async fn start(&self, hosted: &Hosted) -> Result<()> {
        for name in [&hosted.id, &hosted.service, &hosted.environment] {
            if !is_safe_name(name) {
                bail!(
                    "the server sent an instance named `{}`",
                    name.escape_debug()
                );
            }
        }
        let dir = self.instance_dir(&hosted.id);
        let tar = self.files(&hosted.id).await?;
        let unpack_to = dir.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let _ = std::fs::remove_dir_all(&unpack_to);
            std::fs::create_dir_all(&unpack_to)?;
            // `unpack` refuses entries that would land outside the directory.
            tar::Archive::new(std::io::Cursor::new(tar)).unpack(&unpack_to)?;
            Ok(())
        })
        .await??;
        let data = self
            .config
            .data_dir
            .join("data")
            .join(&hosted.service)
            .join(&hosted.environment);
        std::fs::create_dir_all(&data)?;
        let uid = sluice_ci::sandbox::env_uid(
            &hosted.service,
            &hosted.environment,
            self.config.isolation,
        );
        if let Some(uid) = uid {
            for owned in [&dir, &data] {
                sluice_ci::sandbox::give(owned, uid)?;
            }
        }
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let work = dir.join("work");
        let mut env = hosted.env.clone();
        env.extend([
            ("HOME".to_string(), path(&work)),
            ("SLUICE_CONFIG_DIR".to_string(), path(&dir.join("config"))),
            ("DATA_DIR".to_string(), path(&data)),
            ("SLUICE_HOME".to_string(), path(&self.config.data_dir)),
            ("HOST".to_string(), hosted.address.to_string()),
            ("PORT".to_string(), hosted.port.to_string()),
        ]);
        self.runtime
            .start(InstanceSpec {
                id: hosted.id.clone(),
                workdir: work,
                command: hosted.command.clone(),
                env,
                log: dir.join("instance.log"),
                uid,
            })
            .await
    }

    async fn files(&self, id: &str) -> Result<Vec<u8>> {
        let url = format!(
            "{}/api/v1/agents/{}/instances/{id}/files",
            self.config.server.trim_end_matches('/'),
            self.config.name,
        );
        let response = self
            .http
            .get(url)
            .bearer_auth(&self.config.token)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!(
                "the server answered {} for instance {id}'s files",
                response.status()
            );
        }
        Ok(response.bytes().await?.to_vec())
    }
}

/// A name the server sent that may become a directory.
fn is_safe_name(name: &str) -> bool {
    sluice_spec::is_label(name) && name != "." && name != ".."
}
