//! Single flight across replicas: a production takes its key's lease in the ledger
//! database before it makes anything, so replicas sharing the store and the ledger
//! generate a key once between them. A replica that finds the lease taken waits for
//! the holder's manifest; a holder that dies stops renewing, its lease expires and
//! a waiter takes over. The lease is given back by a guard, so it goes however the
//! production ends.

use crate::error::PipelineError;
use crate::Pipeline;
use imagegate_core::{ContentKey, Manifest};
use imagegate_ledger::Ledger;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a production came to.
#[derive(Clone)]
pub(crate) enum Produced {
    /// Made here, published, its costs in the ledger.
    Made(Arc<Manifest>),
    /// Already published (by another replica, or before a restart).
    Found(Arc<Manifest>),
}

/// Runs `make` under `key`'s lease unless the key is published. `look_first` is false
/// for a refresh, which replaces what is published.
pub(crate) async fn once_across_replicas<F, Fut>(
    pipeline: &Pipeline,
    key: ContentKey,
    look_first: bool,
    make: F,
) -> Result<Produced, PipelineError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Arc<Manifest>, PipelineError>>,
{
    let fleet = &pipeline.config().fleet;
    let ttl = Duration::from_secs(fleet.lease_ttl_secs.max(1));
    let deadline = Instant::now() + Duration::from_secs(fleet.wait_secs.max(1));
    let first_poll = Duration::from_millis(fleet.poll_ms.max(1));
    let mut poll = first_poll;
    let ledger = pipeline.ledger();
    let replica = pipeline.replica();
    loop {
        if look_first {
            if let Some(m) = pipeline.read_manifest(key).await? {
                return Ok(Produced::Found(Arc::new(m)));
            }
        }
        if ledger.try_acquire_lease(key, replica, ttl).await? {
            break;
        }
        if Instant::now() >= deadline {
            return Err(PipelineError::Overloaded {
                what: "another replica's generation of this image",
                retry_after: Duration::from_secs(2),
            });
        }
        tokio::time::sleep(poll).await;
        poll = (poll * 2).min(first_poll * 8);
    }
    let lease = Lease {
        ledger: ledger.clone(),
        key,
        holder: replica.to_string(),
        released: false,
    };
    // Published between our lookup and taking the lease.
    if look_first {
        if let Some(m) = pipeline.read_manifest(key).await? {
            lease.release().await;
            return Ok(Produced::Found(Arc::new(m)));
        }
    }
    let renew = async {
        loop {
            tokio::time::sleep(ttl / 3).await;
            match ledger.renew_lease(key, replica, ttl).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(%key, "lease lost while generating; another replica may generate too");
                    std::future::pending::<()>().await;
                }
                Err(e) => tracing::warn!(%key, error = %e, "lease renewal failed"),
            }
        }
    };
    let made = tokio::select! {
        made = make() => made,
        () = renew => unreachable!("the renewal loop never ends"),
    };
    lease.release().await;
    made.map(Produced::Made)
}

/// A held lease; released explicitly, or in the background when dropped.
struct Lease {
    ledger: Ledger,
    key: ContentKey,
    holder: String,
    released: bool,
}

impl Lease {
    async fn release(mut self) {
        self.released = true;
        if let Err(e) = self.ledger.release_lease(self.key, &self.holder).await {
            // It expires by itself; waiters find the manifest first anyway.
            tracing::warn!(key = %self.key, error = %e, "lease release failed");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        // Dropped mid-production (a panic, an abort): give the key back now rather
        // than make every replica wait out the TTL.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let ledger = self.ledger.clone();
            let (key, holder) = (self.key, std::mem::take(&mut self.holder));
            runtime.spawn(async move {
                if let Err(e) = ledger.release_lease(key, &holder).await {
                    tracing::warn!(%key, error = %e, "lease release failed");
                }
            });
        }
    }
}
