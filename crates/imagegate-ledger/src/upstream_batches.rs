//! Deferred jobs sent to a provider's batch API. A job planned for one
//! ([`Ledger::enqueue_upstream_job`]) waits like any other, but only the upstream
//! worker takes it: it opens an upstream batch over the due jobs of one provider and
//! model ([`Ledger::open_upstream_batch`], one transaction: the batch row, its lines,
//! the jobs running under the batch's id as their lease holder until their deadline),
//! submits it, and records the provider's id at once ([`Ledger::upstream_submitted`]).
//! From then on any replica can resume polling it under the batch's own lease
//! ([`Ledger::claim_upstream_batches`]); nothing is submitted twice.
//!
//! When the batch ends, each line's charge is recorded the moment it is read
//! ([`Ledger::charge_upstream_line`], the request row `in_progress` with its generate
//! stage, and the line's pointer to it, in one transaction): a restart after that
//! reuses the charge instead of recording it again. Lines without a result go back to
//! the live queue ([`Ledger::release_upstream_job`]).

use crate::backend::{with_pool, Pool};
use crate::charges::ChargeId;
use crate::jobs::new_id;
use crate::write_tx::BeginWrite;
use crate::{Job, Ledger, LedgerError, NewJob, RequestRecord, RequestStatus};
use chrono::{DateTime, SecondsFormat, Utc};
use imagegate_core::StageCost;
use sqlx::Row;
use std::fmt;
use std::time::Duration;

/// Where an upstream batch is. `Submitting` and `Submitted` are open; the rest final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamStatus {
    /// Recorded, its lines attached; the provider may or may not have it yet.
    Submitting,
    /// The provider accepted it (its id is recorded); polled until it ends.
    Submitted,
    Completed,
    /// The provider's completion window ran out; finished lines had results.
    Expired,
    Cancelled,
    /// Refused or failed upstream as a whole, or never submitted.
    Failed,
}

impl UpstreamStatus {
    pub const ALL: [UpstreamStatus; 6] = [
        UpstreamStatus::Submitting,
        UpstreamStatus::Submitted,
        UpstreamStatus::Completed,
        UpstreamStatus::Expired,
        UpstreamStatus::Cancelled,
        UpstreamStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamStatus::Submitting => "submitting",
            UpstreamStatus::Submitted => "submitted",
            UpstreamStatus::Completed => "completed",
            UpstreamStatus::Expired => "expired",
            UpstreamStatus::Cancelled => "cancelled",
            UpstreamStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<UpstreamStatus> {
        UpstreamStatus::ALL.into_iter().find(|v| v.as_str() == s)
    }

    pub fn is_open(self) -> bool {
        matches!(self, UpstreamStatus::Submitting | UpstreamStatus::Submitted)
    }
}

impl fmt::Display for UpstreamStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An upstream batch as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamBatch {
    /// Ours (`ub_…`): the tag sent upstream, and the lease holder of its jobs.
    pub id: String,
    pub provider: String,
    pub model: String,
    pub upstream_id: Option<String>,
    pub input_file_id: Option<String>,
    pub status: UpstreamStatus,
    pub upstream_status: Option<String>,
    pub error: Option<String>,
    pub lines: i64,
    pub created_at: DateTime<Utc>,
    pub submitted_at: Option<DateTime<Utc>>,
    pub polled_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// One job of an upstream batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamLine {
    /// The job's id, which is also the line's `custom_id` upstream.
    pub job: String,
    /// The line's charge, once its result was read.
    pub charge: Option<ChargeId>,
    pub outcome: Option<LineOutcome>,
}

/// What a line came to upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineOutcome {
    /// An image came back (and was charged).
    Generated,
    /// The provider answered the line with an error.
    Failed,
    /// The batch ended without a result for it (expired, cancelled, failed).
    Missing,
}

impl LineOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            LineOutcome::Generated => "generated",
            LineOutcome::Failed => "failed",
            LineOutcome::Missing => "missing",
        }
    }

    fn parse(s: &str) -> Option<LineOutcome> {
        [
            LineOutcome::Generated,
            LineOutcome::Failed,
            LineOutcome::Missing,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

const COLUMNS: &str = "id, provider, model, upstream_id, input_file_id, status, \
     upstream_status, error, lines, created_at, submitted_at, polled_at, finished_at";

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 4)
}

macro_rules! batch_of_row {
    ($r:expr) => {{
        let r = $r;
        let id: String = r.try_get(0)?;
        let status: String = r.try_get(5)?;
        UpstreamBatch {
            status: UpstreamStatus::parse(&status).ok_or_else(|| {
                sqlx::Error::Decode(format!("upstream batch {id}: status {status:?}").into())
            })?,
            provider: r.try_get(1)?,
            model: r.try_get(2)?,
            upstream_id: r.try_get(3)?,
            input_file_id: r.try_get(4)?,
            upstream_status: r.try_get(6)?,
            error: r.try_get(7)?,
            lines: r.try_get(8)?,
            created_at: at(r.try_get(9)?),
            submitted_at: r.try_get::<Option<i64>, _>(10)?.map(at),
            polled_at: r.try_get::<Option<i64>, _>(11)?.map(at),
            finished_at: r.try_get::<Option<i64>, _>(12)?.map(at),
            id,
        }
    }};
}

impl Ledger {
    /// Queues a job planned for `provider`'s batch API for `model`; otherwise as
    /// [`Ledger::enqueue_job`] (an identical pending job is returned instead).
    pub async fn enqueue_upstream_job(
        &self,
        job: &NewJob,
        provider: &str,
        model: &str,
    ) -> Result<(Job, bool), LedgerError> {
        self.enqueue(job, Some((provider, model))).await
    }

    /// The provider and model a job is planned for upstream, if it is.
    pub async fn job_upstream(&self, job: &str) -> Result<Option<(String, String)>, LedgerError> {
        let row: Option<(Option<String>, Option<String>)> = with_pool!(&self.pool, p => {
            sqlx::query_as("SELECT upstream_provider, upstream_model FROM jobs WHERE id = $1")
                .bind(job)
                .fetch_optional(p)
                .await
        })
        .map_err(|e| self.db(e))?;
        Ok(row.and_then(|(p, m)| Some((p?, m?))))
    }

    /// The provider/model pairs with upstream-planned jobs due at `now`.
    pub async fn due_upstream_groups(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, String)>, LedgerError> {
        with_pool!(&self.pool, p => {
            sqlx::query_as(
                "SELECT DISTINCT upstream_provider, upstream_model FROM jobs \
                 WHERE status = 'queued' AND upstream_provider IS NOT NULL \
                 AND upstream_model IS NOT NULL AND run_after <= $1 AND deliver_by > $1 \
                 ORDER BY upstream_provider, upstream_model",
            )
            .bind(now.timestamp_millis())
            .fetch_all(p)
            .await
        })
        .map_err(|e| self.db(e))
    }

    /// Opens an upstream batch over at most `limit` due jobs of `provider`/`model`,
    /// held by `holder` for `ttl`: the batch row (`submitting`), a line per job, and
    /// the jobs `running` under the batch's id until their deadline. None when no job
    /// is due (another replica took them).
    pub async fn open_upstream_batch(
        &self,
        provider: &str,
        model: &str,
        holder: &str,
        ttl: Duration,
        limit: u32,
        now: DateTime<Utc>,
    ) -> Result<Option<(UpstreamBatch, Vec<Job>)>, LedgerError> {
        if limit == 0 {
            return Ok(None);
        }
        let id = new_id("ub_");
        let db_now = self.pool.now_ms_sql();
        let skip_locked = match self.pool {
            Pool::Sqlite(_) => "",
            Pool::Postgres(_) => " FOR UPDATE SKIP LOCKED",
        };
        let take = format!(
            "UPDATE jobs SET status = 'running', lease_holder = $1, \
             lease_expires_at = deliver_by, attempts = attempts + 1, \
             started_at = COALESCE(started_at, {db_now}) \
             WHERE id IN (SELECT id FROM jobs WHERE status = 'queued' \
             AND upstream_provider = $2 AND upstream_model = $3 AND run_after <= $4 \
             AND deliver_by > $4 ORDER BY run_after, id LIMIT $5{skip_locked}) \
             RETURNING id"
        );
        let insert = format!(
            "INSERT INTO upstream_batches (id, provider, model, status, lines, created_at, \
             lease_holder, lease_expires_at) \
             VALUES ($1, $2, $3, 'submitting', $4, {db_now}, $5, {db_now} + $6)"
        );
        let taken: Vec<String> = with_pool!(&self.pool, p => {
            async {
                let mut tx = p.begin_write().await?;
                let taken: Vec<String> = sqlx::query_scalar(&take)
                    .bind(&id)
                    .bind(provider)
                    .bind(model)
                    .bind(now.timestamp_millis())
                    .bind(i64::from(limit))
                    .fetch_all(&mut *tx)
                    .await?;
                if taken.is_empty() {
                    tx.rollback().await?;
                    return Ok::<_, sqlx::Error>(taken);
                }
                sqlx::query(&insert)
                    .bind(&id)
                    .bind(provider)
                    .bind(model)
                    .bind(taken.len() as i64)
                    .bind(holder)
                    .bind(ttl_ms(ttl))
                    .execute(&mut *tx)
                    .await?;
                for job in &taken {
                    sqlx::query("INSERT INTO upstream_batch_lines (job, batch) VALUES ($1, $2)")
                        .bind(job)
                        .bind(&id)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(taken)
            }
            .await
        })
        .map_err(|e| self.db(e))?;
        if taken.is_empty() {
            return Ok(None);
        }
        let batch = self.upstream_batch(&id).await?.ok_or_else(|| {
            LedgerError::Invalid(format!("upstream batch {id} vanished after its insert"))
        })?;
        let mut jobs = Vec::with_capacity(taken.len());
        for job in &taken {
            jobs.extend(self.job(job).await?);
        }
        // The order of `upstream_lines`, which is the order lines are submitted in.
        jobs.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Some((batch, jobs)))
    }

    /// Records that the provider accepted batch `id` as `upstream_id`.
    pub async fn upstream_submitted(
        &self,
        id: &str,
        upstream_id: &str,
        input_file_id: Option<&str>,
    ) -> Result<(), LedgerError> {
        let now = self.pool.now_ms_sql();
        let sql = format!(
            "UPDATE upstream_batches SET status = 'submitted', upstream_id = $2, \
             input_file_id = $3, submitted_at = {now} WHERE id = $1 AND status = 'submitting'"
        );
        with_pool!(&self.pool, p => {
            sqlx::query(&sql)
                .bind(id)
                .bind(upstream_id)
                .bind(input_file_id)
                .execute(p)
                .await
                .map(|_| ())
        })
        .map_err(|e| self.db(e))
    }

    /// Takes (or keeps) the lease on open upstream batches for `holder`: its own,
    /// free ones, and those whose holder stopped renewing (a replica that died).
    pub async fn claim_upstream_batches(
        &self,
        holder: &str,
        ttl: Duration,
    ) -> Result<Vec<UpstreamBatch>, LedgerError> {
        let now = self.pool.now_ms_sql();
        let sql = format!(
            "UPDATE upstream_batches SET lease_holder = $1, lease_expires_at = {now} + $2 \
             WHERE status IN ('submitting', 'submitted') AND (lease_holder = $1 \
             OR lease_holder IS NULL OR lease_expires_at <= {now}) RETURNING {COLUMNS}"
        );
        with_pool!(&self.pool, p => {
            match sqlx::query(&sql).bind(holder).bind(ttl_ms(ttl)).fetch_all(p).await {
                Ok(rows) => rows.iter().map(|r| Ok(batch_of_row!(r))).collect(),
                Err(e) => Err(e),
            }
        })
        .map_err(|e| self.db(e))
    }

    /// Notes a poll's answer (the provider's own status word).
    pub async fn upstream_polled(
        &self,
        id: &str,
        holder: &str,
        upstream_status: &str,
    ) -> Result<bool, LedgerError> {
        let now = self.pool.now_ms_sql();
        let sql = format!(
            "UPDATE upstream_batches SET polled_at = {now}, upstream_status = $3 \
             WHERE id = $1 AND lease_holder = $2"
        );
        let n = with_pool!(&self.pool, p => {
            sqlx::query(&sql)
                .bind(id)
                .bind(holder)
                .bind(upstream_status)
                .execute(p)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(|e| self.db(e))?;
        Ok(n == 1)
    }

    /// Ends batch `id` with `status` (final) and the provider's last word.
    pub async fn end_upstream_batch(
        &self,
        id: &str,
        status: UpstreamStatus,
        upstream_status: Option<&str>,
        error: Option<&str>,
    ) -> Result<(), LedgerError> {
        if status.is_open() {
            return Err(LedgerError::Invalid(format!(
                "upstream batch {id} cannot end as {status}"
            )));
        }
        let now = self.pool.now_ms_sql();
        let sql = format!(
            "UPDATE upstream_batches SET status = $2, \
             upstream_status = COALESCE($3, upstream_status), error = $4, \
             finished_at = {now}, lease_holder = NULL, lease_expires_at = NULL WHERE id = $1"
        );
        with_pool!(&self.pool, p => {
            sqlx::query(&sql)
                .bind(id)
                .bind(status.as_str())
                .bind(upstream_status)
                .bind(error)
                .execute(p)
                .await
                .map(|_| ())
        })
        .map_err(|e| self.db(e))
    }

    /// One upstream batch.
    pub async fn upstream_batch(&self, id: &str) -> Result<Option<UpstreamBatch>, LedgerError> {
        let sql = format!("SELECT {COLUMNS} FROM upstream_batches WHERE id = $1");
        with_pool!(&self.pool, p => {
            match sqlx::query(&sql).bind(id).fetch_optional(p).await {
                Ok(Some(r)) => (|| Ok(Some(batch_of_row!(&r))))(),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .map_err(|e| self.db(e))
    }

    /// Every upstream batch, oldest first (audits and tests).
    pub async fn upstream_batches(&self) -> Result<Vec<UpstreamBatch>, LedgerError> {
        let sql = format!("SELECT {COLUMNS} FROM upstream_batches ORDER BY created_at, id");
        with_pool!(&self.pool, p => {
            match sqlx::query(&sql).fetch_all(p).await {
                Ok(rows) => rows.iter().map(|r| Ok(batch_of_row!(r))).collect(),
                Err(e) => Err(e),
            }
        })
        .map_err(|e| self.db(e))
    }

    /// A batch's lines, in job order.
    pub async fn upstream_lines(&self, batch: &str) -> Result<Vec<UpstreamLine>, LedgerError> {
        let rows: Vec<(String, Option<i64>, Option<String>)> = with_pool!(&self.pool, p => {
            sqlx::query_as(
                "SELECT job, charge, outcome FROM upstream_batch_lines WHERE batch = $1 ORDER BY job",
            )
            .bind(batch)
            .fetch_all(p)
            .await
        })
        .map_err(|e| self.db(e))?;
        Ok(rows
            .into_iter()
            .map(|(job, charge, outcome)| UpstreamLine {
                job,
                charge: charge.map(ChargeId),
                outcome: outcome.as_deref().and_then(LineOutcome::parse),
            })
            .collect())
    }

    /// Records a line's charge the moment its result is read: the request row
    /// (`in_progress`) with the paid `stage`, and the line's pointer to it, in one
    /// transaction. A line charged already keeps its charge (a restart reading the
    /// same results again pays nothing twice).
    pub async fn charge_upstream_line(
        &self,
        job: &str,
        request: &RequestRecord,
        stage: &StageCost,
    ) -> Result<ChargeId, LedgerError> {
        let created_at = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
        let id = with_pool!(&self.pool, p => {
            async {
                let mut tx = p.begin_write().await?;
                let existing: Option<Option<i64>> = sqlx::query_scalar(
                    "SELECT charge FROM upstream_batch_lines WHERE job = $1",
                )
                .bind(job)
                .fetch_optional(&mut *tx)
                .await?;
                match existing {
                    None => {
                        tx.rollback().await?;
                        return Ok::<Option<i64>, sqlx::Error>(None);
                    }
                    Some(Some(charge)) => {
                        tx.rollback().await?;
                        return Ok(Some(charge));
                    }
                    Some(None) => {}
                }
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO requests (request_id, content_key, cache, status, provider, \
                     model, api_key, profile, micros, wall_ms, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
                )
                .bind(&request.request_id)
                .bind(request.key.to_hex())
                .bind(request.cache.as_str())
                .bind(RequestStatus::InProgress.as_str())
                .bind(&request.provider)
                .bind(&request.model)
                .bind(&request.api_key)
                .bind(&request.profile)
                .bind(stage.micros.0)
                .bind(request.wall_ms)
                .bind(&created_at)
                .fetch_one(&mut *tx)
                .await?;
                // The same row `charges::open_charge` writes for a live call's paid stage.
                sqlx::query(
                    "INSERT INTO stages (request, stage, micros, wall_ms, cpu_ms, bytes_in, \
                     bytes_out, detail, created_at, unpriced) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(id)
                .bind(stage.stage.as_str())
                .bind(stage.micros.0)
                .bind(stage.wall_ms)
                .bind(stage.cpu_ms)
                .bind(i64::try_from(stage.bytes_in).unwrap_or(i64::MAX))
                .bind(i64::try_from(stage.bytes_out).unwrap_or(i64::MAX))
                .bind(stage.detail.to_string())
                .bind(&created_at)
                .bind(i16::from(stage.unpriced))
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "UPDATE upstream_batch_lines SET charge = $2, outcome = 'generated' WHERE job = $1",
                )
                .bind(job)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(Some(id))
            }
            .await
        })
        .map_err(|e| self.db(e))?;
        id.map(ChargeId).ok_or_else(|| {
            LedgerError::Invalid(format!("job {job} is not a line of an upstream batch"))
        })
    }

    /// Notes a line that came to no image.
    pub async fn upstream_line_outcome(
        &self,
        job: &str,
        outcome: LineOutcome,
    ) -> Result<(), LedgerError> {
        with_pool!(&self.pool, p => {
            sqlx::query("UPDATE upstream_batch_lines SET outcome = $2 WHERE job = $1")
                .bind(job)
                .bind(outcome.as_str())
                .execute(p)
                .await
                .map(|_| ())
        })
        .map_err(|e| self.db(e))
    }

    /// Gives a job of upstream batch `batch` back to the queue: to run live at
    /// `run_after` (`live`), or to wait for another upstream batch. The fault is kept
    /// on the row. False when the job is no longer the batch's (it ended or expired).
    pub async fn release_upstream_job(
        &self,
        job: &str,
        batch: &str,
        live: bool,
        run_after: DateTime<Utc>,
        code: &str,
        message: &str,
    ) -> Result<bool, LedgerError> {
        let clear = if live {
            ", upstream_provider = NULL, upstream_model = NULL"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE jobs SET status = 'queued', lease_holder = NULL, lease_expires_at = NULL, \
             run_after = $3, error_code = $4, error = $5{clear} \
             WHERE id = $1 AND lease_holder = $2 AND status = 'running'"
        );
        let mut done = with_pool!(&self.pool, p => {
            sqlx::query(&sql)
                .bind(job)
                .bind(batch)
                .bind(run_after.timestamp_millis())
                .bind(code)
                .bind(message)
                .execute(p)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(|e| self.db(e))?;
        if done == 1 && !live {
            // A job sent upstream once is not a line of a second batch: its line row
            // goes, so the next batch can take it.
            done = with_pool!(&self.pool, p => {
                sqlx::query("DELETE FROM upstream_batch_lines WHERE job = $1 AND batch = $2")
                    .bind(job)
                    .bind(batch)
                    .execute(p)
                    .await
                    .map(|r| r.rows_affected())
            })
            .map_err(|e| self.db(e))?;
        }
        Ok(done == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, on_both_backends, TestDb};
    use crate::{CacheOutcome, JobEnd, JobStatus};
    use imagegate_core::{Micros, Stage};

    on_both_backends!(
        upstream_jobs_are_left_to_the_upstream_worker_and_batched_once,
        a_batch_survives_reopen_and_its_lease_passes_to_another_replica,
        a_line_is_charged_once_however_often_its_result_is_read,
        lines_without_a_result_go_back_to_the_live_queue,
    );

    const LONG: Duration = Duration::from_secs(60);

    fn new_job(k: u8) -> NewJob {
        NewJob {
            deliver_by: Utc::now() + chrono::Duration::hours(30),
            live_micros: Some(Micros(53_000)),
            planned_micros: Some(Micros(26_500)),
            ..testing::new_job(k)
        }
    }

    async fn upstream_jobs_are_left_to_the_upstream_worker_and_batched_once(db: TestDb) {
        let ledger = db.open().await;
        let (a, _) = ledger
            .enqueue_upstream_job(&new_job(1), "openai", "gpt-image-2")
            .await
            .unwrap();
        let (b, _) = ledger
            .enqueue_upstream_job(&new_job(2), "openai", "gpt-image-2")
            .await
            .unwrap();
        let (c, _) = ledger
            .enqueue_upstream_job(&new_job(3), "google", "gemini-3-pro-image")
            .await
            .unwrap();
        let (live, _) = ledger.enqueue_job(&new_job(4)).await.unwrap();
        assert_eq!(
            ledger.job_upstream(&a.id).await.unwrap(),
            Some(("openai".into(), "gpt-image-2".into()))
        );
        assert_eq!(ledger.job_upstream(&live.id).await.unwrap(), None);

        // The live worker takes only the live job.
        let claimed = ledger.claim_jobs("w", 10, LONG, Utc::now()).await.unwrap();
        assert_eq!(
            claimed.iter().map(|j| &j.id).collect::<Vec<_>>(),
            vec![&live.id]
        );

        let now = Utc::now();
        assert_eq!(
            ledger.due_upstream_groups(now).await.unwrap(),
            vec![
                ("google".to_string(), "gemini-3-pro-image".to_string()),
                ("openai".to_string(), "gpt-image-2".to_string())
            ]
        );
        // Bounded: one line per batch here.
        let (first, jobs) = ledger
            .open_upstream_batch("openai", "gpt-image-2", "r1", LONG, 1, now)
            .await
            .unwrap()
            .expect("a due job");
        assert_eq!(jobs.len(), 1);
        assert_eq!(first.status, UpstreamStatus::Submitting);
        assert_eq!(first.lines, 1);
        let (second, more) = ledger
            .open_upstream_batch("openai", "gpt-image-2", "r1", LONG, 10, now)
            .await
            .unwrap()
            .expect("the other due job");
        let mut ids: Vec<_> = jobs.iter().chain(&more).map(|j| j.id.clone()).collect();
        ids.sort();
        let mut want = vec![a.id.clone(), b.id.clone()];
        want.sort();
        assert_eq!(ids, want, "each job in exactly one batch");
        assert!(ledger
            .open_upstream_batch("openai", "gpt-image-2", "r1", LONG, 10, now)
            .await
            .unwrap()
            .is_none());
        let running = ledger.job(&jobs[0].id).await.unwrap().unwrap();
        assert_eq!(running.status, JobStatus::Running);
        assert_ne!(first.id, second.id);
        let _ = c;
    }

    async fn a_batch_survives_reopen_and_its_lease_passes_to_another_replica(db: TestDb) {
        let ledger = db.open().await;
        ledger
            .enqueue_upstream_job(&new_job(1), "openai", "gpt-image-2")
            .await
            .unwrap();
        let short = Duration::from_secs(2);
        let (batch, _) = ledger
            .open_upstream_batch("openai", "gpt-image-2", "r1", short, 10, Utc::now())
            .await
            .unwrap()
            .unwrap();
        ledger
            .upstream_submitted(&batch.id, "batch_abc", Some("file-abc"))
            .await
            .unwrap();
        ledger.close().await;

        let reopened = db.open().await;
        // r1's lease still runs: r2 gets nothing yet.
        assert!(reopened
            .claim_upstream_batches("r2", LONG)
            .await
            .unwrap()
            .is_empty());
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let taken = reopened.claim_upstream_batches("r2", LONG).await.unwrap();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].upstream_id.as_deref(), Some("batch_abc"));
        assert_eq!(taken[0].input_file_id.as_deref(), Some("file-abc"));
        assert_eq!(taken[0].status, UpstreamStatus::Submitted);
        assert!(reopened
            .upstream_polled(&batch.id, "r2", "in_progress")
            .await
            .unwrap());
        assert!(!reopened
            .upstream_polled(&batch.id, "r1", "in_progress")
            .await
            .unwrap());
        reopened
            .end_upstream_batch(
                &batch.id,
                UpstreamStatus::Completed,
                Some("completed"),
                None,
            )
            .await
            .unwrap();
        assert!(reopened
            .claim_upstream_batches("r2", LONG)
            .await
            .unwrap()
            .is_empty());
        let ended = reopened.upstream_batch(&batch.id).await.unwrap().unwrap();
        assert_eq!(ended.status, UpstreamStatus::Completed);
        assert!(ended.finished_at.is_some());
    }

    async fn a_line_is_charged_once_however_often_its_result_is_read(db: TestDb) {
        let ledger = db.open().await;
        let (job, _) = ledger
            .enqueue_upstream_job(&new_job(7), "openai", "gpt-image-2")
            .await
            .unwrap();
        let (batch, _) = ledger
            .open_upstream_batch("openai", "gpt-image-2", "r1", LONG, 10, Utc::now())
            .await
            .unwrap()
            .unwrap();
        let request = RequestRecord {
            request_id: job.id.clone(),
            key: job.content_key,
            cache: CacheOutcome::Miss,
            status: RequestStatus::InProgress,
            provider: Some("openai".into()),
            model: Some("gpt-image-2".into()),
            api_key: None,
            profile: "default".into(),
            wall_ms: 0.0,
        };
        let mut stage = StageCost::new(Stage::Generate);
        stage.micros = Micros(26_500);
        let first = ledger
            .charge_upstream_line(&job.id, &request, &stage)
            .await
            .unwrap();
        let again = ledger
            .charge_upstream_line(&job.id, &request, &stage)
            .await
            .unwrap();
        assert_eq!(first, again);
        let rows = ledger.request_rows(&job.id).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].micros, Micros(26_500));
        let lines = ledger.upstream_lines(&batch.id).await.unwrap();
        assert_eq!(lines[0].charge, Some(first));
        assert_eq!(lines[0].outcome, Some(LineOutcome::Generated));
        ledger
            .settle_charge(first, RequestStatus::Ok, &[], 1.0, None)
            .await
            .unwrap();
        assert!(ledger
            .finish_job(&job.id, &batch.id, &JobEnd::Succeeded)
            .await
            .unwrap());
        let done = ledger.job(&job.id).await.unwrap().unwrap();
        assert_eq!(done.charged_micros, Some(Micros(26_500)));
        assert_eq!(done.provider_micros, Some(Micros(26_500)));
        assert!(ledger
            .charge_upstream_line("job_not_a_line", &request, &stage)
            .await
            .is_err());
    }

    async fn lines_without_a_result_go_back_to_the_live_queue(db: TestDb) {
        let ledger = db.open().await;
        let (a, _) = ledger
            .enqueue_upstream_job(&new_job(1), "openai", "gpt-image-2")
            .await
            .unwrap();
        let (b, _) = ledger
            .enqueue_upstream_job(&new_job(2), "openai", "gpt-image-2")
            .await
            .unwrap();
        let (batch, _) = ledger
            .open_upstream_batch("openai", "gpt-image-2", "r1", LONG, 10, Utc::now())
            .await
            .unwrap()
            .unwrap();
        let now = Utc::now();
        assert!(ledger
            .release_upstream_job(&a.id, &batch.id, true, now, "upstream_expired", "no result")
            .await
            .unwrap());
        assert!(ledger
            .release_upstream_job(&b.id, &batch.id, false, now, "upstream_rate_limited", "429")
            .await
            .unwrap());
        // Not the batch's any more: a second release does nothing.
        assert!(!ledger
            .release_upstream_job(&a.id, &batch.id, true, now, "x", "y")
            .await
            .unwrap());
        assert_eq!(ledger.job_upstream(&a.id).await.unwrap(), None);
        let claimed = ledger.claim_jobs("w", 10, LONG, Utc::now()).await.unwrap();
        assert_eq!(
            claimed.iter().map(|j| &j.id).collect::<Vec<_>>(),
            vec![&a.id]
        );
        assert_eq!(claimed[0].error_code.as_deref(), Some("upstream_expired"));
        // b waits for another upstream batch.
        let (next, jobs) = ledger
            .open_upstream_batch("openai", "gpt-image-2", "r1", LONG, 10, Utc::now())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].id, b.id);
        assert_ne!(next.id, batch.id);
    }
}
