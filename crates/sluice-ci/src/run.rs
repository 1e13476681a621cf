//! One run, start to end: read `sluice.yaml` at the commit, check the commit
//! out, run the jobs as their `needs` allow, pack the artifact, record the end.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use sluice_spec::{ChangeKind, Job, Spec};
use sluice_store::{PlannedJob, Run, RunStatus, Secret};
use tokio::task::JoinSet;

use crate::executor::{StepOutcome, StepRequest};
use crate::logs::{LogSink, LogWriter};
use crate::{Cancel, Engine, artifact, git, rules, sandbox};

/// How a run ended.
struct Ending {
    status: RunStatus,
    reason: Option<String>,
    artifact: Option<String>,
}

impl Ending {
    fn new(status: RunStatus, reason: impl Into<Option<String>>) -> Self {
        Ending {
            status,
            reason: reason.into(),
            artifact: None,
        }
    }
}

pub(crate) async fn execute(engine: Arc<Engine>, run: Run, cancel: Cancel) {
    engine.notify(run.id).await;
    let all = engine.store.secrets(run.repo_id).await.unwrap_or_default();
    let sink = LogSink::start(
        engine.store.clone(),
        run.id,
        masked_values(&engine.config.data_dir, &all),
        engine.events.clone(),
        engine.config.log_cap,
    );
    let kind = ChangeKind::parse(&run.kind).unwrap_or(ChangeKind::Review);
    let secrets = given_secrets(kind, all);
    let workspace = engine.workspace(run.id);
    let mut ending = prepare_and_run(&engine, &run, &cancel, &sink, secrets).await;
    if ending.status == RunStatus::Cancelled {
        ending.reason = cancel.reason.lock().unwrap().clone().or(ending.reason);
    }
    let summary = match &ending.reason {
        Some(reason) => format!("run {} ended {}: {reason}", run.id, ending.status),
        None => format!("run {} ended {}", run.id, ending.status),
    };
    sink.writer("", -1).note(summary);
    sink.close().await;
    engine.running.lock().unwrap().remove(&run.id);
    if let Err(e) = engine
        .store
        .finish_run(
            run.id,
            ending.status,
            ending.reason.as_deref(),
            ending.artifact.as_deref(),
        )
        .await
    {
        tracing::error!(run = run.id, error = %e, "could not record the end of the run");
    }
    if !engine.config.keep_workspaces {
        let _ = tokio::fs::remove_dir_all(&workspace).await;
        let _ = tokio::fs::remove_dir_all(step_home(&workspace)).await;
    }
    engine.notify(run.id).await;
}

async fn prepare_and_run(
    engine: &Arc<Engine>,
    run: &Run,
    cancel: &Cancel,
    sink: &LogSink,
    secrets: BTreeMap<String, String>,
) -> Ending {
    let log = sink.writer("", -1);
    let Ok(repo) = engine.store.repo_by_id(run.repo_id).await else {
        return Ending::new(RunStatus::Error, "its repository is gone".to_string());
    };
    let source = match engine.source_dir(&repo) {
        Ok(source) => source,
        Err(escape) => return Ending::new(RunStatus::Error, escape.to_string()),
    };
    let text = match git::show_file(&source, &run.sha, sluice_spec::SPEC_FILE).await {
        Ok(Some(text)) => text,
        Ok(None) => {
            log.note(format!(
                "there is no {} at the root of the repository at {}",
                sluice_spec::SPEC_FILE,
                run.sha
            ));
            log.note("hint: `sluice init` writes a starting one");
            return Ending::new(
                RunStatus::Failure,
                format!("no {} in the commit", sluice_spec::SPEC_FILE),
            );
        }
        Err(e) => {
            log.note(format!("{e:#}"));
            return Ending::new(RunStatus::Error, "could not read the commit".to_string());
        }
    };
    let spec = match sluice_spec::parse(sluice_spec::SPEC_FILE, &text) {
        Ok(spec) => on_agents_by_default(spec, engine.config.jobs_on_agents),
        Err(errors) => {
            for line in errors.to_string().lines() {
                log.line("stderr", line);
            }
            let count = errors.len();
            return Ending::new(
                RunStatus::Failure,
                format!(
                    "{} is not valid ({count} error{})",
                    sluice_spec::SPEC_FILE,
                    if count == 1 { "" } else { "s" }
                ),
            );
        }
    };
    let required = match rules::required_jobs(&engine.store, &source, &run.sha, &spec).await {
        Ok(required) => required,
        Err(rules::RulesError::Invalid(errors)) => {
            for line in errors.to_string().lines() {
                log.line("stderr", line);
            }
            return Ending::new(
                RunStatus::Failure,
                format!("{} is not valid", sluice_spec::RULES_FILE),
            );
        }
        Err(rules::RulesError::Other(why)) => {
            log.note(&why);
            return Ending::new(RunStatus::Error, why);
        }
    };
    if let Some((rule, why)) = rules::missing(&required, &spec) {
        log.note(&why);
        log.note("hint: add the job to sluice.yaml's pipeline, or disable the rule with a reason");
        record_block(engine, run, &spec, &rule, &why).await;
        return Ending::new(RunStatus::Failure, why);
    }
    let plan: Vec<_> = spec
        .pipeline
        .jobs
        .iter()
        .map(|j| PlannedJob {
            name: j.name.clone(),
            needs: j.needs.clone(),
            steps: j
                .steps
                .iter()
                .map(|s| (s.name.clone(), s.run.clone()))
                .collect(),
        })
        .collect();
    if let Err(e) = engine.store.insert_jobs(run.id, &spec.service, &plan).await {
        return Ending::new(RunStatus::Error, format!("could not record the jobs: {e}"));
    }
    let workspace = engine.workspace(run.id);
    let started = Instant::now();
    if let Err(e) = git::checkout(&source, &workspace, &run.sha).await {
        log.note(format!("{e:#}"));
        return Ending::new(
            RunStatus::Error,
            "could not check the commit out".to_string(),
        );
    }
    log.note(format!(
        "checked out {} ({}) in {} ms",
        &run.sha[..run.sha.len().min(12)],
        run.branch,
        started.elapsed().as_millis()
    ));
    let uid = sandbox::step_uid(&run.repo, engine.config.isolation);
    if let Some(uid) = uid {
        if let Err(e) = hand_workspace_over(&workspace, uid) {
            log.note(format!("could not give the workspace to uid {uid}: {e}"));
            return Ending::new(
                RunStatus::Error,
                "could not prepare the workspace".to_string(),
            );
        }
        log.note(format!(
            "steps run as uid {uid}, which owns the workspace and nothing else of the server's"
        ));
    }
    let kind = ChangeKind::parse(&run.kind).unwrap_or(ChangeKind::Review);
    let steps = Steps {
        workspace: &workspace,
        uid,
        secrets: &secrets,
    };
    let (failed, ended) = run_jobs(engine, run, &spec, kind, cancel, sink, &steps).await;
    if cancel.token.is_cancelled() {
        return Ending::new(RunStatus::Cancelled, "cancelled".to_string());
    }
    if let Some((rule, why)) = rules::unmet(&required, &ended) {
        log.note(&why);
        record_block(engine, run, &spec, &rule, &why).await;
        return Ending::new(RunStatus::Failure, why);
    }
    if let Some(reason) = failed {
        return Ending::new(RunStatus::Failure, reason);
    }
    if kind != ChangeKind::Mainline || spec.pipeline.artifact.is_empty() {
        return Ending::new(RunStatus::Success, None);
    }
    if let Some(ending) = artifact_from_agent(engine, run, &spec).await {
        return ending;
    }
    let store_dir = sluice_spec::Layout::new(&engine.config.data_dir).artifacts();
    let paths = deployable_paths(&spec.pipeline.artifact, &needed_paths(&spec), &workspace);
    let packed =
        tokio::task::spawn_blocking(move || artifact::pack(&workspace, &paths, &store_dir)).await;
    match packed {
        Ok(Ok(packed)) => {
            if let Err(e) =
                artifact::record(&engine.store, &packed.sha256, packed.size, &packed.path).await
            {
                return Ending::new(
                    RunStatus::Error,
                    format!("could not record the artifact: {e}"),
                );
            }
            log.note(format!(
                "artifact sha256:{} ({} bytes)",
                packed.sha256, packed.size
            ));
            Ending {
                status: RunStatus::Success,
                reason: None,
                artifact: Some(packed.sha256),
            }
        }
        Ok(Err(e)) => {
            log.note(format!("artifact: {e}"));
            Ending::new(RunStatus::Failure, e.to_string())
        }
        Err(e) => Ending::new(
            RunStatus::Error,
            format!("packing the artifact panicked: {e}"),
        ),
    }
}

/// The run's end when its artifact comes from a job on an agent
/// (`artifact.from`): what that agent uploaded, or a failure without it.
async fn artifact_from_agent(engine: &Engine, run: &Run, spec: &Spec) -> Option<Ending> {
    let from = spec.pipeline.artifact_from.as_ref()?;
    spec.pipeline
        .jobs
        .iter()
        .find(|j| &j.name == from)
        .filter(|j| j.runs_on.is_some())?;
    let job = engine
        .store
        .jobs(run.id)
        .await
        .ok()?
        .into_iter()
        .find(|j| &j.name == from)?;
    let uploaded = engine
        .store
        .job_lease(job.id)
        .await
        .ok()
        .and_then(|lease| lease.artifact);
    Some(match uploaded {
        Some(sha256) => Ending {
            status: RunStatus::Success,
            reason: None,
            artifact: Some(sha256),
        },
        None => Ending::new(
            RunStatus::Failure,
            format!("job `{from}` uploaded no artifact from its agent"),
        ),
    })
}

/// The values a run's log never shows: every secret of the repository
/// (those too short to mask without garbling the log are refused when set)
/// and the server's initial admin token.
fn masked_values(data_dir: &std::path::Path, secrets: &BTreeMap<String, Secret>) -> Vec<String> {
    let admin =
        std::fs::read_to_string(sluice_spec::Layout::new(data_dir).initial_admin_token()).ok();
    secrets
        .values()
        .map(|s| s.value.clone())
        .chain(admin.map(|t| t.trim().to_string()))
        .filter(|v| !v.is_empty())
        .collect()
}

/// The secrets a run's steps get: all of them on the mainline; on a review
/// change (which anyone who can push a branch or open a pull request
/// proposes) only those marked `review`, as GitHub Actions does for forks.
pub(crate) fn given_secrets(
    kind: ChangeKind,
    secrets: BTreeMap<String, Secret>,
) -> BTreeMap<String, String> {
    secrets
        .into_iter()
        .filter(|(_, s)| kind == ChangeKind::Mainline || s.review)
        .map(|(name, s)| (name, s.value))
        .collect()
}

/// Remembers that a rule failed this run.
async fn record_block(engine: &Engine, run: &Run, spec: &Spec, rule: &str, why: &str) {
    let subject = format!("run {}", run.id);
    if let Err(e) = engine
        .store
        .record_block(rule, &spec.service, None, &subject, why)
        .await
    {
        tracing::warn!(run = run.id, error = %e, "could not record the rule's block");
    }
}

/// Where and as whom a run's steps run, and the secrets they get.
struct Steps<'a> {
    workspace: &'a std::path::Path,
    uid: Option<u32>,
    secrets: &'a BTreeMap<String, String>,
}

/// The `HOME` of a run's steps when they run as a user of their own: beside
/// the workspace, not in it, so that it is never part of the artifact.
pub(crate) fn step_home(workspace: &std::path::Path) -> std::path::PathBuf {
    workspace.with_extension("home")
}

/// Gives the checked-out workspace and a fresh home to the steps' user,
/// each `0700`; the workspaces directory lets that user through to its own
/// and list nothing.
pub(crate) fn hand_workspace_over(workspace: &std::path::Path, uid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(all) = workspace.parent() {
        std::fs::set_permissions(all, std::fs::Permissions::from_mode(0o711))?;
    }
    let home = step_home(workspace);
    sandbox::private_dir(&home)?;
    sandbox::private_dir(workspace)?;
    sandbox::give(workspace, uid)?;
    sandbox::give(&home, uid)
}

/// Runs the jobs as their `needs` allow; returns why the run failed, if it
/// did, and how each job ended.
async fn run_jobs(
    engine: &Arc<Engine>,
    run: &Run,
    spec: &Spec,
    kind: ChangeKind,
    cancel: &Cancel,
    sink: &LogSink,
    steps: &Steps<'_>,
) -> (Option<String>, HashMap<String, RunStatus>) {
    let ids: HashMap<String, i64> = match engine.store.jobs(run.id).await {
        Ok(jobs) => jobs.into_iter().map(|j| (j.name.clone(), j.id)).collect(),
        Err(e) => {
            return (
                Some(format!("could not read the jobs back: {e}")),
                HashMap::new(),
            );
        }
    };
    let mut ended: HashMap<String, RunStatus> = HashMap::new();
    let mut started: Vec<String> = Vec::new();
    let mut tasks = JoinSet::new();
    let mut first_failure: Option<String> = None;
    loop {
        for job in &spec.pipeline.jobs {
            if started.contains(&job.name) || !job.needs.iter().all(|n| ended.contains_key(n)) {
                continue;
            }
            started.push(job.name.clone());
            let job_id = ids[&job.name];
            let blocked = job.needs.iter().find(|n| ended[*n] != RunStatus::Success);
            let skip = if !job.filter.matches(kind, &run.branch) {
                Some(format!(
                    "not for {} changes on `{}`",
                    kind.as_str(),
                    run.branch
                ))
            } else if let Some(need) = blocked {
                Some(format!("needs `{need}`, which ended {}", ended[need]))
            } else if cancel.token.is_cancelled() {
                Some("the run was cancelled".to_string())
            } else {
                None
            };
            if let Some(reason) = skip {
                let _ = engine
                    .store
                    .set_job_status(job_id, RunStatus::Skipped, Some(&reason))
                    .await;
                sink.writer(&job.name, -1)
                    .note(format!("skipped: {reason}"));
                ended.insert(job.name.clone(), RunStatus::Skipped);
                continue;
            }
            let context = JobContext {
                engine: engine.clone(),
                run: run.clone(),
                job: job.clone(),
                job_id,
                log: sink.writer(&job.name, -1),
                workspace: steps.workspace.to_path_buf(),
                env: step_env(run, job, kind, steps),
                uid: steps.uid,
                cancel: cancel.clone(),
                pack: (kind == ChangeKind::Mainline
                    && !spec.pipeline.artifact.is_empty()
                    && spec.pipeline.artifact_from.as_ref() == Some(&job.name))
                .then(|| crate::wire::Pack {
                    paths: spec.pipeline.artifact.clone(),
                    if_present: needed_paths(spec),
                }),
            };
            tasks.spawn(async move {
                let name = context.job.name.clone();
                (name, run_job(context).await)
            });
        }
        // Skipping a job may have freed others; start them before waiting.
        let ready =
            spec.pipeline.jobs.iter().any(|j| {
                !started.contains(&j.name) && j.needs.iter().all(|n| ended.contains_key(n))
            });
        if ready {
            continue;
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        let (name, (status, reason)) = match joined {
            Ok(done) => done,
            Err(e) => return (Some(format!("a job panicked: {e}")), ended),
        };
        if status != RunStatus::Success && status != RunStatus::Cancelled && first_failure.is_none()
        {
            first_failure = Some(format!(
                "job `{name}` failed: {}",
                reason.unwrap_or_default()
            ));
        }
        ended.insert(name, status);
    }
    (first_failure, ended)
}

pub(crate) struct JobContext {
    pub(crate) engine: Arc<Engine>,
    pub(crate) run: Run,
    pub(crate) job: Job,
    pub(crate) job_id: i64,
    pub(crate) log: LogWriter,
    workspace: std::path::PathBuf,
    env: Vec<(String, String)>,
    uid: Option<u32>,
    pub(crate) cancel: Cancel,
    /// What its agent packs and uploads, when the artifact comes from it.
    pub(crate) pack: Option<crate::wire::Pack>,
}

/// `spec` with every job that names no agent (`runs_on:`) sent to any
/// agent, when the server runs no job itself.
fn on_agents_by_default(mut spec: Spec, on_agents: bool) -> Spec {
    if on_agents {
        for job in &mut spec.pipeline.jobs {
            job.runs_on.get_or_insert_with(Default::default);
        }
    }
    spec
}

/// Runs one job: on an agent when it names labels (`runs_on:`), else here.
async fn run_job(cx: JobContext) -> (RunStatus, Option<String>) {
    let result = match cx.job.runs_on.clone() {
        Some(labels) => crate::remote::run_on_agent(&cx, labels).await,
        None => run_job_here(&cx).await,
    };
    let _ = cx
        .engine
        .store
        .set_job_status(cx.job_id, result.0, result.1.as_deref())
        .await;
    cx.log
        .note(format!("job `{}` ended {}", cx.job.name, result.0));
    result
}

/// Runs one job's steps in order on this host, within the job's timeout
/// and a job slot.
async fn run_job_here(cx: &JobContext) -> (RunStatus, Option<String>) {
    let store = &cx.engine.store;
    let Ok(_slot) = cx.engine.job_slots.clone().acquire_owned().await else {
        return (RunStatus::Error, Some("the engine is shutting down".into()));
    };
    let _ = store
        .set_job_status(cx.job_id, RunStatus::Running, None)
        .await;
    let steps = store
        .jobs(cx.run.id)
        .await
        .ok()
        .and_then(|jobs| jobs.into_iter().find(|j| j.id == cx.job_id))
        .map(|j| j.steps)
        .unwrap_or_default();
    let deadline = tokio::time::Instant::now() + cx.job.timeout;
    let mut result = (RunStatus::Success, None);
    for (index, step) in cx.job.steps.iter().enumerate() {
        let Some(record) = steps.get(index) else {
            break;
        };
        if result.0 != RunStatus::Success {
            let _ = store
                .set_step_status(record.id, RunStatus::Skipped, None)
                .await;
            continue;
        }
        let writer = cx.log.for_step(index as i64);
        writer.note(format!("$ {}", step.run.lines().next().unwrap_or("")));
        let _ = store
            .set_step_status(record.id, RunStatus::Running, None)
            .await;
        let began = Instant::now();
        let outcome = cx
            .engine
            .executor
            .run_step(StepRequest {
                run_id: cx.run.id,
                command: step.run.clone(),
                workdir: cx.workspace.clone(),
                env: cx
                    .env
                    .iter()
                    .cloned()
                    .chain([("SLUICE_STEP".to_string(), step.name.clone())])
                    .collect(),
                deadline,
                cancel: cx.cancel.token.clone(),
                log: writer.clone(),
                uid: cx.uid,
            })
            .await;
        if let (Some(uid), StepOutcome::Exited(126 | 127)) = (cx.uid, &outcome) {
            explain_unreachable_tools(&writer, uid, &cx.env);
        }
        let took = began.elapsed().as_millis();
        let (status, code, reason) = step_ended(&step.name, outcome, cx.job.timeout);
        writer.note(match &reason {
            Some(reason) => format!("{reason} ({took} ms)"),
            None => format!("ok ({took} ms)"),
        });
        let _ = store.set_step_status(record.id, status, code).await;
        result = (status, reason);
    }
    result
}

/// What a step's outcome makes of it: its status, exit code and the reason
/// shown when it did not succeed.
pub(crate) fn step_ended(
    name: &str,
    outcome: StepOutcome,
    timeout: std::time::Duration,
) -> (RunStatus, Option<i32>, Option<String>) {
    match outcome {
        StepOutcome::Exited(0) => (RunStatus::Success, Some(0), None),
        StepOutcome::Exited(code) => (
            RunStatus::Failure,
            Some(code),
            Some(format!("step `{name}` exited with {code}")),
        ),
        StepOutcome::Signalled(signal) => (
            RunStatus::Failure,
            None,
            Some(format!("step `{name}` was killed by signal {signal}")),
        ),
        StepOutcome::TimedOut => (
            RunStatus::Failure,
            None,
            Some(format!(
                "timed out after {}; its processes were killed",
                sluice_spec::format_duration(timeout)
            )),
        ),
        StepOutcome::Cancelled => (RunStatus::Cancelled, None, Some("cancelled".to_string())),
        StepOutcome::FailedToStart(e) => (
            RunStatus::Error,
            None,
            Some(format!("step `{name}` could not start: {e}")),
        ),
    }
}

/// A step that could not run its command (126, 127) as the steps' user may
/// have met a tool it cannot reach: name each directory of `PATH` it cannot
/// search, what stops it, and the ways out.
fn explain_unreachable_tools(log: &LogWriter, uid: u32, env: &[(String, String)]) {
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or("", |(_, v)| v.as_str());
    let blocked = sandbox::unreachable_dirs(path);
    if blocked.is_empty() {
        return;
    }
    for (dir, blocker) in &blocked {
        log.note(format!(
            "steps run as uid {uid}, which cannot reach {} on PATH: {} lets no other user in",
            dir.display(),
            blocker.display()
        ));
    }
    log.note(
        "hint: install the tool where every user can run it (/usr/local/bin, say), or start the \
         server with `--isolation none` to run steps as its own user (see docs/security.md)",
    );
}

/// The environment of every step of a job: the server's own (less its
/// `SLUICE_*` settings: its token, its database's address), the job's
/// `env`, the secrets the run gets, `HOME` when the steps have a user of
/// their own, and `SLUICE_*` about the run.
fn step_env(run: &Run, job: &Job, kind: ChangeKind, steps: &Steps<'_>) -> Vec<(String, String)> {
    let workspace = steps.workspace;
    let mut env: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| !k.starts_with("SLUICE_"))
        .collect();
    if steps.uid.is_some() {
        let home = step_home(workspace).to_string_lossy().into_owned();
        env.insert("HOME".into(), home);
        env.remove("USER");
        env.remove("LOGNAME");
    }
    env.extend(job.env.clone());
    env.extend(steps.secrets.clone());
    env.extend([
        ("CI".to_string(), "true".to_string()),
        ("SLUICE_RUN_ID".to_string(), run.id.to_string()),
        ("SLUICE_SHA".to_string(), run.sha.clone()),
        ("SLUICE_REF".to_string(), run.ref_name.clone()),
        ("SLUICE_BRANCH".to_string(), run.branch.clone()),
        ("SLUICE_CHANGE_KIND".to_string(), kind.as_str().to_string()),
        ("SLUICE_JOB".to_string(), job.name.clone()),
        ("SLUICE_REPO".to_string(), run.repo.clone()),
        (
            "SLUICE_WORKSPACE".to_string(),
            workspace.to_string_lossy().into_owned(),
        ),
    ]);
    env.into_iter().collect()
}

/// What a deployment needs from the commit besides the declared paths
/// (`sluice.yaml`, the rules, config templates, data scripts).
pub(crate) fn needed_paths(spec: &Spec) -> Vec<String> {
    let mut needed = vec![
        sluice_spec::SPEC_FILE.to_string(),
        sluice_spec::RULES_FILE.to_string(),
    ];
    if let Some(run) = &spec.run {
        needed.extend(run.config_files.iter().map(|f| f.template.clone()));
    }
    for env in &spec.environments {
        needed.extend(env.data.seed.iter().chain(env.data.scrub.iter()).cloned());
    }
    needed
}

/// What the artifact holds: the declared paths, and those of `needed` that
/// exist in the workspace.
pub(crate) fn deployable_paths(
    declared: &[String],
    needed: &[String],
    workspace: &std::path::Path,
) -> Vec<String> {
    let mut paths = declared.to_vec();
    for path in needed {
        if workspace.join(path).exists() && !paths.contains(path) {
            paths.push(path.clone());
        }
    }
    paths
}
