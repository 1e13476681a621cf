//! From [`RawSpec`] to [`Spec`]: every semantic check, each error collected
//! with the place it is about, so that one run of `sluice validate` shows all.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use serde_saphyr::Spanned;

use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::model::*;
use crate::raw::*;
use crate::{EventPattern, FreezeWindow, NotifyRoute, parse_duration};

struct Checker<'a> {
    file: &'a str,
    text: &'a str,
    found: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn error<T>(
        &mut self,
        node: &Spanned<T>,
        message: impl AsRef<str>,
        help: impl Into<Option<String>>,
    ) {
        let diagnostic =
            Diagnostic::spanned(self.file, self.text, node, message.as_ref(), help.into());
        self.found.push(diagnostic);
    }

    fn duration(
        &mut self,
        node: &Option<Spanned<String>>,
        what: &str,
        default: Duration,
    ) -> Duration {
        let Some(node) = node else { return default };
        match parse_duration(&node.value) {
            Ok(d) if d > Duration::ZERO => d,
            Ok(_) => {
                self.error(node, format!("{what} must be longer than zero"), None);
                default
            }
            Err(why) => {
                self.error(
                    node,
                    format!("bad {what}: {why}"),
                    Some("write a number and a unit: `500ms`, `30s`, `10m`, `1h30m`".into()),
                );
                default
            }
        }
    }

    /// A name that becomes a directory, a label or a URL segment.
    fn name(&mut self, node: &Spanned<String>, what: &str) {
        if let Some(why) = crate::paths::name_problem(&node.value) {
            self.error(
                node,
                format!("`{}` is not a valid {what} name: {why}", node.value),
                Some(
                    "use lowercase letters, digits and `-`, starting with a letter or a digit, \
                     at most 63 characters (e.g. `pre-prod`)"
                        .into(),
                ),
            );
        }
    }

    fn relative_path(&mut self, node: &Spanned<String>, what: &str) {
        if let Err(escape) = crate::paths::inside(std::path::Path::new("."), &node.value) {
            self.error(
                node,
                format!(
                    "{what} `{}` must be a path inside the repository: {}",
                    node.value, escape.why
                ),
                Some("write it relative to the repository root, without `..`".into()),
            );
        }
    }
}

pub fn validate(file: &str, text: &str, raw: RawSpec) -> Result<Spec, Diagnostics> {
    let mut checker = Checker {
        file,
        text,
        found: Vec::new(),
    };
    let c = &mut checker;
    c.name(&raw.service, "service");
    let mainline = match &raw.mainline {
        Some(node) if node.value.trim().is_empty() => {
            c.error(
                node,
                "`mainline` is empty",
                Some("name the main branch, e.g. `main`".to_string()),
            );
            "main".to_string()
        }
        Some(node) => node.value.clone(),
        None => "main".to_string(),
    };
    let pipeline = pipeline(c, raw.pipeline);
    let run = raw.run.map(|r| run_spec(c, r));
    let environments = environments(c, raw.environments, &pipeline);
    let notify = notify(c, &raw.notify, &environments);
    let mut found = checker.found;
    if !found.is_empty() {
        found.sort_by_key(|d| (d.line, d.column));
        return Err(Diagnostics(found));
    }
    Ok(Spec {
        service: raw.service.value,
        mainline,
        pipeline,
        run,
        environments,
        notify,
    })
}

/// `notify:` routes: known event kinds, declared environments, channel names.
fn notify(
    c: &mut Checker,
    raw: &[Spanned<RawNotify>],
    environments: &[Environment],
) -> Vec<NotifyRoute> {
    let mut routes = Vec::new();
    for route in raw {
        if route.value.on.is_empty() || route.value.to.is_empty() {
            c.error(
                route,
                "a `notify` route needs `on` (event kinds) and `to` (channels)",
                Some("e.g. `{ on: [deployment.failed], to: [team-chat] }`".to_string()),
            );
        }
        let mut on = Vec::new();
        for kind in &route.value.on {
            match EventPattern::parse(&kind.value) {
                Ok(pattern) => on.push(pattern),
                Err(why) => c.error(kind, why, None),
            }
        }
        for env in &route.value.env {
            if !environments.iter().any(|e| e.name == env.value) {
                let known: Vec<&str> = environments.iter().map(|e| e.name.as_str()).collect();
                c.error(
                    env,
                    format!(
                        "`notify` names environment `{}`, which is not declared",
                        env.value
                    ),
                    Some(format!("expected one of: {}", known.join(", "))),
                );
            }
        }
        for channel in &route.value.to {
            c.name(channel, "channel");
        }
        routes.push(NotifyRoute {
            on,
            env: route.value.env.iter().map(|e| e.value.clone()).collect(),
            to: route.value.to.iter().map(|t| t.value.clone()).collect(),
        });
    }
    routes
}

fn pipeline(c: &mut Checker, raw: RawPipeline) -> Pipeline {
    if raw.jobs.value.0.is_empty() {
        c.error(
            &raw.jobs,
            "the pipeline has no jobs",
            Some("add a job with at least one step under `pipeline.jobs`".to_string()),
        );
    }
    let names: HashSet<&str> = raw
        .jobs
        .value
        .0
        .iter()
        .map(|(k, _)| k.value.as_str())
        .collect();
    let mut jobs = Vec::new();
    for (name, job) in &raw.jobs.value.0 {
        c.name(name, "job");
        jobs.push(job_spec(c, name, job, &names));
    }
    needs_cycle(c, &raw.jobs.value);
    let (artifact, from) = raw.artifact.map(|a| (a.paths, a.from)).unwrap_or_default();
    for path in &artifact {
        c.relative_path(path, "artifact path");
    }
    if let Some(from) = &from
        && !names.contains(from.value.as_str())
    {
        let mut known: Vec<_> = names.iter().copied().collect();
        known.sort();
        c.error(
            from,
            format!("unknown job `{}` in `artifact.from`", from.value),
            Some(format!(
                "name the job whose workspace holds the artifact: {}",
                known.join(", ")
            )),
        );
    }
    let changes = match raw.changes.as_ref().map(|c| c.value.as_str()) {
        None | Some("every") => Changes::Every,
        Some("tips") => Changes::Tips,
        Some(other) => {
            let node = raw.changes.as_ref().expect("matched Some");
            c.error(
                node,
                format!("`{other}` is not a way to pick changes"),
                Some(
                    "write `every` (each new commit, the default) or `tips` (only the newest)"
                        .into(),
                ),
            );
            Changes::Every
        }
    };
    Pipeline {
        jobs,
        artifact: artifact.into_iter().map(|p| p.value).collect(),
        artifact_from: from.map(|f| f.value),
        changes,
    }
}

fn job_spec(c: &mut Checker, name: &Spanned<String>, job: &RawJob, names: &HashSet<&str>) -> Job {
    let mut needs = Vec::new();
    for need in &job.needs {
        if need.value == name.value {
            c.error(need, format!("job `{}` needs itself", name.value), None);
        } else if !names.contains(need.value.as_str()) {
            let mut known: Vec<_> = names.iter().copied().collect();
            known.sort();
            c.error(
                need,
                format!("unknown job `{}` in `needs`", need.value),
                Some(format!(
                    "expected one of the jobs under `pipeline.jobs`: {}",
                    known.join(", ")
                )),
            );
        } else if needs.contains(&need.value) {
            c.error(
                need,
                format!("`{}` is listed twice in `needs`", need.value),
                None,
            );
        }
        needs.push(need.value.clone());
    }
    let steps = match &job.steps {
        Some(steps) if steps.value.is_empty() => {
            c.error(
                steps,
                format!("job `{}` has no steps", name.value),
                Some("add `- run: COMMAND` under `steps`".to_string()),
            );
            Vec::new()
        }
        None => {
            c.error(
                name,
                format!("job `{}` has no steps", name.value),
                Some("add `steps:` with `- run: COMMAND` to the job".to_string()),
            );
            Vec::new()
        }
        Some(steps) => steps.value.iter().map(|s| step(c, s)).collect(),
    };
    let kind = job.condition.as_ref().and_then(|cond| {
        let kind = ChangeKind::parse(&cond.value);
        if kind.is_none() && cond.value != "always" {
            c.error(
                cond,
                format!("unknown condition `{}` in `if`", cond.value),
                Some("expected `mainline`, `review` or `always`".to_string()),
            );
        }
        kind
    });
    for branch in &job.branches {
        if branch.value.is_empty() || branch.value[..branch.value.len() - 1].contains('*') {
            c.error(
                branch,
                format!("bad branch pattern `{}`", branch.value),
                Some("write a branch name, optionally ending in `*` (`release/*`)".to_string()),
            );
        }
    }
    Job {
        name: name.value.clone(),
        needs,
        env: env_map(c, &job.env),
        timeout: c.duration(&job.timeout, "timeout", DEFAULT_JOB_TIMEOUT),
        steps,
        filter: JobFilter {
            kind,
            branches: job.branches.iter().map(|b| b.value.clone()).collect(),
        },
        runs_on: job
            .runs_on
            .as_ref()
            .map(|wanted| labels(c, wanted, "runs_on")),
        retry_lost: retry_lost(c, job.retry.as_ref()),
    }
}

/// Agents' labels (`runs_on:`, `hosts: { labels }`), each key and value checked.
fn labels(c: &mut Checker, raw: &Entries<Scalar>, field: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    for (key, value) in &raw.0 {
        for (text, what) in [(&key.value, "key"), (&value.0, "value")] {
            if !crate::model::is_label(text) {
                c.error(
                    key,
                    format!("`{text}` is not a valid label {what} in `{field}`"),
                    Some("use 1 to 63 letters, digits, `.`, `_` or `-`".to_string()),
                );
            }
        }
        labels.insert(key.value.clone(), value.0.clone());
    }
    labels
}

fn retry_lost(c: &mut Checker, retry: Option<&RawRetry>) -> u32 {
    match retry.and_then(|r| r.lost.as_ref()) {
        None => DEFAULT_RETRY_LOST,
        Some(lost) if lost.value > MAX_RETRY_LOST => {
            c.error(
                lost,
                format!("`retry.lost` is {}", lost.value),
                Some(format!("retry a lost job 0 to {MAX_RETRY_LOST} times")),
            );
            MAX_RETRY_LOST
        }
        Some(lost) => lost.value,
    }
}

fn step(c: &mut Checker, raw: &RawStep) -> Step {
    if raw.run.value.trim().is_empty() {
        c.error(
            &raw.run,
            "`run` is empty",
            Some("write the shell command this step runs".to_string()),
        );
    }
    let first_line = raw
        .run
        .value
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    Step {
        name: raw.name.clone().unwrap_or(first_line),
        run: raw.run.value.clone(),
    }
}

fn env_map(c: &mut Checker, raw: &Entries<Scalar>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for (key, value) in &raw.0 {
        let ok = key
            .value
            .chars()
            .next()
            .is_some_and(|ch| ch.is_ascii_alphabetic() || ch == '_')
            && key
                .value
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
        if !ok {
            c.error(
                key,
                format!("`{}` is not a valid variable name", key.value),
                Some("use letters, digits and `_`, not starting with a digit".to_string()),
            );
        }
        env.insert(key.value.clone(), value.0.clone());
    }
    env
}

/// Reports each cycle in `needs` once, at the job where it was found to close.
fn needs_cycle(c: &mut Checker, jobs: &Entries<RawJob>) {
    let index: HashMap<&str, usize> = jobs
        .0
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (k.value.as_str(), i))
        .collect();
    let edges: Vec<Vec<(usize, &Spanned<String>)>> = jobs
        .0
        .iter()
        .map(|(_, job)| {
            job.needs
                .iter()
                .filter_map(|n| index.get(n.value.as_str()).map(|&i| (i, n)))
                .collect()
        })
        .collect();
    let names: Vec<&str> = jobs.0.iter().map(|(k, _)| k.value.as_str()).collect();
    for (node, path) in find_cycles(&edges) {
        let route: Vec<&str> = path
            .iter()
            .map(|&i| names[i])
            .chain([names[path[0]]])
            .collect();
        c.error(
            node,
            format!("`needs` forms a cycle: {}", route.join(" → ")),
            Some("remove one of these `needs` so the jobs can run in an order".to_string()),
        );
    }
}

/// Depth-first search over a graph whose edges carry the node to blame;
/// returns each back edge with the path that it closes.
fn find_cycles<'s, T>(edges: &[Vec<(usize, &'s Spanned<T>)>]) -> Vec<(&'s Spanned<T>, Vec<usize>)> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit<'s, T>(
        n: usize,
        edges: &[Vec<(usize, &'s Spanned<T>)>],
        marks: &mut [Mark],
        stack: &mut Vec<usize>,
        out: &mut Vec<(&'s Spanned<T>, Vec<usize>)>,
    ) {
        marks[n] = Mark::Open;
        stack.push(n);
        for &(next, node) in &edges[n] {
            match marks[next] {
                Mark::New => visit(next, edges, marks, stack, out),
                Mark::Open => {
                    let start = stack.iter().position(|&s| s == next).unwrap_or(0);
                    out.push((node, stack[start..].to_vec()));
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks[n] = Mark::Done;
    }
    let mut marks = vec![Mark::New; edges.len()];
    let mut out = Vec::new();
    for n in 0..edges.len() {
        if marks[n] == Mark::New {
            visit(n, edges, &mut marks, &mut Vec::new(), &mut out);
        }
    }
    out
}

fn run_spec(c: &mut Checker, raw: RawRun) -> RunSpec {
    if raw.command.value.trim().is_empty() {
        c.error(
            &raw.command,
            "`run.command` is empty",
            Some("write the command that starts one instance".to_string()),
        );
    }
    let health = raw.health.map(|h| {
        if !h.path.value.starts_with('/') {
            c.error(
                &h.path,
                format!("health path `{}` must start with `/`", h.path.value),
                None,
            );
        }
        let interval = c.duration(&h.interval, "interval", Duration::from_secs(2));
        let timeout = c.duration(&h.timeout, "timeout", Duration::from_secs(1));
        let incident_after = c.duration(
            &h.incident_after,
            "incident_after",
            crate::model::INCIDENT_AFTER,
        );
        if let Some(node) = &h.timeout
            && timeout > interval
        {
            c.error(
                node,
                "the health check's timeout is longer than its interval",
                Some("make `timeout` at most `interval`".to_string()),
            );
        }
        let mut threshold = |node: &Option<Spanned<u32>>, name: &str, default: u32| match node {
            Some(n) if n.value == 0 => {
                c.error(n, format!("`{name}` must be at least 1"), None);
                default
            }
            Some(n) => n.value,
            None => default,
        };
        let healthy = threshold(&h.healthy, "healthy", 2);
        let unhealthy = threshold(&h.unhealthy, "unhealthy", 3);
        HealthCheck {
            path: h.path.value,
            interval,
            timeout,
            healthy,
            unhealthy,
            incident_after,
        }
    });
    let mut targets = HashSet::new();
    for file in &raw.config_files {
        c.relative_path(&file.template, "template");
        c.relative_path(&file.to, "config file");
        if !targets.insert(file.to.value.clone()) {
            c.error(
                &file.to,
                format!("two config files are rendered to `{}`", file.to.value),
                None,
            );
        }
    }
    let mut secrets = Vec::new();
    for name in &raw.secrets {
        if let Some(problem) = crate::paths::secret_name_problem(&name.value) {
            c.error(
                name,
                problem,
                Some("name a secret set with `sluice secret set REPO NAME`".into()),
            );
        } else if secrets.contains(&name.value) {
            c.error(
                name,
                format!("`{}` is listed twice in `secrets`", name.value),
                None,
            );
        }
        secrets.push(name.value.clone());
    }
    let ports = raw.ports.as_ref().and_then(|range| {
        let parsed = parse_port_range(&range.value);
        if parsed.is_none() {
            c.error(
                range,
                format!("`{}` is not a range of ports", range.value),
                Some("write FIRST-LAST with 1024 ≤ FIRST ≤ LAST ≤ 65535, e.g. 20000-20999".into()),
            );
        }
        parsed
    });
    let memory_mb = raw.memory.as_ref().and_then(|memory| {
        let mib = parse_size(&memory.value.0).map(|bytes| bytes >> 20);
        if !mib.is_some_and(|mib| (1..=1 << 20).contains(&mib)) {
            c.error(
                memory,
                format!(
                    "`run.memory`: `{}` is not a size from 1MiB to 1024GiB",
                    memory.value.0.escape_debug()
                ),
                Some("write a number and MiB or GiB: `512MiB`, `2GiB`".into()),
            );
        }
        mib
    });
    let millicores = raw.cores.as_ref().and_then(|cores| {
        let millicores = parse_cores(&cores.value.0);
        if millicores.is_none() {
            c.error(
                cores,
                format!(
                    "`run.cores`: `{}` is not a number of cores from 0.001 to 1024",
                    cores.value.0.escape_debug()
                ),
                Some("write how many of a host's cores one instance needs: `0.5`, `2`".into()),
            );
        }
        millicores
    });
    RunSpec {
        ports,
        secrets,
        memory_mb,
        millicores,
        ready_timeout: c.duration(
            &raw.ready_timeout,
            "ready_timeout",
            crate::model::READY_TIMEOUT,
        ),
        command: raw.command.value,
        health,
        config_files: raw
            .config_files
            .into_iter()
            .map(|f| ConfigFile {
                template: f.template.value,
                to: f.to.value,
            })
            .collect(),
    }
}

fn environments(
    c: &mut Checker,
    raw: Entries<RawEnvironment>,
    pipeline: &Pipeline,
) -> Vec<Environment> {
    let names: Vec<&str> = raw.0.iter().map(|(k, _)| k.value.as_str()).collect();
    let known = || names.join(", ");
    let mut listeners: HashMap<SocketAddr, String> = HashMap::new();
    let mut out = Vec::new();
    for (name, env) in &raw.0 {
        c.name(name, "environment");
        if let Some(from) = &env.from {
            if from.value == name.value {
                c.error(
                    from,
                    format!("environment `{}` comes from itself", name.value),
                    None,
                );
            } else if !names.contains(&from.value.as_str()) {
                c.error(
                    from,
                    format!("unknown environment `{}` in `from`", from.value),
                    Some(format!("expected one of: {}", known())),
                );
            }
        }
        let (address, tls) = match &env.listen.value {
            RawListen::Address(address) => (address.as_str(), None),
            RawListen::Full(full) => (full.address.as_str(), Some(full)),
        };
        let listen = listen_address(c, &env.listen, address, &name.value, &mut listeners);
        let limits = tls
            .and_then(|full| full.limits.as_ref())
            .map_or_else(EntryLimits::default, |raw| {
                entry_limits(c, &env.listen, raw)
            });
        let tls = tls.and_then(|full| tls_spec(c, &env.listen, full, &name.value, &mut listeners));
        let instances = match &env.instances {
            Some(n) if n.value == 0 => {
                c.error(n, "`instances` must be at least 1", None);
                1
            }
            Some(n) => n.value,
            None => 1,
        };
        let data = data_spec(c, &env.data, name, &names);
        let strategy = strategy(c, &env.strategy);
        let hosts = env.hosts.as_ref().map(|raw| {
            let acme = tls
                .as_ref()
                .is_some_and(|t| matches!(t.certs, CertSource::Acme(_)));
            hosts_spec(c, raw, &data, acme)
        });
        out.push(Environment {
            name: name.value.clone(),
            from: env.from.as_ref().map(|f| f.value.clone()),
            deploy: deploy_policy(c, &env.deploy, pipeline),
            instances,
            listen,
            tls,
            limits,
            config: env_map(c, &env.config),
            data,
            strategy,
            hosts,
        });
    }
    from_cycle(c, &raw);
    out
}

/// `hosts:`. Its instances' data lives on each host, which seeds it,
/// snapshots it and copies it for an experiment's B, but has no other
/// environment's to copy: `data.copy_from` is refused rather than done on
/// the server's host, where the instances would not see it. The hosts'
/// entry points serve the certificate files the server sends them, but
/// answer no ACME challenge: `listen.tls.acme` is refused too.
fn hosts_spec(c: &mut Checker, raw: &Spanned<RawHosts>, data: &DataSpec, acme: bool) -> HostsSpec {
    if data.copy_from.is_some() {
        c.error(
            raw,
            "`data.copy_from` is not built for an environment on `hosts`",
            Some("an environment on `hosts` keeps its data on each host, where Sluice does not copy another environment's; seed it with `data.seed`, or run the environment on the server's host".into()),
        );
    }
    if acme {
        c.error(
            raw,
            "`listen.tls.acme` is not built for the entry points on `hosts`: they answer no ACME challenge",
            Some("give the certificate as files (`tls: { cert: PATH, key: PATH }`), which the server sends to each host, or end TLS at the load balancer in front of the hosts (docs/agents.md)".into()),
        );
    }
    HostsSpec {
        labels: labels(c, &raw.value.labels, "hosts.labels"),
        spread: raw.value.spread.unwrap_or(true),
    }
}

/// An environment's address, unique among the file's (port 0 aside).
fn listen_address<T>(
    c: &mut Checker,
    node: &Spanned<T>,
    address: &str,
    env: &str,
    listeners: &mut HashMap<SocketAddr, String>,
) -> SocketAddr {
    match address.parse::<SocketAddr>() {
        Ok(addr) => {
            // Port 0 asks for any free port, so it never clashes.
            let taken = if addr.port() == 0 {
                None
            } else {
                listeners.insert(addr, env.to_string())
            };
            if let Some(other) = taken {
                c.error(
                    node,
                    format!("`{addr}` is already the listen address of `{other}`"),
                    Some("give each environment its own address or port".to_string()),
                );
            }
            addr
        }
        Err(_) => {
            c.error(
                node,
                format!("`{address}` is not a listen address"),
                Some("write IP:PORT, e.g. `127.0.0.1:8101`".to_string()),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        }
    }
}

/// `tls:` certificate files (absolute paths on the server's machine) or ACME, and
/// the optional plain-HTTP address that redirects to HTTPS.
fn tls_spec<T>(
    c: &mut Checker,
    node: &Spanned<T>,
    full: &RawListenFull,
    env: &str,
    listeners: &mut HashMap<SocketAddr, String>,
) -> Option<TlsSpec> {
    let Some(tls) = &full.tls else {
        if full.redirect_from.is_some() {
            c.error(
                node,
                "`redirect_from` sends clients on to HTTPS, and `listen` has no `tls`",
                Some("add `tls: { cert: PATH, key: PATH }`".to_string()),
            );
        }
        return None;
    };
    let certs = match tls {
        RawTls::Acme(RawAcmeTls { acme }) => {
            CertSource::Acme(acme_spec(c, node, acme, full.redirect_from.is_some()))
        }
        RawTls::One(pair) => CertSource::Files(cert_files(c, node, &[pair])),
        RawTls::Many(pairs) => {
            CertSource::Files(cert_files(c, node, &pairs.iter().collect::<Vec<_>>()))
        }
    };
    let redirect_from = full
        .redirect_from
        .as_deref()
        .map(|address| listen_address(c, node, address, env, listeners));
    Some(TlsSpec {
        certs,
        redirect_from,
    })
}

/// `listen: { limits: … }`, each within bounds that keep the entry point
/// usable: a limit too small to serve anything, or too large to protect
/// anything, is refused.
fn entry_limits<T>(c: &mut Checker, node: &Spanned<T>, raw: &RawLimits) -> EntryLimits {
    const HOUR: Duration = Duration::from_secs(3600);
    let defaults = EntryLimits::default();
    let mut time = |value: &Option<String>, what: &str, default: Duration, max: Duration| {
        let Some(text) = value else { return default };
        match parse_duration(text) {
            Ok(d) if d >= Duration::from_secs(1) && d <= max => d,
            Ok(_) => {
                let max = crate::format_duration(max);
                c.error(
                    node,
                    format!("`limits.{what}` must be from 1s to {max}"),
                    None,
                );
                default
            }
            Err(why) => {
                c.error(
                    node,
                    format!("bad `limits.{what}`: {why}"),
                    Some("write a number and a unit: `30s`, `5m`".into()),
                );
                default
            }
        }
    };
    let idle_timeout = time(
        &raw.idle_timeout,
        "idle_timeout",
        defaults.idle_timeout,
        HOUR,
    );
    let request_timeout = time(
        &raw.request_timeout,
        "request_timeout",
        defaults.request_timeout,
        HOUR,
    );
    let answer_timeout = time(
        &raw.answer_timeout,
        "answer_timeout",
        defaults.answer_timeout,
        24 * HOUR,
    );
    let mut size = |value: &Option<Scalar>, what: &str, default: u64, range: (u64, u64)| {
        let Some(Scalar(text)) = value else {
            return default;
        };
        match parse_size(text) {
            Some(n) if (range.0..=range.1).contains(&n) => n,
            Some(_) => {
                c.error(
                    node,
                    format!(
                        "`limits.{what}` must be from {} to {}",
                        size_text(range.0),
                        size_text(range.1)
                    ),
                    None,
                );
                default
            }
            None => {
                c.error(
                    node,
                    format!("`limits.{what}`: `{}` is not a size", text.escape_debug()),
                    Some("write bytes, or a number and KiB, MiB or GiB: `64KiB`, `10MiB`".into()),
                );
                default
            }
        }
    };
    let max_body = size(&raw.max_body, "max_body", defaults.max_body, (1, 64 << 30));
    let max_header_bytes = size(
        &raw.max_header_bytes,
        "max_header_bytes",
        defaults.max_header_bytes,
        (8 << 10, 1 << 20),
    );
    let max_headers = match raw.max_headers {
        Some(n) if (1..=1000).contains(&n) => n,
        Some(_) => {
            c.error(node, "`limits.max_headers` must be from 1 to 1000", None);
            defaults.max_headers
        }
        None => defaults.max_headers,
    };
    EntryLimits {
        idle_timeout,
        request_timeout,
        answer_timeout,
        max_body,
        max_header_bytes,
        max_headers,
    }
}

/// `1048576`, `64KiB`, `10MiB` or `1GiB`, in bytes.
/// A number of cores (`0.5`, `2`) in thousandths: at least one, at most
/// 1024 cores.
fn parse_cores(text: &str) -> Option<u64> {
    let text = text.trim();
    if text.is_empty() || !text.chars().all(|ch| ch.is_ascii_digit() || ch == '.') {
        return None;
    }
    let cores: f64 = text.parse().ok()?;
    let millicores = (cores * 1000.0).round();
    (1.0..=1_024_000.0)
        .contains(&millicores)
        .then_some(millicores as u64)
}

fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|ch: char| !ch.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        _ => return None,
    };
    number.checked_mul(1 << shift)
}

fn size_text(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{}GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

fn cert_files<T>(c: &mut Checker, node: &Spanned<T>, pairs: &[&RawCertPair]) -> Vec<CertPaths> {
    if pairs.is_empty() || pairs.len() > 100 {
        c.error(node, "`tls` needs 1 to 100 certificates", None);
    }
    let mut certs = Vec::new();
    for pair in pairs {
        for path in [&pair.cert, &pair.key] {
            absolute_path(c, node, path);
        }
        certs.push(CertPaths {
            cert: pair.cert.clone().into(),
            key: pair.key.clone().into(),
        });
    }
    certs
}

fn absolute_path<T>(c: &mut Checker, node: &Spanned<T>, path: &str) {
    if !path.starts_with('/') || path.contains('\0') || path.len() > 4096 {
        c.error(
            node,
            format!("`{}` is not an absolute path", path.escape_debug()),
            Some("certificates live on the server's machine, not in the repository: write /etc/ssl/… (PEM files)".to_string()),
        );
    }
}

/// `tls: { acme: … }`: the domains to ask certificates for, the account's
/// contact, the ACME server, and the challenge (HTTP-01 needs the plain
/// listener of `redirect_from`; TLS-ALPN-01 is answered on the HTTPS port).
fn acme_spec<T>(c: &mut Checker, node: &Spanned<T>, acme: &RawAcme, redirect: bool) -> AcmeSpec {
    if acme.domains.is_empty() || acme.domains.len() > 100 {
        c.error(node, "`acme.domains` needs 1 to 100 names", None);
    }
    for domain in &acme.domains {
        if !is_domain(domain) {
            c.error(
                node,
                format!("`{}` is not a domain name an ACME server can check", domain.escape_debug()),
                Some("write a name such as shop.example.com (lowercase; no wildcard, no IP address, no port)".to_string()),
            );
        }
    }
    if let Some(email) = &acme.email {
        let valid = email.len() <= 254
            && email.split_once('@').is_some_and(|(user, host)| {
                !user.is_empty()
                    && is_domain(host)
                    && user
                        .chars()
                        .all(|ch| ch.is_ascii_graphic() && !"<>(),;:\\\"[]".contains(ch))
            });
        if !valid {
            c.error(
                node,
                format!("`{}` is not an email address", email.escape_debug()),
                None,
            );
        }
    }
    let directory = acme
        .directory
        .clone()
        .unwrap_or_else(|| LETS_ENCRYPT.to_string());
    let https = directory.strip_prefix("https://").is_some_and(|rest| {
        !rest.is_empty() && rest.len() < 2000 && rest.chars().all(|ch| ch.is_ascii_graphic())
    });
    if !https {
        c.error(
            node,
            format!(
                "`{}` is not an ACME directory URL",
                directory.escape_debug()
            ),
            Some(format!("write an https:// URL, e.g. {LETS_ENCRYPT}")),
        );
    }
    if let Some(ca) = &acme.ca {
        absolute_path(c, node, ca);
    }
    let challenge = match acme.challenge.as_deref() {
        None if redirect => AcmeChallenge::Http01,
        None => AcmeChallenge::TlsAlpn01,
        Some("http-01") => {
            if !redirect {
                c.error(
                    node,
                    "the `http-01` challenge is answered on plain HTTP, and `listen` has no `redirect_from`",
                    Some("add `redirect_from: 0.0.0.0:80`, or use `challenge: tls-alpn-01`".to_string()),
                );
            }
            AcmeChallenge::Http01
        }
        Some("tls-alpn-01") => AcmeChallenge::TlsAlpn01,
        Some(other) => {
            c.error(
                node,
                format!("unknown ACME challenge `{}`", other.escape_debug()),
                Some("expected `http-01` or `tls-alpn-01`".to_string()),
            );
            AcmeChallenge::TlsAlpn01
        }
    };
    AcmeSpec {
        domains: acme.domains.clone(),
        email: acme.email.clone(),
        directory,
        ca: acme.ca.clone().map(Into::into),
        challenge,
    }
}

/// A DNS name of at least two labels: lowercase letters, digits and inner hyphens.
fn is_domain(name: &str) -> bool {
    let labels: Vec<&str> = name.split('.').collect();
    name.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
        && !labels
            .last()
            .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
}

fn from_cycle(c: &mut Checker, raw: &Entries<RawEnvironment>) {
    let index: HashMap<&str, usize> = raw
        .0
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (k.value.as_str(), i))
        .collect();
    let edges: Vec<Vec<(usize, &Spanned<String>)>> = raw
        .0
        .iter()
        .map(|(k, env)| {
            env.from
                .iter()
                .filter(|f| f.value != k.value)
                .filter_map(|f| index.get(f.value.as_str()).map(|&i| (i, f)))
                .collect()
        })
        .collect();
    let names: Vec<&str> = raw.0.iter().map(|(k, _)| k.value.as_str()).collect();
    for (node, path) in find_cycles(&edges) {
        let route: Vec<&str> = path
            .iter()
            .map(|&i| names[i])
            .chain([names[path[0]]])
            .collect();
        c.error(
            node,
            format!("`from` forms a cycle: {}", route.join(" ← ")),
            Some("releases must enter at an environment without `from` (usually dev)".to_string()),
        );
    }
}

fn data_spec(
    c: &mut Checker,
    raw: &Option<RawData>,
    env: &Spanned<String>,
    names: &[&str],
) -> DataSpec {
    let Some(raw) = raw else {
        return DataSpec {
            seed: None,
            copy_from: None,
            scrub: None,
            snapshots: DEFAULT_SNAPSHOTS,
            seed_timeout: DEFAULT_SEED_TIMEOUT,
        };
    };
    if let Some(seed) = &raw.seed {
        c.relative_path(seed, "seed");
    }
    if let Some(scrub) = &raw.scrub {
        c.relative_path(scrub, "scrub script");
        if raw.copy_from.is_none() {
            c.error(
                scrub,
                "`scrub` without `copy_from`",
                Some(
                    "name the environment whose data is copied and scrubbed with `copy_from: ENV`"
                        .to_string(),
                ),
            );
        }
    }
    if let Some(from) = &raw.copy_from {
        if from.value == env.value {
            c.error(
                from,
                format!("environment `{}` copies data from itself", env.value),
                None,
            );
        } else if !names.contains(&from.value.as_str()) {
            c.error(
                from,
                format!("unknown environment `{}` in `copy_from`", from.value),
                Some(format!("expected one of: {}", names.join(", "))),
            );
        }
        if raw.seed.is_some() {
            c.error(
                from,
                "`copy_from` and `seed` both say where the data comes from",
                Some("keep one of them".to_string()),
            );
        }
    }
    DataSpec {
        seed: raw.seed.as_ref().map(|s| s.value.clone()),
        copy_from: raw.copy_from.as_ref().map(|s| s.value.clone()),
        scrub: raw.scrub.as_ref().map(|s| s.value.clone()),
        snapshots: raw
            .snapshots
            .as_ref()
            .map_or(DEFAULT_SNAPSHOTS, |s| s.value),
        seed_timeout: c.duration(&raw.seed_timeout, "seed_timeout", DEFAULT_SEED_TIMEOUT),
    }
}

fn deploy_policy(
    c: &mut Checker,
    raw: &Option<Spanned<RawDeploy>>,
    pipeline: &Pipeline,
) -> DeployPolicy {
    let Some(node) = raw else {
        return DeployPolicy::default();
    };
    match &node.value {
        RawDeploy::Word(word) if word == "auto" => DeployPolicy {
            auto: true,
            ..DeployPolicy::default()
        },
        RawDeploy::Word(word) if word == "manual" => DeployPolicy::default(),
        RawDeploy::Word(word) => {
            c.error(
                node,
                format!("unknown deploy policy `{word}`"),
                Some(
                    "expected `auto`, `manual`, or a mapping of gates such as `{ approvals: 1 }`"
                        .to_string(),
                ),
            );
            DeployPolicy::default()
        }
        RawDeploy::Gates(gates) => {
            let approvals = gates.approvals.as_ref().map_or(0, |a| a.value);
            let soak = c.duration(&gates.soak, "soak", Duration::ZERO);
            let freeze = gates
                .freeze
                .iter()
                .filter_map(|w| match FreezeWindow::parse(&w.value) {
                    Ok(window) => Some(window),
                    Err(why) => {
                        c.error(w, format!("bad freeze window: {why}"), Some("write a cron expression of the frozen minutes, e.g. `* 16-23 * * fri`".to_string()));
                        None
                    }
                })
                .collect();
            for job in &gates.require_jobs {
                if !pipeline.jobs.iter().any(|j| j.name == job.value) {
                    let known: Vec<&str> = pipeline.jobs.iter().map(|j| j.name.as_str()).collect();
                    c.error(
                        job,
                        format!("unknown job `{}` in `require_jobs`", job.value),
                        Some(format!("expected one of: {}", known.join(", "))),
                    );
                }
            }
            DeployPolicy {
                auto: gates.auto.unwrap_or(false),
                approvals,
                approvers: gates.approvers.clone(),
                soak: gates.soak.as_ref().map(|_| soak),
                freeze,
                require_jobs: gates.require_jobs.iter().map(|j| j.value.clone()).collect(),
            }
        }
    }
}

fn strategy(c: &mut Checker, raw: &Option<Spanned<RawStrategy>>) -> Strategy {
    let Some(node) = raw else {
        return Strategy::Rolling;
    };
    match &node.value {
        RawStrategy::Rolling => Strategy::Rolling,
        RawStrategy::BlueGreen => Strategy::BlueGreen,
        RawStrategy::Ab(ab) => Strategy::Ab(ab_strategy(c, ab)),
    }
}

/// `20000-20999`: unprivileged ports, first not above last.
fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let (first, last) = text.split_once('-')?;
    let (first, last): (u16, u16) = (first.trim().parse().ok()?, last.trim().parse().ok()?);
    (1024 <= first && first <= last).then_some((first, last))
}

/// `goals:`: names unique and safe, at most 8; `request: "POST /path"`
/// with `status: 2xx` (or any); `value: true` for amounts.
fn goals(c: &mut Checker, raw: &[Spanned<RawGoal>]) -> Vec<GoalSpec> {
    if raw.len() > 8
        && let Some(first) = raw.first()
    {
        c.error(first, "an experiment has at most 8 goals", None);
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for node in raw.iter().take(8) {
        let goal = &node.value;
        let name_ok = (1..=64).contains(&goal.name.len())
            && goal
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !name_ok {
            c.error(
                node,
                format!("`{}` is not a goal name", goal.name.escape_debug()),
                Some("use letters, digits, `-`, `_` and `.`, at most 64".into()),
            );
        } else if !seen.insert(goal.name.clone()) {
            c.error(
                node,
                format!("goal `{}` is declared twice", goal.name),
                None,
            );
        }
        let request = goal.request.as_deref().and_then(|text| {
            let parsed = goal_request(text, goal.status.as_deref());
            if let Err(why) = &parsed {
                c.error(node, format!("goal `{}`: {why}", goal.name), None);
            }
            parsed.ok()
        });
        if goal.request.is_none() && goal.status.is_some() {
            c.error(
                node,
                format!("goal `{}` has a `status` and no `request`", goal.name),
                None,
            );
        }
        out.push(GoalSpec {
            name: goal.name.clone(),
            request,
            value: goal.value.unwrap_or(false),
        });
    }
    out
}

/// A goal as `sluice ab start --goal` takes it: `NAME` (reached by a
/// `Sluice-Goal` header or `/_sluice/goal`), `NAME=METHOD /path` (a request
/// answered 2xx), or `NAME:value` (a value goal).
pub fn parse_goal(text: &str) -> Result<GoalSpec, String> {
    let (name, request, value) = match (text.split_once('='), text.strip_suffix(":value")) {
        (Some((name, rule)), _) => (name, Some(goal_request(rule, Some("2xx"))?), false),
        (None, Some(name)) => (name, None, true),
        (None, None) => (text, None, false),
    };
    let name_ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !name_ok {
        return Err(format!(
            "`{}` is not a goal: write NAME, NAME=METHOD /path or NAME:value (a name of letters, digits, -, _ and .)",
            text.escape_debug()
        ));
    }
    Ok(GoalSpec {
        name: name.to_string(),
        request,
        value,
    })
}

/// `POST /checkout` and `2xx` (or none: any status).
fn goal_request(text: &str, status: Option<&str>) -> Result<GoalRequest, String> {
    let (method, path) = text
        .split_once(' ')
        .ok_or_else(|| format!("`{}` is not `METHOD /path`", text.escape_debug()))?;
    let method_ok =
        !method.is_empty() && method.len() <= 16 && method.bytes().all(|b| b.is_ascii_uppercase());
    let path_ok = path.starts_with('/')
        && path.len() <= 1024
        && path
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#');
    if !method_ok || !path_ok {
        return Err(format!(
            "`{}` is not `METHOD /path` (an uppercase method, a path without query)",
            text.escape_debug()
        ));
    }
    let status_class = match status {
        None => None,
        Some(s) => match s.as_bytes() {
            [d @ b'1'..=b'5', b'x', b'x'] => Some(u16::from(d - b'0')),
            _ => {
                return Err(format!(
                    "status `{}` is not a class such as `2xx`",
                    s.escape_debug()
                ));
            }
        },
    };
    Ok(GoalRequest {
        method: method.to_string(),
        path: path.to_string(),
        status_class,
    })
}

/// `mode: rollout | test` and `test: { split, min_effect, max_duration, promote }`.
fn ab_mode(c: &mut Checker, raw: &RawAb, goals: &[GoalSpec]) -> AbMode {
    let test = raw.test.as_ref();
    match raw.mode.as_ref().map(|m| (m, m.value.as_str())) {
        None | Some((_, "rollout")) => {
            if let Some(node) = test {
                c.error(
                    node,
                    "`test` is for `mode: test`",
                    Some("add `mode: test`, or remove `test`".into()),
                );
            }
            AbMode::Rollout
        }
        Some((node, "test")) => {
            if goals.is_empty() {
                c.error(node, "`mode: test` decides on a goal, and `goals` is empty", Some("declare `goals: [{ name: checkout, request: \"POST /checkout\", status: 2xx }]`".into()));
            }
            let defaults = AbTest::default();
            let Some(node) = test else {
                return AbMode::Test(defaults);
            };
            let t = &node.value;
            let split = match t.split {
                None => defaults.split,
                Some(n) if (1..=99).contains(&n) => n as u8,
                Some(n) => {
                    c.error(
                        node,
                        format!("test split {n} is not a percentage from 1 to 99"),
                        None,
                    );
                    defaults.split
                }
            };
            let min_effect = match t.min_effect.as_deref() {
                None => defaults.min_effect,
                Some(text) => match text
                    .strip_suffix('%')
                    .and_then(|n| n.trim().parse::<f64>().ok())
                {
                    Some(p) if p > 0.0 && p <= 100.0 => p / 100.0,
                    _ => {
                        c.error(
                            node,
                            format!(
                                "test min_effect `{}` is not a percentage such as `2%`",
                                text.escape_debug()
                            ),
                            None,
                        );
                        defaults.min_effect
                    }
                },
            };
            let max_duration = match t.max_duration.as_deref() {
                None => defaults.max_duration,
                Some(text) => {
                    match parse_duration(text) {
                        Ok(d) if d >= Duration::from_secs(1) => d,
                        _ => {
                            c.error(node, format!("test max_duration `{}` is not a duration such as `7d` or `12h`", text.escape_debug()), None);
                            defaults.max_duration
                        }
                    }
                }
            };
            let manual = match t.promote.as_deref() {
                None | Some("auto") => false,
                Some("manual") => true,
                Some(other) => {
                    c.error(
                        node,
                        format!("unknown promote `{}`", other.escape_debug()),
                        Some("expected `auto` or `manual`".into()),
                    );
                    false
                }
            };
            AbMode::Test(AbTest {
                split,
                min_effect,
                max_duration,
                manual,
            })
        }
        Some((node, other)) => {
            c.error(
                node,
                format!("unknown mode `{}`", other.escape_debug()),
                Some("expected `rollout` or `test`".into()),
            );
            AbMode::Rollout
        }
    }
}

fn ab_strategy(c: &mut Checker, raw: &RawAb) -> AbStrategy {
    let steps = match &raw.steps {
        None => DEFAULT_AB_STEPS.to_vec(),
        Some(list) => {
            let mut previous = 0;
            for step in &list.value {
                if !(1..=100).contains(&step.value) {
                    c.error(
                        step,
                        format!("ramp step {} is not a percentage from 1 to 100", step.value),
                        None,
                    );
                } else if step.value <= previous {
                    c.error(step, format!("ramp step {} does not increase (after {previous})", step.value), Some("list the percentages of traffic for B in increasing order, e.g. [1, 5, 25, 50, 100]".to_string()));
                }
                previous = previous.max(step.value);
            }
            if list.value.last().is_none_or(|s| s.value != 100) {
                c.error(
                    list,
                    "the ramp does not end at 100",
                    Some("end `steps` with 100, so that B becomes the release".to_string()),
                );
            }
            list.value
                .iter()
                .map(|s| s.value.clamp(0, 100) as u8)
                .collect()
        }
    };
    let sticky = match &raw.sticky {
        None => Sticky::Cookie,
        Some(s) if s.value == "cookie" => Sticky::Cookie,
        Some(s) => match s.value.strip_prefix("header:") {
            Some(h)
                if !h.trim().is_empty()
                    && h.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-') =>
            {
                Sticky::Header(h.to_string())
            }
            _ => {
                c.error(
                    s,
                    format!("unknown sticky key `{}`", s.value),
                    Some("expected `cookie` or `header:NAME`, e.g. `header:X-User-Id`".to_string()),
                );
                Sticky::Cookie
            }
        },
    };
    let metrics = match &raw.metrics {
        None => Metric::ALL.to_vec(),
        Some(list) => list
            .iter()
            .filter_map(|m| {
                let found = Metric::ALL.into_iter().find(|k| k.name() == m.value);
                if found.is_none() {
                    c.error(
                        m,
                        format!("unknown metric `{}`", m.value),
                        Some("expected `error_rate`, `latency_p50` or `latency_p95`".to_string()),
                    );
                }
                found
            })
            .collect(),
    };
    let defaults = AbStrategy::default();
    let min_effect = match &raw.min_effect {
        None => defaults.min_effect,
        Some(m) => {
            let percent = m.value.percent.unwrap_or(defaults.min_effect.percent);
            let ms = m.value.ms.unwrap_or(defaults.min_effect.ms);
            if !(0.0..=1000.0).contains(&percent) || !(0.0..=60_000.0).contains(&ms) {
                c.error(
                    m,
                    format!("min_effect {percent}% and {ms} ms is out of range"),
                    Some("give `percent` from 0 to 1000 and `ms` from 0 to 60000, e.g. { percent: 10, ms: 2 }".to_string()),
                );
            }
            crate::model::MinEffect { percent, ms }
        }
    };
    let data = match raw.data.as_ref().map(|d| (d, d.value.as_str())) {
        None | Some((_, "shared")) => crate::model::AbData::Shared,
        Some((_, "copy")) => crate::model::AbData::Copy,
        Some((node, other)) => {
            c.error(
                node,
                format!("unknown data mode `{other}`"),
                Some(
                    "expected `shared` (B uses the environment's data) or `copy` (B gets a copy)"
                        .into(),
                ),
            );
            crate::model::AbData::Shared
        }
    };
    let goals = goals(c, raw.goals.as_deref().unwrap_or_default());
    let mode = ab_mode(c, raw, &goals);
    AbStrategy {
        goals,
        mode,
        data,
        min_effect,
        warm_up_requests: raw.warm_up_requests.unwrap_or(defaults.warm_up_requests),
        steps,
        min_requests: raw.min_requests.unwrap_or(defaults.min_requests),
        min_duration: c.duration(&raw.min_duration, "min_duration", defaults.min_duration),
        max_step: c.duration(&raw.max_step, "max_step", defaults.max_step),
        sticky,
        metrics,
        allow_force: raw.allow_force.unwrap_or(defaults.allow_force),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goals_given_on_the_command_line() {
        let checkout = parse_goal("checkout=POST /checkout").unwrap();
        assert_eq!(
            checkout.request,
            Some(GoalRequest {
                method: "POST".into(),
                path: "/checkout".into(),
                status_class: Some(2)
            })
        );
        assert!(parse_goal("revenue:value").unwrap().value);
        assert_eq!(parse_goal("signup").unwrap().request, None);
        for bad in ["", "a b", "x=post /y", "x=POST y", "<b>:value"] {
            assert!(parse_goal(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cores_are_counted_in_thousandths() {
        let table: &[(&str, Option<u64>)] = &[
            ("1", Some(1000)),
            ("0.5", Some(500)),
            (" 2 ", Some(2000)),
            ("0.001", Some(1)),
            ("1024", Some(1_024_000)),
            ("0.0001", None),
            ("0", None),
            ("1025", None),
            ("-1", None),
            ("1e3", None),
            ("NaN", None),
            ("inf", None),
            ("", None),
            ("500m", None),
        ];
        for (text, millicores) in table {
            assert_eq!(parse_cores(text), *millicores, "{text:?}");
        }
    }
}
