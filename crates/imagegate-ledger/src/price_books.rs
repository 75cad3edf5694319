//! The fleet's price book: a replica that installs a book from its own file (at
//! start-up, on an edit, SIGHUP or an admin reload) publishes its text here, and every
//! replica polls for the latest one, so all of them price with the same book within
//! one poll interval. The ledger stores text and version only; parsing and checking a
//! book is the providers crate's job.

use crate::backend::with_pool;
use crate::{Ledger, LedgerError};

/// A published price book.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedBook {
    pub version: String,
    pub text: String,
    pub origin: String,
}

impl Ledger {
    /// Publishes a book as the fleet's latest. Publishing a version again makes it the
    /// latest again (an operator reverting to an earlier file).
    pub async fn publish_price_book(
        &self,
        version: &str,
        text: &str,
        origin: &str,
    ) -> Result<(), LedgerError> {
        let now = self.pool.now_ms_sql();
        // The later of the clock and the newest row plus one: two publishes in the
        // same millisecond still order.
        let sql = format!(
            "INSERT INTO price_books (version, body, origin, installed_at) \
             VALUES ($1, $2, $3, (SELECT MAX(v) FROM (SELECT {now} AS v UNION ALL \
             SELECT COALESCE(MAX(installed_at), 0) + 1 FROM price_books) AS t)) \
             ON CONFLICT (version) DO UPDATE SET origin = excluded.origin, \
             installed_at = excluded.installed_at"
        );
        with_pool!(&self.pool, p => {
            sqlx::query(&sql)
                .bind(version)
                .bind(text)
                .bind(origin)
                .execute(p)
                .await
                .map(|_| ())
        })
        .map_err(|e| self.db(e))
    }

    /// The most recently published book, if any replica has published one.
    pub async fn latest_price_book(&self) -> Result<Option<PublishedBook>, LedgerError> {
        let row: Option<(String, String, String)> = with_pool!(&self.pool, p => {
            sqlx::query_as(
                "SELECT version, body, origin FROM price_books \
                 ORDER BY installed_at DESC LIMIT 1",
            )
            .fetch_optional(p)
            .await
        })
        .map_err(|e| self.db(e))?;
        Ok(row.map(|(version, text, origin)| PublishedBook {
            version,
            text,
            origin,
        }))
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{on_both_backends, TestDb};

    on_both_backends!(
        the_latest_publish_wins,
        republishing_makes_a_version_latest_again
    );

    async fn the_latest_publish_wins(db: TestDb) {
        let ledger = db.open().await;
        assert_eq!(ledger.latest_price_book().await.expect("query"), None);
        ledger
            .publish_price_book(
                "aaaaaaaaaaaa",
                "[[model]] # a",
                "replica-1:config/pricing.toml",
            )
            .await
            .expect("published");
        ledger
            .publish_price_book(
                "bbbbbbbbbbbb",
                "[[model]] # b",
                "replica-2:config/pricing.toml",
            )
            .await
            .expect("published");
        let latest = ledger
            .latest_price_book()
            .await
            .expect("query")
            .expect("one");
        assert_eq!(latest.version, "bbbbbbbbbbbb");
        assert_eq!(latest.text, "[[model]] # b");
        assert_eq!(latest.origin, "replica-2:config/pricing.toml");
    }

    async fn republishing_makes_a_version_latest_again(db: TestDb) {
        let ledger = db.open().await;
        for v in ["aaaaaaaaaaaa", "bbbbbbbbbbbb", "aaaaaaaaaaaa"] {
            ledger
                .publish_price_book(v, &format!("# {v}"), "test")
                .await
                .expect("published");
        }
        let latest = ledger
            .latest_price_book()
            .await
            .expect("query")
            .expect("one");
        assert_eq!(latest.version, "aaaaaaaaaaaa");
    }
}
