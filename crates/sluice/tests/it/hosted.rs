//! Environments on agents' hosts (`hosts:`), on real hosts: two network
//! namespaces, an agent in each, the server in the root namespace. prod's
//! instances run on the agents whose labels match, spread over both, behind
//! the server's entry point and each host's own; a rolling deployment moves
//! them with no failed request, and a kill -9 of the server restarts none
//! of them and fails no request through the hosts' entry points.

use std::collections::BTreeSet;
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::agents::wait_online;
use crate::hosts::{Host, missing};
use crate::restart::{Load, wait_prod};
use crate::support::{GitRepo, Server, cookie_of, copy_fixture, free_port, tempdir};

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
    // Each host serves prod's entry point too, routing to both.
    let hosts = host_entry_points(&cluster.server).await;
    for host in &hosts {
        assert_eq!(answering_instances(host).await, answered, "through {host}");
    }
    // The dashboard says where each instance runs.
    let page_path = "/services/shop/environments/prod";
    let (session, _) =
        crate::notify::sign_in(&cluster.server.url, &cluster.server.token, page_path).await;
    let page = reqwest::Client::new()
        .get(format!("{}{page_path}", cluster.server.url))
        .header("cookie", session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in ["web-1", "web-2"] {
        assert!(
            page.contains(&format!("agent <code>{name}</code>")),
            "{page}"
        );
    }
    for host in &hosts {
        let address = host.trim_start_matches("http://").trim_end_matches('/');
        assert!(page.contains(&format!("<code>{address}</code>")), "{page}");
    }

    // A rolling deployment onto the hosts, under load through every entry
    // point: nothing fails.
    let loads: Vec<Load> = [&url]
        .into_iter()
        .chain(&hosts)
        .map(|u| Load::start(u.clone()))
        .collect();
    repo.commit("v2", &[("app/VERSION", "2\n")]);
    cluster.server.wait_env("shop", "prod", 2, 2).await;
    for (load, through) in loads.into_iter().zip([&url].into_iter().chain(&hosts)) {
        let failed = load.finish("the rolling deployment on the hosts").await;
        assert!(failed.is_empty(), "through {through}: {failed:?}");
    }
    let before = placed(&wait_reported(&cluster.server, 2).await);
    assert_eq!(before.len(), 2, "spread again: {before:?}");

    // The server killed and started again: the agents kept their
    // instances, and the server keeps them (the same processes). The
    // hosts' entry points serve on throughout; the server's own may fail
    // the one request it was answering when killed.
    let load = Load::start(url.clone());
    let through_hosts: Vec<Load> = hosts.iter().map(|h| Load::start(h.clone())).collect();
    load.served(20).await;
    cluster.server.kill_hard();
    for host in &through_hosts {
        host.served(20).await;
    }
    cluster.server = Server::start_on(&cluster.listen, &cluster.data, None, &OPTIONS);
    cluster.server.wait_env("shop", "prod", 2, 2).await;
    load.served(20).await;
    let failed = load.finish("the kill -9 of the server").await;
    assert!(failed.len() <= 1, "{failed:?}");
    for host in through_hosts {
        let failed = host
            .finish("the kill -9 of the server, through a host")
            .await;
        assert!(failed.is_empty(), "{failed:?}");
    }
    let hosts_again = host_entry_points(&cluster.server).await;
    assert_eq!(
        hosts_again, hosts,
        "the same entry points report to the next server"
    );
    let prod = wait_reported(&cluster.server, 2).await;
    assert_eq!(placed(&prod), before, "no instance was started again");
    let changes = cluster.server.get("/changelog?kind=instances.kept").await;
    assert!(
        changes.to_string().contains("kept 2 instance(s) of v2"),
        "{changes:#}"
    );

    // An agent killed and started again adopts its instance: the same
    // process serves on, and nothing fails, through the server's entry
    // point or the host's own (its sockets wait with their keeper).
    let load = Load::start(url.clone());
    let through_host = Load::start(hosts[0].clone());
    through_host.served(20).await;
    let _ = cluster.agents[0].kill();
    let _ = cluster.agents[0].wait();
    cluster.agents[0] = cluster.spawn_agent(0);
    let log = cluster.dir.path().join("agent-0.log");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("kept the instances a previous agent left running")
    {
        assert!(
            Instant::now() < deadline,
            "the agent never kept its instance: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Its next report, once it runs again, names the same process.
    let reports = cluster.server.get("/agents").await;
    let web_1 = |agents: &Value| {
        agents
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == "web-1")
            .map(|a| a["seen_at"].as_i64().unwrap())
            .unwrap()
    };
    let seen = web_1(&reports);
    while web_1(&cluster.server.get("/agents").await) == seen {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    through_host.served(20).await;
    let failed = load.finish("the kill -9 of an agent").await;
    assert!(failed.is_empty(), "{failed:?}");
    // Only the request the killed agent was answering may fail with it.
    let failed = through_host
        .finish("the kill -9 of an agent, through its host")
        .await;
    assert!(failed.len() <= 1, "{failed:?}");
    let prod = wait_reported(&cluster.server, 2).await;
    assert_eq!(placed(&prod), before, "the agent started nothing again");

    // An upgrade of the other agent: SIGUSR2 leaves its instance running,
    // and the next agent process takes it over, and its entry point's sockets.
    let load = Load::start(url.clone());
    let through_host = Load::start(hosts[1].clone());
    through_host.served(20).await;
    let agent = nix::unistd::Pid::from_raw(cluster.agents[1].id() as i32);
    nix::sys::signal::kill(agent, nix::sys::signal::Signal::SIGUSR2).unwrap();
    let exit = crate::support::exited(&mut cluster.agents[1], "the agent").await;
    assert_eq!(exit.code(), Some(0));
    assert!(
        namespace_pids(&cluster.hosts[1]).contains(&before["web-2"]),
        "handed over, its instance runs on"
    );
    cluster.agents[1] = cluster.spawn_agent(1);
    let log = cluster.dir.path().join("agent-1.log");
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("kept the instances a previous agent left running")
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    through_host.served(20).await;
    let failed = load.finish("the hand-over of an agent").await;
    assert!(failed.is_empty(), "{failed:?}");
    let failed = through_host
        .finish("the hand-over of an agent, through its host")
        .await;
    assert!(failed.is_empty(), "{failed:?}");
    let prod = wait_reported(&cluster.server, 2).await;
    assert_eq!(
        placed(&prod),
        before,
        "the next agent started nothing again"
    );
}

#[tokio::test]
async fn a_host_cut_off_has_its_instances_replaced_and_stops_them_when_it_is_back() {
    let Some(cluster) = Cluster::start(&["web", "web"]).await else {
        return;
    };
    let secret = "s3cret-for-the-instances-only";
    cluster.serve_shop_with_secret(secret).await;
    let before = placed(&wait_reported(&cluster.server, 2).await);
    // The instances have the secret; the store keeps it with no placement.
    for pid in before.values() {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let marker = format!("SHOP_SECRET={secret}");
        assert!(
            environ
                .split(|b| *b == 0)
                .any(|var| var == marker.as_bytes()),
            "instance {pid} has the secret"
        );
    }
    let store = sluice_store::Store::connect(&sluice_store::Store::sqlite_url(&cluster.data))
        .await
        .unwrap();
    let placements = store.placements(None).await.unwrap();
    assert!(!placements.is_empty());
    assert!(
        placements.iter().all(|p| !p.spec.contains(secret)),
        "{placements:?}"
    );
    store.close().await;
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

/// An experiment on the hosts, two instances of A on each and B's placed
/// there like A's: under load through both hosts' entry points, a healthy
/// B ramps and is promoted, a failing one is rolled back, and the only
/// requests that fail are B's own errors.
#[tokio::test]
async fn experiments_on_the_hosts_ramp_and_roll_back() {
    let Some(cluster) = Cluster::start(&["web", "web"]).await else {
        return;
    };
    let spec = format!(
        "{}    strategy:\n      ab: {{ steps: [10, 50, 100], min_requests: 40, min_duration: 2s, max_step: 60s, metrics: [error_rate] }}\n",
        SPEC.replace("instances: 2", "instances: 4")
    );
    let repo = cluster.serve_shop_as(&spec).await;
    // Two instances on each host.
    let placed = wait_reported(&cluster.server, 4).await;
    let on = |host: &str| {
        let instances = placed["instances"].as_array().unwrap();
        instances.iter().filter(|i| i["host"] == host).count()
    };
    assert_eq!((on("web-1"), on("web-2")), (2, 2), "{placed:#}");
    // All the load goes through the hosts' entry points: the analysis
    // judges B only by what the hosts send the server.
    let hosts = host_entry_points(&cluster.server).await;
    let loads: Vec<Load> = hosts.iter().map(|h| Load::start(h.clone())).collect();

    repo.commit("v2", &[("app/VERSION", "2\n")]);
    // B's group whole (its instances are placed one after another) beside A.
    let both = wait_prod(&cluster.server, "B beside A on the hosts", |prod| {
        let on_hosts: Vec<i64> = prod["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["host"].is_string())
            .filter_map(|i| i["release"].as_i64())
            .collect();
        let count = |release| on_hosts.iter().filter(|r| **r == release).count();
        count(1) == 4 && count(2) == 4
    })
    .await;
    // B's instances are spread over both hosts too.
    let b_hosts: BTreeSet<&str> = both["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["release"] == 2)
        .filter_map(|i| i["host"].as_str())
        .collect();
    assert_eq!(b_hosts, ["web-1", "web-2"].into(), "{both:#}");
    // Paused at a step, once every host routes by the same table: a user
    // gets the same variant through either (while the ramp moves, a host
    // a table behind another would split by other weights for a moment).
    let x = (cluster.server)
        .wait_for("/experiments?service=shop", "B getting users", |x| {
            x["release"] == 2 && x["status"] == "running"
        })
        .await;
    let id = x["id"].as_i64().unwrap();
    let (status, body) = (cluster.server)
        .post(&format!("/experiments/{id}/pause"), json!({}))
        .await;
    assert_eq!(status, 200, "{body:#}");
    let paused = |x: &Value| x["id"] == id && x["status"] == "paused";
    (cluster.server)
        .wait_for("/experiments?service=shop", "paused", paused)
        .await;
    wait_prod(&cluster.server, "every host on the same table", |prod| {
        let points = prod["host_entry_points"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        points.len() == 2 && points.iter().all(|p| p["version"] == prod["table_version"])
    })
    .await;
    the_same_variant_through_every_host(&hosts).await;
    let (status, body) = (cluster.server)
        .post(&format!("/experiments/{id}/resume"), json!({}))
        .await;
    assert_eq!(status, 200, "{body:#}");
    let ended = |release: i64| {
        let server = &cluster.server;
        async move {
            server
                .wait_for("/experiments?service=shop", "the experiment ended", |x| {
                    x["release"] == release
                        && ["promoted", "rolled_back", "broken", "held"]
                            .contains(&x["status"].as_str().unwrap_or_default())
                })
                .await
        }
    };
    let promoted = ended(2).await;
    assert_eq!(promoted["status"], "promoted", "{promoted:#}");
    cluster.server.wait_env("shop", "prod", 2, 4).await;

    repo.commit("v3 fails some", &[("app/ERROR_RATE", "0.05\n")]);
    let rolled = ended(3).await;
    assert_eq!(rolled["status"], "rolled_back", "{rolled:#}");
    // The incident names what failed, though it failed only at the hosts'
    // entry points: each sends what failed most in its access log.
    let incident = cluster
        .server
        .wait_for("/incidents?service=shop", "an incident", |i| {
            i["environment"] == "prod"
        })
        .await;
    let detail = incident["trigger_detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("the failing requests were GET / ("),
        "{incident:#}"
    );
    let prod = cluster.server.wait_env("shop", "prod", 2, 4).await;
    assert!(
        prod["instances"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["release"] == 2 && i["host"].is_string()),
        "{prod:#}"
    );
    for load in loads {
        let failed = load.finish("two experiments on the hosts").await;
        assert!(
            failed.iter().all(|f| f == "500 v3"),
            "only B's own errors: {failed:?}"
        );
    }
}

/// While the server is away, the hosts' entry points check the instances
/// themselves: one that stops answering (SIGSTOP) is taken out on every
/// host, after which nothing fails, and put back once it answers again.
/// Each host's access log and metrics show who served; the server, back,
/// shows what each host's check took out.
#[tokio::test]
async fn the_hosts_take_out_an_instance_that_hangs_while_the_server_is_away() {
    let Some(mut cluster) = Cluster::start(&["web", "web"]).await else {
        return;
    };
    cluster.serve_shop().await;
    let prod = wait_reported(&cluster.server, 2).await;
    let instance = |host: &str| {
        let instances = prod["instances"].as_array().unwrap();
        let on = instances.iter().find(|i| i["host"] == host).unwrap();
        (
            on["id"].as_str().unwrap().to_string(),
            on["pid"].as_i64().unwrap(),
        )
    };
    let ((hung, pid), (other, _)) = (instance("web-1"), instance("web-2"));
    let hosts = host_entry_points(&cluster.server).await;
    cluster.server.kill_hard();
    let process = nix::unistd::Pid::from_raw(pid as i32);
    nix::sys::signal::kill(process, nix::sys::signal::Signal::SIGSTOP).unwrap();
    // Each host's own check says so, and its entry point sends it nothing.
    cluster
        .wait_agents_log(&format!("instance={hung} healthy=false"))
        .await;
    for host in &hosts {
        answered_only_by(host, &other).await;
    }
    let loads: Vec<Load> = hosts.iter().map(|h| Load::start(h.clone())).collect();
    for load in &loads {
        load.served(100).await;
    }
    for load in loads {
        let failed = load.finish("a hung instance taken out by the hosts").await;
        assert!(failed.is_empty(), "{failed:?}");
    }
    for (index, host) in cluster.hosts.iter().enumerate() {
        let log = cluster
            .dir
            .path()
            .join(format!("web-{}", index + 1))
            .join("agents")
            .join(format!("web-{}", index + 1))
            .join("host/envs/shop/prod/access.log");
        let served_by = |instance: &str| {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|l| l["instance"] == instance && l["status"] == 200)
                .count()
        };
        // Written off the request path: wait for the lines to land.
        let deadline = Instant::now() + Duration::from_secs(30);
        while served_by(&other) < 100 {
            assert!(Instant::now() < deadline, "{} lacks lines", log.display());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let metrics = format!("http://{}:{METRICS_PORT}/metrics", host.addr);
        let text = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
        let served = text.lines().find(|l| {
            l.starts_with("sluice_proxy_requests_total{")
                && l.contains(&format!("instance=\"{other}\""))
                && l.contains("class=\"2xx\"")
        });
        let count: f64 = served
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0);
        assert!(count >= 100.0, "{metrics}:\n{text}");
    }
    // The server, back while the instance still hangs, shows what each
    // host's own check takes out.
    cluster.server = Server::start_on(&cluster.listen, &cluster.data, None, &OPTIONS);
    wait_prod(&cluster.server, "each host's check reported", |prod| {
        let points = prod["host_entry_points"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        points.len() == 2
            && points
                .iter()
                .all(|p| p["failing"] == serde_json::json!([hung]))
    })
    .await;
    nix::sys::signal::kill(process, nix::sys::signal::Signal::SIGCONT).unwrap();
    cluster
        .wait_agents_log(&format!("instance={hung} healthy=true"))
        .await;
    for host in &hosts {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !answering_instances(host).await.contains(&hung) {
            assert!(
                Instant::now() < deadline,
                "{hung} never came back through {host}"
            );
        }
    }
    cluster.server.wait_env("shop", "prod", 1, 2).await;
    wait_prod(
        &cluster.server,
        "no host's check takes anything out",
        |prod| {
            let points = prod["host_entry_points"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            points.len() == 2 && points.iter().all(|p| p["failing"] == serde_json::json!([]))
        },
    )
    .await;
}

/// `text` without its terminal colours.
fn strip_colours(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            plain.push(c);
        }
    }
    plain
}

/// Waits until 20 requests in a row through `url` are answered by
/// `instance` (each given 2 s: one sent to a hung instance times out).
async fn answered_only_by(url: &str, instance: &str) {
    let client = a_connection_a_request()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut in_a_row = 0;
    while in_a_row < 20 {
        assert!(
            Instant::now() < deadline,
            "{url} kept sending to others than {instance}"
        );
        let answer = client.get(url).send().await;
        let by = match answer {
            Ok(answer) => answer.json::<Value>().await.ok(),
            Err(_) => None,
        };
        let by = by.as_ref().and_then(|b| b["instance"].as_str());
        in_a_row = if by == Some(instance) {
            in_a_row + 1
        } else {
            0
        };
    }
}

/// Goals counted over every host: each user lands on one host's entry
/// point and checks out, buys and signs up through the other's; the
/// server's tracker counts each user once, in the variant of their first
/// request, and the test promotes the B that converts better.
#[tokio::test]
async fn goals_are_counted_over_every_host() {
    let Some(cluster) = Cluster::start(&["web", "web"]).await else {
        return;
    };
    let listen = "    listen: 127.0.0.1:0\n";
    let spec = crate::goals::SPEC.replace(
        listen,
        &format!("{listen}    hosts: {{ labels: {{ role: web }} }}\n"),
    );
    let repo = cluster.serve_shop_as(&spec).await;
    wait_reported(&cluster.server, 2).await;
    let hosts: Vec<String> = host_entry_points(&cluster.server)
        .await
        .iter()
        .map(|h| h.trim_end_matches('/').to_string())
        .collect();
    let users = crate::goals::Users::across(hosts, true);
    repo.commit("v2, a clearer checkout", &[("app/VERSION", "2\n")]);
    let x = crate::goals::experiment_ended(&cluster.server, 2).await;
    assert_eq!(x["status"], "promoted", "{x:#}");
    let reason = x["reason"].as_str().unwrap();
    assert!(
        reason.contains("B is better") && reason.contains("checkout"),
        "{reason}"
    );
    let checkout = crate::goals::goal(&x["report"], "checkout");
    assert!(
        checkout["a"]["users"].as_u64().unwrap() >= 500,
        "{checkout:#}"
    );
    // Every signup came through the other host than the user's landing:
    // about a third of each side's users, each counted once.
    let signup = crate::goals::goal(&x["report"], "signup");
    for side in ["a", "b"] {
        let (users, reached) = (
            signup[side]["users"].as_f64().unwrap(),
            signup[side]["reached"].as_f64().unwrap(),
        );
        assert!((0.2..0.5).contains(&(reached / users)), "{signup:#}");
    }
    assert_eq!(users.finish().await, 0, "no Sluice-Goal header left a host");
}

/// Two servers on one PostgreSQL: a kill -9 of the one holding the
/// controllers, and the other takes prod on the hosts over as it runs.
#[tokio::test]
async fn a_takeover_keeps_the_instances_on_the_hosts() {
    let Some((cluster, mut holder)) = Cluster::start_two_servers(&["web", "web"]).await else {
        return;
    };
    cluster.serve_shop().await;
    let before = placed(&wait_reported(&cluster.server, 2).await);
    assert_eq!(before.len(), 2, "{before:?}");

    holder.kill_hard();
    // The standby takes the lease over (10 s) and keeps what the agents run.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let health = cluster.server.get("/health").await;
        if health["role"] == "controllers" {
            break;
        }
        assert!(Instant::now() < deadline, "{health:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.server.wait_env("shop", "prod", 1, 2).await;
    let prod = wait_prod(&cluster.server, "the same instances reported", |p| {
        placed(p) == before
    })
    .await;
    let url = format!("http://{}/", prod["listen"].as_str().unwrap());
    assert_eq!(answering_instances(&url).await.len(), 2);
    let changes = cluster.server.get("/changelog?kind=instances.kept").await;
    assert!(
        changes.to_string().contains("kept 2 instance(s) of v1"),
        "{changes:#}"
    );
}

/// Each host's entry point holds clients to the environment's limits, as
/// the server's does: a body past `max_body` is refused (413) through the
/// host, and a release that raises the limit raises it there too.
#[tokio::test]
async fn the_hosts_entry_points_hold_clients_to_the_limits() {
    let Some(cluster) = Cluster::start(&["web"]).await else {
        return;
    };
    let with_limit = |max_body: &str| {
        SPEC.replace(
            "    listen: 127.0.0.1:0\n",
            &format!(
                "    listen: {{ address: 127.0.0.1:0, limits: {{ max_body: {max_body} }} }}\n"
            ),
        )
        .replace("instances: 2", "instances: 1")
    };
    let repo = cluster.serve_shop_as(&with_limit("1KiB")).await;
    let hosts = wait_prod(&cluster.server, "an entry point on the host", |prod| {
        prod["host_entry_points"]
            .as_array()
            .is_some_and(|e| e.len() == 1)
    })
    .await;
    let host = format!(
        "http://{}/checkout",
        hosts["host_entry_points"][0]["address"].as_str().unwrap()
    );
    let post = |bytes: usize| {
        let host = host.clone();
        async move {
            let client = a_connection_a_request().build().unwrap();
            let answer = client.post(&host).body(vec![b'x'; bytes]).send().await;
            answer.map(|a| a.status().as_u16()).unwrap_or(0)
        }
    };
    assert_eq!(post(512).await, 200);
    assert_eq!(post(2048).await, 413, "past max_body, through the host");
    repo.commit("v2", &[("sluice.yaml", &with_limit("4KiB"))]);
    cluster.server.wait_env("shop", "prod", 2, 1).await;
    // The new limits come with the host's next answer.
    let deadline = Instant::now() + Duration::from_secs(30);
    while post(2048).await != 200 {
        assert!(Instant::now() < deadline, "the host kept the old limit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(post(8192).await, 413);
}

/// Each host's entry point serves HTTPS with the certificate files the
/// server's entry point serves, sent by the server, and sends plain HTTP on
/// to HTTPS at `redirect_from`'s port; a certificate renewed on the server
/// is served by the hosts too.
#[tokio::test]
async fn the_hosts_entry_points_serve_https_with_the_servers_certificates() {
    let Some(cluster) = Cluster::start(&["web"]).await else {
        return;
    };
    let certificate = |dir: &std::path::Path| {
        let made = rcgen::generate_simple_self_signed(vec!["shop.test".to_string()]).unwrap();
        std::fs::write(dir.join("shop.key"), made.signing_key.serialize_pem()).unwrap();
        std::fs::write(dir.join("shop.crt"), made.cert.pem()).unwrap();
        reqwest::Certificate::from_pem(made.cert.pem().as_bytes()).unwrap()
    };
    let first = certificate(cluster.dir.path());
    let plain = free_port();
    let listen = format!(
        "    listen: {{ address: 127.0.0.1:0, tls: {{ cert: {dir}/shop.crt, key: {dir}/shop.key }}, redirect_from: 127.0.0.1:{plain} }}\n",
        dir = cluster.dir.path().display()
    );
    let spec = SPEC
        .replace("    listen: 127.0.0.1:0\n", &listen)
        .replace("instances: 2", "instances: 1");
    cluster.serve_shop_as(&spec).await;
    let prod = wait_prod(&cluster.server, "an entry point on the host", |prod| {
        prod["host_entry_points"]
            .as_array()
            .is_some_and(|e| e.len() == 1)
    })
    .await;
    let host: std::net::SocketAddr = prod["host_entry_points"][0]["address"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let https = |trusted: reqwest::Certificate| async move {
        let client = reqwest::Client::builder()
            .resolve("shop.test", host)
            .tls_built_in_root_certs(false)
            .add_root_certificate(trusted)
            .build()
            .unwrap();
        let url = format!("https://shop.test:{}/", host.port());
        client.get(url).send().await
    };
    let answer = https(first).await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.version(), reqwest::Version::HTTP_2);
    assert_eq!(answer.headers()["x-sluice-release"], "v1");

    let redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("http://{}:{plain}/cart", host.ip()))
        .header("host", "shop.test")
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), 308);
    assert_eq!(
        redirect.headers()["location"],
        format!("https://shop.test:{}/cart", host.port())
    );

    // Renewed on the server: the host serves the new certificate.
    let renewed = certificate(cluster.dir.path());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !https(renewed.clone())
        .await
        .is_ok_and(|a| a.status() == 200)
    {
        assert!(
            Instant::now() < deadline,
            "the host kept the old certificate"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Each host seeds the environment's data directory the first time one of
/// its instances starts there (`data.seed`), and never again: what the
/// instances wrote is still there after the next release, which each host
/// snapshots before its first instance starts.
#[tokio::test]
async fn each_host_seeds_its_data_once_and_snapshots_it_before_a_release() {
    let Some(cluster) = Cluster::start(&["web", "web"]).await else {
        return;
    };
    // The seed is not among `artifact.paths`: it is added by itself.
    let spec = SPEC.replace(
        "    hosts: { labels: { role: web } }\n",
        "    hosts: { labels: { role: web } }\n    data: { seed: fixtures/seed.txt }\n",
    );
    let repo = cluster.serve_shop_as(&spec).await;
    let hosts = host_entry_points(&cluster.server).await;
    // Through one host's entry point, which routes to the instances on both.
    let data_of_each = |path: &'static str| {
        let url = format!("{}{}", hosts[0], path.trim_start_matches('/'));
        async move {
            let client = a_connection_a_request().build().unwrap();
            let mut seen = std::collections::BTreeMap::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            while seen.len() < 2 {
                assert!(
                    Instant::now() < deadline,
                    "{url} reached one instance: {seen:?}"
                );
                let answer: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
                seen.insert(
                    answer["instance"].as_str().unwrap().to_string(),
                    answer["data"].clone(),
                );
            }
            seen
        }
    };
    for (instance, data) in data_of_each("/visit").await {
        assert!(data.to_string().contains("seed.txt"), "{instance}: {data}");
    }
    for name in ["web-1", "web-2"] {
        let done = cluster
            .dir
            .path()
            .join(format!("{name}/agents/{name}/host/seeded/shop/prod"));
        assert!(done.exists(), "{} is missing", done.display());
    }
    repo.commit("v2", &[("app/VERSION", "2\n")]);
    cluster.server.wait_env("shop", "prod", 2, 2).await;
    for (instance, data) in data_of_each("/").await {
        assert_eq!(
            data,
            serde_json::json!(["seed.txt", "visits"]),
            "{instance}"
        );
    }
    for name in ["web-1", "web-2"] {
        let snapshot = cluster.dir.path().join(format!(
            "{name}/agents/{name}/host/envs/shop/prod/snapshots/before-v2.tar.gz"
        ));
        let file = std::fs::File::open(&snapshot)
            .unwrap_or_else(|e| panic!("{}: {e}", snapshot.display()));
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
        let mut names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .filter(|p| p != "./" && p != ".")
            .collect();
        names.sort();
        assert_eq!(names, ["seed.txt", "visits"], "{name}");
    }
}

/// An experiment's B works on a copy of the data (`strategy.ab.data:
/// copy`) made on each host that runs B: what B writes, A does not see,
/// and the copies go from every host when the experiment ends.
#[tokio::test]
async fn b_works_on_a_copy_of_each_hosts_data_that_goes_when_it_ends() {
    let Some(cluster) = Cluster::start(&["web", "web"]).await else {
        return;
    };
    let spec = format!(
        "{}    data: {{ seed: fixtures/seed.txt }}\n    strategy:\n      ab: {{ steps: [50, 100], min_requests: 100000, min_duration: 1h, max_step: 2h, allow_force: true, data: copy }}\n",
        SPEC
    );
    cluster.serve_shop_as(&spec).await;
    let hosts = host_entry_points(&cluster.server).await;
    let (status, body) = cluster
        .server
        .post(
            "/experiments",
            serde_json::json!({ "service": "shop", "env": "prod", "release": 1 }),
        )
        .await;
    assert_eq!(status, 202, "{body:#}");
    let running = cluster
        .server
        .wait_for("/experiments?service=shop", "B running", |x| {
            x["status"] == "running"
        })
        .await;
    let copies = |name: &str| {
        let dir = cluster
            .dir
            .path()
            .join(format!("{name}/agents/{name}/host/copies/shop/prod"));
        std::fs::read_dir(dir).map_or(0, |d| d.count())
    };
    assert_eq!(
        (copies("web-1"), copies("web-2")),
        (1, 1),
        "B spread, a copy on each host"
    );
    // Through either host: B writes into its copy; A does not see it.
    let client = a_connection_a_request().build().unwrap();
    let data_as = |host: &String, variant: &'static str, path: &'static str| {
        let request = client
            .get(format!("{host}{}", path.trim_start_matches('/')))
            .header("x-sluice-variant", variant);
        async move {
            let answer: Value = request.send().await.unwrap().json().await.unwrap();
            answer["data"].clone()
        }
    };
    for host in &hosts {
        for _ in 0..4 {
            data_as(host, "b", "/visit").await;
        }
    }
    for host in &hosts {
        for _ in 0..4 {
            assert_eq!(
                data_as(host, "a", "/").await,
                serde_json::json!(["seed.txt"])
            );
            assert_eq!(
                data_as(host, "b", "/").await,
                serde_json::json!(["seed.txt", "visits"])
            );
        }
    }
    let (status, body) = cluster
        .server
        .post(
            &format!("/experiments/{}/abort", running["id"]),
            serde_json::json!({}),
        )
        .await;
    assert!(status < 300, "{status} {body:#}");
    cluster
        .server
        .wait_for("/experiments?service=shop", "the experiment ended", |x| {
            x["status"] == "aborted"
        })
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while (copies("web-1"), copies("web-2")) != (0, 0) {
        assert!(Instant::now() < deadline, "B's copies stayed on the hosts");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for host in &hosts {
        assert_eq!(
            data_as(host, "a", "/").await,
            serde_json::json!(["seed.txt"])
        );
    }
}

/// An instance that declares more memory or cores than any matching host
/// has free is placed nowhere: its deployment fails saying so.
#[tokio::test]
async fn an_instance_too_big_for_every_host_is_placed_nowhere() {
    let Some(cluster) = Cluster::start(&["web"]).await else {
        return;
    };
    let repo = GitRepo::new(cluster.dir.path(), "shop");
    copy_fixture(&repo, "shop");
    let too_big = [
        ("memory: 1024GiB", "has 1048576 MiB (`run.memory`) free"),
        ("cores: 1000", "has 1000 cores (`run.cores`) free"),
    ];
    for (release, (need, said)) in (1..).zip(too_big) {
        let spec = SPEC.replace(
            "  command: exec python3 app/server.py\n",
            &format!("  command: exec python3 app/server.py\n  {need}\n"),
        );
        repo.commit(&format!("v{release}"), &[("sluice.yaml", &spec)]);
        if release == 1 {
            cluster.server.add_repo(&repo);
        }
        let failed = cluster
            .server
            .wait_for("/deployments?service=shop", "the deployment failed", |d| {
                d["status"] == "failed" && d["release"] == release
            })
            .await;
        let reason = failed["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(said), "{failed:#}");
    }
    let placements = cluster.server.get("/status?service=shop").await;
    assert!(
        placements.to_string().contains("\"instances\":[]"),
        "{placements:#}"
    );
}

/// A temporary directory for a test that makes hosts, or `None` (the test
/// is skipped) where hosts cannot be made, which CI never allows.
fn hosts_here() -> Option<tempfile::TempDir> {
    if let Some(what) = missing() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the hosts' tests, but {what} is missing"
        );
        eprintln!("skipped: {what} is missing");
        return None;
    }
    Some(tempdir())
}

const OPTIONS: [&str; 2] = ["--agent-lease", "3s"];

/// Where each agent serves its entry points' metrics, in its host.
const METRICS_PORT: u16 = 9464;

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
    /// Each agent's command line.
    commands: Vec<Vec<String>>,
    dir: tempfile::TempDir,
    /// The machine, shared with no latency-judging test meanwhile.
    _alone: tokio::sync::MutexGuard<'static, ()>,
}

impl Cluster {
    async fn start(roles: &[&str]) -> Option<Cluster> {
        let dir = hosts_here()?;
        Some(Cluster::around(dir, None, roles).await)
    }

    /// Two servers on one PostgreSQL: the first holds the controllers; the
    /// agents talk to the second, which forwards them to the first while it
    /// stands by. `None` without hosts or PostgreSQL.
    async fn start_two_servers(roles: &[&str]) -> Option<(Cluster, Server)> {
        let dir = hosts_here()?;
        let Some(db) = sluice_store::testing::fresh_postgres(dir.path()).await else {
            eprintln!("skipped: several servers need PostgreSQL (SLUICE_TEST_POSTGRES)");
            return None;
        };
        let holder = Server::start_on(
            "127.0.0.1:0",
            &dir.path().join("holder"),
            Some(&db),
            &OPTIONS,
        );
        let cluster = Cluster::around(dir, Some((&db, &holder.token)), roles).await;
        Some((cluster, holder))
    }

    /// A server in `dir` (on `database`, with its admin token, when given)
    /// and the agents.
    async fn around(
        dir: tempfile::TempDir,
        database: Option<(&str, &str)>,
        roles: &[&str],
    ) -> Cluster {
        let alone = crate::support::machine_to_myself().await;
        let data = dir.path().join("data");
        let listen = format!("0.0.0.0:{}", free_port());
        let mut server = Server::start_on(&listen, &data, database.map(|d| d.0), &OPTIONS);
        if let Some((_, token)) = database {
            server.token = token.to_string();
        }
        let port = server.url.rsplit(':').next().unwrap().to_string();
        let hosts: Vec<Host> = roles.iter().map(|_| Host::make()).collect();
        let mut cluster = Cluster {
            server,
            listen,
            data,
            hosts,
            agents: Vec::new(),
            commands: Vec::new(),
            dir,
            _alone: alone,
        };
        for (index, role) in roles.iter().enumerate() {
            let name = format!("{role}-{}", index + 1);
            let token = cluster.server.token_for(&name, "agent", &[]).await;
            let url = format!("http://{}:{port}", cluster.hosts[index].gateway);
            let agent_data = cluster.dir.path().join(&name);
            let args = [
                "agent",
                "--server",
                &url,
                "--token",
                &token,
                "--name",
                &name,
                "--label",
                &format!("role={role}"),
                "--data-dir",
                agent_data.to_str().unwrap(),
                // The host's own namespace: no other process has its ports.
                "--metrics",
                &format!("0.0.0.0:{METRICS_PORT}"),
            ];
            cluster
                .commands
                .push(args.iter().map(|a| a.to_string()).collect());
            let agent = cluster.spawn_agent(index);
            cluster.agents.push(agent);
        }
        wait_online(&cluster.server, roles.len()).await;
        cluster
    }

    /// Starts agent `index` in its host (again), its output appended to its log.
    fn spawn_agent(&self, index: usize) -> Child {
        let args: Vec<&str> = self.commands[index].iter().map(String::as_str).collect();
        let log = self.dir.path().join(format!("agent-{index}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        self.hosts[index]
            .command(crate::support::SLUICE)
            .args(&args)
            .env("SLUICE_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap()
    }

    /// Waits until every agent's log has a line with `words`.
    async fn wait_agents_log(&self, words: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for index in 0..self.agents.len() {
            let log = self.dir.path().join(format!("agent-{index}.log"));
            let plain = || {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                strip_colours(&text).contains(words)
            };
            while !plain() {
                assert!(
                    Instant::now() < deadline,
                    "agent {index}'s log never said {words}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// The shop, its v1 running in prod on two instances.
    async fn serve_shop(&self) -> GitRepo {
        self.serve_shop_as(SPEC).await
    }

    /// The shop by `spec`, its v1 running in prod on two instances.
    async fn serve_shop_as(&self, spec: &str) -> GitRepo {
        let repo = GitRepo::new(self.dir.path(), "shop");
        copy_fixture(&repo, "shop");
        repo.commit("v1", &[("sluice.yaml", spec)]);
        self.server.add_repo(&repo);
        let instances = spec
            .lines()
            .find_map(|line| line.trim().strip_prefix("instances: ")?.parse().ok())
            .unwrap_or(1);
        self.server.wait_env("shop", "prod", 1, instances).await;
        repo
    }

    /// The shop with a secret its instances get (`run.secrets`): first a
    /// commit that only registers the repository, then the secret, then
    /// v1 (release 1) in prod.
    async fn serve_shop_with_secret(&self, value: &str) -> GitRepo {
        let repo = GitRepo::new(self.dir.path(), "shop");
        copy_fixture(&repo, "shop");
        let first =
            "service: shop\npipeline:\n  jobs:\n    unit:\n      steps:\n        - run: 'true'\n";
        repo.commit("v0", &[("sluice.yaml", first)]);
        self.server.add_repo(&repo);
        self.server.wait_run("v0", |r| r["title"] == "v0").await;
        let set = self
            .server
            .request(
                reqwest::Method::PUT,
                "/repos/shop/secrets/SHOP_SECRET",
                Some(&self.server.token),
            )
            .await
            .json(&serde_json::json!({ "value": value }))
            .send()
            .await
            .unwrap();
        assert!(set.status().is_success(), "{:?}", set.text().await);
        let spec = SPEC.replace(
            "  command: exec python3 app/server.py\n",
            "  command: exec python3 app/server.py\n  secrets: [SHOP_SECRET]\n",
        );
        repo.commit("v1", &[("sluice.yaml", &spec)]);
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
    wait_prod(server, "every instance reported", |prod| {
        let instances = prod["instances"].as_array().cloned().unwrap_or_default();
        instances.len() == count && instances.iter().all(|i| i["pid"].is_i64())
    })
    .await
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

/// The URLs of prod's entry points on the hosts, once both report one.
async fn host_entry_points(server: &Server) -> Vec<String> {
    let prod = wait_prod(server, "an entry point on each host", |prod| {
        prod["host_entry_points"]
            .as_array()
            .is_some_and(|e| e.len() == 2)
    })
    .await;
    prod["host_entry_points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("http://{}/", e["address"].as_str().unwrap()))
        .collect()
}

/// A user the first host puts on A and one it puts on B (by the split's
/// cookie) are put on the same variant by every other host.
async fn the_same_variant_through_every_host(hosts: &[String]) {
    let client = a_connection_a_request().build().unwrap();
    let variant = |answer: &reqwest::Response| {
        let header = answer.headers().get("x-sluice-variant");
        header
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    let mut checked = BTreeSet::new();
    for _ in 0..1000 {
        let answer = client.get(&hosts[0]).send().await.unwrap();
        let first = variant(&answer);
        let Some(cookie) = cookie_of(&answer) else {
            continue;
        };
        if !checked.insert(first.clone()) {
            continue;
        }
        for host in &hosts[1..] {
            for _ in 0..5 {
                let again = client
                    .get(host)
                    .header("cookie", &cookie)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(variant(&again), first, "{cookie} through {host}");
            }
        }
        if checked.len() == 2 {
            return;
        }
    }
    panic!("the first host put no user on B in 1000 requests: {checked:?}");
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

/// A client that opens a connection for each request, so that each is
/// routed afresh.
fn a_connection_a_request() -> reqwest::ClientBuilder {
    reqwest::Client::builder().pool_max_idle_per_host(0)
}

/// The instances that answer at `url`, over 40 requests.
async fn answering_instances(url: &str) -> BTreeSet<String> {
    let client = a_connection_a_request().build().unwrap();
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        let answer: Value = client.get(url).send().await.unwrap().json().await.unwrap();
        seen.insert(answer["instance"].as_str().unwrap_or_default().to_string());
    }
    seen
}
