//! Making releases: a green mainline run's artifact, with the `sluice.yaml`
//! it carries, becomes release `vN` of its service, and asks for the
//! automatic promotions its environments declare.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Result;
use sluice_ci::Notifier;
use sluice_store::{Release, Repo, Run, RunStatus};

use crate::{Inner, aftermath};

/// The CI notifier that makes a release of every green mainline run with an
/// artifact, then asks for the automatic deployments its environments declare.
pub struct ReleaseMaker {
    inner: Arc<Inner>,
}

impl ReleaseMaker {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        ReleaseMaker { inner }
    }
}

impl Notifier for ReleaseMaker {
    fn run_changed<'a>(
        &'a self,
        repo: &'a Repo,
        run: &'a Run,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let Some(artifact) = run.artifact_sha256.clone() else {
                return;
            };
            if run.status != RunStatus::Success || run.kind != "mainline" {
                return;
            }
            let inner = self.inner.clone();
            let (repo, run) = (repo.clone(), run.clone());
            tokio::spawn(async move {
                if !still_on_mainline(&inner, &repo, &run).await {
                    return;
                }
                match make(&inner, &run, &artifact).await {
                    Ok(release) => aftermath::ask_for_automatic(&inner, &release, None).await,
                    Err(e) => {
                        tracing::error!(run = run.id, error = %format!("{e:#}"), "could not make a release")
                    }
                }
            });
        })
    }
}

/// Whether the run's commit is still reachable from its branch: a commit
/// amended or force-pushed away while it ran is not released.
async fn still_on_mainline(inner: &Inner, repo: &Repo, run: &Run) -> bool {
    let Ok(source) = sluice_ci::source_dir(&inner.config.data_dir, repo) else {
        return false;
    };
    match sluice_ci::git::is_ancestor(&source, &run.sha, &run.ref_name).await {
        Ok(true) => true,
        Ok(false) => {
            tracing::warn!(run = run.id, sha = %run.sha, branch = %run.branch, "no release: the commit is no longer on its branch");
            let _ = inner
                .store
                .append_change(sluice_store::NewChangeEvent {
                    actor: "sluice".into(),
                    kind: "release.skipped".into(),
                    service: None,
                    environment: None,
                    subject: format!("run {}", run.id),
                    summary: format!(
                        "no release from run {}: commit {} is no longer on {} (amended or force-pushed away)",
                        run.id,
                        &run.sha[..run.sha.len().min(12)],
                        run.branch
                    ),
                    before: None,
                    after: None,
                })
                .await;
            false
        }
        Err(e) => {
            tracing::error!(run = run.id, error = %format!("{e:#}"), "could not tell whether the commit is still on its branch; no release");
            false
        }
    }
}

async fn make(inner: &Arc<Inner>, run: &Run, artifact: &str) -> Result<Release> {
    let path = inner.layout.artifact(artifact)?;
    let spec_text = tokio::task::spawn_blocking(move || {
        crate::release::read_member(&path, sluice_spec::SPEC_FILE)
    })
    .await??;
    let spec = sluice_spec::parse(sluice_spec::SPEC_FILE, &spec_text)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // The newest release's `notify:` routes are the service's, from its
    // `release.created` event on.
    inner
        .store
        .set_service_routes(
            &spec.service,
            &sluice_notify::service_routes(&spec.service, &spec.notify),
        )
        .await?;
    let release = inner
        .store
        .create_release(&spec.service, run, artifact, &spec_text)
        .await?;
    crate::release::unpack(&inner.layout, &release).await?;
    tracing::info!(service = %spec.service, release = %release.name(), run = run.id, "release made");
    Ok(release)
}
