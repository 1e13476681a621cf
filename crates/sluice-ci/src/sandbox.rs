//! Who a step or an instance runs as, and what it leaves behind. When the
//! server runs as root, each repository's steps and each environment's
//! instances run as an unprivileged user of their own, which owns its
//! workspace or data directory and can reach nothing else of the server's.
//! Each step runs in a cgroup of its own where cgroup v2 can be written (as
//! root), which nothing it starts can leave; and every process it starts
//! carries a mark in its environment besides, so that whatever it left
//! running (a `setsid` daemon, say) is found and killed either way.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// How steps and instances are run: as users of their own (when the server
/// is root), or as the server's own user, which can read everything the
/// server can.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Isolation {
    #[default]
    User,
    None,
}

/// Whether this server can give processes to other users.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A stable user id for `name` in `base..base + span`: FNV-1a, stable across
/// releases of Rust, unlike the standard hasher.
fn uid_in(name: &str, base: u32, span: u32) -> u32 {
    let hash = name.bytes().fold(0x811c9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    base + hash % span
}

/// The user an environment's instances run as: one per environment, so no
/// environment's instances can write another's data (20000..60000).
pub fn env_uid(service: &str, env: &str, isolation: Isolation) -> Option<u32> {
    (is_root() && isolation == Isolation::User)
        .then(|| uid_in(&format!("{service}/{env}"), 20_000, 40_000))
}

/// What a user needs of a path: to enter directories on the way and read it,
/// or also to run it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Execute,
}

/// Why `uid` (whose group is `uid` too) cannot reach `path`: the first
/// directory on the way it may not enter, or the path itself it may not
/// read (or run); `None` when it can.
pub fn unreachable_by(uid: u32, path: &Path, need: Access) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let allowed = |meta: &std::fs::Metadata, bits: u32| {
        let (user, group, other) = (bits << 6, bits << 3, bits);
        if meta.uid() == uid {
            meta.mode() & user == user
        } else if meta.gid() == uid {
            meta.mode() & group == group
        } else {
            meta.mode() & other == other
        }
    };
    let describe = |p: &Path, meta: &std::fs::Metadata| {
        format!(
            "{} (mode {:o}, owner uid {})",
            p.display(),
            meta.mode() & 0o7777,
            meta.uid()
        )
    };
    let ancestors: Vec<&Path> = path.ancestors().skip(1).collect();
    for dir in ancestors.into_iter().rev() {
        let Ok(meta) = std::fs::metadata(dir) else {
            return Some(format!("{} does not exist", dir.display()));
        };
        if !allowed(&meta, 0o1) {
            return Some(format!("it cannot enter {}", describe(dir, &meta)));
        }
    }
    let Ok(meta) = std::fs::metadata(path) else {
        return Some(format!("{} does not exist", path.display()));
    };
    // A directory is only passed through: what is inside is checked on its own.
    let bits = match (need, meta.is_dir()) {
        (_, true) => 0o1,
        (Access::Read, false) => 0o4,
        (Access::Execute, false) => 0o5,
    };
    let verb = match (need, meta.is_dir()) {
        (_, true) => "enter",
        (Access::Read, false) => "read",
        (Access::Execute, false) => "run",
    };
    (!allowed(&meta, bits)).then(|| format!("it cannot {verb} {}", describe(path, &meta)))
}

/// The user a repository's steps run as (100000..150000, apart from every
/// environment's), or `None` when the server is not root or isolation is off.
pub fn step_uid(repo: &str, isolation: Isolation) -> Option<u32> {
    (is_root() && isolation == Isolation::User).then(|| uid_in(repo, 100_000, 50_000))
}

/// Gives `dir` and everything in it to `uid`, never through a link: a link
/// a step or an instance made must not hand over its target.
pub fn give(dir: &Path, uid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(uid))?;
    let meta = std::fs::symlink_metadata(dir)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir)? {
            give(&entry?.path(), uid)?;
        }
    }
    Ok(())
}

/// A directory only its owner may enter (`0700`), created if missing.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// The directories of `path` (a `PATH` value) that a user who is neither
/// owner nor in the group cannot search, each with the ancestor that stops
/// it: `/root/.cargo/bin` because `/root` is `0700`.
pub fn unreachable_dirs(path: &str) -> Vec<(PathBuf, PathBuf)> {
    let mut found = Vec::new();
    for dir in path.split(':').filter(|d| d.starts_with('/')) {
        let dir = PathBuf::from(dir);
        let blocker = dir
            .ancestors()
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .find(|a| std::fs::metadata(a).is_ok_and(|m| m.permissions().mode() & 0o001 == 0));
        if let Some(blocker) = blocker {
            found.push((dir.clone(), blocker.to_path_buf()));
        }
    }
    found
}

/// The cgroup v2 directory this server's steps get theirs under, when
/// cgroup v2 is mounted and this server may write it: beside the server's
/// own cgroup, named for its data directory so two servers never meet.
pub fn steps_cgroup_root(data_dir: &Path) -> Option<PathBuf> {
    if !is_root() {
        return None;
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        after
            .starts_with("cgroup2 ")
            .then(|| before.split(' ').nth(4).map(PathBuf::from))
            .flatten()
    })?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let own = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    let name = format!(
        "sluice-steps-{:08x}",
        uid_in(&data_dir.display().to_string(), 0, u32::MAX)
    );
    let root = mount.join(own.trim_start_matches('/')).join(name);
    std::fs::create_dir_all(&root).ok()?;
    Some(root)
}

/// One step's cgroup: whatever the step starts stays in it, and all of it
/// is killed at once when the step ends.
pub struct StepCgroup {
    dir: PathBuf,
}

impl StepCgroup {
    /// A cgroup for the step marked `mark`, under `root`.
    pub fn create(root: &Path, mark: &str) -> Option<StepCgroup> {
        let dir = root.join(mark);
        std::fs::create_dir(&dir).ok()?;
        Some(StepCgroup { dir })
    }

    /// Moves `pid` (stopped before it could start anything) into the cgroup.
    pub fn adopt(&self, pid: i32) -> std::io::Result<()> {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
    }

    /// Kills every process in the cgroup; returns how many there were.
    pub fn kill_all(&self) -> usize {
        kill_cgroup(&self.dir)
    }
}

/// Dropping a step's cgroup kills what is left in it and removes it, which
/// may wait a moment for the kernel: drop it where blocking is fine.
impl Drop for StepCgroup {
    fn drop(&mut self) {
        kill_cgroup(&self.dir);
        remove_when_empty(&self.dir);
    }
}

/// The pids in a cgroup, killed all at once (`cgroup.kill`, Linux 5.14),
/// or one by one where that file is missing.
fn kill_cgroup(dir: &Path) -> usize {
    let pids: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    if !pids.is_empty() && std::fs::write(dir.join("cgroup.kill"), "1").is_err() {
        for pid in &pids {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
    }
    pids.len()
}

/// Removes a cgroup once its killed processes are gone (they go at once,
/// but not in the same instant as the kill).
fn remove_when_empty(dir: &Path) {
    for _ in 0..500 {
        match std::fs::remove_dir(dir) {
            Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => {
                std::thread::sleep(std::time::Duration::from_millis(2))
            }
            _ => return,
        }
    }
}

/// Kills and removes the step cgroups a previous server left under `root`.
pub fn kill_leftover_cgroups(root: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(root) else {
        return 0;
    };
    let mut killed = 0;
    for entry in entries.flatten().filter(|e| e.path().is_dir()) {
        killed += kill_cgroup(&entry.path());
        remove_when_empty(&entry.path());
    }
    killed
}

/// Whether process `pid` is stopped (state `T` in `/proc/PID/stat`).
pub fn is_stopped(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|end| stat[end + 1..].split_whitespace().next())
            .is_some_and(|state| state == "T")
    })
}

/// Processes whose environment holds `marker` (`NAME=VALUE`) exactly.
pub fn marked(marker: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                environ
                    .split(|b| *b == 0)
                    .any(|var| var == marker.as_bytes())
            })
        })
        .collect()
}

/// Kills every process (and its group) whose environment holds `marker`;
/// returns their pids.
pub fn kill_marked(marker: &str) -> Vec<i32> {
    let pids = marked(marker);
    for pid in &pids {
        let _ = killpg(Pid::from_raw(*pid), Signal::SIGKILL);
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    pids
}

#[cfg(test)]
mod reach_tests {
    use super::*;

    #[test]
    fn a_closed_directory_on_the_way_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let closed = dir.path().join("home");
        let app = closed.join("venv/bin");
        std::fs::create_dir_all(&app).unwrap();
        let python = app.join("python");
        std::fs::write(&python, "").unwrap();
        std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
        for d in [dir.path(), app.as_path(), app.parent().unwrap()] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
        let stranger = 54_321;
        let why = unreachable_by(stranger, &python, Access::Execute).unwrap();
        assert!(
            why.contains("cannot enter") && why.contains("home (mode 700"),
            "{why}"
        );
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o711)).unwrap();
        assert_eq!(unreachable_by(stranger, &python, Access::Execute), None);
        std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o700)).unwrap();
        let why = unreachable_by(stranger, &python, Access::Execute).unwrap();
        assert!(why.contains("cannot run"), "{why}");
        assert!(
            unreachable_by(stranger, &dir.path().join("nope"), Access::Read)
                .unwrap()
                .contains("does not exist")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_stable_and_apart() {
        assert_eq!(
            uid_in("shop", 100_000, 50_000),
            uid_in("shop", 100_000, 50_000)
        );
        assert_ne!(
            uid_in("shop", 100_000, 50_000),
            uid_in("blog", 100_000, 50_000)
        );
        for name in ["shop", "blog", "a", ""] {
            let step = uid_in(name, 100_000, 50_000);
            let env = uid_in(name, 20_000, 40_000);
            assert!((100_000..150_000).contains(&step) && (20_000..60_000).contains(&env));
        }
    }

    #[test]
    fn a_directory_behind_a_private_one_is_named_with_its_blocker() {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("home");
        std::fs::create_dir_all(private.join("bin")).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("{}:/usr/bin", private.join("bin").display());
        assert_eq!(
            unreachable_dirs(&path),
            [(private.join("bin"), private.clone())]
        );
    }

    #[test]
    fn what_a_process_left_running_is_found_by_its_mark() {
        let marker = format!("SLUICE_STEP_MARK=test-{}", uuid::Uuid::new_v4());
        let (name, value) = marker.split_once('=').unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env(name, value)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // The mark is in the child's environment once it has exec'd (until
        // then /proc shows the parent's, which a busy machine makes last).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while marked(&marker).is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(marked(&marker), [pid]);
        assert_eq!(kill_marked(&marker), [pid]);
        assert!(!child.wait().unwrap().success());
        assert!(marked(&marker).is_empty());
    }
}
