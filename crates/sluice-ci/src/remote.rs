//! Jobs on agents, the server's side. A job with `runs_on:` is offered in
//! the store; an agent whose labels match claims it by long poll and holds
//! it under a lease it renews. The run waits for the job's end, and takes
//! the lease back from an agent silent past it: the job is `lost` on that
//! agent and offered again while `retry.lost` allows. Every report names
//! the claim's generation; one from an agent whose lease was taken over is
//! refused.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use sluice_spec::ChangeKind;
use sluice_store::{
    Agent, AgentHello, Expired, JobLease, LeaseState, RunStatus, StoreError, Topic,
};

use crate::run::{JobContext, given_secrets};
use crate::wire::{
    Claimed, Finished, Hello, LogBatch, MAX_LINE_BYTES, MAX_LOG_LINES, Registered, Renewal,
    StepReport, Upload, WireStep,
};
use crate::{Ci, Engine};

/// The longest an agent's claim waits for a job before it asks again.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// How often a waiting claim looks even without a wake-up.
const LOOK_EVERY: Duration = Duration::from_secs(2);
/// The most an artifact uploaded by an agent may weigh.
const MAX_ARTIFACT: u64 = 4 << 30;
/// How often a run waiting on an agent's job looks at its lease without a
/// wake-up: a lease that ran out is taken back within this much.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Why an agent's request was refused.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// What it sent is not valid.
    #[error("{0}")]
    Invalid(String),
    /// The agent name belongs to another token, or none registered it.
    #[error("{0}")]
    NotYours(String),
    /// It reports on a claim that is no longer its own.
    #[error("{0}")]
    Stale(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

impl Ci {
    /// Registers the agent `hello` names, under the token `token_id`.
    /// `peer` is the address it connected from, its address unless it
    /// names one.
    pub async fn register_agent(
        &self,
        token_id: &str,
        hello: &Hello,
        peer: Option<std::net::IpAddr>,
    ) -> Result<Registered, AgentError> {
        check_hello(hello)?;
        let address = match &hello.address {
            Some(address) => address.clone(),
            None => peer.map(|ip| ip.to_string()).unwrap_or_default(),
        };
        let agent = self
            .engine
            .store
            .register_agent(AgentHello {
                name: &hello.name,
                token_id,
                labels: &hello.labels,
                cores: i64::from(hello.cores),
                memory_mb: hello.memory_mb.min(i64::MAX as u64) as i64,
                version: &hello.version,
                address: &address,
                jobs: i64::from(hello.jobs),
            })
            .await
            .map_err(|e| match e {
                StoreError::Conflict(why) => AgentError::NotYours(why),
                e => e.into(),
            })?;
        tracing::info!(agent = %agent.name, labels = %agent.labels_json, "agent registered");
        Ok(Registered {
            agent: agent.name,
            lease_ms: self.lease_ms() as u64,
            renew_ms: renew_every(self.engine.config.agent_lease),
        })
    }

    /// The agent says it is alive.
    pub async fn agent_heartbeat(&self, token_id: &str, name: &str) -> Result<(), AgentError> {
        let agent = self.agent_of(token_id, name).await?;
        Ok(self.engine.store.agent_seen(agent.id).await?)
    }

    /// Waits up to `wait` for a job the agent's labels match, and claims it.
    pub async fn claim_job(
        &self,
        token_id: &str,
        name: &str,
        wait: Duration,
    ) -> Result<Option<Claimed>, AgentError> {
        let agent = self.agent_of(token_id, name).await?;
        let store = &self.engine.store;
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        loop {
            store.agent_seen(agent.id).await?;
            let woken = store.woken(Topic::JobOffered);
            for offered in store.offered_jobs(100).await? {
                if !agent.matches(&offered.labels()) {
                    continue;
                }
                if let Some(generation) = store.claim_job(&offered, &agent, self.lease_ms()).await?
                {
                    return self.claimed(&offered, &agent, generation).await.map(Some);
                }
            }
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep(LOOK_EVERY) => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(None),
                _ = self.engine.shutdown.cancelled() => return Ok(None),
            }
        }
    }

    /// Extends the agent's lease on a job; says whether to cancel it.
    pub async fn renew_lease(
        &self,
        token_id: &str,
        name: &str,
        job_id: i64,
        generation: i64,
    ) -> Result<Renewal, AgentError> {
        let agent = self.agent_of(token_id, name).await?;
        let store = &self.engine.store;
        store.agent_seen(agent.id).await?;
        match store
            .renew_lease(job_id, agent.id, generation, self.lease_ms())
            .await?
        {
            Some(cancel) => Ok(Renewal { cancel }),
            None => Err(stale(job_id, generation)),
        }
    }

    /// Lines of a job's log, written to its run's log as if run here.
    pub async fn job_log(
        &self,
        token_id: &str,
        name: &str,
        job_id: i64,
        batch: LogBatch,
    ) -> Result<(), AgentError> {
        if batch.lines.len() > MAX_LOG_LINES {
            return Err(AgentError::Invalid(format!(
                "{} lines in one report; send at most {MAX_LOG_LINES}",
                batch.lines.len()
            )));
        }
        self.holder(token_id, name, job_id, batch.generation)
            .await?;
        let Some(log) = self.engine.watched(job_id).map(|w| w.log) else {
            return Err(stale(job_id, batch.generation));
        };
        for line in batch.lines {
            let stream = match line.stream.as_str() {
                "stderr" => "stderr",
                "sluice" => "sluice",
                _ => "stdout",
            };
            let text: String = if line.line.len() > MAX_LINE_BYTES {
                line.line.chars().take(MAX_LINE_BYTES / 4).collect()
            } else {
                line.line
            };
            log.for_step(line.step.max(-1)).line(stream, text);
        }
        Ok(())
    }

    /// A step of the job began or ended on the agent.
    pub async fn job_step(
        &self,
        token_id: &str,
        name: &str,
        job_id: i64,
        report: StepReport,
    ) -> Result<(), AgentError> {
        if matches!(report.status, RunStatus::Queued | RunStatus::Lost) {
            return Err(AgentError::Invalid(format!(
                "a step cannot be {}: running, success, failure, cancelled, error or skipped",
                report.status
            )));
        }
        let lease = self
            .holder(token_id, name, job_id, report.generation)
            .await?;
        let store = &self.engine.store;
        let step = store
            .jobs(lease.run_id)
            .await?
            .into_iter()
            .find(|j| j.id == job_id)
            .and_then(|j| j.steps.into_iter().nth(report.step))
            .ok_or_else(|| {
                AgentError::Invalid(format!("job {job_id} has no step {}", report.step))
            })?;
        store
            .set_step_status(step.id, report.status, report.exit_code)
            .await?;
        Ok(())
    }

    /// The job ended on the agent.
    pub async fn job_finished(
        &self,
        token_id: &str,
        name: &str,
        job_id: i64,
        finished: Finished,
    ) -> Result<(), AgentError> {
        if !finished.status.is_finished() || finished.status == RunStatus::Skipped {
            return Err(AgentError::Invalid(format!(
                "a job cannot end {}: success, failure, cancelled, error or lost",
                finished.status
            )));
        }
        let agent = self.agent_of(token_id, name).await?;
        let store = &self.engine.store;
        let outcome = serde_json::to_string(&finished).map_err(anyhow::Error::from)?;
        let ended = store
            .finish_lease(
                job_id,
                agent.id,
                finished.generation,
                &outcome,
                finished.reason.as_deref(),
            )
            .await?;
        if !ended {
            return Err(stale(job_id, finished.generation));
        }
        if let Some(watched) = self.engine.watched(job_id) {
            watched.changed.notify_one();
        }
        Ok(())
    }

    /// The tree of the job's commit, as a tar.
    pub async fn job_source(
        &self,
        token_id: &str,
        name: &str,
        job_id: i64,
        generation: i64,
    ) -> Result<Vec<u8>, AgentError> {
        let lease = self.holder(token_id, name, job_id, generation).await?;
        let store = &self.engine.store;
        let run = store.run(lease.run_id).await?;
        let repo = store.repo_by_id(run.repo_id).await?;
        let source = self
            .engine
            .source_dir(&repo)
            .map_err(|e| AgentError::Other(anyhow::anyhow!("{e}")))?;
        Ok(crate::git::archive(&source, &run.sha).await?)
    }

    /// The artifact the holder packed, streamed in: stored by its sha256
    /// once it hashes to what the agent says, and kept as the job's.
    pub async fn job_artifact<B, E>(
        &self,
        token_id: &str,
        name: &str,
        job_id: i64,
        upload: Upload,
        mut body: impl futures::Stream<Item = Result<B, E>> + Unpin,
    ) -> Result<(), AgentError>
    where
        B: AsRef<[u8]>,
        E: std::fmt::Display,
    {
        use futures::StreamExt;
        use sha2::Digest;
        use tokio::io::AsyncWriteExt;
        if !crate::git::is_digest(&upload.sha256, 64) {
            return Err(AgentError::Invalid(
                "`sha256` is not 64 hex digits".to_string(),
            ));
        }
        self.holder(token_id, name, job_id, upload.generation)
            .await?;
        let store_dir = sluice_spec::Layout::new(&self.engine.config.data_dir).artifacts();
        tokio::fs::create_dir_all(&store_dir)
            .await
            .map_err(anyhow::Error::from)?;
        let temp = store_dir.join(format!(
            ".upload-{job_id}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let written = async {
            let mut file = tokio::fs::File::create(&temp).await?;
            let mut hasher = sha2::Sha256::new();
            let mut size: u64 = 0;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| anyhow::anyhow!("the upload broke off: {e}"))?;
                let chunk = chunk.as_ref();
                size += chunk.len() as u64;
                if size > MAX_ARTIFACT {
                    anyhow::bail!("the artifact is over {} GiB", MAX_ARTIFACT >> 30);
                }
                hasher.update(chunk);
                file.write_all(chunk).await?;
            }
            file.sync_all().await?;
            Ok::<_, anyhow::Error>((hex::encode(hasher.finalize()), size))
        }
        .await;
        let (sha256, size) = match written {
            Ok(done) => done,
            Err(e) => {
                let _ = tokio::fs::remove_file(&temp).await;
                return Err(AgentError::Invalid(format!("{e:#}")));
            }
        };
        if !sha256.eq_ignore_ascii_case(&upload.sha256) {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(AgentError::Invalid(format!(
                "the artifact hashes to {sha256}, not {}",
                upload.sha256
            )));
        }
        let path = sluice_spec::artifact_in(&store_dir, &sha256)
            .map_err(|e| AgentError::Invalid(e.to_string()))?;
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(anyhow::Error::from)?;
        }
        tokio::fs::rename(&temp, &path)
            .await
            .map_err(anyhow::Error::from)?;
        let store = &self.engine.store;
        crate::artifact::record(store, &sha256, size, &path).await?;
        let agent = self.agent_of(token_id, name).await?;
        if !store
            .set_lease_artifact(job_id, agent.id, upload.generation, &sha256)
            .await?
        {
            return Err(stale(job_id, upload.generation));
        }
        if let Some(watched) = self.engine.watched(job_id) {
            watched.log.note(format!(
                "artifact sha256:{sha256} ({size} bytes), packed on agent `{name}`"
            ));
        }
        Ok(())
    }

    /// Every agent that registered, and whether it is heard from.
    pub async fn agents(&self) -> Result<Vec<(Agent, bool)>, AgentError> {
        Ok(self.engine.agents_heard().await?)
    }

    fn lease_ms(&self) -> i64 {
        self.engine.config.agent_lease.as_millis() as i64
    }

    /// The agent `name`, when `token_id` registered it.
    async fn agent_of(&self, token_id: &str, name: &str) -> Result<Agent, AgentError> {
        let not_yours = || {
            AgentError::NotYours(format!(
                "no agent `{name}` is registered with this token; register it first (`POST /agents`)"
            ))
        };
        match self.engine.store.agent_named(name).await {
            Ok(agent) if agent.token_id == token_id => Ok(agent),
            Ok(_) | Err(StoreError::NotFound { .. }) => Err(not_yours()),
            Err(e) => Err(e.into()),
        }
    }

    /// The job's lease, when the agent holds it at `generation`.
    async fn holder(
        &self,
        token_id: &str,
        name: &str,
        job_id: i64,
        generation: i64,
    ) -> Result<JobLease, AgentError> {
        let agent = self.agent_of(token_id, name).await?;
        match self.engine.store.job_lease(job_id).await {
            Ok(lease) if lease.held_by(agent.id, generation) => Ok(lease),
            Ok(_) | Err(StoreError::NotFound { .. }) => Err(stale(job_id, generation)),
            Err(e) => Err(e.into()),
        }
    }

    /// The offer as the agent that claimed it gets it: with its generation
    /// and the secrets the run may see.
    async fn claimed(
        &self,
        offered: &JobLease,
        agent: &Agent,
        generation: i64,
    ) -> Result<Claimed, AgentError> {
        let store = &self.engine.store;
        let mut claimed: Claimed =
            serde_json::from_str(&offered.offer).map_err(anyhow::Error::from)?;
        let run = store.run(offered.run_id).await?;
        let kind = ChangeKind::parse(&run.kind).unwrap_or(ChangeKind::Review);
        let secrets = store.secrets(run.repo_id).await?;
        claimed.env.extend(given_secrets(kind, secrets));
        claimed.generation = generation;
        // Waiting for an agent counted against the job's timeout.
        let waited = (sluice_store::now_ms() - offered.created_at).max(0) as u64;
        claimed.left_ms = claimed.timeout_ms.saturating_sub(waited).max(1);
        store
            .set_job_status(offered.job_id, RunStatus::Running, None)
            .await?;
        if let Some(watched) = self.engine.watched(offered.job_id) {
            watched.log.note(format!(
                "claimed by agent `{}` (claim {generation})",
                agent.name
            ));
            watched.changed.notify_one();
        }
        Ok(claimed)
    }
}

/// How often an agent renews a lease of `lease`: three times a lease at
/// least, and every second at most, so that a cancel reaches the step
/// within a second.
fn renew_every(lease: Duration) -> u64 {
    (lease.as_millis() as u64 / 3).clamp(100, 1000)
}

fn stale(job_id: i64, generation: i64) -> AgentError {
    AgentError::Stale(format!(
        "claim {generation} of job {job_id} is no longer yours: its lease ran out and was taken over, or the job ended; stop it"
    ))
}

fn check_hello(hello: &Hello) -> Result<(), AgentError> {
    let invalid = |why: String| Err(AgentError::Invalid(why));
    if let Some(address) = &hello.address
        && !address
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| !ip.is_unspecified())
    {
        return invalid(format!(
            "`{}` is not an address instances can be reached at: give the host's IP address",
            address.chars().take(80).collect::<String>().escape_debug()
        ));
    }
    if !sluice_spec::is_label(&hello.name) {
        return invalid(format!(
            "`{}` is not a valid agent name: use 1 to 63 letters, digits, `.`, `_` or `-`",
            hello
                .name
                .chars()
                .take(80)
                .collect::<String>()
                .escape_debug()
        ));
    }
    if hello.labels.len() > 32 {
        return invalid(format!(
            "{} labels; an agent may carry 32",
            hello.labels.len()
        ));
    }
    if let Some((k, v)) = hello
        .labels
        .iter()
        .find(|(k, v)| !sluice_spec::is_label(k) || !sluice_spec::is_label(v))
    {
        return invalid(format!(
            "label `{}={}` is not valid: keys and values are 1 to 63 letters, digits, `.`, `_` or `-`",
            k.chars().take(80).collect::<String>().escape_debug(),
            v.chars().take(80).collect::<String>().escape_debug()
        ));
    }
    if hello.cores == 0 || hello.cores > 65_536 || hello.version.len() > 64 {
        return invalid("`cores` is 1 to 65536 and `version` at most 64 bytes".to_string());
    }
    Ok(())
}

/// Runs one job on an agent: offers it, waits for its end, takes the lease
/// back from an agent silent past it.
pub(crate) async fn run_on_agent(
    cx: &JobContext,
    labels: BTreeMap<String, String>,
) -> (RunStatus, Option<String>) {
    let engine = &cx.engine;
    let store = &engine.store;
    let offer = Claimed {
        job_id: cx.job_id,
        generation: 0,
        run_id: cx.run.id,
        repo: cx.run.repo.clone(),
        sha: cx.run.sha.clone(),
        job: cx.job.name.clone(),
        steps: cx
            .job
            .steps
            .iter()
            .map(|s| WireStep {
                name: s.name.clone(),
                run: s.run.clone(),
            })
            .collect(),
        env: agent_env(cx),
        timeout_ms: cx.job.timeout.as_millis() as u64,
        left_ms: cx.job.timeout.as_millis() as u64,
        lease_ms: engine.config.agent_lease.as_millis() as u64,
        renew_ms: renew_every(engine.config.agent_lease),
        artifact: cx.pack.clone(),
    };
    let offer = serde_json::to_string(&offer).unwrap_or_default();
    let shown: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if let Err(e) = store
        .offer_job(cx.job_id, cx.run.id, &labels, &offer, cx.job.retry_lost)
        .await
    {
        return (
            RunStatus::Error,
            Some(format!("could not offer the job: {e}")),
        );
    }
    let changed = Arc::new(Notify::new());
    engine.agent_jobs.lock().unwrap().insert(
        cx.job_id,
        Watched {
            log: cx.log.clone(),
            changed: changed.clone(),
        },
    );
    cx.log.note(format!(
        "offered to agents with labels {}",
        if shown.is_empty() {
            "(any)".to_string()
        } else {
            shown.join(", ")
        }
    ));
    let online = engine
        .agents_heard()
        .await
        .unwrap_or_default()
        .into_iter()
        .any(|(a, online)| online && a.jobs > 0 && a.matches(&labels));
    if !online {
        cx.log.note(
            "no agent with these labels that runs jobs is online; the job waits for one, within its timeout",
        );
    }
    store.wake(Topic::JobOffered).await;
    let ended = watch(cx, &changed).await;
    engine.agent_jobs.lock().unwrap().remove(&cx.job_id);
    ended
}

/// Waits for the job's end, taking the lease back when it runs out and
/// passing a cancel or the job's timeout on.
async fn watch(cx: &JobContext, changed: &Notify) -> (RunStatus, Option<String>) {
    let store = &cx.engine.store;
    let timeout = cx.job.timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut cancel_sent = false;
    loop {
        let woken = changed.notified();
        let lease = match store.job_lease(cx.job_id).await {
            Ok(lease) => lease,
            Err(e) => {
                return (
                    RunStatus::Error,
                    Some(format!("the job's lease is gone: {e}")),
                );
            }
        };
        match lease.state {
            LeaseState::Ended => return outcome(&lease),
            LeaseState::Claimed
                if lease
                    .lease_until
                    .is_some_and(|t| t < sluice_store::now_ms()) =>
            {
                take_back(cx, &lease).await;
                continue;
            }
            _ => {}
        }
        // Once claimed, the agent keeps the job's deadline itself (what
        // was left of it at the claim) and reports a timeout as a failure.
        let waiting = lease.state == LeaseState::Offered;
        let asked = if cx.cancel.token.is_cancelled() {
            Some(RunStatus::Cancelled)
        } else if waiting && tokio::time::Instant::now() >= deadline {
            Some(RunStatus::Failure)
        } else {
            None
        };
        if let (Some(status), false) = (asked, cancel_sent) {
            cancel_sent = true;
            let reason = match status {
                RunStatus::Cancelled => "cancelled".to_string(),
                _ => format!(
                    "timed out after {} waiting for an agent",
                    sluice_spec::format_duration(timeout)
                ),
            };
            let ending = serde_json::to_string(&Finished {
                generation: lease.generation,
                status,
                reason: Some(reason),
            })
            .unwrap_or_default();
            let _ = store.cancel_job_lease(cx.job_id, &ending).await;
            continue;
        }
        tokio::select! {
            _ = woken => {}
            _ = tokio::time::sleep(WATCH_EVERY) => {}
            _ = cx.cancel.token.cancelled(), if !cancel_sent => {}
        }
    }
}

/// The lease ran out: the job is lost on its agent, and offered again
/// while retries are left and nobody cancelled it.
async fn take_back(cx: &JobContext, lease: &JobLease) {
    let cancelled = lease.cancel_asked != 0;
    let store = &cx.engine.store;
    let agent = store
        .agents()
        .await
        .unwrap_or_default()
        .into_iter()
        .find(|a| Some(a.id) == lease.agent_id)
        .map_or_else(|| "?".to_string(), |a| a.name);
    let reason = format!(
        "lost: agent `{agent}` was silent past its lease ({})",
        sluice_spec::format_duration(cx.engine.config.agent_lease)
    );
    let ending = serde_json::to_string(&Finished {
        generation: lease.generation,
        status: if cancelled {
            RunStatus::Cancelled
        } else {
            RunStatus::Lost
        },
        reason: Some(reason.clone()),
    })
    .unwrap_or_default();
    match store
        .expire_lease(cx.job_id, lease.generation, &reason, &ending, !cancelled)
        .await
    {
        Ok(Some(Expired::OfferedAgain)) => {
            cx.log.note(format!(
                "{reason}; offered again ({} more retr{} if lost)",
                lease.lost_left - 1,
                if lease.lost_left - 1 == 1 { "y" } else { "ies" }
            ));
            tracing::warn!(job = cx.job_id, %agent, "a job was lost with its agent; offered again");
            let _ = store
                .set_job_status(cx.job_id, RunStatus::Queued, Some(&reason))
                .await;
            store.wake(Topic::JobOffered).await;
        }
        Ok(Some(Expired::Lost)) => {
            cx.log.note(format!(
                "{reason}; no retry is left (`retry: {{ lost: N }}`)"
            ));
            tracing::warn!(job = cx.job_id, %agent, "a job was lost with its agent");
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(job = cx.job_id, error = %e, "could not take a lease back"),
    }
}

fn outcome(lease: &JobLease) -> (RunStatus, Option<String>) {
    match lease
        .outcome
        .as_deref()
        .and_then(|o| serde_json::from_str::<Finished>(o).ok())
    {
        Some(finished) => (finished.status, finished.reason),
        None => (
            RunStatus::Error,
            Some("the job ended with no outcome".to_string()),
        ),
    }
}

/// What an agent's steps get from the server: the job's `env` and the
/// run's `SLUICE_*` facts; never the server's own environment. The
/// agent adds its own environment, and the secrets come at the claim.
fn agent_env(cx: &JobContext) -> BTreeMap<String, String> {
    let kind = ChangeKind::parse(&cx.run.kind).unwrap_or(ChangeKind::Review);
    let mut env = cx.job.env.clone();
    env.extend([
        ("CI".to_string(), "true".to_string()),
        ("SLUICE_RUN_ID".to_string(), cx.run.id.to_string()),
        ("SLUICE_SHA".to_string(), cx.run.sha.clone()),
        ("SLUICE_REF".to_string(), cx.run.ref_name.clone()),
        ("SLUICE_BRANCH".to_string(), cx.run.branch.clone()),
        ("SLUICE_CHANGE_KIND".to_string(), kind.as_str().to_string()),
        ("SLUICE_JOB".to_string(), cx.job.name.clone()),
        ("SLUICE_REPO".to_string(), cx.run.repo.clone()),
    ]);
    env
}

/// A job of this server's runs on an agent: its log, and what wakes its
/// run when the job is claimed or ends. Wake-ups go to this job's run only:
/// a wake-up every waiting run heard cost the server ten times the CPU a
/// run with 1500 jobs waiting for one agent (docs/benchmarks.md).
#[derive(Clone)]
pub(crate) struct Watched {
    log: crate::logs::LogWriter,
    changed: Arc<Notify>,
}

impl Engine {
    /// Every agent that registered, and whether it was heard from within
    /// its lease.
    async fn agents_heard(&self) -> Result<Vec<(Agent, bool)>, StoreError> {
        let now = sluice_store::now_ms();
        let lease = self.config.agent_lease.as_millis() as i64;
        Ok(self
            .store
            .agents()
            .await?
            .into_iter()
            .map(|a| {
                let online = now - a.seen_at <= lease;
                (a, online)
            })
            .collect())
    }

    fn watched(&self, job_id: i64) -> Option<Watched> {
        self.agent_jobs.lock().unwrap().get(&job_id).cloned()
    }

    /// Ends the leases of runs a previous server left running: their agents
    /// are told to stop at their next renewal.
    pub(crate) async fn end_leases_of(&self, runs: &[i64]) {
        for run in runs {
            let Ok(jobs) = self.store.jobs(*run).await else {
                continue;
            };
            let ending = serde_json::to_string(&Finished {
                generation: 0,
                status: RunStatus::Error,
                reason: Some("interrupted: the server stopped".to_string()),
            })
            .unwrap_or_default();
            for job in jobs {
                let _ = self.store.end_job_lease(job.id, &ending).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(name: &str, labels: &[(&str, &str)], cores: u32) -> Hello {
        Hello {
            name: name.to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            cores,
            memory_mb: 1024,
            version: "0.1.0".to_string(),
            address: None,
            jobs: 1,
        }
    }

    #[test]
    fn a_hello_is_checked_at_the_edge() {
        let long = "x".repeat(64);
        let many: Vec<(String, String)> = (0..33).map(|i| (format!("k{i}"), "v".into())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let table: [(Hello, Option<&str>); 8] = [
            (hello("builder-1", &[("role", "build")], 2), None),
            (hello("a.b_c-9", &[], 1), None),
            (hello("../etc", &[], 1), Some("not a valid agent name")),
            (hello("", &[], 1), Some("not a valid agent name")),
            (hello(&long, &[], 1), Some("not a valid agent name")),
            (
                hello("a", &[("role", "web; rm -rf /")], 1),
                Some("label `role=web; rm -rf /`"),
            ),
            (hello("a", &many, 1), Some("33 labels")),
            (hello("a", &[], 0), Some("`cores` is 1 to 65536")),
        ];
        for (hello, refused) in table {
            match (check_hello(&hello), refused) {
                (Ok(()), None) => {}
                (Err(e), Some(why)) => assert!(e.to_string().contains(why), "{e}"),
                (result, _) => panic!("{}: {result:?}", hello.name),
            }
        }
    }

    #[test]
    fn a_job_s_outcome_is_what_its_agent_reported() {
        let mut lease = JobLease {
            job_id: 1,
            run_id: 1,
            labels_json: "{}".into(),
            offer: "{}".into(),
            state: LeaseState::Ended,
            agent_id: None,
            generation: 2,
            lease_until: None,
            lost_left: 0,
            cancel_asked: 0,
            outcome: Some(r#"{"generation":2,"status":"lost","reason":"agent gone"}"#.into()),
            artifact: None,
            created_at: 0,
        };
        assert_eq!(
            outcome(&lease),
            (RunStatus::Lost, Some("agent gone".into()))
        );
        lease.outcome = Some("not json".into());
        assert_eq!(outcome(&lease).0, RunStatus::Error);
    }
}
