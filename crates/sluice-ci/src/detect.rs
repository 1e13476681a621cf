//! Change detection: registering repositories, installing the git hook that
//! pokes the server, scanning refs for commits not seen before, and queuing
//! a run for each new commit on each ref.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sluice_spec::Layout;
use sluice_spec::paths::PathEscape;
use sluice_store::{NewChange, NewRepo, Repo, Run};

use crate::{Engine, git, webhook::Announced};

/// The most commits one move of a ref becomes: the newest of them.
pub const MAX_GAINED: usize = 100;

/// The line that marks a hook as sluice's own, so it is replaced but never a user's.
pub const HOOK_MARKER: &str = "# installed by sluice: notifies the sluice server when refs move";

/// What `sluice repo add` asks for.
#[derive(Clone, Debug, Default, serde::Deserialize, utoipa::ToSchema)]
pub struct AddRepo {
    pub name: Option<String>,
    /// An absolute path of a local repository, or a URL to fetch from.
    pub location: String,
    pub webhook_secret: Option<String>,
    pub status_url: Option<String>,
    pub status_token: Option<String>,
}

fn is_remote(location: &str) -> bool {
    location.contains("://") || (location.contains('@') && location.contains(':'))
}

fn default_name(location: &str) -> String {
    let last = location
        .trim_end_matches('/')
        .rsplit(['/', ':'])
        .next()
        .unwrap_or("repo");
    last.trim_end_matches(".git").to_string()
}

/// Where the server reads a repository's commits: the repository itself
/// when local, else its mirror under the data directory.
pub fn source_dir(data_dir: &Path, repo: &Repo) -> Result<PathBuf, PathEscape> {
    match &repo.local_path {
        Some(path) => Ok(PathBuf::from(path)),
        None => Layout::new(data_dir).mirror(&repo.name),
    }
}

impl Engine {
    pub(crate) fn source_dir(&self, repo: &Repo) -> Result<PathBuf, PathEscape> {
        source_dir(&self.config.data_dir, repo)
    }

    pub(crate) async fn add_repo(&self, request: AddRepo, actor: &str) -> Result<Repo> {
        let name = request
            .name
            .clone()
            .unwrap_or_else(|| default_name(&request.location));
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            bail!(
                "`{name}` is not a valid repository name; use letters, digits, `-`, `_` and `.` (--name NAME)"
            );
        }
        let remote = is_remote(&request.location);
        let local_path = if remote {
            let mirror = Layout::new(&self.config.data_dir).mirror(&name)?;
            git::update_mirror(&request.location, &mirror)
                .await
                .with_context(|| format!("could not fetch {}", request.location))?;
            None
        } else {
            let path = Path::new(&request.location);
            if !path.is_absolute() {
                bail!(
                    "`{}` is not an absolute path; the CLI resolves it for you",
                    request.location
                );
            }
            if !git::is_repository(path).await {
                bail!(
                    "`{}` is not a git repository; run `git init` there first, or give a URL",
                    path.display()
                );
            }
            Some(path.to_string_lossy().into_owned())
        };
        let hook = match &local_path {
            Some(path) => install_hook(
                Path::new(path),
                &self.config.server_url,
                &self.config.sluice_bin,
                &name,
            )
            .await
            .unwrap_or_else(|e| format!("poll (could not install the hook: {e:#})")),
            None => "poll".to_string(),
        };
        let secret = request
            .webhook_secret
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        let repo = self
            .store
            .insert_repo(
                NewRepo {
                    name,
                    url: request.location.clone(),
                    local_path,
                    webhook_secret: secret,
                    status_url: request.status_url,
                    status_token: request.status_token,
                    hook,
                },
                actor,
            )
            .await?;
        // Existing refs are the baseline; only the mainline head gets a run now.
        let dir = self.source_dir(&repo)?;
        let _guard = self.scanning.lock().await;
        for (ref_name, sha) in git::list_refs(&dir).await? {
            if self.is_mainline(&dir, &ref_name, &sha).await {
                self.queue(&repo, &ref_name, &sha, "add", None).await?;
            }
            self.store.set_ref(repo.id, &ref_name, Some(&sha)).await?;
        }
        Ok(repo)
    }

    /// Points every installed hook at this server, whose address may have changed since.
    pub(crate) async fn refresh_hooks(&self) {
        let Ok(repos) = self.store.repos().await else {
            return;
        };
        for repo in repos.iter().filter(|r| r.hook == "hook") {
            let Some(path) = &repo.local_path else {
                continue;
            };
            let hook = install_hook(
                Path::new(path),
                &self.config.server_url,
                &self.config.sluice_bin,
                &repo.name,
            )
            .await
            .unwrap_or_else(|e| format!("poll (could not install the hook: {e:#})"));
            if hook != repo.hook {
                tracing::warn!(repo = %repo.name, %hook, "the repository's hook could not be refreshed");
                let _ = self.store.set_repo_hook(repo.id, &hook).await;
            }
        }
    }

    /// Compares the refs in the repository with those seen last, and queues a run for each that moved.
    pub(crate) async fn scan(&self, repo: &Repo, source: &str) -> Result<Vec<Run>> {
        let _guard = self.scanning.lock().await;
        let dir = self.source_dir(repo)?;
        if repo.local_path.is_none() {
            git::update_mirror(&repo.url, &dir).await?;
        }
        let refs = git::list_refs(&dir).await?;
        let known = self.store.known_refs(repo.id).await?;
        let mut queued = Vec::new();
        for (ref_name, sha) in &refs {
            let old = known.get(ref_name);
            if old == Some(sha) {
                continue;
            }
            // Every commit the ref gained since it was last seen, so that
            // neither a burst of commits nor a missed hook loses one.
            let commits = match old {
                Some(old) => self.gained(&dir, old, sha).await,
                None => vec![sha.clone()],
            };
            for commit in &commits {
                queued.extend(self.queue(repo, ref_name, commit, source, None).await?);
            }
            self.store.set_ref(repo.id, ref_name, Some(sha)).await?;
        }
        for gone in known.keys().filter(|k| !refs.iter().any(|(r, _)| r == *k)) {
            self.store.set_ref(repo.id, gone, None).await?;
        }
        Ok(queued)
    }

    /// The commits that become changes when a ref moves from `old` to
    /// `new`, oldest first: each one its first-parent history gained (at
    /// most [`MAX_GAINED`], the newest), or only `new` when its
    /// `sluice.yaml` says `changes: tips`.
    async fn gained(&self, dir: &Path, old: &str, new: &str) -> Vec<String> {
        let tips_only = match git::show_file(dir, new, sluice_spec::SPEC_FILE).await {
            Ok(Some(text)) => sluice_spec::parse(sluice_spec::SPEC_FILE, &text)
                .is_ok_and(|s| s.pipeline.changes == sluice_spec::Changes::Tips),
            _ => false,
        };
        if tips_only {
            return vec![new.to_string()];
        }
        match git::first_parents(dir, old, new, MAX_GAINED).await {
            Ok(commits) if !commits.is_empty() => commits,
            // A ref moved back, or history was rewritten: the tip alone.
            _ => vec![new.to_string()],
        }
    }

    pub(crate) async fn accept(&self, repo: &Repo, announced: Announced) -> Result<Option<Run>> {
        let dir = self.source_dir(repo)?;
        if repo.local_path.is_none() && !git::has_commit(&dir, &announced.sha).await {
            git::update_mirror(&repo.url, &dir).await?;
        }
        let ref_name = announced.ref_name.clone();
        let sha = announced.sha.clone();
        self.queue(repo, &ref_name, &sha, "webhook", Some(announced))
            .await
    }

    async fn is_mainline(&self, dir: &Path, ref_name: &str, sha: &str) -> bool {
        let Some(branch) = ref_name.strip_prefix("refs/heads/") else {
            return false;
        };
        let mainline = match git::show_file(dir, sha, sluice_spec::SPEC_FILE).await {
            Ok(Some(text)) => sluice_spec::parse(sluice_spec::SPEC_FILE, &text)
                .map(|s| s.mainline)
                .ok(),
            _ => None,
        };
        match mainline {
            Some(mainline) => branch == mainline,
            None => branch == "main" || branch == "master",
        }
    }

    /// Records the change and queues its run, once per commit and ref.
    async fn queue(
        &self,
        repo: &Repo,
        ref_name: &str,
        sha: &str,
        source: &str,
        announced: Option<Announced>,
    ) -> Result<Option<Run>> {
        git::check_sha(sha)?;
        let dir = self.source_dir(repo)?;
        let kind = if self.is_mainline(&dir, ref_name, sha).await {
            "mainline"
        } else {
            "review"
        };
        let (author, title) = match git::commit_info(&dir, sha).await {
            Ok(info) => info,
            Err(_) => announced
                .as_ref()
                .map(|a| (a.author.clone(), a.title.clone()))
                .unwrap_or_default(),
        };
        let branch = match &announced {
            Some(a) => a.branch.clone(),
            None => ref_name
                .strip_prefix("refs/heads/")
                .unwrap_or(ref_name)
                .to_string(),
        };
        let change = NewChange {
            repo_id: repo.id,
            ref_name: ref_name.to_string(),
            branch,
            sha: sha.to_string(),
            kind: kind.to_string(),
            source: source.to_string(),
            pull_request: announced.as_ref().and_then(|a| a.pull_request),
            title,
            author,
        };
        let Some(run) = self.store.insert_change(change).await? else {
            return Ok(None);
        };
        tracing::info!(repo = %repo.name, run = run.id, %ref_name, %sha, kind, source, "queued a run");
        if kind == "review" {
            for older in self.store.superseded_runs(&run).await? {
                self.cancel(
                    older,
                    &format!("superseded by run {} on the same ref", run.id),
                )
                .await?;
            }
        }
        self.wake.notify_one();
        self.notify(run.id).await;
        Ok(Some(run))
    }
}

/// Installs the `reference-transaction` hook, which runs `sluice notify` in
/// the background after every ref update, so git is never slowed down.
async fn install_hook(
    repo: &Path,
    server_url: &str,
    sluice_bin: &Path,
    name: &str,
) -> Result<String> {
    let hooks = git::hooks_dir(repo).await?;
    tokio::fs::create_dir_all(&hooks).await?;
    let path = hooks.join("reference-transaction");
    if let Ok(existing) = tokio::fs::read_to_string(&path).await
        && !existing.contains(HOOK_MARKER)
    {
        return Ok("poll (kept the repository's own reference-transaction hook)".into());
    }
    let script = format!(
        "#!/bin/sh\n{HOOK_MARKER}\n# Delete this file to stop; polling still notices new commits.\n\
         [ \"$1\" = committed ] || exit 0\n\
         cat >/dev/null\n\
         {bin} notify --server {server} --repo {name} >/dev/null 2>&1 </dev/null &\n\
         exit 0\n",
        bin = shell_quote(&sluice_bin.to_string_lossy()),
        server = shell_quote(server_url),
        name = shell_quote(name),
    );
    tokio::fs::write(&path, script).await?;
    tokio::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).await?;
    Ok("hook".into())
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_location() {
        assert_eq!(default_name("/src/shop"), "shop");
        assert_eq!(default_name("/src/shop/"), "shop");
        assert_eq!(default_name("https://example.com/acme/shop.git"), "shop");
        assert_eq!(default_name("git@example.com:acme/shop.git"), "shop");
        assert!(is_remote("file:///src/shop"));
        assert!(is_remote("git@example.com:acme/shop.git"));
        assert!(!is_remote("/src/shop"));
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
