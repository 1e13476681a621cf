//! A release's files and definition: its artifact unpacked once for
//! instances, and the `sluice.yaml` it carries with one of its environments.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use sluice_spec::{Environment, Layout, Spec};
use sluice_store::Release;

/// The parsed definition a release carries, and its environment `env`.
pub(crate) fn release_env(release: &Release, env: &str) -> Result<(Spec, Environment)> {
    let spec = sluice_spec::parse("sluice.yaml", &release.spec)
        .map_err(|e| anyhow!("release {} has an invalid sluice.yaml: {e}", release.name()))?;
    let environment = spec.environment(env).cloned().ok_or_else(|| {
        anyhow!(
            "release {}'s sluice.yaml has no environment `{env}`",
            release.name()
        )
    })?;
    Ok((spec, environment))
}

/// One file of an artifact, read without unpacking the rest.
pub(crate) fn read_member(archive: &std::path::Path, name: &str) -> Result<String> {
    let file = std::fs::File::open(archive)
        .with_context(|| format!("artifact {} is missing", archive.display()))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    for entry in tar.entries()? {
        let mut entry = entry?;
        if entry.path()?.as_os_str() == name {
            let mut text = String::new();
            entry.read_to_string(&mut text)?;
            return Ok(text);
        }
    }
    anyhow::bail!("the artifact has no {name}")
}

/// Unpacks a release's artifact once; later calls find it there.
pub(crate) async fn unpack(
    store: &sluice_store::Store,
    layout: &Layout,
    release: &Release,
) -> Result<PathBuf> {
    let dir = layout.release(&release.service, release.number)?;
    if dir.exists() {
        return Ok(dir);
    }
    let archive =
        sluice_ci::artifact::local_copy(store, &layout.artifacts(), &release.artifact_sha256)
            .await?;
    let target = dir.clone();
    tokio::task::spawn_blocking(move || -> Result<()> {
        let staging = target.with_extension("incoming");
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging)?;
        let file = std::fs::File::open(&archive)
            .with_context(|| format!("artifact {} is missing", archive.display()))?;
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
        tar.set_preserve_permissions(true);
        tar.unpack(&staging)?;
        std::fs::rename(&staging, &target)?;
        Ok(())
    })
    .await??;
    Ok(dir)
}
