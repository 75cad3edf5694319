//! Group commit for request rows. Every answered request writes its rows before the
//! response leaves; one transaction per request would make the fsync the ceiling of
//! the cache-hit path. One task owns the writes instead: it takes whatever requests
//! are waiting (up to [`MAX_BATCH`]), writes them in one transaction, commits, and
//! only then tells each caller its row id, so "returned means durable" still holds.

use crate::backend::{with_pool, Pool};
use crate::RequestRecord;
use chrono::{SecondsFormat, Utc};
use imagegate_core::{Micros, StageCost};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Requests per transaction at most: large enough that a burst shares one commit,
/// small enough that one transaction never holds the SQLite write lock for long.
const MAX_BATCH: usize = 256;
/// Requests waiting for the writer at most; callers beyond it wait to enqueue.
const QUEUE: usize = 4096;

pub(crate) enum WriteError {
    Database(sqlx::Error),
    Stopped,
}

struct Pending {
    request: RequestRecord,
    stages: Vec<StageCost>,
    created_at: String,
    done: oneshot::Sender<Result<i64, sqlx::Error>>,
}

#[derive(Clone)]
pub(crate) struct Writer {
    queue: mpsc::Sender<Pending>,
    /// Transactions committed, for the tests that check requests share them.
    #[cfg_attr(not(test), allow(dead_code))]
    commits: Arc<AtomicU64>,
}

impl Writer {
    /// Starts the writing task on the current runtime; it ends when the last
    /// `Writer` clone is dropped.
    pub(crate) fn spawn(pool: Pool) -> Writer {
        let (queue, pending) = mpsc::channel(QUEUE);
        let commits = Arc::new(AtomicU64::new(0));
        tokio::spawn(write_batches(pool, pending, Arc::clone(&commits)));
        Writer { queue, commits }
    }

    #[cfg(test)]
    pub(crate) fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    pub(crate) async fn record(
        &self,
        request: RequestRecord,
        stages: Vec<StageCost>,
    ) -> Result<i64, WriteError> {
        let (done, answer) = oneshot::channel();
        let pending = Pending {
            request,
            stages,
            // The time the request was answered, not when its batch commits.
            created_at: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            done,
        };
        self.queue
            .send(pending)
            .await
            .map_err(|_| WriteError::Stopped)?;
        match answer.await {
            Ok(result) => result.map_err(WriteError::Database),
            Err(_) => Err(WriteError::Stopped),
        }
    }
}

async fn write_batches(pool: Pool, mut pending: mpsc::Receiver<Pending>, commits: Arc<AtomicU64>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while pending.recv_many(&mut batch, MAX_BATCH).await > 0 {
        match commit(&pool, &batch, &commits).await {
            Ok(ids) => {
                for (p, id) in batch.drain(..).zip(ids) {
                    let _ = p.done.send(Ok(id));
                }
            }
            // One request's bad row must not fail the others it was batched with:
            // write each alone, so every caller gets its own outcome.
            Err(error) if batch.len() == 1 => {
                let _ = batch.remove(0).done.send(Err(error));
            }
            Err(_) => {
                for p in batch.drain(..) {
                    let result = commit(&pool, std::slice::from_ref(&p), &commits)
                        .await
                        .map(|ids| ids[0]);
                    let _ = p.done.send(result);
                }
            }
        }
    }
}

async fn commit(
    pool: &Pool,
    batch: &[Pending],
    commits: &AtomicU64,
) -> Result<Vec<i64>, sqlx::Error> {
    let ids = insert(pool, batch).await?;
    commits.fetch_add(1, Ordering::Relaxed);
    Ok(ids)
}

/// Writes `batch` in one transaction; the request row ids in `batch` order.
async fn insert(pool: &Pool, batch: &[Pending]) -> Result<Vec<i64>, sqlx::Error> {
    with_pool!(pool, p => async {
        let mut tx = p.begin().await?;
        let mut ids = Vec::with_capacity(batch.len());
        for Pending { request, stages, created_at, .. } in batch {
            let total: Micros = stages.iter().map(|s| s.micros).sum();
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO requests (request_id, content_key, cache, status, provider, model, \
                 api_key, profile, micros, wall_ms, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
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
            .bind(created_at)
            .fetch_one(&mut *tx)
            .await?;
            for s in stages {
                sqlx::query(
                    "INSERT INTO stages (request, stage, micros, wall_ms, cpu_ms, bytes_in, \
                     bytes_out, detail, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(id)
                .bind(s.stage.as_str())
                .bind(s.micros.0)
                .bind(s.wall_ms)
                .bind(s.cpu_ms)
                .bind(saturating_i64(s.bytes_in))
                .bind(saturating_i64(s.bytes_out))
                .bind(s.detail.to_string())
                .bind(created_at)
                .execute(&mut *tx)
                .await?;
            }
            ids.push(id);
        }
        tx.commit().await?;
        Ok(ids)
    }
    .await)
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use crate::backend::{with_pool, Pool};
    use crate::testing::{on_both_backends, TestDb};
    use crate::{CacheOutcome, LedgerError, RequestRecord};
    use imagegate_core::{Micros, Stage, StageCost};
    use std::collections::HashSet;
    use std::time::Duration;

    on_both_backends!(concurrent_records_share_commits_and_every_row_lands);

    fn request(n: usize, wall_ms: f64) -> RequestRecord {
        RequestRecord {
            request_id: format!("req-{n}"),
            key: format!("{:02x}", n % 256).repeat(32).parse().unwrap(),
            cache: CacheOutcome::Hit,
            status: "ok".into(),
            provider: Some("local".into()),
            model: Some("procedural-v1".into()),
            api_key: None,
            profile: "default".into(),
            wall_ms,
        }
    }

    fn stages() -> Vec<StageCost> {
        let mut lookup = StageCost::new(Stage::Cache);
        lookup.micros = Micros(3);
        vec![lookup]
    }

    async fn concurrent_records_share_commits_and_every_row_lands(db: TestDb) {
        const N: usize = 400;
        let ledger = db.open().await;
        let tasks: Vec<_> = (0..N)
            .map(|n| {
                let ledger = ledger.clone();
                tokio::spawn(async move { ledger.record(&request(n, 1.0), &stages()).await })
            })
            .collect();
        let mut ids = HashSet::new();
        for task in tasks {
            ids.insert(task.await.unwrap().expect("every record commits"));
        }
        assert_eq!(ids.len(), N, "row ids are distinct");
        let (requests, stage_rows, micros): (i64, i64, i64) = with_pool!(&ledger.pool, p => {
            sqlx::query_as(
                "SELECT (SELECT COUNT(*) FROM requests), (SELECT COUNT(*) FROM stages), \
                 (SELECT CAST(SUM(micros) AS BIGINT) FROM stages)",
            )
            .fetch_one(p)
            .await
        })
        .unwrap();
        assert_eq!(
            (requests, stage_rows, micros),
            (N as i64, N as i64, 3 * N as i64)
        );
        let commits = ledger.writer.commits();
        assert!(
            commits < N as u64,
            "{N} concurrent records took {commits} commits: nothing was batched"
        );
        ledger.close().await;
    }

    /// A row SQLite refuses (NaN is stored as NULL, and wall_ms is NOT NULL) fails
    /// only its own request, not the others committed in the same batch.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_row_fails_only_its_own_request() {
        let db = TestDb::sqlite().await;
        let ledger = db.open().await;
        ledger.ping().await.unwrap();
        // Hold the write lock so the requests below queue up and meet in one batch.
        let Pool::Sqlite(pool) = &ledger.pool else {
            unreachable!("TestDb::sqlite opens SQLite")
        };
        let mut blocker = pool.acquire().await.unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut *blocker)
            .await
            .unwrap();
        let first = {
            let ledger = ledger.clone();
            tokio::spawn(async move { ledger.record(&request(0, 1.0), &stages()).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let batched: Vec<_> = (1..=20)
            .map(|n| {
                let ledger = ledger.clone();
                let wall_ms = if n == 10 { f64::NAN } else { 1.0 };
                tokio::spawn(async move { ledger.record(&request(n, wall_ms), &stages()).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        sqlx::query("COMMIT").execute(&mut *blocker).await.unwrap();
        drop(blocker);
        first.await.unwrap().expect("the first request commits");
        for (n, task) in (1..=20).zip(batched) {
            let result = task.await.unwrap();
            if n == 10 {
                assert!(
                    matches!(result, Err(LedgerError::Database { .. })),
                    "the NaN row is refused: {result:?}"
                );
            } else {
                result.unwrap_or_else(|e| panic!("request {n} was failed by another's row: {e}"));
            }
        }
        ledger.close().await;
    }
}
