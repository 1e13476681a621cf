//! Promotions as the gatekeeper and the API read them.

use sluice_store::PromotionStatus;

use crate::each_store;
use crate::runs::{change, repo};

/// A list of promotions carries each one's own approvals (read in one
/// query for the whole list), newest first, open ones only when asked.
#[tokio::test]
async fn promotions_are_listed_with_their_own_approvals() {
    each_store(|store| async move {
        let repo = repo(&store).await;
        let run = store
            .insert_change(change(repo.id, "main", &"1".repeat(40)))
            .await
            .unwrap()
            .unwrap();
        let release = store
            .create_release("shop", &run, &"a".repeat(64), "service: shop")
            .await
            .unwrap();
        let mut asked = Vec::new();
        for (service, env) in [("shop", "dev"), ("cart", "dev"), ("shop", "prod")] {
            asked.push(
                store
                    .insert_promotion(service, env, &release, "ana")
                    .await
                    .unwrap(),
            );
        }
        store.add_approval(&asked[0], "bo").await.unwrap();
        store.add_approval(&asked[2], "cy").await.unwrap();
        store.add_approval(&asked[2], "di").await.unwrap();
        store
            .set_promotion_status(asked[0].id, PromotionStatus::Done, None, None, "sluice")
            .await
            .unwrap();
        let approvers = |p: &sluice_store::Promotion| -> (String, Vec<String>) {
            let names = p.approvals.iter().map(|a| a.approver.clone()).collect();
            (p.environment.clone(), names)
        };
        let shop: Vec<_> = store
            .promotions(Some("shop"), false, 10)
            .await
            .unwrap()
            .iter()
            .map(approvers)
            .collect();
        assert_eq!(
            shop,
            [
                ("prod".to_string(), vec!["cy".to_string(), "di".to_string()]),
                ("dev".to_string(), vec!["bo".to_string()]),
            ]
        );
        let open: Vec<i64> = store
            .promotions(None, true, 10)
            .await
            .unwrap()
            .iter()
            .map(|p| p.id)
            .collect();
        assert_eq!(open, [asked[2].id, asked[1].id]);
        assert!(
            store
                .promotions(Some("none"), false, 10)
                .await
                .unwrap()
                .is_empty()
        );
    })
    .await;
}
