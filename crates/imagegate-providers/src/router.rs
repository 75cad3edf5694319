//! The router: which provider model serves a request, and what happened when it tried.
//!
//! For a [`ModelChoice`] the candidates are every configured provider model that
//! offers that class (or the one pinned `provider/model`). Each gets an expected cost
//! from the [`PriceBook`] at the clock's time (surge windows included; a model the
//! book does not list falls back to [`Provider::quote`]) and an expected latency from
//! a moving average of its own recent calls (seeded from a configured prior). A
//! [`Policy`] orders them; a circuit breaker per provider removes unhealthy ones.
//!
//! [`Router::generate`] calls the first candidate, retries it with jittered
//! exponential backoff (honouring `Retry-After`), then fails over down the list. The
//! [`Decision`] (candidates, scores, every attempt) is returned with the generation
//! for the ledger, and the generation's cost is the price book's charge for the usage
//! the provider reported.
//!
//! ## Scores
//!
//! Over the eligible candidates, cost and latency are min–max normalised to `0..=1`:
//! `c = (cost − min cost) / (max cost − min cost)` (0 when all are equal), and `l`
//! likewise for latency. The score is `c` for `cheapest`, `l` for `fastest`, and
//! `w·c + (1 − w)·l` for `balanced`, with `w = balanced_cost_weight` (default 0.5).
//! Lower is better; ties go to the other dimension, then to configuration order.

use crate::breaker::{Admission, Breaker, BreakerConfig, BreakerState};
use crate::price_book::{PriceBook, PriceError};
use crate::{Generation, Provider, ProviderError, ProviderRequest};
use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, Utc};
use imagegate_core::{GenerationRequest, Micros, ModelChoice, Size};
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
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
    /// Provider name → price-book kind, for providers whose name is not their kind
    /// (say `openai-eu` of kind `openai`). Unlisted names are their own kind.
    pub provider_kinds: BTreeMap<String, String>,
    /// Latency priors in ms, keyed "provider/model" or "provider".
    pub latency_prior_ms: BTreeMap<String, u64>,
    /// The prior for provider models with none of their own.
    pub default_latency_prior_ms: u64,
    /// Weight of the newest observation in the latency moving average.
    pub latency_ewma_alpha: f64,
    /// Weight of cost (against latency) in the `balanced` score.
    pub balanced_cost_weight: f64,
    /// Longest one provider call may take before it counts as a timeout.
    pub attempt_timeout_ms: u64,
    /// Further tries of one candidate after a retryable failure (5xx, timeout, 429).
    pub retries_per_candidate: u32,
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    /// A `Retry-After` longer than this is not waited for: the router fails over.
    pub max_retry_after_ms: u64,
    pub breaker: BreakerConfig,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            policy: Policy::Cheapest,
            provider_kinds: BTreeMap::new(),
            latency_prior_ms: BTreeMap::new(),
            default_latency_prior_ms: 10_000,
            latency_ewma_alpha: 0.3,
            balanced_cost_weight: 0.5,
            attempt_timeout_ms: 120_000,
            retries_per_candidate: 1,
            backoff_min_ms: 250,
            backoff_max_ms: 4_000,
            max_retry_after_ms: 10_000,
            breaker: BreakerConfig::default(),
        }
    }
}

impl RouterConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.latency_ewma_alpha > 0.0 && self.latency_ewma_alpha <= 1.0) {
            return Err(format!(
                "latency_ewma_alpha must be in (0, 1], not {}",
                self.latency_ewma_alpha
            ));
        }
        if !(0.0..=1.0).contains(&self.balanced_cost_weight) {
            return Err(format!(
                "balanced_cost_weight must be in [0, 1], not {}",
                self.balanced_cost_weight
            ));
        }
        if self.attempt_timeout_ms == 0 {
            return Err("attempt_timeout_ms must be positive".into());
        }
        if self.backoff_min_ms > self.backoff_max_ms {
            return Err("backoff_min_ms exceeds backoff_max_ms".into());
        }
        if self.breaker.failure_threshold == 0 {
            return Err("breaker.failure_threshold must be positive".into());
        }
        Ok(())
    }
}

/// One provider model considered for a request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    pub provider: String,
    pub model: String,
    pub expected: Micros,
    /// Where `expected` came from: "price_book" or "provider_quote".
    pub price_source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub surge_multiplier: Option<f64>,
    pub expected_latency_ms: u64,
    /// Policy score, lower is better (see the module docs); none when skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    pub breaker: BreakerState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped_reason: Option<String>,
}

impl Candidate {
    pub fn label(&self) -> String {
        format!("{}/{}", self.provider, self.model)
    }
}

/// The ranked candidates for a request, and the one that would be called first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    pub choice: String,
    pub policy: Policy,
    pub size: Size,
    pub at: DateTime<Utc>,
    /// Eligible candidates in call order, then skipped ones.
    pub candidates: Vec<Candidate>,
    /// The candidate called first, if any is eligible.
    pub chosen: Option<Candidate>,
}

/// One call to a provider.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attempt {
    pub provider: String,
    pub model: String,
    /// "ok", or what went wrong: "upstream", "timeout", "bad_response",
    /// "rate_limited", "content_rejected", "config", "breaker_open".
    pub outcome: &'static str,
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

/// Where the recorded cost came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "from")]
pub enum CostBasis {
    /// The price book's charge for the usage the provider reported.
    Usage { detail: String },
    /// The usage could not be priced, so the expected cost stands (with why).
    Estimate { reason: String },
    /// The model has no price-book entry; the adapter's own figure stands.
    ProviderReported,
}

/// What the router decided and what happened; goes into the `generate` stage's
/// ledger detail.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub choice: String,
    pub policy: Policy,
    pub at: DateTime<Utc>,
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

/// A generation and how it was routed. `generation.cost` is the actual cost.
#[derive(Debug, Clone)]
pub struct Routed {
    pub generation: Generation,
    pub decision: Decision,
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("router configuration: {0}")]
    Config(String),
    #[error("no configured provider serves model {choice}")]
    NoCandidate { choice: String },
    #[error("no provider can serve {choice} now: {reasons}")]
    Unavailable {
        choice: String,
        reasons: String,
        decision: Box<Decision>,
    },
    /// Refused before any call: even the cheapest candidate is over the caller's cap.
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

impl RouteError {
    /// The decision so far, for the ledger, when the router got that far.
    pub fn decision(&self) -> Option<&Decision> {
        match self {
            RouteError::Config(_) | RouteError::NoCandidate { .. } => None,
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

/// Routes requests over the configured providers. Share it in an `Arc`.
pub struct Router {
    providers: Vec<Arc<dyn Provider>>,
    price_book: Arc<PriceBook>,
    config: RouterConfig,
    clock: Arc<dyn Clock>,
    breakers: HashMap<String, Breaker>,
    latency: Mutex<HashMap<(String, String), f64>>,
}

impl Router {
    pub fn new(
        providers: Vec<Arc<dyn Provider>>,
        price_book: Arc<PriceBook>,
        config: RouterConfig,
    ) -> Result<Router, RouteError> {
        config.validate().map_err(RouteError::Config)?;
        let mut breakers = HashMap::new();
        for p in &providers {
            if breakers
                .insert(p.name().to_string(), Breaker::new(config.breaker))
                .is_some()
            {
                return Err(RouteError::Config(format!(
                    "two providers are named {:?}",
                    p.name()
                )));
            }
        }
        Ok(Router {
            providers,
            price_book,
            config,
            clock: Arc::new(SystemClock),
            breakers,
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

    pub fn price_book(&self) -> &PriceBook {
        &self.price_book
    }

    /// The price-book kind of a provider name.
    pub fn kind_of<'a>(&'a self, provider: &'a str) -> &'a str {
        self.config
            .provider_kinds
            .get(provider)
            .map_or(provider, String::as_str)
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
        let planned = self.plan(choice, size, policy, max_cost, at)?;
        let candidates: Vec<Candidate> = planned.into_iter().map(|p| p.candidate).collect();
        let chosen = candidates
            .iter()
            .find(|c| c.skipped_reason.is_none())
            .cloned();
        Ok(Estimate {
            choice: choice.to_string(),
            policy,
            size,
            at,
            candidates,
            chosen,
        })
    }

    /// Generates `request` through the best candidate, retrying and failing over.
    pub async fn generate(
        &self,
        request: &GenerationRequest,
        policy: Policy,
        max_cost: Option<Micros>,
    ) -> Result<Routed, RouteError> {
        let choice = request.model.to_string();
        let at = self.clock.now();
        let planned = self.plan(&request.model, request.size, policy, max_cost, at)?;
        let mut decision = Decision {
            choice: choice.clone(),
            policy,
            at,
            max_cost,
            candidates: planned.iter().map(|p| p.candidate.clone()).collect(),
            attempts: Vec::new(),
            chosen: None,
            cost_basis: None,
        };
        let eligible: Vec<&Planned> = planned
            .iter()
            .filter(|p| p.candidate.skipped_reason.is_none())
            .collect();
        if eligible.is_empty() {
            let over: Option<Micros> = planned
                .iter()
                .filter(|p| p.candidate.skipped_reason.as_deref() == Some(OVER_MAX_COST))
                .map(|p| p.candidate.expected)
                .min();
            return Err(match (over, max_cost) {
                (Some(cheapest), Some(max_cost)) => RouteError::OverBudget {
                    choice,
                    cheapest,
                    max_cost,
                    decision: Box::new(decision),
                },
                _ => RouteError::Unavailable {
                    choice,
                    reasons: planned
                        .iter()
                        .map(|p| {
                            format!(
                                "{}: {}",
                                p.candidate.label(),
                                p.candidate.skipped_reason.as_deref().unwrap_or("?")
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; "),
                    decision: Box::new(decision),
                },
            });
        }

        let mut last = String::new();
        for planned in eligible {
            let c = &planned.candidate;
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
                    let mut generation = *generation;
                    let charged_at = self.clock.now();
                    let kind = self.kind_of(&c.provider);
                    let basis = match self.price_book.charge_quote(
                        kind,
                        &c.model,
                        &generation.usage,
                        charged_at,
                    ) {
                        Ok(q) => {
                            generation.cost = q.micros;
                            CostBasis::Usage {
                                detail: q.basis.detail,
                            }
                        }
                        Err(PriceError::NoEntry { .. }) => {
                            // Not in the book: the adapter's own figure is all we have.
                            CostBasis::ProviderReported
                        }
                        Err(e) => {
                            tracing::warn!(
                                provider = %c.provider,
                                model = %c.model,
                                error = %e,
                                "usage could not be priced; recording the estimate"
                            );
                            generation.cost = c.expected;
                            CostBasis::Estimate {
                                reason: e.to_string(),
                            }
                        }
                    };
                    decision.chosen = Some(c.label());
                    decision.cost_basis = Some(basis);
                    return Ok(Routed {
                        generation,
                        decision,
                    });
                }
                Tried::Rejected { message } => {
                    return Err(RouteError::ContentRejected {
                        provider: c.provider.clone(),
                        message,
                        decision: Box::new(decision),
                    });
                }
                Tried::Failed(reason) => last = format!("{}: {reason}", c.label()),
            }
        }
        Err(RouteError::Exhausted {
            choice,
            last,
            decision: Box::new(decision),
        })
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
        let timeout = Duration::from_millis(self.config.attempt_timeout_ms);
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
        loop {
            if let Some(b) = breaker {
                if let Admission::Rejected { retry_in } = b.admit(Instant::now()) {
                    let why = format!("circuit open, retry in {}ms", retry_in.as_millis());
                    attempts.push(record("breaker_open", Some(why.clone()), 0));
                    return Tried::Failed(why);
                }
            }
            let started = Instant::now();
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
                    attempts.push(record("ok", None, ms));
                    return Tried::Done(Box::new(generation));
                }
                Err(e) => e,
            };
            let (outcome, health_failure, retryable) = classify(&error);
            tracing::info!(
                provider = %c.provider,
                model = %c.model,
                outcome,
                error = %error,
                "provider attempt failed"
            );
            attempts.push(record(outcome, Some(error.to_string()), ms));
            if let Some(b) = breaker {
                if health_failure {
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
            }
            if let ProviderError::ContentRejected { message, .. } = error {
                return Tried::Rejected { message };
            }
            if !retryable {
                return Tried::Failed(error.to_string());
            }
            // This failure opened the breaker: waiting to retry would only be refused.
            if breaker.is_some_and(|b| b.would_reject(Instant::now()).is_some()) {
                return Tried::Failed(format!("{error}; circuit now open"));
            }
            let Some(delay) = backoff.next() else {
                return Tried::Failed(error.to_string());
            };
            let wait = match &error {
                ProviderError::RateLimited {
                    retry_after: Some(after),
                    ..
                } => {
                    if *after > Duration::from_millis(self.config.max_retry_after_ms) {
                        return Tried::Failed(format!(
                            "{error}; Retry-After {}s is longer than max_retry_after_ms",
                            after.as_secs()
                        ));
                    }
                    *after
                }
                _ => delay,
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
        choice: &ModelChoice,
        size: Size,
        policy: Policy,
        max_cost: Option<Micros>,
        at: DateTime<Utc>,
    ) -> Result<Vec<Planned>, RouteError> {
        let now = Instant::now();
        let mut planned = Vec::new();
        for p in &self.providers {
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
                let kind = self.kind_of(p.name());
                let mut skipped_reason = None;
                let (expected, price_source, surge) =
                    match self.price_book.quote(kind, &offer.name, size, None, at) {
                        Ok(q) => (
                            q.micros,
                            "price_book",
                            Some(q.basis.surge_multiplier).filter(|m| *m != 1.0),
                        ),
                        Err(PriceError::NoEntry { .. }) => {
                            (p.quote(&offer.name, size), "provider_quote", None)
                        }
                        Err(e) => {
                            skipped_reason = Some(format!("cannot be priced: {e}"));
                            (Micros::ZERO, "price_book", None)
                        }
                    };
                let breaker = self.breaker(p.name()).map_or(
                    BreakerState::Closed {
                        consecutive_failures: 0,
                    },
                    |b| b.peek(now),
                );
                if skipped_reason.is_none() {
                    if let Some(retry_in) = self.breaker(p.name()).and_then(|b| b.would_reject(now))
                    {
                        skipped_reason =
                            Some(format!("circuit open, retry in {}ms", retry_in.as_millis()));
                    }
                }
                if skipped_reason.is_none() && max_cost.is_some_and(|max| expected > max) {
                    skipped_reason = Some(OVER_MAX_COST.to_string());
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
            return Err(RouteError::NoCandidate {
                choice: choice.to_string(),
            });
        }
        self.score(&mut planned, policy);
        Ok(planned)
    }

    fn score(&self, planned: &mut [Planned], policy: Policy) {
        let eligible = || {
            planned
                .iter()
                .filter(|p| p.candidate.skipped_reason.is_none())
        };
        let range = |f: &dyn Fn(&Candidate) -> f64| {
            eligible()
                .map(|p| f(&p.candidate))
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                    (lo.min(v), hi.max(v))
                })
        };
        let cost = |c: &Candidate| c.expected.0 as f64;
        let latency = |c: &Candidate| c.expected_latency_ms as f64;
        let (c_lo, c_hi) = range(&cost);
        let (l_lo, l_hi) = range(&latency);
        let norm = |v: f64, lo: f64, hi: f64| if hi > lo { (v - lo) / (hi - lo) } else { 0.0 };
        let w = self.config.balanced_cost_weight;
        for p in planned.iter_mut() {
            if p.candidate.skipped_reason.is_some() {
                continue;
            }
            let c = norm(cost(&p.candidate), c_lo, c_hi);
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
                Policy::Fastest => (ca.expected_latency_ms, ca.expected.0)
                    .cmp(&(cb.expected_latency_ms, cb.expected.0)),
                Policy::Cheapest | Policy::Balanced => (ca.expected.0, ca.expected_latency_ms)
                    .cmp(&(cb.expected.0, cb.expected_latency_ms)),
            };
            ca.skipped_reason
                .is_some()
                .cmp(&cb.skipped_reason.is_some())
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

const OVER_MAX_COST: &str = "expected cost is over max_cost";

enum Tried {
    Done(Box<Generation>),
    Rejected { message: String },
    Failed(String),
}

/// (outcome label, counts against the breaker, worth retrying on the same provider)
fn classify(error: &ProviderError) -> (&'static str, bool, bool) {
    match error {
        ProviderError::Upstream { .. } => ("upstream", true, true),
        ProviderError::Timeout { .. } => ("timeout", true, true),
        // Garbage tends to repeat; another provider is a better bet.
        ProviderError::BadResponse { .. } => ("bad_response", true, false),
        // Busy, not broken.
        ProviderError::RateLimited { .. } => ("rate_limited", false, true),
        ProviderError::ContentRejected { .. } => ("content_rejected", false, false),
        // Bad key or model: every call will fail until someone fixes the config.
        ProviderError::Config { .. } | ProviderError::NoCandidate(_) => ("config", true, false),
    }
}

#[cfg(test)]
mod tests;
