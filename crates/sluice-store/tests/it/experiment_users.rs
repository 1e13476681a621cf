//! An experiment's users are kept by upsert, read back whole, and forgotten.

use sluice_store::ExperimentUser;

use crate::each_store;

fn user(id: i64, b: i64, reached: i64, totals: &str) -> ExperimentUser {
    ExperimentUser {
        user_id: id,
        b,
        share_b: 0.5,
        reached,
        totals: totals.into(),
    }
}

#[tokio::test]
async fn an_experiment_s_users_are_kept_replaced_and_forgotten() {
    each_store(|store| async move {
        // The full range of a 64-bit user number, stored as signed.
        let (low, high) = (i64::MIN, i64::MAX);
        store
            .save_experiment_users(7, &[user(low, 0, 0, "[]"), user(high, 1, 1, "[]")])
            .await
            .unwrap();
        store
            .save_experiment_users(7, &[user(high, 1, 3, "[[1,19.5]]")])
            .await
            .unwrap();
        store
            .save_experiment_users(8, &[user(1, 0, 0, "[]")])
            .await
            .unwrap();
        let mut kept = store.experiment_users(7).await.unwrap();
        kept.sort_by_key(|u| u.user_id);
        assert_eq!(
            kept,
            vec![user(low, 0, 0, "[]"), user(high, 1, 3, "[[1,19.5]]")]
        );
        store.forget_experiment_users(7).await.unwrap();
        assert!(store.experiment_users(7).await.unwrap().is_empty());
        assert_eq!(
            store.experiment_users(8).await.unwrap().len(),
            1,
            "another experiment's stay"
        );
    })
    .await;
}
