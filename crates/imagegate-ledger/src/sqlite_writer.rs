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
//! re-reading pages. Under cache-hit load the ledger took about half of the server's
//! time that way (BENCHMARKS.md, "Cache hits, 2026-11-25").

use crate::writer::{saturating_i64, Pending, WriteError, MAX_BATCH};
use imagegate_core::Micros;
use rusqlite::{params, Connection, OpenFlags, TransactionBehavior};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

const INSERT_REQUEST: &str = "INSERT INTO requests (request_id, content_key, cache, status, \
     provider, model, api_key, profile, micros, wall_ms, created_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";
const INSERT_STAGE: &str = "INSERT INTO stages (request, stage, micros, wall_ms, cpu_ms, \
     bytes_in, bytes_out, detail, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

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
fn commit(
    conn: &mut Connection,
    batch: &[Pending],
    commits: &AtomicU64,
) -> rusqlite::Result<Vec<i64>> {
    // IMMEDIATE: take the write lock (waiting out the busy timeout) before reading, so
    // a snapshot gone stale behind another writer cannot fail the upgrade.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut ids = Vec::with_capacity(batch.len());
    {
        let mut insert_request = tx.prepare_cached(INSERT_REQUEST)?;
        let mut insert_stage = tx.prepare_cached(INSERT_STAGE)?;
        for Pending {
            request,
            stages,
            created_at,
            ..
        } in batch
        {
            let total: Micros = stages.iter().map(|s| s.micros).sum();
            let id = insert_request.insert(params![
                request.request_id,
                request.key.to_hex(),
                request.cache.as_str(),
                request.status,
                request.provider,
                request.model,
                request.api_key,
                request.profile,
                total.0,
                request.wall_ms,
                created_at,
            ])?;
            for s in stages {
                insert_stage.execute(params![
                    id,
                    s.stage.as_str(),
                    s.micros.0,
                    s.wall_ms,
                    s.cpu_ms,
                    saturating_i64(s.bytes_in),
                    saturating_i64(s.bytes_out),
                    s.detail.to_string(),
                    created_at,
                ])?;
            }
            ids.push(id);
        }
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
