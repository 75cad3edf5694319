//! Router behaviour against scripted in-test providers. These fakes stand in for a
//! provider's behaviour (fail, succeed, stall), not its wire format: adapters have
//! their own tests against local HTTP servers.

use super::*;
use crate::price_book::PriceError;
use crate::{ModelOffer, Usage};
use async_trait::async_trait;
use bytes::Bytes;
use chrono::TimeZone;
use imagegate_core::ModelClass;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug, Clone)]
enum Step {
    Ok,
    Upstream,
    Garbage,
    RateLimited(Option<Duration>),
    Rejected,
    /// Stall this long, then answer.
    Sleep(Duration),
}

struct Scripted {
    name: String,
    offers: Vec<ModelOffer>,
    script: Mutex<VecDeque<Step>>,
    /// What happens once the script runs out.
    then: Step,
    calls: AtomicUsize,
    /// Credits the provider reports having charged, if it reports any.
    reports_credits: Option<f64>,
}

impl Scripted {
    fn new(name: &str, models: &[&str], script: Vec<Step>) -> Arc<Scripted> {
        Arc::new(Scripted {
            name: name.into(),
            offers: models
                .iter()
                .map(|m| ModelOffer::new(m, &[ModelClass::Standard]))
                .collect(),
            script: Mutex::new(script.into()),
            then: Step::Ok,
            calls: AtomicUsize::new(0),
            reports_credits: None,
        })
    }

    fn unpriced(name: &str, models: &[&str]) -> Arc<Scripted> {
        let mut s = Scripted::new(name, models, Vec::new());
        for o in &mut Arc::get_mut(&mut s).expect("fresh Arc").offers {
            o.unpriced = true;
        }
        s
    }

    fn always(name: &str, models: &[&str], step: Step) -> Arc<Scripted> {
        let mut s = Scripted::new(name, models, Vec::new());
        Arc::get_mut(&mut s).expect("fresh Arc").then = step;
        s
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Provider for Scripted {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        // Each scripted provider is its own kind in the test book.
        Box::leak(self.name.clone().into_boxed_str())
    }
    fn offers(&self) -> &[ModelOffer] {
        &self.offers
    }
    fn deadline(&self) -> Duration {
        Duration::from_secs(1)
    }
    async fn generate(&self, request: &ProviderRequest) -> Result<Generation, ProviderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let step = self
            .script
            .lock()
            .expect("script lock")
            .pop_front()
            .unwrap_or_else(|| self.then.clone());
        let provider = self.name.clone();
        match step {
            Step::Ok => {}
            Step::Upstream => {
                return Err(ProviderError::Upstream {
                    provider,
                    message: "HTTP 500".into(),
                })
            }
            Step::Garbage => {
                return Err(ProviderError::BadResponse {
                    provider,
                    message: "body is not JSON".into(),
                })
            }
            Step::RateLimited(retry_after) => {
                return Err(ProviderError::RateLimited {
                    provider,
                    retry_after,
                })
            }
            Step::Rejected => {
                return Err(ProviderError::ContentRejected {
                    provider,
                    message: "safety system".into(),
                })
            }
            Step::Sleep(d) => tokio::time::sleep(d).await,
        }
        Ok(Generation {
            bytes: Bytes::from_static(b"\x89PNG"),
            media_type: "image/png".into(),
            provider: self.name.clone(),
            model: request.model.clone(),
            usage: Usage {
                images: 1,
                width: request.size.width,
                height: request.size.height,
                credits: self.reports_credits,
                ..Usage::default()
            },
        })
    }
}

const BOOK: &str = r#"
[[model]]
provider = "cheap"
model = "m"
source = "test"
as_of = 2026-11-24
pricing = { type = "per_image", prices = [{ usd = 0.01 }] }

[[model]]
provider = "mid"
model = "m"
source = "test"
as_of = 2026-11-24
pricing = { type = "per_image", prices = [{ usd = 0.02 }] }

[[model]]
provider = "dear"
model = "m"
source = "test"
as_of = 2026-11-24
usd_per_reported_credit = 0.01
pricing = { type = "per_image", prices = [{ usd = 0.04 }] }

[[model]]
provider = "dear"
model = "old"
source = "test"
as_of = 2026-11-24
deprecated = 2026-06-01
retired = 2026-11-01
replacement = "m"
pricing = { type = "per_image", prices = [{ usd = 0.005 }] }

[[model]]
provider = "dear"
model = "going"
source = "test"
as_of = 2026-11-24
retired = 2026-12-10
replacement = "m"
pricing = { type = "per_image", prices = [{ usd = 0.005 }] }

[[model]]
provider = "tokens"
model = "m"
source = "test"
as_of = 2026-11-24
default_quality = "medium"
pricing = { type = "per_token", usd_per_m_text_input = 5.0, usd_per_m_image_output = 40.0, image_output_tokens = [{ size = "1024x1024", quality = "medium", tokens = 1056 }] }

# Weekday afternoons (UTC) the cheap provider costs triple.
[[surge]]
provider = "cheap"
days = ["mon", "tue", "wed", "thu", "fri"]
start = "14:00"
end = "18:00"
multiplier = 3.0
"#;

fn book() -> PriceBook {
    PriceBook::from_toml_str(BOOK).expect("test book")
}

fn live(providers: &[Arc<dyn Provider>]) -> Arc<LivePrices> {
    Arc::new(LivePrices::new(book(), None, offered(providers)).expect("every offer priced"))
}

/// Tuesday 24 November 2026, UTC.
fn tuesday(h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, h, 0, 0)
        .single()
        .expect("valid instant")
}

fn config() -> RouterConfig {
    RouterConfig {
        retries_per_candidate: 1,
        backoff_min_ms: 100,
        backoff_max_ms: 1_000,
        attempt_timeout_ms: Some(5_000),
        max_retry_after_ms: 10_000,
        breaker: BreakerConfig {
            failure_threshold: 2,
            cooldown_ms: 30_000,
        },
        latency_prior_ms: [
            ("cheap".to_string(), 8_000),
            ("mid".to_string(), 3_000),
            ("dear".to_string(), 1_000),
        ]
        .into_iter()
        .collect(),
        ..RouterConfig::default()
    }
}

fn router(providers: Vec<Arc<Scripted>>, at: DateTime<Utc>) -> Router {
    router_with(providers, at, config())
}

fn router_with(providers: Vec<Arc<Scripted>>, at: DateTime<Utc>, config: RouterConfig) -> Router {
    let providers: Vec<Arc<dyn Provider>> = providers
        .into_iter()
        .map(|p| p as Arc<dyn Provider>)
        .collect();
    let prices = live(&providers);
    Router::new(providers, prices, config)
        .expect("router")
        .with_clock(Arc::new(ManualClock::new(at)))
}

fn request() -> GenerationRequest {
    GenerationRequest::new(
        "a lighthouse at dusk",
        None,
        ModelChoice::Class(ModelClass::Standard),
        Size {
            width: 1024,
            height: 1024,
        },
        7,
    )
    .expect("request")
}

fn standard() -> ModelChoice {
    ModelChoice::Class(ModelClass::Standard)
}

fn square() -> Size {
    Size {
        width: 1024,
        height: 1024,
    }
}

fn outcomes(d: &Decision) -> Vec<(String, &'static str)> {
    d.attempts
        .iter()
        .map(|a| (a.provider.clone(), a.outcome.as_str()))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn fails_over_after_retrying_a_500() {
    let cheap = Scripted::always("cheap", &["m"], Step::Upstream);
    let mid = Scripted::new("mid", &["m"], vec![]);
    let r = router(vec![cheap.clone(), mid.clone()], tuesday(9));
    let routed = r
        .generate(&request(), Policy::Cheapest, None)
        .await
        .expect("served by the second candidate");
    assert_eq!(routed.generation.provider, "mid");
    assert_eq!(routed.decision.chosen.as_deref(), Some("mid/m"));
    assert_eq!(
        outcomes(&routed.decision),
        vec![
            ("cheap".into(), "upstream"),
            ("cheap".into(), "upstream"),
            ("mid".into(), "ok")
        ]
    );
    // The first failure waited a jittered backoff of 100..200 ms before the retry.
    let waited = routed.decision.attempts[0].waited_ms;
    assert!((100..=200).contains(&waited), "waited {waited}ms");
    assert_eq!(cheap.calls(), 2);
    // Cost is the book's charge for the reported usage, by the book in force.
    assert_eq!(routed.charge.book, Some(Micros(20_000)));
    assert_eq!(routed.charge.micros(), Some(Micros(20_000)));
    assert_eq!(routed.charge.book_version, book().version());
    assert_eq!(routed.decision.book_version, book().version());
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_call_is_not_retried_and_fails_over() {
    let cheap = Scripted::always("cheap", &["m"], Step::Sleep(Duration::from_secs(60)));
    let mid = Scripted::new("mid", &["m"], vec![]);
    let mut cfg = config();
    cfg.latency_prior_ms.insert("cheap".into(), 1_000);
    let r = router_with(vec![cheap.clone(), mid], tuesday(9), cfg);
    let started = Instant::now();
    let routed = r
        .generate(&request(), Policy::Cheapest, None)
        .await
        .expect("served after the timeout");
    assert_eq!(routed.generation.provider, "mid");
    // The timed-out call may have been paid for: one try only, then the next provider.
    assert_eq!(
        outcomes(&routed.decision),
        [("cheap".into(), "timeout"), ("mid".into(), "ok")]
    );
    assert_eq!(cheap.calls(), 1);
    assert_eq!(routed.decision.attempts[0].ms, 5_000);
    assert!(started.elapsed() < Duration::from_secs(6));
    // The stall raised the latency average from its 1 s prior toward the 5 s timeout:
    // 0.3·5000 + 0.7·1000 = 2200.
    assert_eq!(r.expected_latency_ms("cheap", "m"), 2_200);
}

#[tokio::test(start_paused = true)]
async fn a_possibly_charged_timeout_counts_against_the_cap_on_failover() {
    // cheap ($0.01) stalls; mid ($0.02) alone is under the $0.025 cap, but after a
    // timeout that may have cost $0.01 it is not.
    let cheap = Scripted::always("cheap", &["m"], Step::Sleep(Duration::from_secs(60)));
    let mid = Scripted::new("mid", &["m"], vec![]);
    let r = router(vec![cheap.clone(), mid.clone()], tuesday(9));
    let err = r
        .generate(&request(), Policy::Cheapest, Some(Micros(25_000)))
        .await
        .expect_err("the cap holds across failover");
    assert!(matches!(err, RouteError::Exhausted { .. }), "{err}");
    assert!(err.to_string().contains("max_cost"), "{err}");
    assert_eq!((cheap.calls(), mid.calls()), (1, 0));
}

#[test]
fn attempt_timeouts_match_the_adapters_deadlines() {
    let providers = || -> Vec<Arc<dyn Provider>> { vec![Scripted::new("cheap", &["m"], vec![])] };
    // Unset: each provider's own deadline plus a grace.
    let r = Router::new(providers(), live(&providers()), RouterConfig::default()).expect("router");
    assert_eq!(
        r.attempt_timeout("cheap"),
        Some(Duration::from_secs(1) + ATTEMPT_GRACE)
    );
    // Shorter than the adapter's own deadline (1 s): refused, naming the provider.
    let short = RouterConfig {
        attempt_timeout_ms: Some(500),
        ..RouterConfig::default()
    };
    let err = Router::new(providers(), live(&providers()), short)
        .err()
        .expect("refused");
    assert!(
        matches!(err, RouteError::Config(ref e)
            if e.path == "attempt_timeout_ms" && e.problem.contains("\"cheap\"") && e.problem.contains("1000 ms")),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn fails_over_on_garbage_without_retrying_it() {
    let cheap = Scripted::always("cheap", &["m"], Step::Garbage);
    let mid = Scripted::new("mid", &["m"], vec![]);
    let r = router(vec![cheap.clone(), mid], tuesday(9));
    let routed = r
        .generate(&request(), Policy::Cheapest, None)
        .await
        .expect("served");
    assert_eq!(
        outcomes(&routed.decision),
        vec![("cheap".into(), "bad_response"), ("mid".into(), "ok")]
    );
    assert_eq!(cheap.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn breaker_opens_skips_half_opens_and_closes() {
    // Two consecutive failures open the breaker (threshold 2).
    let cheap = Scripted::new(
        "cheap",
        &["m"],
        vec![Step::Upstream, Step::Upstream, Step::Upstream],
    );
    let mid = Scripted::new("mid", &["m"], vec![]);
    let r = router(vec![cheap.clone(), mid.clone()], tuesday(9));

    let first = r
        .generate(&request(), Policy::Cheapest, None)
        .await
        .expect("served");
    assert_eq!(first.generation.provider, "mid");
    assert_eq!(cheap.calls(), 2);

    // Open: the cheap provider is skipped without a call.
    let est = r
        .estimate(&standard(), square(), Policy::Cheapest, None, tuesday(9))
        .expect("estimate");
    let skipped = est
        .candidates
        .iter()
        .find(|c| c.provider == "cheap")
        .expect("listed");
    assert!(
        matches!(skipped.skipped_reason, Some(SkipReason::CircuitOpen { .. })),
        "{skipped:?}"
    );
    assert_eq!(
        est.chosen.as_ref().map(|c| c.provider.as_str()),
        Some("mid")
    );
    let second = r
        .generate(&request(), Policy::Cheapest, None)
        .await
        .expect("served");
    assert_eq!(second.generation.provider, "mid");
    assert_eq!(cheap.calls(), 2, "open breaker: no call");

    // After the cooldown one probe goes; it fails, so the breaker reopens.
    tokio::time::advance(Duration::from_secs(30)).await;
    let third = r
        .generate(&request(), Policy::Cheapest, None)
        .await
        .expect("served");
    assert_eq!(third.generation.provider, "mid");
    assert_eq!(cheap.calls(), 3);
    assert_eq!(
        outcomes(&third.decision)[0],
        ("cheap".into(), "upstream"),
        "one probe only"
    );
    assert_eq!(outcomes(&third.decision)[1], ("mid".into(), "ok"));

    // Next cooldown: the probe succeeds and the breaker closes.
    tokio::time::advance(Duration::from_secs(30)).await;
    let fourth = r
        .generate(&request(), Policy::Cheapest, None)
        .await
        .expect("served");
    assert_eq!(fourth.generation.provider, "cheap");
    assert_eq!(
        r.breaker_states().get("cheap"),
        Some(&BreakerState::Closed {
            consecutive_failures: 0
        })
    );
}

#[tokio::test(start_paused = true)]
async fn retries_honour_retry_after() {
    let cheap = Scripted::new(
        "cheap",
        &["m"],
        vec![Step::RateLimited(Some(Duration::from_secs(3)))],
    );
    let r = router(vec![cheap.clone()], tuesday(9));
    let started = Instant::now();
    let routed = r
        .generate(&request(), Policy::Cheapest, None)
        .await
        .expect("served after waiting");
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    assert_eq!(
        routed.decision.attempts[0].outcome,
        AttemptOutcome::RateLimited
    );
    assert_eq!(routed.decision.attempts[0].waited_ms, 3_000);
    assert_eq!(routed.generation.provider, "cheap");
    // Rate limiting is not ill health.
    assert_eq!(
        r.breaker_states().get("cheap"),
        Some(&BreakerState::Closed {
            consecutive_failures: 0
        })
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_beyond_the_limit_fails_over_at_once() {
    let cheap = Scripted::always(
        "cheap",
        &["m"],
        Step::RateLimited(Some(Duration::from_secs(600))),
    );
    let mid = Scripted::new("mid", &["m"], vec![]);
    let r = router(vec![cheap.clone(), mid], tuesday(9));
    let started = Instant::now();
    let routed = r
        .generate(&request(), Policy::Cheapest, None)
        .await
        .expect("served");
    assert_eq!(routed.generation.provider, "mid");
    assert_eq!(cheap.calls(), 1);
    assert_eq!(started.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn content_rejection_is_final() {
    let cheap = Scripted::always("cheap", &["m"], Step::Rejected);
    let mid = Scripted::new("mid", &["m"], vec![]);
    let r = router(vec![cheap, mid.clone()], tuesday(9));
    let err = r
        .generate(&request(), Policy::Cheapest, None)
        .await
        .expect_err("rejected");
    assert!(matches!(err, RouteError::ContentRejected { .. }), "{err}");
    assert_eq!(mid.calls(), 0, "no shopping the prompt around");
    assert_eq!(err.decision().map(|d| d.attempts.len()), Some(1));
}

#[tokio::test(start_paused = true)]
async fn every_candidate_failing_is_exhausted_with_the_attempts() {
    let cheap = Scripted::always("cheap", &["m"], Step::Garbage);
    let mid = Scripted::always("mid", &["m"], Step::Garbage);
    let r = router(vec![cheap, mid], tuesday(9));
    let err = r
        .generate(&request(), Policy::Cheapest, None)
        .await
        .expect_err("all fail");
    assert!(matches!(err, RouteError::Exhausted { .. }), "{err}");
    assert_eq!(err.decision().map(|d| d.attempts.len()), Some(2));
}

#[test]
fn policies_pick_by_cost_latency_or_both() {
    let providers = || {
        vec![
            Scripted::new("dear", &["m"], vec![]),
            Scripted::new("cheap", &["m"], vec![]),
            Scripted::new("mid", &["m"], vec![]),
        ]
    };
    let r = router(providers(), tuesday(9));
    let pick = |policy| {
        r.estimate(&standard(), square(), policy, None, tuesday(9))
            .expect("estimate")
            .chosen
            .map(|c| c.provider)
    };
    // cheap: $0.01, 8 s; mid: $0.02, 3 s; dear: $0.04, 1 s.
    assert_eq!(pick(Policy::Cheapest).as_deref(), Some("cheap"));
    assert_eq!(pick(Policy::Fastest).as_deref(), Some("dear"));
    // Balanced (w = 0.5): cheap 0.5·0 + 0.5·1 = 0.5; mid 0.5·(1/3) + 0.5·(2/7) ≈ 0.31;
    // dear 0.5·1 + 0.5·0 = 0.5.
    assert_eq!(pick(Policy::Balanced).as_deref(), Some("mid"));
    let est = r
        .estimate(&standard(), square(), Policy::Balanced, None, tuesday(9))
        .expect("estimate");
    let mid = &est.candidates[0];
    assert_eq!(mid.provider, "mid");
    let expected = 0.5 * (1.0 / 3.0) + 0.5 * (2.0 / 7.0);
    assert!((mid.score.expect("scored") - expected).abs() < 1e-9);

    // All cost, no latency: balanced becomes cheapest.
    let cost_only = router_with(
        providers(),
        tuesday(9),
        RouterConfig {
            balanced_cost_weight: 1.0,
            ..config()
        },
    );
    let chosen = cost_only
        .estimate(&standard(), square(), Policy::Balanced, None, tuesday(9))
        .expect("estimate")
        .chosen
        .map(|c| c.provider);
    assert_eq!(chosen.as_deref(), Some("cheap"));
}

#[tokio::test(start_paused = true)]
async fn a_surge_window_changes_the_cheapest_choice() {
    let cheap = Scripted::new("cheap", &["m"], vec![]);
    let mid = Scripted::new("mid", &["m"], vec![]);
    let clock = Arc::new(ManualClock::new(tuesday(9)));
    let providers: Vec<Arc<dyn Provider>> = vec![cheap.clone(), mid.clone()];
    let r = Router::new(providers.clone(), live(&providers), config())
        .expect("router")
        .with_clock(clock.clone());

    // 09:00 UTC: no surge, cheap wins at $0.01.
    let est = r
        .estimate(&standard(), square(), Policy::Cheapest, None, tuesday(9))
        .expect("estimate");
    assert_eq!(
        est.chosen.as_ref().map(|c| c.expected),
        Some(Micros(10_000))
    );
    assert_eq!(est.chosen.map(|c| c.provider).as_deref(), Some("cheap"));

    // 15:00 UTC: cheap costs 3 × $0.01 = $0.03, so mid ($0.02) wins.
    let est = r
        .estimate(&standard(), square(), Policy::Cheapest, None, tuesday(15))
        .expect("estimate");
    let chosen = est.chosen.expect("chosen");
    assert_eq!(chosen.provider, "mid");
    let surged = est
        .candidates
        .iter()
        .find(|c| c.provider == "cheap")
        .expect("listed");
    assert_eq!(surged.expected, Micros(30_000));
    assert_eq!(surged.surge_multiplier, Some(3.0));

    // generate reads the injected clock.
    clock.set(tuesday(15));
    let routed = r
        .generate(&request(), Policy::Cheapest, None)
        .await
        .expect("served");
    assert_eq!(routed.generation.provider, "mid");
    clock.set(tuesday(9));
    let routed = r
        .generate(&request(), Policy::Cheapest, None)
        .await
        .expect("served");
    assert_eq!(routed.generation.provider, "cheap");
}

#[tokio::test(start_paused = true)]
async fn estimate_equals_the_actual_charge_for_fixed_price_models() {
    for (provider, model) in [("cheap", "m"), ("mid", "m"), ("dear", "m"), ("tokens", "m")] {
        let p = Scripted::new(provider, &[model], vec![]);
        let r = router(vec![p], tuesday(15));
        let est = r
            .estimate(&standard(), square(), Policy::Cheapest, None, tuesday(15))
            .expect("estimate")
            .chosen
            .expect("chosen");
        let routed = r
            .generate(&request(), Policy::Cheapest, None)
            .await
            .expect("served");
        assert_eq!(routed.charge.book, Some(est.expected), "{provider}/{model}");
        assert!(matches!(
            routed.decision.cost_basis,
            Some(CostBasis::Usage { .. })
        ));
    }
}

#[tokio::test(start_paused = true)]
async fn max_cost_refuses_before_any_call() {
    let cheap = Scripted::new("cheap", &["m"], vec![]);
    let mid = Scripted::new("mid", &["m"], vec![]);
    let r = router(vec![cheap.clone(), mid.clone()], tuesday(9));
    let err = r
        .generate(&request(), Policy::Cheapest, Some(Micros(9_999)))
        .await
        .expect_err("over budget");
    match &err {
        RouteError::OverBudget {
            cheapest, max_cost, ..
        } => {
            assert_eq!(*cheapest, Micros(10_000));
            assert_eq!(*max_cost, Micros(9_999));
        }
        other => panic!("expected OverBudget, got {other}"),
    }
    assert_eq!(cheap.calls() + mid.calls(), 0);
    assert_eq!(err.decision().map(|d| d.attempts.len()), Some(0));

    // A cap between the two leaves only the cheap one, even for `fastest`.
    let routed = r
        .generate(&request(), Policy::Fastest, Some(Micros(15_000)))
        .await
        .expect("served");
    assert_eq!(routed.generation.provider, "cheap");
}

#[tokio::test(start_paused = true)]
async fn max_cost_skips_dear_candidates_even_for_fastest() {
    // dear ($0.04) is fastest by far; a $0.015 cap must never call it.
    let cheap = Scripted::new("cheap", &["m"], vec![]);
    let dear = Scripted::new("dear", &["m"], vec![]);
    let r = router(vec![dear.clone(), cheap.clone()], tuesday(9));
    let est = r
        .estimate(
            &standard(),
            square(),
            Policy::Fastest,
            Some(Micros(15_000)),
            tuesday(9),
        )
        .expect("estimate");
    let skipped = est
        .candidates
        .iter()
        .find(|c| c.provider == "dear")
        .expect("listed");
    assert_eq!(
        skipped.skipped_reason,
        Some(SkipReason::OverMaxCost {
            expected: Micros(40_000),
            max_cost: Micros(15_000)
        })
    );
    assert_eq!(
        est.eligible()
            .map(|c| c.provider.as_str())
            .collect::<Vec<_>>(),
        ["cheap"]
    );
    let routed = r
        .generate(&request(), Policy::Fastest, Some(Micros(15_000)))
        .await
        .expect("served by the one under the cap");
    assert_eq!(routed.generation.provider, "cheap");
    assert_eq!(dear.calls(), 0);
    // When the one under the cap fails, failover does not reach for the dear one.
    let cheap_down = Scripted::always("cheap", &["m"], Step::Garbage);
    let dear = Scripted::new("dear", &["m"], vec![]);
    let r = router(vec![dear.clone(), cheap_down], tuesday(9));
    let err = r
        .generate(&request(), Policy::Fastest, Some(Micros(15_000)))
        .await
        .expect_err("nothing else under the cap");
    assert!(matches!(err, RouteError::Exhausted { .. }), "{err}");
    assert_eq!(dear.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn unpriced_models_are_charged_as_unknown_never_zero() {
    let unpriced = Scripted::unpriced("nobook", &["x"]);
    let mid = Scripted::new("mid", &["m"], vec![]);
    let r = router(vec![unpriced.clone(), mid], tuesday(9));
    let pinned = ModelChoice::Pinned {
        provider: "nobook".into(),
        model: "x".into(),
    };
    let est = r
        .estimate(&pinned, square(), Policy::Cheapest, None, tuesday(9))
        .expect("estimate");
    let c = est.chosen.expect("chosen");
    assert_eq!(c.price_source, PriceSource::Unpriced);

    let mut req = request();
    req.model = pinned.clone();
    let routed = r
        .generate(&req, Policy::Fastest, None)
        .await
        .expect("served");
    assert_eq!(routed.generation.provider, "nobook");
    assert_eq!(routed.charge.book, None);
    assert_eq!(routed.charge.micros(), None);
    assert!(routed.charge.is_unpriced());
    assert_eq!(routed.decision.cost_basis, Some(CostBasis::Unpriced));

    // An unknown price cannot be held to a cap.
    let err = r
        .generate(&req, Policy::Fastest, Some(Micros(1_000_000)))
        .await
        .expect_err("skipped under a cap");
    assert!(
        matches!(err, RouteError::Unavailable { ref reasons, .. } if reasons.contains("unpriced_under_cap")),
        "{err}"
    );

    // Cheapest ranks an unknown price after every known one.
    let both = router(
        vec![
            Scripted::unpriced("nobook", &["m"]),
            Scripted::new("dear", &["m"], vec![]),
        ],
        tuesday(9),
    );
    let chosen = both
        .estimate(&standard(), square(), Policy::Cheapest, None, tuesday(9))
        .expect("estimate")
        .chosen
        .expect("chosen");
    assert_eq!(chosen.provider, "dear");

    let nobody = ModelChoice::Pinned {
        provider: "mid".into(),
        model: "nope".into(),
    };
    assert!(matches!(
        r.estimate(&nobody, square(), Policy::Cheapest, None, tuesday(9)),
        Err(RouteError::NoCandidate { .. })
    ));
}

#[test]
fn an_offer_without_entry_or_unpriced_mark_stops_start_up() {
    let providers: Vec<Arc<dyn Provider>> = vec![Scripted::new("nobook", &["x"], vec![])];
    let err = LivePrices::new(book(), None, offered(&providers)).expect_err("refused");
    assert!(
        matches!(err, PriceError::Unpriced { ref models, .. } if models == &["nobook/x".to_string()]),
        "{err}"
    );
    assert!(err.to_string().contains("unpriced = true"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn retired_models_are_never_called_and_named_requests_learn_the_replacement() {
    // "old" retired on 2026-11-01; it would be the cheapest.
    let dear = Scripted::new("dear", &["old", "m"], vec![]);
    let r = router(vec![dear.clone()], tuesday(9));
    let est = r
        .estimate(&standard(), square(), Policy::Cheapest, None, tuesday(9))
        .expect("estimate");
    let old = est
        .candidates
        .iter()
        .find(|c| c.model == "old")
        .expect("listed");
    assert!(
        matches!(old.skipped_reason, Some(SkipReason::Retired { ref replacement, .. }) if replacement.as_deref() == Some("m")),
        "{old:?}"
    );
    let routed = r
        .generate(&request(), Policy::Cheapest, None)
        .await
        .expect("served");
    assert_eq!(routed.generation.model, "m");

    let mut req = request();
    req.model = ModelChoice::Pinned {
        provider: "dear".into(),
        model: "old".into(),
    };
    let err = r
        .generate(&req, Policy::Cheapest, None)
        .await
        .expect_err("retired");
    match &err {
        RouteError::Retired {
            model,
            on,
            replacement,
        } => {
            assert_eq!(model, "dear/old");
            assert_eq!(on.to_string(), "2026-11-01");
            assert_eq!(replacement.as_deref(), Some("m"));
        }
        other => panic!("expected Retired, got {other}"),
    }
    assert!(err.to_string().contains("use m instead"), "{err}");
    assert_eq!(dear.calls(), 1, "only the current model was called");

    // Named although no provider offers it any more: still told the replacement.
    let gone = router(vec![Scripted::new("dear", &["m"], vec![])], tuesday(9));
    let err = gone
        .generate(&req, Policy::Cheapest, None)
        .await
        .expect_err("retired");
    assert!(matches!(err, RouteError::Retired { .. }), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_reported_cost_wins_and_a_disagreement_is_flagged() {
    // dear is $0.04 in the book and says it charged 4 credits ($0.04): agreement.
    let mut dear = Scripted::new("dear", &["m"], vec![]);
    Arc::get_mut(&mut dear).expect("fresh").reports_credits = Some(4.0);
    let r = router(vec![dear], tuesday(9));
    let routed = r
        .generate(&request(), Policy::Cheapest, None)
        .await
        .expect("served");
    assert_eq!(routed.charge.book, Some(Micros(40_000)));
    assert_eq!(routed.charge.reported, Some(Micros(40_000)));
    assert!(!routed.charge.disagrees);
    // It says it charged 5 credits: the report wins and the 25% gap is flagged.
    let mut dear = Scripted::new("dear", &["m"], vec![]);
    Arc::get_mut(&mut dear).expect("fresh").reports_credits = Some(5.0);
    let r = router(vec![dear], tuesday(9));
    let routed = r
        .generate(&request(), Policy::Cheapest, None)
        .await
        .expect("served");
    assert_eq!(routed.charge.micros(), Some(Micros(50_000)));
    assert!(routed.charge.disagrees);
    assert_eq!(routed.charge.disagreement_pct, Some(25.0));
    let json = serde_json::to_value(&routed.charge).expect("serializes");
    assert_eq!(json["disagrees"], true);
}

#[tokio::test(start_paused = true)]
async fn a_reloaded_book_prices_the_next_call_and_a_broken_one_is_refused() {
    let cheap = Scripted::new("cheap", &["m"], vec![]);
    let r = router(vec![cheap], tuesday(9));
    let before = r.price_book().version().to_string();
    let quote = |r: &Router| {
        r.estimate(&standard(), square(), Policy::Cheapest, None, tuesday(9))
            .expect("estimate")
            .chosen
            .expect("chosen")
            .expected
    };
    assert_eq!(quote(&r), Micros(10_000));
    let dearer = BOOK.replace("usd = 0.01 }", "usd = 0.015 }");
    let reloaded = r
        .prices()
        .install_text(&dearer, "edited")
        .expect("valid book");
    assert!(reloaded.changed && reloaded.previous == before);
    assert_eq!(quote(&r), Micros(15_000));
    let routed = r
        .generate(&request(), Policy::Cheapest, None)
        .await
        .expect("served");
    assert_eq!(routed.charge.book, Some(Micros(15_000)));
    assert_eq!(routed.charge.book_version, reloaded.version);

    // Broken TOML: refused with its line and column; the old book keeps serving.
    let err = r
        .prices()
        .install_text(&dearer.replace("usd = 0.015 }", "usd = }"), "broken")
        .expect_err("refused");
    assert!(err.to_string().contains("line"), "{err}");
    assert_eq!(quote(&r), Micros(15_000));
    // A book that drops an offered model's entry is refused too.
    let dropped = BOOK.replace("provider = \"cheap\"", "provider = \"elsewhere\"");
    assert!(matches!(
        r.prices().install_text(&dropped, "dropped"),
        Err(PriceError::Unpriced { .. })
    ));
    assert_eq!(quote(&r), Micros(15_000));
}

#[tokio::test(start_paused = true)]
async fn latency_average_moves_the_fastest_choice() {
    // mid's prior is 3 s and dear's 1 s; mid keeps answering in 100 ms.
    let mid = Scripted::always("mid", &["m"], Step::Sleep(Duration::from_millis(100)));
    let dear = Scripted::always("dear", &["m"], Step::Sleep(Duration::from_millis(100)));
    let r = router(vec![mid.clone(), dear], tuesday(9));
    let pinned = |p: &str| {
        let mut req = request();
        req.model = ModelChoice::Pinned {
            provider: p.into(),
            model: "m".into(),
        };
        req
    };
    for _ in 0..10 {
        r.generate(&pinned("mid"), Policy::Fastest, None)
            .await
            .expect("served");
    }
    assert!(r.expected_latency_ms("mid", "m") < 1_000);
    let chosen = r
        .estimate(&standard(), square(), Policy::Fastest, None, tuesday(9))
        .expect("estimate")
        .chosen
        .expect("chosen");
    assert_eq!(chosen.provider, "mid");
}

#[tokio::test(start_paused = true)]
async fn the_decision_serializes_for_the_ledger() {
    let cheap = Scripted::new("cheap", &["m"], vec![Step::Garbage]);
    let mid = Scripted::new("mid", &["m"], vec![]);
    let r = router(vec![cheap, mid], tuesday(9));
    let routed = r
        .generate(&request(), Policy::Balanced, None)
        .await
        .expect("served");
    let json = serde_json::to_value(&routed.decision).expect("serializes");
    assert_eq!(json["policy"], "balanced");
    assert_eq!(json["choice"], "standard");
    assert_eq!(json["chosen"], "mid/m");
    assert_eq!(json["attempts"][0]["outcome"], "bad_response");
    assert_eq!(json["attempts"][1]["outcome"], "ok");
    assert_eq!(json["candidates"][0]["price_source"], "price_book");
    assert_eq!(json["cost_basis"]["from"], "usage");
    assert!(json["candidates"][0]["score"].is_number());
    assert_eq!(json["candidates"][0]["breaker"]["state"], "closed");
}

#[test]
fn policies_parse() {
    assert_eq!("cheapest".parse::<Policy>(), Ok(Policy::Cheapest));
    assert_eq!(" Fastest ".parse::<Policy>(), Ok(Policy::Fastest));
    assert_eq!("balanced".parse::<Policy>(), Ok(Policy::Balanced));
    assert!("quickest".parse::<Policy>().is_err());
    assert_eq!(Policy::Balanced.to_string(), "balanced");
}

#[test]
fn bad_router_config_is_refused() {
    let providers: Vec<Arc<dyn Provider>> = vec![
        Scripted::new("a", &["m"], vec![]),
        Scripted::new("a", &["m"], vec![]),
    ];
    let prices = Arc::new(LivePrices::new(book(), None, Vec::new()).expect("empty offers"));
    assert!(matches!(
        Router::new(providers, prices.clone(), RouterConfig::default()),
        Err(RouteError::DuplicateProvider(ref name)) if name == "a"
    ));
    let bad = RouterConfig {
        latency_ewma_alpha: 0.0,
        ..RouterConfig::default()
    };
    assert!(matches!(
        Router::new(Vec::new(), prices, bad),
        Err(RouteError::Config(ref e)) if e.path == "latency_ewma_alpha"
    ));
    let parsed: RouterConfig =
        toml::from_str("policy = \"balanced\"\n[breaker]\nfailure_threshold = 3\n")
            .expect("parses");
    assert_eq!(parsed.policy, Policy::Balanced);
    assert_eq!(parsed.breaker.failure_threshold, 3);
    assert!(toml::from_str::<RouterConfig>("polcy = \"balanced\"").is_err());
}

/// The embedded `local` provider priced by the real config/pricing.toml: the router's
/// estimate and the charge it records agree.
#[tokio::test]
async fn the_local_provider_is_priced_by_the_real_book() {
    use crate::local::{LocalConfig, LocalProvider};
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/pricing.toml");
    let book = PriceBook::load(path).expect("config/pricing.toml");
    let local: Arc<dyn Provider> = Arc::new(
        LocalProvider::new(LocalConfig {
            latency_ms: 1,
            ..LocalConfig::default()
        })
        .expect("local provider"),
    );
    let providers = vec![local];
    let prices = Arc::new(LivePrices::new(book, None, offered(&providers)).expect("priced"));
    let r = Router::new(providers, prices, RouterConfig::default()).expect("router");
    let size = Size {
        width: 256,
        height: 192,
    };
    let est = r
        .estimate(&standard(), size, Policy::Cheapest, None, Utc::now())
        .expect("estimate")
        .chosen
        .expect("chosen");
    assert_eq!(est.price_source, PriceSource::PriceBook);
    let mut req = request();
    req.size = size;
    let routed = r
        .generate(&req, Policy::Cheapest, None)
        .await
        .expect("drawn");
    assert_eq!(routed.charge.book, Some(est.expected));
    // 256x192 is 3/64 of 1024x1024 at $0.002.
    assert_eq!(routed.charge.micros(), Some(Micros(94)));
}
