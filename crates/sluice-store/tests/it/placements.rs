//! Instances on agents' hosts: the server places them, an agent's report
//! says what runs, a stop asked for ends with the agent's next report
//! without the instance, and a late report brings nothing back.

use sluice_store::Reported;

use crate::each_store;

fn running(id: &str, pid: i64) -> Reported {
    Reported {
        instance_id: id.into(),
        pid: Some(pid),
        exits: 0,
    }
}

#[tokio::test]
async fn an_agent_runs_what_is_placed_on_it_until_it_is_asked_to_stop() {
    each_store(|store| async move {
        store
            .place("shop.prod-v1-1", "web-1", "{\"a\":1}")
            .await
            .unwrap();
        store.place("shop.prod-v1-2", "web-2", "{}").await.unwrap();

        // Each agent is told what is its own.
        let wanted = store.take_report("web-1", &[]).await.unwrap();
        let ids: Vec<&str> = wanted.iter().map(|p| p.instance_id.as_str()).collect();
        assert_eq!(ids, ["shop.prod-v1-1"]);
        assert_eq!(wanted[0].spec, "{\"a\":1}");

        // Its report records the process.
        store
            .take_report("web-1", &[running("shop.prod-v1-1", 41)])
            .await
            .unwrap();
        let placed = store.placement("shop.prod-v1-1").await.unwrap().unwrap();
        assert_eq!((placed.running, placed.pid), (1, Some(41)));

        // Asked to stop: no longer among what it is to run; gone once the
        // agent reports it no longer runs.
        store.ask_stop("shop.prod-v1-1").await.unwrap();
        let wanted = store
            .take_report("web-1", &[running("shop.prod-v1-1", 41)])
            .await
            .unwrap();
        assert!(wanted.is_empty());
        assert!(store.placement("shop.prod-v1-1").await.unwrap().is_some());
        store.take_report("web-1", &[]).await.unwrap();
        assert!(store.placement("shop.prod-v1-1").await.unwrap().is_none());

        // A late report of it changes nothing and brings it back to no one.
        let wanted = store
            .take_report("web-1", &[running("shop.prod-v1-1", 41)])
            .await
            .unwrap();
        assert!(wanted.is_empty());
        assert!(store.placement("shop.prod-v1-1").await.unwrap().is_none());
        // Nor does another agent's report touch web-2's.
        assert_eq!(store.placements(Some("web-2")).await.unwrap().len(), 1);
    })
    .await;
}
