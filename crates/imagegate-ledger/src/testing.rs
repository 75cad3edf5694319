//! Test support: every ledger test body runs once on SQLite and once on PostgreSQL.

use crate::backend::with_pool;
use crate::{Ledger, LedgerConfig, RequestRecord};
use imagegate_core::StageCost;
use imagegate_testkit::postgres::TestSchema;

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
