//! Throwaway PostgreSQL databases for tests: each [`TestDatabase`] is a new database
//! with a random name on the server named by `AOS_TEST_POSTGRES_URL`, dropped (with
//! its connections) when the test is done, so test runs never see each other's rows.
//!
//! Public (not `cfg(test)`) so the end-to-end test crate can start kernels on one.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection};

/// The variable naming the admin URL: a database the test user may connect to, as a
/// user allowed to `CREATE DATABASE`.
pub const ADMIN_URL_VAR: &str = "AOS_TEST_POSTGRES_URL";

/// The admin URL when [`ADMIN_URL_VAR`] is unset.
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// How long creating or dropping a test database may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A fresh, empty database; dropped with [`TestDatabase::drop_database`] or, failing
/// that, when the value is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    /// URL of the new database, for [`super::PgStore::open`] or a kernel's config.
    pub url: String,
    /// Its name (`aos_t_<16 hex digits>`).
    pub name: String,
    admin_url: String,
    dropped: bool,
}

/// The admin URL tests use: [`ADMIN_URL_VAR`] or [`DEFAULT_ADMIN_URL`].
pub fn admin_url() -> String {
    std::env::var(ADMIN_URL_VAR)
        .ok()
        .filter(|url| !url.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_ADMIN_URL.to_owned())
}

impl TestDatabase {
    /// Creates `aos_t_<random hex>` on the server of [`admin_url`]. Fails with a message
    /// naming the URL and [`ADMIN_URL_VAR`] when PostgreSQL cannot be reached: tests
    /// that need PostgreSQL fail rather than skip.
    pub async fn create() -> Result<TestDatabase, String> {
        let admin_url = admin_url();
        let mut bytes = [0u8; 8];
        rand::fill(&mut bytes);
        let name = format!("aos_t_{}", hex::encode(bytes));
        let mut admin = connect_admin(&admin_url).await?;
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .map_err(|e| {
                format!(
                    "cannot create test database `{name}` as {}: {e}; the user of \
                     {ADMIN_URL_VAR} needs the CREATEDB privilege",
                    super::redact_url(&admin_url)
                )
            })?;
        let _ = admin.close().await;
        Ok(TestDatabase {
            url: with_database(&admin_url, &name),
            name,
            admin_url,
            dropped: false,
        })
    }

    /// Drops the database, ending every connection still open on it.
    pub async fn drop_database(mut self) -> Result<(), String> {
        self.dropped = true;
        drop_named(&self.admin_url, &self.name).await
    }
}

impl Drop for TestDatabase {
    /// A fallback for tests that did not call [`TestDatabase::drop_database`] (or that
    /// panicked): drops the database from a short-lived thread with its own runtime,
    /// since `Drop` cannot await, and waits for it so nothing outlives the test.
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let dropper = std::thread::Builder::new()
            .name(format!("drop {name}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot start a runtime to drop `{name}`: {e}"))?;
                runtime.block_on(drop_named(&admin_url, &name))
            });
        let outcome = match dropper {
            Ok(thread) => thread
                .join()
                .unwrap_or_else(|_| Err("the thread dropping it panicked".into())),
            Err(e) => Err(format!("cannot start a thread to drop it: {e}")),
        };
        if let Err(message) = outcome {
            eprintln!("test database `{}` was not dropped: {message}", self.name);
        }
    }
}

async fn connect_admin(admin_url: &str) -> Result<PgConnection, String> {
    let unreachable = |e: &dyn std::fmt::Display| {
        format!(
            "cannot reach PostgreSQL for tests at {}: {e}. Start PostgreSQL there, or set \
             {ADMIN_URL_VAR} to the URL of a database whose user may CREATE DATABASE \
             (default {DEFAULT_ADMIN_URL})",
            super::redact_url(admin_url)
        )
    };
    let options: PgConnectOptions = admin_url.parse().map_err(|e| unreachable(&e))?;
    tokio::time::timeout(CONNECT_TIMEOUT, options.connect())
        .await
        .map_err(|_| unreachable(&"timed out connecting"))?
        .map_err(|e| unreachable(&e))
}

async fn drop_named(admin_url: &str, name: &str) -> Result<(), String> {
    let mut admin = connect_admin(admin_url).await?;
    sqlx::query(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .map_err(|e| format!("cannot drop test database `{name}`: {e}"))?;
    let _ = admin.close().await;
    Ok(())
}

/// `url` with its database (the path) replaced by `name`, keeping any query string.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_name_replaces_the_path_and_keeps_options() {
        assert_eq!(
            with_database("postgres://u@h:5432/test", "aos_t_1"),
            "postgres://u@h:5432/aos_t_1"
        );
        assert_eq!(
            with_database("postgresql://u:p@h/test?sslmode=disable", "x"),
            "postgresql://u:p@h/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
    }

    #[tokio::test]
    async fn a_test_database_is_created_empty_and_dropped() {
        let db = TestDatabase::create()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut connection = PgConnection::connect(&db.url).await.unwrap();
        let tables: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
        )
        .fetch_one(&mut connection)
        .await
        .unwrap();
        assert_eq!(tables, 0);
        let name = db.name.clone();
        // The open connection does not keep the database alive.
        db.drop_database().await.unwrap();
        let mut admin = connect_admin(&admin_url()).await.unwrap();
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .unwrap();
        assert_eq!(left, 0);
        drop(connection);
    }

    #[tokio::test]
    async fn a_forgotten_test_database_is_dropped_with_its_value() {
        let db = TestDatabase::create()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let name = db.name.clone();
        drop(db);
        let mut admin = connect_admin(&admin_url()).await.unwrap();
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .unwrap();
        assert_eq!(left, 0);
    }
}
