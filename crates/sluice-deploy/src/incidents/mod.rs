//! Incidents: opened by hand or by Sluice (a health check that keeps
//! failing, a failed deployment, a rolled-back experiment), moved open →
//! mitigated → resolved, each with a timeline from the change log and the
//! proxy's windows, ranked suspect changes with their diffs, a postmortem,
//! and the rules that came from it.

pub mod failures;
pub mod postmortem;
pub mod suspects;

use sluice_store::IncidentStatus;
use sluice_store::IncidentTrigger;
use sluice_store::{DeploymentCause, DeploymentStatus};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sluice_store::{ChangeEvent, ChangeQuery, Incident, NewIncident, RuleRecord};

use crate::{Actor, CdError, CdResult, Inner};
use suspects::{Candidate, Context, Suspect, SuspectDiff};

/// How far before the first symptom the timeline and the suspects look.
const LOOKBACK_MS: i64 = 6 * 3600 * 1000;

/// One line of an incident's timeline.
#[derive(Clone, Debug, Serialize)]
pub struct TimelineEntry {
    pub at: i64,
    pub kind: String,
    pub environment: Option<String>,
    pub actor: String,
    pub subject: String,
    pub summary: String,
}

/// An incident with everything known around it.
#[derive(Clone, Debug, Serialize)]
pub struct IncidentView {
    #[serde(flatten)]
    pub incident: Incident,
    pub name: String,
    pub timeline: Vec<TimelineEntry>,
    pub suspects: Vec<Suspect>,
    pub rules: Vec<RuleRecord>,
}

#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
pub struct OpenRequest {
    pub service: String,
    pub environment: Option<String>,
    pub title: String,
}

pub(crate) async fn open(
    inner: &Arc<Inner>,
    request: OpenRequest,
    actor: &Actor,
) -> CdResult<Incident> {
    if let Some(problem) = title_problem(&request.title) {
        return Err(CdError::Invalid(problem.into()));
    }
    // Only a service Sluice knows (it has a release), in one of its environments.
    let Some(release) = inner
        .store
        .releases(Some(&request.service), 1)
        .await?
        .into_iter()
        .next()
    else {
        return Err(CdError::NotFound(format!(
            "there is no service `{}`: it has no release yet",
            request.service.chars().take(63).collect::<String>()
        )));
    };
    if let Some(env) = &request.environment {
        crate::release::release_env(&release, env)
            .map_err(|e| CdError::NotFound(format!("{e:#}")))?;
    }
    Ok(inner
        .store
        .open_incident(NewIncident {
            service: &request.service,
            environment: request.environment.as_deref(),
            title: request.title.trim(),
            trigger_kind: IncidentTrigger::Manual,
            trigger_detail: None,
            actor: &actor.name,
            first_symptom_at: None,
        })
        .await?)
}

/// Why `title` cannot be an incident's title, if it cannot.
fn title_problem(title: &str) -> Option<&'static str> {
    let title = title.trim();
    if title.is_empty() {
        Some("an incident needs a title: what is broken, as users see it")
    } else if title.chars().count() > 200 {
        Some("an incident's title is at most 200 characters; the details go in its postmortem")
    } else if title.chars().any(char::is_control) {
        Some("an incident's title is one line of text, without control characters")
    } else {
        None
    }
}

/// Opens an incident for Sluice itself, unless one is open for the same
/// environment and cause (its title names what failed and which release):
/// a second rollback of the same release is the same incident, another
/// release's is its own.
pub(crate) async fn auto_open(
    inner: &Arc<Inner>,
    service: &str,
    env: &str,
    trigger: IncidentTrigger,
    title: &str,
    detail: &str,
) {
    let open = inner.store.incidents(Some(service), true, 100).await;
    if let Ok(open) = &open
        && let Some(same) = open
            .iter()
            .find(|i| i.environment.as_deref() == Some(env) && i.title == title)
    {
        tracing::info!(incident = %same.name(), %title, "an incident is open already for this cause");
        return;
    }
    let failing = failing_paths(inner, service, env);
    let detail = if failing.is_empty() {
        detail.to_string()
    } else {
        format!("{detail}; the failing requests were {}", failing.join(", "))
    };
    match inner
        .store
        .open_incident(NewIncident {
            service,
            environment: Some(env),
            title,
            trigger_kind: trigger,
            trigger_detail: Some(&detail),
            actor: "sluice",
            first_symptom_at: None,
        })
        .await
    {
        Ok(incident) => {
            tracing::warn!(incident = %incident.name(), service, env, %title, "incident opened")
        }
        Err(e) => tracing::error!(error = %e, "could not open an incident"),
    }
}

/// Opens the incidents parts below this module raise (see [`crate::Alarm`]).
pub(crate) async fn take_alarms(
    inner: Arc<Inner>,
    mut raised: tokio::sync::mpsc::UnboundedReceiver<crate::Alarm>,
) {
    loop {
        let alarm = tokio::select! {
            alarm = raised.recv() => alarm,
            _ = inner.shutdown.cancelled() => None,
        };
        let Some(alarm) = alarm else {
            return;
        };
        auto_open(
            &inner,
            &alarm.service,
            &alarm.env,
            alarm.trigger,
            &alarm.title,
            &alarm.detail,
        )
        .await;
    }
}

/// The requests that failed most lately at the environment's entry points:
/// the server's recent access log, and what each agent's host that serves
/// it last reported of its own: `GET /checkout (57 of 60 failures)`.
fn failing_paths(inner: &Inner, service: &str, env: &str) -> Vec<String> {
    let key = (service.to_string(), env.to_string());
    let mut counts = inner.hosts.entries.failures(&key, inner.hosts.lease);
    if let Ok(path) = inner.layout.access_log(service, env) {
        // The last MiB, across a rotation: never the whole log.
        counts.push(failures::count(&sluice_proxy::access_log::recent(
            &path,
            1 << 20,
        )));
    }
    failures::worst(&counts)
}

pub(crate) async fn transition(
    inner: &Arc<Inner>,
    id: i64,
    status: IncidentStatus,
    note: Option<&str>,
    actor: &Actor,
) -> CdResult<Incident> {
    if status == IncidentStatus::Open {
        return Err(CdError::Invalid(
            "an incident moves to mitigated or resolved, not back to open".into(),
        ));
    }
    inner
        .store
        .set_incident_status(id, status, &actor.name, note)
        .await
        .map_err(|e| match e {
            sluice_store::StoreError::Conflict(m) => CdError::Conflict(m),
            other => other.into(),
        })
}

pub(crate) async fn view(inner: &Arc<Inner>, id: i64) -> CdResult<IncidentView> {
    let incident = inner.store.incident(id).await?;
    // One read of the change log serves the timeline and the suspects.
    let events = events_since(inner, &incident, incident.first_symptom_at - LOOKBACK_MS).await?;
    let mut timeline = timeline(&incident, &events);
    if let Some(env) = &incident.environment {
        let since = incident.first_symptom_at - LOOKBACK_MS;
        let traffic = crate::traffic::since(inner, &incident.service, env, since).await;
        let until = incident.resolved_at.unwrap_or(i64::MAX);
        timeline.extend(
            error_rate_jumps(env, &traffic)
                .into_iter()
                .filter(|e| e.at <= until),
        );
        timeline.sort_by_key(|e| e.at);
    }
    let suspects = suspects(inner, &incident, &events).await?;
    let rules = inner
        .store
        .rules(Some(&incident.service), false)
        .await?
        .into_iter()
        .filter(|r| r.incident_id == Some(id))
        .collect();
    Ok(IncidentView {
        name: incident.name(),
        incident,
        timeline,
        suspects,
        rules,
    })
}

/// The stored postmortem, or the template filled with what is known now.
pub(crate) async fn postmortem(inner: &Arc<Inner>, id: i64) -> CdResult<String> {
    if let Some(text) = inner.store.incident(id).await?.postmortem {
        return Ok(text);
    }
    let view = view(inner, id).await?;
    Ok(postmortem::template(
        &view.incident,
        &view.timeline,
        &view.suspects,
    ))
}

pub(crate) async fn edit_postmortem(
    inner: &Arc<Inner>,
    id: i64,
    text: &str,
    actor: &Actor,
) -> CdResult<Incident> {
    if text.trim().is_empty() {
        return Err(CdError::Invalid(
            "the postmortem is empty; nothing was saved".into(),
        ));
    }
    Ok(inner.store.set_postmortem(id, text, &actor.name).await?)
}

/// The change log of the service around the incident.
fn timeline(incident: &Incident, events: &[ChangeEvent]) -> Vec<TimelineEntry> {
    let until = incident.resolved_at.unwrap_or(i64::MAX);
    let mut entries: Vec<TimelineEntry> = events
        .iter()
        .rev()
        .filter(|e| e.at <= until)
        .filter(|e| !e.kind.starts_with("change.") && !e.kind.starts_with("postmortem."))
        // Another incident's own events belong to its timeline, not this one's.
        .filter(|e| !e.kind.starts_with("incident.") || e.subject == incident.name())
        .map(|e| TimelineEntry {
            at: e.at,
            kind: e.kind.clone(),
            environment: e.environment.clone(),
            actor: e.actor.clone(),
            subject: e.subject.clone(),
            summary: e.summary.clone(),
        })
        .collect();
    entries.sort_by_key(|e| e.at);
    entries
}

/// The ten-second buckets of the environment's traffic (stored or still in
/// the proxy's windows) where the error rate rose past 5% from below it.
fn error_rate_jumps(env: &str, traffic: &[sluice_store::TrafficBucket]) -> Vec<TimelineEntry> {
    let mut out = Vec::new();
    let mut was_high = false;
    for t in traffic {
        let (requests, errors) = (t.a_requests + t.b_requests, t.a_errors + t.b_errors);
        let (b_requests, b_errors) = (t.b_requests, t.b_errors);
        let high = requests >= 10 && errors as f64 / requests as f64 >= 0.05;
        if high && !was_high {
            let mut summary = format!(
                "error rate in {env} rose to {:.1}% ({errors} of {requests} requests in 10 s)",
                100.0 * errors as f64 / requests as f64
            );
            if b_requests > 0 {
                summary.push_str(&format!("; B: {b_errors} of {b_requests}"));
            }
            out.push(TimelineEntry {
                at: t.bucket,
                kind: "metric.error_rate".into(),
                environment: Some(env.to_string()),
                actor: "proxy".into(),
                subject: env.to_string(),
                summary,
            });
        }
        was_high = high;
    }
    out
}

/// The service's change-log events since `since`, newest first.
async fn events_since(
    inner: &Inner,
    incident: &Incident,
    since: i64,
) -> CdResult<Vec<ChangeEvent>> {
    Ok(inner
        .store
        .changes_log(&ChangeQuery {
            service: Some(incident.service.clone()),
            since_ms: Some(since),
            limit: 1000,
            ..Default::default()
        })
        .await?)
}

/// Requests served in `[from, until)` when at least 50 were and under 0.5%
/// failed: a release that ran like that was not what broke.
fn clean_requests(traffic: &[sluice_store::TrafficBucket], from: i64, until: i64) -> Option<i64> {
    let (requests, errors) = traffic
        .iter()
        .filter(|b| b.bucket >= from && b.bucket < until)
        .fold((0, 0), |(r, e), b| {
            (r + b.a_requests + b.b_requests, e + b.a_errors + b.b_errors)
        });
    (requests >= 50 && errors * 200 < requests).then_some(requests)
}

/// Deployments and other changes before the first symptom, ranked.
async fn suspects(
    inner: &Arc<Inner>,
    incident: &Incident,
    events: &[ChangeEvent],
) -> CdResult<Vec<Suspect>> {
    let since = incident.first_symptom_at - LOOKBACK_MS;
    let deployments = inner
        .store
        .deployments(Some(&incident.service), None, None, 200)
        .await?;
    // The deployment whose failure (or rolled-back experiment) opened it.
    let opened_by = matches!(incident.trigger_kind.as_str(), "experiment" | "deployment")
        .then(|| {
            deployments
                .iter()
                .filter(|d| incident.environment.as_deref() == Some(d.environment.as_str()))
                .filter(|d| {
                    matches!(
                        d.status,
                        DeploymentStatus::RolledBack | DeploymentStatus::Failed
                    )
                })
                .filter(|d| d.created_at <= incident.opened_at)
                .max_by_key(|d| d.created_at)
                .map(|d| d.id)
        })
        .flatten();
    let traffic = match &incident.environment {
        Some(env) => crate::traffic::since(inner, &incident.service, env, since).await,
        None => Vec::new(),
    };
    let mut candidates = Vec::new();
    for d in deployments.iter().filter(|d| {
        d.created_at >= since
            && !matches!(d.cause, DeploymentCause::Reconcile | DeploymentCause::Heal)
    }) {
        // Until the next deployment to the same environment, or the first symptom.
        let until = deployments
            .iter()
            .filter(|n| n.environment == d.environment && n.created_at > d.created_at)
            .map(|n| n.created_at)
            .min()
            .unwrap_or(i64::MAX)
            .min(incident.first_symptom_at);
        let served_cleanly = (d.status == DeploymentStatus::Succeeded
            && incident.environment.as_deref() == Some(d.environment.as_str()))
        .then(|| clean_requests(&traffic, d.created_at, until))
        .flatten();
        let release = inner.store.release_by_id(d.release_id).await?;
        let previous = match d.previous_release_id {
            Some(id) => Some(inner.store.release_by_id(id).await?),
            None => None,
        };
        let diff = release_diff(inner, previous.as_ref(), &release, &d.environment).await;
        let was = previous
            .as_ref()
            .map_or("nothing".to_string(), |p| p.name());
        candidates.push(Candidate {
            subject: format!("deployment {}", d.id),
            kind: "deployment".into(),
            environment: Some(d.environment.clone()),
            at: d.created_at,
            summary: format!(
                "{} to {} (was {was}; {}, {} by {}; {})",
                release.name(),
                d.environment,
                d.strategy,
                d.cause,
                d.actor,
                d.status
            ),
            release: Some(d.release),
            restores: d.cause == DeploymentCause::Rollback,
            first_release: previous.is_none(),
            diff: Some(diff),
            served_cleanly,
            opened_it: opened_by == Some(d.id),
        });
    }
    for e in events.iter().filter(|e| {
        matches!(
            e.kind.as_str(),
            "secret.set" | "rule.disabled" | "promotion.override" | "env.unpinned"
        )
    }) {
        candidates.push(Candidate {
            subject: e.subject.clone(),
            kind: e.kind.clone(),
            environment: e.environment.clone(),
            at: e.at,
            summary: e.summary.clone(),
            release: None,
            restores: false,
            diff: None,
            first_release: false,
            served_cleanly: None,
            opened_it: false,
        });
    }
    let upstream = upstream(inner, incident).await;
    // The title and the paths of failing requests name the failing part;
    // the rest of the detail is numbers and the words of the analysis.
    let detail = incident.trigger_detail.as_deref().unwrap_or("");
    let paths: Vec<&str> = detail
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .collect();
    let mut texts = vec![incident.title.as_str()];
    texts.extend(paths);
    let keywords = suspects::keywords(&texts);
    Ok(suspects::rank(
        candidates,
        &Context {
            environment: incident.environment.as_deref(),
            upstream: &upstream,
            first_symptom_at: incident.first_symptom_at,
            keywords: &keywords,
        },
    ))
}

/// The environments a release passes before the incident's, nearest first,
/// from the newest release's `sluice.yaml`.
async fn upstream(inner: &Arc<Inner>, incident: &Incident) -> Vec<String> {
    let Some(env) = &incident.environment else {
        return Vec::new();
    };
    let Ok(releases) = inner.store.releases(Some(&incident.service), 1).await else {
        return Vec::new();
    };
    let Some(spec) = releases
        .first()
        .and_then(|r| sluice_spec::parse(sluice_spec::SPEC_FILE, &r.spec).ok())
    else {
        return Vec::new();
    };
    let mut chain = Vec::new();
    let mut at = spec.environment(env).and_then(|e| e.from.clone());
    while let Some(name) = at {
        if chain.contains(&name) {
            break;
        }
        at = spec.environment(&name).and_then(|e| e.from.clone());
        chain.push(name);
    }
    chain
}

/// What a deployment changed: the commits and files since the release the
/// environment ran before, the patch, and the environment's config values.
async fn release_diff(
    inner: &Arc<Inner>,
    previous: Option<&sluice_store::Release>,
    release: &sluice_store::Release,
    env: &str,
) -> SuspectDiff {
    let mut diff = SuspectDiff::default();
    let config = |r: &sluice_store::Release| {
        crate::release::release_env(r, env)
            .map(|(_, e)| e.config)
            .unwrap_or_default()
    };
    let after = config(release);
    let before = previous.map(config).unwrap_or_default();
    let keys: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for key in keys {
        let (a, b) = (before.get(key), after.get(key));
        if a != b {
            let shown = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(unset)".into());
            diff.config
                .push(format!("{key}: {} → {}", shown(a), shown(b)));
        }
    }
    let Ok(repo) = inner.store.repo_by_id(release.repo_id).await else {
        return diff;
    };
    let Ok(source) = sluice_ci::source_dir(&inner.config.data_dir, &repo) else {
        return diff;
    };
    let git = async |args: &[&str]| sluice_ci::git::git(&source, args).await.ok();
    let lines = |text: String| text.lines().map(str::to_string).collect::<Vec<_>>();
    let range = match previous {
        Some(p) if p.sha != release.sha => format!("{}..{}", p.sha, release.sha),
        Some(_) => return diff,
        None => release.sha.clone(),
    };
    // Stored shas were checked on the way in; checked again, as they meet git.
    let checked = [Some(&release.sha), previous.map(|p| &p.sha)];
    if checked
        .iter()
        .flatten()
        .any(|sha| sluice_ci::git::check_sha(sha).is_err())
    {
        return diff;
    }
    let log = [
        "log",
        "--format=%h %s",
        "-n",
        "50",
        "--end-of-options",
        &range,
    ];
    if let Some(log) = git(&log).await {
        diff.commits = lines(log);
    }
    match previous {
        Some(p) => {
            if let Some(files) = git(&[
                "diff",
                "--name-only",
                "--end-of-options",
                &p.sha,
                &release.sha,
            ])
            .await
            {
                diff.files = lines(files);
            }
            if let Some(patch) = git(&["diff", "--end-of-options", &p.sha, &release.sha]).await {
                diff.patch = cut(&patch, 16 * 1024);
            }
        }
        None => {
            if let Some(files) = git(&[
                "ls-tree",
                "-r",
                "--name-only",
                "--end-of-options",
                &release.sha,
            ])
            .await
            {
                diff.files = lines(files);
            }
        }
    }
    diff
}

fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n… (cut at {max} bytes)", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::title_problem;

    #[test]
    fn a_title_is_one_short_printable_line() {
        assert_eq!(title_problem("checkout fails for everyone"), None);
        for bad in ["", "   ", "red\u{1b}[31m", "two\nlines", &"x".repeat(201)] {
            assert!(title_problem(bad).is_some(), "{bad:?}");
        }
    }
}
