//! Artifacts: the declared outputs of a green mainline run, packed into a
//! reproducible `.tar.gz` and stored once under the data directory by sha256
//! (and in the database too when servers share it, so that any of them can
//! deploy it: [`record`], [`local_copy`]).

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use sluice_spec::paths::inside;

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("artifact path `{0}` must be relative to the workspace, without `..`")]
    Escapes(String),
    #[error("artifact path `{0}` does not exist in the workspace after the run")]
    Missing(String),
    #[error("`{path}` is a symlink to `{target}`, which is outside the workspace")]
    SymlinkOutside { path: String, target: String },
    #[error("could not pack the artifact: {0}")]
    Io(#[from] io::Error),
}

/// A stored artifact.
#[derive(Clone, Debug)]
pub struct Packed {
    pub sha256: String,
    pub size: u64,
    pub path: PathBuf,
}

/// Packs `paths` (files or directories) from `workspace`; identical content
/// gives an identical archive, which is then stored once.
pub fn pack(workspace: &Path, paths: &[String], store_dir: &Path) -> Result<Packed, ArtifactError> {
    let root = workspace.canonicalize()?;
    let mut files = Vec::new();
    for declared in paths {
        let Ok(full) = inside(&root, declared) else {
            return Err(ArtifactError::Escapes(declared.clone()));
        };
        if full.symlink_metadata().is_err() {
            return Err(ArtifactError::Missing(declared.clone()));
        }
        // A symlinked parent directory could lead outside: resolve the parent.
        let parent = full.parent().unwrap_or(&root).canonicalize()?;
        if !parent.starts_with(&root) {
            return Err(ArtifactError::Escapes(declared.clone()));
        }
        collect(&root, &full, &mut files)?;
    }
    files.sort();
    files.dedup();
    std::fs::create_dir_all(store_dir)?;
    let temp = tempfile_in(store_dir)?;
    let hashing = HashingWriter {
        inner: File::create(&temp)?,
        hasher: Sha256::new(),
        size: 0,
    };
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(hashing, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    for relative in &files {
        tar.append_path_with_name(root.join(relative), relative)?;
    }
    let hashing = tar.into_inner()?.finish()?;
    hashing.inner.sync_all()?;
    let sha256 = hex::encode(hashing.hasher.finalize());
    let path = sluice_spec::artifact_in(store_dir, &sha256)
        .expect("a digest we computed is 64 hex digits");
    std::fs::create_dir_all(path.parent().unwrap_or(store_dir))?;
    if path.exists() {
        std::fs::remove_file(&temp)?;
    } else {
        std::fs::rename(&temp, &path)?;
    }
    Ok(Packed {
        sha256,
        size: hashing.size,
        path,
    })
}

/// Adds `path` (and, for a directory, everything under it) as paths relative to `root`.
fn collect(root: &Path, path: &Path, out: &mut Vec<PathBuf>) -> Result<(), ArtifactError> {
    let relative = path
        .strip_prefix(root)
        .map_err(|_| ArtifactError::Escapes(path.display().to_string()))?;
    let meta = path.symlink_metadata()?;
    if meta.file_type().is_symlink() {
        let target = path
            .canonicalize()
            .unwrap_or_else(|_| std::fs::read_link(path).unwrap_or_default());
        if !target.starts_with(root) {
            return Err(ArtifactError::SymlinkOutside {
                path: relative.display().to_string(),
                target: std::fs::read_link(path)?.display().to_string(),
            });
        }
        out.push(relative.to_path_buf());
    } else if meta.is_dir() {
        out.push(relative.to_path_buf());
        let mut entries: Vec<_> = std::fs::read_dir(path)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            collect(root, &entry.path(), out)?;
        }
    } else {
        out.push(relative.to_path_buf());
    }
    Ok(())
}

fn tempfile_in(dir: &Path) -> io::Result<PathBuf> {
    let name = format!(".incoming-{}-{}", std::process::id(), uuid::Uuid::now_v7());
    Ok(dir.join(name))
}

struct HashingWriter {
    inner: File,
    hasher: Sha256,
    size: u64,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Records a stored artifact: its bytes go to the database first when
/// servers share it, so that an artifact another server can see is one it
/// can fetch.
pub async fn record(
    store: &sluice_store::Store,
    sha256: &str,
    size: u64,
    path: &Path,
) -> sluice_store::Result<()> {
    if store.shares_artifacts() {
        store.keep_artifact_bytes(sha256, path).await?;
    }
    store.insert_artifact(sha256, size as i64).await
}

/// The artifact's file under `store_dir`, fetched from the database when
/// another server packed it (checked against its sha256 before it is put
/// in place).
pub async fn local_copy(
    store: &sluice_store::Store,
    store_dir: &Path,
    sha256: &str,
) -> anyhow::Result<PathBuf> {
    let path = sluice_spec::artifact_in(store_dir, sha256)?;
    if path.exists() {
        return Ok(path);
    }
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    let incoming = path.with_extension(format!("incoming-{}", std::process::id()));
    if !store.artifact_bytes_to(sha256, &incoming).await? {
        anyhow::bail!(
            "artifact sha256:{sha256} is not in {} and the database keeps no copy of it (it was packed by a server with SQLite, or before servers shared artifacts); run its pipeline again",
            store_dir.display()
        );
    }
    let check = incoming.clone();
    let actual = tokio::task::spawn_blocking(move || -> io::Result<String> {
        let mut hasher = Sha256::new();
        io::copy(&mut File::open(&check)?, &mut hasher)?;
        Ok(hex::encode(hasher.finalize()))
    })
    .await??;
    if actual != sha256 {
        let _ = tokio::fs::remove_file(&incoming).await;
        anyhow::bail!(
            "the database's copy of artifact sha256:{sha256} hashes to {actual}; it is incomplete or was altered"
        );
    }
    tokio::fs::rename(&incoming, &path).await?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("app/static")).unwrap();
        std::fs::write(dir.path().join("app/main.py"), "print('hi')\n").unwrap();
        std::fs::write(dir.path().join("app/static/x.css"), "a{}\n").unwrap();
        std::fs::write(dir.path().join("start.sh"), "#!/bin/sh\n").unwrap();
        dir
    }

    #[test]
    fn same_content_same_digest_stored_once() {
        let store = tempfile::tempdir().unwrap();
        let paths = vec!["app/".to_string(), "start.sh".to_string()];
        let a = pack(workspace().path(), &paths, store.path()).unwrap();
        let b = pack(workspace().path(), &paths, store.path()).unwrap();
        assert_eq!(a.sha256, b.sha256);
        assert!(a.path.exists());
        let stored: Vec<_> = walk(store.path());
        assert_eq!(stored.len(), 1, "{stored:?}");
    }

    #[test]
    fn different_content_differs() {
        let store = tempfile::tempdir().unwrap();
        let ws = workspace();
        let a = pack(ws.path(), &["app".into()], store.path()).unwrap();
        std::fs::write(ws.path().join("app/main.py"), "print('bye')\n").unwrap();
        let b = pack(ws.path(), &["app".into()], store.path()).unwrap();
        assert_ne!(a.sha256, b.sha256);
    }

    #[test]
    fn escaping_paths_are_refused() {
        let store = tempfile::tempdir().unwrap();
        let ws = workspace();
        for bad in ["../x", "/etc/passwd", "app/../../x"] {
            assert!(
                matches!(
                    pack(ws.path(), &[bad.into()], store.path()),
                    Err(ArtifactError::Escapes(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            pack(ws.path(), &["nope/".into()], store.path()),
            Err(ArtifactError::Missing(_))
        ));
        std::os::unix::fs::symlink("/etc/passwd", ws.path().join("app/passwd")).unwrap();
        let err = pack(ws.path(), &["app".into()], store.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`app/passwd` is a symlink to `/etc/passwd`, which is outside the workspace"
        );
    }

    #[test]
    fn symlinked_directory_leading_outside_is_refused() {
        let store = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "x").unwrap();
        let ws = workspace();
        std::os::unix::fs::symlink(outside.path(), ws.path().join("out")).unwrap();
        assert!(pack(ws.path(), &["out/secret".into()], store.path()).is_err());
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(walk(&path))
            } else {
                out.push(path)
            }
        }
        out
    }
}
