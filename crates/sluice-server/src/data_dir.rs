//! The server's data directory: made private, and refused when others could
//! read it, since it holds the database (secrets, token hashes) and the
//! initial admin token.

use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The directory's mode: as root, the instances' users (see
/// `sluice_ci::sandbox`) must pass through it to their release
/// and data, without listing or reading anything else: 0711. Otherwise
/// instances run as the server's own user: 0700.
fn directory_mode() -> u32 {
    if nix::unistd::geteuid().is_root() {
        0o711
    } else {
        0o700
    }
}

/// Creates the data directory (private) and, for SQLite, the database file
/// (0600) before SQLite would make it world-readable; refuses a directory
/// or file that others can read, saying how to fix it.
pub fn prepare(dir: &Path, sqlite: bool) -> Result<PathBuf> {
    DirBuilder::new()
        .recursive(true)
        .mode(directory_mode())
        .create(dir)
        .with_context(|| format!("could not create the data directory {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    refuse_if_open(&dir, 0o066, "700")?;
    if sqlite {
        let database = sluice_spec::Layout::new(&dir).database();
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&database)
            .with_context(|| format!("could not create the database {}", database.display()))?;
    }
    for path in sluice_spec::Layout::new(&dir).private_files() {
        if path.exists() {
            refuse_if_open(&path, 0o077, "600")?;
        }
    }
    Ok(dir)
}

/// As root with isolation on, instances and steps run as users of their
/// own, who must pass through every directory above the data directory:
/// one they cannot (root's home, a `mktemp -d`) is refused here, at start,
/// rather than as "Permission denied" in every instance's log.
pub fn check_reachable(dir: &Path, isolation: sluice_ci::sandbox::Isolation) -> Result<()> {
    use sluice_ci::sandbox::{Access, env_uid, unreachable_by};
    let Some(uid) = env_uid("reachability", "probe", isolation) else {
        return Ok(());
    };
    if let Some(why) = unreachable_by(uid, dir, Access::Read) {
        bail!(
            "environments' users could not reach the data directory {}: {why}; make every directory above it enterable (`chmod o+x`), choose a data directory elsewhere (--data-dir), or start with `--isolation none` (instances and steps then run as the server's own user and can read all of its data)",
            dir.display()
        );
    }
    Ok(())
}

/// Fails when `path` has any of `open_bits` (group or others may read or write).
fn refuse_if_open(path: &Path, open_bits: u32, fix: &str) -> Result<()> {
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o7777;
    if mode & open_bits != 0 {
        bail!(
            "{} is readable or writable by other users (mode {mode:o}); it holds the server's secrets. \
             Run `chmod {fix} {}` and start again",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

/// This server's name among the servers sharing a database (its host and
/// a random part), made at its first start and kept in the data directory,
/// so that a restart is the same server.
pub fn server_name(dir: &Path) -> Result<String> {
    let path = dir.join("server-name");
    if let Ok(name) = std::fs::read_to_string(&path) {
        let name = name.trim();
        if !name.is_empty() && name.len() <= 128 && name.bytes().all(|b| b.is_ascii_graphic()) {
            return Ok(name.to_string());
        }
    }
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
        .take(64)
        .collect();
    let random: u32 = rand::random();
    let name = format!(
        "{}-{random:08x}",
        if host.is_empty() { "server" } else { &host }
    );
    std::fs::write(&path, format!("{name}\n"))
        .with_context(|| format!("could not write {}", path.display()))?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_data_directory_is_private_and_its_database_too() {
        let parent = tempfile::tempdir().unwrap();
        let dir = prepare(&parent.path().join("data"), true).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), directory_mode());
        assert_eq!(mode(&dir.join("sluice.db")), 0o600);
    }

    #[test]
    fn a_data_directory_others_can_read_is_refused_with_the_fix() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let error = prepare(&dir, true).unwrap_err().to_string();
        assert!(
            error.contains("readable or writable by other users (mode 755)"),
            "{error}"
        );
        assert!(error.contains("chmod 700"), "{error}");

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(dir.join("sluice.db"), "").unwrap();
        std::fs::set_permissions(
            dir.join("sluice.db"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let error = prepare(&dir, true).unwrap_err().to_string();
        assert!(error.contains("sluice.db is readable"), "{error}");
        assert!(error.contains("chmod 600"), "{error}");
    }
}
