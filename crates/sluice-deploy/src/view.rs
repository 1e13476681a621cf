//! What runs where: each environment's status with its drift from the
//! desired state, and two environments side by side on all five facets.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

use serde::Serialize;
use sluice_spec::{Environment, Spec, Strategy};
use sluice_store::Release;

use crate::release::release_env;
use crate::traffic::InstanceTraffic;
use crate::{CdError, CdResult, Inner, render};

#[derive(Clone, Debug, Serialize)]
pub struct EnvStatus {
    pub service: String,
    pub environment: String,
    pub release: Option<i64>,
    /// `healthy`, `degraded` (some instances unhealthy), `down` or `empty`.
    pub health: String,
    pub instances: Vec<InstanceStatus>,
    pub desired_instances: u32,
    pub listen: Option<String>,
    /// The entry points on agents' hosts that serve it too, as they reported.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub host_entry_points: Vec<HostEntryPoint>,
    /// The routing table the server sends the hosts now (with hosts only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table_version: Option<String>,
    pub pinned: bool,
    pub pin_reason: Option<String>,
    pub pending_promotions: Vec<PendingPromotion>,
    /// What runs but does not match the desired state.
    pub drift: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct InstanceStatus {
    pub id: String,
    pub release: i64,
    pub state: sluice_store::InstanceState,
    pub healthy: bool,
    pub port: i64,
    /// Its process on its host.
    pub pid: Option<i64>,
    pub restarts: i64,
    /// The agent whose host runs it; none: the server's.
    pub host: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct HostEntryPoint {
    pub agent: String,
    pub address: String,
    /// The routing table it routes by: the environment's `table_version`
    /// once the latest change reached it.
    pub version: String,
    /// The instances that host's own health check takes out of it.
    pub failing: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PendingPromotion {
    pub id: i64,
    pub release: i64,
    pub status: sluice_store::PromotionStatus,
    pub blocked_by: Option<String>,
    pub reason: Option<String>,
}

pub(crate) async fn status(inner: &Arc<Inner>, service: Option<&str>) -> CdResult<Vec<EnvStatus>> {
    let mut out = Vec::new();
    let promotions = inner.store.promotions(service, true, 1000).await?;
    let placed: HashMap<String, sluice_store::Placement> = inner
        .store
        .placements(None)
        .await?
        .into_iter()
        .map(|p| (p.instance_id.clone(), p))
        .collect();
    for state in inner.store.env_states(service).await? {
        let release = match state.release_id {
            Some(id) => Some(inner.store.release_by_id(id).await?),
            None => None,
        };
        let desired = release
            .as_ref()
            .and_then(|r| release_env(r, &state.name).ok());
        let instances: Vec<InstanceStatus> = inner
            .store
            .live_instances(Some(&state.service), Some(&state.name))
            .await?
            .into_iter()
            .map(|i| {
                let healthy = inner
                    .live
                    .lock()
                    .unwrap()
                    .get(&i.id)
                    .is_some_and(|l| l.backend.is_healthy());
                // On a host, as its agent last reported it.
                let (pid, restarts) = match &i.agent {
                    Some(_) => placed.get(&i.id).map_or((None, 0), |p| (p.pid, p.exits)),
                    None => (i.pid, i.restarts),
                };
                InstanceStatus {
                    id: i.id,
                    release: i.release,
                    state: i.state,
                    healthy,
                    port: i.port,
                    pid,
                    restarts,
                    host: i.agent,
                }
            })
            .collect();
        let healthy = instances.iter().filter(|i| i.healthy).count();
        let health = match (instances.len(), healthy) {
            (0, _) => "empty",
            (_, 0) => "down",
            (n, h) if h < n => "degraded",
            _ => "healthy",
        };
        let drift = match (&release, &desired) {
            (Some(release), Some((spec, env))) => drift(inner, release, spec, env).await?,
            _ => Vec::new(),
        };
        let listen = inner
            .entry_point(&state.service, &state.name)
            .map(|(_, bound)| bound.to_string());
        let key = (state.service.clone(), state.name.clone());
        let host_entry_points = inner
            .hosts
            .entries
            .points(&key, inner.hosts.lease)
            .into_iter()
            .map(|point| HostEntryPoint {
                agent: point.agent,
                address: point.address.to_string(),
                failing: point.failing,
                version: point.version,
            })
            .collect();
        out.push(EnvStatus {
            host_entry_points,
            table_version: inner.hosts_table_version(&key),
            desired_instances: desired.as_ref().map_or(0, |(_, e)| e.instances),
            pending_promotions: pending(&promotions, &state.service, &state.name),
            service: state.service,
            environment: state.name,
            release: state.release,
            health: health.to_string(),
            instances,
            listen,
            pinned: state.pinned.0,
            pin_reason: state.pin_reason,
            drift,
        });
    }
    out.extend(undeployed(inner, service, &out, &promotions).await?);
    Ok(out)
}

/// The open promotions into one environment.
fn pending(
    promotions: &[sluice_store::Promotion],
    service: &str,
    env: &str,
) -> Vec<PendingPromotion> {
    promotions
        .iter()
        .filter(|p| p.service == service && p.environment == env)
        .map(|p| PendingPromotion {
            id: p.id,
            release: p.release,
            status: p.status,
            blocked_by: p.blocked_by.clone(),
            reason: p.reason.clone(),
        })
        .collect()
}

/// The environments the newest release of each service declares that run
/// nothing yet: listed too, so that `status` shows where a release can go.
async fn undeployed(
    inner: &Arc<Inner>,
    service: Option<&str>,
    listed: &[EnvStatus],
    promotions: &[sluice_store::Promotion],
) -> CdResult<Vec<EnvStatus>> {
    let mut newest: std::collections::BTreeMap<String, Release> = Default::default();
    for release in inner.store.releases(service, 1000).await? {
        let known = newest
            .get(&release.service)
            .is_some_and(|r| r.number >= release.number);
        if !known {
            newest.insert(release.service.clone(), release);
        }
    }
    let mut out = Vec::new();
    for (name, release) in newest {
        let Ok(spec) = sluice_spec::parse(sluice_spec::SPEC_FILE, &release.spec) else {
            continue;
        };
        for env in &spec.environments {
            if listed
                .iter()
                .any(|e| e.service == name && e.environment == env.name)
            {
                continue;
            }
            out.push(EnvStatus {
                host_entry_points: Vec::new(),
                table_version: None,
                service: name.clone(),
                environment: env.name.clone(),
                release: None,
                health: "empty".into(),
                instances: Vec::new(),
                desired_instances: env.instances,
                listen: None,
                pinned: false,
                pin_reason: None,
                pending_promotions: pending(promotions, &name, &env.name),
                drift: Vec::new(),
            });
        }
    }
    Ok(out)
}

/// Running instances whose release, configuration or number differ from
/// what the environment declares (but for an experiment's B instances).
async fn drift(
    inner: &Arc<Inner>,
    release: &Release,
    spec: &Spec,
    env: &Environment,
) -> CdResult<Vec<String>> {
    let mut found = Vec::new();
    let files = render::render(
        spec,
        env,
        &release.name(),
        &inner.layout.release(&release.service, release.number)?,
    )
    .unwrap_or_default();
    let hash = render::config_hash(&env.config, &files);
    // An experiment's B instances are its candidate, not drift.
    let candidates: Vec<String> = inner
        .live
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, l)| l.backend.variant() == sluice_proxy::Variant::B)
        .map(|(id, _)| id.clone())
        .collect();
    let live: Vec<_> = inner
        .store
        .live_instances(Some(&release.service), Some(&env.name))
        .await?
        .into_iter()
        .filter(|i| !candidates.contains(&i.id))
        .collect();
    for instance in &live {
        if instance.release != release.number {
            found.push(format!(
                "{} runs v{}, not v{}",
                instance.id, instance.release, release.number
            ));
        } else if instance.config_hash != hash {
            found.push(format!(
                "{} runs a configuration other than the one declared",
                instance.id
            ));
        }
    }
    // What is bound is what users reach: a `listen:` not yet applied is drift.
    if let Some((asked, bound)) = inner.entry_point(&release.service, &env.name)
        && asked != env.listen
    {
        found.push(format!(
            "the entry point listens on {bound}, not on {} as declared",
            env.listen
        ));
    }
    if live.len() != env.instances as usize {
        found.push(format!(
            "{} instances run, {} declared",
            live.len(),
            env.instances
        ));
    }
    Ok(found)
}

/// Two environments side by side.
#[derive(Clone, Debug, Serialize)]
pub struct EnvDiff {
    pub service: String,
    pub a: String,
    pub b: String,
    pub rows: Vec<DiffRow>,
    pub config_files: Vec<FileDiff>,
    pub drift: Vec<String>,
    /// The same, as text for people.
    pub text: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct DiffRow {
    pub facet: String,
    pub a: String,
    pub b: String,
    /// `""` when equal, `release` when only the release differs, `declared` when the definitions differ.
    pub differs: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct FileDiff {
    pub file: String,
    pub unified: String,
}

/// How the entry point serves HTTPS, and for ACME what its keeper last saw.
fn https(inner: &Inner, service: &str, env: &sluice_spec::Environment) -> String {
    let Some(tls) = &env.tls else {
        return "off".into();
    };
    match &tls.certs {
        sluice_spec::CertSource::Files(files) => {
            let names: Vec<String> = files.iter().map(|f| f.cert.display().to_string()).collect();
            format!("certificate files {}", names.join(", "))
        }
        sluice_spec::CertSource::Acme(acme) => {
            let status = inner
                .certificate_status(service, &env.name)
                .unwrap_or_else(|| "not bound yet".into());
            format!(
                "ACME for {} from {}: {status}",
                acme.domains.join(", "),
                acme.directory
            )
        }
    }
}

/// One environment's facets and rendered config files, for a page about it.
#[derive(Clone, Debug, Serialize)]
pub struct EnvDetail {
    pub facets: Vec<(String, String)>,
    pub files: Vec<(String, String)>,
    /// What each instance answered over the last [`TRAFFIC_SECONDS`].
    pub traffic: Vec<InstanceTraffic>,
}

/// The largest config file an environment's page shows inline.
pub const MAX_INLINE: usize = 64 << 10;

/// A rendered file as a page shows it: whole, or a line saying how large
/// it is when it is larger than [`MAX_INLINE`].
fn inline((to, text): (String, String)) -> (String, String) {
    if text.len() <= MAX_INLINE {
        return (to, text);
    }
    let said = format!(
        "({} bytes: larger than the {} KiB a page shows; it is in SLUICE_CONFIG_DIR on the instances)",
        text.len(),
        MAX_INLINE >> 10
    );
    (to, said)
}

/// How far back an environment's page looks at each instance's traffic.
pub const TRAFFIC_SECONDS: u64 = 60;

pub(crate) async fn detail(inner: &Arc<Inner>, service: &str, env: &str) -> CdResult<EnvDetail> {
    let same = diff(inner, service, env, env).await?;
    let side = side(inner, service, env).await?;
    let now = sluice_store::now_ms().max(0) as u64 / 1000;
    let windows = inner.windows(service, env, now.saturating_sub(TRAFFIC_SECONDS));
    Ok(EnvDetail {
        facets: same.rows.into_iter().map(|r| (r.facet, r.a)).collect(),
        files: side.files.into_iter().map(inline).collect(),
        traffic: crate::traffic::per_instance(&windows, TRAFFIC_SECONDS),
    })
}

struct Side {
    release: Option<Release>,
    spec: Spec,
    env: Environment,
    files: Vec<(String, String)>,
}

async fn side(inner: &Arc<Inner>, service: &str, name: &str) -> CdResult<Side> {
    let state = inner.store.env_state(service, name).await?;
    let release = match state.and_then(|s| s.release_id) {
        Some(id) => inner.store.release_by_id(id).await?,
        // Not deployed yet: what the newest release declares for it.
        None => inner
            .store
            .releases(Some(service), 1)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| CdError::NotFound(format!("{service} has no release yet")))?,
    };
    let deployed = inner
        .store
        .env_state(service, name)
        .await?
        .and_then(|s| s.release_id)
        .is_some();
    let (spec, env) =
        release_env(&release, name).map_err(|e| CdError::NotFound(format!("{e:#}")))?;
    let files = render::render(
        &spec,
        &env,
        &release.name(),
        &inner.layout.release(service, release.number)?,
    )
    .unwrap_or_default();
    Ok(Side {
        release: deployed.then_some(release),
        spec,
        env,
        files,
    })
}

pub(crate) async fn diff(inner: &Arc<Inner>, service: &str, a: &str, b: &str) -> CdResult<EnvDiff> {
    let (left, right) = (
        side(inner, service, a).await?,
        side(inner, service, b).await?,
    );
    let mut rows = Vec::new();
    let mut row = |facet: &str, x: String, y: String, kind: &str| {
        let differs = if x == y {
            String::new()
        } else {
            kind.to_string()
        };
        rows.push(DiffRow {
            facet: facet.to_string(),
            a: x,
            b: y,
            differs,
        });
    };
    let name = |r: &Option<Release>| {
        r.as_ref().map_or("none".to_string(), |r| {
            format!("{} ({})", r.name(), &r.sha[..r.sha.len().min(10)])
        })
    };
    row(
        "code: release",
        name(&left.release),
        name(&right.release),
        "release",
    );
    row(
        "instances",
        left.env.instances.to_string(),
        right.env.instances.to_string(),
        "declared",
    );
    let listening = |side: &Side| match inner.entry_point(service, &side.env.name) {
        Some((_, bound)) => bound.to_string(),
        None => format!("{} (not bound)", side.env.listen),
    };
    row(
        "network: listen",
        listening(&left),
        listening(&right),
        "bound",
    );
    // Shown where either side serves HTTPS.
    if left.env.tls.is_some() || right.env.tls.is_some() {
        let https = |side: &Side| https(inner, service, &side.env);
        row("network: https", https(&left), https(&right), "bound");
    }
    row(
        "strategy",
        strategy(&left.env),
        strategy(&right.env),
        "declared",
    );
    row("deploy", policy(&left.env), policy(&right.env), "declared");
    let keys: std::collections::BTreeSet<&String> = left
        .env
        .config
        .keys()
        .chain(right.env.config.keys())
        .collect();
    for key in keys {
        let value = |e: &Environment| {
            e.config
                .get(key)
                .cloned()
                .unwrap_or_else(|| "(unset)".into())
        };
        row(
            &format!("config: {key}"),
            value(&left.env),
            value(&right.env),
            "declared",
        );
    }
    // Secrets by name only: their values are never shown.
    let secrets = |s: &Spec| {
        let names = s
            .run
            .as_ref()
            .map(|r| r.secrets.as_slice())
            .unwrap_or_default();
        match names {
            [] => "none".to_string(),
            names => names
                .iter()
                .map(|n| format!("{n}=***"))
                .collect::<Vec<_>>()
                .join(" "),
        }
    };
    row(
        "secrets",
        secrets(&left.spec),
        secrets(&right.spec),
        "release",
    );
    row("data", data(&left.env), data(&right.env), "declared");
    row(
        "run: command",
        command(&left.spec),
        command(&right.spec),
        "release",
    );
    let mut config_files = Vec::new();
    let names: std::collections::BTreeSet<&String> = left
        .files
        .iter()
        .chain(right.files.iter())
        .map(|(to, _)| to)
        .collect();
    for file in names {
        let text = |files: &[(String, String)]| {
            files
                .iter()
                .find(|(to, _)| to == file)
                .map(|(_, t)| t.clone())
                .unwrap_or_default()
        };
        let (x, y) = (text(&left.files), text(&right.files));
        let unified = similar::TextDiff::from_lines(&x, &y)
            .unified_diff()
            .header(&format!("{a}/{file}"), &format!("{b}/{file}"))
            .to_string();
        config_files.push(FileDiff {
            file: file.clone(),
            unified,
        });
    }
    let mut drift_found = Vec::new();
    for (env_name, side) in [(a, &left), (b, &right)] {
        if let Some(release) = &side.release {
            for d in self::drift(inner, release, &side.spec, &side.env).await? {
                drift_found.push(format!("{env_name}: {d}"));
            }
        }
    }
    let text = as_text(service, a, b, &rows, &config_files, &drift_found);
    Ok(EnvDiff {
        service: service.to_string(),
        a: a.to_string(),
        b: b.to_string(),
        rows,
        config_files,
        drift: drift_found,
        text,
    })
}

fn strategy(env: &Environment) -> String {
    match &env.strategy {
        Strategy::Rolling => "rolling".into(),
        Strategy::BlueGreen => "blue-green".into(),
        Strategy::Ab(ab) => format!("ab {:?}", ab.steps),
    }
}

fn policy(env: &Environment) -> String {
    let d = &env.deploy;
    let mut parts = vec![if d.auto {
        "auto".to_string()
    } else {
        "manual".to_string()
    }];
    if let Some(from) = &env.from {
        parts.push(format!("from {from}"));
    }
    if d.approvals > 0 {
        parts.push(format!("{} approvals", d.approvals));
    }
    if let Some(soak) = d.soak {
        parts.push(format!("soak {}", sluice_spec::format_duration(soak)));
    }
    for w in &d.freeze {
        parts.push(format!("freeze `{}`", w.expression));
    }
    parts.join(", ")
}

fn data(env: &Environment) -> String {
    match (&env.data.seed, &env.data.copy_from, &env.data.scrub) {
        (Some(seed), _, _) => format!("seeded from {seed}"),
        (_, Some(from), Some(scrub)) => format!("copied from {from} through {scrub}"),
        (_, Some(from), None) => format!("copied from {from}"),
        _ => "empty at first".into(),
    }
}

fn command(spec: &Spec) -> String {
    spec.run
        .as_ref()
        .map_or("(none)".into(), |r| r.command.clone())
}

fn as_text(
    service: &str,
    a: &str,
    b: &str,
    rows: &[DiffRow],
    files: &[FileDiff],
    drift: &[String],
) -> String {
    let width = rows.iter().map(|r| r.facet.len()).max().unwrap_or(0).max(5);
    let left = rows
        .iter()
        .map(|r| r.a.chars().count())
        .max()
        .unwrap_or(0)
        .max(a.len());
    let right = rows
        .iter()
        .map(|r| r.b.chars().count())
        .max()
        .unwrap_or(0)
        .max(b.len());
    let mut out = String::new();
    let _ = writeln!(out, "{service}: {a} ↔ {b}");
    let _ = writeln!(
        out,
        "{:width$}  {:left$}  {:right$}  differs",
        "facet", a, b
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:width$}  {:left$}  {:right$}  {}",
            r.facet,
            r.a,
            r.b,
            if r.differs.is_empty() {
                "-"
            } else {
                &r.differs
            }
        );
    }
    for f in files {
        if f.unified.is_empty() {
            let _ = writeln!(out, "\nconfig file {}: the same", f.file);
        } else {
            let _ = write!(out, "\nconfig file {}:\n{}", f.file, f.unified);
        }
    }
    let _ = writeln!(out);
    if drift.is_empty() {
        let _ = writeln!(out, "drift: none");
    } else {
        for d in drift {
            let _ = writeln!(out, "drift: {d}");
        }
    }
    out.lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_config_file_is_not_shown_inline() {
        let small = inline(("app.toml".into(), "level = 1\n".into()));
        assert_eq!(small.1, "level = 1\n");
        let large = inline(("big.json".into(), "x".repeat(MAX_INLINE + 1)));
        assert_eq!(large.0, "big.json");
        assert!(
            large.1.starts_with("(65537 bytes: larger than the 64 KiB"),
            "{}",
            large.1
        );
    }
}
