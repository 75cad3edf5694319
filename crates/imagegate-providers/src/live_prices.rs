//! The price book in force, replaced whole without a restart.
//!
//! One [`LivePrices`] per process holds the current book behind a `watch` channel:
//! a call takes the book in force when it starts and keeps it to the end, so its
//! quote, its charge and the version its ledger row names all agree. A new book
//! (the file edited, SIGHUP, `POST /v1/admin/prices/reload`, or another replica's
//! book read from the fleet's ledger) is parsed and held to the same strict check as
//! at start-up before it replaces the old one; a bad one is refused with its
//! file/line/column error and the old book keeps serving.

use crate::price_book::{unpriced_offers, Offered, PriceBook, PriceError};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Reloaded {
    /// The version in force now.
    pub version: String,
    /// The version before.
    pub previous: String,
    /// False when the new text was the book already in force.
    pub changed: bool,
    pub entries: usize,
}

/// The current price book, shared by the router and everything that shows prices.
pub struct LivePrices {
    current: watch::Sender<Arc<PriceBook>>,
    path: Option<PathBuf>,
    offered: Vec<Offered>,
    /// The version of the last text refused, so a watcher reports a broken file once,
    /// not at every look.
    last_refused: Mutex<Option<String>>,
    /// The version of the file's text when last read: the watcher acts when the file
    /// changes, not whenever the book in force differs from it (in a fleet the book
    /// in force may be another replica's).
    file_version: Mutex<Option<String>>,
}

impl std::fmt::Debug for LivePrices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LivePrices")
            .field("version", &self.current().version())
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl LivePrices {
    /// Holds `book`, which must price every model in `offered` (or find it marked
    /// `unpriced`). `path` is the file reloads read.
    pub fn new(
        book: PriceBook,
        path: Option<PathBuf>,
        offered: Vec<Offered>,
    ) -> Result<LivePrices, PriceError> {
        check_offers(&book, &offered)?;
        let file_version = path.as_ref().map(|_| book.version().to_string());
        Ok(LivePrices {
            current: watch::Sender::new(Arc::new(book)),
            path,
            offered,
            last_refused: Mutex::new(None),
            file_version: Mutex::new(file_version),
        })
    }

    /// The book in force now. Keep the `Arc` for the length of one call.
    pub fn current(&self) -> Arc<PriceBook> {
        self.current.borrow().clone()
    }

    /// A receiver that sees every book installed from now on (fleet publishing).
    pub fn subscribe(&self) -> watch::Receiver<Arc<PriceBook>> {
        self.current.subscribe()
    }

    pub fn path(&self) -> Option<&std::path::Path> {
        self.path.as_deref()
    }

    pub fn offered(&self) -> &[Offered] {
        &self.offered
    }

    /// Reads the book's file again and installs it.
    pub fn reload_file(&self) -> Result<Reloaded, PriceError> {
        let path = self.path.as_ref().ok_or_else(|| PriceError::Read {
            path: "(none)".into(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "this price book was not loaded from a file",
            ),
        })?;
        let text = std::fs::read_to_string(path).map_err(|source| PriceError::Read {
            path: path.display().to_string(),
            source,
        })?;
        *lock(&self.file_version) = Some(version_of(&text));
        self.install_text(&text, &path.display().to_string())
    }

    /// Parses `text` and, when it is a valid book pricing every offer, makes it the
    /// book in force. On any error the old book stays.
    pub fn install_text(&self, text: &str, origin: &str) -> Result<Reloaded, PriceError> {
        let previous = self.current();
        let result = PriceBook::parse(text, origin).and_then(|book| {
            check_offers(&book, &self.offered)?;
            Ok(book)
        });
        let book = match result {
            Ok(book) => book,
            Err(e) => {
                metrics::counter!("imagegate_price_book_reloads_total", "result" => "refused")
                    .increment(1);
                *lock(&self.last_refused) = Some(version_of(text));
                return Err(e);
            }
        };
        let changed = book.version() != previous.version();
        let reloaded = Reloaded {
            version: book.version().to_string(),
            previous: previous.version().to_string(),
            changed,
            entries: book.entries().len(),
        };
        if changed {
            self.current.send_replace(Arc::new(book));
            metrics::counter!("imagegate_price_book_reloads_total", "result" => "installed")
                .increment(1);
            tracing::info!(
                version = %reloaded.version,
                previous = %reloaded.previous,
                origin,
                "price book installed"
            );
        }
        Ok(reloaded)
    }

    /// Looks at the file every `every` and installs it when its text changed; a bad
    /// edit is logged once and the old book keeps serving. Ends with the process.
    pub fn watch_file(self: &Arc<Self>, every: Duration) -> Option<tokio::task::JoinHandle<()>> {
        let path = self.path.clone()?;
        let live = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(live) = live.upgrade() else { return };
                let Ok(text) = tokio::fs::read_to_string(&path).await else {
                    continue;
                };
                let version = version_of(&text);
                let seen = lock(&live.file_version).as_deref() == Some(version.as_str())
                    || lock(&live.last_refused).as_deref() == Some(version.as_str());
                if seen {
                    continue;
                }
                *lock(&live.file_version) = Some(version);
                if let Err(e) = live.install_text(&text, &path.display().to_string()) {
                    tracing::error!(error = %e, "edited price book refused; the old one stays in force");
                }
            }
        }))
    }
}

fn version_of(text: &str) -> String {
    blake3::hash(text.as_bytes()).to_hex()[..12].to_string()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain values, always valid: a panic elsewhere cannot leave them half-written.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn check_offers(book: &PriceBook, offered: &[Offered]) -> Result<(), PriceError> {
    let missing = unpriced_offers(book, offered);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PriceError::Unpriced {
            origin: book.origin().to_string(),
            models: missing,
        })
    }
}
