//! Write transactions that serialise what must not interleave: a budget check and
//! the reservation it grants, a charge and its settlement.
//!
//! SQLite takes its one write lock at `BEGIN IMMEDIATE`, before the transaction reads,
//! so a check-then-write is atomic across every connection and process on the file.
//! PostgreSQL runs concurrent transactions, so those that must not interleave take an
//! advisory lock on what they share (one key's budget), released at commit.

use sqlx::{PgPool, Postgres, Sqlite, SqlitePool, Transaction};

pub(crate) trait BeginWrite {
    type Db: sqlx::Database;

    async fn begin_write(&self) -> Result<Transaction<'static, Self::Db>, sqlx::Error>;
}

impl BeginWrite for SqlitePool {
    type Db = Sqlite;

    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.begin_with("BEGIN IMMEDIATE").await
    }
}

impl BeginWrite for PgPool {
    type Db = Postgres;

    async fn begin_write(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.begin().await
    }
}

/// Holds `name`'s lock until the transaction ends: PostgreSQL's transaction-scoped
/// advisory lock on a 64-bit hash of the name; nothing on SQLite, whose write
/// transaction already excludes every other writer.
pub(crate) trait LockName {
    async fn lock_name(&mut self, name: &str) -> Result<(), sqlx::Error>;
}

impl LockName for Transaction<'static, Sqlite> {
    async fn lock_name(&mut self, _name: &str) -> Result<(), sqlx::Error> {
        Ok(())
    }
}

impl LockName for Transaction<'static, Postgres> {
    async fn lock_name(&mut self, name: &str) -> Result<(), sqlx::Error> {
        let hash = blake3::hash(name.as_bytes());
        let id = i64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"));
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(id)
            .execute(&mut **self)
            .await
            .map(|_| ())
    }
}
