//! Environments on agents' hosts (`hosts:`), on real hosts: two network
//! namespaces, an agent in each, the server in the root namespace. prod's
//! instances run on the agents whose labels match, spread over both, behind
//! the server's entry point; a rolling deployment moves them with no failed
//! request, and a kill -9 of the server restarts none of them.

use std::collections::BTreeSet;
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::hosts::{Host, missing};
use crate::restart::Load;
use crate::support::{GitRepo, Server, copy_fixture, free_port, tempdir};

const SPEC: &str = "service: shop
pipeline:
  jobs:
    unit:
      steps:
        - run: 'true'
  artifact:
    paths: [app/]
run:
  command: exec python3 app/server.py
  health: { path: /healthz, interval: 300ms, timeout: 300ms, healthy: 1, unhealthy: 3 }
environments:
  prod:
    deploy: auto
    instances: 2
    listen: 127.0.0.1:0
    hosts: { labels: { role: web } }
";

#[tokio::test]
async fn prod_runs_on_the_hosts_its_labels_name_and_outlives_a_kill_9_of_the_server() {
    let Some(mut cluster) = Cluster::start(&["web", "web", "build"]).await else {
        return;
    };
    let repo = cluster.serve_shop().await;
    let prod = wait_reported(&cluster.server, 2).await;
    // One instance on each web host, none on the builder, each process in
    // its host's namespace, listening on its host's address.
    let first = placed(&prod);
    assert_eq!(
        first.keys().cloned().collect::<BTreeSet<_>>(),
        ["web-1".to_string(), "web-2".to_string()].into(),
        "{prod:#}"
    );
    for (host, name) in cluster.hosts.iter().zip(["web-1", "web-2"]) {
        let pid = first[name];
        assert!(
            namespace_pids(host).contains(&pid),
            "{name}'s instance (process {pid}) runs in its host"
        );
    }
    let url = format!("http://{}/", prod["listen"].as_str().unwrap());
    let answered = answering_instances(&url).await;
    assert_eq!(answered.len(), 2, "both hosts answer: {answered:?}");

    // A rolling deployment onto the hosts, under load: nothing fails.
    let load = Load::start(url.clone());
    repo.commit("v2", &[("app/VERSION", "2\n")]);
    cluster.server.wait_env("shop", "prod", 2, 2).await;
    let failed = load.finish("the rolling deployment on the hosts").await;
    assert!(failed.is_empty(), "{failed:?}");
    let before = placed(&wait_reported(&cluster.server, 2).await);
    assert_eq!(before.len(), 2, "spread again: {before:?}");

    // The server killed and started again: the agents kept their
    // instances, and the server keeps them (the same processes).
    let load = Load::start(url.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.server.kill_hard();
    cluster.server = Server::start_on(&cluster.listen, &cluster.data, None, &OPTIONS);
    cluster.server.wait_env("shop", "prod", 2, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let failed = load.finish("the kill -9 of the server").await;
    assert!(failed.len() <= 1, "{failed:?}");
    let prod = wait_reported(&cluster.server, 2).await;
    assert_eq!(placed(&prod), before, "no instance was started again");
    let changes = cluster.server.get("/changelog?kind=instances.kept").await;
    assert!(
        changes.to_string().contains("kept 2 instance(s) of v2"),
        "{changes:#}"
    );
}

#[tokio::test]
async fn a_host_cut_off_has_its_instances_replaced_and_stops_them_when_it_is_back() {
    let Some(cluster) = Cluster::start(&["web", "web"]).await else {
        return;
    };
    cluster.serve_shop().await;
    let before = placed(&wait_reported(&cluster.server, 2).await);
    let (cut, left) = (&cluster.hosts[0], &cluster.hosts[1]);
    let stale = before["web-1"];

    cut.cut();
    // Its instance is lost once the lease (3 s) runs out, and prod runs
    // its count again on the host left.
    let lost = cluster
        .server
        .wait_for(
            "/changelog?kind=instances.lost",
            "web-1's instance lost",
            |c| c["subject"] == "agent web-1",
        )
        .await;
    assert!(
        lost["summary"].as_str().unwrap().contains("shop.prod-v1-1"),
        "{lost:#}"
    );
    let prod = cluster.server.wait_env("shop", "prod", 1, 2).await;
    let hosts: Vec<&str> = prod["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["host"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, ["web-2", "web-2"], "{prod:#}");
    assert!(
        namespace_pids(cut).contains(&stale),
        "cut off, its instance still runs there"
    );

    // Back on the network: web-1 hears it no longer runs the instance, and
    // stops it. Nothing runs twice.
    cut.restore();
    let deadline = Instant::now() + Duration::from_secs(30);
    while namespace_pids(cut).contains(&stale) {
        assert!(
            Instant::now() < deadline,
            "web-1 never stopped its stale instance"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = wait_reported(&cluster.server, 2).await;
    for instance in after["instances"].as_array().unwrap() {
        let pid = instance["pid"].as_i64().unwrap();
        assert!(namespace_pids(left).contains(&pid), "{after:#}");
    }
    let url = format!("http://{}/", after["listen"].as_str().unwrap());
    assert_eq!(answering_instances(&url).await.len(), 2);
}

const OPTIONS: [&str; 2] = ["--agent-lease", "3s"];

/// A server in the root namespace and an agent in a host of its own for
/// each role given (`web` agents are named web-1, web-2, …).
struct Cluster {
    server: Server,
    /// Where the server listens, on a fixed port, so that the agents find
    /// it again after a restart.
    listen: String,
    data: std::path::PathBuf,
    hosts: Vec<Host>,
    agents: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(roles: &[&str]) -> Option<Cluster> {
        if let Some(what) = missing() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run the hosts' tests, but {what} is missing"
            );
            eprintln!("skipped: {what} is missing");
            return None;
        }
        let dir = tempdir();
        let data = dir.path().join("data");
        let listen = format!("0.0.0.0:{}", free_port());
        let server = Server::start_on(&listen, &data, None, &OPTIONS);
        let port = server.url.rsplit(':').next().unwrap().to_string();
        let hosts: Vec<Host> = roles.iter().map(|_| Host::make()).collect();
        let mut agents = Vec::new();
        for (index, (host, role)) in hosts.iter().zip(roles).enumerate() {
            let name = format!("{role}-{}", index + 1);
            let token = server.token_for(&name, "agent", &[]).await;
            let url = format!("http://{}:{port}", host.gateway);
            let label = format!("role={role}");
            let log = dir.path().join(format!("{name}.log"));
            let agent_data = dir.path().join(&name);
            agents.push(host.spawn(
                crate::support::SLUICE,
                &[
                    "agent",
                    "--server",
                    &url,
                    "--token",
                    &token,
                    "--name",
                    &name,
                    "--label",
                    &label,
                    "--data-dir",
                    agent_data.to_str().unwrap(),
                ],
                &log,
            ));
        }
        wait_online(&server, roles.len()).await;
        Some(Cluster {
            server,
            listen,
            data,
            hosts,
            agents,
            dir,
        })
    }

    /// The shop, its v1 running in prod on two instances.
    async fn serve_shop(&self) -> GitRepo {
        let repo = GitRepo::new(self.dir.path(), "shop");
        copy_fixture(&repo, "shop");
        repo.commit("v1", &[("sluice.yaml", SPEC)]);
        self.server.add_repo(&repo);
        self.server.wait_env("shop", "prod", 1, 2).await;
        repo
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for agent in &mut self.agents {
            let _ = agent.kill();
            let _ = agent.wait();
        }
    }
}

/// prod's status once `count` instances run, each with the process its
/// agent reported.
async fn wait_reported(server: &Server, count: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = server.get("/status?service=shop").await;
        let prod = status
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["environment"] == "prod")
            .cloned()
            .unwrap_or_default();
        let instances = prod["instances"].as_array().cloned().unwrap_or_default();
        if instances.len() == count && instances.iter().all(|i| i["pid"].is_i64()) {
            return prod;
        }
        assert!(Instant::now() < deadline, "{status:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// prod's instances by the agent whose host runs each: its process.
fn placed(prod: &Value) -> std::collections::BTreeMap<String, i64> {
    prod["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| Some((i["host"].as_str()?.to_string(), i["pid"].as_i64()?)))
        .collect()
}

/// The processes inside `host`'s namespace.
fn namespace_pids(host: &Host) -> Vec<i64> {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", &host.ns])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The instances that answer at `url`, over 40 requests.
async fn answering_instances(url: &str) -> BTreeSet<String> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        let answer: Value = client.get(url).send().await.unwrap().json().await.unwrap();
        seen.insert(answer["instance"].as_str().unwrap_or_default().to_string());
    }
    seen
}

async fn wait_online(server: &Server, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let agents = server.get("/agents").await;
        let online = agents
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["online"] == true)
            .count();
        if online == count {
            return;
        }
        assert!(Instant::now() < deadline, "agents: {agents:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
