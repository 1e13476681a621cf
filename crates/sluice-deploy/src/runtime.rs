//! The `Runtime`: where instances run. The local runtime starts each as a
//! process group on this machine, appends its output to its log file, and
//! restarts it with exponential backoff when it dies, until told to stop.
//! After a restart of the server it adopts the instances a previous server
//! left running that still match, instead of starting them again.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use sluice_store::Store;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Everything needed to start one instance.
#[derive(Clone, Debug)]
pub struct InstanceSpec {
    pub id: String,
    pub workdir: PathBuf,
    pub command: String,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
    /// The user (and group) id to run as, when the server may switch users.
    pub uid: Option<u32>,
}

pub type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait Runtime: Send + Sync {
    /// Starts an instance and keeps it running until [`Runtime::stop`].
    fn start(&self, spec: InstanceSpec) -> Boxed<'_, anyhow::Result<()>>;
    /// Stops an instance (SIGTERM, then SIGKILL after a grace period) and returns once it is gone.
    fn stop<'a>(&'a self, id: &'a str) -> Boxed<'a, ()>;
    /// Stops everything, for shutdown.
    fn stop_all(&self) -> Boxed<'_, ()>;
    /// Stops supervising everything and leaves it running, for the next
    /// server to adopt (a hand-over); a runtime that cannot leave its
    /// instances behind stops them.
    fn release_all(&self) -> Boxed<'_, ()> {
        self.stop_all()
    }
    /// How many times the instance's process has exited (or failed to start) so far.
    fn exits(&self, id: &str) -> u32;
    /// At start: stops whatever a previous server of this data directory
    /// left running, recorded or not, but the process groups `keep` names;
    /// returns what it stopped (pids).
    fn stop_leftovers(&self, keep: &[i32]) -> Vec<i32> {
        let _ = keep;
        Vec::new()
    }
    /// Whether process group `pid` (started at `start_ticks`) is an instance
    /// a previous server of this data directory left running, which this
    /// one may adopt: not a reused pid, not another server's.
    fn can_adopt(&self, pid: i32, start_ticks: i64) -> bool {
        let _ = (pid, start_ticks);
        false
    }
    /// Takes over the supervision of an instance a previous server started
    /// (process group `pid`, started at `start_ticks`): restarted from
    /// `spec` when it dies, stopped by [`Runtime::stop`]. A runtime that
    /// cannot adopt says so, and the instance is started again instead.
    fn adopt(
        &self,
        spec: InstanceSpec,
        pid: i32,
        start_ticks: i64,
    ) -> Boxed<'_, anyhow::Result<()>> {
        let _ = (spec, pid, start_ticks);
        Box::pin(async { anyhow::bail!("this runtime cannot adopt instances") })
    }
}

/// Where the local runtime notes each process it starts for an instance:
/// the store on a server (so that the next one can adopt it), the agent's
/// memory on an agent (which reports it to the server).
pub trait Recorder: Send + Sync {
    fn started<'a>(
        &'a self,
        id: &'a str,
        pid: i32,
        start_ticks: i64,
        restarts: i64,
    ) -> Boxed<'a, ()>;
}

impl Recorder for Store {
    fn started<'a>(
        &'a self,
        id: &'a str,
        pid: i32,
        start_ticks: i64,
        restarts: i64,
    ) -> Boxed<'a, ()> {
        Box::pin(async move {
            if let Err(e) = self
                .set_instance_process(id, pid.into(), start_ticks, restarts)
                .await
            {
                tracing::warn!(instance = %id, error = %e, "could not record the instance's process");
            }
        })
    }
}

/// How long an instance gets to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub struct LocalRuntime {
    recorder: Arc<dyn Recorder>,
    /// Set by [`Runtime::stop_all`]: nothing starts after it, so that a
    /// deployment still under way at shutdown leaves no process behind.
    closed: std::sync::atomic::AtomicBool,
    /// The server's (or agent's) data directory, which its instances'
    /// `SLUICE_HOME` names.
    home: PathBuf,
    running: Mutex<HashMap<String, Supervised>>,
}

/// One instance's supervising task, how to stop it, and how often its process exited.
struct Supervised {
    stop: CancellationToken,
    task: JoinHandle<()>,
    exits: Arc<AtomicU32>,
}

impl LocalRuntime {
    pub fn new(store: Store, home: &std::path::Path) -> Self {
        Self::recording_to(Arc::new(store), home)
    }

    /// A runtime that notes its processes in `recorder`.
    pub fn recording_to(recorder: Arc<dyn Recorder>, home: &std::path::Path) -> Self {
        LocalRuntime {
            recorder,
            home: home.to_path_buf(),
            closed: std::sync::atomic::AtomicBool::new(false),
            running: Mutex::new(HashMap::new()),
        }
    }
}

impl LocalRuntime {
    /// Starts nothing more, and hands over every supervisor (for
    /// [`Runtime::stop_all`] and [`Runtime::release_all`]).
    fn close(&self) -> Vec<Supervised> {
        let mut running = self.running.lock().unwrap();
        self.closed.store(true, Ordering::SeqCst);
        running.drain().map(|(_, supervised)| supervised).collect()
    }

    /// Supervises `spec`'s instance from now on: `adopted` is the process
    /// a previous server started, to wait for before starting it again.
    async fn supervise(&self, spec: InstanceSpec, adopted: Option<Adopted>) -> anyhow::Result<()> {
        if let Some(parent) = spec.log.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        let stop = CancellationToken::new();
        let exits = Arc::new(AtomicU32::new(0));
        let id = spec.id.clone();
        // Checked and recorded under one lock, so that `stop_all` sees
        // every instance that started.
        let mut running = self.running.lock().unwrap();
        if self.closed.load(Ordering::SeqCst) {
            anyhow::bail!("the server is stopping; instance {id} was not started");
        }
        let task = tokio::spawn(supervise(
            self.recorder.clone(),
            spec,
            adopted,
            stop.clone(),
            exits.clone(),
        ));
        running.insert(id, Supervised { stop, task, exits });
        Ok(())
    }
}

impl Runtime for LocalRuntime {
    fn start(&self, spec: InstanceSpec) -> Boxed<'_, anyhow::Result<()>> {
        Box::pin(self.supervise(spec, None))
    }

    fn adopt(
        &self,
        spec: InstanceSpec,
        pid: i32,
        start_ticks: i64,
    ) -> Boxed<'_, anyhow::Result<()>> {
        Box::pin(async move {
            if !self.can_adopt(pid, start_ticks) {
                anyhow::bail!("instance {}'s process {pid} is gone", spec.id);
            }
            self.supervise(spec, Some(Adopted { pid, start_ticks }))
                .await
        })
    }

    fn can_adopt(&self, pid: i32, start_ticks: i64) -> bool {
        sluice_ci::executor::start_ticks(pid) == Some(start_ticks) && marked(pid, &self.home)
    }

    fn stop_leftovers(&self, keep: &[i32]) -> Vec<i32> {
        kill_leftovers(&self.home, keep)
    }

    fn stop<'a>(&'a self, id: &'a str) -> Boxed<'a, ()> {
        Box::pin(async move {
            let entry = self.running.lock().unwrap().remove(id);
            if let Some(supervised) = entry {
                supervised.stop.cancel();
                let _ = supervised.task.await;
            }
        })
    }

    fn stop_all(&self) -> Boxed<'_, ()> {
        Box::pin(async move {
            let all = self.close();
            for supervised in &all {
                supervised.stop.cancel();
            }
            for supervised in all {
                let _ = supervised.task.await;
            }
        })
    }

    fn release_all(&self) -> Boxed<'_, ()> {
        Box::pin(async move {
            let all = self.close();
            // Dropping a supervisor drops its child without killing it.
            for supervised in all {
                supervised.task.abort();
                let _ = supervised.task.await;
            }
        })
    }

    fn exits(&self, id: &str) -> u32 {
        self.running
            .lock()
            .unwrap()
            .get(id)
            .map_or(0, |s| s.exits.load(Ordering::Relaxed))
    }
}

/// A process a previous server started, adopted by this one.
#[derive(Clone, Copy, Debug)]
struct Adopted {
    pid: i32,
    start_ticks: i64,
}

impl Adopted {
    fn alive(&self) -> bool {
        sluice_ci::executor::start_ticks(self.pid) == Some(self.start_ticks)
    }
}

/// How often an adopted process (not this server's child, so there is no
/// exit to wait for) is looked at.
const ADOPTED_POLL: Duration = Duration::from_millis(200);

/// Waits for an adopted process to end, or stops it: whether it was stopped.
async fn watch_adopted(spec: &InstanceSpec, process: Adopted, stop: &CancellationToken) -> bool {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ADOPTED_POLL) => {
                if !process.alive() {
                    return false;
                }
            }
            _ = stop.cancelled() => {
                let group = Pid::from_raw(process.pid);
                let _ = killpg(group, Signal::SIGTERM);
                let deadline = Instant::now() + STOP_GRACE;
                while process.alive() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let _ = killpg(group, Signal::SIGKILL);
                note(spec, "stopped");
                return true;
            }
        }
    }
}

async fn supervise(
    recorder: Arc<dyn Recorder>,
    spec: InstanceSpec,
    adopted: Option<Adopted>,
    stop: CancellationToken,
    exits: Arc<AtomicU32>,
) {
    let mut backoff = Duration::from_secs(1);
    let mut restarts = 0i64;
    if let Some(process) = adopted {
        note(
            &spec,
            &format!(
                "kept running (process {}) through a restart of the server",
                process.pid
            ),
        );
        if watch_adopted(&spec, process, &stop).await {
            return;
        }
        exits.fetch_add(1, Ordering::Relaxed);
        let _ = killpg(Pid::from_raw(process.pid), Signal::SIGKILL);
        note(&spec, "exited; restarting");
        tracing::warn!(instance = %spec.id, "adopted instance exited; restarting");
        restarts += 1;
    }
    loop {
        let started = Instant::now();
        let mut child = match spawn(&spec) {
            Ok(child) => child,
            Err(e) => {
                exits.fetch_add(1, Ordering::Relaxed);
                note(&spec, &format!("could not start: {e}"));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let pid = child.id().unwrap_or_default() as i32;
        let ticks = sluice_ci::executor::start_ticks(pid).unwrap_or(0);
        recorder.started(&spec.id, pid, ticks, restarts).await;
        let status = tokio::select! {
            status = child.wait() => status,
            _ = stop.cancelled() => {
                terminate(pid, &mut child).await;
                note(&spec, "stopped");
                return;
            }
        };
        exits.fetch_add(1, Ordering::Relaxed);
        // Whatever it left in its group goes with it before it starts again.
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        if started.elapsed() > MAX_BACKOFF {
            backoff = Duration::from_secs(1);
        }
        let how = status
            .map(|s| s.to_string())
            .unwrap_or_else(|e| e.to_string());
        note(
            &spec,
            &format!("exited ({how}); restarting in {}s", backoff.as_secs()),
        );
        tracing::warn!(instance = %spec.id, %how, "instance exited; restarting");
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
        restarts += 1;
    }
}

fn spawn(spec: &InstanceSpec) -> std::io::Result<tokio::process::Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)?;
    let err = log.try_clone()?;
    let mut command = tokio::process::Command::new("sh");
    command
        .arg("-c")
        .arg(&spec.command)
        .current_dir(&spec.workdir)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err))
        .process_group(0);
    if let Some(uid) = spec.uid {
        command.uid(uid).gid(uid);
    }
    command.spawn()
}

/// Appends sluice's own words to the instance's log.
fn note(spec: &InstanceSpec, text: &str) {
    use std::io::Write;
    if let Ok(mut log) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
    {
        let _ = writeln!(
            log,
            "[sluice {}] {} {text}",
            chrono::Utc::now().format("%H:%M:%S"),
            spec.id
        );
    }
}

async fn terminate(pid: i32, child: &mut tokio::process::Child) {
    let group = Pid::from_raw(pid);
    let _ = killpg(group, Signal::SIGTERM);
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = killpg(group, Signal::SIGKILL);
        let _ = child.wait().await;
    }
    let _ = killpg(group, Signal::SIGKILL);
}

/// Kills every process group whose environment says it is an instance of
/// the server whose data directory is `home` (`SLUICE_HOME`): what a previous
/// server left running, even one it had not yet recorded, but the process
/// groups in `keep` (adopted). Returns the pids.
pub fn kill_leftovers(home: &std::path::Path, keep: &[i32]) -> Vec<i32> {
    let mut killed = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return killed;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let ours = marked(pid, home);
        let kept = process_group(pid).is_some_and(|group| keep.contains(&group));
        if ours && !kept && pid != std::process::id() as i32 {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            killed.push(pid);
        }
    }
    killed
}

/// Whether process `pid` is an instance of the server whose data directory
/// is `home`: its environment carries `SLUICE_HOME=home`.
fn marked(pid: i32, home: &std::path::Path) -> bool {
    let marker = format!("SLUICE_HOME={}", home.display());
    std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
        environ
            .split(|b| *b == 0)
            .any(|var| var == marker.as_bytes())
    })
}

/// Kills process group `pid` if its leader is still the process that
/// started at `start_ticks` (a reused pid is left alone).
pub fn kill_group(pid: i32, start_ticks: i64) {
    if sluice_ci::executor::start_ticks(pid) == Some(start_ticks) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// The process group of `pid`, from `/proc/PID/stat`.
fn process_group(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    // After the name: state, ppid, pgrp.
    after_name.split_whitespace().nth(2)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;

    use super::*;

    #[tokio::test]
    async fn nothing_starts_once_everything_was_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&Store::sqlite_url(dir.path()))
            .await
            .unwrap();
        let runtime = LocalRuntime::new(store, dir.path());
        runtime.stop_all().await;
        let spec = InstanceSpec {
            id: "shop.dev-v1-1".into(),
            workdir: dir.path().to_path_buf(),
            command: "sleep 30".into(),
            env: Vec::new(),
            log: dir.path().join("logs/shop.dev-v1-1.log"),
            uid: None,
        };
        let refused = runtime.start(spec).await.unwrap_err().to_string();
        assert!(refused.contains("the server is stopping"), "{refused}");
        assert!(runtime.running.lock().unwrap().is_empty());
    }

    /// A process group as an earlier server would have left it.
    fn leftover(home: &std::path::Path) -> (i32, i64) {
        let child = std::process::Command::new("sleep")
            .arg("60")
            .env("SLUICE_HOME", home)
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // Reaped by a thread, so that a killed one does not linger as a zombie.
        std::thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });
        // The spawn returns once exec has begun, before the kernel has set
        // out the new environment that /proc shows: wait for it.
        let ticks = loop {
            if let Some(ticks) = sluice_ci::executor::start_ticks(pid)
                && marked(pid, home)
            {
                break ticks;
            }
            std::thread::yield_now();
        };
        (pid, ticks)
    }

    #[tokio::test]
    async fn only_this_data_directory_s_recorded_process_is_adopted_and_spared() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let store = Store::connect(&Store::sqlite_url(dir.path()))
            .await
            .unwrap();
        let runtime = LocalRuntime::new(store, &home);
        let (kept, kept_ticks) = leftover(&home);
        let (other, other_ticks) = leftover(&dir.path().join("another-server"));
        let (dropped, _) = leftover(&home);
        assert!(runtime.can_adopt(kept, kept_ticks));
        assert!(
            !runtime.can_adopt(kept, kept_ticks + 1),
            "a reused pid is not ours"
        );
        assert!(
            !runtime.can_adopt(other, other_ticks),
            "another server's is not ours"
        );
        assert_eq!(process_group(kept), Some(kept));

        let killed = runtime.stop_leftovers(&[kept]);
        assert_eq!(killed, vec![dropped]);
        assert!(
            runtime.can_adopt(kept, kept_ticks),
            "the kept one still runs"
        );
        assert!(
            sluice_ci::executor::start_ticks(other).is_some(),
            "another server's is left alone"
        );
        for pid in [kept, other] {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}
