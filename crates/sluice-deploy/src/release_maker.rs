//! The release maker: a green mainline run's artifact, with the
//! `sluice.yaml` it carries, becomes release `vN` of its service, which
//! asks for the automatic promotions its environments declare. A loop
//! woken when a run ends (through the store, as every controller is): CI
//! does not call it. Its first pass, at start, also asks for what a kill
//! between a release's arrival somewhere and its next promotion left
//! unasked.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use sluice_store::{Release, Repo, Run, Topic};

use crate::{Inner, aftermath};

/// How long the loop waits for a run's end before it looks anyway (a
/// wake-up lost with a dropped PostgreSQL connection, say).
const LOOK_ANYWAY: Duration = Duration::from_secs(10);

/// The release loop: makes the release of each green mainline run that
/// has none, woken when a run ends.
pub(crate) async fn keep(inner: Arc<Inner>) {
    loop {
        // Made before the pass, so that a run ending during it is not missed.
        let woken = inner.store.woken(Topic::RunEnded);
        make_missing(&inner).await;
        tokio::select! {
            _ = woken => {}
            _ = tokio::time::sleep(LOOK_ANYWAY) => {}
            _ = inner.shutdown.cancelled() => return,
        }
    }
}

/// Makes the run's release, when its commit is still on its branch, and
/// asks for the automatic promotions.
async fn release_run(inner: &Arc<Inner>, repo: &Repo, run: &Run, artifact: &str) {
    if !still_on_mainline(inner, repo, run).await {
        return;
    }
    match make(inner, run, artifact).await {
        Ok(release) => aftermath::ask_for_automatic(inner, &release, None).await,
        Err(e) => {
            tracing::error!(run = run.id, error = %format!("{e:#}"), "could not make a release")
        }
    }
}

/// Makes the release of every green mainline run with an artifact that
/// has none and is newer than its repository's newest release (one that
/// ended while no server ran this loop too). A run whose commit left its
/// branch is marked and not looked at again.
async fn make_missing(inner: &Arc<Inner>) {
    let store = &inner.store;
    let awaiting = store.runs_awaiting_release().await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "could not look for runs without their release");
        Vec::new()
    });
    for run in awaiting {
        let (Some(artifact), Ok(repo)) = (
            run.artifact_sha256.clone(),
            store.repo_by_id(run.repo_id).await,
        ) else {
            continue;
        };
        release_run(inner, &repo, &run, &artifact).await;
    }
}

/// At start: a kill may fall between a run's end and its release, or
/// between a release (or its arrival in an environment) and the automatic
/// promotions that follow. Makes the missing releases, then asks for every
/// automatic promotion of each service's newest release that was never
/// asked for and is due.
pub(crate) async fn catch_up(inner: &Arc<Inner>) {
    make_missing(inner).await;
    let store = &inner.store;
    let releases = store.releases(None, 1000).await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "could not read the releases to catch up on");
        Vec::new()
    });
    let mut services: Vec<&str> = releases.iter().map(|r| r.service.as_str()).collect();
    services.sort();
    services.dedup();
    for service in services {
        let Some(newest) = releases
            .iter()
            .filter(|r| r.service == service)
            .max_by_key(|r| r.number)
        else {
            continue;
        };
        if let Err(e) = ask_what_is_due(inner, newest).await {
            tracing::warn!(%service, error = %format!("{e:#}"), "could not catch up on automatic promotions");
        }
    }
}

async fn ask_what_is_due(inner: &Arc<Inner>, release: &Release) -> Result<()> {
    let spec = sluice_spec::parse(sluice_spec::SPEC_FILE, &release.spec)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // Under the lock the release maker asks under: what was asked is read
    // and added to by one of them at a time.
    let _one_release_at_a_time = inner.asking.lock().await;
    let running: std::collections::BTreeMap<String, i64> = inner
        .store
        .env_states(Some(&release.service))
        .await?
        .into_iter()
        .filter_map(|s| Some((s.name, s.release?)))
        .collect();
    let asked: std::collections::BTreeSet<String> = inner
        .store
        .promotions(Some(&release.service), false, 1000)
        .await?
        .into_iter()
        .filter(|p| p.release == release.number)
        .map(|p| p.environment)
        .collect();
    let envs: Vec<Automatic> = spec
        .environments
        .iter()
        .filter(|e| e.deploy.auto)
        .map(|e| Automatic {
            name: e.name.clone(),
            from: e.from.clone(),
        })
        .collect();
    let due = due_promotions(&envs, release.number, &running, &asked);
    for env in &due {
        tracing::info!(service = %release.service, %env, release = %release.name(), "asking for the automatic promotion a previous server did not");
        inner
            .store
            .insert_promotion(&release.service, env, release, "sluice")
            .await?;
    }
    if !due.is_empty() {
        inner.store.wake(sluice_store::Topic::PromotionAsked).await;
    }
    Ok(())
}

/// An environment with `deploy: auto`, and the one it follows.
#[derive(Clone, Debug)]
struct Automatic {
    name: String,
    from: Option<String>,
}

/// The automatic promotions of release `number` that are due and were never
/// asked for: into each `deploy: auto` environment that runs an older
/// release (or none), once the environment it follows runs this one (or
/// at once when it follows none).
fn due_promotions(
    envs: &[Automatic],
    number: i64,
    running: &std::collections::BTreeMap<String, i64>,
    asked: &std::collections::BTreeSet<String>,
) -> Vec<String> {
    envs.iter()
        .filter(|e| !asked.contains(&e.name))
        .filter(|e| running.get(&e.name).is_none_or(|n| *n < number))
        .filter(|e| match &e.from {
            None => true,
            Some(from) => running.get(from) == Some(&number),
        })
        .map(|e| e.name.clone())
        .collect()
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
    let path =
        sluice_ci::artifact::local_copy(&inner.store, &inner.layout.artifacts(), artifact).await?;
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
    crate::release::unpack(&inner.store, &inner.layout, &release).await?;
    tracing::info!(service = %spec.service, release = %release.name(), run = run.id, "release made");
    Ok(release)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;

    use super::{Automatic, due_promotions};
    use crate::clock::FakeClock;
    use crate::testing::{Harness, kill, server_runtime, spec};

    const CHAIN: &str = "  dev:\n    deploy: auto\n    instances: 1\n    listen: 127.0.0.1:0\n  staging:\n    from: dev\n    deploy: auto\n    instances: 1\n    listen: 127.0.0.1:0\n";

    /// A server killed after making v2 and before asking for anything:
    /// the next one asks, and v2 goes on through dev to staging.
    #[test]
    fn a_release_whose_promotions_a_kill_cut_off_is_promoted_after_the_restart() {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let clock = Arc::new(FakeClock::new());
        let server = server_runtime();
        let world = server.block_on(async {
            let world = Harness::open(dir.clone(), Arc::default(), clock.clone()).await;
            let v1 = world.release(&spec("serve", CHAIN)).await;
            crate::aftermath::ask_for_automatic(&world.cd.inner, &v1, None).await;
            world.settled("staging", 1, 1).await;
            world.release(&spec("serve", CHAIN)).await;
            world
        });
        kill(server, world);
        server_runtime().block_on(async {
            let world = Harness::open(dir, Arc::default(), clock).await;
            world.settled("dev", 2, 1).await;
            world.settled("staging", 2, 1).await;
        });
    }

    #[test]
    fn what_a_previous_server_left_unasked() {
        let envs = [
            Automatic {
                name: "dev".into(),
                from: None,
            },
            Automatic {
                name: "staging".into(),
                from: Some("dev".into()),
            },
        ];
        let running = |pairs: &[(&str, i64)]| -> BTreeMap<String, i64> {
            pairs.iter().map(|(e, n)| (e.to_string(), *n)).collect()
        };
        let asked =
            |envs: &[&str]| -> BTreeSet<String> { envs.iter().map(|e| e.to_string()).collect() };
        // What happened, what runs where, what was asked, what is due.
        type Case<'a> = (
            &'a str,
            BTreeMap<String, i64>,
            BTreeSet<String>,
            &'a [&'a str],
        );
        let table: [Case; 6] = [
            (
                "killed after the release, before anything was asked",
                running(&[("dev", 20), ("staging", 20)]),
                asked(&[]),
                &["dev"],
            ),
            (
                "a first release, nothing runs yet",
                running(&[]),
                asked(&[]),
                &["dev"],
            ),
            (
                "dev was asked (whatever became of it)",
                running(&[("dev", 20)]),
                asked(&["dev"]),
                &[],
            ),
            (
                "dev got it; killed before staging was asked",
                running(&[("dev", 21), ("staging", 20)]),
                asked(&["dev"]),
                &["staging"],
            ),
            (
                "staging was asked",
                running(&[("dev", 21), ("staging", 20)]),
                asked(&["dev", "staging"]),
                &[],
            ),
            (
                "dev runs a newer one already",
                running(&[("dev", 22), ("staging", 20)]),
                asked(&[]),
                &[],
            ),
        ];
        for (case, running, asked, due) in table {
            assert_eq!(due_promotions(&envs, 21, &running, &asked), due, "{case}");
        }
    }
}
