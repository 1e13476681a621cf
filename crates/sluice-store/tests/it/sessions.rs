//! Dashboard sessions: found by their digest until they expire or end.

use crate::each_store;

#[tokio::test]
async fn a_session_is_found_until_it_expires_or_ends() {
    each_store(|store| async move {
        store
            .open_session("d1", "tok1", "csrf1", 60_000)
            .await
            .unwrap();
        store.open_session("d2", "tok1", "csrf2", -1).await.unwrap();
        let found = store.session("d1").await.unwrap().unwrap();
        assert_eq!(
            (found.token_id.as_str(), found.csrf.as_str()),
            ("tok1", "csrf1")
        );
        assert_eq!(store.session("d2").await.unwrap(), None, "expired");
        assert_eq!(store.session("nobody").await.unwrap(), None);
        store.close_session("d1").await.unwrap();
        assert_eq!(store.session("d1").await.unwrap(), None, "ended");
        store
            .open_session("d3", "tok2", "csrf3", 60_000)
            .await
            .unwrap();
        assert!(store.session("d3").await.unwrap().is_some());
    })
    .await;
}
