//! Each instance's working directory: its release laid out again where the
//! instance may write (a framework's instance folder, caches, compiled
//! files), while the release itself stays as it was built. Directories are
//! the instance's own; files are hard links to the release's when the
//! instance runs as a user of its own and cannot write them (they stay
//! root's, read-only to it), copies otherwise (reflinked where the file
//! system can). Nothing here outlives the instance: only `DATA_DIR` persists.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result};

/// Lays `release` out again at `workdir`, owned by `uid` when given.
pub(crate) fn prepare(release: &Path, workdir: &Path, uid: Option<u32>) -> Result<()> {
    if workdir.exists() {
        std::fs::remove_dir_all(workdir)?;
    }
    lay_out(release, workdir, uid)
        .with_context(|| format!("preparing the working directory {}", workdir.display()))
}

fn lay_out(from: &Path, to: &Path, uid: Option<u32>) -> Result<()> {
    std::fs::create_dir_all(to)?;
    let mode = std::fs::metadata(from)?.mode() & 0o777;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode | 0o700))?;
    own(to, uid)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let meta = std::fs::symlink_metadata(&source)?;
        if meta.is_dir() {
            lay_out(&source, &target, uid)?;
        } else if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&source)?, &target)?;
            if let Some(uid) = uid {
                std::os::unix::fs::lchown(&target, Some(uid), Some(uid))?;
            }
        } else if meta.is_file() {
            place_file(&source, &target, &meta, uid)?;
        }
    }
    Ok(())
}

/// A hard link when the instance can only read the file; a copy it owns otherwise.
fn place_file(
    source: &Path,
    target: &Path,
    meta: &std::fs::Metadata,
    uid: Option<u32>,
) -> Result<()> {
    let read_only_to_instance =
        uid.is_some_and(|uid| meta.uid() != uid) && meta.mode() & 0o022 == 0;
    if read_only_to_instance && std::fs::hard_link(source, target).is_ok() {
        return Ok(());
    }
    std::fs::copy(source, target)?;
    own(target, uid)
}

fn own(path: &Path, uid: Option<u32>) -> Result<()> {
    if let Some(uid) = uid {
        std::os::unix::fs::lchown(path, Some(uid), Some(uid))?;
    }
    Ok(())
}

/// Removes an instance's working directory once it has stopped.
pub(crate) fn remove(workdir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(workdir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %workdir.display(), error = %e, "could not remove an instance's working directory");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_instance_writes_next_to_its_code_and_the_release_stays_as_built() {
        let dir = tempfile::tempdir().unwrap();
        let release = dir.path().join("v1");
        std::fs::create_dir_all(release.join("app/static")).unwrap();
        std::fs::write(release.join("app/main.py"), "print('hi')").unwrap();
        std::fs::write(release.join("app/static/site.css"), "body{}").unwrap();
        std::os::unix::fs::symlink("main.py", release.join("app/link.py")).unwrap();
        let work = dir.path().join("instances/shop.dev-v1-1");
        prepare(&release, &work, None).unwrap();
        assert_eq!(
            std::fs::read_to_string(work.join("app/main.py")).unwrap(),
            "print('hi')"
        );
        assert_eq!(
            std::fs::read_link(work.join("app/link.py")).unwrap(),
            Path::new("main.py")
        );
        // It writes new files and changes copies; the release does not see either.
        std::fs::write(work.join("app/__pycache__"), "x").unwrap();
        std::fs::write(work.join("app/main.py"), "changed").unwrap();
        assert!(!release.join("app/__pycache__").exists());
        assert_eq!(
            std::fs::read_to_string(release.join("app/main.py")).unwrap(),
            "print('hi')"
        );
        // Prepared again (a restart), it starts from the release.
        prepare(&release, &work, None).unwrap();
        assert_eq!(
            std::fs::read_to_string(work.join("app/main.py")).unwrap(),
            "print('hi')"
        );
        remove(&work);
        assert!(!work.exists());
    }
}
