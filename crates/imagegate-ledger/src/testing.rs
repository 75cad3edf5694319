//! Test support: every ledger test body runs once on SQLite and once on PostgreSQL.

use crate::backend::with_pool;
use crate::{Ledger, LedgerConfig, NewJob, RequestRecord};
use imagegate_core::{ContentKey, Micros, StageCost};
use imagegate_testkit::postgres::TestSchema;

/// Content key `n` (`nn` repeated), for fixtures.
pub(crate) fn key(n: u8) -> ContentKey {
    format!("{n:02x}")
        .repeat(32)
        .parse()
        .expect("64 hex digits")
}

/// A job for key `n`, due now and by a day from now, quoted 4 cents live and 2 at its
/// planned moment, anonymous and outside any batch; tests override what they are
/// about with struct update syntax.
pub(crate) fn new_job(n: u8) -> NewJob {
    let now = chrono::Utc::now();
    NewJob {
        api_key: None,
        content_key: key(n),
        request: format!(r#"{{"prompt":"job {n}"}}"#),
        deliver_by: now + chrono::Duration::hours(24),
        run_after: now,
        live_micros: Some(Micros(40_000)),
        planned_micros: Some(Micros(20_000)),
        batch: None,
        custom_id: None,
        webhook_url: None,
    }
}

/// A fresh, empty database on one backend, removed when dropped.
pub(crate) enum TestDb {
    Sqlite(tempfile::TempDir),
    Postgres(TestSchema),
}

impl TestDb {
    pub(crate) async fn sqlite() -> TestDb {
        TestDb::Sqlite(tempfile::tempdir().expect("temp dir"))
    }

    pub(crate) async fn postgres() -> TestDb {
        TestDb::Postgres(TestSchema::create().await)
    }

    pub(crate) fn config(&self) -> LedgerConfig {
        LedgerConfig {
            url: match self {
                TestDb::Sqlite(dir) => format!("sqlite://{}/sub/ledger.db", dir.path().display()),
                TestDb::Postgres(schema) => schema.url().to_string(),
            },
        }
    }

    /// A ledger on this database; open it twice for two replicas.
    pub(crate) async fn open(&self) -> Ledger {
        Ledger::open(&self.config()).await.expect("ledger opens")
    }
}

/// Records a request at a fixed time (the ledger stamps "now"); `at` is RFC 3339 with
/// milliseconds, as the ledger writes it.
pub(crate) async fn record_at(
    ledger: &Ledger,
    at: &str,
    request: &RequestRecord,
    stages: &[StageCost],
) {
    let id = ledger.record(request, stages).await.expect("record");
    for sql in [
        "UPDATE requests SET created_at = $1 WHERE id = $2",
        "UPDATE stages SET created_at = $1 WHERE request = $2",
    ] {
        with_pool!(&ledger.pool, p => {
            sqlx::query(sql).bind(at).bind(id).execute(p).await.map(|_| ())
        })
        .expect("fixture statement");
    }
}

/// `on_both_backends!(test_a, test_b)` turns each `async fn test_a(db: TestDb)` into the
/// tests `sqlite::test_a` and `postgres::test_a`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::testing::TestDb::sqlite().await).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::testing::TestDb::postgres().await).await
                }
            )*
        }
    };
}
pub(crate) use on_both_backends;
