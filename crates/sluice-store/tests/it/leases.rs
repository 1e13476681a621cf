//! Jobs on agents: a claim under a lease, renewals, a lease that runs out
//! and is offered again, and fencing of the claim that was taken over.

use std::collections::BTreeMap;

use sluice_store::{AgentHello, Expired, LeaseState, Store};

use crate::each_store;

async fn agent(store: &Store, name: &str, role: &str) -> sluice_store::Agent {
    let labels = BTreeMap::from([("role".to_string(), role.to_string())]);
    store
        .register_agent(AgentHello {
            name,
            token_id: &format!("token-{name}"),
            labels: &labels,
            cores: 2,
            memory_mb: 1024,
            version: "test",
            address: "",
            jobs: 1,
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn a_lease_taken_over_fences_its_old_holder() {
    each_store(|store| async move {
        let (a1, a2) = (
            agent(&store, "a1", "test").await,
            agent(&store, "a2", "test").await,
        );
        let wanted = BTreeMap::from([("role".to_string(), "test".to_string())]);
        assert!(a1.matches(&wanted) && a2.matches(&BTreeMap::new()));
        assert!(!agent(&store, "b", "build").await.matches(&wanted));
        store.offer_job(7, 1, &wanted, "{}", 1).await.unwrap();

        // a1 claims it; a2, a moment later with the same offer in hand, is too late.
        let offered = store.offered_jobs(10).await.unwrap().remove(0);
        assert_eq!(store.claim_job(&offered, &a1, -1).await.unwrap(), Some(1));
        assert_eq!(store.claim_job(&offered, &a2, 60_000).await.unwrap(), None);
        assert!(store.holds_lease(7, a1.id, 1).await.unwrap());

        // Its lease (already past) runs out: offered again, one retry spent.
        assert_eq!(
            store
                .expire_lease(7, 1, "lost: a1 was silent", "{}", true)
                .await
                .unwrap(),
            Some(Expired::OfferedAgain)
        );
        assert_eq!(
            store.expire_lease(7, 1, "again", "{}", true).await.unwrap(),
            None,
            "once"
        );
        assert_eq!(store.renew_lease(7, a1.id, 1, 60_000).await.unwrap(), None);

        let offered = store.offered_jobs(10).await.unwrap().remove(0);
        assert_eq!(
            store.claim_job(&offered, &a2, 60_000).await.unwrap(),
            Some(2)
        );
        assert_eq!(
            store.renew_lease(7, a2.id, 2, 60_000).await.unwrap(),
            Some(false)
        );
        assert_eq!(
            store
                .expire_lease(7, 2, "not yet", "{}", true)
                .await
                .unwrap(),
            None,
            "a renewed lease has not run out"
        );

        // a1 comes back with its old claim: refused; a2's end is taken.
        assert!(
            !store
                .finish_lease(7, a1.id, 1, "{\"late\":1}", None)
                .await
                .unwrap()
        );
        assert!(
            !store.finish_lease(7, a2.id, 1, "{}", None).await.unwrap(),
            "wrong claim"
        );
        assert!(
            store
                .finish_lease(7, a2.id, 2, "{\"ok\":1}", None)
                .await
                .unwrap()
        );
        let lease = store.job_lease(7).await.unwrap();
        assert_eq!(lease.state, LeaseState::Ended);
        assert_eq!(lease.outcome.as_deref(), Some("{\"ok\":1}"));
    })
    .await;
}

#[tokio::test]
async fn a_lease_that_runs_out_with_no_retry_left_ends_the_job_lost() {
    each_store(|store| async move {
        let a1 = agent(&store, "a1", "test").await;
        store
            .offer_job(8, 1, &BTreeMap::new(), "{}", 0)
            .await
            .unwrap();
        let offered = store.offered_jobs(10).await.unwrap().remove(0);
        store.claim_job(&offered, &a1, -1).await.unwrap();
        assert_eq!(
            store
                .expire_lease(8, 1, "lost", "{\"status\":\"lost\"}", true)
                .await
                .unwrap(),
            Some(Expired::Lost)
        );
        let lease = store.job_lease(8).await.unwrap();
        assert_eq!(lease.state, LeaseState::Ended);
        assert_eq!(lease.outcome.as_deref(), Some("{\"status\":\"lost\"}"));
        assert!(store.offered_jobs(10).await.unwrap().is_empty());

        // A cancelled job whose agent went silent is not offered again.
        store
            .offer_job(9, 1, &BTreeMap::new(), "{}", 3)
            .await
            .unwrap();
        let offered = store.offered_jobs(10).await.unwrap().remove(0);
        store.claim_job(&offered, &a1, -1).await.unwrap();
        assert_eq!(
            store.expire_lease(9, 1, "lost", "{}", false).await.unwrap(),
            Some(Expired::Lost)
        );
        assert!(store.offered_jobs(10).await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn an_agent_name_belongs_to_the_token_that_registered_it() {
    each_store(|store| async move {
        let first = agent(&store, "a1", "test").await;
        let again = agent(&store, "a1", "build").await;
        assert_eq!(first.id, again.id, "registering again updates the agent");
        assert_eq!(again.labels()["role"], "build");
        let taken = store
            .register_agent(AgentHello {
                name: "a1",
                token_id: "someone-else",
                labels: &BTreeMap::new(),
                cores: 1,
                memory_mb: 1,
                version: "test",
                address: "",
                jobs: 1,
            })
            .await
            .unwrap_err();
        assert!(
            taken.to_string().contains("registered with another token"),
            "{taken}"
        );
    })
    .await;
}
