//! Who a step or an instance runs as, and what it leaves behind. When the
//! server runs as root, each repository's steps and each environment's
//! instances run as an unprivileged user of their own, which owns its
//! workspace or data directory and can reach nothing else of the server's.
//! Every process a step starts carries a mark in its environment, so that
//! whatever it left running (a `setsid` daemon, say) is found and killed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// How steps are run: as a user of their own (when the server is root), or
/// as the server's own user, which can read everything the server can.
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
pub fn env_uid(service: &str, env: &str) -> Option<u32> {
    is_root().then(|| uid_in(&format!("{service}/{env}"), 20_000, 40_000))
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
        // The mark is in the child's environment from its first instruction on.
        assert_eq!(marked(&marker), [pid]);
        assert_eq!(kill_marked(&marker), [pid]);
        assert!(!child.wait().unwrap().success());
        assert!(marked(&marker).is_empty());
    }
}
