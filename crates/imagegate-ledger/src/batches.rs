//! The OpenAI Batch API's records: uploaded files, batches, and the files a batch
//! outputs. A batch's lines are deferred jobs (`jobs`, with the batch's id and each
//! line's `custom_id`); its counts and its move to a final status are read from
//! them. Output files hold no bytes: they are written out from the jobs on request.

use crate::backend::with_pool;
use crate::jobs::new_id;
use crate::{Ledger, LedgerError};
use chrono::{DateTime, Utc};
use sqlx::Row;

/// A file as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRow {
    pub id: String,
    pub api_key: Option<String>,
    pub purpose: String,
    pub filename: String,
    pub bytes: i64,
    /// None for a batch's output and error files.
    pub content: Option<Vec<u8>>,
    pub batch: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A batch as stored; timestamps are Unix seconds, as OpenAI's are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRow {
    pub id: String,
    pub api_key: Option<String>,
    pub endpoint: String,
    pub input_file_id: String,
    pub completion_window: String,
    pub status: String,
    pub metadata: Option<String>,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub errors: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub in_progress_at: Option<i64>,
    pub finalizing_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub failed_at: Option<i64>,
    pub expired_at: Option<i64>,
    pub cancelling_at: Option<i64>,
    pub cancelled_at: Option<i64>,
}

/// How a batch's lines stand.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchCounts {
    pub total: i64,
    pub succeeded: i64,
    /// Failed, expired or cancelled.
    pub failed: i64,
    pub pending: i64,
    pub running: i64,
    pub expired: i64,
}

const FILE_COLUMNS: &str = "id, api_key, purpose, filename, bytes, content, batch, created_at";
const BATCH_COLUMNS: &str = "id, api_key, endpoint, input_file_id, completion_window, status, \
     metadata, output_file_id, error_file_id, errors, created_at, expires_at, in_progress_at, \
     finalizing_at, completed_at, failed_at, expired_at, cancelling_at, cancelled_at";

macro_rules! file_of_row {
    ($r:expr) => {{
        let r = $r;
        FileRow {
            id: r.try_get(0)?,
            api_key: r.try_get(1)?,
            purpose: r.try_get(2)?,
            filename: r.try_get(3)?,
            bytes: r.try_get(4)?,
            content: r.try_get(5)?,
            batch: r.try_get(6)?,
            created_at: DateTime::from_timestamp_millis(r.try_get(7)?)
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
        }
    }};
}

macro_rules! batch_of_row {
    ($r:expr) => {{
        let r = $r;
        let secs = |ms: Option<i64>| ms.map(|ms| ms.div_euclid(1000));
        BatchRow {
            id: r.try_get(0)?,
            api_key: r.try_get(1)?,
            endpoint: r.try_get(2)?,
            input_file_id: r.try_get(3)?,
            completion_window: r.try_get(4)?,
            status: r.try_get(5)?,
            metadata: r.try_get(6)?,
            output_file_id: r.try_get(7)?,
            error_file_id: r.try_get(8)?,
            errors: r.try_get(9)?,
            created_at: r.try_get::<i64, _>(10)?.div_euclid(1000),
            expires_at: r.try_get::<i64, _>(11)?.div_euclid(1000),
            in_progress_at: secs(r.try_get(12)?),
            finalizing_at: secs(r.try_get(13)?),
            completed_at: secs(r.try_get(14)?),
            failed_at: secs(r.try_get(15)?),
            expired_at: secs(r.try_get(16)?),
            cancelling_at: secs(r.try_get(17)?),
            cancelled_at: secs(r.try_get(18)?),
        }
    }};
}

/// The timestamp column that goes with a batch status, if any.
fn stamp_column(status: &str) -> Option<&'static str> {
    Some(match status {
        "in_progress" => "in_progress_at",
        "finalizing" => "finalizing_at",
        "completed" => "completed_at",
        "failed" => "failed_at",
        "expired" => "expired_at",
        "cancelling" => "cancelling_at",
        "cancelled" => "cancelled_at",
        _ => return None,
    })
}

impl Ledger {
    /// Stores a file: an upload (`content`), or a batch's output (none: made from
    /// its jobs on request).
    pub async fn create_file(
        &self,
        api_key: Option<&str>,
        purpose: &str,
        filename: &str,
        bytes: i64,
        content: Option<&[u8]>,
        batch: Option<&str>,
    ) -> Result<FileRow, LedgerError> {
        let id = new_id("file-");
        let now = self.pool.now_ms_sql();
        let sql = format!(
            "INSERT INTO files (id, api_key, purpose, filename, bytes, content, batch, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, {now})"
        );
        with_pool!(&self.pool, p => {
            sqlx::query(&sql)
                .bind(&id)
                .bind(api_key)
                .bind(purpose)
                .bind(filename)
                .bind(bytes)
                .bind(content)
                .bind(batch)
                .execute(p)
                .await
                .map(|_| ())
        })
        .map_err(|e| self.db(e))?;
        self.file(&id)
            .await?
            .ok_or_else(|| LedgerError::Invalid(format!("file {id} vanished after its insert")))
    }

    pub async fn file(&self, id: &str) -> Result<Option<FileRow>, LedgerError> {
        let sql = format!("SELECT {FILE_COLUMNS} FROM files WHERE id = $1");
        with_pool!(&self.pool, p => {
            match sqlx::query(&sql).bind(id).fetch_optional(p).await {
                Ok(Some(r)) => (|| Ok(Some(file_of_row!(&r))))(),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .map_err(|e| self.db(e))
    }

    /// Creates a batch in `status` (`in_progress`, or `failed` with `errors` when its
    /// input did not validate), expiring at `expires_at`.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_batch(
        &self,
        id: &str,
        api_key: Option<&str>,
        endpoint: &str,
        input_file_id: &str,
        completion_window: &str,
        status: &str,
        metadata: Option<&str>,
        errors: Option<&str>,
        expires_at: DateTime<Utc>,
    ) -> Result<BatchRow, LedgerError> {
        let now = self.pool.now_ms_sql();
        let stamp = stamp_column(status)
            .map(|c| format!(", {c}"))
            .unwrap_or_default();
        let stamp_value = if stamp.is_empty() {
            String::new()
        } else {
            format!(", {now}")
        };
        let sql = format!(
            "INSERT INTO batches (id, api_key, endpoint, input_file_id, completion_window, status, \
             metadata, errors, created_at, expires_at{stamp}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, {now}, $9{stamp_value})"
        );
        with_pool!(&self.pool, p => {
            sqlx::query(&sql)
                .bind(id)
                .bind(api_key)
                .bind(endpoint)
                .bind(input_file_id)
                .bind(completion_window)
                .bind(status)
                .bind(metadata)
                .bind(errors)
                .bind(expires_at.timestamp_millis())
                .execute(p)
                .await
                .map(|_| ())
        })
        .map_err(|e| self.db(e))?;
        self.batch(id)
            .await?
            .ok_or_else(|| LedgerError::Invalid(format!("batch {id} vanished after its insert")))
    }

    /// A new batch id (the batch's jobs are queued under it before the batch row).
    pub fn new_batch_id() -> String {
        new_id("batch_")
    }

    pub async fn batch(&self, id: &str) -> Result<Option<BatchRow>, LedgerError> {
        let sql = format!("SELECT {BATCH_COLUMNS} FROM batches WHERE id = $1");
        with_pool!(&self.pool, p => {
            match sqlx::query(&sql).bind(id).fetch_optional(p).await {
                Ok(Some(r)) => (|| Ok(Some(batch_of_row!(&r))))(),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .map_err(|e| self.db(e))
    }

    /// Batches, newest first: one owner's (`Some(None)`: the anonymous caller's) or
    /// everyone's.
    pub async fn batches(
        &self,
        owner: Option<Option<&str>>,
        limit: u32,
    ) -> Result<Vec<BatchRow>, LedgerError> {
        let filter = if owner.is_some() {
            "WHERE api_key IS NOT DISTINCT FROM $1"
        } else {
            "WHERE $1 IS NULL OR 1 = 1"
        };
        let sql = format!(
            "SELECT {BATCH_COLUMNS} FROM batches {filter} ORDER BY created_at DESC, id LIMIT {}",
            limit.clamp(1, 1000)
        );
        let owner = owner.flatten();
        with_pool!(&self.pool, p => {
            match sqlx::query(&sql).bind(owner).fetch_all(p).await {
                Ok(rows) => rows.iter().map(|r| Ok(batch_of_row!(r))).collect(),
                Err(e) => Err(e),
            }
        })
        .map_err(|e| self.db(e))
    }

    /// Moves a batch from `from` to `to` (stamping `to`'s time), with its output and
    /// error files; false when it was no longer in `from` (another replica moved it).
    pub async fn move_batch(
        &self,
        id: &str,
        from: &str,
        to: &str,
        output_file_id: Option<&str>,
        error_file_id: Option<&str>,
    ) -> Result<bool, LedgerError> {
        let now = self.pool.now_ms_sql();
        let stamp = stamp_column(to)
            .map(|c| format!(", {c} = {now}"))
            .unwrap_or_default();
        let sql = format!(
            "UPDATE batches SET status = $3, \
             output_file_id = COALESCE($4, output_file_id), \
             error_file_id = COALESCE($5, error_file_id){stamp} \
             WHERE id = $1 AND status = $2"
        );
        let done = with_pool!(&self.pool, p => {
            sqlx::query(&sql)
                .bind(id)
                .bind(from)
                .bind(to)
                .bind(output_file_id)
                .bind(error_file_id)
                .execute(p)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(|e| self.db(e))?;
        Ok(done == 1)
    }

    /// Fails batches whose validation began more than `older_than` ago and never
    /// finished (the server validating them died mid-way, leaving some lines queued
    /// and the rest unread), and cancels their queued lines: the caller submits the
    /// batch again instead of waiting on one that will never complete. Returns the
    /// ids it failed.
    pub async fn fail_interrupted_batches(
        &self,
        older_than: std::time::Duration,
    ) -> Result<Vec<String>, LedgerError> {
        let now = self.pool.now_ms_sql();
        let errors = serde_json::json!({"object": "list", "data": [{
            "code": "validation_interrupted",
            "message": "the server validating this batch stopped before it finished; submit it again",
            "line": null, "param": null,
        }]})
        .to_string();
        let fail = format!(
            "UPDATE batches SET status = 'failed', failed_at = {now}, errors = $2 \
             WHERE status = 'validating' AND created_at <= {now} - $1 RETURNING id"
        );
        let cancel = format!(
            "UPDATE jobs SET status = 'cancelled', finished_at = {now}, \
             error_code = 'batch_failed', \
             error = 'the batch failed before this request ran (its validation was interrupted)' \
             WHERE batch = $1 AND status = 'queued'"
        );
        let older_ms = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX / 4);
        let failed: Vec<String> = with_pool!(&self.pool, p => {
            sqlx::query_scalar(&fail)
                .bind(older_ms)
                .bind(&errors)
                .fetch_all(p)
                .await
        })
        .map_err(|e| self.db(e))?;
        for id in &failed {
            with_pool!(&self.pool, p => {
                sqlx::query(&cancel).bind(id).execute(p).await.map(|_| ())
            })
            .map_err(|e| self.db(e))?;
        }
        Ok(failed)
    }

    /// How a batch's lines stand.
    pub async fn batch_counts(&self, batch: &str) -> Result<BatchCounts, LedgerError> {
        let rows: Vec<(String, i64)> = with_pool!(&self.pool, p => {
            sqlx::query_as("SELECT status, COUNT(*) FROM jobs WHERE batch = $1 GROUP BY status")
                .bind(batch)
                .fetch_all(p)
                .await
        })
        .map_err(|e| self.db(e))?;
        let mut c = BatchCounts::default();
        for (status, n) in rows {
            c.total += n;
            match status.as_str() {
                "succeeded" => c.succeeded += n,
                "queued" => c.pending += n,
                "running" => {
                    c.pending += n;
                    c.running += n;
                }
                "expired" => {
                    c.failed += n;
                    c.expired += n;
                }
                _ => c.failed += n,
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, on_both_backends, TestDb};
    use crate::{JobEnd, JobStatus, NewJob};
    use imagegate_core::Micros;

    on_both_backends!(
        files_and_batches_are_kept_and_move_once,
        a_batch_whose_validation_was_interrupted_fails_and_its_lines_are_cancelled,
    );

    async fn a_batch_whose_validation_was_interrupted_fails_and_its_lines_are_cancelled(
        db: TestDb,
    ) {
        let ledger = db.open().await;
        let expires = Utc::now() + chrono::Duration::hours(24);
        for (id, status) in [("batch_stuck", "validating"), ("batch_ok", "in_progress")] {
            ledger
                .create_batch(
                    id,
                    Some("k"),
                    "/v1/images/generations",
                    "file-1",
                    "24h",
                    status,
                    None,
                    None,
                    expires,
                )
                .await
                .unwrap();
        }
        let line = |batch: &str| NewJob {
            api_key: Some("k".into()),
            deliver_by: expires,
            run_after: Utc::now() + chrono::Duration::hours(1),
            batch: Some(batch.into()),
            custom_id: Some("a".into()),
            ..testing::new_job(0xab)
        };
        let (stuck_line, _) = ledger.enqueue_job(&line("batch_stuck")).await.unwrap();
        let (ok_line, _) = ledger.enqueue_job(&line("batch_ok")).await.unwrap();
        // A validation still within its time is left alone.
        let hour = std::time::Duration::from_secs(3600);
        assert!(ledger
            .fail_interrupted_batches(hour)
            .await
            .unwrap()
            .is_empty());
        let failed = ledger
            .fail_interrupted_batches(std::time::Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(failed, vec!["batch_stuck".to_string()]);
        let batch = ledger.batch("batch_stuck").await.unwrap().unwrap();
        assert_eq!(batch.status, "failed");
        assert!(batch.errors.unwrap().contains("validation_interrupted"));
        let job = ledger.job(&stuck_line.id).await.unwrap().unwrap();
        assert_eq!(job.status, JobStatus::Cancelled);
        assert_eq!(job.error_code.as_deref(), Some("batch_failed"));
        assert_eq!(
            ledger.job(&ok_line.id).await.unwrap().unwrap().status,
            JobStatus::Queued
        );
    }

    async fn files_and_batches_are_kept_and_move_once(db: TestDb) {
        let ledger = db.open().await;
        let input = b"{\"custom_id\":\"a\"}\n";
        let file = ledger
            .create_file(
                Some("k"),
                "batch",
                "in.jsonl",
                input.len() as i64,
                Some(input),
                None,
            )
            .await
            .unwrap();
        assert!(file.id.starts_with("file-"));
        assert_eq!(
            ledger
                .file(&file.id)
                .await
                .unwrap()
                .unwrap()
                .content
                .unwrap(),
            input
        );
        let id = Ledger::new_batch_id();
        let expires = Utc::now() + chrono::Duration::hours(24);
        let batch = ledger
            .create_batch(
                &id,
                Some("k"),
                "/v1/images/generations",
                &file.id,
                "24h",
                "in_progress",
                Some("{}"),
                None,
                expires,
            )
            .await
            .unwrap();
        assert_eq!(batch.status, "in_progress");
        assert!(batch.in_progress_at.is_some());
        assert_eq!(batch.expires_at, expires.timestamp());
        let job = NewJob {
            api_key: Some("k".into()),
            content_key: "ab".repeat(32).parse().unwrap(),
            request: "{}".into(),
            deliver_by: expires,
            run_after: Utc::now(),
            live_micros: Some(Micros(1)),
            planned_micros: Some(Micros(1)),
            batch: Some(id.clone()),
            custom_id: Some("a".into()),
            webhook_url: None,
        };
        ledger.enqueue_job(&job).await.unwrap();
        ledger.enqueue_job(&job).await.unwrap();
        let c = ledger.batch_counts(&id).await.unwrap();
        assert_eq!((c.total, c.pending, c.succeeded), (2, 2, 0));
        let claimed = ledger
            .claim_jobs("w", 1, std::time::Duration::from_secs(60), Utc::now())
            .await
            .unwrap();
        ledger
            .finish_job(&claimed[0].id, "w", &JobEnd::Succeeded)
            .await
            .unwrap();
        ledger.cancel_batch_jobs(&id).await.unwrap();
        let c = ledger.batch_counts(&id).await.unwrap();
        assert_eq!((c.total, c.pending, c.succeeded, c.failed), (2, 0, 1, 1));

        let out = ledger
            .create_file(Some("k"), "batch_output", "out.jsonl", 0, None, Some(&id))
            .await
            .unwrap();
        assert!(ledger
            .move_batch(&id, "in_progress", "completed", Some(&out.id), None)
            .await
            .unwrap());
        assert!(!ledger
            .move_batch(&id, "in_progress", "completed", None, None)
            .await
            .unwrap());
        let done = ledger.batch(&id).await.unwrap().unwrap();
        assert_eq!(done.status, "completed");
        assert_eq!(done.output_file_id.as_deref(), Some(out.id.as_str()));
        assert!(done.completed_at.is_some());
        assert_eq!(ledger.batches(Some(Some("k")), 10).await.unwrap().len(), 1);
        assert_eq!(
            ledger.batches(Some(Some("other")), 10).await.unwrap().len(),
            0
        );
        assert_eq!(ledger.batches(None, 10).await.unwrap().len(), 1);
    }
}
