//! Throwaway PostgreSQL schemas on the machine's real PostgreSQL server.
//!
//! [`TestSchema::create`] makes a uniquely named schema on `IMAGEGATE_TEST_PG_URL`
//! (default [`DEFAULT_URL`]) and hands back a URL whose connections use it, through
//! the `options=-c search_path=<schema>` startup parameter; tables created without a
//! schema name land there. The schema is dropped (CASCADE) by
//! [`TestSchema::drop_schema`] or, failing that, when the value is dropped. A server
//! that cannot be reached is a panic that says so, never a skip.

use sqlx::{Connection, Executor, PgConnection};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The environment variable naming the server (any database on it will do).
pub const URL_ENV: &str = "IMAGEGATE_TEST_PG_URL";
/// The machine's PostgreSQL: trust authentication, database `test`.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A schema of its own for one test. Hold it for as long as the test uses the URL.
#[derive(Debug)]
pub struct TestSchema {
    server: String,
    name: String,
    url: String,
    dropped: bool,
}

impl TestSchema {
    /// Creates a fresh schema; panics, naming the server, when PostgreSQL is not there.
    pub async fn create() -> TestSchema {
        let server = server_url();
        let name = unique_name();
        let mut conn = connect(&server).await;
        conn.execute(format!("CREATE SCHEMA \"{name}\"").as_str())
            .await
            .unwrap_or_else(|e| panic!("creating schema {name} on {}: {e}", shown(&server)));
        let _ = conn.close().await;
        let sep = if server.contains('?') { '&' } else { '?' };
        let url = format!("{server}{sep}options=-c%20search_path%3D{name}");
        TestSchema {
            server,
            name,
            url,
            dropped: false,
        }
    }

    /// A URL (`postgres://…?options=…`) whose connections see only this schema.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The schema's name (lower-case letters, digits and `_`; no quoting needed).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Drops the schema and everything in it. Close pools on [`url`](Self::url) first:
    /// a connection still inside a transaction holds locks the drop must wait for.
    pub async fn drop_schema(mut self) {
        self.dropped = true;
        if let Err(e) = drop_schema(&self.server, &self.name).await {
            panic!(
                "dropping schema {} on {}: {e}",
                self.name,
                shown(&self.server)
            );
        }
    }
}

impl Drop for TestSchema {
    /// Drop cannot await and may run inside a runtime (where `block_on` would panic),
    /// so the drop runs on a thread of its own with its own small runtime. It reports
    /// instead of panicking: this may run while a failed test is already unwinding.
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let (server, name) = (self.server.clone(), self.name.clone());
        let outcome = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime
                .block_on(drop_schema(&server, &name))
                .map_err(|e| e.to_string())
        })
        .join();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!(
                "imagegate-testkit: could not drop schema {} on {}: {e}",
                self.name,
                shown(&self.server)
            ),
            Err(_) => eprintln!("imagegate-testkit: dropping schema {} panicked", self.name),
        }
    }
}

async fn drop_schema(server: &str, name: &str) -> Result<(), sqlx::Error> {
    let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(server))
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)??;
    // A leaked connection in a transaction would otherwise make the drop wait forever.
    conn.execute("SET lock_timeout = '10s'").await?;
    conn.execute(format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE").as_str())
        .await?;
    conn.close().await
}

fn server_url() -> String {
    std::env::var(URL_ENV)
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_URL.to_string())
}

async fn connect(server: &str) -> PgConnection {
    let unreachable = |why: String| -> ! {
        panic!(
            "PostgreSQL at {} is unreachable: {why}. These tests need the machine's \
             PostgreSQL service running (e.g. `sudo service postgresql start`), or {URL_ENV} \
             set to a server that is.",
            shown(server)
        )
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(server)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => unreachable(e.to_string()),
        Err(_) => unreachable(format!("no answer within {CONNECT_TIMEOUT:?}")),
    }
}

/// Unique across concurrent test processes and tests: pid, a per-process counter and
/// the clock.
fn unique_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("imagegate_test_{}_{n}_{nanos}", std::process::id())
}

/// The server URL without its password, for messages.
fn shown(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn count(admin: &mut PgConnection, name: String) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM pg_namespace WHERE nspname = $1")
            .bind(name)
            .fetch_one(admin)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn connections_on_the_url_use_the_schema_and_it_is_dropped() {
        let schema = TestSchema::create().await;
        let name = schema.name().to_string();
        let mut conn = PgConnection::connect(schema.url()).await.unwrap();
        let current: String = sqlx::query_scalar("SELECT current_schema()")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(current, name);
        conn.execute("CREATE TABLE t (x INT)").await.unwrap();
        conn.close().await.unwrap();

        let mut admin = PgConnection::connect(&server_url()).await.unwrap();
        assert_eq!(count(&mut admin, name.clone()).await, 1);
        schema.drop_schema().await;
        assert_eq!(count(&mut admin, name.clone()).await, 0);

        // Dropped from Drop too, inside a (current-thread) runtime.
        let schema = TestSchema::create().await;
        let name = schema.name().to_string();
        drop(schema);
        assert_eq!(count(&mut admin, name).await, 0);
    }

    #[test]
    fn messages_hide_the_password() {
        assert_eq!(
            shown("postgres://u:secret@h:5432/test"),
            "postgres://u:***@h:5432/test"
        );
        assert_eq!(shown(DEFAULT_URL), DEFAULT_URL);
    }
}
