//! What an agent and the server say about the instances on the agent's
//! host, as JSON: the agent reports what runs; the server answers what is
//! to run.

use serde::{Deserialize, Serialize};

/// An instance the server asks an agent to run. Its paths (`HOME`,
/// `SLUICE_CONFIG_DIR`, `DATA_DIR`) and the address it listens on are the
/// agent's own, added there.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Hosted {
    pub id: String,
    pub service: String,
    pub environment: String,
    /// A shell command line, run in the instance's files.
    pub command: String,
    /// Its environment variables, but the paths and the address.
    pub env: Vec<(String, String)>,
    /// The names of the secrets (`run.secrets`) among them: their values
    /// are added when the agent is answered, and never stored with the
    /// placement.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// The memory it needs on its host, in MiB, when declared (`run.memory`).
    #[serde(default)]
    pub memory_mb: Option<u64>,
    /// The thousandths of its host's cores it needs, when declared (`run.cores`).
    #[serde(default)]
    pub millicores: Option<u64>,
    /// What its host does with the environment's data for it.
    #[serde(default)]
    pub data: HostedData,
    /// Where it listens: the agent's address, at which the server reaches it.
    #[schema(value_type = String)]
    pub address: std::net::IpAddr,
    pub port: u16,
}

/// What a host does with an environment's data for an instance.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostedData {
    /// What fills the environment's data directory on a host the first
    /// time one of its instances starts there (`data.seed`).
    pub seed: Option<HostedSeed>,
    /// How many snapshots of the environment's data a host keeps: one is
    /// taken before the first instance of each release starts there
    /// (`data.snapshots`).
    pub snapshots: u32,
    /// The copy of the environment's data an experiment's B works on
    /// (`strategy.ab.data: copy`), by name (`experiment-N`): made on a host
    /// the first time one of B's instances starts there, dropped once none
    /// runs there.
    pub copy: Option<String>,
}

impl HostedData {
    /// For an instance of an environment with `data`; B's of experiment
    /// deployment `copy_for` when B works on a copy.
    pub fn of(data: &sluice_spec::DataSpec, copy_for: Option<i64>) -> HostedData {
        HostedData {
            seed: data.seed.as_ref().map(|script| HostedSeed {
                script: script.clone(),
                timeout_ms: data.seed_timeout.as_millis() as u64,
            }),
            snapshots: data.snapshots,
            copy: copy_for.map(|deployment| format!("experiment-{deployment}")),
        }
    }
}

/// A seed script of the release (`data.seed`) and how long it may run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostedSeed {
    /// A path in the release's files.
    pub script: String,
    pub timeout_ms: u64,
}

/// What an agent's host runs now, as the agent reports it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostReport {
    pub running: Vec<RunningInstance>,
    /// Its entry points, one per environment it serves.
    #[serde(default)]
    pub entries: Vec<EntryReport>,
    /// The environments' data it seeded, until the server has heard of it.
    #[serde(default)]
    pub seeded: Vec<DataSeeded>,
}

/// An environment's data seeded on a host, for the change log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DataSeeded {
    pub service: String,
    pub environment: String,
    /// The seed script.
    pub seed: String,
    /// The end of what it printed.
    pub printed: String,
    /// When, by the host's clock (ms): sent again after a lost answer,
    /// the same seed is told once.
    #[serde(default)]
    pub at: i64,
}

impl DataSeeded {
    /// Whether it is as much as an agent sends.
    pub fn bounded(&self) -> bool {
        self.seed.len() <= 4096 && self.printed.len() <= 64 * 1024
    }
}

/// One entry point on an agent's host: where it listens, which instances
/// it may still send requests to, and its windows of traffic not sent yet.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EntryReport {
    pub service: String,
    pub environment: String,
    #[schema(value_type = Option<String>)]
    pub address: Option<std::net::SocketAddr>,
    /// The version of the table it routes by.
    pub version: String,
    /// The instances it routes to or waits on (see `Route::holding`).
    pub holding: Vec<String>,
    /// The instances this host's own health check takes out, whatever
    /// the table says of them.
    #[serde(default)]
    pub failing: Vec<String>,
    /// The requests that failed most lately at it (from its access log),
    /// for the incidents the server opens.
    #[serde(default)]
    pub failures: Vec<crate::incidents::failures::FailureCount>,
    /// Its windows of the seconds from `from` (the first not sent before)
    /// to `through` (the first not sent now), at most [`MAX_WINDOWS`].
    pub from: u64,
    pub through: u64,
    #[schema(value_type = Vec<Object>)]
    pub windows: Vec<sluice_proxy::SecondWindow>,
    /// What its goals tracker counted and the server has not taken yet.
    #[serde(default)]
    pub goals: Option<GoalsReport>,
    /// It holds more than this report carries: answer at once.
    #[serde(default)]
    pub more: bool,
}

/// A host's goal events for the server's tracker `tracker`, numbered from
/// `first` (the events before were taken).
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GoalsReport {
    pub tracker: u64,
    pub first: u64,
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<sluice_proxy::goals::GoalEvent>,
}

/// The most windows of seconds one report carries; more wait for the next.
pub const MAX_WINDOWS: usize = 60;
/// The most goal events one report carries.
pub const MAX_GOAL_EVENTS: usize = 5000;
/// The most instances and entry points one report names.
pub const MAX_REPORTED: usize = 10_000;

impl HostReport {
    /// Refuses a report carrying more than an agent sends.
    pub fn check(&self) -> Result<(), String> {
        if self.running.len() > MAX_REPORTED || self.entries.len() > MAX_REPORTED {
            return Err(format!(
                "a report names at most {MAX_REPORTED} instances and {MAX_REPORTED} entry points"
            ));
        }
        self.entries.iter().try_for_each(EntryReport::check)
    }
}

impl EntryReport {
    /// Refuses a report of an entry point carrying more than an agent sends.
    pub fn check(&self) -> Result<(), String> {
        let events = self.goals.as_ref().map_or(0, |g| g.events.len());
        if self.holding.len() > MAX_REPORTED || self.failing.len() > MAX_REPORTED {
            return Err(format!(
                "the report of {}'s entry point names more than {MAX_REPORTED} instances",
                self.environment
            ));
        }
        use crate::incidents::failures::{MAX_REPORTED as MAX_FAILURES, MAX_REQUEST_CHARS};
        if self.failures.len() > MAX_FAILURES
            || self
                .failures
                .iter()
                .any(|f| f.request.len() > MAX_REQUEST_CHARS)
        {
            return Err(format!(
                "the report of {}'s entry point names more than {MAX_FAILURES} failed requests, or one longer than {MAX_REQUEST_CHARS} bytes",
                self.environment
            ));
        }
        if self.windows.len() > MAX_WINDOWS || events > MAX_GOAL_EVENTS {
            return Err(format!(
                "the report of {}'s entry point carries {} windows and {events} goal events; an agent sends at most {MAX_WINDOWS} and {MAX_GOAL_EVENTS}",
                self.environment,
                self.windows.len()
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunningInstance {
    pub id: String,
    /// Its process (group), once started.
    pub pid: Option<i64>,
    /// How often its process exited (or failed to start) so far.
    pub exits: u32,
    /// Its log's lines the server does not have yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<LogChunk>,
}

/// The most of one instance's log a report carries.
pub const MAX_CHUNK: usize = 64 * 1024;

/// Part of an instance's log: whole lines, from byte `from` of the log on
/// its host, `bytes` of it there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogChunk {
    pub from: u64,
    pub bytes: u64,
    pub text: String,
}

impl LogChunk {
    /// Whether it is as much as an agent sends (its text is at most three
    /// times its bytes: each byte not UTF-8 is shown as one `�`).
    pub fn bounded(&self) -> bool {
        self.bytes <= MAX_CHUNK as u64 && self.text.len() as u64 <= 3 * self.bytes
    }
}

/// The server's answer to a report: every instance the host is to run
/// (any other it runs, it stops).
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostWork {
    pub instances: Vec<Hosted>,
    /// The entry points the host is to serve; `None` while the server does
    /// not know yet (it is starting): those serving go on as they are.
    #[serde(default)]
    pub entries: Option<Vec<HostEntry>>,
    /// Every server sharing the database (`http://host:port`), which the
    /// agent turns to when the one it reaches is gone.
    #[serde(default)]
    pub servers: Vec<String>,
}

/// An environment's entry point on a host: the same routing table as the
/// server's entry point, at the host's address and the port of `listen:`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostEntry {
    pub service: String,
    pub environment: String,
    #[schema(value_type = String)]
    pub listen: std::net::SocketAddr,
    /// Which table this is: a report carrying another answers at once.
    pub version: String,
    #[schema(value_type = Object)]
    pub table: sluice_proxy::RouteTable,
    /// Each instance's health check, which the host's entry point runs
    /// too: it routes to an instance only when the table and its own
    /// check both say it is healthy.
    #[serde(default)]
    pub checks: std::collections::BTreeMap<String, HostCheck>,
    /// What the entry point holds clients to (`listen.limits`), as the
    /// server's does.
    #[serde(default)]
    pub limits: HostLimits,
    /// HTTPS, when `listen.tls` names certificate files.
    #[serde(default)]
    pub tls: Option<HostTls>,
}

/// HTTPS at a host's entry point: the certificates the server's entry point
/// serves, sent as PEM (read again from their files for every answer, so a
/// renewal reaches the hosts), and the port of `redirect_from`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostTls {
    /// Empty when the server could not read them now: the host keeps
    /// serving those it has.
    pub pairs: Vec<HostCertPair>,
    pub redirect_port: Option<u16>,
}

/// A certificate chain and its private key, as PEM.
#[derive(Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostCertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for HostCertPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostCertPair")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .finish_non_exhaustive()
    }
}

/// The most a certificate or key file sent to a host may weigh.
pub const MAX_PEM_BYTES: u64 = 1 << 20;

impl HostTls {
    /// Reads the certificate files `listen.tls` names: all of them, or
    /// none (a renewal half written, a file gone: the hosts keep theirs).
    pub fn read(paths: &[sluice_spec::CertPaths], redirect_port: Option<u16>) -> HostTls {
        let read = |path: &std::path::Path| -> std::io::Result<String> {
            use std::io::Read;
            let mut text = String::new();
            std::fs::File::open(path)?
                .take(MAX_PEM_BYTES)
                .read_to_string(&mut text)?;
            Ok(text)
        };
        let pairs: std::io::Result<Vec<HostCertPair>> = paths
            .iter()
            .map(|p| {
                Ok(HostCertPair {
                    cert_pem: read(&p.cert)?,
                    key_pem: read(&p.key)?,
                })
            })
            .collect();
        HostTls {
            pairs: pairs
                .inspect_err(|e| tracing::warn!(error = %e, "cannot read the certificate files to send to the hosts; they keep theirs"))
                .unwrap_or_default(),
            redirect_port,
        }
    }
}

/// An entry point's limits on clients (`listen.limits`, and the drain),
/// in milliseconds and bytes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostLimits {
    pub idle_ms: u64,
    pub request_body_ms: u64,
    pub answer_ms: u64,
    pub max_body: u64,
    pub max_header_bytes: u64,
    pub max_headers: u64,
    pub drain_ms: u64,
}

impl Default for HostLimits {
    fn default() -> HostLimits {
        HostLimits::of(&sluice_proxy::Limits::default())
    }
}

impl HostLimits {
    pub fn of(limits: &sluice_proxy::Limits) -> HostLimits {
        HostLimits {
            idle_ms: limits.idle.as_millis() as u64,
            request_body_ms: limits.request_body.as_millis() as u64,
            answer_ms: limits.answer.as_millis() as u64,
            max_body: limits.max_body,
            max_header_bytes: limits.max_header_bytes as u64,
            max_headers: limits.max_headers as u64,
            drain_ms: limits.drain.as_millis() as u64,
        }
    }

    /// The limits to apply, held to the bounds `listen.limits` allows (they
    /// came over the network).
    pub fn to_limits(&self) -> sluice_proxy::Limits {
        let ms = |ms: u64, most: u64| std::time::Duration::from_millis(ms.clamp(1000, most));
        sluice_proxy::Limits {
            idle: ms(self.idle_ms, 3_600_000),
            request_body: ms(self.request_body_ms, 3_600_000),
            answer: ms(self.answer_ms, 86_400_000),
            max_body: self.max_body.min(64 << 30),
            max_header_bytes: self.max_header_bytes.clamp(8 << 10, 1 << 20) as usize,
            max_headers: self.max_headers.clamp(1, 1000) as usize,
            drain: std::time::Duration::from_millis(self.drain_ms.min(3_600_000)),
        }
    }
}

/// An instance's health check (`run.health`), as a host runs it: an HTTP
/// GET of `path` (empty: a TCP connect) every `interval_ms`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostCheck {
    pub path: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub healthy: u32,
    pub unhealthy: u32,
}

impl HostCheck {
    pub fn of(check: &sluice_spec::HealthCheck) -> HostCheck {
        HostCheck {
            path: check.path.clone(),
            interval_ms: check.interval.as_millis() as u64,
            timeout_ms: check.timeout.as_millis() as u64,
            healthy: check.healthy,
            unhealthy: check.unhealthy,
        }
    }

    /// The check to run, its numbers held to sane bounds (it came over
    /// the network): every 50 ms to 1 h, a timeout up to the interval.
    pub fn to_check(&self) -> sluice_spec::HealthCheck {
        let interval = self.interval_ms.clamp(50, 3_600_000);
        // A path, never what would make the URL another host's.
        let path = match self.path.starts_with('/') && !self.path.contains(['@', ' ', '\\']) {
            true => self.path.clone(),
            false => String::new(),
        };
        sluice_spec::HealthCheck {
            path,
            interval: std::time::Duration::from_millis(interval),
            timeout: std::time::Duration::from_millis(self.timeout_ms.clamp(1, interval)),
            healthy: self.healthy.clamp(1, 100),
            unhealthy: self.unhealthy.clamp(1, 100),
            incident_after: sluice_spec::INCIDENT_AFTER,
        }
    }
}

/// A name the server sent that may become a directory on a host.
pub fn is_safe_name(name: &str) -> bool {
    sluice_spec::is_label(name) && name != "." && name != ".."
}

/// Environment variables an agent sets itself for each instance.
pub const AGENT_SETS: [&str; 6] = [
    "HOME",
    "SLUICE_CONFIG_DIR",
    "DATA_DIR",
    "SLUICE_HOME",
    "HOST",
    "PORT",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_cross_the_wire_unchanged_and_hostile_ones_are_held_to_bounds() {
        let limits = sluice_proxy::Limits::default();
        let crossed = HostLimits::of(&limits).to_limits();
        assert_eq!(HostLimits::of(&crossed), HostLimits::of(&limits));
        let hostile = HostLimits {
            idle_ms: 0,
            request_body_ms: u64::MAX,
            answer_ms: u64::MAX,
            max_body: u64::MAX,
            max_header_bytes: 0,
            max_headers: u64::MAX,
            drain_ms: u64::MAX,
        }
        .to_limits();
        assert_eq!(hostile.idle, std::time::Duration::from_secs(1));
        assert_eq!(hostile.request_body, std::time::Duration::from_secs(3600));
        assert_eq!(hostile.answer, std::time::Duration::from_secs(86_400));
        assert_eq!(hostile.max_body, 64 << 30);
        assert_eq!(hostile.max_header_bytes, 8 << 10);
        assert_eq!(hostile.max_headers, 1000);
        assert_eq!(hostile.drain, std::time::Duration::from_secs(3600));
    }
}
