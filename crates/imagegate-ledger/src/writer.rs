//! Group commit for request rows. Every answered request writes its rows before the
//! response leaves; one transaction per request would make the fsync the ceiling of
//! the cache-hit path. One task owns the writes instead: it takes whatever requests
//! are waiting (up to [`MAX_BATCH`]), writes them in one transaction, commits, and
//! only then tells each caller its row id, so "returned means durable" still holds.
//! For PostgreSQL that task runs on the runtime and writes through the sqlx pool; for
//! SQLite it is a thread with its own connection ([`crate::sqlite_writer`] says why).

use crate::backend::{Pool, SQLITE_BUSY_TIMEOUT};
use crate::RequestRecord;
use chrono::{SecondsFormat, Utc};
use imagegate_core::{Micros, StageCost};
use sqlx::PgPool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Requests per transaction at most: large enough that a burst shares one commit,
/// small enough that one transaction never holds the SQLite write lock for long.
pub(crate) const MAX_BATCH: usize = 256;
/// Requests waiting for the writer at most; callers beyond it wait to enqueue.
const QUEUE: usize = 4096;

pub(crate) enum WriteError {
    Database(sqlx::Error),
    Sqlite(rusqlite::Error),
    /// The SQLite writer's connection or thread could not be started.
    Start(String),
    Stopped,
}

pub(crate) struct Pending {
    pub(crate) request: RequestRecord,
    pub(crate) stages: Vec<StageCost>,
    pub(crate) created_at: String,
    pub(crate) done: oneshot::Sender<Result<i64, WriteError>>,
}

#[derive(Clone)]
pub(crate) struct Writer {
    queue: mpsc::Sender<Pending>,
    /// Transactions committed, for the tests that check requests share them.
    #[cfg_attr(not(test), allow(dead_code))]
    commits: Arc<AtomicU64>,
}

impl Writer {
    /// Starts the writer (for PostgreSQL a task on the current runtime, for SQLite a
    /// thread with its own connection); it ends when the last `Writer` clone is dropped.
    pub(crate) fn spawn(pool: &Pool) -> Result<Writer, WriteError> {
        let (queue, pending) = mpsc::channel(QUEUE);
        let commits = Arc::new(AtomicU64::new(0));
        match pool {
            Pool::Sqlite(p) => {
                let path = p.connect_options().get_filename().to_path_buf();
                let conn = crate::sqlite_writer::open(&path, SQLITE_BUSY_TIMEOUT)
                    .map_err(WriteError::Sqlite)?;
                let counted = Arc::clone(&commits);
                std::thread::Builder::new()
                    .name("ledger-writer".into())
                    .spawn(move || crate::sqlite_writer::write_batches(conn, pending, &counted))
                    .map_err(|e| WriteError::Start(format!("starting the writer thread: {e}")))?;
            }
            Pool::Postgres(p) => {
                tokio::spawn(write_batches(p.clone(), pending, Arc::clone(&commits)));
            }
        }
        Ok(Writer { queue, commits })
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
        answer.await.unwrap_or(Err(WriteError::Stopped))
    }
}

async fn write_batches(
    pool: PgPool,
    mut pending: mpsc::Receiver<Pending>,
    commits: Arc<AtomicU64>,
) {
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
                let _ = batch.remove(0).done.send(Err(WriteError::Database(error)));
            }
            Err(_) => {
                for p in batch.drain(..) {
                    let result = commit(&pool, std::slice::from_ref(&p), &commits)
                        .await
                        .map(|ids| ids[0])
                        .map_err(WriteError::Database);
                    let _ = p.done.send(result);
                }
            }
        }
    }
}

async fn commit(
    pool: &PgPool,
    batch: &[Pending],
    commits: &AtomicU64,
) -> Result<Vec<i64>, sqlx::Error> {
    let ids = insert(pool, batch).await?;
    commits.fetch_add(1, Ordering::Relaxed);
    Ok(ids)
}

/// Rows per multi-row INSERT at most: 11 (requests) or 9 (stages) parameters a row
/// stays far below SQLite's 32,766 and PostgreSQL's 65,535 bind parameters.
const ROWS_PER_STATEMENT: usize = 512;

/// `items` in chunks whose lengths are powers of two (largest first, at most
/// [`ROWS_PER_STATEMENT`]): a handful of statement texts, each prepared once and kept
/// in the connection's statement cache, instead of one new text per batch size,
/// whose parsing cost about as much as the rows it inserted.
pub(crate) fn chunks<T>(mut items: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        if items.is_empty() {
            return None;
        }
        let len = items.len().min(ROWS_PER_STATEMENT);
        let (chunk, rest) = items.split_at(1 << len.ilog2());
        items = rest;
        Some(chunk)
    })
}

/// Writes `batch` in one transaction; the request row ids in `batch` order.
///
/// One multi-row INSERT per table, not one statement per row: every statement is a
/// round trip to the database, and the hits waiting for this commit wait for all of
/// them.
async fn insert(pool: &PgPool, batch: &[Pending]) -> Result<Vec<i64>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut ids = Vec::with_capacity(batch.len());
    for chunk in chunks(batch) {
        let keys: Vec<String> = chunk.iter().map(|p| p.request.key.to_hex()).collect();
        let mut query = sqlx::QueryBuilder::new(
            "INSERT INTO requests (request_id, content_key, cache, status, provider, model, \
             api_key, profile, micros, wall_ms, created_at) ",
        );
        query.push_values(chunk.iter().zip(&keys), |mut row, (pending, key)| {
            let Pending {
                request,
                stages,
                created_at,
                ..
            } = pending;
            let total: Micros = stages.iter().map(|s| s.micros).sum();
            row.push_bind(&request.request_id)
                .push_bind(key)
                .push_bind(request.cache.as_str())
                .push_bind(request.status.as_str())
                .push_bind(&request.provider)
                .push_bind(&request.model)
                .push_bind(&request.api_key)
                .push_bind(&request.profile)
                .push_bind(total.0)
                .push_bind(request.wall_ms)
                .push_bind(created_at);
        });
        query.push(" RETURNING id");
        // RETURNING gives the rows in no promised order. Both databases number the
        // rows of one INSERT in VALUES order, each above the last (SQLite
        // AUTOINCREMENT, a PostgreSQL identity), so sorted ids are in batch order;
        // concurrent_records_share_commits_and_every_row_lands checks it.
        let mut chunk_ids: Vec<i64> = query.build_query_scalar().fetch_all(&mut *tx).await?;
        chunk_ids.sort_unstable();
        if chunk_ids.len() != chunk.len() {
            return Err(sqlx::Error::Protocol(format!(
                "{} request rows inserted, {} ids returned",
                chunk.len(),
                chunk_ids.len()
            )));
        }
        ids.extend(chunk_ids);
    }
    let stages: Vec<(i64, &String, &StageCost, String)> = batch
        .iter()
        .zip(&ids)
        .flat_map(|(p, id)| {
            p.stages
                .iter()
                .map(move |s| (*id, &p.created_at, s, s.detail.to_string()))
        })
        .collect();
    for chunk in chunks(&stages) {
        let mut query = sqlx::QueryBuilder::new(
            "INSERT INTO stages (request, stage, micros, wall_ms, cpu_ms, bytes_in, \
             bytes_out, detail, created_at, unpriced) ",
        );
        query.push_values(chunk, |mut row, (id, created_at, s, detail)| {
            row.push_bind(*id)
                .push_bind(s.stage.as_str())
                .push_bind(s.micros.0)
                .push_bind(s.wall_ms)
                .push_bind(s.cpu_ms)
                .push_bind(saturating_i64(s.bytes_in))
                .push_bind(saturating_i64(s.bytes_out))
                .push_bind(detail)
                .push_bind(*created_at)
                .push_bind(i16::from(s.unpriced));
        });
        query.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(ids)
}

pub(crate) fn saturating_i64(v: u64) -> i64 {
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
            status: crate::RequestStatus::Ok,
            provider: Some("local".into()),
            model: Some("procedural-v1".into()),
            api_key: None,
            profile: "default".into(),
            wall_ms,
        }
    }

    #[test]
    fn chunks_are_powers_of_two_that_cover_everything_in_order() {
        for n in [0, 1, 2, 3, 7, 8, 255, 256, 1000, 1025] {
            let items: Vec<usize> = (0..n).collect();
            let parts: Vec<&[usize]> = super::chunks(&items).collect();
            assert_eq!(parts.concat(), items, "{n}");
            assert!(
                parts
                    .iter()
                    .all(|c| c.len().is_power_of_two() && c.len() <= super::ROWS_PER_STATEMENT),
                "{n}: {:?}",
                parts.iter().map(|c| c.len()).collect::<Vec<_>>()
            );
        }
    }

    fn stages() -> Vec<StageCost> {
        let mut lookup = StageCost::new(Stage::Cache);
        lookup.micros = Micros(3);
        vec![lookup]
    }

    /// Request `n`'s stages: as many as `n % 3 + 1`, each costing `n`, so a stage row
    /// linked to the wrong request shows.
    fn stages_of(n: usize) -> Vec<StageCost> {
        [Stage::Cache, Stage::Generate, Stage::Upload][..n % 3 + 1]
            .iter()
            .map(|&stage| {
                let mut s = StageCost::new(stage);
                s.micros = Micros(n as i64);
                s
            })
            .collect()
    }

    async fn concurrent_records_share_commits_and_every_row_lands(db: TestDb) {
        const N: usize = 400;
        let ledger = db.open().await;
        let tasks: Vec<_> = (0..N)
            .map(|n| {
                let ledger = ledger.clone();
                tokio::spawn(async move { ledger.record(&request(n, 1.0), &stages_of(n)).await })
            })
            .collect();
        let mut ids = HashSet::new();
        for (n, task) in tasks.into_iter().enumerate() {
            let id = task.await.unwrap().expect("every record commits");
            ids.insert(id);
            // The id returned is this request's row, and its stage rows point at it.
            let (request_id, micros, stage_rows, stage_micros): (String, i64, i64, i64) =
                with_pool!(&ledger.pool, p => {
                    sqlx::query_as(
                        "SELECT r.request_id, r.micros, COUNT(s.id), \
                         CAST(COALESCE(SUM(s.micros), 0) AS BIGINT) \
                         FROM requests r LEFT JOIN stages s ON s.request = r.id \
                         WHERE r.id = $1 GROUP BY r.request_id, r.micros",
                    )
                    .bind(id)
                    .fetch_one(p)
                    .await
                })
                .unwrap();
            let rows = (n % 3 + 1) as i64;
            assert_eq!(
                (request_id.as_str(), micros, stage_rows, stage_micros),
                (
                    format!("req-{n}").as_str(),
                    rows * n as i64,
                    rows,
                    rows * n as i64
                ),
                "request {n} got row {id}"
            );
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
        let expected_stages: usize = (0..N).map(|n| n % 3 + 1).sum();
        let expected_micros: usize = (0..N).map(|n| (n % 3 + 1) * n).sum();
        assert_eq!(
            (requests, stage_rows, micros),
            (N as i64, expected_stages as i64, expected_micros as i64)
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
                    matches!(result, Err(LedgerError::Write { .. })),
                    "the NaN row is refused: {result:?}"
                );
            } else {
                result.unwrap_or_else(|e| panic!("request {n} was failed by another's row: {e}"));
            }
        }
        ledger.close().await;
    }
}
