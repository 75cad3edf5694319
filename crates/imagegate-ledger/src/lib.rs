//! The cost ledger: one row per request and one per stage it ran, committed before
//! the response leaves. SQLite (WAL, synchronous=FULL) by default.
//!
//! It records and sums; it does not decide prices (the pipeline does) and does not
//! format reports for people (the binary does); [`Ledger::report`] sums rows for it.
//! Entry point: [`Ledger::open`].

mod report;

pub use report::{
    parse_instant, CacheEconomics, Dimension, Report, ReportQuery, ReportRow, Totals,
};

use chrono::{SecondsFormat, Utc};
use imagegate_core::{ContentKey, Micros, Stage, StageCost};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// `sqlite://path/to/ledger.db` (created if missing).
    pub url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheOutcome {
    Miss,
    Hit,
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
    pub status: String,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub api_key: Option<String>,
    pub profile: String,
    pub wall_ms: f64,
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
    pool: SqlitePool,
    url: String,
}

impl Ledger {
    pub async fn open(config: &LedgerConfig) -> Result<Ledger, LedgerError> {
        let url = config.url.clone();
        let path = url
            .strip_prefix("sqlite://")
            .ok_or_else(|| LedgerError::BadUrl {
                url: url.clone(),
                reason: "expected sqlite://PATH".into(),
            })?;
        if let Some(parent) = std::path::Path::new(path)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent).map_err(|e| LedgerError::Database {
                url: url.clone(),
                source: sqlx::Error::Io(e),
            })?;
        }
        let db = |source| LedgerError::Database {
            url: url.clone(),
            source,
        };
        let options = SqliteConnectOptions::from_str(&url)
            .map_err(db)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk before the response that reports it leaves.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(db)?;
        sqlx::migrate!("migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|source| LedgerError::Migrate {
                url: url.clone(),
                source,
            })?;
        Ok(Ledger { pool, url })
    }

    fn db(&self, source: sqlx::Error) -> LedgerError {
        LedgerError::Database {
            url: self.url.clone(),
            source,
        }
    }

    /// Writes a request and its stages in one transaction; returns the request row id.
    pub async fn record(
        &self,
        request: &RequestRecord,
        stages: &[StageCost],
    ) -> Result<i64, LedgerError> {
        let now = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
        let total: Micros = stages.iter().map(|s| s.micros).sum();
        let mut tx = self.pool.begin().await.map_err(|e| self.db(e))?;
        let row = sqlx::query(
            "INSERT INTO requests (request_id, content_key, cache, status, provider, model, api_key, \
             profile, micros, wall_ms, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(&request.request_id)
        .bind(request.key.to_hex())
        .bind(request.cache.as_str())
        .bind(&request.status)
        .bind(&request.provider)
        .bind(&request.model)
        .bind(&request.api_key)
        .bind(&request.profile)
        .bind(total.0)
        .bind(request.wall_ms)
        .bind(&now)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| self.db(e))?;
        let id: i64 = row.get(0);
        for s in stages {
            sqlx::query(
                "INSERT INTO stages (request, stage, micros, wall_ms, cpu_ms, bytes_in, bytes_out, detail, \
                 created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(id)
            .bind(s.stage.as_str())
            .bind(s.micros.0)
            .bind(s.wall_ms)
            .bind(s.cpu_ms)
            .bind(saturating_i64(s.bytes_in))
            .bind(saturating_i64(s.bytes_out))
            .bind(s.detail.to_string())
            .bind(&now)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.db(e))?;
        }
        tx.commit().await.map_err(|e| self.db(e))?;
        Ok(id)
    }

    /// How many times `stage` ran for `key`: e.g. generations paid for one key.
    pub async fn stage_count(&self, key: ContentKey, stage: Stage) -> Result<i64, LedgerError> {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM stages s JOIN requests r ON r.id = s.request \
             WHERE r.content_key = ? AND s.stage = ?",
        )
        .bind(key.to_hex())
        .bind(stage.as_str())
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.db(e))
    }

    /// Requests answered for `key` with the given cache outcome.
    pub async fn request_count(
        &self,
        key: ContentKey,
        cache: CacheOutcome,
    ) -> Result<i64, LedgerError> {
        sqlx::query_scalar("SELECT COUNT(*) FROM requests WHERE content_key = ? AND cache = ?")
            .bind(key.to_hex())
            .bind(cache.as_str())
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.db(e))
    }

    /// What requests made with `api_key` (None: anonymous) cost since `since`.
    pub async fn spent_since(
        &self,
        api_key: Option<&str>,
        since: chrono::DateTime<Utc>,
    ) -> Result<Micros, LedgerError> {
        let total: Option<i64> = sqlx::query_scalar(
            "SELECT SUM(micros) FROM requests WHERE api_key IS ? AND created_at >= ?",
        )
        .bind(api_key)
        .bind(since.to_rfc3339_opts(SecondsFormat::Millis, true))
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.db(e))?;
        Ok(Micros(total.unwrap_or(0)))
    }

    /// Per-stage totals over the whole ledger.
    pub async fn stage_totals(&self) -> Result<Vec<StageTotal>, LedgerError> {
        let rows = sqlx::query(
            "SELECT stage, COUNT(*), SUM(micros), SUM(wall_ms), SUM(cpu_ms), SUM(bytes_out) \
             FROM stages GROUP BY stage ORDER BY stage",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.db(e))?;
        Ok(rows
            .iter()
            .map(|r| StageTotal {
                stage: r.get(0),
                rows: r.get(1),
                micros: Micros(r.get(2)),
                wall_ms: r.get(3),
                cpu_ms: r.get(4),
                bytes_out: r.get(5),
            })
            .collect())
    }

    /// For readiness probes.
    pub async fn ping(&self) -> Result<(), LedgerError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|e| self.db(e))
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[tokio::test]
    async fn records_survive_reopen_and_sum_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let config = LedgerConfig {
            url: format!("sqlite://{}/sub/ledger.db", dir.path().display()),
        };
        let ledger = Ledger::open(&config).await.unwrap();
        let rec = RequestRecord {
            request_id: "r1".into(),
            key: key(1),
            cache: CacheOutcome::Miss,
            status: "ok".into(),
            provider: Some("local".into()),
            model: Some("procedural-v1".into()),
            api_key: None,
            profile: "default".into(),
            wall_ms: 10.0,
        };
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

        let again = Ledger::open(&config).await.unwrap();
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
}
