//! The validated service definition: settings that cannot be wrong once built.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use crate::FreezeWindow;

/// A whole `sluice.yaml`, validated.
#[derive(Clone, Debug, Serialize)]
pub struct Spec {
    pub service: String,
    /// The branch whose changes are `mainline`; every other ref is under review.
    pub mainline: String,
    pub pipeline: Pipeline,
    pub run: Option<RunSpec>,
    /// In the order the file declares them.
    pub environments: Vec<Environment>,
    /// Which events go to which notification channels.
    pub notify: Vec<crate::NotifyRoute>,
}

impl Spec {
    pub fn job(&self, name: &str) -> Option<&Job> {
        self.pipeline.jobs.iter().find(|j| j.name == name)
    }

    pub fn environment(&self, name: &str) -> Option<&Environment> {
        self.environments.iter().find(|e| e.name == name)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Pipeline {
    /// In declaration order; `needs` only names jobs in this list and has no cycle.
    pub jobs: Vec<Job>,
    /// Workspace-relative paths packed into the artifact of a green mainline run.
    pub artifact: Vec<String>,
    /// The job whose workspace the artifact is packed from (`artifact.from`):
    /// on its agent, when it runs on one. `None`: the server's checkout.
    pub artifact_from: Option<String>,
    /// Which commits of a ref that moved become changes.
    pub changes: Changes,
}

/// Which commits become changes when a ref moves by several at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Changes {
    /// Each commit the ref's own history gained (first parents), oldest
    /// first, up to 100 a move.
    #[default]
    Every,
    /// Only the new tip.
    Tips,
}

#[derive(Clone, Debug, Serialize)]
pub struct Job {
    pub name: String,
    pub needs: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Kills the job's processes when exceeded; 60m unless the file says otherwise.
    pub timeout: Duration,
    pub steps: Vec<Step>,
    pub filter: JobFilter,
    /// The labels an agent must carry to run the job (`runs_on:`; `{}` for
    /// any agent); `None` runs it on the server's own host.
    pub runs_on: Option<BTreeMap<String, String>>,
    /// How many times a job lost with its agent is tried again elsewhere.
    pub retry_lost: u32,
}

pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(3600);
/// A job lost with its agent is tried once more on another, unless it says.
pub const DEFAULT_RETRY_LOST: u32 = 1;
/// The most retries a job may ask for after losing its agent.
pub const MAX_RETRY_LOST: u32 = 5;

/// Whether `text` may be an agent label's key or value: what a hostname, a
/// Kubernetes label or a shell word can carry without quoting.
pub fn is_label(text: &str) -> bool {
    (1..=63).contains(&text.len())
        && text
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-'))
}

#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub name: String,
    /// A shell command, run with `sh -c` in the workspace.
    pub run: String,
}

/// Which changes a job runs for: `if: mainline|review` and `branches` patterns.
#[derive(Clone, Debug, Default, Serialize)]
pub struct JobFilter {
    pub kind: Option<ChangeKind>,
    /// Branch names; a trailing `*` matches any suffix (`release/*`).
    pub branches: Vec<String>,
}

impl JobFilter {
    pub fn matches(&self, kind: ChangeKind, branch: &str) -> bool {
        let kind_ok = self.kind.is_none_or(|k| k == kind);
        let branch_ok = self.branches.is_empty()
            || self
                .branches
                .iter()
                .any(|pattern| match pattern.strip_suffix('*') {
                    Some(prefix) => branch.starts_with(prefix),
                    None => pattern == branch,
                });
        kind_ok && branch_ok
    }
}

/// Whether a change is on the mainline or under review (a branch or pull request).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Mainline,
    Review,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Mainline => "mainline",
            ChangeKind::Review => "review",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "mainline" => Some(ChangeKind::Mainline),
            "review" => Some(ChangeKind::Review),
            _ => None,
        }
    }
}

/// What `run.ready_timeout` is when not given.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// What `run.health.incident_after` is when not given (and for the
/// connect-only check of a service that declares none).
pub const INCIDENT_AFTER: Duration = Duration::from_secs(60);

/// How one instance starts, the same in every environment.
#[derive(Clone, Debug, Serialize)]
pub struct RunSpec {
    pub command: String,
    /// How long a new instance has to become healthy before its deployment fails.
    pub ready_timeout: Duration,
    pub health: Option<HealthCheck>,
    pub config_files: Vec<ConfigFile>,
    /// The repository's secrets each instance gets as environment variables.
    pub secrets: Vec<String>,
    /// The loopback ports instances are given (`run.ports: 20000-20999`);
    /// none: any free port from 10000 up to the kernel's ephemeral range.
    pub ports: Option<(u16, u16)>,
    /// The memory one instance needs, in MiB (`run.memory: 512MiB`): an
    /// instance is placed only on an agent's host with that much left.
    pub memory_mb: Option<u64>,
    /// The share of a host's cores one instance needs, in thousandths of a
    /// core (`run.cores: 0.5` is 500): placed as `memory_mb` is.
    pub millicores: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that make an instance healthy.
    pub healthy: u32,
    /// Consecutive failures that make it unhealthy.
    pub unhealthy: u32,
    /// How long an instance may stay unhealthy before Sluice opens an incident.
    pub incident_after: Duration,
}

impl HealthCheck {
    /// The check an instance gets when the service declares none: a TCP connect.
    pub fn connect_only() -> HealthCheck {
        HealthCheck {
            path: String::new(),
            interval: Duration::from_millis(500),
            timeout: Duration::from_millis(500),
            healthy: 1,
            unhealthy: 3,
            incident_after: INCIDENT_AFTER,
        }
    }
}

impl RunSpec {
    /// The run's ready timeout, or the default for a spec without `run`.
    pub fn ready_timeout_of(run: Option<&RunSpec>) -> Duration {
        run.map_or(READY_TIMEOUT, |r| r.ready_timeout)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ConfigFile {
    pub template: String,
    pub to: String,
}

/// Everything needed to run the service in one place: its five facets.
#[derive(Clone, Debug, Serialize)]
pub struct Environment {
    pub name: String,
    pub from: Option<String>,
    pub deploy: DeployPolicy,
    pub instances: u32,
    pub listen: SocketAddr,
    /// HTTPS at `listen`, when given.
    pub tls: Option<TlsSpec>,
    /// What the entry point's clients may take.
    pub limits: EntryLimits,
    pub config: BTreeMap<String, String>,
    pub data: DataSpec,
    pub strategy: Strategy,
    /// The agents' hosts its instances run on (`hosts:`); `None`: the
    /// server's own host.
    pub hosts: Option<HostsSpec>,
}

impl Environment {
    /// Whether its certificate comes from ACME (`listen.tls.acme`).
    pub fn acme(&self) -> bool {
        (self.tls.as_ref()).is_some_and(|t| matches!(t.certs, CertSource::Acme(_)))
    }
}

/// `hosts: { labels: { role: web }, spread: true }`: an environment's
/// instances run on the agents whose labels include every one named here.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HostsSpec {
    pub labels: BTreeMap<String, String>,
    /// Spread over as many matching hosts as there are (default), or kept
    /// together on one.
    pub spread: bool,
}

/// What an entry point's clients may take, and its instances to answer
/// (`listen: { limits: … }`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct EntryLimits {
    /// How long a connection may wait for, and send, its next request head.
    pub idle_timeout: Duration,
    /// How long a request's body may take to arrive (408).
    pub request_timeout: Duration,
    /// How long an instance has to start answering (504).
    pub answer_timeout: Duration,
    /// The largest request body in bytes (413).
    pub max_body: u64,
    /// The largest request head in bytes (431).
    pub max_header_bytes: u64,
    /// The most header fields in a request (431).
    pub max_headers: u32,
}

impl Default for EntryLimits {
    fn default() -> Self {
        EntryLimits {
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(60),
            answer_timeout: Duration::from_secs(30),
            max_body: 100 << 20,
            max_header_bytes: 64 << 10,
            max_headers: 100,
        }
    }
}

/// HTTPS at an environment's entry point.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TlsSpec {
    pub certs: CertSource,
    /// A plain-HTTP address that sends clients on to HTTPS (and answers
    /// ACME HTTP-01 challenges).
    pub redirect_from: Option<SocketAddr>,
}

/// Where the entry point's certificates come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CertSource {
    /// Files on the server's machine (absolute paths), read again when they
    /// change. The first is served when a client names no host or one none
    /// is valid for.
    Files(Vec<CertPaths>),
    /// Issued and renewed by an ACME server (RFC 8555).
    Acme(AcmeSpec),
}

/// `tls: { acme: { domains, email, directory, ca, challenge } }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AcmeSpec {
    pub domains: Vec<String>,
    pub email: Option<String>,
    /// The ACME server's directory URL.
    pub directory: String,
    /// A CA certificate (PEM) to trust the directory's HTTPS by, for a
    /// private or test ACME server.
    pub ca: Option<std::path::PathBuf>,
    pub challenge: AcmeChallenge,
}

/// Let's Encrypt's production directory, the default.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// How the ACME server checks that the entry point answers for a domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum AcmeChallenge {
    /// A plain-HTTP request on port 80: needs `redirect_from`.
    #[serde(rename = "http-01")]
    Http01,
    /// A TLS handshake on the HTTPS port itself.
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CertPaths {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// When releases enter an environment and what gates a promotion into it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DeployPolicy {
    /// Every green mainline release is deployed without asking.
    pub auto: bool,
    pub approvals: u32,
    pub approvers: Vec<String>,
    pub soak: Option<Duration>,
    #[serde(serialize_with = "freeze_expressions")]
    pub freeze: Vec<FreezeWindow>,
    pub require_jobs: Vec<String>,
}

fn freeze_expressions<S: serde::Serializer>(
    windows: &[FreezeWindow],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(windows.iter().map(|w| &w.expression))
}

#[derive(Clone, Debug, Serialize)]
pub struct DataSpec {
    /// A script run once, on the environment's first deployment.
    pub seed: Option<String>,
    /// Another environment whose data is copied through `scrub`.
    pub copy_from: Option<String>,
    pub scrub: Option<String>,
    /// How many snapshots of the data directory are kept.
    pub snapshots: u32,
    /// How long a seed or scrub script may run before it is killed.
    pub seed_timeout: Duration,
}

pub const DEFAULT_SNAPSHOTS: u32 = 5;
pub const DEFAULT_SEED_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    Rolling,
    BlueGreen,
    Ab(AbStrategy),
}

#[derive(Clone, Debug, Serialize)]
pub struct AbStrategy {
    /// Percentages of traffic for B, strictly increasing, ending at 100.
    pub steps: Vec<u8>,
    pub min_requests: u64,
    pub min_duration: Duration,
    pub max_step: Duration,
    pub sticky: Sticky,
    pub metrics: Vec<Metric>,
    /// Whether `X-Sluice-Variant` may force a variant.
    pub allow_force: bool,
    /// The smallest slowdown that rolls B back (the error rate has none).
    pub min_effect: MinEffect,
    /// Requests each instance serves before its latency is judged.
    pub warm_up_requests: u64,
    /// Whether B works on the environment's data or on a copy of it.
    pub data: AbData,
    /// What users do that counts, the first being the primary goal.
    pub goals: Vec<GoalSpec>,
    /// `rollout`: ramp to 100% while B is not worse (goals reported);
    /// `test`: ramp to the test's split, hold until the primary goal decides.
    pub mode: AbMode,
}

impl AbStrategy {
    /// The strategy as an experiment runs it: in `mode: test`, the steps
    /// below the test's split, then the split, where it holds.
    pub fn ramp(&self) -> AbStrategy {
        let mut ab = self.clone();
        if let AbMode::Test(test) = &ab.mode {
            ab.steps.retain(|step| *step < test.split);
            ab.steps.push(test.split);
        }
        ab
    }
}

/// A goal of an A/B experiment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GoalSpec {
    pub name: String,
    /// Reached by a request the entry point sees: `POST /checkout`.
    pub request: Option<GoalRequest>,
    /// A value goal (revenue): reports add up per user.
    pub value: bool,
}

impl GoalSpec {
    /// The goal as `sluice ab start --goal` takes it (see `parse_goal`).
    pub fn to_text(&self) -> String {
        match (&self.request, self.value) {
            (Some(r), _) => format!("{}={} {}", self.name, r.method, r.path),
            (None, true) => format!("{}:value", self.name),
            (None, false) => self.name.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GoalRequest {
    pub method: String,
    pub path: String,
    /// `2` for `2xx`; `None` for any status.
    pub status_class: Option<u16>,
}

/// How an experiment ends.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AbMode {
    Rollout,
    Test(AbTest),
}

/// `mode: test`: the split held, the smallest lift worth having, how long
/// to wait for a verdict, and whether B's win is promoted by itself.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AbTest {
    /// B's share while the test holds (percent).
    pub split: u8,
    /// A lift smaller than this either way is "no difference" (0.02: 2%).
    pub min_effect: f64,
    pub max_duration: Duration,
    /// Whether "B better" waits for a person to promote it.
    pub manual: bool,
}

impl Default for AbTest {
    fn default() -> Self {
        AbTest {
            split: 50,
            min_effect: 0.02,
            max_duration: Duration::from_secs(14 * 24 * 3600),
            manual: false,
        }
    }
}

/// What B's `DATA_DIR` is during an experiment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AbData {
    /// The environment's own, shared with A: B's writes (and migrations) are A's too.
    #[default]
    Shared,
    /// A copy made when the experiment starts, thrown away when it ends;
    /// promoted, B's release is then deployed on the environment's data.
    Copy,
}

/// B slower by at least `percent` and `ms` at p50 or p95.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct MinEffect {
    pub percent: f64,
    pub ms: f64,
}

impl Default for MinEffect {
    fn default() -> Self {
        MinEffect {
            percent: 10.0,
            ms: 2.0,
        }
    }
}

pub const DEFAULT_AB_STEPS: [u8; 5] = [1, 5, 25, 50, 100];

impl Default for AbStrategy {
    /// What `strategy: { ab: {} }` means.
    fn default() -> Self {
        AbStrategy {
            steps: DEFAULT_AB_STEPS.to_vec(),
            min_requests: 1000,
            min_duration: Duration::from_secs(60),
            max_step: Duration::from_secs(600),
            sticky: Sticky::Cookie,
            metrics: Metric::ALL.to_vec(),
            allow_force: false,
            min_effect: MinEffect::default(),
            warm_up_requests: 200,
            data: AbData::Shared,
            goals: Vec::new(),
            mode: AbMode::Rollout,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sticky {
    Cookie,
    Header(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    ErrorRate,
    LatencyP50,
    LatencyP95,
}

impl Metric {
    pub const ALL: [Metric; 3] = [Metric::ErrorRate, Metric::LatencyP50, Metric::LatencyP95];

    pub fn name(self) -> &'static str {
        match self {
            Metric::ErrorRate => "error_rate",
            Metric::LatencyP50 => "latency_p50",
            Metric::LatencyP95 => "latency_p95",
        }
    }
}
