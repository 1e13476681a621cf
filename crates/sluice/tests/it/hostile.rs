//! What a commit or a second service must not be able to do to another,
//! end to end: read the server's secrets, take another's entry point, or
//! collide with its instances.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{GitRepo, Server, copy_fixture, free_port};

pub(crate) fn spec(service: &str, listen: &str) -> String {
    format!(
        r#"service: {service}
pipeline:
  jobs:
    unit:
      steps:
        - run: "true"
  artifact:
    paths: [app/]
run:
  command: exec python3 app/server.py
  ready_timeout: 10s
  health: {{ path: /healthz, interval: 200ms, timeout: 200ms, healthy: 1, unhealthy: 2 }}
  config_files:
    - template: config/app.toml.tmpl
      to: app.toml
environments:
  dev:
    deploy: auto
    instances: 1
    listen: {listen}
    config: {{ GREETING: hello }}
"#
    )
}

/// Waits for the deployment of `service`'s release `number` to finish.
async fn finished_deployment(server: &Server, service: &str, number: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let all = server.get(&format!("/deployments?service={service}")).await;
        if let Some(done) = all
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["release"] == number && d["status"] != "running")
        {
            return done.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no deployment of v{number}: {all:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_entry_point_belongs_to_one_service_and_moves_with_its_release() {
    let dir = crate::support::tempdir();
    let dir = dir.path();
    let server = Server::start(&dir.join("data"), None);
    let taken = format!("127.0.0.1:{}", free_port());

    let shop = GitRepo::new(dir, "shop");
    copy_fixture(&shop, "shop");
    shop.commit("shop v1", &[("sluice.yaml", &spec("shop", &taken))]);
    server.add_repo(&shop);
    server.wait_env("shop", "dev", 1, 1).await;

    // A second service with an environment of the same name: its own ids.
    let blog = GitRepo::new(dir, "blog");
    copy_fixture(&blog, "shop");
    blog.commit("blog v1", &[("sluice.yaml", &spec("blog", "127.0.0.1:0"))]);
    server.add_repo(&blog);
    let blog_dev = server.wait_env("blog", "dev", 1, 1).await;
    let shop_dev = server.wait_env("shop", "dev", 1, 1).await;
    assert_ne!(
        blog_dev["instances"][0]["id"], shop_dev["instances"][0]["id"],
        "instance ids are unique across services"
    );

    // Its next release claims shop's address: refused, naming the owner.
    blog.commit("blog v2", &[("sluice.yaml", &spec("blog", &taken))]);
    let refused = finished_deployment(&server, "blog", 2).await;
    assert_eq!(refused["status"], "rolled_back", "{refused:#}");
    let reason = refused["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!("{taken} is already the entry point of shop dev")),
        "{refused:#}"
    );
    for _ in 0..20 {
        let answer = reqwest::get(format!("http://{taken}/")).await.unwrap();
        assert_eq!(answer.headers()["x-sluice-release"], "v1");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["service"].as_str().unwrap_or("shop"), "shop");
        assert!(
            body["instance"].as_str().unwrap().starts_with("shop."),
            "only shop answers on its address: {body:#}"
        );
    }

    // A release that moves its own entry point gets the new address.
    let moved = format!("127.0.0.1:{}", free_port());
    blog.commit("blog v3", &[("sluice.yaml", &spec("blog", &moved))]);
    let blog_dev = server.wait_env("blog", "dev", 3, 1).await;
    assert_eq!(blog_dev["listen"], moved.as_str(), "{blog_dev:#}");
    let answer = reqwest::get(format!("http://{moved}/")).await.unwrap();
    assert_eq!(answer.headers()["x-sluice-release"], "v3");
}

#[tokio::test]
async fn a_step_reads_nothing_of_the_server_s_and_is_told_which_tool_it_cannot_reach() {
    if !nix::unistd::geteuid().is_root() {
        // Steps run as the server's own user: nothing to isolate them from.
        return;
    }
    let dir = crate::support::tempdir();
    let dir = dir.path();
    let data = dir.join("data");
    let server = Server::start(&data, None);
    let private = dir.join("private");
    std::fs::create_dir_all(private.join("bin")).unwrap();
    std::fs::write(private.join("bin/mytool"), "#!/bin/sh\necho tool\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        private.join("bin/mytool"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let probes: String = ["initial-admin-token", "sluice.db", "."]
        .iter()
        .map(|f| {
            let path = data.join(f);
            let read = if *f == "." { "ls" } else { "cat" };
            format!(
                "if {read} {0} >/dev/null 2>&1; then echo leaked {f}; else echo refused {f}; fi; ",
                path.display()
            )
        })
        .collect();
    let spec = format!(
        "service: shop\npipeline:\n  jobs:\n    probe:\n      steps:\n        - run: '{probes}'\n    tool:\n      env: {{ PATH: '{}:/usr/bin:/bin' }}\n      steps:\n        - run: mytool\n",
        private.join("bin").display()
    );
    let repo = GitRepo::new(dir, "shop");
    let sha = repo.commit("probes", &[("sluice.yaml", &spec)]);
    server.add_repo(&repo);
    let run = server
        .wait_run("the probing run", |r| r["sha"] == sha.as_str())
        .await;
    let logs = server.logs(&run).await;
    for file in ["initial-admin-token", "sluice.db", "."] {
        assert!(logs.contains(&format!("refused {file}")), "{logs:#?}");
    }
    let told = format!(
        "cannot reach {} on PATH: {} lets no other user in",
        private.join("bin").display(),
        private.display()
    );
    assert!(logs.iter().any(|l| l.contains(&told)), "{logs:#?}");
    assert!(
        logs.iter().any(|l| l.contains("--isolation none")),
        "{logs:#?}"
    );
}

#[tokio::test]
async fn instances_get_their_secrets_and_nobody_sees_them() {
    let dir = crate::support::tempdir();
    let dir = dir.path();
    let server = Server::start(&dir.join("data"), None);
    let shop = GitRepo::new(dir, "shop");
    copy_fixture(&shop, "shop");
    let with_secret = spec("shop", "127.0.0.1:0")
        .replace("  config_files:", "  secrets: [API_KEY]\n  config_files:");
    shop.commit("shop v1", &[("sluice.yaml", &with_secret)]);
    server.add_repo(&shop);
    // Not set yet: the deployment says which secret and how to set it.
    let failed = finished_deployment(&server, "shop", 1).await;
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("`run.secrets` names `API_KEY`, which is not set; set it with `sluice secret set shop API_KEY`"),
        "{failed:#}"
    );
    let out = server.cli_with_input(&["secret", "set", "shop", "API_KEY"], "k3y-for-the-api");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    shop.commit("shop v2", &[("README", "again\n")]);
    let dev = server.wait_env("shop", "dev", 2, 1).await;
    let url = format!("http://{}/", dev["listen"].as_str().unwrap());
    let body: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    assert_eq!(body["api_key_length"], "k3y-for-the-api".len(), "{body:#}");

    let viewer = server.token_for("vic", "viewer", &[]).await;
    let instance = dev["instances"][0]["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let log = loop {
        let answer = server
            .request(
                reqwest::Method::GET,
                &format!("/instances/{instance}/logs"),
                Some(&viewer),
            )
            .await
            .send()
            .await
            .unwrap();
        let text = answer.text().await.unwrap();
        if text.contains("starting with") || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(log.contains("starting with API_KEY=***"), "{log}");
    assert!(!log.contains("k3y-for-the-api"), "{log}");
    let diff = server.cli(&["diff", "shop", "dev", "dev"]);
    let diff = String::from_utf8_lossy(&diff.stdout);
    assert!(
        diff.contains("API_KEY=***") && !diff.contains("k3y"),
        "{diff}"
    );
}
