//! One production per key, whoever waits for it. The production runs in a task of
//! its own, not in the future of the caller who started it: a caller that
//! disconnects or times out (the first one included) neither cancels the paid work
//! nor causes a second production, the other callers keep waiting for the same
//! result, and a production that finishes after every caller left still finishes
//! (publishes, records its cost).
//!
//! The same shape as pict-rs's `concurrent_processor`: a map of running productions,
//! each a shared future; the task removes its own entry when it ends, by a guard, so
//! the entry goes on success, failure, panic and abort alike, and a failure is never
//! handed to a later caller.

use futures::future::{BoxFuture, FutureExt, Shared};
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// A running production's result, which any number of callers may await.
pub(crate) type Joined<V> = Shared<BoxFuture<'static, V>>;

/// Whether a caller started the production it waits for.
pub(crate) enum Flight<V: Clone> {
    Started(Joined<V>),
    Joined(Joined<V>),
}

type Running<K, V> = Arc<Mutex<HashMap<K, (u64, Joined<V>)>>>;

pub(crate) struct SingleFlight<K, V: Clone> {
    running: Running<K, V>,
    /// Tells one production's entry from a later one's for the same key.
    next_id: std::sync::atomic::AtomicU64,
}

impl<K, V> SingleFlight<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub(crate) fn new() -> Self {
        SingleFlight {
            running: Arc::default(),
            next_id: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The production of `key` running now, if any.
    pub(crate) fn running(&self, key: &K) -> Option<Joined<V>> {
        self.lock().get(key).map(|(_, joined)| joined.clone())
    }

    /// Joins the production of `key` if one runs; otherwise calls `start` and runs
    /// the future it makes in a task of its own. `panicked` turns a production that
    /// panicked (or was aborted) into the value its waiters get.
    pub(crate) fn join_or_start<S, F>(
        &self,
        key: K,
        start: S,
        panicked: fn(String) -> V,
    ) -> Flight<V>
    where
        S: FnOnce() -> F,
        F: Future<Output = V> + Send + 'static,
    {
        let mut running = self.lock();
        if let Some((_, joined)) = running.get(&key) {
            return Flight::Joined(joined.clone());
        }
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let production = start();
        let deregister = Deregister {
            running: Arc::clone(&self.running),
            key: key.clone(),
            id,
        };
        // The map's lock is held until the entry is in: a production that ends at
        // once waits for it in its guard, so it can never remove an entry before
        // the entry exists.
        let task = tokio::spawn(async move {
            let _deregister = deregister;
            production.await
        });
        let joined = async move {
            match task.await {
                Ok(v) => v,
                Err(e) => panicked(e.to_string()),
            }
        }
        .boxed()
        .shared();
        running.insert(key, (id, joined.clone()));
        Flight::Started(joined)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, (u64, Joined<V>)>> {
        // A panic while holding this lock leaves the map consistent (inserts and
        // removes are single calls), so a poisoned lock is still usable.
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Removes a production's entry when its task ends, however it ends.
struct Deregister<K: Eq + Hash, V: Clone> {
    running: Running<K, V>,
    key: K,
    id: u64,
}

impl<K: Eq + Hash, V: Clone> Drop for Deregister<K, V> {
    fn drop(&mut self) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            running.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    type Flights = SingleFlight<u32, Result<u32, String>>;

    fn panicked(message: String) -> Result<u32, String> {
        Err(message)
    }

    fn start(flights: &Flights, runs: &Arc<AtomicUsize>, ms: u64) -> Flight<Result<u32, String>> {
        let runs = runs.clone();
        flights.join_or_start(
            7,
            move || async move {
                runs.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(42)
            },
            panicked,
        )
    }

    fn joined(flight: Flight<Result<u32, String>>) -> Joined<Result<u32, String>> {
        match flight {
            Flight::Started(j) | Flight::Joined(j) => j,
        }
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_production() {
        let flights = Flights::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let first = start(&flights, &runs, 50);
        assert!(matches!(first, Flight::Started(_)));
        let others: Vec<_> = (0..10).map(|_| start(&flights, &runs, 50)).collect();
        assert!(others.iter().all(|f| matches!(f, Flight::Joined(_))));
        for f in others.into_iter().chain([first]) {
            assert_eq!(joined(f).await, Ok(42));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_production_outlives_every_caller_and_then_leaves_the_map() {
        let flights = Flights::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let first = start(&flights, &runs, 100);
        // The first caller gives up at once; a second joins and gives up too.
        let dropped = tokio::time::timeout(Duration::from_millis(10), joined(first)).await;
        assert!(dropped.is_err());
        let second = start(&flights, &runs, 100);
        assert!(matches!(second, Flight::Joined(_)));
        drop(second);
        assert!(
            flights.running(&7).is_some(),
            "still running with nobody waiting"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(flights.running(&7).is_none(), "gone once it ended");
        assert_eq!(runs.load(Ordering::SeqCst), 1, "nobody started it again");
    }

    #[tokio::test]
    async fn a_failure_is_not_handed_to_later_callers() {
        let flights = Flights::new();
        let failing = flights.join_or_start(7, || async { Err("store down".into()) }, panicked);
        assert_eq!(joined(failing).await, Err("store down".to_string()));
        tokio::task::yield_now().await;
        let runs = Arc::new(AtomicUsize::new(0));
        let retry = start(&flights, &runs, 1);
        assert!(
            matches!(retry, Flight::Started(_)),
            "a new production starts"
        );
        assert_eq!(joined(retry).await, Ok(42));
    }

    #[tokio::test]
    async fn a_panicking_production_answers_its_waiters_and_deregisters() {
        let flights = Flights::new();
        let boom = flights.join_or_start(
            7,
            || async {
                tokio::time::sleep(Duration::from_millis(5)).await;
                panic!("render exploded")
            },
            panicked,
        );
        let answer = joined(boom).await;
        assert!(answer.is_err(), "{answer:?}");
        assert!(flights.running(&7).is_none());
    }
}
