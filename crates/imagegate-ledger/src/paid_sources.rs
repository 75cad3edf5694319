//! Provider output kept durable between its payment and its publication, for the
//! productions that must survive their process (deferred jobs: the queue retries
//! them after a crash). The charge is in the ledger first (`charges`); the picture
//! follows; a retry finds it here and pays nothing. Deleted once published.

use crate::backend::with_pool;
use crate::{Ledger, LedgerError};
use imagegate_core::ContentKey;
use sqlx::Row;

/// A picture paid for and not yet published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaidSource {
    pub provider: String,
    pub model: String,
    /// The request whose ledger row holds its charge.
    pub request_id: String,
    pub bytes: Vec<u8>,
}

impl Ledger {
    /// Keeps `source` for `key` (replacing an older one: the newest payment wins).
    pub async fn keep_paid_source(
        &self,
        key: ContentKey,
        source: &PaidSource,
    ) -> Result<(), LedgerError> {
        let now = self.pool.now_ms_sql();
        let sql = format!(
            "INSERT INTO paid_sources (content_key, provider, model, request_id, bytes, created_at) \
             VALUES ($1, $2, $3, $4, $5, {now}) \
             ON CONFLICT (content_key) DO UPDATE SET provider = excluded.provider, \
             model = excluded.model, request_id = excluded.request_id, bytes = excluded.bytes, \
             created_at = excluded.created_at"
        );
        with_pool!(&self.pool, p => {
            sqlx::query(&sql)
                .bind(key.to_hex())
                .bind(&source.provider)
                .bind(&source.model)
                .bind(&source.request_id)
                .bind(&source.bytes)
                .execute(p)
                .await
                .map(|_| ())
        })
        .map_err(|e| self.db(e))
    }

    /// The picture kept for `key`, if any (it stays until [`Ledger::drop_paid_source`]:
    /// a retry that dies too leaves it for the next).
    pub async fn paid_source(&self, key: ContentKey) -> Result<Option<PaidSource>, LedgerError> {
        with_pool!(&self.pool, p => {
            match sqlx::query(
                "SELECT provider, model, request_id, bytes FROM paid_sources WHERE content_key = $1",
            )
            .bind(key.to_hex())
            .fetch_optional(p)
            .await
            {
                Ok(Some(r)) => (|| {
                    Ok(Some(PaidSource {
                        provider: r.try_get(0)?,
                        model: r.try_get(1)?,
                        request_id: r.try_get(2)?,
                        bytes: r.try_get(3)?,
                    }))
                })(),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .map_err(|e| self.db(e))
    }

    /// Forgets the picture kept for `key` (its files are published).
    pub async fn drop_paid_source(&self, key: ContentKey) -> Result<(), LedgerError> {
        with_pool!(&self.pool, p => {
            sqlx::query("DELETE FROM paid_sources WHERE content_key = $1")
                .bind(key.to_hex())
                .execute(p)
                .await
                .map(|_| ())
        })
        .map_err(|e| self.db(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{on_both_backends, TestDb};

    on_both_backends!(a_paid_source_survives_reopen_until_dropped);

    async fn a_paid_source_survives_reopen_until_dropped(db: TestDb) {
        let key: ContentKey = "ab".repeat(32).parse().unwrap();
        let source = PaidSource {
            provider: "openai".into(),
            model: "gpt-image-2".into(),
            request_id: "job_1".into(),
            bytes: vec![0x89, b'P', b'N', b'G', 0, 255],
        };
        let ledger = db.open().await;
        assert_eq!(ledger.paid_source(key).await.unwrap(), None);
        ledger.keep_paid_source(key, &source).await.unwrap();
        let newer = PaidSource {
            request_id: "job_2".into(),
            ..source.clone()
        };
        ledger.keep_paid_source(key, &newer).await.unwrap();
        ledger.close().await;
        let again = db.open().await;
        assert_eq!(again.paid_source(key).await.unwrap(), Some(newer));
        again.drop_paid_source(key).await.unwrap();
        assert_eq!(again.paid_source(key).await.unwrap(), None);
    }
}
