//! The `git` command, for everything sluice reads from or does to a repository.

use std::path::Path;

use anyhow::{Context, Result, bail};
use tokio::process::Command;

/// Runs `git -C dir ARGS` and returns its standard output.
pub async fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .context("could not run `git`; is it installed and on PATH?")?;
    if !output.status.success() {
        bail!(
            "`git {}` in {} failed: {}",
            args.join(" "),
            dir.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Branch heads and pull-request heads, as `(ref, sha)`.
pub async fn list_refs(dir: &Path) -> Result<Vec<(String, String)>> {
    let out = git(
        dir,
        &[
            "for-each-ref",
            "--format=%(objectname) %(refname)",
            "refs/heads",
            "refs/pull",
        ],
    )
    .await?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, r)| !r.starts_with("refs/pull/") || r.ends_with("/head"))
        .map(|(sha, r)| (r.to_string(), sha.to_string()))
        .collect())
}

/// A file's text at a commit, or `None` when the commit has no such file.
pub async fn show_file(dir: &Path, sha: &str, path: &str) -> Result<Option<String>> {
    let spec = format!("{sha}:{path}");
    if git(dir, &["cat-file", "-e", &spec]).await.is_err() {
        return Ok(None);
    }
    git(dir, &["show", &spec]).await.map(Some)
}

/// The files a commit changed (all of them for a root commit).
pub async fn changed_files(dir: &Path, sha: &str) -> Result<Vec<String>> {
    let out = git(
        dir,
        &[
            "diff-tree",
            "--no-commit-id",
            "--name-only",
            "-r",
            "--root",
            sha,
        ],
    )
    .await?;
    Ok(out.lines().map(str::to_string).collect())
}

/// `(author, subject)` of a commit.
pub async fn commit_info(dir: &Path, sha: &str) -> Result<(String, String)> {
    let out = git(dir, &["log", "-1", "--format=%an%x00%s", sha]).await?;
    let (author, title) = out.trim_end().split_once('\0').unwrap_or(("", ""));
    Ok((author.to_string(), title.to_string()))
}

pub async fn has_commit(dir: &Path, sha: &str) -> bool {
    git(dir, &["cat-file", "-e", &format!("{sha}^{{commit}}")])
        .await
        .is_ok()
}

/// Whether `path` is inside a git repository (a work tree or a bare one).
pub async fn is_repository(path: &Path) -> bool {
    git(path, &["rev-parse", "--git-dir"]).await.is_ok()
}

/// The repository's hooks directory, wherever `core.hooksPath` puts it.
pub async fn hooks_dir(path: &Path) -> Result<std::path::PathBuf> {
    let out = git(
        path,
        &["rev-parse", "--path-format=absolute", "--git-path", "hooks"],
    )
    .await?;
    Ok(out.trim().into())
}

/// A fresh work tree of `sha`, sharing objects with `source` instead of copying them.
pub async fn checkout(source: &Path, dest: &Path, sha: &str) -> Result<()> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    tokio::fs::create_dir_all(parent).await?;
    let dest_text = dest.to_string_lossy();
    let source_text = source.to_string_lossy();
    git(
        parent,
        &[
            "clone",
            "--quiet",
            "--shared",
            "--no-checkout",
            &source_text,
            &dest_text,
        ],
    )
    .await?;
    git(
        dest,
        &[
            "-c",
            "advice.detachedHead=false",
            "checkout",
            "--quiet",
            "--detach",
            sha,
        ],
    )
    .await?;
    Ok(())
}

/// Brings a mirror of a remote repository up to date, cloning it the first time.
pub async fn update_mirror(url: &str, mirror: &Path) -> Result<()> {
    if mirror.exists() {
        git(mirror, &["remote", "update", "--prune"]).await?;
    } else {
        let parent = mirror.parent().unwrap_or(Path::new("."));
        tokio::fs::create_dir_all(parent).await?;
        git(
            parent,
            &[
                "clone",
                "--quiet",
                "--mirror",
                url,
                &mirror.to_string_lossy(),
            ],
        )
        .await?;
    }
    Ok(())
}
