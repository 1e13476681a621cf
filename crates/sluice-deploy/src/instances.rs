//! Instance mechanics, the effects every deployment is made of: a release's
//! files, config and data made ready; an instance started with its port,
//! environment and health checks; waiting until it is healthy; draining and
//! stopping it. Nothing here decides anything or calls upward: an instance
//! that stays unhealthy raises an [`Alarm`](crate::Alarm) for the incidents
//! module to take.

use sluice_store::IncidentTrigger;
use sluice_store::InstanceState;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use sluice_proxy::{Backend, Route};
use sluice_spec::{Environment, Spec};
use sluice_store::{Instance, Release};
use tokio_util::sync::CancellationToken;

use crate::runtime::InstanceSpec;
use crate::{Inner, Live, data, health, render};

/// The release's files, config and data, ready before any instance starts.
pub(crate) async fn prepare(
    inner: &Arc<Inner>,
    release: &Release,
    spec: &Spec,
    env: &Environment,
    state: Option<&sluice_store::EnvState>,
    deployment: i64,
) -> Result<()> {
    let service = &release.service;
    let release_dir = crate::release::unpack(&inner.store, &inner.layout, release).await?;
    let data_dir = inner.layout.data(service, &env.name)?;
    if state.is_some_and(|s| s.seeded_at.is_some()) && !data_dir.exists() {
        data::arrive(inner, service, &env.name, &data_dir).await?;
    }
    let snapshot = data::snapshot(
        &data_dir,
        &inner.layout.snapshots(service, &env.name)?,
        &format!("deployment-{deployment}"),
        env.data.snapshots,
    )?;
    if let Some(path) = snapshot {
        tracing::info!(service, env = %env.name, path = %path.display(), "data snapshot taken");
    }
    if state.is_none_or(|s| s.seeded_at.is_none()) {
        let source = env
            .data
            .copy_from
            .as_ref()
            .map(|from| inner.layout.data(service, from))
            .transpose()?;
        let run_as = seed_run_as(service, env, &data_dir, inner.env_uid(service, &env.name));
        // On agents' hosts, each host seeds its own data directory.
        let here = match inner.hosts_of(env) {
            Some(_) => sluice_spec::DataSpec {
                seed: None,
                ..env.data.clone()
            },
            None => env.data.clone(),
        };
        let filled = data::fill(&here, &data_dir, &release_dir, source.as_deref(), &run_as).await?;
        tracing::info!(service, env = %env.name, ?filled, "data prepared for the first deployment");
        let summary = filled.summary(&env.name);
        // Empty data is nothing to tell.
        if !summary.is_empty() {
            inner
                .store
                .append_change(sluice_store::NewChangeEvent {
                    actor: "sluice".into(),
                    kind: "data.prepared".into(),
                    service: Some(service.clone()),
                    environment: Some(env.name.clone()),
                    subject: format!("deployment {deployment}"),
                    summary,
                    before: None,
                    after: None,
                })
                .await?;
        }
        inner.store.mark_seeded(service, &env.name).await?;
    }
    data::hand_over(&data_dir, inner.env_uid(service, &env.name))?;
    let files = render::render(spec, env, &release.name(), &release_dir)?;
    let config_dir = inner.layout.config(service, &env.name, release.number)?;
    render::write(&config_dir, &files)?;
    if let Some(uid) = inner.env_uid(service, &env.name) {
        check_reachable(uid, env, spec, &[&data_dir, &config_dir])?;
    }
    Ok(())
}

/// Refuses a deployment whose instances could not start as the
/// environment's user: a directory of theirs, or the command's program,
/// behind a directory that user may not enter (root's home, a `mktemp -d`).
fn check_reachable(
    uid: u32,
    env: &Environment,
    spec: &Spec,
    dirs: &[&std::path::Path],
) -> Result<()> {
    use sluice_ci::sandbox::{Access, unreachable_by};
    let ways_out = "make it reachable (`chmod o+x` on the directory named, or install the program where every user can run it), or start the server with `--isolation none` (instances and steps then run as the server's own user and can read all of its data)";
    for dir in dirs {
        if let Some(why) = unreachable_by(uid, dir, Access::Read) {
            bail!(
                "{}'s instances run as uid {uid}, which cannot reach {}: {why}; {ways_out}",
                env.name,
                dir.display()
            );
        }
    }
    let Some(command) = spec.run.as_ref().map(|r| r.command.as_str()) else {
        return Ok(());
    };
    let Some(program) = program_of(command) else {
        return Ok(());
    };
    // A program of the release itself is checked by running it.
    if !program.starts_with('/') && program.contains('/') {
        return Ok(());
    }
    let path = env
        .config
        .get("PATH")
        .cloned()
        .unwrap_or_else(|| DEFAULT_PATH.to_string());
    let found = if program.starts_with('/') {
        Some(std::path::PathBuf::from(&program))
    } else {
        path.split(':')
            .map(|dir| std::path::Path::new(dir).join(&program))
            .find(|p| p.exists())
    };
    let Some(found) = found else {
        bail!(
            "`{program}`, which `run.command` starts, is on none of the instances' PATH ({path}); install it there, give its full path, or set PATH in the environment's `config`"
        );
    };
    if let Some(why) = unreachable_by(uid, &found, Access::Execute) {
        bail!(
            "{}'s instances run as uid {uid}, which cannot run {} (from `run.command`): {why}; {ways_out}",
            env.name,
            found.display()
        );
    }
    Ok(())
}

/// The program a shell command line starts: past `exec` and `NAME=value`
/// words; none when the line is more than a simple command.
fn program_of(command: &str) -> Option<String> {
    if command.contains(['|', ';', '&', '(', '`', '$', '<', '>', '\n']) {
        return None;
    }
    command
        .split_whitespace()
        .find(|word| *word != "exec" && !word.contains('='))
        .filter(|word| !word.contains(['"', '\'']))
        .map(str::to_string)
}

pub(crate) fn ready_timeout(spec: &Spec) -> Duration {
    sluice_spec::RunSpec::ready_timeout_of(spec.run.as_ref())
}

/// Starts instances of `release` until `have` reaches the environment's count.
pub(crate) async fn top_up(
    inner: &Arc<Inner>,
    release: &Release,
    spec: &Spec,
    env: &Environment,
    route: &Route,
    have: usize,
    deployment: i64,
) -> Result<()> {
    for _ in have..env.instances as usize {
        let new = start_instance(inner, release, spec, env, deployment, None).await?;
        wait_healthy(inner, &new.backend, ready_timeout(spec), false).await?;
        admit(inner, route, &new).await;
    }
    Ok(())
}

/// Routes a healthy new instance, and waits until the hosts' entry points
/// route to it too (a report later): what comes next in a deployment, the
/// old instance's drain or its end, must not leave a host with less.
pub(crate) async fn admit(inner: &Arc<Inner>, route: &Route, new: &Live) {
    route.add(new.backend.clone());
    let key = (new.service.clone(), new.env.clone());
    let hosts = &inner.hosts;
    if !hosts
        .entries
        .take_up(
            &key,
            &new.backend.id,
            hosts.lease,
            inner.config.drain_timeout,
        )
        .await
    {
        tracing::warn!(instance = %new.backend.id, "an entry point on a host does not route to it yet; going on");
    }
}

/// Stops every instance deployment `deployment` started in the environment.
pub(crate) async fn stop_deployment(inner: &Arc<Inner>, service: &str, env: &str, deployment: i64) {
    let route = inner
        .entries
        .lock()
        .unwrap()
        .get(&(service.to_string(), env.to_string()))
        .map(|e| e.route.clone())
        .unwrap_or_default();
    for live in inner
        .live_in(service, env)
        .into_iter()
        .filter(|l| l.deployment == deployment)
    {
        stop_instance(inner, &route, &live).await;
    }
}

/// An open experiment's B, as its instances are started and recorded: the
/// experiment, and B's copy of the environment's data if it has one.
#[derive(Clone, Copy)]
pub(crate) struct OfB<'a> {
    pub experiment: i64,
    pub data_dir: Option<&'a std::path::Path>,
}

/// Starts one instance of `release` in `env` for `deployment`, with its
/// port, environment and health checks: the environment's own, or the B of
/// an experiment (`b`), whose `DATA_DIR` may be a copy.
pub(crate) async fn start_instance(
    inner: &Arc<Inner>,
    release: &Release,
    spec: &Spec,
    env: &Environment,
    deployment: i64,
    b: Option<OfB<'_>>,
) -> Result<Live> {
    let data_dir = b.and_then(|b| b.data_dir);
    let service = &release.service;
    let run = spec
        .run
        .as_ref()
        .context("sluice.yaml has no `run` section: there is nothing to start")?;
    let taken: std::collections::HashSet<u16> = inner
        .live
        .lock()
        .unwrap()
        .values()
        .map(|l| l.backend.addr.port())
        .collect();
    let port = free_port(&taken, run.ports)?;
    let host = match &inner.hosts_of(env) {
        Some(hosts) => Some(
            inner
                .hosts
                .place(
                    (service, &env.name),
                    release.id,
                    hosts,
                    crate::hosts::place::Need::of(run),
                )
                .await?,
        ),
        None => None,
    };
    let n = inner.store.count_instances(service, &env.name).await? + 1;
    let id = instance_id(service, &env.name, &release.name(), n);
    let release_dir = inner.layout.release(service, release.number)?;
    let files = render::render(spec, env, &release.name(), &release_dir)?;
    let uid = inner.env_uid(service, &env.name);
    // An agent's host gets the release's files from the server instead.
    if host.is_none() {
        let workdir = inner.layout.instance_workdir(service, &env.name, &id)?;
        let release_dir = release_dir.clone();
        tokio::task::spawn_blocking(move || crate::workdir::prepare(&release_dir, &workdir, uid))
            .await??;
    }
    let process = process_spec(inner, release, env, run, &id, port, data_dir).await?;
    let record = Instance {
        id: id.clone(),
        service: service.clone(),
        environment: env.name.clone(),
        release_id: release.id,
        release: release.number,
        port: port.into(),
        pid: None,
        start_ticks: None,
        state: InstanceState::Starting,
        restarts: 0,
        config_hash: render::config_hash(&env.config, &files),
        experiment_id: b.map(|b| b.experiment),
        agent: host.as_ref().map(|h| h.agent.clone()),
        created_at: 0,
        stopped_at: None,
    };
    inner.store.insert_instance(&record).await?;
    let address = match &host {
        Some(host) => {
            let of = (service.as_str(), env.name.as_str());
            // B on a copy of the data: the host makes its own copy.
            let copy_for = data_dir.map(|_| deployment);
            let data = crate::hosts::wire::HostedData::of(&env.data, copy_for);
            inner
                .hosts
                .start(host, &process, of, port, run, data)
                .await?;
            host.address
        }
        None => {
            inner.runtime.start(process).await?;
            std::net::Ipv4Addr::LOCALHOST.into()
        }
    };
    let addr = std::net::SocketAddr::new(address, port);
    Ok(watch(inner, release, env, run, &id, addr, deployment, false).await)
}

/// Takes over an instance a previous server started and left running
/// (see [`Inner::reconcile`](crate::Inner)): supervised and health-checked
/// as one this server started, and routed at once when it was healthy.
pub(crate) async fn adopt_instance(
    inner: &Arc<Inner>,
    release: &Release,
    spec: &Spec,
    env: &Environment,
    instance: &Instance,
    deployment: i64,
    data_dir: Option<&std::path::Path>,
) -> Result<Live> {
    let run = spec
        .run
        .as_ref()
        .context("sluice.yaml has no `run` section: there is nothing to keep")?;
    let port = u16::try_from(instance.port)?;
    let address = match &instance.agent {
        // Its agent runs it on: this server watches it again.
        Some(agent) => {
            let placed = inner.store.placement(&instance.id).await?;
            inner
                .hosts
                .adopt(&instance.id, placed.map_or(0, |p| p.exits as u32));
            inner.store.agent_named(agent).await?.address.parse()?
        }
        None => {
            let (Some(pid), Some(ticks)) = (instance.pid, instance.start_ticks) else {
                bail!("instance {} has no recorded process", instance.id);
            };
            let process =
                process_spec(inner, release, env, run, &instance.id, port, data_dir).await?;
            inner.runtime.adopt(process, pid as i32, ticks).await?;
            std::net::Ipv4Addr::LOCALHOST.into()
        }
    };
    let addr = std::net::SocketAddr::new(address, port);
    let healthy = instance.state == InstanceState::Healthy;
    Ok(watch(
        inner,
        release,
        env,
        run,
        &instance.id,
        addr,
        deployment,
        healthy,
    )
    .await)
}

/// How the runtime starts (and restarts) instance `id`.
async fn process_spec(
    inner: &Arc<Inner>,
    release: &Release,
    env: &Environment,
    run: &sluice_spec::RunSpec,
    id: &str,
    port: u16,
    data_dir: Option<&std::path::Path>,
) -> Result<InstanceSpec> {
    let service = &release.service;
    let data_dir = match data_dir {
        Some(dir) => dir.to_path_buf(),
        None => inner.layout.data(service, &env.name)?,
    };
    let config_dir = inner.layout.config(service, &env.name, release.number)?;
    let workdir = inner.layout.instance_workdir(service, &env.name, id)?;
    let mut vars = instance_env(
        inner,
        release,
        env,
        id,
        port,
        &workdir,
        &config_dir,
        &data_dir,
    );
    vars.extend(instance_secrets(inner, release, &run.secrets).await?);
    Ok(InstanceSpec {
        id: id.to_string(),
        workdir,
        command: run.command.clone(),
        env: vars,
        log: inner.layout.instance_log(service, &env.name, id)?,
        uid: inner.env_uid(service, &env.name),
    })
}

/// The instance's backend with its health checks (an incident raised when
/// it stays unhealthy), kept among the server's live instances.
#[allow(clippy::too_many_arguments)]
async fn watch(
    inner: &Arc<Inner>,
    release: &Release,
    env: &Environment,
    run: &sluice_spec::RunSpec,
    id: &str,
    addr: std::net::SocketAddr,
    deployment: i64,
    healthy: bool,
) -> Live {
    let service = &release.service;
    let backend = Backend::new(id.to_string(), addr, release.name());
    backend.set_healthy(healthy);
    let checks = CancellationToken::new();
    let last_failure = Arc::new(std::sync::Mutex::new(None));
    let check = run.health.clone();
    let alarm = {
        let (inner, service, env) = (inner.clone(), service.clone(), env.name.clone());
        let (instance, name) = (id.to_string(), release.name());
        health::Alarm {
            after: check
                .as_ref()
                .map_or(sluice_spec::INCIDENT_AFTER, |c| c.incident_after),
            fire: Arc::new(move |why: String| {
                inner.raise(crate::Alarm {
                    title: format!("{service} is unhealthy in {env}"),
                    detail: format!(
                        "instance {instance} of {name} kept failing its health check: {why}"
                    ),
                    service: service.clone(),
                    env: env.clone(),
                    trigger: IncidentTrigger::Health,
                })
            }),
        }
    };
    health::watch(health::Watch {
        store: inner.store.clone(),
        service: service.clone(),
        env: env.name.clone(),
        backend: backend.clone(),
        check: check.clone(),
        rules: crate::rules::in_force::health_rules(inner, release, &env.name).await,
        last_failure: last_failure.clone(),
        alarm: Some(alarm),
        stop: checks.clone(),
    });
    let live = Live {
        service: service.clone(),
        env: env.name.clone(),
        deployment,
        backend,
        check,
        checks,
        last_failure,
    };
    inner
        .live
        .lock()
        .unwrap()
        .insert(id.to_string(), live.clone());
    live
}

/// What an instance finds in its environment: the server's own variables
/// (less `SLUICE_*`), the environment's config values, and where it is.
/// The secrets `run.secrets` names, from the release's repository: each
/// must be set, or the deployment fails saying which and how to set it.
pub(crate) async fn instance_secrets(
    inner: &Inner,
    release: &Release,
    names: &[String],
) -> Result<Vec<(String, String)>> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let mut all = inner.store.secrets(release.repo_id).await?;
    let mut given = Vec::new();
    for name in names {
        let Some(secret) = all.remove(name) else {
            let repo = inner.store.repo_by_id(release.repo_id).await;
            let repo = repo.map_or_else(|_| "REPO".to_string(), |r| r.name);
            bail!(
                "`run.secrets` names `{name}`, which is not set; set it with `sluice secret set {repo} {name}`"
            );
        };
        given.push((name.clone(), secret.value));
    }
    Ok(given)
}

/// An instance's id, unique across services: `SERVICE.ENV-vN-K`, K counting
/// the instances the environment has had. Names have no `.`, and a release
/// is `vN`, so the id reads back one way only.
fn instance_id(service: &str, env: &str, release: &str, n: i64) -> String {
    format!("{service}.{env}-{release}-{n}")
}

/// The `PATH` instances, seeds and scrubs get unless the environment's
/// config sets one: the system's directories, nothing of the server's.
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The base every process Sluice starts for an environment gets, and nothing
/// of the server's own environment (its token, its `HOME`): `PATH`, `LANG`,
/// `HOME` (`home`), then the environment's config values, which may
/// override any of them.
fn clean_env(env: &Environment, home: &std::path::Path) -> Vec<(String, String)> {
    let mut vars = vec![
        ("PATH".to_string(), DEFAULT_PATH.to_string()),
        ("LANG".to_string(), "C.UTF-8".to_string()),
        ("HOME".to_string(), home.to_string_lossy().into_owned()),
    ];
    vars.extend(env.config.iter().map(|(k, v)| (k.clone(), v.clone())));
    vars
}

/// A seed or scrub script runs as the environment's user with the clean
/// environment (its `HOME` the data directory) and where it is.
pub(crate) fn seed_run_as(
    service: &str,
    env: &Environment,
    data_dir: &std::path::Path,
    uid: Option<u32>,
) -> data::RunAs {
    let mut vars = clean_env(env, data_dir);
    vars.push(("SLUICE_SERVICE".into(), service.to_string()));
    vars.push(("SLUICE_ENV".into(), env.name.clone()));
    data::RunAs { uid, vars }
}

/// What an instance finds in its environment: the clean base with `HOME`
/// its working directory, the environment's config values, and where it is
/// (`HOST` and `PORT` to listen on, loopback only: the entry point is the
/// way in).
#[allow(clippy::too_many_arguments)]
pub(crate) fn instance_env(
    inner: &Inner,
    release: &Release,
    env: &Environment,
    id: &str,
    port: u16,
    workdir: &std::path::Path,
    config_dir: &std::path::Path,
    data_dir: &std::path::Path,
) -> Vec<(String, String)> {
    let mut vars = clean_env(env, workdir);
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    vars.extend([
        ("HOST".to_string(), "127.0.0.1".to_string()),
        ("PORT".to_string(), port.to_string()),
        ("SLUICE_SERVICE".to_string(), release.service.clone()),
        ("SLUICE_ENV".to_string(), env.name.clone()),
        ("SLUICE_RELEASE".to_string(), release.name()),
        ("SLUICE_INSTANCE".to_string(), id.to_string()),
        ("SLUICE_CONFIG_DIR".to_string(), path(config_dir)),
        ("DATA_DIR".to_string(), path(data_dir)),
        // Marks the process as this server's, so a restart finds it even unrecorded.
        ("SLUICE_HOME".to_string(), path(&inner.config.data_dir)),
    ]);
    vars
}

/// Exits before the first health check passes that fail a deployment at once.
const CRASH_LOOP_EXITS: u32 = 3;

/// Waits until the instance passes its health check; fails (and stops it)
/// when it does not within `limit`, at once when its process keeps exiting,
/// and, when it may `give_way`, when a newer release is asked for meanwhile.
pub(crate) async fn wait_healthy(
    inner: &Arc<Inner>,
    backend: &Arc<Backend>,
    limit: Duration,
    give_way: bool,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    let (service, env) = {
        let live = inner.live.lock().unwrap();
        live.get(&backend.id)
            .map(|l| (l.service.clone(), l.env.clone()))
            .unwrap_or_default()
    };
    let number: i64 = backend.release.trim_start_matches('v').parse().unwrap_or(0);
    while !backend.is_healthy() {
        let exits = inner.exits(&backend.id);
        let crash_looping = exits >= CRASH_LOOP_EXITS;
        let newer = give_way
            .then(|| inner.superseded_by(&service, &env, number))
            .flatten();
        if crash_looping || newer.is_some() || tokio::time::Instant::now() >= deadline {
            let live = inner.live.lock().unwrap().get(&backend.id).cloned();
            let why = live
                .as_ref()
                .and_then(|l| l.last_failure.lock().unwrap().clone());
            if let Some(live) = &live {
                let route = Route::default();
                stop_instance(inner, &route, live).await;
                if let Some(failure) = &why {
                    record_rule_block(inner, live, failure).await;
                }
            }
            if let Some(newer) = newer {
                return Err(anyhow!(
                    "superseded: v{newer} was asked for while instance {} of v{number} was not yet healthy",
                    backend.id
                ));
            }
            if crash_looping {
                let tail = log_tail(inner, &backend.id).await;
                return Err(anyhow!(
                    "instance {} exited {exits} times before it became healthy; the end of its log:\n{tail}",
                    backend.id
                ));
            }
            let why = why.map(|w| format!(": {w}")).unwrap_or_default();
            return Err(anyhow!(
                "instance {} did not become healthy within {}{why}",
                backend.id,
                sluice_spec::format_duration(limit)
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    warn_if_exposed(inner, backend).await;
    Ok(())
}

/// Tells (in the change log and the instance's log) when a healthy instance
/// also listens beyond loopback: it answers past the entry point.
async fn warn_if_exposed(inner: &Arc<Inner>, backend: &Backend) {
    // On an agent's host it listens on the host's address by design.
    if !backend.addr.ip().is_loopback() {
        return;
    }
    let exposed = crate::exposure::exposed(backend.addr.port());
    let Some(live) = inner.live.lock().unwrap().get(&backend.id).cloned() else {
        return;
    };
    if exposed.is_empty() {
        return;
    }
    let addresses: Vec<String> = exposed.iter().map(|ip| ip.to_string()).collect();
    let summary = format!(
        "instance {} listens on {} port {} beyond loopback: it answers past the entry point; listen on $HOST ({}) instead",
        backend.id,
        addresses.join(", "),
        backend.addr.port(),
        backend.addr.ip()
    );
    tracing::warn!(instance = %backend.id, %summary, "instance exposed");
    let _ = inner
        .store
        .append_change(sluice_store::NewChangeEvent {
            actor: "sluice".into(),
            kind: "instance.exposed".into(),
            service: Some(live.service.clone()),
            environment: Some(live.env.clone()),
            subject: format!("instance {}", backend.id),
            summary,
            before: None,
            after: None,
        })
        .await;
}

/// The last lines of an instance's log (secrets masked), for a deployment's failure.
async fn log_tail(inner: &Inner, id: &str) -> String {
    const LINES: usize = 20;
    let text = inner.instance_log(id, 16 * 1024).await.unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LINES)..].join("\n")
}

/// Remembers that a rule's health check kept an instance out.
async fn record_rule_block(inner: &Arc<Inner>, live: &Live, failure: &health::Failure) {
    let Some(rule) = &failure.rule else {
        return;
    };
    let subject = format!("instance {} ({})", live.backend.id, live.backend.release);
    let _ = inner
        .store
        .record_block(
            rule,
            &live.service,
            Some(&live.env),
            &subject,
            &failure.message,
        )
        .await;
}

/// Drains an instance (no new requests, those in flight finish), then stops it.
pub(crate) async fn retire(inner: &Arc<Inner>, route: &Route, live: &Live) {
    drain(inner, route, live).await;
    stop_instance(inner, route, live).await;
}

/// Drains an instance now and stops it in the background; await the handle.
pub(crate) async fn drain_then_stop(
    inner: &Arc<Inner>,
    route: &Route,
    retired: Live,
) -> tokio::task::JoinHandle<()> {
    drain(inner, route, &retired).await;
    let (inner, route) = (inner.clone(), route.clone());
    tokio::spawn(async move { stop_instance(&inner, &route, &retired).await })
}

/// Takes an instance out of the route once its requests in flight are done.
pub(crate) async fn drain(inner: &Arc<Inner>, route: &Route, live: &Live) {
    let _ = inner
        .store
        .set_instance_state(&live.backend.id, InstanceState::Draining)
        .await;
    if !route
        .drain(&live.backend.id, inner.config.drain_timeout)
        .await
    {
        tracing::warn!(instance = %live.backend.id, "drain timed out; stopping anyway");
    }
    // The entry points on hosts route by the server's table a report later.
    let key = (live.service.clone(), live.env.clone());
    let hosts = &inner.hosts;
    if !hosts
        .entries
        .let_go(
            &key,
            &live.backend.id,
            hosts.lease,
            inner.config.drain_timeout,
        )
        .await
    {
        tracing::warn!(instance = %live.backend.id, "an entry point on a host still routes to it; stopping anyway");
    }
}

pub(crate) async fn stop_instance(inner: &Arc<Inner>, route: &Route, live: &Live) {
    route.remove(&live.backend.id);
    live.checks.cancel();
    inner.stop_process(&live.backend.id).await;
    inner.live.lock().unwrap().remove(&live.backend.id);
    remove_workdir(inner, &live.service, &live.env, &live.backend.id).await;
    let _ = inner
        .store
        .set_instance_state(&live.backend.id, InstanceState::Stopped)
        .await;
}

/// Removes a stopped instance's working directory (see [`crate::workdir`]).
pub(crate) async fn remove_workdir(inner: &Inner, service: &str, env: &str, id: &str) {
    if let Ok(dir) = inner.layout.instance_workdir(service, env, id) {
        let _ = tokio::task::spawn_blocking(move || crate::workdir::remove(&dir)).await;
    }
}

/// The lowest port of the kernel's ephemeral range, from which `bind(0)` and
/// outgoing connections take theirs.
fn ephemeral_floor() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// A port for a new instance to bind: free a moment ago, not one this server
/// gave another instance, and within `run.ports` when the release sets it;
/// otherwise below the ephemeral range when there is room, so that no socket
/// of any process is handed it by the kernel before the instance binds it.
pub(crate) fn free_port(
    taken: &std::collections::HashSet<u16>,
    range: Option<(u16, u16)>,
) -> Result<u16> {
    const FLOOR: u16 = 10_000;
    let free = |port: u16| {
        !taken.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
    };
    if let Some((first, last)) = range {
        // Random first (instances starting together rarely collide), then every port.
        let random = (0..200).map(|_| rand::random_range(first..=last));
        return random
            .chain(first..=last)
            .find(|p| free(*p))
            .ok_or_else(|| anyhow!("no free port in `run.ports` {first}-{last}: widen the range"));
    }
    let ceiling = ephemeral_floor();
    if ceiling > FLOOR + 1000 {
        for _ in 0..500 {
            let port = rand::random_range(FLOOR..ceiling);
            if free(port) {
                return Ok(port);
            }
        }
    }
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("no free port for an instance")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::{free_port, instance_id, program_of};

    #[test]
    fn the_program_of_a_simple_command_is_found() {
        for (command, program) in [
            ("exec python3 app/server.py", Some("python3")),
            (
                "PORT2=1 exec /root/venv/bin/gunicorn app:app",
                Some("/root/venv/bin/gunicorn"),
            ),
            ("node index.js", Some("node")),
            ("./run.sh", Some("./run.sh")),
            ("test -e x || exit 1; exec python3 a.py", None),
            ("exec \"$HOME/bin/app\"", None),
        ] {
            assert_eq!(program_of(command).as_deref(), program, "{command}");
        }
    }

    #[test]
    fn ports_come_from_run_ports_and_never_twice() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let busy = listener.local_addr().unwrap().port();
        let mut taken = std::collections::HashSet::from([busy.wrapping_add(1)]);
        let range = Some((busy, busy.saturating_add(2)));
        let port = free_port(&taken, range).unwrap();
        assert_eq!(
            port,
            busy.saturating_add(2),
            "the busy port and the one given out are skipped"
        );
        taken.insert(port);
        let error = free_port(&taken, range).unwrap_err().to_string();
        assert!(error.contains("no free port in `run.ports`"), "{error}");
    }

    #[test]
    fn two_services_with_the_same_environment_never_share_an_instance_id() {
        let shop = instance_id("shop", "dev", "v1", 1);
        let blog = instance_id("blog", "dev", "v1", 1);
        assert_ne!(shop, blog);
        assert_eq!(shop, "shop.dev-v1-1");
        assert_ne!(
            instance_id("a", "b-c", "v1", 1),
            instance_id("a-b", "c", "v1", 1),
            "a `-` in a name cannot make two ids one"
        );
    }
}
