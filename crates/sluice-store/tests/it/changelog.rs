//! The change log and tokens: appended in the same transaction as the change.

use sluice_store::{ChangeQuery, NewChangeEvent, Role, Store};

use crate::each_store;

#[tokio::test]
async fn events_come_back_newest_first_and_filtered() {
    each_store(|store| async move {
        for (env, kind) in [
            ("dev", "deployment.succeeded"),
            ("prod", "deployment.succeeded"),
            ("prod", "promotion.approved"),
        ] {
            store
                .append_change(NewChangeEvent {
                    actor: "ana".into(),
                    kind: kind.into(),
                    service: Some("shop".into()),
                    environment: Some(env.into()),
                    subject: "release v1".into(),
                    summary: format!("{kind} in {env}"),
                    before: Some(serde_json::json!({"release": null})),
                    after: Some(serde_json::json!({"release": "v1"})),
                })
                .await
                .unwrap();
        }
        let prod = store
            .changes_log(&ChangeQuery {
                environment: Some("prod".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(prod.len(), 2);
        assert_eq!(prod[0].kind, "promotion.approved");
        assert_eq!(prod[0].after.as_deref(), Some(r#"{"release":"v1"}"#));
        let deploys = store
            .changes_log(&ChangeQuery {
                kind_prefix: Some("deployment.".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(deploys.len(), 2);
        let future = store
            .changes_log(&ChangeQuery {
                since_ms: Some(sluice_store::now_ms() + 60_000),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(future.is_empty());
    })
    .await;
}

#[tokio::test]
async fn tokens_keep_their_role_and_log_their_creation() {
    each_store(|store: Store| async move {
        store
            .insert_token(
                "abc",
                "ci-bot",
                Role::Developer,
                &["release-managers".to_string()],
                "$argon2id$fake",
                "admin",
            )
            .await
            .unwrap();
        let token = store.token("abc").await.unwrap();
        assert_eq!(token.role.0, Role::Developer);
        assert_eq!(store.count_tokens().await.unwrap(), 1);
        store.revoke_token("abc", "admin").await.unwrap();
        assert!(store.token("abc").await.unwrap().revoked_at.is_some());
        assert!(
            store.revoke_token("abc", "admin").await.is_err(),
            "revoking twice is refused"
        );
        let log = store.changes_log(&ChangeQuery::default()).await.unwrap();
        let kinds: Vec<_> = log.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["token.revoked", "token.created"]);
        assert!(
            !log[1].after.as_ref().unwrap().contains("argon2"),
            "no hash in the change log"
        );
    })
    .await;
}

#[tokio::test]
async fn migrations_run_once_per_database() {
    let dir = tempfile::tempdir().unwrap();
    for (_, url) in sluice_store::testing::database_urls(dir.path()).await {
        let first = Store::connect(&url).await.unwrap();
        first
            .append_change(NewChangeEvent {
                actor: "a".into(),
                kind: "k".into(),
                subject: "s".into(),
                summary: "x".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        first.close().await;
        let second = Store::connect(&url).await.unwrap();
        assert_eq!(
            second
                .changes_log(&ChangeQuery::default())
                .await
                .unwrap()
                .len(),
            1
        );
        second.close().await;
    }
}
