//! The CI engine against a fake executor: a real git repository and store,
//! but no step process. The fake runs each step as its command says:
//! `pass`, `fail` (exits 1), or `hang` (until its deadline or a cancel).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_ci::{AddRepo, Ci, CiConfig, Executor, StepOutcome, StepRequest};
use sluice_store::{Job, Run, RunFilter, RunStatus, Store};

#[derive(Default)]
struct FakeExecutor {
    /// The commands run, in the order they started.
    started: Mutex<Vec<String>>,
}

impl Executor for FakeExecutor {
    fn run_step(
        &self,
        request: StepRequest,
    ) -> Pin<Box<dyn Future<Output = StepOutcome> + Send + '_>> {
        Box::pin(async move {
            self.started.lock().unwrap().push(request.command.clone());
            request
                .log
                .line("stdout", format!("ran {}", request.command));
            match request.command.as_str() {
                "pass" | "pass again" => StepOutcome::Exited(0),
                "fail" => StepOutcome::Exited(1),
                "hang" => tokio::select! {
                    _ = tokio::time::sleep_until(request.deadline) => StepOutcome::TimedOut,
                    _ = request.cancel.cancelled() => StepOutcome::Cancelled,
                },
                other => StepOutcome::FailedToStart(format!("no fake step `{other}`")),
            }
        })
    }
}

struct World {
    ci: Ci,
    executor: Arc<FakeExecutor>,
    repo: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn git(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {out:?}");
}

impl World {
    async fn with(spec: &str) -> World {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("shop");
        std::fs::create_dir(&repo).unwrap();
        git(&repo, &["init", "-q", "-b", "main"]);
        std::fs::write(repo.join("sluice.yaml"), spec).unwrap();
        git(&repo, &["add", "."]);
        git(&repo, &["commit", "-q", "-m", "first"]);
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let store = Store::connect(&Store::sqlite_url(&data)).await.unwrap();
        let config = CiConfig {
            isolation: sluice_ci::sandbox::Isolation::None,
            poll_interval: Duration::from_secs(3600),
            sluice_bin: "/bin/true".into(),
            ..CiConfig::new(&data, "http://127.0.0.1:1")
        };
        let executor = Arc::new(FakeExecutor::default());
        let ci = Ci::start_with(store, config, Vec::new(), executor.clone())
            .await
            .unwrap();
        World {
            ci,
            executor,
            repo,
            _dir: dir,
        }
    }

    async fn add_repo(&self) {
        let request = AddRepo {
            name: Some("shop".into()),
            location: self.repo.display().to_string(),
            webhook_secret: None,
            status_url: None,
            status_token: None,
        };
        self.ci.add_repo(request, "test").await.unwrap();
    }

    async fn run(&self, check: impl Fn(&Run) -> bool) -> Run {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let filter = RunFilter {
                repo: None,
                status: None,
                limit: 10,
            };
            let runs = self.ci.store().runs(&filter).await.unwrap();
            if let Some(run) = runs.into_iter().find(|r| check(r)) {
                return run;
            }
            assert!(tokio::time::Instant::now() < deadline, "no such run");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn jobs(&self, run: &Run) -> Vec<Job> {
        self.ci.store().jobs(run.id).await.unwrap()
    }
}

fn spec(jobs: &str) -> String {
    format!("service: shop\npipeline:\n  jobs:\n{jobs}")
}

#[tokio::test]
async fn jobs_run_in_the_order_their_needs_allow() {
    let world = World::with(&spec(
        "    build:\n      steps:\n        - run: pass\n    test:\n      needs: [build]\n      steps:\n        - run: pass again\n",
    ))
    .await;
    world.add_repo().await;
    let run = world.run(|r| r.status.is_finished()).await;
    assert_eq!(run.status, RunStatus::Success, "{:?}", run.reason);
    assert_eq!(
        *world.executor.started.lock().unwrap(),
        ["pass", "pass again"]
    );
    let jobs = world.jobs(&run).await;
    assert!(jobs.iter().all(|j| j.status == RunStatus::Success));
}

#[tokio::test]
async fn a_failing_step_fails_its_job_and_skips_what_follows() {
    let world = World::with(&spec(
        "    build:\n      steps:\n        - run: fail\n        - run: pass\n    test:\n      needs: [build]\n      steps:\n        - run: pass again\n",
    ))
    .await;
    world.add_repo().await;
    let run = world.run(|r| r.status.is_finished()).await;
    assert_eq!(run.status, RunStatus::Failure);
    assert_eq!(
        run.reason.as_deref(),
        Some("job `build` failed: step `fail` exited with 1")
    );
    assert_eq!(
        *world.executor.started.lock().unwrap(),
        ["fail"],
        "nothing after the failure ran"
    );
    let jobs = world.jobs(&run).await;
    let test = jobs.iter().find(|j| j.name == "test").unwrap();
    assert_eq!(test.status, RunStatus::Skipped);
    assert!(
        test.reason
            .as_deref()
            .unwrap_or_default()
            .contains("needs `build`"),
        "{:?}",
        test.reason
    );
    let build = jobs.iter().find(|j| j.name == "build").unwrap();
    assert_eq!(build.steps[1].status, RunStatus::Skipped);
}

#[tokio::test]
async fn a_step_past_its_job_s_timeout_fails_it() {
    let world = World::with(&spec(
        "    slow:\n      timeout: 200ms\n      steps:\n        - run: hang\n",
    ))
    .await;
    world.add_repo().await;
    let run = world.run(|r| r.status.is_finished()).await;
    assert_eq!(run.status, RunStatus::Failure);
    assert!(
        run.reason
            .as_deref()
            .unwrap_or_default()
            .contains("timed out after 200ms"),
        "{:?}",
        run.reason
    );
}

#[tokio::test]
async fn a_cancel_reaches_the_step_and_ends_the_run_cancelled() {
    let world = World::with(&spec("    slow:\n      steps:\n        - run: hang\n")).await;
    world.add_repo().await;
    let running = world.run(|r| r.status == RunStatus::Running).await;
    // The step has started once the fake has seen it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while world.executor.started.lock().unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the step never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(world.ci.cancel(running.id, "not needed").await.unwrap());
    let run = world
        .run(|r| r.id == running.id && r.status.is_finished())
        .await;
    assert_eq!(run.status, RunStatus::Cancelled);
}
