//! The `git` command, for everything sluice reads from or does to a
//! repository. A sha or ref from outside is checked first ([`check_sha`])
//! and always comes after `--end-of-options`, so it can never be an option.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Command;

/// The longest any git command may run: a clone of a large repository
/// fits; a remote that accepts and never answers does not hold change
/// detection (which scans one repository after another) forever.
const GIT_TIMEOUT: Duration = Duration::from_secs(600);

/// A transfer from a remote slower than 1 KiB/s for 30 s is given up:
/// git's own check, which a remote that sends nothing at all fails too.
const SLOW_TRANSFER: [&str; 4] = [
    "-c",
    "http.lowSpeedLimit=1024",
    "-c",
    "http.lowSpeedTime=30",
];

/// Runs `git -C dir ARGS` and returns its standard output.
pub async fn git(dir: &Path, args: &[&str]) -> Result<String> {
    Ok(String::from_utf8_lossy(&git_bytes(dir, args).await?).into_owned())
}

/// Runs `git -C dir ARGS` and returns its standard output as it is.
async fn git_bytes(dir: &Path, args: &[&str]) -> Result<Vec<u8>> {
    succeeded(run(dir, args, GIT_TIMEOUT).await?, dir, args)
}

/// The standard output of a git command that succeeded, else what it said.
fn succeeded(output: std::process::Output, dir: &Path, args: &[&str]) -> Result<Vec<u8>> {
    if !output.status.success() {
        bail!(
            "`git {}` in {} failed: {}",
            args.join(" "),
            dir.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output.stdout)
}

/// Runs `git -C dir ARGS` for at most `within`, then stops it and what
/// it started (a remote helper, ssh): its output, however it exited.
async fn run(dir: &Path, args: &[&str], within: Duration) -> Result<std::process::Output> {
    let child = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .context("could not run `git`; is it installed and on PATH?")?;
    let group = child.id();
    match tokio::time::timeout(within, child.wait_with_output()).await {
        Ok(output) => Ok(output?),
        Err(_) => {
            if let Some(group) = group.and_then(|g| i32::try_from(g).ok()) {
                let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
            }
            bail!(
                "`git {}` in {} ran past {} s and was stopped",
                args.join(" "),
                dir.display(),
                within.as_secs()
            )
        }
    }
}

/// Whether `text` is exactly `len` lowercase or uppercase hex digits.
pub fn is_digest(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A commit id as git writes it: 40 hex digits (SHA-1) or 64 (SHA-256).
pub fn check_sha(sha: &str) -> Result<()> {
    if is_digest(sha, 40) || is_digest(sha, 64) {
        return Ok(());
    }
    let shown: String = sha.chars().take(80).collect();
    bail!(
        "`{}` is not a commit id: expected 40 or 64 hex digits",
        shown.escape_debug()
    )
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
    check_sha(sha)?;
    let spec = format!("{sha}:{path}");
    if git(dir, &["cat-file", "-e", "--end-of-options", &spec])
        .await
        .is_err()
    {
        return Ok(None);
    }
    git(dir, &["show", "--end-of-options", &spec])
        .await
        .map(Some)
}

/// The files a commit changed (all of them for a root commit).
pub async fn changed_files(dir: &Path, sha: &str) -> Result<Vec<String>> {
    check_sha(sha)?;
    let out = git(
        dir,
        &[
            "diff-tree",
            "--no-commit-id",
            "--name-only",
            "-r",
            "--root",
            "--end-of-options",
            sha,
        ],
    )
    .await?;
    Ok(out.lines().map(str::to_string).collect())
}

/// The commits of `new`'s first-parent history that `old` lacks, oldest
/// first; the newest `max` when there are more.
pub async fn first_parents(dir: &Path, old: &str, new: &str, max: usize) -> Result<Vec<String>> {
    check_sha(old)?;
    check_sha(new)?;
    let range = format!("{old}..{new}");
    let max = format!("--max-count={max}");
    let out = git(
        dir,
        &[
            "rev-list",
            "--first-parent",
            &max,
            "--end-of-options",
            &range,
        ],
    )
    .await?;
    Ok(out.lines().rev().map(str::to_string).collect())
}

/// `(author, subject)` of a commit.
pub async fn commit_info(dir: &Path, sha: &str) -> Result<(String, String)> {
    check_sha(sha)?;
    let out = git(
        dir,
        &["log", "-1", "--format=%an%x00%s", "--end-of-options", sha],
    )
    .await?;
    let (author, title) = out.trim_end().split_once('\0').unwrap_or(("", ""));
    Ok((author.to_string(), title.to_string()))
}

/// Whether commit `sha` is reachable from `reference` (a branch's ref) now.
pub async fn is_ancestor(dir: &Path, sha: &str, reference: &str) -> Result<bool> {
    check_sha(sha)?;
    if !reference.starts_with("refs/") || reference.contains("..") {
        bail!("`{}` is not a branch's ref", reference.escape_debug());
    }
    let args = [
        "merge-base",
        "--is-ancestor",
        "--end-of-options",
        sha,
        reference,
    ];
    let status = run(dir, &args, GIT_TIMEOUT).await?.status;
    match status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => bail!(
            "`git merge-base --is-ancestor {sha} {reference}` in {} failed ({status})",
            dir.display()
        ),
    }
}

pub async fn has_commit(dir: &Path, sha: &str) -> bool {
    let commit = format!("{sha}^{{commit}}");
    check_sha(sha).is_ok()
        && git(dir, &["cat-file", "-e", "--end-of-options", &commit])
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
    check_sha(sha)?;
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
            "--",
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
            // Not `--end-of-options`: git before 2.43 (Debian 12's 2.39)
            // takes it for a path here and refuses. The sha is checked hex,
            // never an option, and `--` ends the revisions.
            sha,
            "--",
        ],
    )
    .await?;
    Ok(())
}

/// The most a commit's tree may weigh as a tar for an agent.
const MAX_ARCHIVE: usize = 1 << 30;

/// The tree of `sha` as an uncompressed tar, for an agent to unpack.
pub async fn archive(source: &Path, sha: &str) -> Result<Vec<u8>> {
    check_sha(sha)?;
    let tar = git_bytes(
        source,
        &["archive", "--format=tar", "--end-of-options", sha],
    )
    .await?;
    if tar.len() > MAX_ARCHIVE {
        bail!("the tree of {sha} is over 1 GiB as a tar; agents cannot be sent it");
    }
    Ok(tar)
}

/// Brings a mirror of a remote repository up to date, cloning it the first time.
pub async fn update_mirror(url: &str, mirror: &Path) -> Result<()> {
    update_mirror_within(url, mirror, GIT_TIMEOUT).await
}

/// [`update_mirror`], given up after `within`.
async fn update_mirror_within(url: &str, mirror: &Path, within: Duration) -> Result<()> {
    let mirror_text = mirror.to_string_lossy();
    let (dir, command): (&Path, &[&str]) = if mirror.exists() {
        (mirror, &["remote", "update", "--prune"])
    } else {
        let parent = mirror.parent().unwrap_or(Path::new("."));
        tokio::fs::create_dir_all(parent).await?;
        (
            parent,
            &["clone", "--quiet", "--mirror", "--", url, &mirror_text],
        )
    };
    let args = [&SLOW_TRANSFER[..], command].concat();
    succeeded(run(dir, &args, within).await?, dir, &args)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn repository() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        let run = |args: &[&str]| {
            let status = std::process::Command::new("git")
                .arg("-C")
                .arg(path)
                .args(["-c", "user.name=t", "-c", "user.email=t@t"])
                .args(args)
                .status()
                .unwrap();
            assert!(status.success(), "git {args:?}");
        };
        run(&["init", "-q", "-b", "main"]);
        std::fs::write(path.join("sluice.yaml"), "service: shop\n").unwrap();
        run(&["add", "."]);
        run(&["commit", "-q", "-m", "first"]);
        let sha = git(path, &["rev-parse", "HEAD"]).await.unwrap();
        (dir, sha.trim().to_string())
    }

    #[tokio::test]
    async fn a_remote_that_never_answers_is_given_up_and_stopped() {
        // The kernel accepts connections into the backlog; nobody answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/shop.git", silent.local_addr().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let mirror = dir.path().join("shop.git");
        let error = update_mirror_within(&url, &mirror, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(
            error.to_string().contains("ran past 1 s and was stopped"),
            "{error}"
        );
        // Nothing it started goes on asking (SIGKILL is sent; its end is
        // the kernel's to finish).
        let asking = || {
            let found = std::process::Command::new("pgrep")
                .args(["-f", &url])
                .output()
                .unwrap();
            String::from_utf8_lossy(&found.stdout).into_owned()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !asking().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "still asking: {}",
                asking()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every call, against whichever git is first on PATH: `.ci/run` runs
    /// this with Debian's own (older) git too.
    #[tokio::test]
    async fn every_call_with_an_outside_sha_reads_a_real_one() {
        let (dir, sha) = repository().await;
        let path = dir.path();
        assert_eq!(
            show_file(path, &sha, "sluice.yaml")
                .await
                .unwrap()
                .as_deref(),
            Some("service: shop\n")
        );
        assert_eq!(changed_files(path, &sha).await.unwrap(), ["sluice.yaml"]);
        assert_eq!(commit_info(path, &sha).await.unwrap().1, "first");
        assert!(has_commit(path, &sha).await);
        let work = dir.path().join("work");
        checkout(path, &work, &sha).await.unwrap();
        assert!(work.join("sluice.yaml").exists());
        assert!(archive(path, &sha).await.unwrap().len() > 512);
        assert!(is_ancestor(path, &sha, "refs/heads/main").await.unwrap());
        assert!(
            list_refs(path)
                .await
                .unwrap()
                .contains(&("refs/heads/main".into(), sha.clone()))
        );
        let second = {
            std::fs::write(path.join("x.txt"), "x\n").unwrap();
            git(path, &["add", "x.txt"]).await.unwrap();
            let who = ["-c", "user.name=t", "-c", "user.email=t@t"];
            git(
                path,
                &[&who[..], &["commit", "-q", "-m", "second"]].concat(),
            )
            .await
            .unwrap();
            git(path, &["rev-parse", "HEAD"])
                .await
                .unwrap()
                .trim()
                .to_string()
        };
        assert_eq!(
            first_parents(path, &sha, &second, 10).await.unwrap(),
            std::slice::from_ref(&second)
        );
        let mirror = dir.path().join("mirror.git");
        let url = format!("file://{}", path.display());
        update_mirror(&url, &mirror).await.unwrap();
        update_mirror(&url, &mirror).await.unwrap();
        assert!(has_commit(&mirror, &second).await);
    }

    #[tokio::test]
    async fn an_option_for_a_sha_never_reaches_git() {
        let (dir, _) = repository().await;
        let path = dir.path();
        let written = dir.path().join("written");
        let evil = format!("--output={}", written.display());
        assert!(show_file(path, &evil, "x").await.is_err());
        assert!(changed_files(path, &evil).await.is_err());
        assert!(commit_info(path, &evil).await.is_err());
        assert!(!has_commit(path, &evil).await);
        assert!(checkout(path, &dir.path().join("w"), &evil).await.is_err());
        assert!(!written.exists(), "git was never handed the option");
        let error = commit_info(path, "HEAD").await.unwrap_err();
        assert!(error.to_string().contains("not a commit id"), "{error}");
    }
}
