//! SQLite's side of the group commit in [`crate::writer`]: one connection, on a thread of
//! its own, takes whatever requests are waiting, inserts them with prepared statements,
//! commits, and only then answers each caller.
//!
//! Why not through sqlx, as PostgreSQL is: sqlx runs every SQLite statement on the
//! connection's worker thread and answers over a channel, so one batch was four round
//! trips between threads (begin, two multi-row inserts, commit) plus a ping whenever the
//! pool handed out a connection; every argument was boxed into sqlx's own value type; and
//! the pool gave each batch whichever connection was free, whose page cache the previous
//! batch's commit on another connection had made stale, so each batch began by
//! re-reading pages. Under cache-hit load the ledger took about 42% of the server's
//! CPU that way (BENCHMARKS.md, "Cache hits, 2026-11-25 morning").

use crate::writer::{chunks, saturating_i64, Pending, WriteError, MAX_BATCH};
use imagegate_core::{Micros, StageCost};
use rusqlite::{params_from_iter, Connection, OpenFlags, ToSql, TransactionBehavior};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

const REQUEST_COLUMNS: &str = "INSERT INTO requests (request_id, content_key, cache, status, \
     provider, model, api_key, profile, micros, wall_ms, created_at) VALUES ";
const REQUEST_ROW: &str = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
const STAGE_COLUMNS: &str = "INSERT INTO stages (request, stage, micros, wall_ms, cpu_ms, \
     bytes_in, bytes_out, detail, created_at, unpriced) VALUES ";
const STAGE_ROW: &str = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
/// Statement texts kept prepared: one per power-of-two chunk length and table.
const STATEMENT_CACHE: usize = 32;

/// `INSERT ... VALUES row, row, ...` with `rows` placeholder groups.
fn insert_sql(columns: &str, row: &str, rows: usize, returning: bool) -> String {
    let mut sql = String::with_capacity(columns.len() + rows * (row.len() + 2) + 13);
    sql.push_str(columns);
    for i in 0..rows {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(row);
    }
    if returning {
        sql.push_str(" RETURNING id");
    }
    sql
}

/// Opens the writer's connection to a ledger file the pool has already created and
/// migrated, with the pool's durability settings.
pub(crate) fn open(path: &Path, busy_timeout: Duration) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(busy_timeout)?;
    // WAL belongs to the file and the pool set it; asking again is a no-op that fails
    // loudly if the file could not be put in WAL mode.
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "journal_mode is {mode}, not wal"
        )));
    }
    // FULL: a commit is on disk before the response that reports it leaves.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// The writer thread's loop; it returns when every [`crate::writer::Writer`] is gone.
pub(crate) fn write_batches(
    mut conn: Connection,
    mut pending: mpsc::Receiver<Pending>,
    commits: &AtomicU64,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while pending.blocking_recv_many(&mut batch, MAX_BATCH) > 0 {
        match commit(&mut conn, &batch, commits) {
            Ok(ids) => {
                for (p, id) in batch.drain(..).zip(ids) {
                    let _ = p.done.send(Ok(id));
                }
            }
            Err(error) if batch.len() == 1 => {
                let _ = batch.remove(0).done.send(Err(WriteError::Sqlite(error)));
            }
            // One request's bad row must not fail the others it was batched with:
            // write each alone, so every caller gets its own outcome.
            Err(_) => {
                for p in batch.drain(..) {
                    let result = commit(&mut conn, std::slice::from_ref(&p), commits)
                        .map(|ids| ids[0])
                        .map_err(WriteError::Sqlite);
                    let _ = p.done.send(result);
                }
            }
        }
    }
}

/// Writes `batch` in one transaction; the request row ids in `batch` order. On an
/// error the transaction rolls back when it is dropped, and nothing of it is kept.
///
/// One multi-row INSERT per table and chunk, not one per row: each statement opens
/// cursors on the table and its indexes and updates the AUTOINCREMENT counter, and
/// per row that cost about as much as the rows themselves.
fn commit(
    conn: &mut Connection,
    batch: &[Pending],
    commits: &AtomicU64,
) -> rusqlite::Result<Vec<i64>> {
    // IMMEDIATE: take the write lock (waiting out the busy timeout) before reading, so
    // a snapshot gone stale behind another writer cannot fail the upgrade.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut ids = Vec::with_capacity(batch.len());
    for chunk in chunks(batch) {
        let keys: Vec<String> = chunk.iter().map(|p| p.request.key.to_hex()).collect();
        let totals: Vec<i64> = chunk
            .iter()
            .map(|p| p.stages.iter().map(|s| s.micros).sum::<Micros>().0)
            .collect();
        let outcomes: Vec<(&str, &str)> = chunk
            .iter()
            .map(|p| (p.request.cache.as_str(), p.request.status.as_str()))
            .collect();
        let mut values: Vec<&dyn ToSql> = Vec::with_capacity(chunk.len() * 11);
        for (((p, key), total), (outcome, status)) in
            chunk.iter().zip(&keys).zip(&totals).zip(&outcomes)
        {
            let r = &p.request;
            values.extend([
                &r.request_id as &dyn ToSql,
                key,
                outcome,
                status,
                &r.provider,
                &r.model,
                &r.api_key,
                &r.profile,
                total,
                &r.wall_ms,
                &p.created_at,
            ]);
        }
        let sql = insert_sql(REQUEST_COLUMNS, REQUEST_ROW, chunk.len(), true);
        let mut insert = tx.prepare_cached(&sql)?;
        let mut chunk_ids = insert
            .query_map(params_from_iter(values), |row| row.get::<_, i64>(0))?
            .collect::<rusqlite::Result<Vec<i64>>>()?;
        // RETURNING promises no order; SQLite numbers one INSERT's rows in VALUES
        // order, each above the last, so sorted ids are in batch order
        // (concurrent_records_share_commits_and_every_row_lands checks it).
        chunk_ids.sort_unstable();
        if chunk_ids.len() != chunk.len() {
            return Err(rusqlite::Error::StatementChangedRows(chunk_ids.len()));
        }
        ids.extend(chunk_ids);
    }
    let stages: Vec<(i64, &Pending, &StageCost, String)> = batch
        .iter()
        .zip(&ids)
        .flat_map(|(p, &id)| {
            p.stages
                .iter()
                .map(move |s| (id, p, s, s.detail.to_string()))
        })
        .collect();
    for chunk in chunks(&stages) {
        let names: Vec<(&str, [i64; 3])> = chunk
            .iter()
            .map(|(_, _, s, _)| {
                let numbers = [
                    saturating_i64(s.bytes_in),
                    saturating_i64(s.bytes_out),
                    i64::from(s.unpriced),
                ];
                (s.stage.as_str(), numbers)
            })
            .collect();
        let mut values: Vec<&dyn ToSql> = Vec::with_capacity(chunk.len() * 10);
        for ((id, p, s, detail), (name, [bytes_in, bytes_out, unpriced])) in
            chunk.iter().zip(&names)
        {
            values.extend([
                id as &dyn ToSql,
                name,
                &s.micros.0,
                &s.wall_ms,
                &s.cpu_ms,
                bytes_in,
                bytes_out,
                detail,
                &p.created_at,
                unpriced,
            ]);
        }
        let sql = insert_sql(STAGE_COLUMNS, STAGE_ROW, chunk.len(), false);
        tx.prepare_cached(&sql)?.execute(params_from_iter(values))?;
    }
    tx.commit()?;
    commits.fetch_add(1, Ordering::Relaxed);
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use crate::backend::SQLITE_BUSY_TIMEOUT;
    use crate::testing::TestDb;

    /// The writer's own connection, not the pool's options, decides whether a hit's
    /// row is on disk before its answer leaves, so its settings are checked on it.
    #[tokio::test]
    async fn the_writer_connection_commits_durably() {
        let db = TestDb::sqlite().await;
        db.open().await.close().await;
        let TestDb::Sqlite(dir) = &db else {
            unreachable!("TestDb::sqlite is SQLite")
        };
        let conn = super::open(&dir.path().join("sub/ledger.db"), SQLITE_BUSY_TIMEOUT)
            .expect("the migrated file opens");
        let pragma = |name: &str| -> String {
            conn.query_row(&format!("PRAGMA {name}"), [], |row| {
                row.get::<_, rusqlite::types::Value>(0)
            })
            .map(|v| match v {
                rusqlite::types::Value::Integer(i) => i.to_string(),
                rusqlite::types::Value::Text(t) => t,
                other => format!("{other:?}"),
            })
            .expect(name)
        };
        // synchronous: 2 is FULL; foreign_keys: 1 is on.
        assert_eq!(
            [
                pragma("journal_mode"),
                pragma("synchronous"),
                pragma("foreign_keys"),
                pragma("busy_timeout")
            ],
            ["wal", "2", "1", "10000"]
        );
    }
}
