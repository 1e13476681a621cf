//! Ranking suspect changes: most of the time something stopped working
//! because something changed. Pure: the candidates and the incident's facts
//! come in, a ranked list with the reasons for each rank comes out.

use serde::Serialize;

/// What changed, with what it touched.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SuspectDiff {
    /// `abc1234 add express checkout`, newest first.
    pub commits: Vec<String>,
    pub files: Vec<String>,
    /// `GREETING: hello → hi` for the environment's config values.
    pub config: Vec<String>,
    /// The patch, cut at a readable size.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub patch: String,
}

/// A change that happened before the first symptom.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// `deployment 5`, `secret.set`.
    pub subject: String,
    pub kind: String,
    pub environment: Option<String>,
    pub at: i64,
    pub summary: String,
    pub release: Option<i64>,
    /// `rollback` and `reconcile` go back to what ran before.
    pub restores: bool,
    pub diff: Option<SuspectDiff>,
    /// A release's first: its diff is all of its code, which touches nothing in particular.
    pub first_release: bool,
    /// Requests it served, with no more than a trace of errors, between its
    /// deployment and the next change or the first symptom.
    pub served_cleanly: Option<i64>,
    /// The deployment whose failure or rolled-back experiment opened the incident.
    pub opened_it: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Suspect {
    pub rank: usize,
    pub subject: String,
    pub kind: String,
    pub environment: Option<String>,
    pub at: i64,
    pub summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<i64>,
    pub score: f64,
    /// Why it ranks where it does.
    pub why: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<SuspectDiff>,
}

/// The incident, as far as ranking needs it.
pub struct Context<'a> {
    pub environment: Option<&'a str>,
    /// The environments a release passes before this one, nearest first.
    pub upstream: &'a [String],
    pub first_symptom_at: i64,
    /// Words naming the failing part: failing paths, words of the title.
    pub keywords: &'a [String],
}

/// Ranks the candidates before the first symptom: by environment, by time
/// before it, by whether they touched the failing part; best first.
pub fn rank(candidates: Vec<Candidate>, cx: &Context) -> Vec<Suspect> {
    let mut ranked: Vec<Suspect> = candidates
        .into_iter()
        .filter(|c| c.at <= cx.first_symptom_at)
        .map(|c| score(c, cx))
        .collect();
    ranked.sort_by(|a, b| b.score.total_cmp(&a.score).then(b.at.cmp(&a.at)));
    for (i, suspect) in ranked.iter_mut().enumerate() {
        suspect.rank = i + 1;
    }
    ranked
}

fn score(c: Candidate, cx: &Context) -> Suspect {
    let mut why = Vec::new();
    let mut score = match (c.environment.as_deref(), cx.environment) {
        (Some(env), Some(failing)) if env == failing => {
            why.push(format!("it changed {env}, where the incident is"));
            3.0
        }
        (Some(env), Some(failing)) if cx.upstream.iter().any(|u| u == env) => {
            why.push(format!("it changed {env}, on the way to {failing}"));
            1.5
        }
        (None, _) => {
            why.push("it changed the whole service".into());
            1.0
        }
        _ => 0.5,
    };
    let minutes = (cx.first_symptom_at - c.at) as f64 / 60_000.0;
    score += 3.0 / (1.0 + minutes / 30.0);
    why.push(format!(
        "{} before the first symptom",
        human_minutes(minutes)
    ));
    if c.first_release {
        why.push("its diff is all of its code (a first release): not counted as touching".into());
    } else if let Some(hit) = c.diff.as_ref().and_then(|d| touched(d, cx.keywords)) {
        score += 3.0;
        why.push(hit);
    }
    if c.opened_it {
        score += 5.0;
        why.push("its failure (or its experiment's rollback) opened the incident".into());
    }
    if c.restores {
        score *= 0.3;
        why.push("it went back to a release that ran before".into());
    }
    if let Some(requests) = c.served_cleanly {
        score *= 0.3;
        why.push(format!(
            "it served {requests} requests cleanly before the first symptom"
        ));
    }
    Suspect {
        rank: 0,
        subject: c.subject,
        kind: c.kind,
        environment: c.environment,
        at: c.at,
        summary: c.summary,
        release: c.release,
        score: (score * 100.0).round() / 100.0,
        why,
        diff: c.diff,
    }
}

/// Says where a diff mentions one of the keywords, if it does.
fn touched(diff: &SuspectDiff, keywords: &[String]) -> Option<String> {
    for word in keywords {
        let word = word.to_lowercase();
        if let Some(file) = diff.files.iter().find(|f| f.to_lowercase().contains(&word)) {
            return Some(format!("it touched `{word}`: {file}"));
        }
        if let Some(commit) = diff
            .commits
            .iter()
            .find(|c| c.to_lowercase().contains(&word))
        {
            return Some(format!("it touched `{word}`: commit {commit}"));
        }
        if let Some(line) = diff.patch.lines().find(|l| {
            (l.starts_with('+') || l.starts_with('-'))
                && !l.starts_with("+++")
                && !l.starts_with("---")
                && l.to_lowercase().contains(&word)
        }) {
            let line: String = line.chars().take(80).collect();
            return Some(format!("it touched `{word}`: `{}`", line.trim()));
        }
        if let Some(change) = diff
            .config
            .iter()
            .find(|c| c.to_lowercase().contains(&word))
        {
            return Some(format!("it touched `{word}`: config {change}"));
        }
    }
    None
}

fn human_minutes(minutes: f64) -> String {
    if minutes < 1.0 {
        format!("{:.0} s", minutes * 60.0)
    } else if minutes < 120.0 {
        format!("{minutes:.0} min")
    } else {
        format!("{:.1} h", minutes / 60.0)
    }
}

/// The words of a title and of failing paths that may name the failing part.
pub fn keywords(texts: &[&str]) -> Vec<String> {
    const COMMON: [&str; 24] = [
        "fails",
        "failed",
        "failing",
        "error",
        "errors",
        "with",
        "from",
        "that",
        "this",
        "when",
        "rolled",
        "back",
        "experiment",
        "deployment",
        "instance",
        "health",
        "healthy",
        "unhealthy",
        "check",
        "prod",
        "become",
        "within",
        "answered",
        "against",
    ];
    let mut words: Vec<String> = Vec::new();
    for text in texts {
        for word in text
            .split(|c: char| !c.is_alphanumeric() && c != '-' && c != '_')
            .map(str::to_lowercase)
        {
            if word.len() >= 4
                && !word.chars().all(|c| c.is_ascii_digit())
                && !COMMON.contains(&word.as_str())
                && !words.contains(&word)
            {
                words.push(word);
            }
        }
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(subject: &str, env: &str, minutes_before: i64, files: &[&str]) -> Candidate {
        Candidate {
            subject: subject.into(),
            kind: "deployment".into(),
            environment: Some(env.into()),
            at: 1_000_000_000 - minutes_before * 60_000,
            summary: subject.into(),
            release: None,
            restores: false,
            diff: Some(SuspectDiff {
                files: files.iter().map(|f| f.to_string()).collect(),
                ..Default::default()
            }),
            first_release: false,
            served_cleanly: None,
            opened_it: false,
        }
    }

    #[test]
    fn the_rolled_back_b_leads_the_a_that_served_cleanly_by_a_clear_margin() {
        let keywords = keywords(&["the experiment of v2 in prod was rolled back", "/checkout"]);
        let cx = Context {
            environment: Some("prod"),
            upstream: &[],
            first_symptom_at: 1_000_000_000,
            keywords: &keywords,
        };
        // A: the first release, its diff every file, and clean traffic before B came.
        let mut a = candidate(
            "deployment 1",
            "prod",
            12,
            &["app/checkout.py", "app/server.py"],
        );
        a.first_release = true;
        a.served_cleanly = Some(5000);
        let mut b = candidate("deployment 2", "prod", 10, &["app/checkout.py"]);
        b.opened_it = true;
        let ranked = rank(vec![a, b], &cx);
        assert_eq!(ranked[0].subject, "deployment 2");
        assert!(
            ranked[0].score > 3.0 * ranked[1].score,
            "{} against {}",
            ranked[0].score,
            ranked[1].score
        );
        assert!(
            ranked[1]
                .why
                .iter()
                .any(|w| w.contains("5000 requests cleanly"))
        );
        assert!(ranked[1].why.iter().any(|w| w.contains("first release")));
    }

    #[test]
    fn the_recent_change_to_the_failing_part_in_the_failing_environment_leads() {
        let upstream = vec!["pre-prod".to_string(), "dev".to_string()];
        let keywords = keywords(&["checkout fails", "/checkout"]);
        assert_eq!(keywords, vec!["checkout"]);
        let cx = Context {
            environment: Some("prod"),
            upstream: &upstream,
            first_symptom_at: 1_000_000_000,
            keywords: &keywords,
        };
        let ranked = rank(
            vec![
                candidate("deployment 1", "prod", 240, &["app/server.py"]),
                candidate("deployment 2", "dev", 5, &["app/checkout.py"]),
                candidate("deployment 3", "prod", 10, &["app/checkout.py"]),
                candidate("deployment 4", "prod", -3, &["app/checkout.py"]),
            ],
            &cx,
        );
        let order: Vec<&str> = ranked.iter().map(|s| s.subject.as_str()).collect();
        assert_eq!(
            order,
            ["deployment 3", "deployment 2", "deployment 1"],
            "after the symptom is no suspect"
        );
        assert!(ranked[0].why.iter().any(|w| w.contains("app/checkout.py")));
    }

    #[test]
    fn a_rollback_ranks_below_the_change_it_undid() {
        let cx = Context {
            environment: Some("prod"),
            upstream: &[],
            first_symptom_at: 1_000_000_000,
            keywords: &[],
        };
        let mut undo = candidate("deployment 9", "prod", 1, &[]);
        undo.restores = true;
        let ranked = rank(vec![undo, candidate("deployment 8", "prod", 20, &[])], &cx);
        assert_eq!(ranked[0].subject, "deployment 8");
    }
}
