//! The router: which provider model serves a request, and what happened when it tried.
//!
//! For a [`ModelChoice`] the candidates are every configured provider model that
//! offers that class (or the one pinned `provider/model`). Each gets an expected cost
//! from the price book in force ([`LivePrices`]) at the clock's time (surge windows
//! included) and an expected latency from a moving average of its own recent calls
//! (seeded from a configured prior). A [`Policy`] orders them; a candidate is skipped,
//! with a typed [`SkipReason`], when its model is retired, it cannot be priced, its
//! provider's circuit breaker is open, or its quote is over the caller's `max_cost`.
//!
//! [`Router::generate`] calls the first candidate, retries it with jittered
//! exponential backoff (honouring `Retry-After`) while the error says it is worth it
//! ([`ProviderError::is_retryable`]), then fails over down the list, never to a
//! candidate over the cap. The [`Decision`] (candidates, scores, every attempt, the
//! book's version) is returned with the generation and its [`Charge`]: the price
//! book's figure for the usage the provider reported (unknown for an `unpriced`
//! model, never $0) beside what the provider itself said it charged, when it says.
//!
//! ## Scores
//!
//! Over the eligible candidates, cost and latency are min–max normalised to `0..=1`:
//! `c = (cost − min cost) / (max cost − min cost)` (0 when all are equal), and `l`
//! likewise for latency. The score is `c` for `cheapest`, `l` for `fastest`, and
//! `w·c + (1 − w)·l` for `balanced`, with `w = balanced_cost_weight` (default 0.5).
//! Lower is better; ties go to the other dimension, then to configuration order.

use crate::breaker::{Admission, Breaker, BreakerConfig, BreakerState};
use crate::live_prices::LivePrices;
use crate::price_book::{ModelStatus, Offered, PriceBook};
use crate::{AttemptOutcome, Generation, Provider, ProviderError, ProviderRequest};
use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, NaiveDate, Utc};
use imagegate_core::{ConfigError, GenerationRequest, Micros, ModelChoice, Size};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// The wall clock, injectable so tests can put a surge window in force.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The system's UTC clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that says what it is told.
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new(at: DateTime<Utc>) -> ManualClock {
        ManualClock(Mutex::new(at))
    }

    pub fn set(&self, at: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How candidates are ordered.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    #[default]
    Cheapest,
    Fastest,
    Balanced,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Cheapest => "cheapest",
            Policy::Fastest => "fastest",
            Policy::Balanced => "balanced",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy {0:?} is not one of cheapest, fastest, balanced")]
pub struct BadPolicy(pub String);

impl FromStr for Policy {
    type Err = BadPolicy;
    fn from_str(s: &str) -> Result<Policy, BadPolicy> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cheapest" => Ok(Policy::Cheapest),
            "fastest" => Ok(Policy::Fastest),
            "balanced" => Ok(Policy::Balanced),
            _ => Err(BadPolicy(s.to_string())),
        }
    }
}

/// Router settings (`[router]` in the configuration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// The policy for callers that name none.
    pub policy: Policy,
    /// Latency priors in ms, keyed "provider/model" or "provider".
    pub latency_prior_ms: BTreeMap<String, u64>,
    /// The prior for provider models with none of their own.
    pub default_latency_prior_ms: u64,
    /// Weight of the newest observation in the latency moving average.
    pub latency_ewma_alpha: f64,
    /// Weight of cost (against latency) in the `balanced` score.
    pub balanced_cost_weight: f64,
    /// Longest one provider call may take before the router gives up on it. Unset,
    /// each provider gets its own deadline (every adapter's `timeout_secs`, or a
    /// queue's whole wait) plus [`ATTEMPT_GRACE`]; set shorter than a provider's own
    /// deadline, start-up refuses it, since the router would drop calls the provider
    /// is still working on (and charging for).
    pub attempt_timeout_ms: Option<u64>,
    /// Further tries of one candidate after a retryable failure (5xx, 429).
    pub retries_per_candidate: u32,
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    /// A `Retry-After` longer than this is not waited for: the router fails over.
    pub max_retry_after_ms: u64,
    /// A provider-reported cost further than this from the price book's figure is
    /// flagged in the charge and counted in `imagegate_provider_cost_disagreements_total`.
    pub reported_cost_tolerance_pct: f64,
    pub breaker: BreakerConfig,
}

/// Added to a provider's own deadline to make the router's, so the adapter's own
/// timeout (which cancels queued work upstream) fires first.
pub const ATTEMPT_GRACE: Duration = Duration::from_secs(5);

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            policy: Policy::Cheapest,
            latency_prior_ms: BTreeMap::new(),
            default_latency_prior_ms: 10_000,
            latency_ewma_alpha: 0.3,
            balanced_cost_weight: 0.5,
            attempt_timeout_ms: None,
            retries_per_candidate: 1,
            backoff_min_ms: 250,
            backoff_max_ms: 4_000,
            max_retry_after_ms: 10_000,
            reported_cost_tolerance_pct: 5.0,
            breaker: BreakerConfig::default(),
        }
    }
}

impl RouterConfig {
    /// Checks value ranges, naming fields relative to the `[router]` section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fault = |path: &str, problem: String| Err(ConfigError::new(path, problem));
        if !(self.latency_ewma_alpha > 0.0 && self.latency_ewma_alpha <= 1.0) {
            return fault(
                "latency_ewma_alpha",
                format!("must be in (0, 1], not {}", self.latency_ewma_alpha),
            );
        }
        if !(0.0..=1.0).contains(&self.balanced_cost_weight) {
            return fault(
                "balanced_cost_weight",
                format!("must be in [0, 1], not {}", self.balanced_cost_weight),
            );
        }
        if self.attempt_timeout_ms == Some(0) {
            return fault("attempt_timeout_ms", "must be positive".into());
        }
        if self.backoff_min_ms > self.backoff_max_ms {
            return fault("backoff_min_ms", "exceeds backoff_max_ms".into());
        }
        if self.breaker.failure_threshold == 0 {
            return fault("breaker.failure_threshold", "must be positive".into());
        }
        if !(self.reported_cost_tolerance_pct.is_finite()
            && self.reported_cost_tolerance_pct >= 0.0)
        {
            return fault(
                "reported_cost_tolerance_pct",
                format!(
                    "must be a non-negative number, not {}",
                    self.reported_cost_tolerance_pct
                ),
            );
        }
        Ok(())
    }
}

/// Where a candidate's expected cost came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PriceSource {
    /// The book in force.
    PriceBook,
    /// The model is offered `unpriced`: its cost is unknown (shown as 0, never
    /// charged as 0).
    Unpriced,
}

impl PriceSource {
    pub fn as_str(self) -> &'static str {
        match self {
            PriceSource::PriceBook => "price_book",
            PriceSource::Unpriced => "unpriced",
        }
    }
}

/// Why a candidate is not called.
#[derive(Debug, Clone, PartialEq)]
pub enum SkipReason {
    /// The provider no longer serves the model.
    Retired {
        on: NaiveDate,
        replacement: Option<String>,
    },
    /// The book has an entry but cannot price this request (a size or quality it
    /// lists no price for).
    Unpriceable {
        message: String,
    },
    /// Unpriced, and the caller set a cost cap, which an unknown price cannot be
    /// held to.
    UnpricedUnderCap,
    CircuitOpen {
        retry_in_ms: u64,
    },
    /// The quote is over the caller's `max_cost`.
    OverMaxCost {
        expected: Micros,
        max_cost: Micros,
    },
}

impl SkipReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            SkipReason::Retired { .. } => "retired",
            SkipReason::Unpriceable { .. } => "unpriceable",
            SkipReason::UnpricedUnderCap => "unpriced_under_cap",
            SkipReason::CircuitOpen { .. } => "circuit_open",
            SkipReason::OverMaxCost { .. } => "over_max_cost",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Retired { on, replacement } => {
                write!(f, "retired: the provider stopped serving it on {on}")?;
                if let Some(r) = replacement {
                    write!(f, "; use {r}")?;
                }
                Ok(())
            }
            SkipReason::Unpriceable { message } => write!(f, "unpriceable: {message}"),
            SkipReason::UnpricedUnderCap => f.write_str(
                "unpriced_under_cap: its price is unknown, so it cannot be held to max_cost",
            ),
            SkipReason::CircuitOpen { retry_in_ms } => {
                write!(f, "circuit_open: retry in {retry_in_ms}ms")
            }
            SkipReason::OverMaxCost { expected, max_cost } => {
                write!(
                    f,
                    "over_max_cost: expected {expected} is over max_cost {max_cost}"
                )
            }
        }
    }
}

/// JSON keeps the reason as one readable string whose first word is the kind.
impl Serialize for SkipReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One provider model considered for a request.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Candidate {
    pub provider: String,
    pub model: String,
    /// Expected fee of one image in micro-dollars (0 when `price_source` is
    /// `unpriced`).
    #[schema(value_type = i64)]
    pub expected: Micros,
    pub price_source: PriceSource,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub surge_multiplier: Option<f64>,
    pub expected_latency_ms: u64,
    /// Policy score, lower is better (see the module docs); none when skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    pub breaker: BreakerState,
    /// Why it is not called, in words; the first word is the kind: `retired`,
    /// `unpriceable`, `unpriced_under_cap`, `circuit_open` or `over_max_cost`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub skipped_reason: Option<SkipReason>,
}

impl Candidate {
    pub fn label(&self) -> String {
        format!("{}/{}", self.provider, self.model)
    }

    pub fn is_eligible(&self) -> bool {
        self.skipped_reason.is_none()
    }

    /// Cost for ordering: an unknown price ranks after every known one.
    fn cost_rank(&self) -> i64 {
        match self.price_source {
            PriceSource::PriceBook => self.expected.0,
            PriceSource::Unpriced => i64::MAX,
        }
    }
}

/// The ranked candidates for a request, and the one that would be called first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    pub choice: String,
    pub policy: Policy,
    pub size: Size,
    pub at: DateTime<Utc>,
    /// The version of the price book that priced the candidates.
    pub book_version: String,
    /// Eligible candidates in call order, then skipped ones.
    pub candidates: Vec<Candidate>,
    /// The candidate called first, if any is eligible.
    pub chosen: Option<Candidate>,
}

impl Estimate {
    /// The candidates the router would actually call, in order.
    pub fn eligible(&self) -> impl Iterator<Item = &Candidate> {
        self.candidates.iter().filter(|c| c.is_eligible())
    }
}

/// One call to a provider.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attempt {
    pub provider: String,
    pub model: String,
    pub outcome: AttemptOutcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long the call took.
    pub ms: u64,
    /// How long the router waited before the next try of this candidate.
    #[serde(skip_serializing_if = "is_zero")]
    pub waited_ms: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// How the price book's figure of a charge was reached.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "from")]
pub enum CostBasis {
    /// The price book's charge for the usage the provider reported.
    Usage { detail: String },
    /// The usage could not be priced, so the quote stands (with why).
    Estimate { reason: String },
    /// The model is offered `unpriced`: the book has no figure.
    Unpriced,
}

/// What one generation cost: the price book's figure and the provider's own report,
/// side by side. The provider's figure, when there is one, is what was charged.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Charge {
    /// The price book's figure; none when the model is unpriced (unknown, not $0).
    pub book: Option<Micros>,
    /// What the provider said it charged (credits, a cost field), when it says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reported: Option<Micros>,
    /// The version of the book that priced it.
    pub book_version: String,
    pub basis: CostBasis,
    /// How far `reported` is from `book`, in percent of `book`, when both exist.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disagreement_pct: Option<f64>,
    /// `disagreement_pct` is over `reported_cost_tolerance_pct`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub disagrees: bool,
}

impl Charge {
    /// What the call cost: the provider's report when it made one, else the book's
    /// figure; none when neither knows (record it as unknown, never as $0).
    pub fn micros(&self) -> Option<Micros> {
        self.reported.or(self.book)
    }

    pub fn is_unpriced(&self) -> bool {
        self.micros().is_none()
    }
}

/// What the router decided and what happened; goes into the `generate` stage's
/// ledger detail.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub choice: String,
    pub policy: Policy,
    pub at: DateTime<Utc>,
    /// The version of the price book in force when the call was made.
    pub book_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_cost: Option<Micros>,
    pub candidates: Vec<Candidate>,
    pub attempts: Vec<Attempt>,
    /// "provider/model" that produced the image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chosen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_basis: Option<CostBasis>,
}

/// A generation, how it was routed, and what it cost.
#[derive(Debug, Clone)]
pub struct Routed {
    pub generation: Generation,
    pub decision: Decision,
    pub charge: Charge,
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// A router setting is wrong; the path is relative to the `[router]` section.
    #[error("router configuration: {0}")]
    Config(#[from] imagegate_core::ConfigError),
    #[error("two providers are named {0:?}")]
    DuplicateProvider(String),
    #[error("no configured provider serves model {choice}")]
    NoCandidate { choice: String },
    /// The caller named a model its provider no longer serves.
    #[error("model {model} was retired on {on}{}", replacement_words(.replacement))]
    Retired {
        model: String,
        on: NaiveDate,
        replacement: Option<String>,
    },
    #[error("no provider can serve {choice} now: {reasons}")]
    Unavailable {
        choice: String,
        reasons: String,
        decision: Box<Decision>,
    },
    /// Refused before any call: every candidate that could serve is over the cap.
    #[error("the cheapest way to serve {choice} costs {cheapest}, over max_cost {max_cost}")]
    OverBudget {
        choice: String,
        cheapest: Micros,
        max_cost: Micros,
        decision: Box<Decision>,
    },
    /// A provider's safety system refused the prompt; the router does not shop the
    /// prompt around to other providers.
    #[error("provider {provider} refused the prompt: {message}")]
    ContentRejected {
        provider: String,
        message: String,
        decision: Box<Decision>,
    },
    #[error("every candidate for {choice} failed; last: {last}")]
    Exhausted {
        choice: String,
        last: String,
        decision: Box<Decision>,
    },
}

fn replacement_words(r: &Option<String>) -> String {
    r.as_ref()
        .map(|r| format!("; use {r} instead"))
        .unwrap_or_default()
}

impl RouteError {
    /// The decision so far, for the ledger, when the router got that far.
    pub fn decision(&self) -> Option<&Decision> {
        match self {
            RouteError::Config(_)
            | RouteError::DuplicateProvider(_)
            | RouteError::NoCandidate { .. }
            | RouteError::Retired { .. } => None,
            RouteError::Unavailable { decision, .. }
            | RouteError::OverBudget { decision, .. }
            | RouteError::ContentRejected { decision, .. }
            | RouteError::Exhausted { decision, .. } => Some(decision),
        }
    }
}

struct Planned {
    candidate: Candidate,
    provider: Arc<dyn Provider>,
    order: usize,
}

/// Every model the providers offer, as the price book is asked about it.
pub fn offered(providers: &[Arc<dyn Provider>]) -> Vec<Offered> {
    providers
        .iter()
        .flat_map(|p| {
            p.offers().iter().map(|o| Offered {
                provider: p.name().to_string(),
                kind: p.kind().to_string(),
                model: o.name.clone(),
                unpriced: o.unpriced,
            })
        })
        .collect()
}

/// Routes requests over the configured providers. Share it in an `Arc`.
pub struct Router {
    providers: Vec<Arc<dyn Provider>>,
    prices: Arc<LivePrices>,
    config: RouterConfig,
    clock: Arc<dyn Clock>,
    breakers: HashMap<String, Breaker>,
    attempt_timeouts: HashMap<String, Duration>,
    latency: Mutex<HashMap<(String, String), f64>>,
}

impl Router {
    /// Checks the configuration against the providers (names, timeouts) and builds the
    /// router. `prices` already holds every offered model's price (see [`offered`]).
    pub fn new(
        providers: Vec<Arc<dyn Provider>>,
        prices: Arc<LivePrices>,
        config: RouterConfig,
    ) -> Result<Router, RouteError> {
        config.validate()?;
        let mut breakers = HashMap::new();
        let mut attempt_timeouts = HashMap::new();
        for p in &providers {
            if breakers
                .insert(p.name().to_string(), Breaker::new(config.breaker))
                .is_some()
            {
                return Err(RouteError::DuplicateProvider(p.name().to_string()));
            }
            let deadline = p.deadline();
            let timeout = match config.attempt_timeout_ms {
                None => deadline + ATTEMPT_GRACE,
                Some(ms) if Duration::from_millis(ms) < deadline => {
                    return Err(RouteError::Config(imagegate_core::ConfigError::new(
                        "attempt_timeout_ms",
                        format!(
                            "{ms} is shorter than provider {:?}'s own deadline of {} ms: \
                             the router would abandon calls the provider is still running (and charging for); \
                             raise it, or leave it unset to use each provider's deadline",
                            p.name(),
                            deadline.as_millis()
                        ),
                    )));
                }
                Some(ms) => Duration::from_millis(ms),
            };
            attempt_timeouts.insert(p.name().to_string(), timeout);
        }
        let book = prices.current();
        let today = Utc::now().date_naive();
        for o in offered(&providers) {
            if let Some(ModelStatus::Deprecated {
                retires_on: Some(on),
                replacement,
            }) = book.entry(&o.kind, &o.model).map(|e| e.status_on(today))
            {
                let days = (on - today).num_days();
                if days <= crate::price_book::audit::RETIRING_SOON_DAYS {
                    tracing::warn!(
                        provider = %o.provider, model = %o.model, retires = %on, days,
                        replacement = replacement.as_deref().unwrap_or("-"),
                        "a configured model retires soon"
                    );
                }
            }
            if let Some(ModelStatus::Retired { on, replacement }) =
                book.entry(&o.kind, &o.model).map(|e| e.status_on(today))
            {
                tracing::warn!(
                    provider = %o.provider, model = %o.model, retired = %on,
                    replacement = replacement.as_deref().unwrap_or("-"),
                    "a configured model is retired; the router will not call it"
                );
            }
        }
        Ok(Router {
            providers,
            prices,
            config,
            clock: Arc::new(SystemClock),
            breakers,
            attempt_timeouts,
            latency: Mutex::new(HashMap::new()),
        })
    }

    /// Replaces the wall clock (tests, replays).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Router {
        self.clock = clock;
        self
    }

    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    /// The book in force now.
    pub fn price_book(&self) -> Arc<PriceBook> {
        self.prices.current()
    }

    /// The live book, for reloads and listings.
    pub fn prices(&self) -> &Arc<LivePrices> {
        &self.prices
    }

    /// The configured provider named `name` (for its batch API, which the deferred
    /// planner calls directly).
    pub fn provider(&self, name: &str) -> Option<&Arc<dyn Provider>> {
        self.providers.iter().find(|p| p.name() == name)
    }

    /// The router's own limit on one call to `provider`.
    pub fn attempt_timeout(&self, provider: &str) -> Option<Duration> {
        self.attempt_timeouts.get(provider).copied()
    }

    /// The candidates for `choice` at `size`, ranked by `policy` at time `at`, and the
    /// one that would be called first. Spends nothing and changes nothing.
    pub fn estimate(
        &self,
        choice: &ModelChoice,
        size: Size,
        policy: Policy,
        max_cost: Option<Micros>,
        at: DateTime<Utc>,
    ) -> Result<Estimate, RouteError> {
        let book = self.prices.current();
        let planned = self.plan(&book, choice, size, policy, max_cost, at)?;
        let candidates: Vec<Candidate> = planned.into_iter().map(|p| p.candidate).collect();
        let chosen = candidates.iter().find(|c| c.is_eligible()).cloned();
        Ok(Estimate {
            choice: choice.to_string(),
            policy,
            size,
            at,
            book_version: book.version().to_string(),
            candidates,
            chosen,
        })
    }

    /// Generates `request` through the best candidate under `max_cost`, retrying and
    /// failing over, never to a candidate over the cap.
    pub async fn generate(
        &self,
        request: &GenerationRequest,
        policy: Policy,
        max_cost: Option<Micros>,
    ) -> Result<Routed, RouteError> {
        let choice = request.model.to_string();
        let at = self.clock.now();
        // The book in force now prices this call from quote to charge, whatever
        // reloads happen meanwhile.
        let book = self.prices.current();
        let planned = self.plan(&book, &request.model, request.size, policy, max_cost, at)?;
        let mut decision = Decision {
            choice: choice.clone(),
            policy,
            at,
            book_version: book.version().to_string(),
            max_cost,
            candidates: planned.iter().map(|p| p.candidate.clone()).collect(),
            attempts: Vec::new(),
            chosen: None,
            cost_basis: None,
        };
        let eligible: Vec<&Planned> = planned
            .iter()
            .filter(|p| p.candidate.is_eligible())
            .collect();
        if eligible.is_empty() {
            return Err(self.nothing_eligible(choice, &planned, max_cost, decision));
        }

        let mut last = String::new();
        // Calls that timed out may have been charged; with a cap, a failover must fit
        // in what is left of it.
        let mut maybe_spent = Micros::ZERO;
        for planned in eligible {
            let c = &planned.candidate;
            if let Some(max) = max_cost {
                if maybe_spent.0 > 0 && maybe_spent.0.saturating_add(c.expected.0) > max.0 {
                    last = format!(
                        "{}: not tried, {} after possibly charged timeouts would exceed max_cost {max}",
                        c.label(),
                        Micros(maybe_spent.0.saturating_add(c.expected.0))
                    );
                    continue;
                }
            }
            let provider_request = ProviderRequest {
                prompt: request.prompt.clone(),
                negative_prompt: request.negative_prompt.clone(),
                model: c.model.clone(),
                size: request.size,
                seed: request.seed,
            };
            match self
                .try_candidate(planned, &provider_request, &mut decision.attempts)
                .await
            {
                Tried::Done(generation) => {
                    let generation = *generation;
                    let charge = self.charge(&book, planned, &generation);
                    decision.chosen = Some(c.label());
                    decision.cost_basis = Some(charge.basis.clone());
                    return Ok(Routed {
                        generation,
                        decision,
                        charge,
                    });
                }
                Tried::Rejected { message } => {
                    return Err(RouteError::ContentRejected {
                        provider: c.provider.clone(),
                        message,
                        decision: Box::new(decision),
                    });
                }
                Tried::Failed {
                    reason,
                    maybe_charged,
                } => {
                    if maybe_charged {
                        maybe_spent = Micros(maybe_spent.0.saturating_add(c.expected.0));
                    }
                    last = format!("{}: {reason}", c.label());
                }
            }
        }
        Err(RouteError::Exhausted {
            choice,
            last,
            decision: Box::new(decision),
        })
    }

    fn nothing_eligible(
        &self,
        choice: String,
        planned: &[Planned],
        max_cost: Option<Micros>,
        decision: Decision,
    ) -> RouteError {
        let reasons = || {
            planned
                .iter()
                .map(|p| {
                    let why = p
                        .candidate
                        .skipped_reason
                        .as_ref()
                        .map_or_else(|| "?".to_string(), ToString::to_string);
                    format!("{}: {why}", p.candidate.label())
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        // A pinned model that is retired answers with its replacement.
        if let [only] = planned {
            if let Some(SkipReason::Retired { on, replacement }) = &only.candidate.skipped_reason {
                return RouteError::Retired {
                    model: only.candidate.label(),
                    on: *on,
                    replacement: replacement.clone(),
                };
            }
        }
        let over: Option<Micros> = planned
            .iter()
            .filter_map(|p| match &p.candidate.skipped_reason {
                Some(SkipReason::OverMaxCost { expected, .. }) => Some(*expected),
                _ => None,
            })
            .min();
        match (over, max_cost) {
            (Some(cheapest), Some(max_cost)) => RouteError::OverBudget {
                choice,
                cheapest,
                max_cost,
                decision: Box::new(decision),
            },
            _ => RouteError::Unavailable {
                choice,
                reasons: reasons(),
                decision: Box::new(decision),
            },
        }
    }

    /// The price book's figure for what the provider reported, beside the provider's
    /// own figure.
    fn charge(&self, book: &PriceBook, planned: &Planned, generation: &Generation) -> Charge {
        let c = &planned.candidate;
        let kind = planned.provider.kind();
        let charged_at = self.clock.now();
        let (figure, basis) = if c.price_source == PriceSource::Unpriced {
            (None, CostBasis::Unpriced)
        } else {
            match book.charge_quote(kind, &c.model, &generation.usage, charged_at) {
                Ok(q) => (
                    Some(q.micros),
                    CostBasis::Usage {
                        detail: q.basis.detail,
                    },
                ),
                Err(e) => {
                    tracing::warn!(
                        provider = %c.provider,
                        model = %c.model,
                        error = %e,
                        "usage could not be priced; recording the quote"
                    );
                    (
                        Some(c.expected),
                        CostBasis::Estimate {
                            reason: e.to_string(),
                        },
                    )
                }
            }
        };
        let reported = book.reported_cost(kind, &c.model, &generation.usage);
        let disagreement_pct = match (figure, reported) {
            (Some(b), Some(r)) => {
                Some((r.0 - b.0).unsigned_abs() as f64 / b.0.max(1) as f64 * 100.0)
            }
            _ => None,
        };
        let disagrees =
            disagreement_pct.is_some_and(|pct| pct > self.config.reported_cost_tolerance_pct);
        if disagrees {
            metrics::counter!("imagegate_provider_cost_disagreements_total",
                "provider" => c.provider.clone())
            .increment(1);
            tracing::warn!(
                provider = %c.provider,
                model = %c.model,
                book = ?figure,
                reported = ?reported,
                "the provider's reported cost disagrees with the price book"
            );
        }
        if figure.is_none() && reported.is_none() {
            metrics::counter!("imagegate_unpriced_calls_total", "provider" => c.provider.clone())
                .increment(1);
        }
        Charge {
            book: figure,
            reported,
            book_version: book.version().to_string(),
            basis,
            disagreement_pct,
            disagrees,
        }
    }

    /// Calls one candidate until it succeeds, refuses the prompt, or is given up on.
    async fn try_candidate(
        &self,
        planned: &Planned,
        request: &ProviderRequest,
        attempts: &mut Vec<Attempt>,
    ) -> Tried {
        let c = &planned.candidate;
        let breaker = self.breaker(&c.provider);
        let timeout = self
            .attempt_timeout(&c.provider)
            .unwrap_or_else(|| planned.provider.deadline() + ATTEMPT_GRACE);
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.config.backoff_min_ms))
            .with_max_delay(Duration::from_millis(self.config.backoff_max_ms))
            .with_max_times(self.config.retries_per_candidate as usize)
            .with_jitter()
            .build();
        let record = |outcome, error: Option<String>, ms| Attempt {
            provider: c.provider.clone(),
            model: c.model.clone(),
            outcome,
            error,
            ms,
            waited_ms: 0,
        };
        let failed = |reason: String| Tried::Failed {
            reason,
            maybe_charged: false,
        };
        loop {
            if let Some(b) = breaker {
                if let Admission::Rejected { retry_in } = b.admit(Instant::now()) {
                    let why = format!("circuit open, retry in {}ms", retry_in.as_millis());
                    attempts.push(record(AttemptOutcome::BreakerOpen, Some(why.clone()), 0));
                    return failed(why);
                }
            }
            let started = Instant::now();
            // A router timeout drops the adapter's future; queue-style adapters cancel
            // their prediction upstream when dropped.
            let result =
                match tokio::time::timeout(timeout, planned.provider.generate(request)).await {
                    Ok(r) => r,
                    Err(_) => Err(ProviderError::Timeout {
                        provider: c.provider.clone(),
                        after: timeout,
                    }),
                };
            let elapsed = started.elapsed();
            let ms = elapsed.as_millis() as u64;
            let error = match result {
                Ok(generation) => {
                    if let Some(b) = breaker {
                        b.on_success();
                    }
                    self.observe_latency(&c.provider, &c.model, elapsed);
                    attempts.push(record(AttemptOutcome::Ok, None, ms));
                    return Tried::Done(Box::new(generation));
                }
                Err(e) => e,
            };
            let outcome = error.outcome();
            tracing::info!(
                provider = %c.provider,
                model = %c.model,
                outcome = outcome.as_str(),
                error = %error,
                "provider attempt failed"
            );
            attempts.push(record(outcome, Some(error.to_string()), ms));
            if let Some(b) = breaker {
                if error.counts_against_breaker() {
                    b.on_failure(Instant::now());
                } else {
                    // It answered coherently: it is up.
                    b.on_success();
                }
            }
            if let ProviderError::Timeout { .. } = error {
                // A timeout bounds the latency from below: raise the average toward it,
                // never lower it.
                self.observe_latency_at_least(&c.provider, &c.model, elapsed);
                // The provider may have done (and billed) the work: never call it again
                // for this request.
                return Tried::Failed {
                    reason: format!("{error}; not retried, the call may have been charged"),
                    maybe_charged: true,
                };
            }
            if let ProviderError::ContentRejected { message, .. } = error {
                return Tried::Rejected { message };
            }
            if !error.is_retryable() {
                return failed(error.to_string());
            }
            // This failure opened the breaker: waiting to retry would only be refused.
            if breaker.is_some_and(|b| b.would_reject(Instant::now()).is_some()) {
                return failed(format!("{error}; circuit now open"));
            }
            let Some(delay) = backoff.next() else {
                return failed(error.to_string());
            };
            let wait = match error.retry_after() {
                Some(after) if after > Duration::from_millis(self.config.max_retry_after_ms) => {
                    return failed(format!(
                        "{error}; Retry-After {}s is longer than max_retry_after_ms",
                        after.as_secs()
                    ));
                }
                Some(after) => after,
                None => delay,
            };
            if let Some(a) = attempts.last_mut() {
                a.waited_ms = wait.as_millis() as u64;
            }
            tokio::time::sleep(wait).await;
        }
    }

    fn breaker(&self, provider: &str) -> Option<&Breaker> {
        self.breakers.get(provider)
    }

    /// The breaker state of each provider, for health pages.
    pub fn breaker_states(&self) -> BTreeMap<String, BreakerState> {
        let now = Instant::now();
        self.breakers
            .iter()
            .map(|(name, b)| (name.clone(), b.peek(now)))
            .collect()
    }

    /// The current latency expectation of a provider model, in ms.
    pub fn expected_latency_ms(&self, provider: &str, model: &str) -> u64 {
        let map = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&(provider.to_string(), model.to_string()))
            .copied()
            .unwrap_or_else(|| self.prior_ms(provider, model) as f64)
            .round() as u64
    }

    fn prior_ms(&self, provider: &str, model: &str) -> u64 {
        let priors = &self.config.latency_prior_ms;
        priors
            .get(&format!("{provider}/{model}"))
            .or_else(|| priors.get(provider))
            .copied()
            .unwrap_or(self.config.default_latency_prior_ms)
    }

    fn observe_latency(&self, provider: &str, model: &str, elapsed: Duration) {
        self.update_latency(provider, model, elapsed, false);
    }

    fn observe_latency_at_least(&self, provider: &str, model: &str, elapsed: Duration) {
        self.update_latency(provider, model, elapsed, true);
    }

    fn update_latency(&self, provider: &str, model: &str, elapsed: Duration, lower_bound: bool) {
        let prior = self.prior_ms(provider, model) as f64;
        let alpha = self.config.latency_ewma_alpha;
        let ms = elapsed.as_secs_f64() * 1000.0;
        let mut map = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let avg = map
            .entry((provider.to_string(), model.to_string()))
            .or_insert(prior);
        if lower_bound && ms <= *avg {
            return;
        }
        *avg = alpha * ms + (1.0 - alpha) * *avg;
    }

    fn plan(
        &self,
        book: &PriceBook,
        choice: &ModelChoice,
        size: Size,
        policy: Policy,
        max_cost: Option<Micros>,
        at: DateTime<Utc>,
    ) -> Result<Vec<Planned>, RouteError> {
        let now = Instant::now();
        let today = at.date_naive();
        let mut planned = Vec::new();
        for p in &self.providers {
            let kind = p.kind();
            for offer in p.offers() {
                let serves = match choice {
                    ModelChoice::Class(class) => offer.classes.contains(class),
                    ModelChoice::Pinned { provider, model } => {
                        provider == p.name() && model == &offer.name
                    }
                };
                if !serves {
                    continue;
                }
                let mut skipped_reason = None;
                let entry = book.entry(kind, &offer.name);
                if let Some(ModelStatus::Retired { on, replacement }) =
                    entry.map(|e| e.status_on(today))
                {
                    skipped_reason = Some(SkipReason::Retired { on, replacement });
                }
                let (expected, price_source, surge) = match entry {
                    // Start-up refuses an offer without entry unless it is marked unpriced.
                    None => (Micros::ZERO, PriceSource::Unpriced, None),
                    Some(_) => match book.quote(kind, &offer.name, size, None, at) {
                        Ok(q) => (
                            q.micros,
                            PriceSource::PriceBook,
                            Some(q.basis.surge_multiplier).filter(|m| *m != 1.0),
                        ),
                        Err(e) => {
                            skipped_reason.get_or_insert(SkipReason::Unpriceable {
                                message: e.to_string(),
                            });
                            (Micros::ZERO, PriceSource::PriceBook, None)
                        }
                    },
                };
                if skipped_reason.is_none()
                    && price_source == PriceSource::Unpriced
                    && max_cost.is_some()
                {
                    skipped_reason = Some(SkipReason::UnpricedUnderCap);
                }
                let breaker = self.breaker(p.name()).map_or(
                    BreakerState::Closed {
                        consecutive_failures: 0,
                    },
                    |b| b.peek(now),
                );
                if skipped_reason.is_none() {
                    if let Some(retry_in) = self.breaker(p.name()).and_then(|b| b.would_reject(now))
                    {
                        skipped_reason = Some(SkipReason::CircuitOpen {
                            retry_in_ms: retry_in.as_millis() as u64,
                        });
                    }
                }
                if let Some(max) = max_cost {
                    if skipped_reason.is_none() && expected > max {
                        skipped_reason = Some(SkipReason::OverMaxCost {
                            expected,
                            max_cost: max,
                        });
                    }
                }
                let order = planned.len();
                planned.push(Planned {
                    candidate: Candidate {
                        provider: p.name().to_string(),
                        model: offer.name.clone(),
                        expected,
                        price_source,
                        surge_multiplier: surge,
                        expected_latency_ms: self.expected_latency_ms(p.name(), &offer.name),
                        score: None,
                        breaker,
                        skipped_reason,
                    },
                    provider: p.clone(),
                    order,
                });
            }
        }
        if planned.is_empty() {
            // A pinned model the configuration does not offer (any more) but the book
            // knows as retired: say what replaced it.
            if let ModelChoice::Pinned { provider, model } = choice {
                let kind = self
                    .providers
                    .iter()
                    .find(|p| p.name() == provider)
                    .map(|p| p.kind());
                if let Some(ModelStatus::Retired { on, replacement }) = kind
                    .and_then(|k| book.entry(k, model))
                    .map(|e| e.status_on(today))
                {
                    return Err(RouteError::Retired {
                        model: format!("{provider}/{model}"),
                        on,
                        replacement,
                    });
                }
            }
            return Err(RouteError::NoCandidate {
                choice: choice.to_string(),
            });
        }
        self.score(&mut planned, policy);
        Ok(planned)
    }

    fn score(&self, planned: &mut [Planned], policy: Policy) {
        let eligible = || planned.iter().filter(|p| p.candidate.is_eligible());
        let range = |f: &dyn Fn(&Candidate) -> f64| {
            eligible()
                .map(|p| f(&p.candidate))
                .filter(|v| v.is_finite())
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                    (lo.min(v), hi.max(v))
                })
        };
        let known_cost = |c: &Candidate| match c.price_source {
            PriceSource::PriceBook => c.expected.0 as f64,
            PriceSource::Unpriced => f64::INFINITY,
        };
        let latency = |c: &Candidate| c.expected_latency_ms as f64;
        let (c_lo, c_hi) = range(&known_cost);
        let (l_lo, l_hi) = range(&latency);
        let norm = |v: f64, lo: f64, hi: f64| {
            if !v.is_finite() {
                // An unknown price scores as the dearest.
                1.0
            } else if hi > lo {
                (v - lo) / (hi - lo)
            } else {
                0.0
            }
        };
        let w = self.config.balanced_cost_weight;
        for p in planned.iter_mut() {
            if !p.candidate.is_eligible() {
                continue;
            }
            let c = norm(known_cost(&p.candidate), c_lo, c_hi);
            let l = norm(latency(&p.candidate), l_lo, l_hi);
            p.candidate.score = Some(match policy {
                Policy::Cheapest => c,
                Policy::Fastest => l,
                Policy::Balanced => w * c + (1.0 - w) * l,
            });
        }
        planned.sort_by(|a, b| {
            let (ca, cb) = (&a.candidate, &b.candidate);
            let tiebreak = match policy {
                Policy::Fastest => (ca.expected_latency_ms, ca.cost_rank())
                    .cmp(&(cb.expected_latency_ms, cb.cost_rank())),
                Policy::Cheapest | Policy::Balanced => (ca.cost_rank(), ca.expected_latency_ms)
                    .cmp(&(cb.cost_rank(), cb.expected_latency_ms)),
            };
            (!ca.is_eligible())
                .cmp(&!cb.is_eligible())
                .then(
                    ca.score
                        .unwrap_or(f64::INFINITY)
                        .total_cmp(&cb.score.unwrap_or(f64::INFINITY)),
                )
                .then(tiebreak)
                .then(a.order.cmp(&b.order))
        });
    }
}

enum Tried {
    Done(Box<Generation>),
    Rejected { message: String },
    Failed { reason: String, maybe_charged: bool },
}

#[cfg(test)]
mod tests;
