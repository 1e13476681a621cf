//! The agent's side of the instances on its host: it reports what runs,
//! is told what is to run and serve, fetches each new instance's files,
//! starts it with the local runtime (restarted with backoff when it dies),
//! stops what it is no longer to run, and serves the environments' entry
//! points (`entry_points`). When the server is out of reach, what
//! runs goes on running and the entry points go on routing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::entry_points::EntryPoints;
use super::host_data::HostData;
use super::wire::{HostReport, HostWork, Hosted, RunningInstance};
use crate::runtime::{InstanceSpec, LocalRuntime, Recorder, Runtime};

/// How long a report waits at the server for a change: an instance's exits
/// reach the server at least this often.
pub const REPORT_WAIT: Duration = Duration::from_secs(2);

/// How the agent runs its host's instances.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// The servers it reaches, shared with the agent's CI side.
    pub servers: std::sync::Arc<sluice_ci::servers::Servers>,
    pub token: String,
    pub name: String,
    /// Where instances' files, data and logs go: the agent's own.
    pub data_dir: PathBuf,
    pub isolation: sluice_ci::sandbox::Isolation,
    /// The program that keeps the entry points' sockets through a restart
    /// of the agent (`sluice keep-sockets`: this binary); none, they close.
    pub socket_keeper: Option<PathBuf>,
    /// Where the entry points count their Prometheus metrics.
    pub metrics: sluice_proxy::Metrics,
    /// The local agent's: the data directory of the server beside it,
    /// whose layout the environments' data follows in place, so that the
    /// server fills, snapshots and replays it as its own.
    pub server_data_dir: Option<PathBuf>,
}

/// The processes the runtime started (pid, start time), as the agent
/// reports them and keeps them on disk for the next agent process.
#[derive(Default)]
struct Started(Mutex<HashMap<String, (i32, i64)>>);

impl Recorder for Started {
    fn started<'a>(
        &'a self,
        id: &'a str,
        pid: i32,
        start_ticks: i64,
        _restarts: i64,
    ) -> crate::runtime::Boxed<'a, ()> {
        self.0
            .lock()
            .unwrap()
            .insert(id.to_string(), (pid, start_ticks));
        Box::pin(async {})
    }
}

/// One instance as the agent keeps it on disk (`running.json`), so that
/// the next agent process adopts it after a crash instead of starting it
/// again.
#[derive(Serialize, Deserialize)]
struct Kept {
    hosted: Hosted,
    pid: i32,
    start_ticks: i64,
}

struct HostAgent {
    config: HostConfig,
    http: reqwest::Client,
    runtime: LocalRuntime,
    started: Arc<Started>,
    /// What runs here now, by id.
    running: Mutex<HashMap<String, Hosted>>,
    /// What `running.json` holds, so that it is written only on a change.
    kept: Mutex<Vec<u8>>,
    entry_points: EntryPoints,
    data: HostData,
    /// What of each instance's log the server has.
    logs: super::logs::Sent,
    /// The data seeded here that the server has not heard of yet.
    seeded: Mutex<Vec<super::wire::DataSeeded>>,
}

/// Runs the host's instances until `stop`; then stops them, unless
/// `hand_over` was cancelled first (an upgrade): then they run on for the
/// next agent process. Those a previous agent process of this directory
/// left running (a hand-over, or a crash) are adopted, not started again.
pub async fn run(
    config: HostConfig,
    stop: CancellationToken,
    hand_over: CancellationToken,
) -> Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
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
        kept: Mutex::default(),
        entry_points: EntryPoints::new(
            &config.data_dir,
            config.socket_keeper.as_deref(),
            config.metrics.clone(),
        ),
        data: HostData::new(&config.data_dir, config.server_data_dir.as_deref()),
        logs: super::logs::Sent::default(),
        seeded: Mutex::default(),
        config,
    };
    agent.adopt_left().await;
    loop {
        let work = tokio::select! {
            work = agent.report() => work,
            _ = stop.cancelled() => break,
        };
        match work {
            Ok(work) => {
                // What could not be started or bound is tried again at the
                // next report: a second from now, not at once in a loop.
                if !agent.reconcile(work).await {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.cancelled() => break,
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "cannot reach the server; the instances go on");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.cancelled() => break,
                }
            }
        }
    }
    agent.entry_points.close(hand_over.is_cancelled()).await;
    if hand_over.is_cancelled() {
        agent.runtime.release_all().await;
        agent.keep();
        tracing::info!("the instances run on for the next agent");
    } else {
        agent.runtime.stop_all().await;
    }
    Ok(())
}

impl HostAgent {
    fn kept_file(&self) -> PathBuf {
        self.config.data_dir.join("running.json")
    }

    /// Adopts what a killed agent process left running and still is (the
    /// same process, by pid and start time), and stops every other
    /// instance process of this directory.
    async fn adopt_left(&self) {
        let left: Vec<Kept> = std::fs::read(self.kept_file())
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let mut adopted = Vec::new();
        for kept in left {
            if !self.runtime.can_adopt(kept.pid, kept.start_ticks) {
                continue;
            }
            let spec = match self.spec_of(&kept.hosted) {
                Ok(spec) => spec,
                Err(e) => {
                    tracing::warn!(instance = %kept.hosted.id, error = %format!("{e:#}"), "cannot adopt an instance");
                    continue;
                }
            };
            if self
                .runtime
                .adopt(spec, kept.pid, kept.start_ticks)
                .await
                .is_ok()
            {
                let id = kept.hosted.id.clone();
                self.started
                    .0
                    .lock()
                    .unwrap()
                    .insert(id.clone(), (kept.pid, kept.start_ticks));
                self.running.lock().unwrap().insert(id, kept.hosted);
                adopted.push(kept.pid);
            }
        }
        if !adopted.is_empty() {
            tracing::info!(
                adopted = adopted.len(),
                "kept the instances a previous agent left running"
            );
        }
        let killed = crate::runtime::kill_leftovers(&self.config.data_dir, &adopted);
        if !killed.is_empty() {
            tracing::warn!(
                killed = killed.len(),
                "stopped the instances a previous agent left running"
            );
        }
    }

    /// Writes what runs to disk, for the next agent process, when it changed.
    fn keep(&self) {
        let started = self.started.0.lock().unwrap().clone();
        let mut kept: Vec<Kept> = self
            .running
            .lock()
            .unwrap()
            .values()
            .filter_map(|hosted| {
                let (pid, start_ticks) = *started.get(&hosted.id)?;
                Some(Kept {
                    hosted: hosted.clone(),
                    pid,
                    start_ticks,
                })
            })
            .collect();
        kept.sort_by(|a, b| a.hosted.id.cmp(&b.hosted.id));
        let Ok(bytes) = serde_json::to_vec(&kept) else {
            return;
        };
        if *self.kept.lock().unwrap() == bytes {
            return;
        }
        // It holds the instances' secrets: for the agent's user only.
        let written = write_private(&self.kept_file(), &bytes);
        match written {
            Ok(()) => *self.kept.lock().unwrap() = bytes,
            Err(e) => tracing::warn!(error = %e, "cannot keep the list of running instances"),
        }
    }

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
                    pid: self
                        .started
                        .0
                        .lock()
                        .unwrap()
                        .get(id)
                        .map(|(pid, _)| i64::from(*pid)),
                    exits: self.runtime.exits(id),
                    log: self.logs.next(id, &self.log_of(id)),
                })
                .collect(),
            entries: self.entry_points.reports(sluice_proxy::system_second()),
            seeded: self.seeded.lock().unwrap().clone(),
        };
        let path = format!(
            "/agents/{}/instances?wait_ms={}",
            self.config.name,
            REPORT_WAIT.as_millis()
        );
        let request = self.http.post(self.url(&path)).json(&report);
        let work: HostWork = self.send(request).await?.json().await?;
        self.config.servers.learn(&work.servers);
        self.entry_points.taken(&report.entries);
        let logs = report.running.iter();
        self.logs
            .taken(logs.filter_map(|r| Some((r.id.as_str(), r.log.as_ref()?))));
        self.seeded.lock().unwrap().drain(..report.seeded.len());
        Ok(work)
    }

    /// Starts what is new, stops what is no longer asked for, keeps the
    /// list on disk, and serves the entry points asked for. Whether all of
    /// it was done.
    async fn reconcile(&self, mut work: HostWork) -> bool {
        let entries = work.entries.take();
        let wanted = work.instances.clone();
        let started = self.start_and_stop(work).await;
        self.data.drop_unused_copies(&wanted);
        self.keep();
        let serving = self.entry_points.serve(entries).await;
        started && serving
    }

    /// Whether every instance asked for runs.
    async fn start_and_stop(&self, work: HostWork) -> bool {
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
            self.logs.forget(&id);
            let _ = tokio::fs::remove_dir_all(self.instance_dir(&id)).await;
        }
        let mut all = true;
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
                    all = false;
                    tracing::warn!(instance = %id, error = %format!("{e:#}"), "could not start an instance; trying again at the next report")
                }
            }
        }
        all
    }

    fn instance_dir(&self, id: &str) -> PathBuf {
        self.config.data_dir.join("instances").join(id)
    }

    /// Where the instance's output goes on this host.
    fn log_of(&self, id: &str) -> PathBuf {
        self.instance_dir(id).join("instance.log")
    }

    /// Fetches the instance's files and starts it, with its paths and
    /// address this host's own.
    async fn start(&self, hosted: &Hosted) -> Result<()> {
        check_names(hosted)?;
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
        let spec = self.spec_of(hosted)?;
        if let Some(seeded) = self.data.prepare(hosted, &spec).await? {
            self.seeded.lock().unwrap().push(seeded);
        }
        if let Some(uid) = spec.uid {
            for owned in [&dir, &self.data.dir_of(hosted)] {
                sluice_ci::sandbox::give(owned, uid)?;
            }
        }
        self.runtime.start(spec).await
    }

    /// How the runtime runs the instance here: in its unpacked files, with
    /// its paths and address this host's own.
    fn spec_of(&self, hosted: &Hosted) -> Result<InstanceSpec> {
        check_names(hosted)?;
        let dir = self.instance_dir(&hosted.id);
        let uid = sluice_ci::sandbox::env_uid(
            &hosted.service,
            &hosted.environment,
            self.config.isolation,
        );
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let work = dir.join("work");
        let mut env = hosted.env.clone();
        env.extend([
            ("HOME".to_string(), path(&work)),
            ("SLUICE_CONFIG_DIR".to_string(), path(&dir.join("config"))),
            ("DATA_DIR".to_string(), path(&self.data.dir_of(hosted))),
            ("SLUICE_HOME".to_string(), path(&self.config.data_dir)),
            ("HOST".to_string(), hosted.address.to_string()),
            ("PORT".to_string(), hosted.port.to_string()),
        ]);
        Ok(InstanceSpec {
            id: hosted.id.clone(),
            workdir: work,
            command: hosted.command.clone(),
            env,
            log: self.log_of(&hosted.id),
            uid,
        })
    }

    async fn files(&self, id: &str) -> Result<Vec<u8>> {
        let path = format!("/agents/{}/instances/{id}/files", self.config.name);
        let response = self.send(self.http.get(self.url(&path))).await;
        let response = response.with_context(|| format!("instance {id}'s files"))?;
        Ok(response.bytes().await?.to_vec())
    }

    /// Where `path` of the API is, on the server reached now.
    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.config.servers.current())
    }

    /// Sends `request` with the agent's token; its response when it
    /// succeeded. A server out of reach or unavailable moves the next
    /// requests on to another.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let servers = &self.config.servers;
        match request.bearer_auth(&self.config.token).send().await {
            Ok(response) if response.status().is_success() => Ok(response),
            Ok(response) => {
                let status = response.status();
                let url = response.url().as_str();
                if matches!(status.as_u16(), 502 | 503)
                    || (!servers.is_given(url) && matches!(status.as_u16(), 401 | 403))
                {
                    servers.unreachable(url);
                }
                bail!("the server answered {status}")
            }
            Err(e) => {
                if let Some(url) = e.url().filter(|_| e.is_connect() || e.is_timeout()) {
                    servers.unreachable(url.as_str());
                }
                Err(e.into())
            }
        }
    }
}

/// Writes `file` whole (through a rename), readable by this user only.
fn write_private(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let temporary = file.with_extension("json.new");
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?
        .write_all(bytes)?;
    std::fs::rename(&temporary, file)
}

/// Refuses an instance whose names, which become directories, are not
/// plain names.
fn check_names(hosted: &Hosted) -> Result<()> {
    for name in [&hosted.id, &hosted.service, &hosted.environment] {
        if !super::wire::is_safe_name(name) {
            bail!(
                "the server sent an instance named `{}`",
                name.escape_debug()
            );
        }
    }
    Ok(())
}
