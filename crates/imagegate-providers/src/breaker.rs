//! A circuit breaker per provider: after `failure_threshold` consecutive failures it
//! opens and the router skips the provider; after `cooldown` one probe call is let
//! through (half-open); a success closes it, a failure opens it for another cooldown.
//!
//! Time is `tokio::time::Instant`, passed in, so tests drive it with
//! `tokio::time::pause` and `advance`.

use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// How long an open breaker refuses calls before it lets one probe through.
    pub cooldown_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            cooldown_ms: 30_000,
        }
    }
}

impl BreakerConfig {
    fn cooldown(&self) -> Duration {
        Duration::from_millis(self.cooldown_ms)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A probe is out since `since`; a probe that never reports back (its caller was
    /// cancelled) is presumed lost after one cooldown, and another may go.
    HalfOpen {
        since: Instant,
    },
}

/// What the breaker says about one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: call freely.
    Allowed,
    /// Half-open: this call is the probe.
    Probe,
    /// Open (or a probe is already out): do not call for `retry_in`.
    Rejected { retry_in: Duration },
}

/// The breaker's state as reported in estimates and decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum BreakerState {
    Closed { consecutive_failures: u32 },
    Open { retry_in_ms: u64 },
    HalfOpen,
}

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: Mutex<State>,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker {
            config,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a plain value that is always valid; a panic elsewhere while
        // holding the lock cannot leave it half-written.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks to make a call at `now`; moves an expired open breaker to half-open.
    pub fn admit(&self, now: Instant) -> Admission {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => Admission::Allowed,
            State::Open { until } if now >= until => {
                *state = State::HalfOpen { since: now };
                Admission::Probe
            }
            State::Open { until } => Admission::Rejected {
                retry_in: until - now,
            },
            State::HalfOpen { since } if now >= since + self.config.cooldown() => {
                *state = State::HalfOpen { since: now };
                Admission::Probe
            }
            State::HalfOpen { since } => Admission::Rejected {
                retry_in: (since + self.config.cooldown()) - now,
            },
        }
    }

    /// The state at `now`, without changing it (for estimates).
    pub fn peek(&self, now: Instant) -> BreakerState {
        match *self.lock() {
            State::Closed { failures } => BreakerState::Closed {
                consecutive_failures: failures,
            },
            State::Open { until } if now < until => BreakerState::Open {
                retry_in_ms: (until - now).as_millis() as u64,
            },
            State::Open { .. } | State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether a call at `now` would be refused.
    pub fn would_reject(&self, now: Instant) -> Option<Duration> {
        match *self.lock() {
            State::Open { until } if now < until => Some(until - now),
            State::HalfOpen { since } if now < since + self.config.cooldown() => {
                Some((since + self.config.cooldown()) - now)
            }
            _ => None,
        }
    }

    pub fn on_success(&self) {
        *self.lock() = State::Closed { failures: 0 };
    }

    pub fn on_failure(&self, now: Instant) {
        let mut state = self.lock();
        *state = match *state {
            State::Closed { failures } if failures + 1 < self.config.failure_threshold => {
                State::Closed {
                    failures: failures + 1,
                }
            }
            // Threshold reached, or the probe failed.
            _ => State::Open {
                until: now + self.config.cooldown(),
            },
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            failure_threshold: 3,
            cooldown_ms: 1_000,
        })
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = breaker();
        let t = Instant::now();
        b.on_failure(t);
        b.on_failure(t);
        b.on_success();
        b.on_failure(t);
        b.on_failure(t);
        assert_eq!(b.admit(t), Admission::Allowed);
        b.on_failure(t);
        assert_eq!(
            b.admit(t + Duration::from_millis(400)),
            Admission::Rejected {
                retry_in: Duration::from_millis(600)
            }
        );
    }

    #[test]
    fn half_open_lets_one_probe_then_closes_or_reopens() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..3 {
            b.on_failure(t);
        }
        let later = t + Duration::from_millis(1_000);
        assert_eq!(b.peek(later), BreakerState::HalfOpen);
        assert_eq!(b.admit(later), Admission::Probe);
        // A second caller while the probe is out is refused.
        assert!(matches!(b.admit(later), Admission::Rejected { .. }));
        // The probe fails: open for another cooldown.
        b.on_failure(later);
        assert!(matches!(
            b.admit(later + Duration::from_millis(999)),
            Admission::Rejected { .. }
        ));
        let again = later + Duration::from_millis(1_000);
        assert_eq!(b.admit(again), Admission::Probe);
        b.on_success();
        assert_eq!(b.admit(again), Admission::Allowed);
        assert_eq!(
            b.peek(again),
            BreakerState::Closed {
                consecutive_failures: 0
            }
        );
    }

    #[test]
    fn a_lost_probe_does_not_wedge_the_breaker() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..3 {
            b.on_failure(t);
        }
        let probe_at = t + Duration::from_millis(1_000);
        assert_eq!(b.admit(probe_at), Admission::Probe);
        // Nobody reports back; a cooldown later another probe may go.
        assert_eq!(
            b.admit(probe_at + Duration::from_millis(1_000)),
            Admission::Probe
        );
    }
}
