//! Traffic buckets add up when flushed in parts and are read by range.

use sluice_store::{TRAFFIC_BUCKET_MS, TrafficBucket};

use crate::each_store;

fn bucket(env: &str, at: i64, a: (i64, i64), b: (i64, i64)) -> TrafficBucket {
    TrafficBucket {
        service: "shop".into(),
        environment: env.into(),
        bucket: at,
        a_requests: a.0,
        a_errors: a.1,
        b_requests: b.0,
        b_errors: b.1,
    }
}

#[tokio::test]
async fn traffic_buckets_add_up_and_are_read_by_range() {
    each_store(|store| async move {
        let t = 1_700_000_000_000;
        store
            .add_traffic(&[
                bucket("prod", t, (100, 1), (5, 0)),
                bucket("prod", t + TRAFFIC_BUCKET_MS, (90, 0), (10, 4)),
                bucket("dev", t, (7, 0), (0, 0)),
            ])
            .await
            .unwrap();
        // The same bucket again, as after a restart in its middle: it sums up.
        store
            .add_traffic(&[bucket("prod", t, (20, 2), (1, 1))])
            .await
            .unwrap();
        let prod = store
            .traffic("shop", "prod", t, t + TRAFFIC_BUCKET_MS)
            .await
            .unwrap();
        assert_eq!(
            prod,
            vec![
                bucket("prod", t, (120, 3), (6, 1)),
                bucket("prod", t + TRAFFIC_BUCKET_MS, (90, 0), (10, 4)),
            ]
        );
        let later = store
            .traffic("shop", "prod", t + 1, i64::MAX)
            .await
            .unwrap();
        assert_eq!(later.len(), 1, "from a time on");
        assert_eq!(store.forget_traffic_before(t + 1).await.unwrap(), 2);
        assert_eq!(
            store.traffic("shop", "dev", 0, i64::MAX).await.unwrap(),
            vec![]
        );
    })
    .await;
}
