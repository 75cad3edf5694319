//! Which request made a picture, found from the content-key prefix a watermark
//! carries (verification).

use crate::backend::with_pool;
use crate::{Ledger, LedgerError};
use imagegate_core::Micros;

/// The request that generated a content key: the first answered miss or bypass.
#[derive(Debug, Clone, PartialEq)]
pub struct OriginRow {
    pub request_id: String,
    pub content_key: String,
    /// RFC 3339 UTC.
    pub created_at: String,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub micros: Micros,
    /// The API key id that asked (never the secret); `None` for anonymous.
    pub api_key: Option<String>,
}

impl Ledger {
    /// The request that made the picture whose content key starts with
    /// `key_prefix` (lowercase hex), if this ledger recorded one.
    pub async fn origin_by_key_prefix(
        &self,
        key_prefix: &str,
    ) -> Result<Option<OriginRow>, LedgerError> {
        if key_prefix.is_empty() || !key_prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(LedgerError::Invalid(format!(
                "{key_prefix:?} is not a hex key prefix"
            )));
        }
        let low = key_prefix.to_ascii_lowercase();
        // Every key with the prefix sorts at or after it and before prefix + "g"
        // ('g' sorts after every hex digit): an index range, not a LIKE scan.
        let high = format!("{low}g");
        type Row = (
            String,
            String,
            String,
            Option<String>,
            Option<String>,
            i64,
            Option<String>,
        );
        let row: Option<Row> = with_pool!(&self.pool, p => {
            sqlx::query_as(
                "SELECT request_id, content_key, created_at, provider, model, micros, api_key \
                 FROM requests WHERE content_key >= $1 AND content_key < $2 \
                 AND cache IN ('miss', 'bypass') AND status = 'ok' ORDER BY id LIMIT 1",
            )
            .bind(&low)
            .bind(&high)
            .fetch_optional(p)
            .await
        })
        .map_err(|e| self.db(e))?;
        Ok(row.map(
            |(request_id, content_key, created_at, provider, model, micros, api_key)| OriginRow {
                request_id,
                content_key,
                created_at,
                provider,
                model,
                micros: Micros(micros),
                api_key,
            },
        ))
    }
}
