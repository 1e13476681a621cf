//! The local agent (`sluice serve --local-agent`): an agent process on the
//! server's own host that runs the environments without `hosts:` and serves
//! their entry points, so that they outlive the server (a crash, an
//! upgrade) as the environments on other hosts do. The server starts it
//! unless the one it started is still running, and stops it only when it
//! stops cleanly itself.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::AppState;

/// How long an agent being replaced (pointed at another address) has to
/// hand its host over before the new one starts anyway.
const HAND_OVER_WITHIN: Duration = Duration::from_secs(30);

/// What to start the local agent with.
#[derive(Clone, Debug)]
pub struct LocalAgent {
    /// This binary, whose `agent` subcommand the local agent is.
    pub program: PathBuf,
    pub isolation: sluice_ci::sandbox::Isolation,
}

/// The local agent's files: its token, its process id and its log.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn of(data_dir: &Path) -> Self {
        Files {
            dir: data_dir.join("local-agent"),
        }
    }
    fn token(&self) -> PathBuf {
        self.dir.join("token")
    }
    fn pid(&self) -> PathBuf {
        self.dir.join("pid")
    }
    fn log(&self) -> PathBuf {
        self.dir.join("agent.log")
    }
}

/// Where the local agent of the server with `data_dir` logs.
pub fn log_path(data_dir: &Path) -> PathBuf {
    Files::of(data_dir).log()
}

/// Where the local agent of the server with `data_dir` serves its entry
/// points' metrics, while it runs.
pub fn metrics_address(data_dir: &Path) -> Option<std::net::SocketAddr> {
    let (_, args) = recorded(&Files::of(data_dir))?;
    let name = args.windows(2).find(|w| w[0] == "--name")?[1].clone();
    if !sluice_spec::is_label(&name) {
        return None;
    }
    let written = data_dir.join("agents").join(name).join("metrics-address");
    std::fs::read_to_string(written).ok()?.trim().parse().ok()
}

/// The local agent's name and the value of its label: the random part of
/// the server's name, so that servers sharing a database each have their own.
pub fn name(server_name: &str) -> String {
    let tail = server_name.rsplit('-').next().unwrap_or_default();
    let name = format!("local-{tail}");
    if sluice_spec::is_label(&name) {
        name
    } else {
        "local".into()
    }
}

/// What selects the local agent: the label only it has.
pub fn selector(server_name: &str) -> sluice_spec::HostsSpec {
    sluice_spec::HostsSpec {
        labels: [(
            sluice_deploy::hosts::LOCAL_LABEL.to_string(),
            name(server_name),
        )]
        .into(),
        spread: false,
    }
}

/// Starts the local agent, reaching this server at `url`, unless the one
/// started before still runs this binary and reaches it there too: then it
/// goes on, its instances and entry points untouched. One pointed
/// elsewhere (the server moved) or running the binary an upgrade replaced
/// hands its host over to the new one.
pub async fn ensure(
    state: &AppState,
    agent: &LocalAgent,
    data_dir: &Path,
    server_name: &str,
    url: &str,
) -> Result<()> {
    let files = Files::of(data_dir);
    std::fs::create_dir_all(&files.dir)
        .with_context(|| format!("could not make {}", files.dir.display()))?;
    let running = running(&files, &agent.program);
    if let Some((pid, ref args)) = running {
        let here = args.windows(2).any(|w| w == ["--server", url]);
        let current = runs_current(pid, &agent.program);
        if here && current {
            tracing::info!(pid, "the local agent runs on");
            return Ok(());
        }
        let why = if here {
            "runs a binary since replaced"
        } else {
            "reaches another address"
        };
        tracing::info!(pid, "the local agent {why}; it hands over to a new one");
        hand_over(pid).await;
    }
    let token = token(state, &files).await?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(files.log())
        .with_context(|| format!("could not open {}", files.log().display()))?;
    let mut command = std::process::Command::new(&agent.program);
    command
        .args(["agent", "--server", url, "--name", &name(server_name)])
        .arg("--label")
        .arg(format!(
            "{}={}",
            sluice_deploy::hosts::LOCAL_LABEL,
            name(server_name)
        ))
        // The server's own host: no commit's code runs there by way of it.
        .arg("--jobs=0")
        .arg("--address=127.0.0.1")
        .arg("--metrics=127.0.0.1:0")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--server-data-dir")
        .arg(data_dir)
        .arg("--isolation")
        .arg(match agent.isolation {
            sluice_ci::sandbox::Isolation::None => "none",
            sluice_ci::sandbox::Isolation::User => "user",
        })
        .env("SLUICE_TOKEN", token)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // A group of its own: what stops the server's group (a Ctrl-C) leaves it.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command.spawn().with_context(|| {
        format!(
            "could not start the local agent ({})",
            agent.program.display()
        )
    })?;
    let pid = child.id();
    std::fs::write(files.pid(), format!("{pid}\n"))?;
    // Reaped when it exits while this server lives, so that it leaves no zombie.
    std::thread::spawn(move || child.wait());
    tracing::info!(pid, log = %files.log().display(), "local agent started");
    Ok(())
}

/// Stops the local agent (a clean stop of the server): it stops its
/// instances and closes its entry points, and is waited for.
pub async fn stop(data_dir: &Path, agent: &LocalAgent) {
    let files = Files::of(data_dir);
    if let Some((pid, _)) = running(&files, &agent.program) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        wait_gone(pid, HAND_OVER_WITHIN).await;
        tracing::info!(pid, "local agent stopped");
    }
}

/// The local agent this server started, when it still runs: its process
/// id and arguments.
fn running(files: &Files, program: &Path) -> Option<(i32, Vec<String>)> {
    let (pid, args) = recorded(files)?;
    // A recycled process id is someone else's process.
    let ours = args.first().map(Path::new).and_then(Path::file_name) == program.file_name()
        && args.get(1).map(String::as_str) == Some("agent");
    ours.then_some((pid, args))
}

/// The process whose id the pid file holds, while one has it: its id and
/// arguments.
fn recorded(files: &Files) -> Option<(i32, Vec<String>)> {
    let pid: i32 = std::fs::read_to_string(files.pid())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    Some((pid, args))
}

/// Whether process `pid` runs `program` as the file is now: an upgrade
/// puts a new file in its place, and the old process's shows it deleted.
fn runs_current(pid: i32, program: &Path) -> bool {
    let running = std::fs::read_link(format!("/proc/{pid}/exe"));
    match (running, std::fs::canonicalize(program)) {
        (Ok(running), Ok(now)) => running == now,
        // Nothing to compare by: kept, rather than handed over for nothing.
        _ => true,
    }
}

/// Asks the agent `pid` to hand over (its instances keep running for the
/// next agent, which takes its entry points' sockets) and waits for it.
async fn hand_over(pid: i32) {
    let _ = kill(Pid::from_raw(pid), Signal::SIGUSR2);
    wait_gone(pid, HAND_OVER_WITHIN).await;
}

async fn wait_gone(pid: i32, within: Duration) {
    let deadline = Instant::now() + within;
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        // A zombie is gone too: only its entry in the process table is left.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z'))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The local agent's token: the one kept in its directory while the store
/// still knows it, else a new agent token, kept there (mode 0600).
async fn token(state: &AppState, files: &Files) -> Result<String> {
    if let Ok(kept) = std::fs::read_to_string(files.token()) {
        let kept = kept.trim();
        if state.tokens.verify(&state.store, kept).await.is_ok() {
            return Ok(kept.to_string());
        }
    }
    let (_, token) = state
        .tokens
        .mint(
            &state.store,
            "local-agent",
            sluice_store::Role::Agent,
            &[],
            "sluice",
        )
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(files.token())
        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{token}\n").as_bytes()))
        .with_context(|| format!("could not write {}", files.token().display()))?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_agent_is_named_after_its_servers_random_part() {
        assert_eq!(name("web-1.example.org-1a2b3c4d"), "local-1a2b3c4d");
        assert_eq!(name("server-0000ffff"), "local-0000ffff");
        // Nothing a label may hold: the plain name.
        assert_eq!(name("host-a/b"), "local");
    }
}
