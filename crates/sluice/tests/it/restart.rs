//! kill -9 of the server in the middle of a run: the next start marks the run
//! `error`, keeps the log lines stored before the kill, and kills the step the
//! old server left behind.

use std::time::{Duration, Instant};

use crate::support::{GitRepo, Server, each_database, process_alive};

#[tokio::test]
async fn a_run_interrupted_by_kill_9_ends_as_error_with_its_logs_and_no_leftovers() {
    each_database(|dir, db| async move {
        let data = dir.join("data");
        let mut server = Server::start(&data, db.as_deref());
        let repo = GitRepo::new(&dir, "shop");
        let pidfile = dir.join("step.pid");
        let spec = format!(
            "service: shop\npipeline:\n  jobs:\n    long:\n      steps:\n        - run: echo $$ > {}; echo before the crash; sleep 300\n",
            pidfile.display()
        );
        let sha = repo.commit("long job", &[("sluice.yaml", &spec)]);
        server.add_repo(&repo);
        // Wait until the line is stored, not only printed.
        let deadline = Instant::now() + Duration::from_secs(30);
        let run_id = loop {
            let runs = server.get("/runs").await;
            if let Some(run) = runs.as_array().unwrap().iter().find(|r| r["sha"] == sha.as_str() && r["status"] == "running") {
                let logs = server.logs(run).await;
                if logs.iter().any(|l| l == "before the crash") {
                    break run["id"].as_i64().unwrap();
                }
            }
            assert!(Instant::now() < deadline, "the step never started: {runs:#}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let step: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        assert!(process_alive(step));
        server.kill_hard();
        assert!(process_alive(step), "kill -9 of the server leaves its step running");

        let restarted = Server::start(&data, db.as_deref());
        let run = restarted.wait_run("the interrupted run", |r| r["id"] == run_id).await;
        assert_eq!(run["status"], "error");
        assert!(run["reason"].as_str().unwrap().contains("interrupted"), "{run:#}");
        assert!(restarted.logs(&run).await.contains(&"before the crash".to_string()));
        assert!(!process_alive(step), "the new server killed the step the old one left");
        // The new server still runs new changes.
        let next = repo.commit("quick", &[("sluice.yaml", "service: shop\npipeline:\n  jobs:\n    quick:\n      steps:\n        - run: echo fine\n")]);
        let run = restarted.wait_run("the next commit", |r| r["sha"] == next.as_str()).await;
        assert_eq!(run["status"], "success");
    })
    .await;
}
