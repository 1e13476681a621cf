//! Telling a repository's forge about its runs: commit statuses in the
//! shape of GitHub's API. (What else follows a run, such as a release,
//! is a controller woken through the store, not a call from here.)

use std::time::Duration;

use sluice_store::{Repo, Run, RunStatus};

/// Posts `{state, target_url, description, context}` to the repository's
/// `status_url` (with `{sha}` replaced), as GitHub's commit status API takes it.
pub struct ForgeStatus {
    client: reqwest::Client,
    /// Where a person can see the run: the server's own address.
    public_url: String,
}

impl ForgeStatus {
    pub fn new(public_url: String) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        ForgeStatus { client, public_url }
    }
}

/// The state GitHub's API names for a run's status.
pub fn forge_state(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Queued | RunStatus::Running => "pending",
        RunStatus::Success | RunStatus::Skipped => "success",
        RunStatus::Failure => "failure",
        RunStatus::Cancelled | RunStatus::Error | RunStatus::Lost => "error",
    }
}

impl ForgeStatus {
    /// Posts the run's status when it is queued, starts and ends.
    pub async fn run_changed(&self, repo: &Repo, run: &Run) {
        let Some(url) = &repo.status_url else { return };
        let url = url.replace("{sha}", &run.sha);
        let description = match &run.reason {
            Some(reason) => format!("run {}: {}", run.id, reason),
            None => format!("run {} is {}", run.id, run.status),
        };
        let body = serde_json::json!({
            "state": forge_state(run.status),
            "target_url": format!("{}/runs/{}", self.public_url, run.id),
            "description": description.chars().take(140).collect::<String>(),
            "context": "sluice/ci",
        });
        let mut request = self
            .client
            .post(&url)
            .json(&body)
            .header("Accept", "application/vnd.github+json");
        if let Some(token) = &repo.status_token {
            request = request.bearer_auth(token);
        }
        match request.send().await {
            Ok(response) if response.status().is_success() => {}
            Ok(response) => {
                tracing::warn!(%url, status = %response.status(), "the forge refused the commit status")
            }
            Err(e) => tracing::warn!(%url, error = %e, "could not post the commit status"),
        }
    }
}
