//! The cost ledger: one row per request and one per stage it ran, committed before
//! the response leaves (a paid miss's row the moment its provider is paid, see
//! `charges`); plus what makes replicas act as one: the leases of cross-replica single
//! flight, budget reservations and request rates per key; and the queue of deferred
//! jobs (`jobs`), with the batches some of them are sent in to providers' batch APIs
//! (`upstream_batches`).
//! SQLite (WAL, synchronous=FULL) by default, PostgreSQL when several replicas share
//! one ledger; the same query code runs on both (see `backend`).
//!
//! It records and sums; it does not decide prices (the pipeline does) and does not
//! format reports for people (the binary does); [`Ledger::report`] and
//! [`Ledger::delivery`] sum rows for it, and [`project_delivery`] prices the stored
//! bytes' delivery (the money logic the server and the binary share). Entry point: [`Ledger::open`].

mod backend;
mod batches;
mod charges;
mod cost_report;
mod delivery;
mod delivery_projection;
mod jobs;
mod keys;
mod lease;
mod origin;
mod paid_sources;
mod price_books;
mod rate_limit;
mod reservations;
mod savings;
mod sqlite_writer;
mod status;
#[cfg(test)]
mod testing;
mod upstream_batches;
mod webhooks;
mod write_tx;
mod writer;

pub use backend::Backend;
pub use batches::{BatchCounts, BatchRow, FileRow};
pub use charges::{ChargeId, ChargeRow};
pub use cost_report::{
    parse_instant, CacheEconomics, Dimension, Report, ReportQuery, ReportRow, Totals,
};
pub use delivery::DeliveryRow;
pub use delivery_projection::{
    project_delivery, DeliveryAssumptions, DeliveryProjection, Side, VariantProjection, WhatIf,
    WhatIfKind,
};
pub use jobs::{Job, JobEnd, JobFilter, JobStatus, NewJob};
pub use keys::{ApiKeyRecord, KeyScope, NewApiKey, PresentedKey};
pub use origin::OriginRow;
pub use paid_sources::PaidSource;
pub use price_books::PublishedBook;
pub use reservations::{BudgetWindow, ReservationId, Reserve, SpendLimit, ANONYMOUS_BUCKET};
pub use savings::{DeferralSavings, DeliveryLever, SavingsByLever};
pub use status::RequestStatus;
pub use upstream_batches::{LineOutcome, UpstreamBatch, UpstreamLine, UpstreamStatus};
pub use webhooks::{WebhookAttempt, WebhookDelivery, WebhookNext, WebhookRecord, WebhookStatus};

use backend::{with_pool, Pool};
use chrono::{SecondsFormat, Utc};
use imagegate_core::{ContentKey, Micros, Stage, StageCost};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use std::fmt;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// `url` is redacted: it never holds a password.
    #[error("ledger url {url:?} is not supported: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("ledger database {url}: {source}")]
    Database {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("ledger migrations on {url}: {source}")]
    Migrate {
        url: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// A report query that cannot be answered as asked (the message says why).
    #[error("{0}")]
    BadReport(String),
    /// A value the ledger refuses to store (the message says why).
    #[error("{0}")]
    Invalid(String),
    /// SQLite refused the request rows (the ledger's writer writes them with its own
    /// connection, not through sqlx).
    #[error("ledger database {url}: {source}")]
    Write {
        url: String,
        #[source]
        source: rusqlite::Error,
    },
    /// The SQLite writer's connection or thread could not be started.
    #[error("ledger database {url}: {reason}")]
    WriterStart { url: String, reason: String },
    /// The task that commits request rows is gone (the runtime is shutting down).
    #[error("the ledger writer has stopped")]
    WriterStopped,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// `sqlite://path/to/ledger.db` (created if missing), or
    /// `postgres://user[:password]@host:port/database` (`postgresql://` too) for a fleet.
    pub url: String,
}

/// Shows the URL without its password.
impl fmt::Debug for LedgerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LedgerConfig")
            .field("url", &backend::redact(&self.url))
            .finish()
    }
}

/// How the cache answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CacheOutcome {
    /// This request ran the generation.
    Miss,
    /// Served from the cache; the cost is that of the hit.
    Hit,
    /// Generated without the cache (`"cache": "bypass"`).
    Bypass,
}

impl CacheOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Miss => "miss",
            CacheOutcome::Hit => "hit",
            CacheOutcome::Bypass => "bypass",
        }
    }
}

/// The request-level facts of one answered request.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub request_id: String,
    pub key: ContentKey,
    pub cache: CacheOutcome,
    pub status: RequestStatus,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub api_key: Option<String>,
    pub profile: String,
    pub wall_ms: f64,
}

/// A request row as [`Ledger::request_rows`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRow {
    pub key: ContentKey,
    pub cache: CacheOutcome,
    pub status: RequestStatus,
    pub micros: Micros,
}

/// Totals of one stage over some rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageTotal {
    pub stage: String,
    pub rows: i64,
    pub micros: Micros,
    pub wall_ms: f64,
    pub cpu_ms: f64,
    pub bytes_out: i64,
}

#[derive(Clone)]
pub struct Ledger {
    pool: Pool,
    writer: writer::Writer,
    /// Redacted: safe for errors and logs.
    url: String,
}

impl fmt::Debug for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ledger")
            .field("backend", &self.pool.kind())
            .field("url", &self.url)
            .finish()
    }
}

impl Ledger {
    /// Opens (creating a SQLite file if missing) and brings the schema up to date.
    pub async fn open(config: &LedgerConfig) -> Result<Ledger, LedgerError> {
        let url = backend::redact(&config.url);
        let pool = Pool::open(&config.url, &url).await?;
        let writer = writer::Writer::spawn(&pool).map_err(|e| write_error(&url, e))?;
        Ok(Ledger { pool, writer, url })
    }

    /// Which database holds this ledger.
    pub fn backend(&self) -> Backend {
        self.pool.kind()
    }

    fn db(&self, source: sqlx::Error) -> LedgerError {
        LedgerError::Database {
            url: self.url.clone(),
            source,
        }
    }

    /// Writes a request and its stages; returns the request row id. Once this returns
    /// the rows are durable (SQLite synchronous=FULL; PostgreSQL synchronous_commit at
    /// least `on`). Concurrent calls share one transaction (group commit, see
    /// [`writer`]), so a burst of cache hits costs one fsync, not one each.
    pub async fn record(
        &self,
        request: &RequestRecord,
        stages: &[StageCost],
    ) -> Result<i64, LedgerError> {
        self.writer
            .record(request.clone(), stages.to_vec())
            .await
            .map_err(|e| write_error(&self.url, e))
    }

    /// How many times `stage` ran for `key`: e.g. generations paid for one key.
    pub async fn stage_count(&self, key: ContentKey, stage: Stage) -> Result<i64, LedgerError> {
        with_pool!(&self.pool, p => {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM stages s JOIN requests r ON r.id = s.request \
                 WHERE r.content_key = $1 AND s.stage = $2",
            )
            .bind(key.to_hex())
            .bind(stage.as_str())
            .fetch_one(p)
            .await
        })
        .map_err(|e| self.db(e))
    }

    /// How many times a provider was paid for `key`: its generate stages that cost
    /// something or were paid at an unknown price (paid work reused by a retry is a
    /// generate stage that costs nothing).
    pub async fn paid_generations(&self, key: ContentKey) -> Result<i64, LedgerError> {
        with_pool!(&self.pool, p => {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM stages s JOIN requests r ON r.id = s.request \
                 WHERE r.content_key = $1 AND s.stage = $2 AND (s.micros > 0 OR s.unpriced = 1)",
            )
            .bind(key.to_hex())
            .bind(Stage::Generate.as_str())
            .fetch_one(p)
            .await
        })
        .map_err(|e| self.db(e))
    }

    /// The rows recorded for one request id (a request has one; a caller's retry
    /// with the same id has more), for audits and tests.
    pub async fn request_rows(&self, request_id: &str) -> Result<Vec<RequestRow>, LedgerError> {
        let rows: Vec<(String, String, String, i64)> = with_pool!(&self.pool, p => {
            sqlx::query_as(
                "SELECT content_key, cache, status, micros FROM requests \
                 WHERE request_id = $1 ORDER BY id",
            )
            .bind(request_id)
            .fetch_all(p)
            .await
        })
        .map_err(|e| self.db(e))?;
        rows.into_iter()
            .map(|(key, cache, status, micros)| {
                let bad =
                    |what: &str| LedgerError::Invalid(format!("request {request_id}: {what}"));
                Ok(RequestRow {
                    key: key.parse().map_err(|_| bad("bad content key"))?,
                    cache: match cache.as_str() {
                        "miss" => CacheOutcome::Miss,
                        "hit" => CacheOutcome::Hit,
                        "bypass" => CacheOutcome::Bypass,
                        other => return Err(bad(&format!("cache {other:?}"))),
                    },
                    status: RequestStatus::parse(&status)
                        .ok_or_else(|| bad(&format!("status {status:?}")))?,
                    micros: Micros(micros),
                })
            })
            .collect()
    }

    /// Requests answered for `key` with the given cache outcome.
    pub async fn request_count(
        &self,
        key: ContentKey,
        cache: CacheOutcome,
    ) -> Result<i64, LedgerError> {
        with_pool!(&self.pool, p => {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM requests WHERE content_key = $1 AND cache = $2",
            )
            .bind(key.to_hex())
            .bind(cache.as_str())
            .fetch_one(p)
            .await
        })
        .map_err(|e| self.db(e))
    }

    /// What requests made with `api_key` (None: anonymous) cost since `since`.
    pub async fn spent_since(
        &self,
        api_key: Option<&str>,
        since: chrono::DateTime<Utc>,
    ) -> Result<Micros, LedgerError> {
        let since = since.to_rfc3339_opts(SecondsFormat::Millis, true);
        let total: i64 = with_pool!(&self.pool, p => {
            sqlx::query_scalar(reservations::spent_sql(api_key))
                .bind(api_key)
                .bind(&since)
                .fetch_one(p)
                .await
        })
        .map_err(|e| self.db(e))?;
        Ok(Micros(total))
    }

    /// Per-stage totals over the whole ledger.
    pub async fn stage_totals(&self) -> Result<Vec<StageTotal>, LedgerError> {
        let sql = "SELECT stage, COUNT(*), CAST(SUM(micros) AS BIGINT), SUM(wall_ms), \
                   SUM(cpu_ms), CAST(SUM(bytes_out) AS BIGINT) \
                   FROM stages GROUP BY stage ORDER BY stage";
        with_pool!(&self.pool, p => {
            sqlx::query(sql).fetch_all(p).await.map(|rows| {
                rows.iter()
                    .map(|r| StageTotal {
                        stage: r.get(0),
                        rows: r.get(1),
                        micros: Micros(r.get(2)),
                        wall_ms: r.get(3),
                        cpu_ms: r.get(4),
                        bytes_out: r.get(5),
                    })
                    .collect()
            })
        })
        .map_err(|e| self.db(e))
    }

    /// For readiness probes.
    pub async fn ping(&self) -> Result<(), LedgerError> {
        with_pool!(&self.pool, p => sqlx::query("SELECT 1").execute(p).await.map(|_| ()))
            .map_err(|e| self.db(e))
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// `url` is the redacted one.
fn write_error(url: &str, e: writer::WriteError) -> LedgerError {
    let url = url.to_string();
    match e {
        writer::WriteError::Database(source) => LedgerError::Database { url, source },
        writer::WriteError::Sqlite(source) => LedgerError::Write { url, source },
        writer::WriteError::Start(reason) => LedgerError::WriterStart { url, reason },
        writer::WriteError::Stopped => LedgerError::WriterStopped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{on_both_backends, TestDb};
    use std::io::BufRead;

    on_both_backends!(
        records_survive_reopen_and_sum_exactly,
        records_survive_kill_9
    );

    fn key(n: u8) -> ContentKey {
        format!("{:02x}", n).repeat(32).parse().unwrap()
    }

    fn stage(stage: Stage, micros: i64) -> StageCost {
        let mut s = StageCost::new(stage);
        s.micros = Micros(micros);
        s.wall_ms = 1.5;
        s.detail = serde_json::json!({"n": 1});
        s
    }

    fn request(k: u8, cache: CacheOutcome) -> RequestRecord {
        RequestRecord {
            request_id: "r1".into(),
            key: key(k),
            cache,
            status: RequestStatus::Ok,
            provider: Some("local".into()),
            model: Some("procedural-v1".into()),
            api_key: None,
            profile: "default".into(),
            wall_ms: 10.0,
        }
    }

    async fn records_survive_reopen_and_sum_exactly(db: TestDb) {
        let ledger = db.open().await;
        let rec = request(1, CacheOutcome::Miss);
        ledger
            .record(
                &rec,
                &[stage(Stage::Generate, 40_000), stage(Stage::Encode, 12)],
            )
            .await
            .unwrap();
        ledger
            .record(
                &RequestRecord {
                    cache: CacheOutcome::Hit,
                    ..rec.clone()
                },
                &[stage(Stage::Cache, 0)],
            )
            .await
            .unwrap();
        ledger.close().await;

        let again = db.open().await;
        assert_eq!(again.stage_count(key(1), Stage::Generate).await.unwrap(), 1);
        assert_eq!(again.stage_count(key(2), Stage::Generate).await.unwrap(), 0);
        assert_eq!(
            again
                .request_count(key(1), CacheOutcome::Hit)
                .await
                .unwrap(),
            1
        );
        let day_ago = Utc::now() - chrono::Duration::days(1);
        assert_eq!(
            again.spent_since(None, day_ago).await.unwrap(),
            Micros(40_012)
        );
        assert_eq!(
            again.spent_since(Some("other"), day_ago).await.unwrap(),
            Micros::ZERO
        );
        let tomorrow = Utc::now() + chrono::Duration::days(1);
        assert_eq!(
            again.spent_since(None, tomorrow).await.unwrap(),
            Micros::ZERO
        );
        let totals = again.stage_totals().await.unwrap();
        let generate = totals.iter().find(|t| t.stage == "generate").unwrap();
        assert_eq!(generate.micros, Micros(40_000));
        let sum: Micros = totals.iter().map(|t| t.micros).sum();
        assert_eq!(sum, Micros(40_012));
        assert_eq!(
            totals.iter().map(|t| t.stage.as_str()).collect::<Vec<_>>(),
            ["cache", "encode", "generate"]
        );
        again.ping().await.unwrap();
        again.close().await;
    }

    const KILL_9_URL: &str = "IMAGEGATE_LEDGER_KILL_9_URL";

    /// The backend is a closed set whose names are what the configuration and logs say;
    /// only PostgreSQL is shared by a fleet (fleet-wide rate limits follow from it).
    #[tokio::test]
    async fn each_backend_names_itself_and_only_postgres_is_shared() {
        let sqlite = TestDb::sqlite().await.open().await;
        assert_eq!(sqlite.backend(), Backend::Sqlite);
        assert_eq!(sqlite.backend().as_str(), "sqlite");
        assert!(!sqlite.backend().is_shared());
        let postgres = TestDb::postgres().await.open().await;
        assert_eq!(postgres.backend(), Backend::Postgres);
        assert_eq!(postgres.backend().as_str(), "postgres");
        assert!(postgres.backend().is_shared());
    }

    /// What `records_survive_kill_9` runs in a child process: records forever, saying
    /// "committed" after each `record` returns, until it is killed.
    #[tokio::test]
    #[ignore = "the child process of records_survive_kill_9, not a test of its own"]
    async fn kill_9_child() {
        let url = std::env::var(KILL_9_URL).expect("started by records_survive_kill_9");
        let ledger = Ledger::open(&LedgerConfig { url }).await.unwrap();
        loop {
            ledger
                .record(
                    &request(7, CacheOutcome::Miss),
                    &[stage(Stage::Generate, 1), stage(Stage::Upload, 2)],
                )
                .await
                .unwrap();
            println!("committed");
        }
    }

    /// A `record` that returned is on disk: SIGKILL the process that made it, reopen,
    /// and every acknowledged record is there. (For PostgreSQL this kills the client;
    /// the server's own crash safety is its fsync and synchronous_commit.)
    async fn records_survive_kill_9(db: TestDb) {
        db.open().await.close().await; // migrate before the child starts
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "tests::kill_9_child", "--nocapture"])
            .env(KILL_9_URL, db.config().url)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let acknowledged = tokio::task::spawn_blocking(move || {
            let mut seen = 0;
            for line in std::io::BufReader::new(stdout).lines() {
                if line.unwrap() == "committed" {
                    seen += 1;
                    if seen == 25 {
                        break;
                    }
                }
            }
            seen
        })
        .await
        .unwrap();
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert_eq!(
            acknowledged, 25,
            "the child stopped before recording 25 rows"
        );

        let ledger = db.open().await;
        let kept = ledger
            .request_count(key(7), CacheOutcome::Miss)
            .await
            .unwrap();
        assert!(
            kept >= acknowledged,
            "{kept} of {acknowledged} records kept"
        );
        assert_eq!(
            ledger.stage_count(key(7), Stage::Generate).await.unwrap(),
            kept,
            "a request and its stages commit together"
        );
        ledger.close().await;
    }

    /// Durable before the response: a server or database default of
    /// synchronous_commit=off is undone for the ledger's sessions.
    #[tokio::test]
    async fn postgres_sessions_commit_synchronously() {
        let TestDb::Postgres(schema) = TestDb::postgres().await else {
            unreachable!()
        };
        let url = format!("{}&options=-c%20synchronous_commit%3Doff", schema.url());
        let ledger = Ledger::open(&LedgerConfig { url }).await.unwrap();
        let Pool::Postgres(pool) = &ledger.pool else {
            unreachable!()
        };
        let setting: String = sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(setting, "on");
        ledger.close().await;
        schema.drop_schema().await;
    }

    #[tokio::test]
    async fn unsupported_url_is_a_clear_error() {
        let err = Ledger::open(&LedgerConfig {
            url: "mysql://x".into(),
        })
        .await
        .err()
        .unwrap();
        assert!(err.to_string().contains("mysql://x"), "{err}");
    }

    #[tokio::test]
    async fn passwords_stay_out_of_errors_and_debug() {
        // Nothing listens on port 1: the connect fails and the error names the URL.
        let config = LedgerConfig {
            url: "postgres://ledger:hunter2@127.0.0.1:1/costs?password=hunter3".into(),
        };
        let err = Ledger::open(&config).await.err().unwrap();
        let shown = format!("{err} {err:?} {config:?}");
        assert!(shown.contains("127.0.0.1:1/costs"), "{shown}");
        assert!(!shown.contains("hunter"), "{shown}");
    }
}
