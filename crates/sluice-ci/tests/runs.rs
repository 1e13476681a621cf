//! The CI engine against a fake executor: a real git repository and store,
//! but no step process. The fake runs each step as its command says:
//! `pass`, `fail` (exits 1), or `hang` (until its deadline or a cancel).
//! Jobs on agents meet agents played by the test through `Ci`'s own calls,
//! as the API handlers make them.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_ci::remote::AgentError;
use sluice_ci::wire::{Claimed, Finished, Hello};
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
        World::leasing(spec, sluice_ci::DEFAULT_AGENT_LEASE).await
    }

    /// A world whose agents' leases last `lease`.
    async fn leasing(spec: &str, lease: Duration) -> World {
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
            agent_lease: lease,
            ..CiConfig::new(&data, "http://127.0.0.1:1")
        };
        let executor = Arc::new(FakeExecutor::default());
        let ci = Ci::start_with(store, config, executor.clone())
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

/// Registers an agent under its own token id, with `role`.
async fn agent(world: &World, name: &str, role: &str) {
    agent_running(world, name, role, 1).await;
}

/// Registers an agent that runs `jobs` jobs at once.
async fn agent_running(world: &World, name: &str, role: &str, jobs: u32) {
    let hello = Hello {
        name: name.into(),
        labels: [("role".to_string(), role.to_string())].into(),
        cores: 2,
        memory_mb: 1024,
        version: "test".into(),
        address: None,
        jobs,
    };
    world
        .ci
        .register_agent(&format!("token-{name}"), &hello, None)
        .await
        .unwrap();
}

async fn claim(world: &World, name: &str, wait: Duration) -> Option<Claimed> {
    world
        .ci
        .claim_job(&format!("token-{name}"), name, wait)
        .await
        .unwrap()
}

async fn finish(
    world: &World,
    name: &str,
    job: &Claimed,
    status: RunStatus,
) -> Result<(), AgentError> {
    let finished = Finished {
        generation: job.generation,
        status,
        reason: None,
    };
    world
        .ci
        .job_finished(&format!("token-{name}"), name, job.job_id, finished)
        .await
}

const ON_AGENTS: &str = "    remote:\n      runs_on: { role: test }\n      env: { MODE: ci }\n      steps:\n        - run: pass\n";

#[tokio::test]
async fn a_job_lost_with_its_agent_passes_on_another_and_the_late_report_is_refused() {
    let world = World::leasing(&spec(ON_AGENTS), Duration::from_millis(300)).await;
    for (name, role) in [("a1", "test"), ("a2", "test"), ("builder", "build")] {
        agent(&world, name, role).await;
    }
    world.add_repo().await;
    assert!(
        claim(&world, "builder", Duration::from_millis(300))
            .await
            .is_none(),
        "its labels do not match"
    );
    let first = claim(&world, "a1", Duration::from_secs(10)).await.unwrap();
    assert_eq!(first.generation, 1);
    assert_eq!(first.env["MODE"], "ci");
    assert_eq!(first.env["SLUICE_JOB"], "remote");
    assert!(
        !first.env.contains_key("PATH"),
        "nothing of the server's environment"
    );

    // a1 falls silent: its lease runs out, and the job is offered again.
    let second = claim(&world, "a2", Duration::from_secs(10)).await.unwrap();
    assert_eq!((second.job_id, second.generation), (first.job_id, 2));
    let late = finish(&world, "a1", &first, RunStatus::Success).await;
    assert!(matches!(late, Err(AgentError::Stale(_))), "{late:?}");
    let unended = finish(&world, "a2", &second, RunStatus::Running).await;
    assert!(
        matches!(unended, Err(AgentError::Invalid(_))),
        "{unended:?}"
    );
    finish(&world, "a2", &second, RunStatus::Success)
        .await
        .unwrap();

    let run = world.run(|r| r.status.is_finished()).await;
    assert_eq!(run.status, RunStatus::Success, "{:?}", run.reason);
    let attempts = world.ci.store().job_attempts(run.id).await.unwrap();
    let seen: Vec<_> = attempts
        .iter()
        .map(|a| (a.agent.as_str(), a.state.as_str()))
        .collect();
    assert_eq!(seen, [("a1", "lost"), ("a2", "ended")]);
}

#[tokio::test]
async fn a_job_waiting_for_any_agent_counts_only_agents_that_run_jobs() {
    let world = World::with(&spec(
        "    remote:\n      runs_on: {}\n      steps:\n        - run: pass\n",
    ))
    .await;
    // The server's local agent, say: online, but for environments only.
    agent_running(&world, "environments-only", "web", 0).await;
    world.add_repo().await;
    let run = world.run(|r| r.status == RunStatus::Running).await;
    let waiting = "no agent with these labels that runs jobs is online";
    let noted = |lines: &[sluice_store::LogLine]| lines.iter().any(|l| l.line.contains(waiting));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !noted(&world.ci.store().logs(run.id, -1).await.unwrap()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the log never said the job waits"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One that runs jobs takes it.
    agent(&world, "builder", "build").await;
    let job = claim(&world, "builder", Duration::from_secs(10))
        .await
        .unwrap();
    finish(&world, "builder", &job, RunStatus::Success)
        .await
        .unwrap();
    let run = world.run(|r| r.status.is_finished()).await;
    assert_eq!(run.status, RunStatus::Success, "{:?}", run.reason);
}

#[tokio::test]
async fn a_job_lost_with_no_retry_left_fails_its_run() {
    let world = World::leasing(
        &spec("    remote:\n      runs_on: {}\n      retry: { lost: 0 }\n      steps:\n        - run: pass\n"),
        Duration::from_millis(300),
    )
    .await;
    agent(&world, "a1", "any").await;
    world.add_repo().await;
    claim(&world, "a1", Duration::from_secs(10)).await.unwrap();
    let run = world.run(|r| r.status.is_finished()).await;
    assert_eq!(run.status, RunStatus::Failure);
    assert!(
        run.reason
            .as_deref()
            .unwrap_or_default()
            .contains("agent `a1` was silent past its lease"),
        "{:?}",
        run.reason
    );
    assert_eq!(world.jobs(&run).await[0].status, RunStatus::Lost);
}

#[tokio::test]
async fn a_cancel_reaches_the_agent_at_its_renewal() {
    let world = World::with(&spec(ON_AGENTS)).await;
    agent(&world, "a1", "test").await;
    world.add_repo().await;
    let job = claim(&world, "a1", Duration::from_secs(10)).await.unwrap();
    let renewal = world
        .ci
        .renew_lease("token-a1", "a1", job.job_id, 1)
        .await
        .unwrap();
    assert!(!renewal.cancel);
    world
        .ci
        .cancel(job.run_id, "changed my mind")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !world
        .ci
        .renew_lease("token-a1", "a1", job.job_id, 1)
        .await
        .unwrap()
        .cancel
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cancel never reached the renewal"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    finish(&world, "a1", &job, RunStatus::Cancelled)
        .await
        .unwrap();
    let run = world.run(|r| r.status.is_finished()).await;
    assert_eq!(run.status, RunStatus::Cancelled);
}

#[tokio::test]
async fn an_agent_s_name_belongs_to_its_token() {
    let world = World::with(&spec(ON_AGENTS)).await;
    agent(&world, "a1", "test").await;
    let stolen = world.ci.claim_job("token-a2", "a1", Duration::ZERO).await;
    assert!(matches!(stolen, Err(AgentError::NotYours(_))), "{stolen:?}");
    let unknown = world
        .ci
        .claim_job("token-a1", "nobody", Duration::ZERO)
        .await;
    assert!(
        matches!(unknown, Err(AgentError::NotYours(_))),
        "{unknown:?}"
    );
}
