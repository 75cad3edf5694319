//! The webhook deliveries of deferred jobs. A job that ends (succeeded, failed,
//! expired, cancelled) with a webhook URL gets one delivery, opened from the jobs
//! table by whichever replica looks first: opening is an idempotent insert keyed by
//! the job, so it does not matter where or how the job ended, and a crash between a
//! job's end and its webhook loses nothing. Attempts are claimed under a lease like
//! jobs (one statement; `FOR UPDATE SKIP LOCKED` on PostgreSQL), so two replicas
//! never send the same attempt, and a sender that died mid-attempt has its delivery
//! tried again once the lease runs out. Every attempt is recorded with what the
//! receiver answered.

use crate::backend::{with_pool, Pool};
use crate::{Ledger, LedgerError};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;
use std::time::Duration;

/// Where a delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookStatus {
    /// Waiting for its first or next attempt.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Every attempt failed; no more will be made.
    Failed,
}

impl WebhookStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookStatus::Pending => "pending",
            WebhookStatus::Delivered => "delivered",
            WebhookStatus::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<WebhookStatus> {
        [
            WebhookStatus::Pending,
            WebhookStatus::Delivered,
            WebhookStatus::Failed,
        ]
        .into_iter()
        .find(|w| w.as_str() == s)
    }
}

/// A delivery claimed for an attempt.
#[derive(Debug, Clone)]
pub struct WebhookDelivery {
    /// `msg_` and the job id's hex: the `webhook-id` header, the same on every retry
    /// so receivers can drop duplicates.
    pub id: String,
    pub job_id: String,
    pub url: String,
    /// `job.succeeded`, `job.failed`, `job.expired` or `job.cancelled`.
    pub event: String,
    /// Attempts including the one just claimed.
    pub attempts: i64,
}

/// What one attempt got.
#[derive(Debug, Clone)]
pub struct WebhookAttempt {
    /// The receiver's HTTP status; None when it never answered.
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub duration: Duration,
}

/// What follows an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookNext {
    Delivered,
    RetryAt(DateTime<Utc>),
    GiveUp,
}

/// A delivery and its attempts, for the job's view.
#[derive(Debug, Clone)]
pub struct WebhookRecord {
    pub id: String,
    pub url: String,
    pub event: String,
    pub status: WebhookStatus,
    pub attempts: i64,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_status_code: Option<u16>,
    pub last_error: Option<String>,
}

const FINAL_JOB_STATUSES: &str = "('succeeded', 'failed', 'expired', 'cancelled')";

/// How far back the dispatcher looks for ended jobs without a delivery. Every
/// replica looks every second, so a job's delivery is opened within a second of its
/// end while any replica runs; the window only keeps that scan from growing with
/// every job that ever had a webhook.
const OPEN_WITHIN: Duration = Duration::from_secs(7 * 24 * 3600);

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 4)
}

impl Ledger {
    /// Opens a delivery for every job that ended with a webhook URL in the last
    /// [`OPEN_WITHIN`] and has none yet; returns how many it opened. Safe to run
    /// from every replica at once.
    pub async fn open_webhook_deliveries(&self) -> Result<u64, LedgerError> {
        let now = self.pool.now_ms_sql();
        let sql = format!(
            "INSERT INTO webhook_deliveries (id, job_id, url, event, status, attempts, \
             next_attempt_at, created_at) \
             SELECT 'msg_' || substr(j.id, 5), j.id, j.webhook_url, 'job.' || j.status, \
             'pending', 0, {now}, {now} FROM jobs j \
             WHERE j.webhook_url IS NOT NULL AND j.finished_at >= {now} - $1 \
             AND j.status IN {FINAL_JOB_STATUSES} AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.job_id = j.id) \
             ON CONFLICT DO NOTHING"
        );
        with_pool!(&self.pool, p => {
            sqlx::query(&sql)
                .bind(ttl_ms(OPEN_WITHIN))
                .execute(p)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(|e| self.db(e))
    }

    /// Claims up to `limit` deliveries due for an attempt for `holder` for `ttl`:
    /// pending ones whose next attempt has come and whose last sender's lease ran out.
    pub async fn claim_webhook_deliveries(
        &self,
        holder: &str,
        limit: u32,
        ttl: Duration,
    ) -> Result<Vec<WebhookDelivery>, LedgerError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now = self.pool.now_ms_sql();
        let skip_locked = match self.pool {
            Pool::Sqlite(_) => "",
            Pool::Postgres(_) => " FOR UPDATE SKIP LOCKED",
        };
        let sql = format!(
            "UPDATE webhook_deliveries SET lease_holder = $1, lease_expires_at = {now} + $2, \
             attempts = attempts + 1 \
             WHERE id IN (SELECT id FROM webhook_deliveries WHERE status = 'pending' \
             AND next_attempt_at <= {now} \
             AND (lease_expires_at IS NULL OR lease_expires_at <= {now}) \
             ORDER BY next_attempt_at, id LIMIT $3{skip_locked}) \
             RETURNING id, job_id, url, event, attempts"
        );
        with_pool!(&self.pool, p => {
            match sqlx::query(&sql)
                .bind(holder)
                .bind(ttl_ms(ttl))
                .bind(i64::from(limit))
                .fetch_all(p)
                .await
            {
                Ok(rows) => rows
                    .iter()
                    .map(|r| {
                        Ok(WebhookDelivery {
                            id: r.try_get(0)?,
                            job_id: r.try_get(1)?,
                            url: r.try_get(2)?,
                            event: r.try_get(3)?,
                            attempts: r.try_get(4)?,
                        })
                    })
                    .collect(),
                Err(e) => Err(e),
            }
        })
        .map_err(|e| self.db(e))
    }

    /// Records `holder`'s attempt of `delivery` and what follows it, in one
    /// transaction. False when the claim was lost (its lease ran out and another
    /// sender took it): then nothing is recorded, the other sender's attempt counts.
    pub async fn record_webhook_attempt(
        &self,
        delivery: &WebhookDelivery,
        holder: &str,
        attempt: &WebhookAttempt,
        next: WebhookNext,
    ) -> Result<bool, LedgerError> {
        let now = self.pool.now_ms_sql();
        let (status, next_at) = match next {
            WebhookNext::Delivered => (WebhookStatus::Delivered, None),
            WebhookNext::RetryAt(t) => (WebhookStatus::Pending, Some(t.timestamp_millis())),
            WebhookNext::GiveUp => (WebhookStatus::Failed, None),
        };
        let finished = if status == WebhookStatus::Pending {
            "NULL".to_string()
        } else {
            now.to_string()
        };
        let update = format!(
            "UPDATE webhook_deliveries SET status = $3, lease_holder = NULL, \
             lease_expires_at = NULL, next_attempt_at = COALESCE($4, next_attempt_at), \
             finished_at = {finished}, last_status_code = $5, last_error = $6 \
             WHERE id = $1 AND lease_holder = $2 AND attempts = $7 AND status = 'pending'"
        );
        let insert = format!(
            "INSERT INTO webhook_attempts (delivery_id, attempt, at, status_code, error, \
             duration_ms) VALUES ($1, $2, {now}, $3, $4, $5)"
        );
        let code = attempt.status_code.map(i64::from);
        let duration_ms = i64::try_from(attempt.duration.as_millis()).unwrap_or(i64::MAX);
        with_pool!(&self.pool, p => {
            let recorded: Result<bool, sqlx::Error> = async {
                let mut tx = p.begin().await?;
                let updated = sqlx::query(&update)
                    .bind(&delivery.id)
                    .bind(holder)
                    .bind(status.as_str())
                    .bind(next_at)
                    .bind(code)
                    .bind(&attempt.error)
                    .bind(delivery.attempts)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if updated != 1 {
                    tx.rollback().await?;
                    return Ok(false);
                }
                sqlx::query(&insert)
                    .bind(&delivery.id)
                    .bind(delivery.attempts)
                    .bind(code)
                    .bind(&attempt.error)
                    .bind(duration_ms)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(true)
            }
            .await;
            recorded
        })
        .map_err(|e| self.db(e))
    }

    /// The webhook delivery of job `job_id`, if one was opened.
    pub async fn webhook_of_job(&self, job_id: &str) -> Result<Option<WebhookRecord>, LedgerError> {
        let sql = "SELECT id, url, event, status, attempts, next_attempt_at, \
                   last_status_code, last_error FROM webhook_deliveries WHERE job_id = $1";
        with_pool!(&self.pool, p => {
            match sqlx::query(sql).bind(job_id).fetch_optional(p).await {
                Ok(Some(r)) => (|| {
                    let status: String = r.try_get(3)?;
                    let status = WebhookStatus::parse(&status).ok_or_else(|| {
                        sqlx::Error::Decode(format!("webhook status {status:?}").into())
                    })?;
                    Ok(Some(WebhookRecord {
                        id: r.try_get(0)?,
                        url: r.try_get(1)?,
                        event: r.try_get(2)?,
                        status,
                        attempts: r.try_get(4)?,
                        next_attempt_at: (status == WebhookStatus::Pending)
                            .then(|| r.try_get::<i64, _>(5).map(at))
                            .transpose()?,
                        last_status_code: r
                            .try_get::<Option<i64>, _>(6)?
                            .and_then(|c| u16::try_from(c).ok()),
                        last_error: r.try_get(7)?,
                    }))
                })(),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .map_err(|e| self.db(e))
    }

    /// Every recorded attempt of delivery `id`, in order: (attempt, status code, error).
    pub async fn webhook_attempts(
        &self,
        id: &str,
    ) -> Result<Vec<(i64, Option<u16>, Option<String>)>, LedgerError> {
        let sql = "SELECT attempt, status_code, error FROM webhook_attempts \
                   WHERE delivery_id = $1 ORDER BY attempt";
        with_pool!(&self.pool, p => {
            match sqlx::query(sql).bind(id).fetch_all(p).await {
                Ok(rows) => rows
                    .iter()
                    .map(|r| {
                        Ok((
                            r.try_get(0)?,
                            r.try_get::<Option<i64>, _>(1)?.and_then(|c| u16::try_from(c).ok()),
                            r.try_get(2)?,
                        ))
                    })
                    .collect(),
                Err(e) => Err(e),
            }
        })
        .map_err(|e| self.db(e))
    }

    /// Sets (or with None clears) key `id`'s default webhook for its deferred jobs;
    /// false when there is no such key.
    pub async fn set_key_webhook(&self, id: &str, url: Option<&str>) -> Result<bool, LedgerError> {
        let done = with_pool!(&self.pool, p => {
            sqlx::query("UPDATE api_keys SET webhook_url = $2 WHERE id = $1")
                .bind(id)
                .bind(url)
                .execute(p)
                .await
                .map(|r| r.rows_affected())
        })
        .map_err(|e| self.db(e))?;
        Ok(done == 1)
    }

    /// Key `id`'s default webhook, if it has one.
    pub async fn key_webhook(&self, id: &str) -> Result<Option<String>, LedgerError> {
        let url: Option<Option<String>> = with_pool!(&self.pool, p => {
            sqlx::query_scalar("SELECT webhook_url FROM api_keys WHERE id = $1")
                .bind(id)
                .fetch_optional(p)
                .await
        })
        .map_err(|e| self.db(e))?;
        Ok(url.flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, on_both_backends, TestDb};
    use crate::{JobEnd, NewJob};

    on_both_backends!(
        an_ended_job_opens_one_delivery_whoever_looks,
        attempts_are_recorded_and_retried_until_given_up,
        a_lost_claim_records_nothing,
        a_keys_default_webhook_is_kept,
    );

    const LONG: Duration = Duration::from_secs(60);

    fn job(n: u8, webhook: Option<&str>) -> NewJob {
        NewJob {
            webhook_url: webhook.map(str::to_string),
            ..testing::new_job(n)
        }
    }

    /// Enqueues, claims and ends one job; returns its id.
    async fn ended(ledger: &Ledger, n: u8, webhook: Option<&str>, end: JobEnd) -> String {
        let (job, _) = ledger.enqueue_job(&job(n, webhook)).await.unwrap();
        let claimed = ledger.claim_jobs("w", 10, LONG, Utc::now()).await.unwrap();
        assert!(claimed.iter().any(|j| j.id == job.id));
        assert!(ledger.finish_job(&job.id, "w", &end).await.unwrap());
        job.id
    }

    async fn an_ended_job_opens_one_delivery_whoever_looks(db: TestDb) {
        let (a, b) = (db.open().await, db.open().await);
        let (pending, _) = a.enqueue_job(&job(9, Some("http://h/p"))).await.unwrap();
        let done = ended(&a, 1, Some("http://h/ok"), JobEnd::Succeeded).await;
        let failed = ended(
            &a,
            2,
            Some("http://h/bad"),
            JobEnd::Failed {
                code: "content_blocked".into(),
                message: "no".into(),
            },
        )
        .await;
        ended(&a, 3, None, JobEnd::Succeeded).await;
        // Two replicas looking at once open each ended job's delivery once; a pending
        // job and a job without a webhook get none.
        let (x, y) = tokio::join!(a.open_webhook_deliveries(), b.open_webhook_deliveries());
        assert_eq!(x.unwrap() + y.unwrap(), 2);
        assert_eq!(a.open_webhook_deliveries().await.unwrap(), 0);
        assert!(a.webhook_of_job(&pending.id).await.unwrap().is_none());
        let record = b.webhook_of_job(&done).await.unwrap().expect("opened");
        assert_eq!(record.id, format!("msg_{}", &done[4..]));
        assert_eq!(record.event, "job.succeeded");
        assert_eq!(record.status, WebhookStatus::Pending);
        assert_eq!(
            b.webhook_of_job(&failed).await.unwrap().unwrap().event,
            "job.failed"
        );
        // Both replicas claim at once: disjoint deliveries, each once.
        let (x, y) = tokio::join!(
            a.claim_webhook_deliveries("a", 10, LONG),
            b.claim_webhook_deliveries("b", 10, LONG)
        );
        let (x, y) = (x.unwrap(), y.unwrap());
        assert_eq!(x.len() + y.len(), 2, "{x:?} {y:?}");
        assert!(x.iter().all(|d| y.iter().all(|e| e.id != d.id)));
        assert!(a
            .claim_webhook_deliveries("c", 10, LONG)
            .await
            .unwrap()
            .is_empty());
    }

    async fn attempts_are_recorded_and_retried_until_given_up(db: TestDb) {
        let ledger = db.open().await;
        let id = ended(&ledger, 4, Some("http://h/flaky"), JobEnd::Succeeded).await;
        ledger.open_webhook_deliveries().await.unwrap();
        let first = ledger
            .claim_webhook_deliveries("w", 1, LONG)
            .await
            .unwrap()
            .remove(0);
        assert_eq!(first.attempts, 1);
        let failed = WebhookAttempt {
            status_code: Some(503),
            error: Some("503 Service Unavailable".into()),
            duration: Duration::from_millis(12),
        };
        let later = Utc::now() + chrono::Duration::hours(1);
        assert!(ledger
            .record_webhook_attempt(&first, "w", &failed, WebhookNext::RetryAt(later))
            .await
            .unwrap());
        // Not due again before its next attempt.
        assert!(ledger
            .claim_webhook_deliveries("w", 1, LONG)
            .await
            .unwrap()
            .is_empty());
        let record = ledger.webhook_of_job(&id).await.unwrap().unwrap();
        assert_eq!(record.status, WebhookStatus::Pending);
        assert_eq!(record.last_status_code, Some(503));
        assert_eq!(
            record.next_attempt_at.map(|t| t.timestamp_millis()),
            Some(later.timestamp_millis())
        );
        // Due now: the second attempt is refused, and the sender gives up.
        let now = Utc::now() - chrono::Duration::seconds(1);
        let second = WebhookDelivery {
            attempts: 1,
            ..first.clone()
        };
        assert!(!ledger
            .record_webhook_attempt(&second, "w", &failed, WebhookNext::RetryAt(now))
            .await
            .unwrap());
        with_pool!(&ledger.pool, p => {
            sqlx::query("UPDATE webhook_deliveries SET next_attempt_at = 0")
                .execute(p)
                .await
                .map(|_| ())
        })
        .unwrap();
        let second = ledger
            .claim_webhook_deliveries("w", 1, LONG)
            .await
            .unwrap()
            .remove(0);
        assert_eq!(second.attempts, 2);
        let refused = WebhookAttempt {
            status_code: None,
            error: Some("connection refused".into()),
            duration: Duration::from_millis(1),
        };
        assert!(ledger
            .record_webhook_attempt(&second, "w", &refused, WebhookNext::GiveUp)
            .await
            .unwrap());
        let record = ledger.webhook_of_job(&id).await.unwrap().unwrap();
        assert_eq!(record.status, WebhookStatus::Failed);
        assert_eq!(record.attempts, 2);
        assert_eq!(record.next_attempt_at, None);
        assert_eq!(
            ledger.webhook_attempts(&record.id).await.unwrap(),
            vec![
                (1, Some(503), Some("503 Service Unavailable".into())),
                (2, None, Some("connection refused".into())),
            ]
        );
        assert!(ledger
            .claim_webhook_deliveries("w", 1, LONG)
            .await
            .unwrap()
            .is_empty());
    }

    async fn a_lost_claim_records_nothing(db: TestDb) {
        let ledger = db.open().await;
        let id = ended(&ledger, 5, Some("http://h/slow"), JobEnd::Succeeded).await;
        ledger.open_webhook_deliveries().await.unwrap();
        let short = Duration::from_millis(1);
        let first = ledger
            .claim_webhook_deliveries("dead", 1, short)
            .await
            .unwrap()
            .remove(0);
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The first sender's lease ran out: another takes the delivery over.
        let second = ledger
            .claim_webhook_deliveries("alive", 1, LONG)
            .await
            .unwrap()
            .remove(0);
        assert_eq!(second.attempts, 2);
        let ok = WebhookAttempt {
            status_code: Some(204),
            error: None,
            duration: Duration::from_millis(3),
        };
        assert!(!ledger
            .record_webhook_attempt(&first, "dead", &ok, WebhookNext::Delivered)
            .await
            .unwrap());
        assert!(ledger
            .record_webhook_attempt(&second, "alive", &ok, WebhookNext::Delivered)
            .await
            .unwrap());
        let record = ledger.webhook_of_job(&id).await.unwrap().unwrap();
        assert_eq!(record.status, WebhookStatus::Delivered);
        assert_eq!(
            ledger.webhook_attempts(&record.id).await.unwrap(),
            vec![(2, Some(204), None)]
        );
    }

    async fn a_keys_default_webhook_is_kept(db: TestDb) {
        let ledger = db.open().await;
        let key = ledger
            .create_api_key("hooks", None, crate::KeyScope::Standard)
            .await
            .unwrap();
        let id = key.record.id.clone();
        assert_eq!(ledger.key_webhook(&id).await.unwrap(), None);
        assert!(ledger
            .set_key_webhook(&id, Some("https://example.com/hook"))
            .await
            .unwrap());
        assert_eq!(
            ledger.key_webhook(&id).await.unwrap().as_deref(),
            Some("https://example.com/hook")
        );
        assert!(ledger.set_key_webhook(&id, None).await.unwrap());
        assert_eq!(ledger.key_webhook(&id).await.unwrap(), None);
        assert!(!ledger.set_key_webhook("nope", None).await.unwrap());
    }
}
