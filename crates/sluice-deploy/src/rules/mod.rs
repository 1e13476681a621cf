//! Rules in CD: which rules are in force for a release (the server's, and
//! the repository's `.sluice/rules.yaml` the release carries), making and
//! disabling them, and replaying one against a past change or release to show
//! whether it would have stopped it.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_spec::{Rule, RuleSpec};
use sluice_store::{NewRule, Release, RuleRecord};

use crate::runtime::InstanceSpec;
use crate::{Actor, CdError, CdResult, Inner, health, instances, render};

pub(crate) mod in_force;

pub(crate) use in_force::{from_record, in_force};

/// A rule to make, as the API takes it.
#[derive(Clone, Debug, Deserialize)]
pub struct NewRuleRequest {
    pub service: String,
    pub rule: RuleSpec,
    #[serde(default)]
    pub note: String,
    pub incident: Option<i64>,
    /// How long the rule lasts, e.g. `30d`; forever by default.
    pub expires_in: Option<String>,
}

pub(crate) async fn add(
    inner: &Arc<Inner>,
    request: NewRuleRequest,
    actor: &Actor,
) -> CdResult<RuleRecord> {
    if let Some((message, help)) = request.rule.problems().into_iter().next() {
        return Err(CdError::Invalid(format!("{message}; {help}")));
    }
    if let Some(id) = request.incident {
        let incident = inner.store.incident(id).await?;
        if incident.service != request.service {
            return Err(CdError::Invalid(format!(
                "INC-{id} is about {}, not {}",
                incident.service, request.service
            )));
        }
    }
    let expires_at = match &request.expires_in {
        Some(text) => {
            let d = sluice_spec::parse_duration(text)
                .map_err(|why| CdError::Invalid(format!("bad expires_in `{text}`: {why}")))?;
            Some(sluice_store::now_ms() + d.as_millis() as i64)
        }
        None => None,
    };
    let spec = serde_json::to_value(&request.rule).map_err(|e| CdError::Other(e.into()))?;
    let record = inner
        .store
        .insert_rule(NewRule {
            service: &request.service,
            spec: &spec,
            note: &request.note,
            incident_id: request.incident,
            actor: &actor.name,
            expires_at,
            description: &request.rule.describe(),
        })
        .await?;
    Ok(record)
}

pub(crate) async fn disable(
    inner: &Arc<Inner>,
    id: i64,
    reason: &str,
    actor: &Actor,
) -> CdResult<RuleRecord> {
    if reason.trim().is_empty() {
        return Err(CdError::Invalid(
            "disabling a rule needs a reason (--reason), which the change log keeps".into(),
        ));
    }
    Ok(inner.store.disable_rule(id, &actor.name, reason).await?)
}

/// What a replay looks at.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayTarget {
    Change(String),
    Release(i64),
}

/// Whether a rule would have stopped a past change or release, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Replay {
    pub rule: String,
    pub describes: String,
    pub target: String,
    /// `passed`, `blocked`, or `could_not_run` (the replay itself failed).
    pub outcome: &'static str,
    pub blocked: bool,
    pub reason: String,
    /// For a replay that started an instance: which data it ran against.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

/// What a replay found.
enum Verdict {
    Passed(String),
    Blocked(String),
    /// The check could not be made (the instance never listened, say).
    CouldNotRun(String),
}

pub(crate) async fn replay(inner: &Arc<Inner>, id: i64, target: ReplayTarget) -> CdResult<Replay> {
    let record = inner.store.rule(id).await?;
    let rule = from_record(&record)
        .ok_or_else(|| CdError::Conflict(format!("R{id}'s stored form no longer parses")))?;
    let service = &record.service;
    let (release, run_id, sha, name) = match target {
        ReplayTarget::Release(number) => {
            let release =
                inner.store.release(service, number).await.map_err(|_| {
                    CdError::NotFound(format!("{service} has no release v{number}"))
                })?;
            let (run, sha, name) = (release.run_id, release.sha.clone(), release.name());
            (Some(release), run, sha, name)
        }
        ReplayTarget::Change(prefix) => {
            let run = inner
                .store
                .runs(&Default::default())
                .await?
                .into_iter()
                .find(|r| r.sha.starts_with(&prefix) && prefix.len() >= 4)
                .ok_or_else(|| {
                    CdError::NotFound(format!(
                        "no run of a change `{prefix}` (give at least 4 characters of its sha)"
                    ))
                })?;
            let release = inner
                .store
                .releases(Some(service), 1000)
                .await?
                .into_iter()
                .find(|r| r.run_id == run.id);
            let name = format!("change {}", &run.sha[..12.min(run.sha.len())]);
            (release, run.id, run.sha, name)
        }
    };
    let mut data = None;
    let verdict = match &rule.spec {
        RuleSpec::RequireJob { job, paths } => {
            let touched = if paths.is_empty() {
                true
            } else {
                let files = changed_files(inner, run_id, &sha).await;
                files
                    .iter()
                    .any(|f| paths.iter().any(|p| f.starts_with(p.as_str())))
            };
            let jobs = inner.store.jobs(run_id).await?;
            match jobs.iter().find(|j| &j.name == job) {
                _ if !touched => {
                    Verdict::Passed(format!("it touched none of {}", paths.join(", ")))
                }
                None => Verdict::Blocked(format!("its pipeline had no job `{job}`")),
                Some(j) if j.status.to_string() == "success" => {
                    Verdict::Passed(format!("job `{job}` ran and passed"))
                }
                Some(j) => Verdict::Blocked(format!("job `{job}` ended {}", j.status)),
            }
        }
        RuleSpec::HealthCheck { .. } => {
            let release = release.ok_or_else(|| {
                CdError::Conflict(format!(
                    "{name} made no release, so no instance of it can be checked"
                ))
            })?;
            let (verdict, replayed_on) = probe_release(inner, &rule, &release).await?;
            data = replayed_on;
            verdict
        }
        _ => {
            return Err(CdError::Invalid(format!(
                "a {} rule judges a promotion at the time it happens; replay works for require_job and health_check rules",
                rule.spec.kind()
            )));
        }
    };
    let on = data
        .as_ref()
        .map(|d| format!(" (against {d})"))
        .unwrap_or_default();
    let (outcome, reason) = match verdict {
        Verdict::Passed(why) => (
            "passed",
            format!("{} would have let {name} through: {why}{on}", rule.label()),
        ),
        Verdict::Blocked(why) => (
            "blocked",
            format!("{} would have blocked {name}: {why}{on}", rule.label()),
        ),
        Verdict::CouldNotRun(why) => (
            "could_not_run",
            format!(
                "{} could not be replayed on {name}: {why}{on}",
                rule.label()
            ),
        ),
    };
    Ok(Replay {
        rule: rule.id.clone(),
        describes: rule.spec.describe(),
        target: name,
        outcome,
        blocked: outcome == "blocked",
        reason,
        data,
    })
}

/// The files a change's commit touched.
async fn changed_files(inner: &Arc<Inner>, run_id: i64, sha: &str) -> Vec<String> {
    let Ok(run) = inner.store.run(run_id).await else {
        return Vec::new();
    };
    let Ok(repo) = inner.store.repo_by_id(run.repo_id).await else {
        return Vec::new();
    };
    let Ok(source) = sluice_ci::source_dir(&inner.config.data_dir, &repo) else {
        return Vec::new();
    };
    sluice_ci::git::changed_files(&source, sha)
        .await
        .unwrap_or_default()
}

/// Starts a throwaway instance of `release` (config and data of the first
/// environment the rule covers, as that environment's user), waits until it
/// listens, and runs the rule's check on it; says which data it ran against.
async fn probe_release(
    inner: &Arc<Inner>,
    rule: &Rule,
    release: &Release,
) -> CdResult<(Verdict, Option<String>)> {
    let spec = sluice_spec::parse(sluice_spec::SPEC_FILE, &release.spec).map_err(|e| {
        CdError::Conflict(format!(
            "{} has an invalid sluice.yaml: {e}",
            release.name()
        ))
    })?;
    let env = spec
        .environments
        .iter()
        .find(|e| rule.spec.applies_to(&e.name))
        .cloned()
        .ok_or_else(|| {
            CdError::Conflict(format!(
                "{} has no environment the rule covers",
                release.name()
            ))
        })?;
    let run = spec
        .run
        .clone()
        .ok_or_else(|| CdError::Conflict(format!("{} has nothing to run", release.name())))?;
    let check = rule.spec.extra_check().expect("a health_check rule");
    let id = format!(
        "replay-{}-{}-{:08x}",
        rule.id,
        release.name(),
        rand::random::<u32>()
    );
    let scratch = inner.layout.replay(&id)?;
    let (data_dir, config_dir) = (scratch.join("data"), scratch.join("config"));
    let release_dir = crate::release::unpack(&inner.store, &inner.layout, release).await?;
    let files = render::render(&spec, &env, &release.name(), &release_dir)?;
    render::write(&config_dir, &files)?;
    let uid = inner.env_uid(&release.service, &env.name);
    let run_as = instances::seed_run_as(&release.service, &env, &data_dir, uid);
    let source = env
        .data
        .copy_from
        .as_ref()
        .map(|from| inner.layout.data(&release.service, from))
        .transpose()?;
    let filled = crate::data::for_replay(
        &env.data,
        &inner.layout.snapshots(&release.service, &env.name)?,
        &data_dir,
        &release_dir,
        source.as_deref(),
        &run_as,
    )
    .await;
    let replayed_on = match filled {
        Ok(data) => data.to_string(),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&scratch);
            return Ok((
                Verdict::CouldNotRun(format!("its data could not be prepared: {e:#}")),
                None,
            ));
        }
    };
    crate::data::hand_over(&data_dir, uid)?;
    let workdir = scratch.join("work");
    {
        let (release_dir, workdir) = (release_dir.clone(), workdir.clone());
        tokio::task::spawn_blocking(move || crate::workdir::prepare(&release_dir, &workdir, uid))
            .await
            .map_err(anyhow::Error::from)??;
    }
    let port = instances::free_port(&Default::default(), run.ports)?;
    let vars = instances::instance_env(
        inner,
        release,
        &env,
        &id,
        port,
        &workdir,
        &config_dir,
        &data_dir,
    );
    inner
        .runtime
        .start(InstanceSpec {
            id: id.clone(),
            workdir,
            command: run.command.clone(),
            env: vars,
            log: scratch.join("instance.log"),
            uid,
        })
        .await?;
    let backend =
        sluice_proxy::Backend::new(id.clone(), ([127, 0, 0, 1], port).into(), release.name());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default();
    let deadline = tokio::time::Instant::now() + run.ready_timeout;
    let mut verdict = Verdict::CouldNotRun(format!(
        "{} did not start listening within {}",
        release.name(),
        sluice_spec::format_duration(run.ready_timeout)
    ));
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(backend.addr).await.is_ok() {
            verdict = match health::rule_probe(&client, &backend, &check).await {
                Ok(()) => {
                    Verdict::Passed(format!("GET {} answered as the rule demands", check.path))
                }
                Err(why) => Verdict::Blocked(why),
            };
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    inner.runtime.stop(&id).await;
    let _ = std::fs::remove_dir_all(&scratch);
    Ok((verdict, Some(replayed_on)))
}
