//! An environment's data: its directory, seeded once or copied from another
//! environment through a scrub script, and a snapshot before each deployment.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use sluice_spec::DataSpec;

/// What a first deployment did to fill the data directory.
#[derive(Debug, PartialEq, Eq)]
pub enum Filled {
    Nothing,
    Seeded(String),
    Copied(String),
}

/// Prepares the data directory of an environment's first deployment.
pub async fn fill(
    spec: &DataSpec,
    data_dir: &Path,
    release_dir: &Path,
    source_data: Option<&Path>,
) -> Result<Filled> {
    create_private(data_dir)?;
    if let Some(from) = &spec.copy_from {
        let Some(source) = source_data.filter(|s| s.exists()) else {
            return Ok(Filled::Nothing);
        };
        // Copy into a sibling, scrub there, then swap: a failed scrub never leaves unscrubbed data behind.
        let staging = data_dir.with_extension("incoming");
        let _ = std::fs::remove_dir_all(&staging);
        copy_dir(source, &staging)?;
        if let Some(scrub) = &spec.scrub {
            run_script(release_dir, scrub, &staging)
                .await
                .with_context(|| format!("scrubbing the copy of {from}'s data"))?;
        }
        std::fs::remove_dir_all(data_dir)?;
        std::fs::rename(&staging, data_dir)?;
        create_private(data_dir)?;
        return Ok(Filled::Copied(from.clone()));
    }
    if let Some(seed) = &spec.seed {
        let path = release_dir.join(seed);
        let meta = std::fs::metadata(&path)
            .with_context(|| format!("seed {seed} is not in the release"))?;
        if meta.permissions().mode() & 0o111 != 0 {
            run_script(release_dir, seed, data_dir).await?;
        } else {
            let name = path.file_name().context("seed has no file name")?;
            std::fs::copy(&path, data_dir.join(name))?;
        }
        return Ok(Filled::Seeded(seed.clone()));
    }
    Ok(Filled::Nothing)
}

/// Runs a script of the release with `DATA_DIR` pointing at `data_dir`.
async fn run_script(release_dir: &Path, script: &str, data_dir: &Path) -> Result<()> {
    let output = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!("./{script}"))
        .current_dir(release_dir)
        .env("DATA_DIR", data_dir)
        .output()
        .await
        .with_context(|| format!("could not run {script}"))?;
    if !output.status.success() {
        bail!(
            "{script} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn create_private(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Packs the data directory into `snapshots/NAME.tar.gz` and keeps the newest `keep`.
pub fn snapshot(
    data_dir: &Path,
    snapshots: &Path,
    name: &str,
    keep: u32,
) -> Result<Option<std::path::PathBuf>> {
    if !data_dir.exists() || std::fs::read_dir(data_dir)?.next().is_none() {
        return Ok(None);
    }
    std::fs::create_dir_all(snapshots)?;
    let path = snapshots.join(format!("{name}.tar.gz"));
    let file = std::fs::File::create(&path)?;
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        file,
        flate2::Compression::fast(),
    ));
    tar.append_dir_all(".", data_dir)?;
    tar.into_inner()?.finish()?;
    let mut all: Vec<_> = std::fs::read_dir(snapshots)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    all.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    let excess = all.len().saturating_sub(keep as usize);
    for old in &all[..excess] {
        let _ = std::fs::remove_file(old);
    }
    Ok(Some(path))
}

/// The user id an environment's instances run as when the server runs as
/// root: one per environment, so that no environment's instances can write
/// another's data directory (each is that user's, mode 0700).
pub fn env_uid(service: &str, env: &str) -> Option<u32> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    // FNV-1a: stable across releases of Rust, unlike the standard hasher.
    let hash = format!("{service}/{env}")
        .bytes()
        .fold(0x811c9dc5u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
    Some(20_000 + hash % 40_000)
}

/// Gives the data directory (and everything in it) to the environment's user.
pub fn hand_over(data_dir: &Path, uid: Option<u32>) -> Result<()> {
    let Some(uid) = uid else { return Ok(()) };
    let owner = Some(nix::unistd::Uid::from_raw(uid));
    let group = Some(nix::unistd::Gid::from_raw(uid));
    fn walk(
        path: &Path,
        owner: Option<nix::unistd::Uid>,
        group: Option<nix::unistd::Gid>,
    ) -> Result<()> {
        nix::unistd::chown(path, owner, group).with_context(|| {
            format!(
                "could not give {} to its environment's user",
                path.display()
            )
        })?;
        if path.is_dir() && !path.is_symlink() {
            for entry in std::fs::read_dir(path)? {
                walk(&entry?.path(), owner, group)?;
            }
        }
        Ok(())
    }
    walk(data_dir, owner, group)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(seed: Option<&str>, copy_from: Option<&str>, scrub: Option<&str>) -> DataSpec {
        DataSpec {
            seed: seed.map(String::from),
            copy_from: copy_from.map(String::from),
            scrub: scrub.map(String::from),
            snapshots: 2,
        }
    }

    #[tokio::test]
    async fn seeds_by_running_or_copying() {
        let dir = tempfile::tempdir().unwrap();
        let release = dir.path().join("release");
        std::fs::create_dir_all(release.join("fixtures")).unwrap();
        std::fs::write(release.join("fixtures/seed.sql"), "insert;\n").unwrap();
        std::fs::write(
            release.join("seed.sh"),
            "#!/bin/sh\necho seeded > \"$DATA_DIR/db\"\n",
        )
        .unwrap();
        std::fs::set_permissions(
            release.join("seed.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let copied = dir.path().join("a");
        assert_eq!(
            fill(
                &spec(Some("fixtures/seed.sql"), None, None),
                &copied,
                &release,
                None
            )
            .await
            .unwrap(),
            Filled::Seeded("fixtures/seed.sql".into())
        );
        assert!(copied.join("seed.sql").exists());
        let ran = dir.path().join("b");
        fill(&spec(Some("seed.sh"), None, None), &ran, &release, None)
            .await
            .unwrap();
        assert_eq!(std::fs::read_to_string(ran.join("db")).unwrap(), "seeded\n");
        assert_eq!(
            std::fs::metadata(&ran).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    #[tokio::test]
    async fn copies_through_the_scrub_script() {
        let dir = tempfile::tempdir().unwrap();
        let release = dir.path().join("release");
        std::fs::create_dir_all(&release).unwrap();
        std::fs::write(
            release.join("scrub.sh"),
            "#!/bin/sh\nsed -i 's/ana@example.com/***/' \"$DATA_DIR/users\"\n",
        )
        .unwrap();
        std::fs::set_permissions(
            release.join("scrub.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let prod = dir.path().join("prod");
        std::fs::create_dir_all(&prod).unwrap();
        std::fs::write(prod.join("users"), "ana@example.com\n").unwrap();
        let pre = dir.path().join("pre");
        let filled = fill(
            &spec(None, Some("prod"), Some("scrub.sh")),
            &pre,
            &release,
            Some(&prod),
        )
        .await
        .unwrap();
        assert_eq!(filled, Filled::Copied("prod".into()));
        assert_eq!(std::fs::read_to_string(pre.join("users")).unwrap(), "***\n");
        assert_eq!(
            std::fs::read_to_string(prod.join("users")).unwrap(),
            "ana@example.com\n",
            "the source is untouched"
        );
    }

    #[test]
    fn keeps_the_newest_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("db"), "x").unwrap();
        let snaps = dir.path().join("snaps");
        for i in 0..4 {
            snapshot(&data, &snaps, &format!("deploy-{i}"), 2)
                .unwrap()
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let mut left: Vec<_> = std::fs::read_dir(&snaps)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["deploy-2.tar.gz", "deploy-3.tar.gz"]);
    }
}
