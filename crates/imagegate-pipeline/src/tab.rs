//! A production's running bill. Costs are added as stages complete; the moment a
//! provider has been paid, the bill goes into the ledger (a request row `in_progress`
//! with the paid stage, durable before the work goes on), and it is settled with
//! the rest when the production ends, whatever the end: published, blocked, failed
//! downstream, or dropped. A bill dropped unsettled (a panic, an abort, a ledger
//! that failed when settling) settles itself in the background, retrying while the
//! ledger is away, so a paid call can never leave the ledger.

use crate::budget::Reservation;
use crate::error::PipelineError;
use imagegate_core::StageCost;
use imagegate_ledger::{ChargeId, Ledger, RequestRecord, RequestStatus};
use std::time::{Duration, Instant};

/// How long a bill dropped unsettled keeps trying to reach the ledger.
const SETTLE_RETRY_FOR: Duration = Duration::from_secs(600);

pub(crate) struct Tab {
    ledger: Ledger,
    request: RequestRecord,
    started: Instant,
    /// The request row, once a paid stage made it durable.
    charge: Option<ChargeId>,
    /// Stages not in the ledger yet.
    pending: Vec<StageCost>,
    /// Every stage so far, in order: the manifest's and the answer's.
    all: Vec<StageCost>,
    reservation: Option<Reservation>,
    /// The status to settle with if the bill is dropped unsettled.
    status_if_dropped: RequestStatus,
    settled: bool,
}

impl Tab {
    pub(crate) fn new(
        ledger: Ledger,
        request: RequestRecord,
        started: Instant,
        reservation: Option<Reservation>,
    ) -> Tab {
        Tab {
            ledger,
            request,
            started,
            charge: None,
            pending: Vec::new(),
            all: Vec::new(),
            reservation,
            status_if_dropped: RequestStatus::Abandoned,
            settled: false,
        }
    }

    /// Takes over a charge already in the ledger with its paid `stage` (a line of a
    /// provider's batch, charged when its result was read): the bill settles that
    /// row instead of opening another.
    pub(crate) fn adopt(&mut self, charge: ChargeId, stage: StageCost) {
        self.all.push(stage);
        self.charge = Some(charge);
    }

    /// The request row's facts, to fill in as they become known.
    pub(crate) fn request_mut(&mut self) -> &mut RequestRecord {
        &mut self.request
    }

    pub(crate) fn stages(&self) -> &[StageCost] {
        &self.all
    }

    pub(crate) fn add(&mut self, stage: StageCost) {
        self.all.push(stage.clone());
        self.pending.push(stage);
    }

    /// Adds a stage someone was paid for and makes the bill durable now: on return
    /// the charge is in the ledger and counts against the key's budget. On error
    /// the stage stays on the bill, which keeps trying to reach the ledger.
    pub(crate) async fn paid(&mut self, stage: StageCost) -> Result<(), PipelineError> {
        self.add(stage);
        if self.charge.is_some() {
            return Ok(());
        }
        self.request.status = RequestStatus::InProgress;
        self.request.wall_ms = elapsed_ms(self.started);
        let charge = self
            .ledger
            .open_charge(
                &self.request,
                &self.pending,
                self.reservation.as_ref().and_then(Reservation::id),
            )
            .await?;
        self.charge = Some(charge);
        self.pending.clear();
        Ok(())
    }

    /// Settles the bill with `status`: the stages not yet in the ledger, the final
    /// status and wall time, and the reservation's release, durable on return.
    /// Returns the stages, all of them. If the ledger fails, the bill settles itself
    /// in the background once it is dropped.
    pub(crate) async fn settle(
        &mut self,
        status: RequestStatus,
    ) -> Result<Vec<StageCost>, PipelineError> {
        self.status_if_dropped = status;
        let wall_ms = elapsed_ms(self.started);
        settle(
            &self.ledger,
            &mut self.request,
            self.charge,
            &self.pending,
            status,
            wall_ms,
            self.reservation.as_ref().and_then(Reservation::id),
        )
        .await?;
        self.settled = true;
        self.pending.clear();
        if let Some(r) = self.reservation.take() {
            if self.charge.is_some() {
                r.settled();
            }
        }
        Ok(std::mem::take(&mut self.all))
    }

    /// Settles as failed and hands back `error`: the path every failure after a
    /// payment takes. A ledger that fails too is logged; the bill retries it.
    pub(crate) async fn fail(&mut self, error: PipelineError) -> PipelineError {
        if let Err(e) = self.settle(RequestStatus::Failed).await {
            tracing::error!(key = %self.request.key, error = %e, "recording a failed request's costs failed; retrying in the background");
        }
        error
    }
}

fn elapsed_ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1e3
}

/// The settlement itself: on an open charge, its remaining stages and status; on a
/// bill that never paid anyone, one request row with everything.
async fn settle(
    ledger: &Ledger,
    request: &mut RequestRecord,
    charge: Option<ChargeId>,
    pending: &[StageCost],
    status: RequestStatus,
    wall_ms: f64,
    reservation: Option<imagegate_ledger::ReservationId>,
) -> Result<(), PipelineError> {
    match charge {
        Some(charge) => {
            ledger
                .settle_charge(charge, status, pending, wall_ms, reservation)
                .await?
        }
        None => {
            request.status = status;
            request.wall_ms = wall_ms;
            ledger.record(request, pending).await?;
        }
    }
    Ok(())
}

impl Drop for Tab {
    fn drop(&mut self) {
        if self.settled || (self.charge.is_none() && self.pending.is_empty()) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(key = %self.request.key, "a bill was dropped outside the runtime; its costs are not recorded");
            return;
        };
        let ledger = self.ledger.clone();
        let mut request = self.request.clone();
        let charge = self.charge;
        let pending = std::mem::take(&mut self.pending);
        let status = self.status_if_dropped;
        let wall_ms = elapsed_ms(self.started);
        // Settled by the charge when there is one; otherwise it simply expires.
        let reservation = self.reservation.take();
        let reservation_id = reservation.as_ref().and_then(Reservation::id);
        runtime.spawn(async move {
            let deadline = Instant::now() + SETTLE_RETRY_FOR;
            let mut wait = Duration::from_millis(200);
            loop {
                match settle(
                    &ledger,
                    &mut request,
                    charge,
                    &pending,
                    status,
                    wall_ms,
                    reservation_id.filter(|_| charge.is_some()),
                )
                .await
                {
                    Ok(()) => {
                        if let Some(r) = reservation {
                            if charge.is_some() {
                                r.settled();
                            }
                        }
                        tracing::warn!(key = %request.key, status = status.as_str(), "a request's costs were settled after it was dropped");
                        return;
                    }
                    Err(e) if Instant::now() < deadline => {
                        tracing::warn!(key = %request.key, error = %e, "settling a dropped request's costs failed; retrying");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(30));
                    }
                    Err(e) => {
                        tracing::error!(key = %request.key, error = %e, "gave up settling a dropped request's costs");
                        return;
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imagegate_core::{Micros, Stage};
    use imagegate_ledger::{CacheOutcome, LedgerConfig};

    async fn ledger(dir: &tempfile::TempDir) -> Ledger {
        Ledger::open(&LedgerConfig {
            url: format!("sqlite://{}/ledger.db", dir.path().display()),
        })
        .await
        .unwrap()
    }

    fn request() -> RequestRecord {
        RequestRecord {
            request_id: "r-1".into(),
            key: "cd".repeat(32).parse().unwrap(),
            cache: CacheOutcome::Miss,
            status: RequestStatus::InProgress,
            provider: Some("local".into()),
            model: Some("procedural-v1".into()),
            api_key: None,
            profile: "default".into(),
            wall_ms: 0.0,
        }
    }

    fn stage(stage: Stage, micros: i64) -> StageCost {
        let mut s = StageCost::new(stage);
        s.micros = Micros(micros);
        s
    }

    #[tokio::test]
    async fn a_paid_stage_is_in_the_ledger_before_the_work_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = ledger(&dir).await;
        let mut tab = Tab::new(ledger.clone(), request(), Instant::now(), None);
        tab.paid(stage(Stage::Generate, 2_000)).await.unwrap();
        let charge = tab.charge.expect("a paid stage opens the charge");
        let row = ledger.charge(charge).await.unwrap();
        assert_eq!(
            (row.status, row.micros, row.stages),
            (RequestStatus::InProgress, Micros(2_000), 1)
        );
        tab.add(stage(Stage::Decode, 3));
        let all = tab.settle(RequestStatus::Ok).await.unwrap();
        assert_eq!(all.len(), 2);
        let row = ledger.charge(charge).await.unwrap();
        assert_eq!(
            (row.status, row.micros, row.stages),
            (RequestStatus::Ok, Micros(2_003), 2)
        );
    }

    /// A production dropped after paying (a panic, an abort) still settles, in the
    /// background, as abandoned, with the stages it ran.
    #[tokio::test]
    async fn a_bill_dropped_unsettled_settles_itself_as_abandoned() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = ledger(&dir).await;
        let mut tab = Tab::new(ledger.clone(), request(), Instant::now(), None);
        tab.paid(stage(Stage::Generate, 2_000)).await.unwrap();
        tab.add(stage(Stage::Decode, 5));
        let charge = tab.charge.unwrap();
        drop(tab);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let row = ledger.charge(charge).await.unwrap();
            if row.status == RequestStatus::Abandoned {
                assert_eq!((row.micros, row.stages), (Micros(2_005), 2));
                break;
            }
            assert!(Instant::now() < deadline, "never settled: {row:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Work that paid nobody (an upload processed) is one row, written at the end.
    #[tokio::test]
    async fn a_bill_without_payment_is_recorded_whole_when_settled() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = ledger(&dir).await;
        let mut tab = Tab::new(ledger.clone(), request(), Instant::now(), None);
        tab.add(stage(Stage::Decode, 4));
        tab.fail(PipelineError::BadImage("truncated".into())).await;
        let rows = ledger.request_rows("r-1").await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].status, rows[0].micros),
            (RequestStatus::Failed, Micros(4))
        );
    }
}
