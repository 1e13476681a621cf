//! The controllers' lease shared by servers on one database: one holder at
//! a time, taken over once it runs out, a term that grows with each holder,
//! and the writes of a holder that lost it refused. And artifacts' bytes
//! kept in the database for the next holder.

use std::time::Duration;

use sluice_store::{Fence, Store, StoreError};

/// Two stores on one fresh database, as two servers would have.
async fn each_pair<F, Fut>(check: F)
where
    F: Fn(Store, Store) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    for (name, url) in sluice_store::testing::database_urls(dir.path()).await {
        eprintln!("-- against {name}");
        let (a, b) = (
            Store::connect(&url).await.unwrap(),
            Store::connect(&url).await.unwrap(),
        );
        check(a.clone(), b.clone()).await;
        a.close().await;
        b.close().await;
    }
}

#[tokio::test]
async fn one_server_holds_the_controllers_and_a_taken_over_one_is_fenced() {
    each_pair(|a, b| async move {
        assert_eq!(a.controllers().await.unwrap(), None);
        // A takes the lease for a moment only; B cannot while it holds.
        let term = a.acquire_controllers("a", "http://a", 300).await.unwrap();
        assert_eq!(term, Some(1));
        a.hold_fence(Fence {
            holder: "a".into(),
            term: 1,
        });
        assert_eq!(
            b.acquire_controllers("b", "http://b", 60_000)
                .await
                .unwrap(),
            None
        );
        let held = b.controllers().await.unwrap().unwrap();
        assert_eq!(
            (held.holder.as_str(), held.address.as_str(), held.term),
            ("a", "http://a", 1)
        );
        assert!(a.renew_controllers("a", 1, 300).await.unwrap());
        assert!(
            a.claim_queued_run().await.unwrap().is_none(),
            "the holder may act"
        );

        // A goes silent: once its lease ran out, B takes it over at term 2.
        loop {
            if b.controllers().await.unwrap().unwrap().left_ms < 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            b.acquire_controllers("b", "http://b", 60_000)
                .await
                .unwrap(),
            Some(2)
        );
        b.hold_fence(Fence {
            holder: "b".into(),
            term: 2,
        });

        // A, back, can neither renew nor act; B can.
        assert!(!a.renew_controllers("a", 1, 300).await.unwrap());
        match a.claim_queued_run().await {
            Err(StoreError::Fenced(1)) => {}
            other => panic!("a write of the old holder went through: {other:?}"),
        }
        assert!(b.claim_queued_run().await.unwrap().is_none());

        // B restarted (a new process, the same server) takes its own lease
        // back at once, at a term that fences its previous process.
        assert_eq!(
            b.acquire_controllers("b", "http://b", 60_000)
                .await
                .unwrap(),
            Some(3)
        );
        assert!(
            b.claim_queued_run().await.is_err(),
            "the previous process is fenced"
        );
        b.hold_fence(Fence {
            holder: "b".into(),
            term: 3,
        });
        // A clean stop gives the lease up at once.
        b.release_controllers("b", 3).await.unwrap();
        assert_eq!(
            a.acquire_controllers("a", "http://a", 60_000)
                .await
                .unwrap(),
            Some(4)
        );
    })
    .await;
}

#[tokio::test]
async fn an_artifacts_bytes_kept_in_the_database_come_back_whole() {
    each_pair(|a, b| async move {
        let dir = tempfile::tempdir().unwrap();
        // Two chunks and a part, each byte telling where it is.
        let bytes: Vec<u8> = (0..(2 * 1024 * 1024 + 12_345))
            .map(|i| (i % 251) as u8)
            .collect();
        let packed = dir.path().join("packed.tar.gz");
        std::fs::write(&packed, &bytes).unwrap();
        a.keep_artifact_bytes("abc", &packed).await.unwrap();
        // Kept twice (a retry after a crash) is kept once.
        a.keep_artifact_bytes("abc", &packed).await.unwrap();
        let fetched = dir.path().join("fetched");
        assert!(b.artifact_bytes_to("abc", &fetched).await.unwrap());
        assert!(
            std::fs::read(&fetched).unwrap() == bytes,
            "the bytes differ"
        );
        assert!(
            !b.artifact_bytes_to("other", &dir.path().join("x"))
                .await
                .unwrap()
        );
        // An empty artifact is one empty chunk, not nothing.
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        a.keep_artifact_bytes("empty", &empty).await.unwrap();
        assert!(
            b.artifact_bytes_to("empty", &dir.path().join("e"))
                .await
                .unwrap()
        );
    })
    .await;
}

#[tokio::test]
async fn agents_hear_of_the_servers_up_and_not_of_one_that_stopped() {
    crate::each_store(|store| async move {
        store
            .note_server("b-2", "http://10.0.0.2:7300")
            .await
            .unwrap();
        store
            .note_server("a-1", "http://10.0.0.1:7300")
            .await
            .unwrap();
        // Said again from elsewhere: the latest address counts.
        store
            .note_server("a-1", "http://10.0.0.9:7300")
            .await
            .unwrap();
        let within = std::time::Duration::from_secs(60);
        assert_eq!(
            store.servers(within).await.unwrap(),
            ["http://10.0.0.9:7300", "http://10.0.0.2:7300"]
        );
        store.forget_server("a-1").await.unwrap();
        assert_eq!(
            store.servers(within).await.unwrap(),
            ["http://10.0.0.2:7300"]
        );
    })
    .await;
}
