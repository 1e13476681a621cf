//! The `Executor`: runs one step's command and reports how it ended. The local
//! executor runs it as a process group on this machine, as the repository's
//! own user when the server is root, and marks every process it starts, so
//! that a timeout, a cancel or the step's end kills everything it started,
//! even what left the group (a `setsid` daemon).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use sluice_store::{Store, TrackedProcess};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::Command;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::logs::LogWriter;

pub struct StepRequest {
    pub run_id: i64,
    pub command: String,
    pub workdir: PathBuf,
    pub env: Vec<(String, String)>,
    pub deadline: Instant,
    pub cancel: CancellationToken,
    pub log: LogWriter,
    /// The user the step runs as, or `None` for the server's own.
    pub uid: Option<u32>,
}

/// The variable every step process of this server carries (its value is the
/// data directory), so that a restart kills what an older server's steps
/// left running.
pub const STEPS_OF: &str = "SLUICE_STEPS_OF";
/// The variable that tells one step's processes from every other's.
const STEP_MARK: &str = "SLUICE_STEP_MARK";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepOutcome {
    Exited(i32),
    Signalled(i32),
    TimedOut,
    Cancelled,
    FailedToStart(String),
}

/// Runs steps; the local executor is the default, remote runners may follow.
pub trait Executor: Send + Sync {
    fn run_step(
        &self,
        request: StepRequest,
    ) -> Pin<Box<dyn Future<Output = StepOutcome> + Send + '_>>;
}

/// How long a step gets to exit after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(1);
/// The longest line kept whole; longer output is split.
const MAX_LINE: u64 = 64 * 1024;

pub struct LocalExecutor {
    /// Where each step's process group is recorded, for a restarted server
    /// to kill; an agent has none and finds its leftovers by their mark.
    store: Option<Store>,
    host: String,
    /// The data directory: [`STEPS_OF`]'s value.
    steps_of: String,
    /// Where each step gets a cgroup of its own, when cgroup v2 allows.
    cgroups: Option<std::path::PathBuf>,
}

impl LocalExecutor {
    pub fn new(store: Store, host: String, data_dir: &std::path::Path) -> Self {
        LocalExecutor {
            store: Some(store),
            host,
            steps_of: data_dir.display().to_string(),
            cgroups: crate::sandbox::steps_cgroup_root(data_dir),
        }
    }

    /// The executor of an agent, whose steps carry `data_dir` as their
    /// mark and are recorded nowhere else.
    pub fn for_agent(data_dir: &std::path::Path) -> Self {
        LocalExecutor {
            store: None,
            host: String::new(),
            steps_of: data_dir.display().to_string(),
            cgroups: crate::sandbox::steps_cgroup_root(data_dir),
        }
    }

    async fn run(&self, request: StepRequest) -> StepOutcome {
        let mark = uuid::Uuid::new_v4().simple().to_string();
        let cgroup = self
            .cgroups
            .as_deref()
            .and_then(|root| crate::sandbox::StepCgroup::create(root, &mark));
        let mut command = Command::new("sh");
        match &cgroup {
            // It stops itself before anything else, to be moved into its
            // cgroup before it can start a thing; then it runs the step.
            Some(_) => command
                .arg("-c")
                .arg("kill -STOP $$; exec sh -c \"$1\"")
                .arg("sluice-step")
                .arg(&request.command),
            None => command.arg("-c").arg(&request.command),
        };
        command
            .current_dir(&request.workdir)
            .env_clear()
            .envs(request.env.iter().map(|(k, v)| (k, v)))
            .env(STEPS_OF, &self.steps_of)
            .env(STEP_MARK, &mark)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(uid) = request.uid {
            command.uid(uid).gid(uid);
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => return StepOutcome::FailedToStart(e.to_string()),
        };
        let pid = child.id().unwrap_or_default() as i32;
        if let Some(cgroup) = &cgroup {
            contain(cgroup, pid).await;
        }
        let tracked = TrackedProcess {
            pid: pid.into(),
            start_ticks: start_ticks(pid).unwrap_or(0),
            host: self.host.clone(),
            run_id: Some(request.run_id),
            what: "step".into(),
        };
        if let Some(store) = &self.store
            && let Err(e) = store.track_process(&tracked).await
        {
            tracing::warn!(pid, error = %e, "could not record the step's process");
        }
        let readers = [
            child
                .stdout
                .take()
                .map(|out| tokio::spawn(forward(out, request.log.clone(), "stdout"))),
            child
                .stderr
                .take()
                .map(|err| tokio::spawn(forward(err, request.log.clone(), "stderr"))),
        ];
        let outcome = tokio::select! {
            status = child.wait() => match status {
                Ok(status) => match (status.code(), std::os::unix::process::ExitStatusExt::signal(&status)) {
                    (Some(code), _) => StepOutcome::Exited(code),
                    (None, Some(signal)) => StepOutcome::Signalled(signal),
                    _ => StepOutcome::Exited(-1),
                },
                Err(e) => StepOutcome::FailedToStart(e.to_string()),
            },
            _ = tokio::time::sleep_until(request.deadline) => {
                terminate(pid, &mut child).await;
                StepOutcome::TimedOut
            }
            _ = request.cancel.cancelled() => {
                terminate(pid, &mut child).await;
                StepOutcome::Cancelled
            }
        };
        // Whatever the step left running goes with it: its group, and what
        // left the group but still carries the step's mark.
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        let marker = format!("{STEP_MARK}={mark}");
        let left = tokio::task::spawn_blocking(move || {
            let in_cgroup = cgroup.as_ref().map_or(0, |c| c.kill_all());
            let marked = crate::sandbox::kill_marked(&marker).len();
            drop(cgroup);
            in_cgroup.max(marked)
        })
        .await
        .unwrap_or_default();
        if left > 0 {
            request.log.note(format!(
                "killed {left} process{} the step left running",
                if left == 1 { "" } else { "es" }
            ));
        }
        for reader in readers.into_iter().flatten() {
            // A process that left the group may still hold the pipe; stop waiting for it.
            let _ = tokio::time::timeout(GRACE * 2, reader).await;
        }
        if let Some(store) = &self.store
            && let Err(e) = store.untrack_process(&self.host, pid.into()).await
        {
            tracing::warn!(pid, error = %e, "could not forget the step's process");
        }
        outcome
    }
}

impl Executor for LocalExecutor {
    fn run_step(
        &self,
        request: StepRequest,
    ) -> Pin<Box<dyn Future<Output = StepOutcome> + Send + '_>> {
        Box::pin(self.run(request))
    }
}

/// Moves a step that stopped itself into its cgroup, then lets it go on. A
/// step that never stops (it failed to start) is let go as it is.
async fn contain(cgroup: &crate::sandbox::StepCgroup, pid: i32) {
    let deadline = Instant::now() + GRACE * 2;
    while !crate::sandbox::is_stopped(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    if let Err(e) = cgroup.adopt(pid) {
        tracing::warn!(pid, error = %e, "could not move a step into its cgroup");
    }
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGCONT);
}

/// SIGTERM to the group, SIGKILL after the grace period.
async fn terminate(pid: i32, child: &mut tokio::process::Child) {
    let group = Pid::from_raw(pid);
    let _ = killpg(group, Signal::SIGTERM);
    if tokio::time::timeout(GRACE, child.wait()).await.is_err() {
        let _ = killpg(group, Signal::SIGKILL);
        let _ = child.wait().await;
    }
}

async fn forward(stream: impl AsyncRead + Unpin, log: LogWriter, name: &'static str) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match (&mut reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    buf.pop();
                }
                log.line(name, String::from_utf8_lossy(&buf).into_owned());
            }
        }
    }
}

/// A process's start time in clock ticks since boot (field 22 of `/proc/PID/stat`).
pub fn start_ticks(pid: i32) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Kills the process groups that a previous server left running, when they
/// are still ours, and every process its steps started (by their mark).
pub async fn kill_leftovers(store: &Store, host: &str, data_dir: &std::path::Path) -> usize {
    let marker = format!("{STEPS_OF}={}", data_dir.display());
    let cgroups = crate::sandbox::steps_cgroup_root(data_dir);
    let mut killed = tokio::task::spawn_blocking(move || {
        let in_cgroups = cgroups.map_or(0, |root| crate::sandbox::kill_leftover_cgroups(&root));
        in_cgroups + crate::sandbox::kill_marked(&marker).len()
    })
    .await
    .unwrap_or(0);
    let Ok(processes) = store.tracked_processes(host).await else {
        return killed;
    };
    for process in processes {
        let pid = process.pid as i32;
        if start_ticks(pid) == Some(process.start_ticks) {
            if killpg(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                killed += 1;
            }
            tracing::warn!(
                pid,
                run = process.run_id,
                "killed a step left running by a previous server"
            );
        }
        let _ = store.untrack_process(host, process.pid).await;
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_start_time() {
        let me = std::process::id() as i32;
        assert!(start_ticks(me).unwrap() > 0);
        assert_eq!(start_ticks(me), start_ticks(me));
        assert_eq!(start_ticks(i32::MAX), None);
    }
}
