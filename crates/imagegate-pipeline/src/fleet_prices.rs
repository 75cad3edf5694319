//! One price book for the whole fleet. A replica that installs a book from its own
//! file (at start, on an edit, SIGHUP or `POST /v1/admin/prices/reload`) publishes its
//! text to the ledger database; every replica polls for the latest published book and
//! installs it, so replicas sharing a ledger price with the same book within one poll
//! interval (`[fleet] prices_poll_secs`). A book another replica published is held to
//! this replica's own strict check (every model it offers priced) and refused, with
//! the old book kept, when it fails it.

use imagegate_ledger::{Ledger, PublishedBook};
use imagegate_providers::{LivePrices, PriceBook};
use std::sync::Arc;
use std::time::Duration;

/// The origin of books installed from the fleet, so they are not published back.
const FLEET_ORIGIN: &str = "fleet";

pub(crate) fn spawn(
    ledger: Ledger,
    prices: Arc<LivePrices>,
    replica: String,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        Sync {
            ledger,
            prices,
            replica,
            published: None,
            refused: None,
        }
        .run(every)
        .await
    })
}

struct Sync {
    ledger: Ledger,
    prices: Arc<LivePrices>,
    replica: String,
    /// The version this replica last published.
    published: Option<String>,
    /// The last fleet version this replica could not use.
    refused: Option<String>,
}

impl Sync {
    async fn run(mut self, every: Duration) {
        let mut installed = self.prices.subscribe();
        // At start the fleet's book wins over this replica's file: a replica
        // restarting with an older file must not roll the fleet back. Editing the
        // file (or a reload) afterwards publishes it.
        match self.ledger.latest_price_book().await {
            Ok(Some(latest)) => self.adopt(latest),
            Ok(None) => self.publish(&self.prices.current()).await,
            Err(e) => tracing::warn!(error = %e, "cannot read the fleet's price book"),
        }
        installed.mark_unchanged();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                changed = installed.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let book = installed.borrow_and_update().clone();
                    if is_local(&book) {
                        self.publish(&book).await;
                    }
                }
                _ = tick.tick() => {
                    let current = self.prices.current();
                    // A local book whose publish failed (database down) goes again.
                    if is_local(&current) && self.published.as_deref() != Some(current.version()) {
                        self.publish(&current).await;
                        continue;
                    }
                    match self.ledger.latest_price_book().await {
                        Ok(Some(latest)) if latest.version != current.version() => self.adopt(latest),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "cannot read the fleet's price book"),
                    }
                }
            }
        }
    }

    async fn publish(&mut self, book: &PriceBook) {
        let origin = format!("{}:{}", self.replica, book.origin());
        match self
            .ledger
            .publish_price_book(book.version(), book.text(), &origin)
            .await
        {
            Ok(()) => {
                self.published = Some(book.version().to_string());
                tracing::info!(
                    version = book.version(),
                    "price book published to the fleet"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "price book not published to the fleet; will retry")
            }
        }
    }

    fn adopt(&mut self, latest: PublishedBook) {
        if latest.version == self.prices.current().version()
            || self.refused.as_deref() == Some(latest.version.as_str())
        {
            return;
        }
        let origin = format!("{FLEET_ORIGIN}:{}", latest.origin);
        if let Err(e) = self.prices.install_text(&latest.text, &origin) {
            tracing::error!(
                version = %latest.version,
                error = %e,
                "the fleet's price book does not fit this replica; keeping the old one"
            );
            self.refused = Some(latest.version);
        }
    }
}

fn is_local(book: &PriceBook) -> bool {
    !book.origin().starts_with(FLEET_ORIGIN)
}
