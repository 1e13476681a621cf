//! The store's behaviour, run against SQLite and (when `SLUICE_TEST_POSTGRES`
//! is set) a real PostgreSQL server.

mod changelog;
mod controllers;
mod experiment_commands;
mod experiment_users;
mod incidents;
mod leases;
mod notify;
mod placements;
mod promotions;
mod runs;
mod sessions;
mod traffic;

use sluice_store::Store;

/// Runs `check` once per database, each fresh.
pub async fn each_store<F, Fut>(check: F)
where
    F: Fn(Store) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    for (name, url) in sluice_store::testing::database_urls(dir.path()).await {
        eprintln!("-- against {name}");
        let store = Store::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("connect {name}: {e}"));
        check(store.clone()).await;
        store.close().await;
    }
}

#[tokio::test]
async fn a_database_that_cannot_be_written_is_refused_at_connect() {
    let dir = tempfile::tempdir().unwrap();
    let url = Store::sqlite_url(dir.path());
    Store::connect(&url).await.unwrap().close().await;
    let read_only = url.replace("mode=rwc", "mode=ro");
    let error = match Store::connect(&read_only).await {
        Ok(_) => panic!("a read-only database was taken as healthy"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("the database cannot be written"), "{error}");
}
