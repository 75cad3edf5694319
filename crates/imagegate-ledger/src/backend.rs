//! The two databases the ledger runs on, and the one place that tells them apart.
//!
//! Why an enum over the two concrete pools and not `sqlx::Any`: `Any` decodes only a
//! small common set of types (no NUMERIC, no chrono), needs a process-global driver
//! registry, and builds SQLite connections from a URL, so WAL, `synchronous=FULL` and
//! the busy timeout would have to be re-applied by hand-written pragmas. With the enum,
//! [`with_pool!`] expands the same query text once per backend: each driver encodes and
//! decodes its own native types, SQLite keeps its typed connect options, and the few
//! real differences (migrations, the clock) are explicit `match`es below.
//!
//! Portable SQL rules the queries follow: `$N` placeholders (SQLite accepts them too),
//! `IS NOT DISTINCT FROM` instead of `IS`, `CAST(SUM(..) AS BIGINT)` because PostgreSQL
//! sums BIGINT into NUMERIC, `CASE WHEN .. THEN 1 ELSE 0 END` instead of summing
//! booleans, explicit `NULLS FIRST` (the two disagree on the default).

use crate::LedgerError;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Executor, PgPool, SqlitePool};
use std::str::FromStr;
use std::time::Duration;

#[derive(Clone)]
pub(crate) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Evaluates `$body` with `$p` bound to the concrete pool of either backend. The body
/// is written once and compiled once per backend, so it must type-check on both.
macro_rules! with_pool {
    ($pool:expr, $p:ident => $body:expr) => {
        match $pool {
            $crate::backend::Pool::Sqlite($p) => $body,
            $crate::backend::Pool::Postgres($p) => $body,
        }
    };
}
pub(crate) use with_pool;

/// How long a caller waits for a connection (or for PostgreSQL to answer a connect)
/// before the ledger reports an error instead of hanging the request.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a SQLite connection waits for another's write lock before it fails.
pub(crate) const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

impl Pool {
    /// Opens and migrates. `url` is the caller's; `shown` is its redacted form, the only
    /// one that may reach an error message.
    pub(crate) async fn open(url: &str, shown: &str) -> Result<Pool, LedgerError> {
        let db = |source| LedgerError::Database {
            url: shown.to_string(),
            source,
        };
        let migrate = |source| LedgerError::Migrate {
            url: shown.to_string(),
            source,
        };
        if let Some(path) = url.strip_prefix("sqlite://") {
            if let Some(parent) = std::path::Path::new(path)
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
            {
                std::fs::create_dir_all(parent).map_err(|e| db(sqlx::Error::Io(e)))?;
            }
            let options = SqliteConnectOptions::from_str(url)
                .map_err(db)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // FULL: a commit is on disk before the response that reports it leaves.
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(SQLITE_BUSY_TIMEOUT)
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(options)
                .await
                .map_err(db)?;
            sqlx::migrate!("migrations/sqlite")
                .run(&pool)
                .await
                .map_err(migrate)?;
            Ok(Pool::Sqlite(pool))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url).map_err(db)?;
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                // A commit must be durable before the response that reports it leaves:
                // undo a server or database default of synchronous_commit=off for our
                // sessions, and leave any stronger setting (remote_apply, …) alone.
                .after_connect(|conn, _meta| {
                    Box::pin(async move {
                        conn.execute(
                            "SELECT set_config('synchronous_commit', 'on', false) \
                             WHERE current_setting('synchronous_commit') = 'off'",
                        )
                        .await
                        .map(|_| ())
                    })
                })
                .connect_with(options)
                .await
                .map_err(db)?;
            sqlx::migrate!("migrations/postgres")
                .run(&pool)
                .await
                .map_err(migrate)?;
            Ok(Pool::Postgres(pool))
        } else {
            Err(LedgerError::BadUrl {
                url: shown.to_string(),
                reason: "expected sqlite://PATH or postgres://USER@HOST:PORT/DATABASE".into(),
            })
        }
    }

    pub(crate) fn kind(&self) -> Backend {
        match self {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// The database's clock as integer milliseconds since the Unix epoch, as an SQL
    /// expression. Leases are judged by this one clock that every replica shares.
    pub(crate) fn now_ms_sql(&self) -> &'static str {
        match self {
            // julianday, not unixepoch('subsec'): it exists in every SQLite version.
            Pool::Sqlite(_) => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
            // clock_timestamp, not now(): the time of the statement, not of a transaction.
            Pool::Postgres(_) => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        }
    }

    pub(crate) async fn close(&self) {
        with_pool!(self, p => p.close().await)
    }
}

/// `url` with any password replaced by `***`: the userinfo password of
/// `scheme://user:password@host/…` and a `password=` query parameter.
pub(crate) fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let (head, rest) = url.split_at(scheme_end);
    // The authority ends at the first '/', '?' or '#' after its last '@'; looking for
    // the '@' first keeps an unescaped '/' in a password from leaking the rest of it.
    let before_query = &rest[..rest.find(['?', '#']).unwrap_or(rest.len())];
    let host_start = before_query.rfind('@').unwrap_or(0);
    let authority_end = rest[host_start..]
        .find(['/', '?', '#'])
        .map_or(rest.len(), |i| host_start + i);
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = authority.split_at(at);
            match userinfo.split_once(':') {
                Some((user, _password)) => format!("{user}:***{host}"),
                None => authority.to_string(),
            }
        }
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, Some(f)),
                None => (query, None),
            };
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => pair.to_string(),
                })
                .collect();
            let mut out = format!("{path}?{}", query.join("&"));
            if let Some(f) = fragment {
                out.push('#');
                out.push_str(f);
            }
            out
        }
        None => tail.to_string(),
    };
    format!("{head}{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_redacted_and_the_rest_kept() {
        assert_eq!(
            redact("postgres://ledger:s3cr%40t@db.internal:5432/costs?sslmode=require"),
            "postgres://ledger:***@db.internal:5432/costs?sslmode=require"
        );
        assert_eq!(
            redact("postgresql://db/costs?user=ledger&password=hunter2&application_name=x"),
            "postgresql://db/costs?user=ledger&password=***&application_name=x"
        );
        assert_eq!(
            redact("postgres://ledger@db/costs"),
            "postgres://ledger@db/costs"
        );
        assert_eq!(
            redact("sqlite:///var/lib/imagegate/ledger.db"),
            "sqlite:///var/lib/imagegate/ledger.db"
        );
        assert_eq!(redact("not a url"), "not a url");
        // A password containing '@' or ':' is still hidden whole.
        assert_eq!(redact("postgres://u:a:b@c@h/d"), "postgres://u:***@h/d");
        assert_eq!(redact("postgres://u:a/b@h/d"), "postgres://u:***@h/d");
    }
}

/// The closed set of ledger databases. A PostgreSQL ledger may be shared by a fleet
/// of replicas; a SQLite one belongs to one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    /// Whether other replicas may share this ledger (and with it budgets and rate
    /// limits).
    pub fn is_shared(self) -> bool {
        self == Backend::Postgres
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
