//! The command-line surface: every command, flag and environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Change management in one binary: CI, CD, A/B rollouts and the lessons of incidents."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone)]
pub struct Global {
    /// The server's address, for client commands.
    #[arg(
        long,
        global = true,
        env = "SLUICE_SERVER",
        default_value = "http://127.0.0.1:7300"
    )]
    pub server: String,
    /// An API token; defaults to the data directory's initial admin token.
    #[arg(long, global = true, env = "SLUICE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Where the server keeps its state.
    #[arg(
        long,
        global = true,
        env = "SLUICE_DATA_DIR",
        default_value = ".sluice"
    )]
    pub data_dir: PathBuf,
}

#[derive(Subcommand)]
pub enum Command {
    /// Watch a change travel from commit to an A/B experiment in prod, on a sample service.
    Demo(Demo),
    /// Write a starting sluice.yaml for an existing repository.
    Init {
        /// The repository; the current directory by default.
        dir: Option<PathBuf>,
        /// Replace an existing sluice.yaml.
        #[arg(long)]
        force: bool,
    },
    /// Run the server: API, CI engine and change detection.
    ///
    /// SIGTERM or Ctrl-C stops it with its environments; SIGUSR2 hands over
    /// to the next server (an upgrade): the environments keep running and
    /// serving.
    Serve(Serve),
    /// Keep the entry points' listening sockets through a crash of the
    /// server (started by `sluice serve` itself).
    #[command(hide = true)]
    KeepSockets {
        #[arg(long)]
        socket: std::path::PathBuf,
    },
    /// Run an agent on this host: it connects out to --server with an agent
    /// token (--token), and runs the jobs whose `runs_on:` its labels match.
    Agent(AgentArgs),
    /// Run the load balancer alone, in front of fixed backends (for benchmarks and trials).
    Proxy {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// A backend of variant A, HOST:PORT; repeat for more.
        #[arg(long = "a", required = true)]
        a: Vec<SocketAddr>,
        /// A backend of variant B, HOST:PORT; repeat for more.
        #[arg(long = "b")]
        b: Vec<SocketAddr>,
        /// B's share of users, in percent.
        #[arg(long, default_value_t = 0.0)]
        weight: f64,
        /// Serve HTTPS with this certificate chain (PEM), with --tls-key.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The certificate's private key (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Count a goal per user while B has a share: `NAME` (reported by
        /// header or `/_sluice/goal`) or `NAME=METHOD /path` (a request
        /// answered 2xx). Repeat for more.
        #[arg(long = "goal")]
        goals: Vec<String>,
    },
    /// Check a sluice.yaml and print every error in it.
    Validate {
        /// The file to check.
        #[arg(default_value = "sluice.yaml")]
        file: PathBuf,
    },
    /// Manage API tokens (admin).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage watched repositories.
    #[command(subcommand)]
    Repo(RepoCommand),
    /// Manage a repository's secrets, given to its steps as environment variables (admin).
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Notification channels (chat, webhooks, email) and the messages sent to them.
    #[command(subcommand)]
    Channel(ChannelCommand),
    /// Tell the server that refs moved in a repository (what the git hook runs).
    Notify {
        #[arg(long)]
        repo: String,
    },
    /// List runs, newest first.
    Runs {
        #[arg(long)]
        repo: Option<String>,
        /// queued, running, success, failure, cancelled or error.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 30)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Show a run: its change, jobs, steps, exit codes, durations and artifact.
    Show {
        run: i64,
        #[arg(long)]
        json: bool,
    },
    /// Print a run's log.
    Logs {
        run: i64,
        /// Keep printing new lines until the run ends.
        #[arg(short, long)]
        follow: bool,
    },
    /// Cancel a queued or running run.
    Cancel { run: i64 },
    /// The agents that registered: labels, cores, memory, last heard from.
    Agents {
        #[arg(long)]
        json: bool,
    },
    /// Services × environments: release, health, instances, pins, pending promotions, drift.
    Status {
        #[arg(long)]
        service: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Releases, newest first.
    Releases {
        #[arg(long)]
        service: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Deployments, newest first.
    Deployments {
        #[arg(long)]
        service: Option<String>,
        #[arg(long)]
        env: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Ask to move a release into an environment; its gates decide when.
    Promote {
        service: String,
        #[arg(long)]
        to: String,
        /// vN; by default the release running in the `from` environment.
        #[arg(long, value_parser = parse_release)]
        release: Option<i64>,
        #[arg(long)]
        json: bool,
    },
    /// Promotions with their gates (open ones unless --all).
    Promotions {
        #[arg(long)]
        service: Option<String>,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Approve a pending promotion (approver; not your own).
    Approve { id: i64 },
    /// Reject a pending promotion (approver).
    Reject {
        id: i64,
        #[arg(long)]
        reason: String,
    },
    /// Let a promotion through a freeze window (admin); the reason is logged.
    Override {
        id: i64,
        #[arg(long)]
        reason: String,
    },
    /// Deploy the previous release (or --to vN) and pin the environment.
    Rollback {
        service: String,
        env: String,
        #[arg(long, value_parser = parse_release)]
        to: Option<i64>,
    },
    /// Let automation deploy to a pinned environment again.
    Unpin { service: String, env: String },
    /// Two environments side by side on all five facets, with drift.
    Diff {
        service: String,
        a: String,
        b: String,
        #[arg(long)]
        json: bool,
    },
    /// Instances of environments.
    #[command(subcommand)]
    Instance(InstanceCommand),
    /// A/B experiments: B beside A, ramped while the analysis says it is not worse.
    #[command(subcommand)]
    Ab(AbCommand),
    /// Incidents: what broke, its timeline and suspect changes.
    #[command(subcommand)]
    Incident(IncidentCommand),
    /// An incident's postmortem, in Markdown.
    #[command(subcommand)]
    Postmortem(PostmortemCommand),
    /// Rules: lessons the pipeline enforces on every later change.
    #[command(subcommand)]
    Rule(RuleCommand),
    /// What changed: the change log, newest first.
    Changes {
        #[arg(long)]
        service: Option<String>,
        #[arg(long)]
        env: Option<String>,
        /// A kind prefix, such as `run.` or `repo.added`.
        #[arg(long)]
        kind: Option<String>,
        /// How far back, such as 30m, 1h or 2d.
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct Demo {
    /// Where the repository and the data go; a temporary directory by default.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// End after the story instead of staying up to explore.
    #[arg(long)]
    pub exit: bool,
    /// How fast the story goes: 1 (about three minutes), 2, 5 … or `max`.
    #[arg(long, default_value = "1", value_parser = parse_speed)]
    pub speed: Speed,
    /// The address of the API and the dashboard.
    #[arg(long, default_value = "127.0.0.1:7300")]
    pub listen: SocketAddr,
    /// Send the team's notifications here (a Slack, Teams, Discord or
    /// Mattermost webhook) instead of to a local receiver.
    #[arg(long)]
    pub notify_url: Option<String>,
    /// The kind of `--notify-url`: slack, mattermost, teams, discord or webhook.
    #[arg(long, default_value = "slack")]
    pub notify_kind: String,
}

/// The demo's pace: pauses are divided by it; `max` has none, and tighter
/// experiment steps with more traffic.
#[derive(Clone, Copy, Debug)]
pub struct Speed(pub f64);

impl Speed {
    pub fn is_max(self) -> bool {
        self.0.is_infinite()
    }

    /// A pause of `seconds` at this speed; none at `max`.
    pub fn scale(self, seconds: f64) -> Option<std::time::Duration> {
        (!self.is_max()).then(|| std::time::Duration::from_secs_f64(seconds / self.0))
    }

    /// `min_requests` and `min_duration` of the experiment's steps.
    pub fn analysis(self) -> (u32, &'static str) {
        if self.is_max() {
            (10, "1s")
        } else {
            (15, "3s")
        }
    }

    pub fn requests_per_second(self) -> f64 {
        if self.is_max() { 200.0 } else { 100.0 }
    }
}

fn parse_speed(text: &str) -> Result<Speed, String> {
    if text == "max" {
        return Ok(Speed(f64::INFINITY));
    }
    match text.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(Speed(v)),
        _ => Err(format!(
            "`{text}` is not a speed; write a number above 0, such as 2, or `max`"
        )),
    }
}

#[derive(Args)]
pub struct Serve {
    /// The address of the API.
    #[arg(long, env = "SLUICE_LISTEN", default_value = "127.0.0.1:7300")]
    pub listen: SocketAddr,
    /// postgres://… to keep state in PostgreSQL; SQLite under the data directory otherwise.
    #[arg(long, env = "SLUICE_DATABASE")]
    pub database: Option<String>,
    /// How often every repository is rescanned (remotes, missed hooks).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub poll_interval: std::time::Duration,
    /// Jobs that may run at once; the number of cores by default.
    #[arg(long)]
    pub parallelism: Option<usize>,
    /// Keep each run's workspace after it ends, for debugging.
    #[arg(long)]
    pub keep_workspaces: bool,
    /// `user`: when the server runs as root, each repository's steps and
    /// each environment's instances run as a user of their own that can read
    /// nothing of the server's. `none`: they run as the server's own user and
    /// can read its database and tokens (only for repositories whose every
    /// committer you trust).
    #[arg(long, env = "SLUICE_ISOLATION", default_value = "user", value_parser = ["user", "none"])]
    pub isolation: String,
    /// The most of each run's log that is kept (its end): `16MiB`, `512KiB`.
    #[arg(long, default_value = "16MiB", value_parser = parse_size)]
    pub log_cap: u64,
    /// The dashboard's address as people reach it (behind a proxy, say),
    /// for the links in notifications; `http://LISTEN` by default.
    #[arg(long, env = "SLUICE_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// How long an agent may be silent before the jobs it runs are taken
    /// back (lost, and offered again).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub agent_lease: std::time::Duration,
    /// Where jobs without `runs_on:` run. `server`: on this host. `agents`:
    /// on any agent (`runs_on: {}`), so that no commit's code runs where
    /// the database and the tokens are; with none online they wait.
    #[arg(long, default_value = "server", value_parser = ["server", "agents"])]
    pub jobs_on: String,
    /// `on`: the environments without `hosts:` run on a local agent, a
    /// process of its own that this server starts, which supervises their
    /// instances and serves their entry points, and keeps them serving
    /// while this server is down (a crash, an upgrade); a clean stop of the
    /// server stops it too. `off`: they run in this server's process. With
    /// several servers on PostgreSQL, the agent turns to another server
    /// when this one is gone, which keeps its instances where they run.
    #[arg(long, env = "SLUICE_LOCAL_AGENT", value_parser = ["on", "off"])]
    pub local_agent: Option<String>,
    /// With PostgreSQL, several servers may share the database: one runs
    /// the controllers under a lease this long, renewed while it lives; the
    /// others forward requests to it and one takes over within this time
    /// (and a second) after it dies.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub controller_lease: std::time::Duration,
    /// With PostgreSQL: the address the other servers forward requests to
    /// while this one runs the controllers (`http://HOST:PORT`);
    /// `http://LISTEN` by default.
    #[arg(long, env = "SLUICE_ADVERTISE")]
    pub advertise: Option<String>,
}

#[derive(Subcommand)]
pub enum ChannelCommand {
    /// Add a channel, or replace the one of that name (admin).
    Add(Box<ChannelAdd>),
    /// List channels with their kinds and server-wide routes.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a channel (admin).
    Remove { name: String },
    /// Send a test message to a channel now (admin).
    Test { name: String },
    /// The latest messages, of one channel or all.
    Messages {
        #[arg(long)]
        channel: Option<String>,
        #[arg(long, default_value_t = 30)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// A message: its events and every delivery attempt.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Send a failed message again.
    Retry { id: i64 },
}

#[derive(Args)]
pub struct ChannelAdd {
    pub name: String,
    /// slack, mattermost, teams, discord, webhook or email.
    #[arg(long)]
    pub kind: String,
    /// The webhook URL the chat service gave you (every kind but email).
    #[arg(long)]
    pub url: Option<String>,
    /// The generic webhook's signing key (16+ characters); made up and shown once if not given.
    #[arg(long)]
    pub signing_key: Option<String>,
    /// Email: the SMTP server, `smtp://USER:PASSWORD@HOST:587` (STARTTLS) or `smtps://…`.
    #[arg(long)]
    pub smtp: Option<String>,
    /// Email: the sender address.
    #[arg(long)]
    pub from: Option<String>,
    /// Email: a recipient; repeat for more.
    #[arg(long)]
    pub to: Vec<String>,
    /// Email: a CA certificate (PEM file) the SMTP server's certificate chains to.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Server-wide: an event kind (`deployment.failed`, `experiment.*`, `*`) sent here from every service; repeat for more.
    #[arg(long)]
    pub on: Vec<String>,
    /// …only from these environments; repeat for more.
    #[arg(long)]
    pub env: Vec<String>,
    /// How long a burst's first notification waits for others to join it (default 5s).
    #[arg(long)]
    pub wait: Option<String>,
    /// The least time between two messages to this channel (default 30s).
    #[arg(long)]
    pub interval: Option<String>,
}

#[derive(Subcommand)]
pub enum AbCommand {
    /// Start an experiment of a release (and config) against what the environment runs.
    Start {
        service: String,
        env: String,
        #[arg(long, value_parser = parse_release)]
        release: i64,
        /// A config value for B only, KEY=VALUE; repeat for more.
        #[arg(long = "set", value_parser = parse_setting)]
        settings: Vec<(String, String)>,
        /// A goal replacing the strategy's: NAME, NAME=METHOD /path (a
        /// request answered 2xx) or NAME:value; repeat for more, the first
        /// primary.
        #[arg(long = "goal")]
        goals: Vec<String>,
    },
    /// The latest experiments: weight, state, the last decision and its numbers.
    Status {
        service: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Stop taking decisions; the weight stays.
    Pause {
        id: i64,
    },
    Resume {
        id: i64,
    },
    /// Make B the release now.
    Promote {
        id: i64,
    },
    /// Back to A now.
    Abort {
        id: i64,
    },
}

#[derive(Subcommand)]
pub enum IncidentCommand {
    /// Open an incident by hand.
    Open {
        #[arg(long)]
        service: String,
        #[arg(long)]
        env: Option<String>,
        /// What is broken, as users see it.
        title: String,
    },
    /// Open incidents (`--all`: resolved ones too).
    List {
        #[arg(long)]
        service: Option<String>,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// An incident with its timeline and ranked suspect changes.
    Show {
        #[arg(value_parser = parse_incident)]
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// The damage is stopped, the cause may not be fixed yet.
    Mitigate {
        #[arg(value_parser = parse_incident)]
        id: i64,
        #[arg(long)]
        note: Option<String>,
    },
    /// It is over.
    Resolve {
        #[arg(value_parser = parse_incident)]
        id: i64,
        #[arg(long)]
        note: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum PostmortemCommand {
    /// Print the postmortem (the pre-filled template until someone edits it).
    Show {
        #[arg(value_parser = parse_incident)]
        id: i64,
    },
    /// Edit the postmortem in $EDITOR; it is saved when the editor exits with changes.
    Edit {
        #[arg(value_parser = parse_incident)]
        id: i64,
    },
}

#[derive(Subcommand)]
pub enum RuleCommand {
    /// Make a rule.
    #[command(subcommand)]
    Add(RuleKind),
    /// Rules in force (`--all`: disabled and expired ones too).
    List {
        #[arg(long)]
        service: Option<String>,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// A rule, its origin and what it has blocked.
    Show {
        #[arg(value_parser = parse_rule)]
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Stop enforcing a rule; the reason goes to the change log.
    Disable {
        #[arg(value_parser = parse_rule)]
        id: i64,
        #[arg(long)]
        reason: String,
    },
    /// Whether the rule would have stopped a past change or release, and why.
    Test {
        #[arg(value_parser = parse_rule)]
        id: i64,
        /// A commit sha (at least 4 characters).
        #[arg(long, conflicts_with = "release", required_unless_present = "release")]
        change: Option<String>,
        #[arg(long, value_parser = parse_release)]
        release: Option<i64>,
        #[arg(long)]
        json: bool,
    },
}

/// What every rule carries besides what it demands.
#[derive(Args, Clone)]
pub struct RuleCommon {
    #[arg(long)]
    pub service: String,
    /// The incident the rule comes from, INC-N or N.
    #[arg(long, value_parser = parse_incident)]
    pub incident: Option<i64>,
    /// Why the rule exists.
    #[arg(long, default_value = "")]
    pub note: String,
    /// How long the rule lasts, such as 30d; forever by default.
    #[arg(long)]
    pub expires_in: Option<String>,
}

#[derive(Subcommand)]
pub enum RuleKind {
    /// A CI job that must exist in the pipeline and pass.
    RequireJob {
        job: String,
        /// Only for changes touching files under this path; repeat for more.
        #[arg(long = "path")]
        paths: Vec<String>,
        #[command(flatten)]
        common: RuleCommon,
    },
    /// An extra check every instance must pass to be healthy.
    HealthCheck {
        #[arg(long)]
        path: String,
        #[arg(long, default_value_t = 200)]
        status: u16,
        #[arg(long)]
        body_contains: Option<String>,
        #[arg(long)]
        max_latency: Option<String>,
        /// An environment the rule covers; repeat for more; all by default.
        #[arg(long = "env")]
        environments: Vec<String>,
        #[command(flatten)]
        common: RuleCommon,
    },
    /// Error rate or latency limits in the previous environment before a promotion.
    MetricGate {
        #[arg(long)]
        window: String,
        /// A share, such as 0.01 for 1%.
        #[arg(long)]
        max_error_rate: Option<f64>,
        #[arg(long)]
        max_p95: Option<String>,
        #[arg(long, default_value_t = 0)]
        min_requests: u64,
        #[arg(long = "env")]
        environments: Vec<String>,
        #[command(flatten)]
        common: RuleCommon,
    },
    /// No promotion while a cron expression matches (UTC).
    Freeze {
        #[arg(long)]
        cron: String,
        #[arg(long = "env")]
        environments: Vec<String>,
        #[command(flatten)]
        common: RuleCommon,
    },
    /// A config key that may not change without an approval, or must keep a value.
    ConfigGuard {
        #[arg(long)]
        key: String,
        #[arg(long)]
        value: Option<String>,
        #[arg(long = "env")]
        environments: Vec<String>,
        #[command(flatten)]
        common: RuleCommon,
    },
    /// A minimum healthy time in the previous environment.
    Soak {
        #[arg(long)]
        duration: String,
        #[arg(long = "env")]
        environments: Vec<String>,
        #[command(flatten)]
        common: RuleCommon,
    },
}

#[derive(Subcommand)]
pub enum InstanceCommand {
    /// The end of an instance's stdout and stderr.
    Logs { id: String },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Make a token; it is printed once.
    Create {
        #[arg(long)]
        name: String,
        /// viewer, developer, approver or admin; or agent, for `sluice agent`.
        #[arg(long)]
        role: String,
        /// A group that environments' `approvers` may name; repeat for more.
        #[arg(long = "group")]
        groups: Vec<String>,
    },
    List,
    Revoke {
        id: String,
    },
}

#[derive(Subcommand)]
pub enum RepoCommand {
    /// Watch a repository: a local path (hooked) or a URL (polled).
    Add {
        path_or_url: String,
        #[arg(long)]
        name: Option<String>,
        /// A forge's commit status URL, `{sha}` standing for the commit.
        #[arg(long)]
        status_url: Option<String>,
        /// The token sent with commit statuses.
        #[arg(long, env = "SLUICE_STATUS_TOKEN", hide_env_values = true)]
        status_token: Option<String>,
        /// The webhook secret; a random one by default.
        #[arg(long)]
        webhook_secret: Option<String>,
    },
    List,
}

#[derive(Subcommand)]
pub enum SecretCommand {
    /// Set a secret; the value is read from standard input. Runs on the
    /// mainline get every secret; review runs only those set with --review.
    Set {
        repo: String,
        name: String,
        /// Give it to review runs too (changes on other branches and pull
        /// requests, which anyone who can push proposes).
        #[arg(long)]
        review: bool,
    },
    /// List the names of a repository's secrets.
    List { repo: String },
    /// Delete a secret.
    Delete { repo: String, name: String },
}

/// `16MiB`, `512KiB` or a number of bytes.
fn parse_size(text: &str) -> Result<u64, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, ""),
    };
    let scale = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => return Err(format!("`{other}` is not a unit: use KiB, MiB or GiB")),
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size: write e.g. `16MiB`"))?;
    number
        .checked_mul(scale)
        .filter(|n| *n >= 4096)
        .ok_or_else(|| format!("`{text}` is out of range: at least 4KiB"))
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    sluice_spec::parse_duration(text)
}

/// `v3` or `3`.
fn parse_release(text: &str) -> Result<i64, String> {
    text.trim_start_matches('v')
        .parse()
        .map_err(|_| format!("`{text}` is not a release; write vN, such as v3"))
}

/// `INC-7` or `7`.
fn parse_incident(text: &str) -> Result<i64, String> {
    sluice_store::parse_incident_id(text)
}

/// `R3` or `3`.
fn parse_rule(text: &str) -> Result<i64, String> {
    sluice_store::parse_rule_id(text)
}

/// `KEY=VALUE`.
fn parse_setting(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{text}` is not KEY=VALUE"))
}

/// `KEY=VALUE`, each a label (letters, digits, `.`, `_`, `-`).
fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not KEY=VALUE"))?;
    for part in [key, value] {
        if !sluice_spec::is_label(part) {
            return Err(format!(
                "`{part}` is not a label: use 1 to 63 letters, digits, `.`, `_` or `-`"
            ));
        }
    }
    Ok((key.to_string(), value.to_string()))
}

#[derive(Args)]
pub struct AgentArgs {
    /// The agent's name; the host's name by default.
    #[arg(long)]
    pub name: Option<String>,
    /// A label jobs' `runs_on:` may name, KEY=VALUE; repeat for more.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Jobs run at once; 0: none (an agent for environments only).
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// `user`: when the agent runs as root, each repository's steps run
    /// as a user of their own that owns the work tree and nothing else.
    /// `none`: as the agent's own user.
    #[arg(long, env = "SLUICE_ISOLATION", default_value = "user", value_parser = ["user", "none"])]
    pub isolation: String,
    /// The IP address the instances of environments on this host
    /// (`hosts:`) listen on, which the server reaches them at; by
    /// default the one the server sees this agent connect from.
    #[arg(long)]
    pub address: Option<std::net::IpAddr>,
    /// Serve the Prometheus metrics of this host's entry points at
    /// http://ADDR/metrics (by default none: an agent needs no inbound port).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// The local agent's (`sluice serve --local-agent` starts it): the
    /// server's data directory, where environments' data stays in place.
    #[arg(long, hide = true)]
    pub server_data_dir: Option<PathBuf>,
}
