//! An environment's data: its directory, seeded once or copied from another
//! environment through a scrub script, and a snapshot before each deployment.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use sluice_spec::DataSpec;

/// What a first deployment did to fill the data directory.
#[derive(Debug, PartialEq, Eq)]
pub enum Filled {
    Nothing,
    /// Seeded by this file of the release, with what it printed (the end of it).
    Seeded(String, String),
    Copied(String),
}

impl Filled {
    /// What the change log says of it; empty when nothing was done.
    pub fn summary(&self, env: &str) -> String {
        match self {
            Filled::Seeded(seed, printed) if printed.is_empty() => {
                format!("{env}'s data seeded with {seed}")
            }
            Filled::Seeded(seed, printed) => {
                format!("{env}'s data seeded with {seed}, which printed:\n{printed}")
            }
            Filled::Copied(from) => format!("{env}'s data copied from {from}"),
            Filled::Nothing => String::new(),
        }
    }
}

/// Who a seed or scrub script runs as: the environment's user (when the
/// server is root), with the environment's variables only, for a bounded time.
#[derive(Clone, Debug, Default)]
pub struct RunAs {
    pub uid: Option<u32>,
    pub vars: Vec<(String, String)>,
}

/// Prepares the data directory of an environment's first deployment.
pub async fn fill(
    spec: &DataSpec,
    data_dir: &Path,
    release_dir: &Path,
    source_data: Option<&Path>,
    run_as: &RunAs,
) -> Result<Filled> {
    create_private(data_dir)?;
    if let Some(from) = &spec.copy_from {
        let Some(source) = source_data.filter(|s| s.exists()) else {
            return Ok(Filled::Nothing);
        };
        // Copy into a sibling, scrub there, then swap: a failed scrub never leaves unscrubbed data behind.
        let staging = data_dir.with_extension("incoming");
        let _ = std::fs::remove_dir_all(&staging);
        copy_dir(source, &staging)?;
        hand_over(&staging, run_as.uid)?;
        if let Some(scrub) = &spec.scrub {
            run_script(release_dir, scrub, &staging, run_as, spec.seed_timeout)
                .await
                .with_context(|| format!("scrubbing the copy of {from}'s data"))?;
        }
        std::fs::remove_dir_all(data_dir)?;
        std::fs::rename(&staging, data_dir)?;
        create_private(data_dir)?;
        return Ok(Filled::Copied(from.clone()));
    }
    if let Some(seed) = &spec.seed {
        let path = sluice_spec::paths::existing_inside(release_dir, seed)
            .with_context(|| format!("seed {seed} is not in the release"))?;
        let meta = std::fs::metadata(&path)?;
        if meta.permissions().mode() & 0o111 != 0 {
            // Seeded in a sibling, then swapped in: a seed that fails leaves
            // nothing half-made, and runs again on the next deployment.
            let staging = data_dir.with_extension("seeding");
            let _ = std::fs::remove_dir_all(&staging);
            create_private(&staging)?;
            hand_over(&staging, run_as.uid)?;
            let output = run_script(release_dir, seed, &staging, run_as, spec.seed_timeout)
                .await
                .with_context(|| format!("seeding with {seed}"))?;
            std::fs::remove_dir_all(data_dir)?;
            std::fs::rename(&staging, data_dir)?;
            return Ok(Filled::Seeded(seed.clone(), output));
        } else {
            let name = path.file_name().context("seed has no file name")?;
            std::fs::copy(&path, data_dir.join(name))?;
        }
        return Ok(Filled::Seeded(seed.clone(), String::new()));
    }
    Ok(Filled::Nothing)
}

/// What a replay's throwaway instance found in its data directory.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplayData {
    /// A copy of the environment's latest snapshot, scrubbed when it has a scrub script.
    Snapshot { name: String, scrubbed: bool },
    /// No snapshot yet: filled as a new environment's first deployment is.
    New(Filled),
}

impl std::fmt::Display for ReplayData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplayData::Snapshot { name, scrubbed } => write!(
                f,
                "a copy of the environment's latest data snapshot ({name}{})",
                if *scrubbed { ", scrubbed" } else { "" }
            ),
            ReplayData::New(Filled::Seeded(seed, _)) => {
                write!(f, "no snapshot yet: new data seeded by {seed}")
            }
            ReplayData::New(Filled::Copied(from)) => {
                write!(f, "no snapshot yet: a scrubbed copy of {from}'s data")
            }
            ReplayData::New(Filled::Nothing) => write!(f, "no snapshot and no seed: empty data"),
        }
    }
}

/// Fills a replay's data directory as the environment's data is now: its
/// latest snapshot unpacked (and scrubbed), or as a first deployment would.
pub async fn for_replay(
    spec: &DataSpec,
    snapshots: &Path,
    data_dir: &Path,
    release_dir: &Path,
    source_data: Option<&Path>,
    run_as: &RunAs,
) -> Result<ReplayData> {
    let Some(latest) = latest_snapshot(snapshots) else {
        return Ok(ReplayData::New(
            fill(spec, data_dir, release_dir, source_data, run_as).await?,
        ));
    };
    create_private(data_dir)?;
    let file = std::fs::File::open(&latest)?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    tar.set_preserve_permissions(true);
    tar.unpack(data_dir)
        .with_context(|| format!("unpacking snapshot {}", latest.display()))?;
    hand_over(data_dir, run_as.uid)?;
    if let Some(scrub) = &spec.scrub {
        run_script(release_dir, scrub, data_dir, run_as, spec.seed_timeout)
            .await
            .context("scrubbing the copy of the snapshot")?;
    }
    let name = latest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(ReplayData::Snapshot {
        name,
        scrubbed: spec.scrub.is_some(),
    })
}

/// The newest `*.tar.gz` in the snapshots directory.
fn latest_snapshot(snapshots: &Path) -> Option<std::path::PathBuf> {
    std::fs::read_dir(snapshots)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".tar.gz"))
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
}

/// Runs a script of the release with `DATA_DIR` pointing at `data_dir`:
/// the file itself (never through a shell), as `run_as`, killed with all it
/// started once `timeout` passes.
async fn run_script(
    release_dir: &Path,
    script: &str,
    data_dir: &Path,
    run_as: &RunAs,
    timeout: std::time::Duration,
) -> Result<String> {
    let program = sluice_spec::paths::existing_inside(release_dir, script)
        .with_context(|| format!("{script} is not in the release"))?;
    let mut command = tokio::process::Command::new(&program);
    command
        .current_dir(release_dir)
        .env_clear()
        .envs(run_as.vars.iter().map(|(k, v)| (k, v)))
        .env("DATA_DIR", data_dir)
        .stdin(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(uid) = run_as.uid {
        command.uid(uid).gid(uid);
    }
    let child = output_once_free(&mut command);
    let output = match tokio::time::timeout(timeout, child).await {
        Ok(output) => output.with_context(|| format!("could not run {script}"))?,
        Err(_) => bail!(
            "{script} did not finish within {} and was stopped; make it faster or raise `data.seed_timeout`",
            sluice_spec::format_duration(timeout)
        ),
    };
    let printed = tail(&output.stdout, &output.stderr);
    if !output.status.success() {
        bail!(
            "{script} failed ({}); it printed:\n{printed}",
            output.status
        );
    }
    Ok(printed)
}

/// Runs `command` to its end. A script unpacked a moment ago can be "busy"
/// (ETXTBSY) for as long as another thread of the server is between a fork
/// and its exec, holding a copy of the descriptor that wrote it: tried
/// again after a short wait then.
async fn output_once_free(
    command: &mut tokio::process::Command,
) -> std::io::Result<std::process::Output> {
    let mut wait = std::time::Duration::from_millis(5);
    for _ in 0..6 {
        match command.output().await {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            done => return done,
        }
    }
    command.output().await
}

/// The last lines a script printed, standard output then error, for a person to read.
fn tail(stdout: &[u8], stderr: &[u8]) -> String {
    const LINES: usize = 20;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(stdout),
        String::from_utf8_lossy(stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LINES)..].join("\n")
}

fn create_private(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else if kind.is_file() {
            copy_file_nofollow(&entry.path(), &target)?;
        } else if kind.is_symlink() {
            // Copied as the link it is, never as what it points at.
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &target)?;
        }
    }
    Ok(())
}

/// Copies the environment's data for an experiment's B (which then owns
/// the copy); what was there before is replaced.
pub fn copy_for_experiment(data_dir: &Path, copy: &Path, uid: Option<u32>) -> Result<()> {
    if copy.exists() {
        std::fs::remove_dir_all(copy)?;
    }
    create_private(copy)?;
    if data_dir.exists() {
        copy_dir(data_dir, copy)?;
    }
    hand_over(copy, uid)
}

/// Copies one file with its mode, never through a link: the directory is
/// an instance's, which could swap the file for a link after it was listed.
fn copy_file_nofollow(from: &Path, to: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut source = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(from)
        .with_context(|| format!("{} changed while it was copied", from.display()))?;
    let mode = source.metadata()?.permissions().mode() & 0o777;
    let mut target = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(to)?;
    std::io::copy(&mut source, &mut target)?;
    Ok(())
}

/// Packs the data directory into `snapshots/NAME.tar.gz` and keeps the newest `keep`.
pub fn snapshot(
    data_dir: &Path,
    snapshots: &Path,
    name: &str,
    keep: u32,
) -> Result<Option<std::path::PathBuf>> {
    if !data_dir.exists() || std::fs::read_dir(data_dir)?.next().is_none() {
        return Ok(None);
    }
    std::fs::create_dir_all(snapshots)?;
    let path = snapshots.join(format!("{name}.tar.gz"));
    let file = std::fs::File::create(&path)?;
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        file,
        flate2::Compression::fast(),
    ));
    append_tree(&mut tar, data_dir, Path::new("."))?;
    tar.into_inner()?.finish()?;
    let mut all: Vec<_> = std::fs::read_dir(snapshots)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    all.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    let excess = all.len().saturating_sub(keep as usize);
    for old in &all[..excess] {
        let _ = std::fs::remove_file(old);
    }
    Ok(Some(path))
}

/// Adds a directory that running instances may be writing to: each file
/// exactly as long as its header says (cut, or padded with zeros, when it
/// changed while read), so the archive stays whole. Links are kept as
/// links: what one points at is not the environment's data.
fn append_tree<W: std::io::Write>(tar: &mut tar::Builder<W>, dir: &Path, at: &Path) -> Result<()> {
    use std::io::Read;
    let meta = std::fs::symlink_metadata(dir)?;
    let mut header = tar::Header::new_gnu();
    header.set_metadata(&meta);
    tar.append_data(&mut header, at, std::io::empty())?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let (path, name) = (entry.path(), at.join(entry.file_name()));
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            append_tree(tar, &path, &name)?;
        } else if meta.file_type().is_symlink() {
            let mut header = tar::Header::new_gnu();
            header.set_metadata(&meta);
            tar.append_link(&mut header, &name, std::fs::read_link(&path)?)?;
        } else if meta.is_file() {
            // Never through a link an instance swapped in since it was listed.
            use std::os::unix::fs::OpenOptionsExt;
            let Ok(file) = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
                .open(&path)
            else {
                continue;
            };
            let mut header = tar::Header::new_gnu();
            header.set_metadata(&meta);
            let len = meta.len();
            let exact = file.take(len).chain(std::io::repeat(0)).take(len);
            tar.append_data(&mut header, &name, exact)?;
        }
    }
    Ok(())
}

/// Gives the data directory (and everything in it) to the environment's
/// user, when instances run as one (see [`sluice_ci::sandbox`]).
pub fn hand_over(data_dir: &Path, uid: Option<u32>) -> Result<()> {
    let Some(uid) = uid else { return Ok(()) };
    sluice_ci::sandbox::give(data_dir, uid).with_context(|| {
        format!(
            "could not give {} to its environment's user",
            data_dir.display()
        )
    })
}

/// An environment prepared before, arriving on a host without its data
/// directory: this server took the controllers over from another, which
/// ran it on its own host. It starts on an empty directory only when the
/// old one never held anything (see [`note_use`]); otherwise its data is on
/// the other host, and starting without it would answer from nothing.
pub(crate) async fn arrive(
    inner: &crate::Inner,
    service: &str,
    env: &str,
    data_dir: &Path,
) -> Result<()> {
    let in_use = inner.store.data_in_use().await?;
    if in_use.iter().any(|(s, e)| s == service && e == env) {
        anyhow::bail!(
            "{env}'s data is not on this host: its instances wrote to their data directory on the host of the server that ran {env} before, and this server has none of it; copy that directory to {} (and restart this server), or stop this server and start the other",
            data_dir.display()
        );
    }
    std::fs::create_dir_all(data_dir)?;
    tracing::info!(
        service,
        env,
        "the environment's data directory starts empty on this host; the previous one held nothing"
    );
    Ok(())
}

/// Notes, every `every`, each environment whose data directory holds
/// anything, until the server stops: what [`arrive`] reads.
pub(crate) async fn note_use(inner: std::sync::Arc<crate::Inner>, every: std::time::Duration) {
    let mut noted: std::collections::HashSet<(String, String)> =
        match inner.store.data_in_use().await {
            Ok(noted) => noted.into_iter().collect(),
            Err(_) => Default::default(),
        };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = inner.shutdown.cancelled() => return,
        }
        let Ok(states) = inner.store.env_states(None).await else {
            continue;
        };
        for state in states {
            let key = (state.service, state.name);
            if noted.contains(&key) {
                continue;
            }
            let Ok(dir) = inner.layout.data(&key.0, &key.1) else {
                continue;
            };
            let holds = std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some());
            if holds && inner.store.mark_data_in_use(&key.0, &key.1).await.is_ok() {
                noted.insert(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(seed: Option<&str>, copy_from: Option<&str>, scrub: Option<&str>) -> DataSpec {
        DataSpec {
            seed: seed.map(String::from),
            copy_from: copy_from.map(String::from),
            scrub: scrub.map(String::from),
            snapshots: 2,
            seed_timeout: std::time::Duration::from_secs(30),
        }
    }

    fn script(release: &Path, name: &str, text: &str) {
        std::fs::create_dir_all(release).unwrap();
        std::fs::write(release.join(name), text).unwrap();
        std::fs::set_permissions(release.join(name), std::fs::Permissions::from_mode(0o755))
            .unwrap();
    }

    #[tokio::test]
    async fn a_seed_script_sees_only_the_environment_s_variables() {
        let dir = tempfile::tempdir().unwrap();
        let release = dir.path().join("release");
        script(&release, "seed.sh", "#!/bin/sh\nenv > \"$DATA_DIR/env\"\n");
        let run_as = RunAs {
            uid: None,
            vars: vec![("LOG_LEVEL".into(), "debug".into())],
        };
        let data = dir.path().join("data");
        fill(
            &spec(Some("seed.sh"), None, None),
            &data,
            &release,
            None,
            &run_as,
        )
        .await
        .unwrap();
        let seen = std::fs::read_to_string(data.join("env")).unwrap();
        assert!(seen.contains("LOG_LEVEL=debug"), "{seen}");
        assert!(seen.contains("DATA_DIR="), "{seen}");
        assert!(
            !seen.contains("CARGO"),
            "nothing of the server's environment: {seen}"
        );
    }

    #[tokio::test]
    async fn a_seed_that_fails_leaves_nothing_and_says_what_it_printed() {
        let dir = tempfile::tempdir().unwrap();
        let release = dir.path().join("release");
        script(
            &release,
            "seed.sh",
            "#!/bin/sh\necho half > \"$DATA_DIR/half\"\necho creating tables\necho no space left >&2\nexit 1\n",
        );
        let spec = spec(Some("seed.sh"), None, None);
        let data = dir.path().join("data");
        let error = fill(&spec, &data, &release, None, &RunAs::default())
            .await
            .unwrap_err();
        let error = format!("{error:#}");
        assert!(error.contains("creating tables\nno space left"), "{error}");
        assert!(!data.join("half").exists(), "nothing half-made is left");
        // Fixed, it runs again and its output is kept.
        script(
            &release,
            "seed.sh",
            "#!/bin/sh\necho done > \"$DATA_DIR/db\"\necho seeded 3 rows\n",
        );
        let filled = fill(&spec, &data, &release, None, &RunAs::default())
            .await
            .unwrap();
        assert_eq!(
            filled,
            Filled::Seeded("seed.sh".into(), "seeded 3 rows".into())
        );
        assert!(data.join("db").exists());
    }

    #[test]
    fn a_file_swapped_for_a_link_is_never_copied_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("only-root-reads-this");
        std::fs::write(&secret, "secret").unwrap();
        let swapped = dir.path().join("blog.db");
        std::os::unix::fs::symlink(&secret, &swapped).unwrap();
        let error = copy_file_nofollow(&swapped, &dir.path().join("copy")).unwrap_err();
        assert!(
            format!("{error:#}").contains("changed while it was copied"),
            "{error:#}"
        );
        assert!(!dir.path().join("copy").exists());
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "rows").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o640)).unwrap();
        copy_file_nofollow(&plain, &dir.path().join("copied")).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("copied")).unwrap(),
            "rows"
        );
    }

    #[tokio::test]
    async fn a_snapshot_of_a_file_that_grows_while_read_is_a_whole_archive() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let path = data.join("blog.db");
        std::fs::write(&path, vec![1u8; 1 << 20]).unwrap();
        let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let writer = {
            let (path, writing) = (path.clone(), writing.clone());
            std::thread::spawn(move || {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
                while writing.load(std::sync::atomic::Ordering::Relaxed) {
                    f.write_all(&[2u8; 4096]).unwrap();
                    std::thread::sleep(std::time::Duration::from_micros(100));
                }
            })
        };
        let snapshots = dir.path().join("snapshots");
        for n in 0..5 {
            let archive = snapshot(&data, &snapshots, &format!("s{n}"), 10)
                .unwrap()
                .unwrap();
            let out = dir.path().join(format!("out{n}"));
            let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(
                std::fs::File::open(&archive).unwrap(),
            ));
            tar.unpack(&out).expect("a whole archive");
            assert!(std::fs::metadata(out.join("blog.db")).unwrap().len() >= 1 << 20);
        }
        writing.store(false, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
    }

    #[tokio::test]
    async fn a_seed_script_that_hangs_is_stopped_at_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let release = dir.path().join("release");
        script(&release, "seed.sh", "#!/bin/sh\nexec sleep 600\n");
        let mut spec = spec(Some("seed.sh"), None, None);
        spec.seed_timeout = std::time::Duration::from_millis(200);
        let data = dir.path().join("data");
        let error = fill(&spec, &data, &release, None, &RunAs::default())
            .await
            .unwrap_err();
        assert!(
            format!("{error:#}").contains("did not finish within 200ms"),
            "{error:#}"
        );
    }

    #[tokio::test]
    async fn a_seed_name_is_never_a_shell_command() {
        let dir = tempfile::tempdir().unwrap();
        let release = dir.path().join("release");
        std::fs::create_dir_all(&release).unwrap();
        let marker = dir.path().join("pwned");
        let seed = format!("x; touch {}", marker.display());
        let data = dir.path().join("data");
        assert!(
            fill(
                &spec(Some(&seed), None, None),
                &data,
                &release,
                None,
                &RunAs::default()
            )
            .await
            .is_err()
        );
        assert!(!marker.exists());
    }

    #[test]
    fn handing_over_never_follows_a_link() {
        if !nix::unistd::geteuid().is_root() {
            return; // Only root can give files away.
        }
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let outside = dir.path().join("server-secret");
        std::fs::write(&outside, "token").unwrap();
        std::os::unix::fs::symlink(&outside, data.join("link")).unwrap();
        hand_over(&data, Some(23_456)).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&data).unwrap().uid(), 23_456);
        assert_eq!(
            std::fs::symlink_metadata(data.join("link")).unwrap().uid(),
            23_456
        );
        assert_eq!(
            std::fs::metadata(&outside).unwrap().uid(),
            0,
            "the target stays root's"
        );
    }

    #[tokio::test]
    async fn seeds_by_running_or_copying() {
        let dir = tempfile::tempdir().unwrap();
        let release = dir.path().join("release");
        std::fs::create_dir_all(release.join("fixtures")).unwrap();
        std::fs::write(release.join("fixtures/seed.sql"), "insert;\n").unwrap();
        script(
            &release,
            "seed.sh",
            "#!/bin/sh\necho seeded > \"$DATA_DIR/db\"\n",
        );
        let copied = dir.path().join("a");
        assert_eq!(
            fill(
                &spec(Some("fixtures/seed.sql"), None, None),
                &copied,
                &release,
                None,
                &RunAs::default()
            )
            .await
            .unwrap(),
            Filled::Seeded("fixtures/seed.sql".into(), String::new())
        );
        assert!(copied.join("seed.sql").exists());
        let ran = dir.path().join("b");
        fill(
            &spec(Some("seed.sh"), None, None),
            &ran,
            &release,
            None,
            &RunAs::default(),
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read_to_string(ran.join("db")).unwrap(), "seeded\n");
        assert_eq!(
            std::fs::metadata(&ran).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    #[tokio::test]
    async fn copies_through_the_scrub_script() {
        let dir = tempfile::tempdir().unwrap();
        let release = dir.path().join("release");
        script(
            &release,
            "scrub.sh",
            "#!/bin/sh\nsed -i 's/ana@example.com/***/' \"$DATA_DIR/users\"\n",
        );
        let prod = dir.path().join("prod");
        std::fs::create_dir_all(&prod).unwrap();
        std::fs::write(prod.join("users"), "ana@example.com\n").unwrap();
        let pre = dir.path().join("pre");
        let filled = fill(
            &spec(None, Some("prod"), Some("scrub.sh")),
            &pre,
            &release,
            Some(&prod),
            &RunAs::default(),
        )
        .await
        .unwrap();
        assert_eq!(filled, Filled::Copied("prod".into()));
        assert_eq!(std::fs::read_to_string(pre.join("users")).unwrap(), "***\n");
        assert_eq!(
            std::fs::read_to_string(prod.join("users")).unwrap(),
            "ana@example.com\n",
            "the source is untouched"
        );
    }

    #[test]
    fn keeps_the_newest_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("db"), "x").unwrap();
        let snaps = dir.path().join("snaps");
        for i in 0..4 {
            snapshot(&data, &snaps, &format!("deploy-{i}"), 2)
                .unwrap()
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let mut left: Vec<_> = std::fs::read_dir(&snaps)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["deploy-2.tar.gz", "deploy-3.tar.gz"]);
    }
}
