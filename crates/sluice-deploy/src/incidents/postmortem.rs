//! The postmortem template: a Markdown document pre-filled with what Sluice
//! knows (the incident, its timeline, its suspects with their diffs), with
//! the sections a team fills in. Pure.

use sluice_store::IncidentTrigger;
use std::fmt::Write;

use chrono::{TimeZone, Utc};
use sluice_store::Incident;

use super::TimelineEntry;
use super::suspects::Suspect;

pub fn utc(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

pub fn template(incident: &Incident, timeline: &[TimelineEntry], suspects: &[Suspect]) -> String {
    let mut doc = String::new();
    let env = incident
        .environment
        .as_deref()
        .unwrap_or("every environment");
    let _ = writeln!(doc, "# {}: {}\n", incident.name(), incident.title);
    let _ = writeln!(doc, "- Service: {} ({env})", incident.service);
    let _ = writeln!(doc, "- Status: {}", incident.status);
    let _ = writeln!(
        doc,
        "- Opened: {} UTC by {} ({})",
        utc(incident.opened_at),
        incident.opened_by,
        incident.trigger_kind
    );
    let _ = writeln!(
        doc,
        "- First symptom: {} UTC",
        utc(incident.first_symptom_at)
    );
    doc.push_str("\n## Summary\n\n_What happened, in two or three sentences._\n");
    doc.push_str("\n## Impact\n\n_Who was affected, how badly and for how long._\n");
    doc.push_str("\n## Detection\n\n");
    match &incident.trigger_detail {
        Some(detail) if incident.trigger_kind != IncidentTrigger::Manual => {
            let _ = writeln!(doc, "Sluice opened this incident: {detail}\n");
        }
        Some(detail) => {
            let _ = writeln!(doc, "Opened by hand: {detail}\n");
        }
        None => {}
    }
    doc.push_str(
        "_What did we have to do to catch the problem? What would have caught it sooner?_\n",
    );
    doc.push_str("\n## Timeline (UTC)\n\n");
    if timeline.is_empty() {
        doc.push_str("_Nothing was recorded around the first symptom._\n");
    } else {
        doc.push_str("| time | env | what | who |\n| --- | --- | --- | --- |\n");
        for entry in timeline {
            let _ = writeln!(
                doc,
                "| {} | {} | {} | {} |",
                utc(entry.at),
                entry.environment.as_deref().unwrap_or(""),
                entry.summary.replace('|', "\\|"),
                entry.actor
            );
        }
    }
    doc.push_str("\n## Suspect changes\n\n");
    if suspects.is_empty() {
        doc.push_str("_No change was recorded before the first symptom._\n");
    }
    for suspect in suspects.iter().take(5) {
        let _ = writeln!(
            doc,
            "{}. **{}**: {} (score {:.2}; {})",
            suspect.rank,
            suspect.subject,
            suspect.summary,
            suspect.score,
            suspect.why.join("; ")
        );
        if let Some(diff) = &suspect.diff {
            for commit in diff.commits.iter().take(10) {
                let _ = writeln!(doc, "   - commit {commit}");
            }
            for change in &diff.config {
                let _ = writeln!(doc, "   - config {change}");
            }
            if !diff.files.is_empty() {
                let _ = writeln!(doc, "   - files: {}", diff.files.join(", "));
            }
        }
    }
    doc.push_str("\n## Root cause\n\n");
    if let Some(top) = suspects.first() {
        let _ = writeln!(
            doc,
            "_The change that caused it and why it broke. Sluice's top suspect: {} ({})._",
            top.subject, top.summary
        );
    } else {
        doc.push_str("_The change that caused it and why it broke._\n");
    }
    doc.push_str("\n## What went well\n\n_What limited the damage._\n");
    doc.push_str("\n## Action items\n\n");
    let _ = writeln!(
        doc,
        "- [ ] _Each lesson as a rule Sluice enforces from now on, e.g._ `sluice rule add health-check --service {} --path /PATH --incident {}` _or_ `sluice rule add require-job JOB --service {} --incident {}`",
        incident.service, incident.id, incident.service, incident.id
    );
    doc
}
