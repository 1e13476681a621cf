//! Changes, runs, jobs, steps and logs through their life.

use sluice_store::{LogLine, NewChange, NewRepo, PlannedJob, RunFilter, RunStatus, Store};

use crate::each_store;

pub(crate) async fn repo(store: &Store) -> sluice_store::Repo {
    store
        .insert_repo(
            NewRepo {
                name: "shop".into(),
                url: "/src/shop".into(),
                local_path: Some("/src/shop".into()),
                webhook_secret: "s3cret".into(),
                status_url: None,
                status_token: None,
                hook: "hook".into(),
            },
            "admin",
        )
        .await
        .unwrap()
}

pub(crate) fn change(repo_id: i64, branch: &str, sha: &str) -> NewChange {
    NewChange {
        repo_id,
        ref_name: format!("refs/heads/{branch}"),
        branch: branch.into(),
        sha: sha.into(),
        kind: if branch == "main" {
            "mainline"
        } else {
            "review"
        }
        .into(),
        source: "hook".into(),
        pull_request: None,
        title: "add checkout".into(),
        author: "ana".into(),
    }
}

#[tokio::test]
async fn a_change_is_queued_once() {
    each_store(|store| async move {
        let repo = repo(&store).await;
        assert!(
            store
                .insert_repo(
                    NewRepo {
                        name: "shop".into(),
                        url: "x".into(),
                        local_path: None,
                        webhook_secret: "x".into(),
                        status_url: None,
                        status_token: None,
                        hook: "poll".into()
                    },
                    "admin"
                )
                .await
                .is_err(),
            "names are unique"
        );
        let run = store
            .insert_change(change(repo.id, "main", "aaaa"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(run.status, RunStatus::Queued);
        assert_eq!(run.kind, "mainline");
        assert!(
            store
                .insert_change(change(repo.id, "main", "aaaa"))
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .insert_change(change(repo.id, "feature/x", "aaaa"))
                .await
                .unwrap()
                .is_some(),
            "same sha, other ref"
        );
        let changes = store.changes(Some("shop"), 10).await.unwrap();
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[0].status.as_deref(), Some("queued"));
    })
    .await;
}

#[tokio::test]
async fn a_run_is_claimed_once_and_finishes_with_its_jobs() {
    each_store(|store| async move {
        let repo = repo(&store).await;
        let queued = store
            .insert_change(change(repo.id, "main", "bbbb"))
            .await
            .unwrap()
            .unwrap();
        let claimed = store.claim_queued_run().await.unwrap().unwrap();
        assert_eq!(claimed.id, queued.id);
        assert_eq!(claimed.status, RunStatus::Running);
        assert!(store.claim_queued_run().await.unwrap().is_none());
        store
            .insert_jobs(
                claimed.id,
                "shop",
                &[
                    PlannedJob {
                        name: "unit".into(),
                        needs: vec![],
                        steps: vec![("test".into(), "make test".into())],
                    },
                    PlannedJob {
                        name: "integration".into(),
                        needs: vec!["unit".into()],
                        steps: vec![
                            ("it".into(), "make it".into()),
                            ("more".into(), "make more".into()),
                        ],
                    },
                ],
            )
            .await
            .unwrap();
        let jobs = store.jobs(claimed.id).await.unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[1].needs(), ["unit"]);
        assert_eq!(jobs[1].steps.len(), 2);
        store
            .set_job_status(jobs[0].id, RunStatus::Running, None)
            .await
            .unwrap();
        store
            .set_step_status(jobs[0].steps[0].id, RunStatus::Running, None)
            .await
            .unwrap();
        store
            .set_step_status(jobs[0].steps[0].id, RunStatus::Failure, Some(2))
            .await
            .unwrap();
        store
            .set_job_status(
                jobs[0].id,
                RunStatus::Failure,
                Some("step `test` exited with 2"),
            )
            .await
            .unwrap();
        assert!(
            store
                .finish_run(
                    claimed.id,
                    RunStatus::Failure,
                    Some("job `unit` failed"),
                    None
                )
                .await
                .unwrap()
        );
        assert!(
            !store
                .finish_run(claimed.id, RunStatus::Success, None, None)
                .await
                .unwrap(),
            "a finished run stays finished"
        );
        let detail = store.run_detail(claimed.id).await.unwrap();
        assert_eq!(detail.run.status, RunStatus::Failure);
        assert_eq!(detail.jobs[0].steps[0].exit_code, Some(2));
        assert_eq!(
            detail.jobs[1].status,
            RunStatus::Skipped,
            "a job that never started is skipped"
        );
        let failed = store
            .runs(&RunFilter {
                status: Some(RunStatus::Failure),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(failed.len(), 1);
    })
    .await;
}

#[tokio::test]
async fn interrupted_runs_become_errors_and_keep_their_logs() {
    each_store(|store| async move {
        let repo = repo(&store).await;
        store
            .insert_change(change(repo.id, "main", "cccc"))
            .await
            .unwrap();
        let run = store.claim_queued_run().await.unwrap().unwrap();
        let lines: Vec<LogLine> = (0..5)
            .map(|seq| LogLine {
                seq,
                at: 1,
                job: "unit".into(),
                step: 0,
                stream: "stdout".into(),
                line: format!("line {seq}"),
            })
            .collect();
        store.append_log_chunk(run.id, &lines[..3]).await.unwrap();
        store.append_log_chunk(run.id, &lines[3..]).await.unwrap();
        assert_eq!(store.interrupt_running_runs().await.unwrap(), [run.id]);
        let after = store.run(run.id).await.unwrap();
        assert_eq!(after.status, RunStatus::Error);
        assert!(after.reason.unwrap().contains("interrupted"));
        assert_eq!(store.logs(run.id, -1).await.unwrap(), lines);
        assert_eq!(store.logs(run.id, 3).await.unwrap(), &lines[4..]);
    })
    .await;
}

#[tokio::test]
async fn a_newer_commit_on_a_ref_supersedes_older_runs() {
    each_store(|store| async move {
        let repo = repo(&store).await;
        let first = store
            .insert_change(change(repo.id, "feature/x", "d1"))
            .await
            .unwrap()
            .unwrap();
        let second = store
            .insert_change(change(repo.id, "feature/x", "d2"))
            .await
            .unwrap()
            .unwrap();
        store
            .insert_change(change(repo.id, "feature/y", "d3"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(store.superseded_runs(&second).await.unwrap(), [first.id]);
        assert!(store.record_delivery(repo.id, "guid-1").await.unwrap());
        assert!(!store.record_delivery(repo.id, "guid-1").await.unwrap());
    })
    .await;
}

#[tokio::test]
async fn green_mainline_runs_without_their_release_are_found_after_a_kill() {
    each_store(|store| async move {
        let repo = repo(&store).await;
        let artifact = "a".repeat(64);
        let mut runs = Vec::new();
        for (branch, sha) in [
            ("main", "1"),
            ("main", "2"),
            ("main", "3"),
            ("feature", "4"),
        ] {
            let run = store
                .insert_change(change(repo.id, branch, &sha.repeat(40)))
                .await
                .unwrap()
                .unwrap();
            store
                .finish_run(run.id, RunStatus::Success, None, Some(&artifact))
                .await
                .unwrap();
            runs.push(store.run(run.id).await.unwrap());
        }
        store
            .create_release("shop", &runs[0], &artifact, "service: shop")
            .await
            .unwrap();
        // Run 3's commit was found off its branch: it stays without a release.
        store
            .append_change(sluice_store::NewChangeEvent {
                actor: "sluice".into(),
                kind: "release.skipped".into(),
                subject: format!("run {}", runs[2].id),
                summary: "amended away".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let awaiting: Vec<i64> = store
            .runs_awaiting_release()
            .await
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(
            awaiting,
            [runs[1].id],
            "not the released, the skipped, the review"
        );
        store
            .create_release("shop", &runs[1], &artifact, "service: shop")
            .await
            .unwrap();
        assert!(store.runs_awaiting_release().await.unwrap().is_empty());
    })
    .await;
}
