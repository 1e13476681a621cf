//! The agent: a process on a host that connects out to a server over HTTP,
//! registers its name, labels, cores and memory, heartbeats, claims the jobs
//! its labels match by long poll and runs them with the local executor. It
//! renews each job's lease while it runs, streams the log, and stops a job
//! the server cancels or took back. It needs no inbound port.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use reqwest::StatusCode;
use sluice_store::RunStatus;
use tokio_util::sync::CancellationToken;

use crate::artifact;
use crate::executor::{Executor, LocalExecutor, STEPS_OF, StepRequest};
use crate::logs::{LogItem, LogWriter};
use crate::run::{deployable_paths, hand_workspace_over, step_ended, step_home};
use crate::wire::{
    Claimed, Finished, Generation, Hello, LogBatch, MAX_LOG_LINES, Pack, Registered, Renewal,
    StepReport, WireLine,
};

/// How the agent was started.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The servers it reaches: the one given (`http://host:port`) first.
    pub servers: Arc<crate::servers::Servers>,
    pub token: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Where jobs' work trees go; the agent's own, not the server's.
    pub data_dir: PathBuf,
    /// Jobs run at once.
    pub jobs: usize,
    /// Whether steps run as a user of their repository's own (when the
    /// agent is root), as on the server.
    pub isolation: crate::sandbox::Isolation,
    /// The IP address its host's instances listen on; none: the one the
    /// server sees it connect from.
    pub address: Option<String>,
}

/// How long a claim waits at the server before asking again.
const CLAIM_WAIT: Duration = Duration::from_secs(20);
/// How often the log goes to the server.
const SEND_LOG_EVERY: Duration = Duration::from_millis(200);
/// The most bytes of log lines one report carries, well under the
/// server's body limit.
const MAX_LOG_BYTES: usize = 512 * 1024;

/// How an agent is told to stop: `drain` ends claiming and lets the jobs
/// it runs finish (an upgrade); `cancel` stops them too.
#[derive(Clone, Default)]
pub struct Stop {
    pub drain: CancellationToken,
    pub cancel: CancellationToken,
}

/// Runs the agent until it is stopped and its jobs are done: registers
/// (again and again while the server cannot be reached), then claims and
/// runs jobs.
pub async fn run(config: AgentConfig, stop: Stop) -> Result<()> {
    let shutdown = stop.drain.clone();
    std::fs::create_dir_all(config.data_dir.join("work"))
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let killed = crate::sandbox::kill_marked(&format!("{STEPS_OF}={}", config.data_dir.display()));
    if !killed.is_empty() {
        tracing::warn!(
            killed = killed.len(),
            "killed the steps a previous agent left running"
        );
    }
    let client = Client::new(&config)?;
    let registered = loop {
        match client.register(&config).await {
            Ok(registered) => break registered,
            Err(e) if e.downcast_ref::<Refused>().is_some() => return Err(e),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot register yet; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
            }
        }
    };
    tracing::info!(agent = %config.name, server = %config.servers.current(), "registered");
    let agent = Arc::new(Agent {
        client,
        executor: LocalExecutor::for_agent(&config.data_dir),
        work: config.data_dir.join("work"),
        renew: Duration::from_millis(registered.renew_ms.max(100)),
        isolation: config.isolation,
        shutdown: shutdown.clone(),
        cancel: stop.cancel.clone(),
    });
    let beating = tokio::spawn(heartbeat(agent.clone()));
    let workers: Vec<_> = (0..config.jobs)
        .map(|_| tokio::spawn(work(agent.clone())))
        .collect();
    // No job at all (the server's local agent): heard from until stopped.
    if workers.is_empty() {
        shutdown.cancelled().await;
    }
    for worker in workers {
        let _ = worker.await;
    }
    beating.abort();
    Ok(())
}

/// The server refused the agent for good (its token, its name).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(String);

struct Agent {
    client: Client,
    executor: LocalExecutor,
    work: PathBuf,
    renew: Duration,
    isolation: crate::sandbox::Isolation,
    /// No more claims; the jobs under way go on.
    shutdown: CancellationToken,
    /// The jobs under way stop too.
    cancel: CancellationToken,
}

/// Says the agent is alive until its workers are done (it is aborted then).
async fn heartbeat(agent: Arc<Agent>) {
    loop {
        if let Err(e) = agent.client.heartbeat().await {
            tracing::debug!(error = %format!("{e:#}"), "a heartbeat did not reach the server");
        }
        tokio::time::sleep(agent.renew).await;
    }
}

/// Claims a job, runs it, and again, until shutdown.
async fn work(agent: Arc<Agent>) {
    loop {
        let claimed = tokio::select! {
            claimed = agent.client.claim() => claimed,
            _ = agent.shutdown.cancelled() => return,
        };
        match claimed {
            Ok(Some(job)) => run_job(&agent, job).await,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot claim a job; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = agent.shutdown.cancelled() => return,
                }
            }
        }
    }
}

/// Runs a claimed job to its end and reports it.
async fn run_job(agent: &Agent, job: Claimed) {
    tracing::info!(job = job.job_id, name = %job.job, run = job.run_id, "claimed a job");
    let workdir = agent
        .work
        .join(format!("{}-{}", job.job_id, job.generation));
    let cancel = agent.cancel.child_token();
    let (log, lines) = LogWriter::channel(&job.job);
    let sender = tokio::spawn(send_log(
        agent.client.clone(),
        job.clone(),
        lines,
        cancel.clone(),
    ));
    let renewer = tokio::spawn(renew(
        agent.client.clone(),
        job.clone(),
        agent.renew,
        cancel.clone(),
    ));
    let uid = crate::sandbox::step_uid(&job.repo, agent.isolation);
    let (mut status, mut reason) = match prepare(&agent.client, &job, &workdir, uid, &log).await {
        Ok(()) => run_steps(agent, &job, &workdir, uid, &log, &cancel).await,
        Err(e) => (RunStatus::Error, Some(format!("{e:#}"))),
    };
    if let (RunStatus::Success, Some(pack)) = (status, &job.artifact)
        && let Err(e) = upload_artifact(agent, &job, pack, &workdir).await
    {
        (status, reason) = (RunStatus::Failure, Some(format!("artifact: {e:#}")));
    }
    log.note(format!("ended {status} on this agent"));
    drop(log);
    let _ = sender.await;
    renewer.abort();
    let finished = Finished {
        generation: job.generation,
        status,
        reason,
    };
    if let Err(e) = agent.client.finish(&job, &finished).await {
        tracing::warn!(job = job.job_id, error = %format!("{e:#}"), "the server refused the job's end");
    }
    let _ = tokio::fs::remove_dir_all(&workdir).await;
    let _ = tokio::fs::remove_dir_all(step_home(&workdir)).await;
}

/// Fetches the commit into the work tree and, when steps run as a user of
/// their own, gives it (and a fresh home) to that user.
async fn prepare(
    client: &Client,
    job: &Claimed,
    workdir: &Path,
    uid: Option<u32>,
    log: &LogWriter,
) -> Result<()> {
    fetch_source(client, job, workdir)
        .await
        .context("could not fetch the commit")?;
    if let Some(uid) = uid {
        hand_workspace_over(workdir, uid)
            .with_context(|| format!("could not give the work tree to uid {uid}"))?;
        log.note(format!(
            "steps run as uid {uid}, which owns the work tree and nothing else of the agent's"
        ));
    }
    Ok(())
}

/// Packs the artifact from the job's work tree, as the server would, and
/// uploads it by its sha256.
async fn upload_artifact(agent: &Agent, job: &Claimed, pack: &Pack, workdir: &Path) -> Result<()> {
    let paths = deployable_paths(&pack.paths, &pack.if_present, workdir);
    let (workdir, store) = (workdir.to_path_buf(), agent.work.join(".artifacts"));
    let packed =
        tokio::task::spawn_blocking(move || artifact::pack(&workdir, &paths, &store)).await??;
    let sent = agent
        .client
        .artifact(job, &packed.sha256, &packed.path)
        .await;
    let _ = tokio::fs::remove_file(&packed.path).await;
    sent
}

async fn fetch_source(client: &Client, job: &Claimed, workdir: &Path) -> Result<()> {
    let tar = client.source(job).await?;
    let workdir = workdir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&workdir)?;
        let mut archive = tar::Archive::new(std::io::Cursor::new(tar));
        // `unpack` refuses entries that would land outside the directory.
        archive.unpack(&workdir)
    })
    .await?
    .context("could not unpack the commit")
}

async fn run_steps(
    agent: &Agent,
    job: &Claimed,
    workdir: &Path,
    uid: Option<u32>,
    log: &LogWriter,
    cancel: &CancellationToken,
) -> (RunStatus, Option<String>) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(job.left_ms);
    let timeout = Duration::from_millis(job.timeout_ms);
    let mut env: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| !k.starts_with("SLUICE_"))
        .collect();
    if uid.is_some() {
        let home = step_home(workdir).display().to_string();
        env.insert("HOME".into(), home);
        env.remove("USER");
        env.remove("LOGNAME");
    }
    env.extend(job.env.clone());
    env.insert("SLUICE_WORKSPACE".into(), workdir.display().to_string());
    for (index, step) in job.steps.iter().enumerate() {
        let writer = log.for_step(index as i64);
        writer.note(format!("$ {}", step.run.lines().next().unwrap_or("")));
        let _ = agent
            .client
            .step(job, index, RunStatus::Running, None)
            .await;
        let began = std::time::Instant::now();
        let mut step_env = env.clone();
        step_env.insert("SLUICE_STEP".into(), step.name.clone());
        let outcome = agent
            .executor
            .run_step(StepRequest {
                run_id: job.run_id,
                command: step.run.clone(),
                workdir: workdir.to_path_buf(),
                env: step_env.into_iter().collect(),
                deadline,
                cancel: cancel.clone(),
                log: writer.clone(),
                uid,
            })
            .await;
        let (status, code, reason) = step_ended(&step.name, outcome, timeout);
        let took = began.elapsed().as_millis();
        writer.note(match &reason {
            Some(reason) => format!("{reason} ({took} ms)"),
            None => format!("ok ({took} ms)"),
        });
        let _ = agent.client.step(job, index, status, code).await;
        if status != RunStatus::Success {
            for rest in index + 1..job.steps.len() {
                let _ = agent.client.step(job, rest, RunStatus::Skipped, None).await;
            }
            return (status, reason);
        }
    }
    (RunStatus::Success, None)
}

/// Renews the lease while the job runs; cancels it when the server asks or
/// says the claim is no longer ours. A server out of reach is not a
/// reason to stop: it takes the job back if we stay silent too long.
async fn renew(client: Client, job: Claimed, every: Duration, cancel: CancellationToken) {
    loop {
        tokio::time::sleep(every).await;
        match client.renew(&job).await {
            Ok(Renewal { cancel: true }) => {
                tracing::info!(job = job.job_id, "the server cancelled the job");
                cancel.cancel();
            }
            Ok(_) => {}
            Err(e) if e.downcast_ref::<Refused>().is_some() => {
                tracing::warn!(job = job.job_id, error = %e, "the job is no longer ours; stopping it");
                cancel.cancel();
                return;
            }
            Err(e) => {
                tracing::debug!(job = job.job_id, error = %format!("{e:#}"), "a renewal did not reach the server")
            }
        }
    }
}

/// Sends the log in batches until the job's writers are gone.
async fn send_log(
    client: Client,
    job: Claimed,
    mut lines: tokio::sync::mpsc::UnboundedReceiver<LogItem>,
    cancel: CancellationToken,
) {
    let mut batch = Vec::new();
    let mut bytes = 0;
    loop {
        let open = tokio::select! {
            item = lines.recv() => match item {
                Some((_, step, stream, line)) => {
                    bytes += line.len() + 32;
                    batch.push(WireLine { step, stream: stream.to_string(), line });
                    if batch.len() < MAX_LOG_LINES && bytes < MAX_LOG_BYTES { continue; }
                    true
                }
                None => false,
            },
            _ = tokio::time::sleep(SEND_LOG_EVERY) => true,
        };
        if !batch.is_empty() {
            bytes = 0;
            let sent = std::mem::take(&mut batch);
            if let Err(e) = client.log(&job, sent).await
                && e.downcast_ref::<Refused>().is_some()
            {
                cancel.cancel();
            }
        }
        if !open {
            return;
        }
    }
}

/// The agent's HTTP side: every call names the agent, and a report names
/// the claim's generation.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    servers: Arc<crate::servers::Servers>,
    token: String,
    name: String,
}

impl Client {
    fn new(config: &AgentConfig) -> Result<Client> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(CLAIM_WAIT + Duration::from_secs(15))
            .build()?;
        Ok(Client {
            http,
            servers: config.servers.clone(),
            token: config.token.clone(),
            name: config.name.clone(),
        })
    }

    async fn register(&self, config: &AgentConfig) -> Result<Registered> {
        let hello = Hello {
            name: config.name.clone(),
            labels: config.labels.clone(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            memory_mb: memory_mb(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            address: config.address.clone(),
            jobs: u32::try_from(config.jobs).unwrap_or(u32::MAX),
        };
        let sent = self.post("/agents").json(&hello).send().await;
        Ok(self.answer(sent).await?.json().await?)
    }

    async fn heartbeat(&self) -> Result<()> {
        let path = format!("/agents/{}/heartbeat", self.name);
        self.answer(self.post(&path).send().await).await?;
        Ok(())
    }

    async fn claim(&self) -> Result<Option<Claimed>> {
        let path = format!(
            "/agents/{}/claim?wait_ms={}",
            self.name,
            CLAIM_WAIT.as_millis()
        );
        let response = self.answer(self.post(&path).send().await).await?;
        if response.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        Ok(Some(response.json().await?))
    }

    async fn renew(&self, job: &Claimed) -> Result<Renewal> {
        let path = self.job_path(job, "renew");
        let body = Generation {
            generation: job.generation,
        };
        Ok(self
            .answer(self.post(&path).json(&body).send().await)
            .await?
            .json()
            .await?)
    }

    async fn log(&self, job: &Claimed, lines: Vec<WireLine>) -> Result<()> {
        let body = LogBatch {
            generation: job.generation,
            lines,
        };
        let sent = self.post(&self.job_path(job, "log")).json(&body).send();
        self.answer(sent.await).await?;
        Ok(())
    }

    async fn step(
        &self,
        job: &Claimed,
        step: usize,
        status: RunStatus,
        exit_code: Option<i32>,
    ) -> Result<()> {
        let body = StepReport {
            generation: job.generation,
            step,
            status,
            exit_code,
        };
        let sent = self.post(&self.job_path(job, "steps")).json(&body).send();
        self.answer(sent.await).await?;
        Ok(())
    }

    /// Reports the end, again while the server is out of reach, for as long
    /// as a lease would last; a refusal is final.
    async fn finish(&self, job: &Claimed, finished: &Finished) -> Result<()> {
        let give_up = tokio::time::Instant::now() + Duration::from_millis(job.lease_ms);
        loop {
            let sent = self
                .post(&self.job_path(job, "finish"))
                .json(finished)
                .send()
                .await;
            match self.answer(sent).await {
                Ok(_) => return Ok(()),
                Err(e) if e.downcast_ref::<Refused>().is_some() => return Err(e),
                Err(e) if tokio::time::Instant::now() >= give_up => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    async fn artifact(&self, job: &Claimed, sha256: &str, file: &Path) -> Result<()> {
        let path = format!(
            "{}?generation={}&sha256={sha256}",
            self.job_path(job, "artifact"),
            job.generation
        );
        let file = tokio::fs::File::open(file).await?;
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        let sent = self
            .http
            .put(self.url(&path))
            .bearer_auth(&self.token)
            .body(body)
            .send()
            .await;
        self.answer(sent).await?;
        Ok(())
    }

    async fn source(&self, job: &Claimed) -> Result<Vec<u8>> {
        let path = format!(
            "{}?generation={}",
            self.job_path(job, "source"),
            job.generation
        );
        let sent = self
            .http
            .get(self.url(&path))
            .bearer_auth(&self.token)
            .send()
            .await;
        Ok(self.answer(sent).await?.bytes().await?.to_vec())
    }

    fn job_path(&self, job: &Claimed, what: &str) -> String {
        format!("/agents/{}/jobs/{}/{what}", self.name, job.job_id)
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.post(self.url(path)).bearer_auth(&self.token)
    }

    /// Where `path` of the API is, on the server reached now.
    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.servers.current())
    }

    /// The response when it succeeded; a refusal (4xx) as [`Refused`],
    /// with the server's message. A server out of reach or unavailable
    /// moves the next requests on to another.
    async fn answer(&self, sent: reqwest::Result<reqwest::Response>) -> Result<reqwest::Response> {
        let response = match sent {
            Ok(response) => response,
            Err(e) => {
                if let Some(url) = e.url().filter(|_| e.is_connect() || e.is_timeout()) {
                    self.servers.unreachable(url.as_str());
                }
                return Err(e.into());
            }
        };
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let url = response.url().to_string();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or("no message")
            .to_string();
        let given = self.servers.is_given(&url);
        if matches!(
            status,
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
        ) || (!given && matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN))
        {
            // A standby with no server acting behind it, or a learned
            // address that is not one of ours.
            self.servers.unreachable(&url);
        } else if matches!(
            status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::CONFLICT
        ) {
            // Not ours, or no longer: the token, the name, a claim taken over.
            return Err(Refused(format!("{status}: {message}")).into());
        }
        bail!("the server answered {status}: {message}")
    }
}

/// The host's memory in MiB, from `/proc/meminfo`.
fn memory_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib / 1024)
}
