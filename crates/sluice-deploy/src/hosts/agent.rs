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
    /// The program that keeps the entry points' sockets through a restart
    /// of the agent (`sluice keep-sockets`: this binary); none, they close.
    pub socket_keeper: Option<PathBuf>,
    /// Where the entry points count their Prometheus metrics.
    pub metrics: sluice_proxy::Metrics,
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
                })
                .collect(),
            entries: self.entry_points.reports(sluice_proxy::system_second()),
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
        let work = response.json().await?;
        self.entry_points.taken(&report.entries);
        Ok(work)
    }

    /// Starts what is new, stops what is no longer asked for, keeps the
    /// list on disk, and serves the entry points asked for. Whether all of
    /// it was done.
    async fn reconcile(&self, mut work: HostWork) -> bool {
        let entries = work.entries.take();
        let started = self.start_and_stop(work).await;
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
        self.seed_data(hosted, &spec).await?;
        self.snapshot_data(hosted).await?;
        if let Some(uid) = spec.uid {
            for owned in [&dir, &self.data_of(hosted)] {
                sluice_ci::sandbox::give(owned, uid)?;
            }
        }
        self.runtime.start(spec).await
    }

    /// Fills the environment's data directory on this host the first time
    /// one of its instances starts here: with its seed (`data.seed`), run
    /// in the instance's files as the server runs it, then marked done. A
    /// seed that fails leaves nothing behind and runs again at the next
    /// start. Data already there (a seed added by a later release) is
    /// never seeded over.
    async fn seed_data(&self, hosted: &Hosted, spec: &InstanceSpec) -> Result<()> {
        let data_dir = self.data_of(hosted);
        let done = data_dir.with_extension("seeded");
        let holds_data = std::fs::read_dir(&data_dir).is_ok_and(|mut d| d.next().is_some());
        let Some(seed) = hosted
            .seed
            .as_ref()
            .filter(|_| !done.exists() && !holds_data)
        else {
            std::fs::create_dir_all(&data_dir)?;
            return Ok(());
        };
        let data = sluice_spec::DataSpec {
            seed: Some(seed.script.clone()),
            copy_from: None,
            scrub: None,
            snapshots: 0,
            seed_timeout: Duration::from_millis(seed.timeout_ms.clamp(1000, 86_400_000)),
        };
        // The instance's variables but where it listens: the seed serves nothing.
        let vars = spec
            .env
            .iter()
            .filter(|(k, _)| !["HOST", "PORT", "DATA_DIR"].contains(&k.as_str()))
            .cloned()
            .collect();
        let run_as = crate::data::RunAs {
            uid: spec.uid,
            vars,
        };
        let filled = crate::data::fill(&data, &data_dir, &spec.workdir, None, &run_as)
            .await
            .with_context(|| format!("{}'s data on this host", hosted.environment))?;
        std::fs::write(&done, &seed.script)?;
        tracing::info!(service = %hosted.service, env = %hosted.environment, ?filled, "the environment's data seeded on this host");
        Ok(())
    }

    /// Snapshots the environment's data on this host before the first
    /// instance of a release starts here (`envs/SERVICE/ENV/snapshots/
    /// before-vN.tar.gz`, the newest `data.snapshots` kept), as the server
    /// does before each deployment: what to go back to when a release
    /// damages it.
    async fn snapshot_data(&self, hosted: &Hosted) -> Result<()> {
        let release = hosted.env.iter().find(|(k, _)| k == "SLUICE_RELEASE");
        let Some((_, release)) = release.filter(|_| hosted.snapshots > 0) else {
            return Ok(());
        };
        if !is_safe_name(release) {
            bail!(
                "the server sent a release named `{}`",
                release.escape_debug()
            );
        }
        let dir = sluice_spec::Layout::new(&self.config.data_dir)
            .snapshots(&hosted.service, &hosted.environment)?;
        let name = format!("before-{release}");
        if dir.join(format!("{name}.tar.gz")).exists() {
            return Ok(());
        }
        let (data, keep) = (self.data_of(hosted), hosted.snapshots);
        let taken =
            tokio::task::spawn_blocking(move || crate::data::snapshot(&data, &dir, &name, keep))
                .await??;
        if let Some(path) = taken {
            tracing::info!(service = %hosted.service, env = %hosted.environment, path = %path.display(), "data snapshot taken on this host");
        }
        Ok(())
    }

    /// The environment's data directory on this host.
    fn data_of(&self, hosted: &Hosted) -> PathBuf {
        self.config
            .data_dir
            .join("data")
            .join(&hosted.service)
            .join(&hosted.environment)
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
            ("DATA_DIR".to_string(), path(&self.data_of(hosted))),
            ("SLUICE_HOME".to_string(), path(&self.config.data_dir)),
            ("HOST".to_string(), hosted.address.to_string()),
            ("PORT".to_string(), hosted.port.to_string()),
        ]);
        Ok(InstanceSpec {
            id: hosted.id.clone(),
            workdir: work,
            command: hosted.command.clone(),
            env,
            log: dir.join("instance.log"),
            uid,
        })
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
        if !is_safe_name(name) {
            bail!(
                "the server sent an instance named `{}`",
                name.escape_debug()
            );
        }
    }
    Ok(())
}

/// A name the server sent that may become a directory.
fn is_safe_name(name: &str) -> bool {
    sluice_spec::is_label(name) && name != "." && name != ".."
}
