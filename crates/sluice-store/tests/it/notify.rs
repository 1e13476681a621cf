//! The outbox: each event becomes a notification for every channel a route
//! sends it to, in the event's own transaction; notifications become
//! messages once, and attempts are recorded.

use sluice_store::{
    AttemptResult, Flag, MessageStatus, NewChangeEvent, NewChannel, RouteRow, Store, now_ms,
};

use crate::each_store;

fn route(
    service: Option<&str>,
    kind: &str,
    prefix: bool,
    env: Option<&str>,
    channel: &str,
) -> RouteRow {
    RouteRow {
        service: service.map(String::from),
        kind: kind.into(),
        prefix: Flag(prefix),
        environment: env.map(String::from),
        channel: channel.into(),
    }
}

fn event(kind: &str, service: Option<&str>, env: Option<&str>) -> NewChangeEvent {
    NewChangeEvent {
        actor: "sluice".into(),
        kind: kind.into(),
        service: service.map(String::from),
        environment: env.map(String::from),
        subject: "deployment 1".into(),
        summary: format!("{kind} {service:?} {env:?}"),
        ..Default::default()
    }
}

async fn channel(store: &Store, name: &str, routes: Vec<RouteRow>) {
    let channel = NewChannel {
        name: name.into(),
        kind: "webhook".into(),
        target: "{}".into(),
        wait_ms: 0,
        interval_ms: 0,
        routes,
    };
    store.put_channel(channel, "admin").await.unwrap();
}

/// How many notifications each channel has waiting.
async fn waiting(store: &Store) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for u in store.unbatched().await.unwrap() {
        let n = store.unbatched_events(&u.channel, 100).await.unwrap().len();
        out.push((u.channel, n));
    }
    out.sort();
    out
}

#[tokio::test]
async fn routes_pick_events_by_kind_prefix_environment_and_service() {
    each_store(|store| async move {
        channel(
            &store,
            "everything",
            vec![route(None, "", true, None, "everything")],
        )
        .await;
        channel(
            &store,
            "prod-failures",
            vec![
                route(
                    None,
                    "deployment.failed",
                    false,
                    Some("prod"),
                    "prod-failures",
                ),
                route(None, "incident.", true, Some("prod"), "prod-failures"),
            ],
        )
        .await;
        store
            .set_service_routes(
                "shop",
                &[
                    route(None, "experiment.", true, None, "shop-team"),
                    // The same event twice for one channel is one notification.
                    route(None, "deployment.failed", false, None, "prod-failures"),
                ],
            )
            .await
            .unwrap();
        let none_yet = waiting(&store).await;
        // The two channel.added events went to `everything` only.
        assert_eq!(none_yet, [("everything".to_string(), 2)]);

        for e in [
            event("deployment.failed", Some("shop"), Some("prod")),
            event("deployment.failed", Some("cart"), Some("dev")),
            event("incident.opened", Some("cart"), Some("prod")),
            event("experiment.step", Some("shop"), Some("prod")),
            event("experiment.step", Some("cart"), Some("prod")),
            event("experiments.step", Some("shop"), Some("prod")),
            event("token.created", None, None),
        ] {
            store.append_change(e).await.unwrap();
        }
        assert_eq!(
            waiting(&store).await,
            [
                ("everything".to_string(), 9),
                ("prod-failures".to_string(), 2),
                ("shop-team".to_string(), 1),
            ]
        );
        let shop = store.unbatched_events("shop-team", 10).await.unwrap();
        assert_eq!(shop[0].1.kind, "experiment.step");
        assert_eq!(shop[0].1.service.as_deref(), Some("shop"));
    })
    .await;
}

#[tokio::test]
async fn a_notification_goes_into_one_message_and_every_attempt_is_kept() {
    each_store(|store| async move {
        channel(&store, "c", vec![route(None, "token.", true, None, "c")]).await;
        for _ in 0..3 {
            store
                .append_change(event("token.created", None, None))
                .await
                .unwrap();
        }
        let taken = store.unbatched_events("c", 50).await.unwrap();
        let ids: Vec<i64> = taken.iter().map(|(id, _)| *id).collect();
        let message = store
            .insert_message("c", "key-1", "{}", &ids)
            .await
            .unwrap()
            .unwrap();
        // Another worker that read the same notifications makes nothing.
        assert_eq!(
            store
                .insert_message("c", "key-2", "{}", &ids)
                .await
                .unwrap(),
            None
        );
        assert!(store.unbatched().await.unwrap().is_empty());
        assert_eq!(store.message_events(message).await.unwrap().len(), 3);

        let due = store.due_messages(now_ms(), 10).await.unwrap();
        assert_eq!(due.len(), 1);
        assert!(
            store
                .claim_message(&due[0], now_ms() + 30_000)
                .await
                .unwrap()
        );
        assert!(
            !store
                .claim_message(&due[0], now_ms() + 30_000)
                .await
                .unwrap(),
            "claimed once"
        );
        assert!(
            store.due_messages(now_ms(), 10).await.unwrap().is_empty(),
            "leased"
        );
        let failed = AttemptResult {
            http_status: Some(404),
            error: Some("answered 404".into()),
            status: MessageStatus::Failed,
            next_at: now_ms(),
        };
        store.record_attempt(message, &failed).await.unwrap();
        let shown = store.message(message).await.unwrap();
        assert_eq!((shown.status, shown.attempts), (MessageStatus::Failed, 1));
        assert_eq!(shown.last_error.as_deref(), Some("answered 404"));
        let retried = store.retry_message(message).await.unwrap();
        assert_eq!(retried.status, MessageStatus::Pending);
        assert!(
            store.retry_message(message).await.is_err(),
            "only a failed one"
        );
        assert_eq!(store.message_attempts(message).await.unwrap().len(), 1);
    })
    .await;
}
