//! `sluice demo --speed max`, checked through the API: every stage of the
//! story happened (v1 through the environments, v2 promoted by its
//! experiment, v3 rolled back with an incident and a rule, v4 stopped in dev
//! by that rule, v5 promoted by a test of its goal, a review change with a
//! status and no deployment).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::{SLUICE, tempdir};

async fn get(url: &str, token: &str, path: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{url}/api/v1{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_demo_tells_the_whole_story() {
    let dir = tempdir();
    let mut child = Command::new(SLUICE)
        .args(["demo", "--speed", "max", "--listen", "127.0.0.1:0", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut url, mut token, mut said) = (String::new(), String::new(), Vec::new());
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.trim().strip_prefix("dashboard: ") {
            url = rest
                .split_whitespace()
                .next()
                .unwrap()
                .trim_end_matches('/')
                .to_string();
        }
        if let Some(rest) = line.trim().strip_prefix("token:") {
            token = rest.trim().to_string();
        }
        let done = line.starts_with("The story is told") || line.contains("The demo stopped");
        said.push(line);
        if done {
            break;
        }
    }
    let said = said.join("\n");
    assert!(said.contains("The story is told"), "{said}");
    // The team's chat heard of the approvals, the rollback and the incident.
    let told = said
        .split("What the team chat was told")
        .nth(1)
        .unwrap_or_else(|| panic!("no transcript: {said}"));
    for heard in ["approvals", "rolled back", "INC-"] {
        assert!(
            told.contains(heard),
            "the chat never heard `{heard}`: {told}"
        );
    }

    let releases = get(&url, &token, "/releases?service=shop").await;
    assert_eq!(releases.as_array().unwrap().len(), 5, "{releases:#}");
    let status = get(&url, &token, "/status?service=shop").await;
    let release_in = |env: &str| {
        status
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["environment"] == env)
            .map(|e| e["release"].clone())
            .unwrap()
    };
    assert_eq!(release_in("prod"), 5, "v5 won its test: {status:#}");
    assert_eq!(release_in("dev"), 5, "{status:#}");
    let experiments = get(&url, &token, "/experiments?service=shop").await;
    let ended = |release: i64| {
        experiments
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["release"] == release)
            .map(|x| x["status"].clone())
            .unwrap()
    };
    assert_eq!(ended(2), "promoted", "{experiments:#}");
    assert_eq!(ended(3), "rolled_back", "{experiments:#}");
    // v5's test promoted it because its shoppers ordered more.
    assert_eq!(ended(5), "promoted", "{experiments:#}");
    let v5 = experiments
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["release"] == 5)
        .unwrap();
    assert!(
        v5["reason"]
            .as_str()
            .unwrap()
            .contains("B is better: conversion on `order`"),
        "{v5:#}"
    );
    let incident = get(&url, &token, "/incidents/1").await;
    assert_eq!(incident["suspects"][0]["release"], 3, "{incident:#}");
    assert_eq!(incident["rules"][0]["id"], 1, "{incident:#}");
    let dev = get(&url, &token, "/deployments?service=shop&env=dev").await;
    let v4 = dev
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["release"] == 4)
        .unwrap();
    assert_eq!(v4["status"], "rolled_back");
    assert!(
        v4["reason"]
            .as_str()
            .unwrap()
            .contains("blocked by rule R1 (from INC-1"),
        "{v4:#}"
    );
    for env in ["pre-prod", "prod"] {
        let deployments = get(
            &url,
            &token,
            &format!("/deployments?service=shop&env={env}"),
        )
        .await;
        assert!(
            deployments
                .as_array()
                .unwrap()
                .iter()
                .all(|d| d["release"] != 4),
            "v4 reached {env}: {deployments:#}"
        );
    }
    let runs = get(&url, &token, "/runs?limit=50").await;
    let review = runs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["branch"] == "wishlist" && r["title"] == "Wish lists (under review)")
        .unwrap();
    assert_eq!(
        (review["kind"].as_str(), review["status"].as_str()),
        (Some("review"), Some("success"))
    );
    assert!(
        releases
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["sha"] != review["sha"]),
        "a review change made a release"
    );

    // Ctrl-C ends it.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(exit) = child.try_wait().unwrap() {
            assert!(exit.success(), "{exit:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the demo did not end on Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
