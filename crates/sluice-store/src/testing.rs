//! Databases for tests: a SQLite file in a given directory, and a fresh
//! database on the PostgreSQL server named by `SLUICE_TEST_POSTGRES`.

use std::path::Path;

use sqlx::{AssertSqlSafe, Connection, Executor};

/// The URLs a test should run against: SQLite always, PostgreSQL when
/// `SLUICE_TEST_POSTGRES` is set (CI always sets it).
pub async fn database_urls(dir: &Path) -> Vec<(&'static str, String)> {
    let mut urls = vec![("sqlite", crate::Store::sqlite_url(dir))];
    if let Some(url) = fresh_postgres(dir).await {
        urls.push(("postgres", url));
    }
    urls
}

/// Creates an empty database on the test server and returns its URL.
pub async fn fresh_postgres(dir: &Path) -> Option<String> {
    let admin = std::env::var("SLUICE_TEST_POSTGRES")
        .ok()
        .filter(|u| !u.is_empty())?;
    sqlx::any::install_default_drivers();
    let name = format!(
        "sluice_test_{}_{}",
        std::process::id(),
        dir.file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default()
    )
    .replace(|c: char| !c.is_ascii_alphanumeric() && c != '_', "_");
    let mut conn = sqlx::AnyConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("SLUICE_TEST_POSTGRES={admin} is set but unreachable: {e}"));
    conn.execute(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}")))
        .await
        .ok();
    conn.execute(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .expect("create test database");
    let base = admin
        .rsplit_once('/')
        .map_or(admin.as_str(), |(base, _)| base);
    Some(format!("{base}/{name}"))
}
