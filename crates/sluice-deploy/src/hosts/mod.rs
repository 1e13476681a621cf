//! Instances on agents' hosts (an environment's `hosts:`), the server's
//! side: which agent takes an instance, what each agent is asked to run
//! and serve, what it reports, and the files an instance starts from. The
//! agent's side is [`agent`], its entry points `entry_points` and their
//! checks `checks`. The routing table and the health checks that decide
//! deployments stay the server's: an instance on a host listens on the
//! agent's address, which they reach over the network. Each host serves
//! the environment's entry point too, routing by the server's table where
//! its own checks agree (`entries` is the server's side of them), so
//! that it goes on serving while the server is away.

pub mod agent;
mod checks;
pub(crate) mod entries;
mod entry_points;
mod host_data;
mod logs;
pub(crate) mod lost;
pub(crate) mod place;
mod tls;
pub mod wire;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sluice_spec::HostsSpec;
use sluice_store::{Reported, Store, Topic};

use crate::runtime::InstanceSpec;
use wire::{AGENT_SETS, HostReport, HostWork, Hosted};

/// How long the server waits for an agent to stop an instance before it
/// forgets the instance (the agent stops it when it next reports).
const STOP_WAIT: Duration = Duration::from_secs(10);
/// The longest an agent's report waits for a change.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// The host an instance is placed on.
#[derive(Clone, Debug)]
pub(crate) struct Host {
    pub agent: String,
    pub address: IpAddr,
}

/// The server's side of the instances on agents' hosts.
pub(crate) struct Hosts {
    store: Store,
    /// An agent silent this long is not given instances, and loses those
    /// it has ([`lost`]).
    pub(crate) lease: Duration,
    /// How often each instance's process exited, as its agent last said.
    exits: Mutex<HashMap<String, u32>>,
    /// What each agent said of its entry points.
    pub(crate) entries: entries::HostEntries,
    /// How far the server's copy of each instance's log goes.
    logs: logs::Copies,
    /// The seeds told in the change log lately, by agent and time: one
    /// sent again (its answer was lost) is not told twice.
    seeds_told: SeedsTold,
    /// Tells one table from another server's in [`wire::HostEntry::version`].
    epoch: u64,
}

impl Hosts {
    pub(crate) fn new(store: Store, lease: Duration) -> Hosts {
        Hosts {
            store,
            lease,
            exits: Mutex::default(),
            entries: entries::HostEntries::default(),
            logs: logs::Copies::default(),
            seeds_told: SeedsTold::default(),
            epoch: rand::random(),
        }
    }

    /// The host the next instance of `service`'s release `release_id` in
    /// `env` goes to: an online agent whose labels match, chosen by
    /// [`place::choose`] (spread by that release's instances, so that a
    /// rolling deployment spreads the new release as it replaces the old).
    /// With none online, it waits for one up to the agents' lease: one
    /// starting (the local agent after a restart of the server) comes.
    pub(crate) async fn place(
        &self,
        (service, env): (&str, &str),
        release_id: i64,
        hosts: &HostsSpec,
        need: place::Need,
    ) -> Result<Host> {
        let deadline = tokio::time::Instant::now() + self.lease;
        let (agents, candidates) = loop {
            let found = self.candidates((service, env), release_id, hosts).await?;
            if !found.1.is_empty() || tokio::time::Instant::now() >= deadline {
                break found;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if need.is_declared()
            && !candidates.is_empty()
            && place::choose(&candidates, hosts.spread, need).is_none()
        {
            bail!(
                "none of the {} online agents whose labels include {} has {} free for another of {env}'s instances; start another such agent, or stop what runs there",
                candidates.len(),
                labels_text(&hosts.labels),
                need_text(need),
            );
        }
        let Some(chosen) = place::choose(&candidates, hosts.spread, need) else {
            bail!(
                "no agent whose labels include {} is online to run {env}'s instances; start one with `sluice agent{}` (docs/agents.md)",
                labels_text(&hosts.labels),
                hosts
                    .labels
                    .iter()
                    .map(|(k, v)| format!(" --label {k}={v}"))
                    .collect::<String>()
            );
        };
        let address = agents
            .iter()
            .find(|a| a.name == chosen.name)
            .and_then(|a| a.address.parse().ok())
            .context("the chosen agent has no address")?;
        Ok(Host {
            agent: chosen.name.clone(),
            address,
        })
    }

    /// The online agents `hosts` selects, with what each runs.
    async fn candidates(
        &self,
        (service, env): (&str, &str),
        release_id: i64,
        hosts: &HostsSpec,
    ) -> Result<(Vec<sluice_store::Agent>, Vec<place::Candidate>)> {
        let now = sluice_store::now_ms();
        let lease = self.lease.as_millis() as i64;
        let placements = self.store.placements(None).await?;
        let instances: HashMap<String, (String, String, i64)> = self
            .store
            .live_instances(None, None)
            .await?
            .into_iter()
            .map(|i| (i.id, (i.service, i.environment, i.release_id)))
            .collect();
        let same = (service.to_string(), env.to_string(), release_id);
        let agents = self.store.agents().await?;
        let candidates: Vec<place::Candidate> = agents
            .iter()
            .filter(|a| now - a.seen_at <= lease && selects(hosts, a))
            .filter(|a| a.address.parse::<IpAddr>().is_ok())
            .map(|a| {
                let mine: Vec<_> = placements
                    .iter()
                    .filter(|p| p.agent == a.name && p.stop_asked == 0)
                    .collect();
                let of_env = mine
                    .iter()
                    .filter(|p| instances.get(&p.instance_id) == Some(&same))
                    .count();
                let declared: Vec<Hosted> = mine
                    .iter()
                    .filter_map(|p| serde_json::from_str::<Hosted>(&p.spec).ok())
                    .collect();
                let used_mb: u64 = declared.iter().filter_map(|h| h.memory_mb).sum();
                let used_millicores: u64 = declared.iter().filter_map(|h| h.millicores).sum();
                place::Candidate {
                    name: a.name.clone(),
                    of_env,
                    total: mine.len(),
                    free_mb: (a.memory_mb.max(0) as u64).saturating_sub(used_mb),
                    free_millicores: (a.cores.max(0) as u64)
                        .saturating_mul(1000)
                        .saturating_sub(used_millicores),
                }
            })
            .collect();
        Ok((agents, candidates))
    }

    /// Asks `host`'s agent to run the instance of `service`'s `environment`
    /// that `spec` describes (by `run`), listening on the host's address at
    /// `port`. The variables of `spec` that are secrets (`run.secrets`) are
    /// not stored with the placement.
    pub(crate) async fn start(
        &self,
        host: &Host,
        spec: &InstanceSpec,
        (service, environment): (&str, &str),
        port: u16,
        run: &sluice_spec::RunSpec,
        data: wire::HostedData,
    ) -> Result<()> {
        let secrets = &run.secrets;
        let hosted = Hosted {
            id: spec.id.clone(),
            service: service.to_string(),
            environment: environment.to_string(),
            command: spec.command.clone(),
            env: spec
                .env
                .iter()
                .filter(|(k, _)| !AGENT_SETS.contains(&k.as_str()) && !secrets.contains(k))
                .cloned()
                .collect(),
            secrets: secrets.to_vec(),
            memory_mb: run.memory_mb,
            millicores: run.millicores,
            data,
            address: host.address,
            port,
        };
        self.store
            .place(&spec.id, &host.agent, &serde_json::to_string(&hosted)?)
            .await?;
        self.exits.lock().unwrap().insert(spec.id.clone(), 0);
        self.store.wake(Topic::PlacementChanged).await;
        Ok(())
    }

    /// Whether the instance is one of an agent's.
    pub(crate) fn runs(&self, id: &str) -> bool {
        self.exits.lock().unwrap().contains_key(id)
    }

    /// Takes an instance an agent runs under this server's watch again
    /// (after a restart of the server).
    pub(crate) fn adopt(&self, id: &str, exits: u32) {
        self.exits.lock().unwrap().insert(id.to_string(), exits);
    }

    /// Asks its agent to stop the instance, and waits until it says it did
    /// (or a while: an agent out of reach stops it when it next reports,
    /// as it is no longer among what it is to run).
    pub(crate) async fn stop(&self, id: &str) {
        self.exits.lock().unwrap().remove(id);
        if self.store.ask_stop(id).await.is_err() {
            return;
        }
        self.store.wake(Topic::PlacementChanged).await;
        let deadline = tokio::time::Instant::now() + STOP_WAIT;
        while tokio::time::Instant::now() < deadline {
            match self.store.placement(id).await {
                Ok(Some(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
                _ => return,
            }
        }
        tracing::warn!(instance = %id, "its agent did not say it stopped the instance; forgetting it");
        let _ = self.store.drop_placement(id).await;
    }

    /// Lets go of an instance whose agent went silent: no longer watched,
    /// and among what its agent is to stop when it comes back.
    pub(crate) async fn forget(&self, id: &str) {
        self.exits.lock().unwrap().remove(id);
        let _ = self.store.ask_stop(id).await;
    }

    pub(crate) fn exits(&self, id: &str) -> u32 {
        self.exits.lock().unwrap().get(id).copied().unwrap_or(0)
    }

    /// The version of a route's table: its count of changes, from this server.
    pub(crate) fn version(&self, count: u64) -> String {
        format!("{:x}-{count}", self.epoch)
    }
}

/// The seeds remembered as told (far more than arrive between two reports).
const MAX_SEEDS_TOLD: usize = 256;

/// The seeds told in the change log lately, by agent and the host's time.
#[derive(Default)]
struct SeedsTold(Mutex<std::collections::VecDeque<(String, i64)>>);

impl SeedsTold {
    /// Whether `agent`'s seed of `at` is told for the first time; notes
    /// it. An agent that sends no time (`0`, an older one) is always told.
    fn first(&self, agent: &str, at: i64) -> bool {
        let mut told = self.0.lock().unwrap();
        let key = (agent.to_string(), at);
        if at == 0 {
            return true;
        }
        if told.contains(&key) {
            return false;
        }
        if told.len() >= MAX_SEEDS_TOLD {
            told.pop_front();
        }
        told.push_back(key);
        true
    }
}

/// The servers an agent hears of: those heard from this recently.
const SERVERS_HEARD_WITHIN: Duration = Duration::from_secs(60);

/// The label of the local agent `sluice serve --local-agent` starts; its
/// value is the server's name.
pub const LOCAL_LABEL: &str = "sluice.local";

/// Whether `agent` is one of the hosts `hosts` selects. The local agent
/// runs only what is left to it: an environment that names its hosts
/// means others, and its entry point on the server's host is the server's.
fn selects(hosts: &sluice_spec::HostsSpec, agent: &sluice_store::Agent) -> bool {
    let local = |labels: &BTreeMap<String, String>| labels.contains_key(LOCAL_LABEL);
    agent.matches(&hosts.labels) && (local(&hosts.labels) || !local(&agent.labels()))
}

/// A clean stop of the server: the local agent's instances stop with it
/// (the agent stops too), as the server's own would, so that the next
/// start starts them again rather than counting them kept.
pub(crate) async fn stop_local(inner: &crate::Inner) -> anyhow::Result<()> {
    let Some(local) = &inner.config.local_agent else {
        return Ok(());
    };
    let agents = inner.store.agents().await?;
    let local: Vec<&str> = (agents.iter())
        .filter(|a| selects(local, a))
        .map(|a| a.name.as_str())
        .collect();
    for instance in inner.store.live_instances(None, None).await? {
        if instance
            .agent
            .as_deref()
            .is_some_and(|a| local.contains(&a))
        {
            inner.hosts.forget(&instance.id).await;
            (inner.store)
                .set_instance_state(&instance.id, sluice_store::InstanceState::Stopped)
                .await?;
        }
    }
    inner
        .store
        .wake(sluice_store::Topic::PlacementChanged)
        .await;
    Ok(())
}

/// How recently another host must have said it serves an entry point for
/// one that no longer should to let it go.
const TAKEN_WITHIN: Duration = Duration::from_secs(5);

/// Make before break: an entry point `agent` serves (`report`) that is no
/// longer among `mine` stays with it until another host says it serves it,
/// so that no moment passes with nobody listening (the local agent of a
/// server whose controllers another took over, whose successor's local
/// agent binds the same address beside it; an environment whose `hosts:`
/// changed).
fn keep_until_taken(
    inner: &crate::Inner,
    agent: &str,
    report: &HostReport,
    mut mine: Vec<Served>,
) -> Vec<Served> {
    let letting_go: Vec<crate::EnvKey> = (report.entries.iter())
        .map(|e| (e.service.clone(), e.environment.clone()))
        .filter(|key| !mine.iter().any(|s| &s.key == key))
        .collect();
    if letting_go.is_empty() {
        return mine;
    }
    let taken = |key: &crate::EnvKey| {
        (inner.hosts.entries.points(key, TAKEN_WITHIN).iter()).any(|p| p.agent != agent)
    };
    for served in inner.served_by(|_| true).unwrap_or_default() {
        if letting_go.contains(&served.key) && !taken(&served.key) {
            mine.push(served);
        }
    }
    mine.sort_by(|a, b| a.key.cmp(&b.key));
    mine
}

/// Where a host's entry point listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Listen {
    /// On the host's address, at the port of the server's own.
    Port(u16),
    /// Exactly at the address `listen:` declares: the local agent, which
    /// serves it in the server's place.
    At(std::net::SocketAddr),
}

/// An environment whose entry point an agent is to serve.
pub(crate) struct Served {
    pub key: crate::EnvKey,
    pub listen: Listen,
    pub route: sluice_proxy::Route,
    /// Each instance's health check, which the hosts run too.
    pub checks: BTreeMap<String, wire::HostCheck>,
    /// What its entry point holds clients to.
    pub limits: wire::HostLimits,
    /// Its certificate files and the port of `redirect_from`, with HTTPS.
    pub tls: Option<(Vec<sluice_spec::CertPaths>, Option<u16>)>,
}

/// Takes agent `agent`'s report and answers what its host is to run and
/// serve: at once when that differs from what it runs and serves, else
/// when it changes or `wait` has passed.
pub(crate) async fn answer(
    inner: &crate::Inner,
    agent: &str,
    report: &HostReport,
    wait: Duration,
) -> Result<HostWork> {
    let hosts = &inner.hosts;
    let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
    let me = hosts
        .store
        .agents()
        .await?
        .into_iter()
        .find(|a| a.name == agent);
    let address = me.as_ref().and_then(|a| a.address.parse::<IpAddr>().ok());
    let served_by_me = || match (&me, address) {
        (Some(me), Some(_)) => inner
            .served_by(|spec| selects(spec, me))
            .map(|mine| keep_until_taken(inner, agent, report, mine)),
        _ => Some(Vec::new()),
    };
    // Only what the agent is asked to serve counts: no other environment's traffic.
    let asked: Vec<crate::EnvKey> = served_by_me()
        .unwrap_or_default()
        .into_iter()
        .map(|s| s.key)
        .collect();
    let reported: Vec<&wire::EntryReport> = report
        .entries
        .iter()
        .filter(|r| asked.contains(&(r.service.clone(), r.environment.clone())))
        .collect();
    let second = sluice_store::now_ms().max(0) as u64 / 1000;
    for fresh in hosts.entries.take(agent, &reported, second)? {
        inner.absorb(fresh);
    }
    let running: Vec<Reported> = report
        .running
        .iter()
        .map(|r| Reported {
            instance_id: r.id.clone(),
            pid: r.pid,
            exits: i64::from(r.exits),
        })
        .collect();
    // Before the exits: a deployment that fails on them shows the log's end.
    hosts.copy_logs(&inner.layout, agent, report).await;
    hosts.note_seeded(agent, report).await?;
    hosts.note_exits(report);
    // Whom the agent may turn to when this server is gone.
    let servers = hosts.store.servers(SERVERS_HEARD_WITHIN).await?;
    loop {
        let woken = hosts.store.woken(Topic::PlacementChanged);
        let served = served_by_me();
        // Watched before the tables are read, so that no change is missed.
        let mut watches: Vec<_> = served.iter().flatten().map(|s| s.route.watch()).collect();
        let wanted = hosts.store.take_report(agent, &running).await?;
        let work = HostWork {
            instances: wanted
                .iter()
                .filter_map(|p| serde_json::from_str(&p.spec).ok())
                .collect(),
            entries: served.map(|served| {
                served
                    .iter()
                    .map(|s| wire::HostEntry {
                        service: s.key.0.clone(),
                        environment: s.key.1.clone(),
                        listen: match s.listen {
                            Listen::Port(port) => {
                                std::net::SocketAddr::new(address.expect("served"), port)
                            }
                            Listen::At(addr) => addr,
                        },
                        version: hosts.version(*s.route.watch().borrow()),
                        table: s.route.table(),
                        checks: s.checks.clone(),
                        limits: s.limits.clone(),
                        tls: s
                            .tls
                            .as_ref()
                            .map(|(paths, redirect)| wire::HostTls::read(paths, *redirect)),
                    })
                    .collect()
            }),
            servers: servers.clone(),
        };
        for entry in work.entries.iter().flatten() {
            let key = (entry.service.clone(), entry.environment.clone());
            hosts.entries.sending(&key, &entry.version);
        }
        if !hosts.as_reported(&work, report) {
            return hosts.with_secrets(work).await;
        }
        let route_changed = async {
            if watches.is_empty() {
                std::future::pending::<()>().await
            }
            let changes = watches.iter_mut().map(|w| Box::pin(w.changed()));
            let _ = futures::future::select_all(changes).await;
        };
        // Until the environments are back after a start, entry points are
        // left as they are; once they are, the host hears of them at once.
        let back = inner.environments_back.cancelled();
        tokio::select! {
            _ = woken => {}
            _ = route_changed => {}
            _ = back, if work.entries.is_none() => {}
            _ = tokio::time::sleep_until(deadline) => return hosts.with_secrets(work).await,
        }
    }
}

impl Hosts {
    /// Keeps how often each instance's process exited, as its agent says.
    /// Appends what `agent` sent of its instances' logs to the server's
    /// copies of them.
    async fn copy_logs(&self, layout: &sluice_spec::Layout, agent: &str, report: &HostReport) {
        for running in &report.running {
            let Some(chunk) = running.log.as_ref().filter(|c| c.bounded()) else {
                continue;
            };
            // Only an instance placed on this agent.
            let Ok(instance) = self.store.instance(&running.id).await else {
                continue;
            };
            if instance.agent.as_deref() != Some(agent) {
                continue;
            }
            let path = layout.instance_log(&instance.service, &instance.environment, &instance.id);
            let copied = path
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|path| self.logs.append(&instance.id, &path, chunk));
            if let Err(e) = copied {
                tracing::warn!(instance = %instance.id, error = %e, "could not keep the instance's log as its host sent it");
            }
        }
    }

    /// Says in the change log what `agent` seeded: the data of an
    /// environment it runs instances of.
    async fn note_seeded(&self, agent: &str, report: &HostReport) -> Result<()> {
        for seeded in report.seeded.iter().filter(|s| s.bounded()) {
            let runs_there = self
                .store
                .live_instances(Some(&seeded.service), Some(&seeded.environment))
                .await?
                .iter()
                .any(|i| i.agent.as_deref() == Some(agent));
            if !runs_there || !self.seeds_told.first(agent, seeded.at) {
                continue;
            }
            let filled = crate::data::Filled::Seeded(seeded.seed.clone(), seeded.printed.clone());
            self.store
                .append_change(sluice_store::NewChangeEvent {
                    actor: "sluice".into(),
                    kind: "data.prepared".into(),
                    service: Some(seeded.service.clone()),
                    environment: Some(seeded.environment.clone()),
                    subject: format!("host {agent}"),
                    summary: filled.summary(&seeded.environment),
                    before: None,
                    after: None,
                })
                .await?;
        }
        Ok(())
    }

    fn note_exits(&self, report: &HostReport) {
        let mut exits = self.exits.lock().unwrap();
        for r in &report.running {
            if let Some(count) = exits.get_mut(&r.id) {
                *count = r.exits;
            }
        }
    }

    /// Whether the host runs and serves what `work` asks, as `report` says.
    fn as_reported(&self, work: &HostWork, report: &HostReport) -> bool {
        let reported: HashSet<&str> = report.running.iter().map(|r| r.id.as_str()).collect();
        let runs = work.instances.len() == reported.len()
            && work
                .instances
                .iter()
                .all(|h: &Hosted| reported.contains(h.id.as_str()));
        let more = report.entries.iter().any(|e| e.more);
        let serves = !more
            && work.entries.as_ref().is_none_or(|entries| {
                entries.len() == report.entries.len()
                    && entries.iter().all(|e| {
                        report.entries.iter().any(|r| {
                            r.service == e.service
                                && r.environment == e.environment
                                && r.version == e.version
                        })
                    })
            });
        runs && serves
    }
}

/// The largest tar of an instance's files an agent is sent.
const MAX_FILES: u64 = 4 << 30;

/// A tar of an instance's files: `work/` from the release's, `config/`
/// from its rendered config.
pub(crate) fn files(release: &std::path::Path, config: &std::path::Path) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    tar.append_dir_all("work", release)
        .with_context(|| format!("cannot read {}", release.display()))?;
    if config.exists() {
        tar.append_dir_all("config", config)
            .with_context(|| format!("cannot read {}", config.display()))?;
    }
    let bytes = tar.into_inner()?;
    if bytes.len() as u64 > MAX_FILES {
        bail!(
            "the instance's files come to {} bytes, more than an agent is sent",
            bytes.len()
        );
    }
    Ok(bytes)
}

impl Hosts {
    /// `work` with the values of each instance's secrets, read now from its
    /// release's repository (a secret unset since is left out).
    async fn with_secrets(&self, mut work: HostWork) -> Result<HostWork> {
        for hosted in work.instances.iter_mut().filter(|h| !h.secrets.is_empty()) {
            let instance = self.store.instance(&hosted.id).await?;
            let release = self.store.release_by_id(instance.release_id).await?;
            let mut values = self.store.secrets(release.repo_id).await?;
            for name in &hosted.secrets {
                if let Some(secret) = values.remove(name) {
                    hosted.env.push((name.clone(), secret.value));
                }
            }
        }
        Ok(work)
    }
}

/// What an instance declares it needs, as a refusal names it.
fn need_text(need: place::Need) -> String {
    let mut parts = Vec::new();
    if let Some(mb) = need.memory_mb {
        parts.push(format!("{mb} MiB (`run.memory`)"));
    }
    if let Some(millicores) = need.millicores {
        parts.push(format!(
            "{} cores (`run.cores`)",
            millicores as f64 / 1000.0
        ));
    }
    parts.join(" and ")
}

fn labels_text(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "any".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_sent_again_is_told_once() {
        let told = SeedsTold::default();
        let table = [
            // agent, the host's time → told
            ("web-1", 5, true),
            ("web-1", 5, false),
            ("web-2", 5, true),
            ("web-1", 6, true),
            // An agent that sends no time: always told.
            ("old", 0, true),
            ("old", 0, true),
        ];
        for (agent, at, first) in table {
            assert_eq!(told.first(agent, at), first, "{agent} {at}");
        }
        for at in 100..100 + MAX_SEEDS_TOLD as i64 {
            told.first("busy", at);
        }
        assert!(told.first("web-1", 5), "forgotten past the bound");
    }
}
