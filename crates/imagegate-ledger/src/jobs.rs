//! The deferred-job queue: accepted jobs wait in the ledger database for their
//! planned moment, then one worker of any replica claims each under a lease, runs it
//! and finishes it. Durable: a job is in the database before its 202 leaves, so a
//! restart loses none.
//!
//! Claiming is one statement. On PostgreSQL its inner SELECT locks the rows it picks
//! `FOR UPDATE SKIP LOCKED`, so replicas claiming at once take disjoint jobs without
//! waiting on each other; on SQLite a statement already holds the database's one
//! write lock. A claim is a lease judged by the database's clock (as in `lease`): a
//! worker renews it while the job runs, and a worker that died stops renewing, so
//! its job is claimed again once the lease runs out. Finishing checks the lease, so a
//! worker that lost its job cannot finish it over the one that took it over.
//!
//! Deadlines (`deliver_by`) and planned moments (`run_after`) are instants the
//! pipeline chose on its own clock; leases and `created_at` use the database's.

use crate::backend::{with_pool, Pool};
use crate::{Ledger, LedgerError};
use chrono::{DateTime, Utc};
use imagegate_core::{ContentKey, Micros, Stage};
use serde::Serialize;
use sqlx::Row;
use std::fmt;
use std::time::Duration;

/// Where a job is in its life. `Queued` and `Running` are pending; the rest are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Accepted, waiting for its planned moment (or for a free worker).
    Queued,
    /// A worker holds it.
    Running,
    /// Published; the image is the job's content key.
    Succeeded,
    /// Ran and could not be made (the error says why); it will not be tried again.
    Failed,
    /// Its deadline passed before it could start.
    Expired,
    /// Cancelled before it started (a cancelled batch).
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Expired,
        JobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Expired => "expired",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobStatus> {
        JobStatus::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Nothing will change it any more.
    pub fn is_final(self) -> bool {
        !matches!(self, JobStatus::Queued | JobStatus::Running)
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job as accepted.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// The owner's key id; None for the anonymous loopback caller.
    pub api_key: Option<String>,
    pub content_key: ContentKey,
    /// The image request as the caller sent it (JSON), run as is when its time comes.
    pub request: String,
    pub deliver_by: DateTime<Utc>,
    pub run_after: DateTime<Utc>,
    /// The provider fee of running it at acceptance (what a live request would
    /// pay); None when the price is unknown.
    pub live_micros: Option<Micros>,
    /// The provider fee quoted at `run_after`; None when unknown.
    pub planned_micros: Option<Micros>,
    pub batch: Option<String>,
    pub custom_id: Option<String>,
    pub webhook_url: Option<String>,
}

/// A job row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: String,
    pub api_key: Option<String>,
    pub content_key: ContentKey,
    pub request: String,
    pub status: JobStatus,
    pub deliver_by: DateTime<Utc>,
    pub run_after: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Claims so far (a take-over after a crash is a second one).
    pub attempts: i64,
    pub live_micros: Option<Micros>,
    pub planned_micros: Option<Micros>,
    /// What running it cost: every ledger row of the job's request id. Set at the end.
    pub charged_micros: Option<Micros>,
    /// Of which the provider fees (generate stages).
    pub provider_micros: Option<Micros>,
    pub error_code: Option<String>,
    pub error: Option<String>,
    pub batch: Option<String>,
    pub custom_id: Option<String>,
    pub webhook_url: Option<String>,
}

impl Job {
    /// What the same image would have cost live: what was charged, with the
    /// provider fee actually paid replaced by the live quote at acceptance. None
    /// while unfinished or when either price is unknown.
    pub fn live_equivalent(&self) -> Option<Micros> {
        Some(self.charged_micros?.saturating_sub(self.provider_micros?) + self.live_micros?)
    }
}

/// How a claimed job ended.
#[derive(Debug, Clone)]
pub enum JobEnd {
    Succeeded,
    Failed { code: String, message: String },
}

/// Which jobs [`Ledger::jobs`] lists.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only this owner's (`Some(None)`: the anonymous caller's); None: everyone's.
    pub owner: Option<Option<String>>,
    pub status: Option<JobStatus>,
    pub batch: Option<String>,
    /// Newest first, at most this many (capped at 1000).
    pub limit: u32,
}

const COLUMNS: &str = "id, api_key, content_key, request, status, deliver_by, run_after, \
     created_at, started_at, finished_at, attempts, live_micros, planned_micros, \
     charged_micros, provider_micros, error_code, error, batch, custom_id, webhook_url";

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 4)
}

/// 96 random bits, as hex, after `prefix`.
pub(crate) fn new_id(prefix: &str) -> String {
    format!("{prefix}{:024x}", rand::random::<u128>() >> 32)
}

macro_rules! job_of_row {
    ($r:expr) => {{
        let r = $r;
        let id: String = r.try_get(0)?;
        let key: String = r.try_get(2)?;
        let status: String = r.try_get(4)?;
        let bad = |what: String| sqlx::Error::Decode(format!("job {id}: {what}").into());
        Job {
            content_key: key
                .parse()
                .map_err(|_| bad(format!("content key {key:?}")))?,
            status: JobStatus::parse(&status).ok_or_else(|| bad(format!("status {status:?}")))?,
            api_key: r.try_get(1)?,
            request: r.try_get(3)?,
            deliver_by: at(r.try_get(5)?),
            run_after: at(r.try_get(6)?),
            created_at: at(r.try_get(7)?),
            started_at: r.try_get::<Option<i64>, _>(8)?.map(at),
            finished_at: r.try_get::<Option<i64>, _>(9)?.map(at),
            attempts: r.try_get(10)?,
            live_micros: r.try_get::<Option<i64>, _>(11)?.map(Micros),
            planned_micros: r.try_get::<Option<i64>, _>(12)?.map(Micros),
            charged_micros: r.try_get::<Option<i64>, _>(13)?.map(Micros),
            provider_micros: r.try_get::<Option<i64>, _>(14)?.map(Micros),
            error_code: r.try_get(15)?,
            error: r.try_get(16)?,
            batch: r.try_get(17)?,
            custom_id: r.try_get(18)?,
            webhook_url: r.try_get(19)?,
            id,
        }
    }};
}

impl Ledger {
    /// Queues a job. A caller's identical pending request (same content key and
    /// owner, outside a batch) is one job: the pending one is returned with false.
    pub async fn enqueue_job(&self, job: &NewJob) -> Result<(Job, bool), LedgerError> {
        self.enqueue(job, None).await
    }

    /// [`enqueue_job`](Self::enqueue_job), planned for `upstream`'s batch API when
    /// given (see `upstream_batches`).
    pub(crate) async fn enqueue(
        &self,
        job: &NewJob,
        upstream: Option<(&str, &str)>,
    ) -> Result<(Job, bool), LedgerError> {
        let now = self.pool.now_ms_sql();
        let sql = format!(
            "INSERT INTO jobs (id, api_key, content_key, request, status, deliver_by, \
             run_after, created_at, live_micros, planned_micros, batch, custom_id, webhook_url, \
             upstream_provider, upstream_model) \
             VALUES ($1, $2, $3, $4, 'queued', $5, $6, {now}, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT DO NOTHING"
        );
        // Twice: the pending twin that refused the insert may finish before it is read.
        for _ in 0..2 {
            let id = new_id("job_");
            let inserted = with_pool!(&self.pool, p => {
                sqlx::query(&sql)
                    .bind(&id)
                    .bind(&job.api_key)
                    .bind(job.content_key.to_hex())
                    .bind(&job.request)
                    .bind(ms(job.deliver_by))
                    .bind(ms(job.run_after))
                    .bind(job.live_micros.map(|m| m.0))
                    .bind(job.planned_micros.map(|m| m.0))
                    .bind(&job.batch)
                    .bind(&job.custom_id)
                    .bind(&job.webhook_url)
                    .bind(upstream.map(|u| u.0))
                    .bind(upstream.map(|u| u.1))
                    .execute(p)
                    .await
                    .map(|r| r.rows_affected())
            })
            .map_err(|e| self.db(e))?;
            if inserted == 1 {
                let row = self.job(&id).await?.ok_or_else(|| {
                    LedgerError::Invalid(format!("job {id} vanished after its insert"))
                })?;
                return Ok((row, true));
            }
            let sql = format!(
                "SELECT {COLUMNS} FROM jobs WHERE content_key = $1 \
                 AND api_key IS NOT DISTINCT FROM $2 AND status IN ('queued', 'running') \
                 AND batch IS NULL"
            );
            let twin = with_pool!(&self.pool, p => {
                match sqlx::query(&sql)
                    .bind(job.content_key.to_hex())
                    .bind(&job.api_key)
                    .fetch_optional(p)
                    .await
                {
                    Ok(Some(r)) => (|| Ok(Some(job_of_row!(&r))))(),
                    Ok(None) => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .map_err(|e| self.db(e))?;
            if let Some(twin) = twin {
                return Ok((twin, false));
            }
        }
        Err(LedgerError::Invalid(format!(
            "job for {} neither inserted nor found pending",
            job.content_key
        )))
    }

    /// Records a job that failed on arrival (a batch line refused by the checks a
    /// live request gets), so the batch's error file answers for it.
    pub async fn record_failed_job(
        &self,
        job: &NewJob,
        code: &str,
        message: &str,
    ) -> Result<Job, LedgerError> {
        let now = self.pool.now_ms_sql();
        let id = new_id("job_");
        let sql = format!(
            "INSERT INTO jobs (id, api_key, content_key, request, status, deliver_by, \
             run_after, created_at, finished_at, charged_micros, provider_micros, error_code, \
             error, batch, custom_id) \
             VALUES ($1, $2, $3, $4, 'failed', $5, $6, {now}, {now}, 0, 0, $7, $8, $9, $10)"
        );
        with_pool!(&self.pool, p => {
            sqlx::query(&sql)
                .bind(&id)
                .bind(&job.api_key)
                .bind(job.content_key.to_hex())
                .bind(&job.request)
                .bind(ms(job.deliver_by))
                .bind(ms(job.run_after))
                .bind(code)
                .bind(message)
                .bind(&job.batch)
                .bind(&job.custom_id)
                .execute(p)
                .await
                .map(|_| ())
        })
        .map_err(|e| self.db(e))?;
        self.job(&id)
            .await?
            .ok_or_else(|| LedgerError::Invalid(format!("job {id} vanished after its insert")))
    }

    /// One job by id.
    pub async fn job(&self, id: &str) -> Result<Option<Job>, LedgerError> {
        let sql = format!("SELECT {COLUMNS} FROM jobs WHERE id = $1");
        with_pool!(&self.pool, p => {
            match sqlx::query(&sql).bind(id).fetch_optional(p).await {
                Ok(Some(r)) => (|| Ok(Some(job_of_row!(&r))))(),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .map_err(|e| self.db(e))
    }

    /// Jobs matching `filter`, newest first.
    pub async fn jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, LedgerError> {
        let mut sql = format!("SELECT {COLUMNS} FROM jobs WHERE 1 = 1");
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };
        if filter.owner.is_some() {
            sql.push_str(&format!(" AND api_key IS NOT DISTINCT FROM ${}", next()));
        }
        if filter.status.is_some() {
            sql.push_str(&format!(" AND status = ${}", next()));
        }
        if filter.batch.is_some() {
            sql.push_str(&format!(" AND batch = ${}", next()));
        }
        sql.push_str(&format!(
            " ORDER BY created_at DESC, id LIMIT {}",
            filter.limit.clamp(1, 1000)
        ));
        with_pool!(&self.pool, p => {
            let mut q = sqlx::query(&sql);
            if let Some(owner) = &filter.owner {
                q = q.bind(owner.clone());
            }
            if let Some(status) = filter.status {
                q = q.bind(status.as_str());
            }
            if let Some(batch) = &filter.batch {
                q = q.bind(batch.clone());
            }
            match q.fetch_all(p).await {
                Ok(rows) => rows.iter().map(|r| Ok(job_of_row!(r))).collect(),
                Err(e) => Err(e),
            }
        })
        .map_err(|e| self.db(e))
    }

    /// Claims up to `limit` jobs for `holder` for `ttl`: queued jobs whose planned
    /// moment has come (earliest first), and running jobs whose worker's lease ran
    /// out (taken over). Jobs whose deadline passed are left to
    /// [`Ledger::expire_overdue_jobs`]; jobs planned for a provider's batch API to
    /// the upstream worker.
    pub async fn claim_jobs(
        &self,
        holder: &str,
        limit: u32,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<Job>, LedgerError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let db_now = self.pool.now_ms_sql();
        let skip_locked = match self.pool {
            Pool::Sqlite(_) => "",
            Pool::Postgres(_) => " FOR UPDATE SKIP LOCKED",
        };
        let sql = format!(
            "UPDATE jobs SET status = 'running', lease_holder = $1, \
             lease_expires_at = {db_now} + $2, attempts = attempts + 1, \
             started_at = COALESCE(started_at, {db_now}) \
             WHERE id IN (SELECT id FROM jobs WHERE deliver_by > $3 AND \
             upstream_provider IS NULL AND \
             ((status = 'queued' AND run_after <= $3) OR \
              (status = 'running' AND lease_expires_at <= {db_now})) \
             ORDER BY run_after, id LIMIT $4{skip_locked}) \
             RETURNING {COLUMNS}"
        );
        with_pool!(&self.pool, p => {
            match sqlx::query(&sql)
                .bind(holder)
                .bind(ttl_ms(ttl))
                .bind(ms(now))
                .bind(i64::from(limit))
                .fetch_all(p)
                .await
            {
                Ok(rows) => rows.iter().map(|r| Ok(job_of_row!(r))).collect(),
                Err(e) => Err(e),
            }
        })
        .map_err(|e| self.db(e))
    }

    /// Extends `holder`'s claim on job `id`; false when it is no longer `holder`'s
    /// (its lease ran out and another worker took it over).
    pub async fn renew_job(
        &self,
        id: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, LedgerError> {
        let now = self.pool.now_ms_sql();
        let sql = format!(
            "UPDATE jobs SET lease_expires_at = {now} + $3 \
             WHERE id = $1 AND lease_holder = $2 AND status = 'running'"
        );
        let done = with_pool!(&self.pool, p => {
            sqlx::query(&sql)
                .bind(id)
                .bind(holder)
                .bind(ttl_ms(ttl))
                .execute(p)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(|e| self.db(e))?;
        Ok(done == 1)
    }

    /// Ends `holder`'s claimed job, with what it cost: the sum of the ledger rows
    /// recorded under the job's id as request id (the generation's, or a hit's when
    /// another request published the key first). False when the claim was lost.
    pub async fn finish_job(
        &self,
        id: &str,
        holder: &str,
        end: &JobEnd,
    ) -> Result<bool, LedgerError> {
        let now = self.pool.now_ms_sql();
        let (status, code, message) = match end {
            JobEnd::Succeeded => (JobStatus::Succeeded, None, None),
            JobEnd::Failed { code, message } => (
                JobStatus::Failed,
                Some(code.as_str()),
                Some(message.as_str()),
            ),
        };
        let sql = format!(
            "UPDATE jobs SET status = $3, finished_at = {now}, lease_holder = NULL, \
             lease_expires_at = NULL, error_code = $4, error = $5, \
             charged_micros = (SELECT CAST(COALESCE(SUM(micros), 0) AS BIGINT) FROM requests \
                               WHERE request_id = $1), \
             provider_micros = (SELECT CAST(COALESCE(SUM(s.micros), 0) AS BIGINT) \
                                FROM stages s JOIN requests r ON r.id = s.request \
                                WHERE r.request_id = $1 AND s.stage = $6) \
             WHERE id = $1 AND lease_holder = $2 AND status = 'running'"
        );
        let done = with_pool!(&self.pool, p => {
            sqlx::query(&sql)
                .bind(id)
                .bind(holder)
                .bind(status.as_str())
                .bind(code)
                .bind(message)
                .bind(Stage::Generate.as_str())
                .execute(p)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(|e| self.db(e))?;
        Ok(done == 1)
    }

    /// Gives `holder`'s claimed job back to the queue, to be tried again at
    /// `run_after` (a passing fault: a provider outage, a full queue). The fault is
    /// kept on the row until the job ends. False when the claim was lost.
    pub async fn requeue_job(
        &self,
        id: &str,
        holder: &str,
        run_after: DateTime<Utc>,
        code: &str,
        message: &str,
    ) -> Result<bool, LedgerError> {
        let done = with_pool!(&self.pool, p => {
            sqlx::query(
                "UPDATE jobs SET status = 'queued', lease_holder = NULL, lease_expires_at = NULL, \
                 run_after = $3, error_code = $4, error = $5 \
                 WHERE id = $1 AND lease_holder = $2 AND status = 'running'",
            )
            .bind(id)
            .bind(holder)
            .bind(ms(run_after))
            .bind(code)
            .bind(message)
            .execute(p)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(|e| self.db(e))?;
        Ok(done == 1)
    }

    /// Marks every job that can no longer start in time `expired`: queued ones past
    /// their deadline, and running ones past it whose worker's lease ran out (a job
    /// started in time is left to finish). Returns the ids it expired.
    pub async fn expire_overdue_jobs(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, LedgerError> {
        let db_now = self.pool.now_ms_sql();
        let sql = format!(
            "UPDATE jobs SET status = 'expired', finished_at = {db_now}, lease_holder = NULL, \
             lease_expires_at = NULL, error_code = 'deadline_exceeded', \
             error = 'the job could not start before its deliver_by deadline' \
             WHERE deliver_by <= $1 AND (status = 'queued' OR \
             (status = 'running' AND lease_expires_at <= {db_now})) RETURNING id"
        );
        with_pool!(&self.pool, p => {
            sqlx::query_scalar(&sql).bind(ms(now)).fetch_all(p).await
        })
        .map_err(|e| self.db(e))
    }

    /// Cancels the queued jobs of a batch (running ones finish); returns how many.
    pub async fn cancel_batch_jobs(&self, batch: &str) -> Result<u64, LedgerError> {
        let now = self.pool.now_ms_sql();
        let sql = format!(
            "UPDATE jobs SET status = 'cancelled', finished_at = {now}, \
             error_code = 'batch_cancelled', error = 'the batch was cancelled before this request ran' \
             WHERE batch = $1 AND status = 'queued'"
        );
        with_pool!(&self.pool, p => {
            sqlx::query(&sql).bind(batch).execute(p).await.map(|r| r.rows_affected())
        })
        .map_err(|e| self.db(e))
    }

    /// The soonest planned moment of a queued job, for a worker deciding how long to
    /// sleep.
    pub async fn next_job_at(&self) -> Result<Option<DateTime<Utc>>, LedgerError> {
        let next: Option<i64> = with_pool!(&self.pool, p => {
            sqlx::query_scalar("SELECT MIN(run_after) FROM jobs WHERE status = 'queued'")
                .fetch_one(p)
                .await
        })
        .map_err(|e| self.db(e))?;
        Ok(next.map(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, key, on_both_backends, TestDb};
    use crate::{CacheOutcome, RequestRecord, RequestStatus};
    use imagegate_core::StageCost;
    use std::collections::HashSet;
    use std::sync::Arc;

    on_both_backends!(
        a_queued_job_survives_reopen_and_is_claimed_once_due,
        identical_pending_requests_are_one_job,
        concurrent_workers_claim_disjoint_jobs,
        a_crashed_workers_job_is_taken_over_after_its_lease,
        finishing_records_the_charge_and_the_live_price,
        overdue_jobs_expire_and_requeued_ones_wait,
        listing_filters_by_owner_status_and_batch,
    );

    const LONG: Duration = Duration::from_secs(60);

    fn new_job(k: u8, owner: Option<&str>) -> NewJob {
        NewJob {
            api_key: owner.map(str::to_string),
            ..testing::new_job(k)
        }
    }

    async fn a_queued_job_survives_reopen_and_is_claimed_once_due(db: TestDb) {
        let ledger = db.open().await;
        let later = NewJob {
            run_after: Utc::now() + chrono::Duration::hours(1),
            ..new_job(1, Some("k1"))
        };
        let (job, created) = ledger.enqueue_job(&later).await.unwrap();
        assert!(created);
        assert!(
            job.id.starts_with("job_") && job.id.len() == 28,
            "{}",
            job.id
        );
        assert_eq!(job.status, JobStatus::Queued);
        assert_eq!(job.request, later.request);
        assert_eq!(ms(job.run_after), ms(later.run_after));
        ledger.close().await;

        let again = db.open().await;
        let read = again.job(&job.id).await.unwrap().expect("kept");
        assert_eq!(read, job);
        // Not due yet.
        assert!(again
            .claim_jobs("w", 10, LONG, Utc::now())
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            ms(again.next_job_at().await.unwrap().unwrap()),
            ms(later.run_after)
        );
        // Due an hour from now.
        let in_an_hour = Utc::now() + chrono::Duration::minutes(61);
        let claimed = again.claim_jobs("w", 10, LONG, in_an_hour).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].status, JobStatus::Running);
        assert_eq!(claimed[0].attempts, 1);
        assert!(claimed[0].started_at.is_some());
        // Held: nobody claims it again while the lease lives.
        assert!(again
            .claim_jobs("x", 10, LONG, in_an_hour)
            .await
            .unwrap()
            .is_empty());
        assert!(again
            .job("job_000000000000000000000000")
            .await
            .unwrap()
            .is_none());
    }

    async fn identical_pending_requests_are_one_job(db: TestDb) {
        let ledger = db.open().await;
        let (a, created_a) = ledger.enqueue_job(&new_job(2, Some("k1"))).await.unwrap();
        let (b, created_b) = ledger.enqueue_job(&new_job(2, Some("k1"))).await.unwrap();
        assert!(created_a && !created_b);
        assert_eq!(a.id, b.id);
        // Another owner's identical request is a job of its own (it sees only its own),
        // and so is an anonymous one.
        let (c, created_c) = ledger.enqueue_job(&new_job(2, Some("k2"))).await.unwrap();
        let (d, created_d) = ledger.enqueue_job(&new_job(2, None)).await.unwrap();
        let (e, created_e) = ledger.enqueue_job(&new_job(2, None)).await.unwrap();
        assert!(created_c && created_d && !created_e);
        assert_ne!(a.id, c.id);
        assert_eq!(d.id, e.id);
        // Once the job is over, the same request queues a new one.
        let claimed = ledger.claim_jobs("w", 10, LONG, Utc::now()).await.unwrap();
        assert_eq!(claimed.len(), 3);
        assert!(ledger
            .finish_job(&a.id, "w", &JobEnd::Succeeded)
            .await
            .unwrap());
        let (f, created_f) = ledger.enqueue_job(&new_job(2, Some("k1"))).await.unwrap();
        assert!(created_f);
        assert_ne!(f.id, a.id);
        // Jobs of a batch are not merged: each line is answered on its own.
        let in_batch = NewJob {
            batch: Some("batch_1".into()),
            ..new_job(3, Some("k1"))
        };
        let (g, _) = ledger.enqueue_job(&in_batch).await.unwrap();
        let (h, created_h) = ledger.enqueue_job(&in_batch).await.unwrap();
        assert!(created_h);
        assert_ne!(g.id, h.id);
    }

    /// Two ledgers on one database as two replicas, four workers each, claiming 60
    /// due jobs two at a time at once: every job is claimed by exactly one worker.
    async fn concurrent_workers_claim_disjoint_jobs(db: TestDb) {
        let replicas = [db.open().await, db.open().await];
        for n in 0..60 {
            replicas[0]
                .enqueue_job(&new_job(n, Some("k")))
                .await
                .unwrap();
        }
        let start = Arc::new(tokio::sync::Barrier::new(8));
        let workers: Vec<_> = (0..8)
            .map(|i| {
                let ledger = replicas[i % 2].clone();
                let start = start.clone();
                tokio::spawn(async move {
                    start.wait().await;
                    let mut mine = Vec::new();
                    loop {
                        let got = ledger
                            .claim_jobs(&format!("w{i}"), 2, LONG, Utc::now())
                            .await
                            .unwrap();
                        if got.is_empty() {
                            return mine;
                        }
                        mine.extend(got.into_iter().map(|j| j.id));
                    }
                })
            })
            .collect();
        let mut all = Vec::new();
        for w in workers {
            all.extend(w.await.unwrap());
        }
        let distinct: HashSet<_> = all.iter().collect();
        assert_eq!(all.len(), 60, "every job claimed once");
        assert_eq!(distinct.len(), 60);
    }

    async fn a_crashed_workers_job_is_taken_over_after_its_lease(db: TestDb) {
        let (a, b) = (db.open().await, db.open().await);
        let (job, _) = a.enqueue_job(&new_job(4, None)).await.unwrap();
        let claimed = a
            .claim_jobs("crashed", 1, Duration::from_millis(300), Utc::now())
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        assert!(b
            .claim_jobs("b", 1, LONG, Utc::now())
            .await
            .unwrap()
            .is_empty());
        // The holder "crashed": nobody renews.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let taken = b.claim_jobs("b", 1, LONG, Utc::now()).await.unwrap();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].id, job.id);
        assert_eq!(taken[0].attempts, 2);
        // The old holder can neither renew nor finish it any more.
        assert!(!a.renew_job(&job.id, "crashed", LONG).await.unwrap());
        assert!(!a
            .finish_job(&job.id, "crashed", &JobEnd::Succeeded)
            .await
            .unwrap());
        assert!(b.renew_job(&job.id, "b", LONG).await.unwrap());
        assert!(b
            .finish_job(&job.id, "b", &JobEnd::Succeeded)
            .await
            .unwrap());
        // Finished once: a second finish changes nothing.
        assert!(!b
            .finish_job(&job.id, "b", &JobEnd::Succeeded)
            .await
            .unwrap());
        assert_eq!(
            b.job(&job.id).await.unwrap().unwrap().status,
            JobStatus::Succeeded
        );
    }

    async fn finishing_records_the_charge_and_the_live_price(db: TestDb) {
        let ledger = db.open().await;
        let (job, _) = ledger.enqueue_job(&new_job(5, Some("k1"))).await.unwrap();
        ledger.claim_jobs("w", 1, LONG, Utc::now()).await.unwrap();
        // What running it recorded under the job's id: a generation at the off-peak
        // price and its other stages.
        let stage = |s: Stage, m: i64| {
            let mut c = StageCost::new(s);
            c.micros = Micros(m);
            c
        };
        let record = RequestRecord {
            request_id: job.id.clone(),
            key: key(5),
            cache: CacheOutcome::Miss,
            status: RequestStatus::Ok,
            provider: Some("local".into()),
            model: Some("m".into()),
            api_key: Some("k1".into()),
            profile: "default".into(),
            wall_ms: 1.0,
        };
        ledger
            .record(
                &record,
                &[stage(Stage::Generate, 20_000), stage(Stage::Encode, 300)],
            )
            .await
            .unwrap();
        assert!(ledger
            .finish_job(&job.id, "w", &JobEnd::Succeeded)
            .await
            .unwrap());
        let done = ledger.job(&job.id).await.unwrap().unwrap();
        assert_eq!(done.status, JobStatus::Succeeded);
        assert_eq!(done.charged_micros, Some(Micros(20_300)));
        assert_eq!(done.provider_micros, Some(Micros(20_000)));
        assert_eq!(done.live_equivalent(), Some(Micros(40_300)));
        assert!(done.finished_at.is_some());

        // A failure keeps its reason; a job that ran nothing cost nothing.
        let (other, _) = ledger.enqueue_job(&new_job(6, Some("k1"))).await.unwrap();
        ledger.claim_jobs("w", 1, LONG, Utc::now()).await.unwrap();
        let end = JobEnd::Failed {
            code: "prompt_blocked".into(),
            message: "the prompt was refused".into(),
        };
        assert!(ledger.finish_job(&other.id, "w", &end).await.unwrap());
        let failed = ledger.job(&other.id).await.unwrap().unwrap();
        assert_eq!(failed.status, JobStatus::Failed);
        assert_eq!(failed.error_code.as_deref(), Some("prompt_blocked"));
        assert_eq!(failed.charged_micros, Some(Micros::ZERO));
    }

    async fn overdue_jobs_expire_and_requeued_ones_wait(db: TestDb) {
        let ledger = db.open().await;
        let now = Utc::now();
        let soon = NewJob {
            deliver_by: now + chrono::Duration::seconds(1),
            ..new_job(7, None)
        };
        let (job, _) = ledger.enqueue_job(&soon).await.unwrap();
        let (kept, _) = ledger.enqueue_job(&new_job(8, None)).await.unwrap();
        // A claim never hands out a job whose deadline has passed.
        let later = now + chrono::Duration::seconds(2);
        let expired = ledger.expire_overdue_jobs(later).await.unwrap();
        assert_eq!(expired, vec![job.id.clone()]);
        let row = ledger.job(&job.id).await.unwrap().unwrap();
        assert_eq!(row.status, JobStatus::Expired);
        assert_eq!(row.error_code.as_deref(), Some("deadline_exceeded"));
        assert!(ledger.expire_overdue_jobs(later).await.unwrap().is_empty());

        // A passing fault puts the job back until its retry time.
        let claimed = ledger.claim_jobs("w", 5, LONG, later).await.unwrap();
        assert_eq!(claimed.len(), 1);
        let retry_at = later + chrono::Duration::minutes(5);
        assert!(ledger
            .requeue_job(&kept.id, "w", retry_at, "provider_unavailable", "503")
            .await
            .unwrap());
        assert!(ledger
            .claim_jobs("w", 5, LONG, later)
            .await
            .unwrap()
            .is_empty());
        let again = ledger.claim_jobs("w", 5, LONG, retry_at).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].attempts, 2);
        assert_eq!(again[0].error_code.as_deref(), Some("provider_unavailable"));
    }

    async fn listing_filters_by_owner_status_and_batch(db: TestDb) {
        let ledger = db.open().await;
        for (n, owner) in [
            (10, Some("a")),
            (11, Some("a")),
            (12, Some("b")),
            (13, None),
        ] {
            ledger.enqueue_job(&new_job(n, owner)).await.unwrap();
        }
        let in_batch = NewJob {
            batch: Some("batch_x".into()),
            custom_id: Some("line-1".into()),
            ..new_job(14, Some("b"))
        };
        ledger.enqueue_job(&in_batch).await.unwrap();
        let list = |owner: Option<Option<&str>>, status, batch: Option<&str>| JobFilter {
            owner: owner.map(|o| o.map(str::to_string)),
            status,
            batch: batch.map(str::to_string),
            limit: 100,
        };
        assert_eq!(ledger.jobs(&list(None, None, None)).await.unwrap().len(), 5);
        assert_eq!(
            ledger
                .jobs(&list(Some(Some("a")), None, None))
                .await
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            ledger
                .jobs(&list(Some(None), None, None))
                .await
                .unwrap()
                .len(),
            1
        );
        let b = ledger
            .jobs(&list(Some(Some("b")), None, Some("batch_x")))
            .await
            .unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].custom_id.as_deref(), Some("line-1"));
        assert_eq!(ledger.cancel_batch_jobs("batch_x").await.unwrap(), 1);
        ledger.claim_jobs("w", 1, LONG, Utc::now()).await.unwrap();
        let running = ledger
            .jobs(&list(None, Some(JobStatus::Running), None))
            .await
            .unwrap();
        assert_eq!(running.len(), 1);
        let cancelled = ledger
            .jobs(&list(None, Some(JobStatus::Cancelled), None))
            .await
            .unwrap();
        assert_eq!(cancelled.len(), 1);
    }
}
