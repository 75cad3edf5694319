//! One request end to end: resolve the request against its profile, compute the
//! content key, answer from the cache (memory, then the manifest in the object
//! store) or run the stages once per key however many callers wait (single flight),
//! publish variants then the manifest, and commit every stage's cost to the ledger
//! before answering.
//!
//! It owns order, concurrency limits and cost capture; the stages themselves live in
//! their crates. Entry points: [`Pipeline::start`], [`Pipeline::generate`],
//! [`Pipeline::process`].

pub mod budget;
pub mod config;
pub mod cpu;
mod error;
mod fleet_prices;
mod key_memo;
mod render;

pub use config::PipelineConfig;
pub use error::PipelineError;
pub use imagegate_ledger::CacheOutcome;

use bytes::Bytes;
use chrono::{SecondsFormat, Utc};
use cpu::CpuPool;
use imagegate_core::{
    content_key, source_key, ContentKey, GenerationRequest, ImageFormat, Manifest, ManifestStatus,
    Micros, ModelChoice, RenderProfile, Size, Stage, StageCost, VariantRef, PIPELINE_VERSION,
};
use imagegate_imaging::{DecodeLimits, Watermarker};
use imagegate_ledger::{Ledger, RequestRecord};
use imagegate_providers::{
    Estimate, LivePrices, Policy, PriceBook, ProviderSet, Router, SkipReason,
};
use imagegate_safety::{Classifier, PromptScreen};
use imagegate_storage::{LocalStore, ObjectStore, S3Store};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// How a request treats the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CacheMode {
    /// Answer from the cache when the key exists; otherwise generate once.
    #[default]
    Use,
    /// Generate again and replace the published entry.
    Refresh,
    /// Generate without reading the cache or coalescing with other callers.
    Bypass,
}

/// A generation request as callers spell it (`POST /v1/images`, templates).
/// Everything but `prompt` defaults from the profile and `[defaults]`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageRequest {
    pub prompt: String,
    #[serde(default)]
    pub negative_prompt: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub size: Option<String>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub variants: Option<Vec<u32>>,
    #[serde(default)]
    pub formats: Option<Vec<ImageFormat>>,
    #[serde(default)]
    pub profile: Option<String>,
    /// Routing policy (`cheapest`, `fastest`, `balanced`); `[router] policy` by default.
    #[serde(default)]
    pub policy: Option<String>,
    #[serde(default)]
    pub max_cost_usd: Option<f64>,
    #[serde(default)]
    pub cache: CacheMode,
}

/// Who is asking, for the ledger and logs.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    pub request_id: String,
    /// Id of the API key used (never the secret itself).
    pub api_key: Option<String>,
}

/// What a request got: the manifest, whether it was a hit, and what this request
/// itself cost (a miss: every stage; a hit: the lookup).
#[derive(Debug, Clone)]
pub struct Outcome {
    pub manifest: Arc<Manifest>,
    pub cache: CacheOutcome,
    pub stages: Vec<StageCost>,
}

/// Where a manifest handed out by the cache came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Produced,
    StoreTier,
}

pub struct Pipeline {
    config: PipelineConfig,
    profiles: BTreeMap<String, RenderProfile>,
    watermarkers: HashMap<String, Arc<Watermarker>>,
    router: Router,
    budgets: budget::Budgets,
    classifier: Option<Arc<Classifier>>,
    screen: PromptScreen,
    store: Arc<dyn ObjectStore>,
    ledger: Ledger,
    cache: moka::future::Cache<ContentKey, Arc<Manifest>>,
    /// Content keys of recent requests (`POST /v1/images` computes one per request).
    keys: key_memo::KeyMemo,
    cpu: CpuPool,
    generation_slots: Arc<Semaphore>,
    generation_admission: Arc<Semaphore>,
    encode_threads: usize,
    /// This process's name as a lease holder: unique per start.
    replica: String,
}

impl Pipeline {
    /// Builds every component and fails here, not at the first request, when one
    /// cannot start (missing model, unwritable store, bad profile...).
    pub async fn start(config: PipelineConfig) -> Result<Pipeline, PipelineError> {
        config.validate().map_err(PipelineError::BadRequest)?;
        let profiles = config
            .resolved_profiles()
            .map_err(PipelineError::BadRequest)?;
        let mut watermarkers = HashMap::new();
        for (name, p) in &profiles {
            if let Some(spec) = &p.watermark {
                let wm = Watermarker::new(spec).map_err(|e| {
                    PipelineError::BadRequest(format!("profile {name:?} watermark: {e}"))
                })?;
                watermarkers.insert(name.clone(), Arc::new(wm));
            }
        }
        let providers = ProviderSet::from_config(&config.providers)?.into_providers();
        let price_book = PriceBook::load(&config.pricing).map_err(|e| {
            PipelineError::BadRequest(format!("price book {}: {e}", config.pricing.display()))
        })?;
        // Every offered model priced, or marked unpriced: refused here, not at $0 later.
        let prices = LivePrices::new(
            price_book,
            Some(config.pricing.clone()),
            imagegate_providers::router::offered(&providers),
        )
        .map_err(|e| PipelineError::BadRequest(e.to_string()))?;
        let router = Router::new(providers, Arc::new(prices), config.router.clone())
            .map_err(|e| PipelineError::BadRequest(e.to_string()))?;
        let screen = PromptScreen::new(&config.safety.deny_words, &config.safety.deny_patterns)
            .map_err(|e| PipelineError::Safety(e.to_string()))?;
        let classifier = if config.safety.classifier {
            let cc = config
                .safety
                .classifier_config(config.concurrency.resolved_cpu_workers());
            // Loading builds ONNX sessions: seconds of CPU, so not on the async workers.
            let loaded = tokio::task::spawn_blocking(move || Classifier::load(&cc))
                .await
                .map_err(|e| PipelineError::Internal(e.to_string()))?
                .map_err(|e| PipelineError::Safety(e.to_string()))?;
            Some(Arc::new(loaded))
        } else {
            None
        };
        let store: Arc<dyn ObjectStore> = match &config.storage {
            config::StorageConfig::Local(lc) => {
                let base = config
                    .local_public_base_url()
                    .map_err(PipelineError::BadRequest)?
                    .expect("a local store has a base URL");
                Arc::new(LocalStore::open(&lc.root, &base).await?)
            }
            config::StorageConfig::S3(sc) => Arc::new(S3Store::open(sc).await?),
        };
        let ledger = Ledger::open(&config.ledger).await?;
        let budgets = budget::Budgets::new(config.budgets.clone(), ledger.clone());
        let c = &config.concurrency;
        let workers = c.resolved_cpu_workers();
        // Checked now so that a kernel refusing perf events is in the start-up log,
        // not first noticed by a request.
        if cpu::TaskClock::available() {
            tracing::debug!("perf task clocks available: a lone libaom encode may thread");
        }
        Ok(Pipeline {
            cache: moka::future::Cache::new(c.cache_entries),
            keys: key_memo::KeyMemo::new(),
            cpu: CpuPool::new(workers, c.cpu_queue),
            encode_threads: if c.encode_threads == 0 {
                workers
            } else {
                c.encode_threads
            },
            generation_slots: Arc::new(Semaphore::new(c.generations.max(1))),
            generation_admission: Arc::new(Semaphore::new(
                c.generations.max(1) + c.generation_queue,
            )),
            replica: format!(
                "{}-{}-{:08x}",
                hostname(),
                std::process::id(),
                rand::random::<u32>()
            ),
            profiles,
            watermarkers,
            router,
            budgets,
            classifier,
            screen,
            store,
            ledger,
            config,
        })
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn config(&self) -> &PipelineConfig {
        &self.config
    }

    /// The public URL of one stored variant.
    pub fn url_of(&self, variant: &VariantRef) -> String {
        self.store.public_url(&variant.object)
    }

    /// Is every dependency usable right now?
    pub async fn ready(&self) -> Result<(), PipelineError> {
        self.store.check().await?;
        self.ledger.ping().await?;
        Ok(())
    }

    /// Resolves a caller's request into what decides the output, and how to route it.
    pub fn resolve(
        &self,
        req: &ImageRequest,
    ) -> Result<(GenerationRequest, RenderProfile, Policy), PipelineError> {
        resolve_request(&self.config, &self.profiles, req)
    }

    /// `POST /v1/images`: generate (or fetch from cache) and deliver.
    pub async fn generate(
        &self,
        req: &ImageRequest,
        ctx: &RequestContext,
    ) -> Result<Outcome, PipelineError> {
        let started = Instant::now();
        let (gen, profile, policy) = self.resolve(req)?;
        if let Some(hit) = self.screen.check(&gen.prompt) {
            metrics::counter!("imagegate_prompts_blocked_total").increment(1);
            return Err(PipelineError::PromptBlocked {
                rule: hit.rule().to_string(),
            });
        }
        let key = self.keys.key(&gen, &profile);
        // A hit costs nothing from a provider, so only a miss is held to max_cost_usd
        // and to the key's budget, and both are checked before any provider is called.
        let cached = req.cache == CacheMode::Use && self.cache.contains_key(&key);
        let api_key = ctx.api_key.as_deref();
        let max_cost = req.max_cost_usd.map(Micros::from_usd);
        let constrained = max_cost.is_some() || self.budgets.is_limited(api_key);
        // Held until this request's cost is in the ledger.
        let _reservation = if cached || !constrained {
            None
        } else {
            // The candidates the router would call under the cap, so this check and
            // the call agree (and `/v1/estimate` with them).
            let estimate =
                self.router
                    .estimate(&gen.model, gen.size, policy, max_cost, chrono::Utc::now())?;
            let expected = estimate.chosen.as_ref().map(|c| c.expected);
            if let (Some(max), None) = (req.max_cost_usd, &estimate.chosen) {
                let cheapest_over = estimate
                    .candidates
                    .iter()
                    .filter_map(|c| match c.skipped_reason {
                        Some(SkipReason::OverMaxCost { expected, .. }) => Some(expected),
                        _ => None,
                    })
                    .min();
                if let Some(cheapest) = cheapest_over {
                    return Err(PipelineError::CostLimit {
                        quote_usd: cheapest.as_usd(),
                        max_usd: max,
                    });
                }
            }
            self.budgets
                .reserve(api_key, expected.unwrap_or_default())
                .await?
        };
        let produce = || async {
            let generation = self.call_provider(&gen, policy, max_cost).await?;
            self.finish(key, &profile, generation).await
        };
        self.single_flight(key, req.cache, &profile.name, ctx, started, produce)
            .await
    }

    /// `imagegate process`: the post-generation stages on an image the caller has.
    pub async fn process(
        &self,
        image: Bytes,
        profile_name: Option<&str>,
        ctx: &RequestContext,
    ) -> Result<Outcome, PipelineError> {
        let started = Instant::now();
        let name = profile_name.unwrap_or(&self.config.defaults.profile);
        let profile = self
            .profiles
            .get(name)
            .cloned()
            .ok_or_else(|| PipelineError::UnknownProfile(name.into()))?;
        if image.len() > self.config.limits.max_input_bytes {
            return Err(PipelineError::BadImage(format!(
                "the file has {} bytes; the limit is {}",
                image.len(),
                self.config.limits.max_input_bytes
            )));
        }
        let key = source_key(&image, &profile);
        let produce = || async {
            let generation = Generated {
                bytes: image.clone(),
                provider: "source".into(),
                model: "upload".into(),
                stage: StageCost::new(Stage::Generate),
                slot: None,
            };
            self.finish(key, &profile, generation).await
        };
        self.single_flight(key, CacheMode::Use, &profile.name, ctx, started, produce)
            .await
    }

    /// The manifest of a key, if it was ever published.
    pub async fn manifest(&self, key: ContentKey) -> Result<Option<Arc<Manifest>>, PipelineError> {
        if let Some(m) = self.cache.get(&key).await {
            return Ok(Some(m));
        }
        let Some(m) = self.read_manifest(key).await? else {
            return Ok(None);
        };
        let m = Arc::new(m);
        self.cache.insert(key, m.clone()).await;
        Ok(Some(m))
    }

    async fn read_manifest(&self, key: ContentKey) -> Result<Option<Manifest>, PipelineError> {
        let Some(obj) = self.store.get(&Manifest::object_key(key)).await? else {
            return Ok(None);
        };
        let manifest: Manifest = serde_json::from_slice(&obj.bytes)
            .map_err(|e| PipelineError::Storage(format!("manifest of {key} is unreadable: {e}")))?;
        Ok(Some(manifest))
    }

    /// Runs `produce` at most once per key for all concurrent callers, then records
    /// this caller's own cost and answers.
    async fn single_flight<F, Fut>(
        &self,
        key: ContentKey,
        mode: CacheMode,
        profile: &str,
        ctx: &RequestContext,
        started: Instant,
        produce: F,
    ) -> Result<Outcome, PipelineError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Manifest, PipelineError>>,
    {
        let origin: Arc<Mutex<Option<Origin>>> = Arc::default();
        let manifest = match mode {
            CacheMode::Use => {
                let slot = origin.clone();
                let init = async move {
                    // Boxed here and below: the miss path's state machine is kilobytes
                    // (provider call, render, upload), and inline it would be part of
                    // every hit's future too, which is copied each time it is moved.
                    let (m, from) =
                        Box::pin(self.produce_once_across_replicas(key, produce)).await?;
                    *slot.lock().expect("origin lock is never poisoned") = Some(from);
                    Ok::<_, PipelineError>(Arc::new(m))
                };
                let entry = self
                    .cache
                    .entry(key)
                    .or_try_insert_with(init)
                    .await
                    .map_err(|e: Arc<PipelineError>| (*e).clone())?;
                let ran_init = entry.is_fresh();
                let manifest = entry.into_value();
                let origin = *origin.lock().expect("origin lock is never poisoned");
                match (ran_init, origin) {
                    (true, Some(Origin::Produced)) => {
                        return self
                            .answer_miss(manifest, CacheOutcome::Miss, profile, ctx, started)
                            .await
                    }
                    (true, _) => {
                        return self
                            .answer_hit(manifest, "store", profile, ctx, started)
                            .await
                    }
                    _ => manifest,
                }
            }
            CacheMode::Refresh | CacheMode::Bypass => {
                let manifest = Arc::new(Box::pin(produce()).await?);
                if mode == CacheMode::Refresh {
                    self.cache.insert(key, manifest.clone()).await;
                } else {
                    self.cache.invalidate(&key).await;
                }
                let outcome = if mode == CacheMode::Refresh {
                    CacheOutcome::Miss
                } else {
                    CacheOutcome::Bypass
                };
                return self
                    .answer_miss(manifest, outcome, profile, ctx, started)
                    .await;
            }
        };
        self.answer_hit(manifest, "memory", profile, ctx, started)
            .await
    }

    /// The store-tier lookup and, on a miss, `produce` under the key's lease, so that
    /// replicas sharing the store and ledger generate a key once between them. A
    /// replica that finds the lease taken waits for the holder's manifest; a holder
    /// that dies stops renewing, its lease expires and a waiter takes over.
    async fn produce_once_across_replicas<F, Fut>(
        &self,
        key: ContentKey,
        produce: F,
    ) -> Result<(Manifest, Origin), PipelineError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Manifest, PipelineError>>,
    {
        let fleet = &self.config.fleet;
        let ttl = Duration::from_secs(fleet.lease_ttl_secs.max(1));
        let deadline = Instant::now() + Duration::from_secs(fleet.wait_secs.max(1));
        let mut poll = Duration::from_millis(fleet.poll_ms.max(1));
        loop {
            if let Some(m) = self.read_manifest(key).await? {
                return Ok((m, Origin::StoreTier));
            }
            if self
                .ledger
                .try_acquire_lease(key, &self.replica, ttl)
                .await?
            {
                break;
            }
            if Instant::now() >= deadline {
                return Err(PipelineError::Overloaded {
                    what: "another replica's generation of this image",
                    retry_after: Duration::from_secs(2),
                });
            }
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(Duration::from_millis(fleet.poll_ms.max(1) * 8));
        }
        // Published between our lookup and taking the lease.
        let result = match self.read_manifest(key).await {
            Ok(Some(m)) => Ok((m, Origin::StoreTier)),
            Ok(None) => {
                let renew = async {
                    loop {
                        tokio::time::sleep(ttl / 3).await;
                        match self.ledger.renew_lease(key, &self.replica, ttl).await {
                            Ok(true) => {}
                            Ok(false) => {
                                tracing::warn!(%key, "lease lost while generating; another replica may generate too");
                                std::future::pending::<()>().await;
                            }
                            Err(e) => tracing::warn!(%key, error = %e, "lease renewal failed"),
                        }
                    }
                };
                tokio::select! {
                    produced = produce() => produced.map(|m| (m, Origin::Produced)),
                    () = renew => unreachable!("the renewal loop never ends"),
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e) = self.ledger.release_lease(key, &self.replica).await {
            // It expires by itself; waiters find the manifest first anyway.
            tracing::warn!(%key, error = %e, "lease release failed");
        }
        result
    }

    async fn answer_miss(
        &self,
        manifest: Arc<Manifest>,
        outcome: CacheOutcome,
        profile: &str,
        ctx: &RequestContext,
        started: Instant,
    ) -> Result<Outcome, PipelineError> {
        let stages = manifest.stages.clone();
        self.record(&manifest, outcome, profile, ctx, started, &stages)
            .await?;
        metrics::counter!("imagegate_cache_requests_total", "outcome" => outcome.as_str())
            .increment(1);
        Ok(Outcome {
            manifest,
            cache: outcome,
            stages,
        })
    }

    async fn answer_hit(
        &self,
        manifest: Arc<Manifest>,
        tier: &'static str,
        profile: &str,
        ctx: &RequestContext,
        started: Instant,
    ) -> Result<Outcome, PipelineError> {
        let mut lookup = StageCost::new(Stage::Cache);
        lookup.wall_ms = started.elapsed().as_secs_f64() * 1e3;
        if tier == "store" {
            // One GET of the manifest from the object store.
            lookup.micros = Micros::from_usd(self.config.costs.get_usd_per_1000 / 1000.0);
        }
        lookup.detail = serde_json::json!({
            "tier": tier,
            "original_usd": manifest.cost_micros.as_usd(),
        });
        let stages = vec![lookup];
        self.record(&manifest, CacheOutcome::Hit, profile, ctx, started, &stages)
            .await?;
        metrics::counter!("imagegate_cache_requests_total", "outcome" => "hit").increment(1);
        Ok(Outcome {
            manifest,
            cache: CacheOutcome::Hit,
            stages,
        })
    }

    async fn record(
        &self,
        manifest: &Manifest,
        outcome: CacheOutcome,
        profile: &str,
        ctx: &RequestContext,
        started: Instant,
        stages: &[StageCost],
    ) -> Result<(), PipelineError> {
        let status = match manifest.status {
            ManifestStatus::Ok => "ok",
            ManifestStatus::Blocked => "blocked",
        };
        let record = RequestRecord {
            request_id: ctx.request_id.clone(),
            key: manifest.id,
            cache: outcome,
            status: status.into(),
            provider: Some(manifest.provider.clone()),
            model: Some(manifest.model.clone()),
            api_key: ctx.api_key.clone(),
            profile: profile.into(),
            wall_ms: started.elapsed().as_secs_f64() * 1e3,
        };
        self.ledger.record(&record, stages).await?;
        for s in stages {
            metrics::counter!("imagegate_stage_cost_microdollars_total", "stage" => s.stage.as_str())
                .increment(s.micros.0.max(0) as u64);
            metrics::histogram!("imagegate_stage_duration_seconds", "stage" => s.stage.as_str())
                .record(s.wall_ms / 1e3);
        }
        Ok(())
    }

    async fn call_provider(
        &self,
        gen: &GenerationRequest,
        policy: Policy,
        max_cost: Option<Micros>,
    ) -> Result<Generated, PipelineError> {
        let admitted = self
            .generation_admission
            .clone()
            .try_acquire_owned()
            .map_err(|_| PipelineError::Overloaded {
                what: "generation",
                retry_after: Duration::from_secs(2),
            })?;
        let slot = self
            .generation_slots
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore is never closed");
        let mut normalized = gen.clone();
        normalized.prompt = imagegate_core::key::normalize_text(&gen.prompt);
        normalized.negative_prompt = gen
            .negative_prompt
            .as_deref()
            .map(imagegate_core::key::normalize_text)
            .filter(|n| !n.is_empty());
        let wall = Instant::now();
        let routed = self.router.generate(&normalized, policy, max_cost).await;
        // One count per failed attempt (retries and failovers included), labelled by
        // the configured provider name and the router's closed set of outcomes.
        let decision = match &routed {
            Ok(r) => Some(&r.decision),
            Err(e) => e.decision(),
        };
        for a in decision.iter().flat_map(|d| &d.attempts) {
            if !a.outcome.is_ok() {
                metrics::counter!("imagegate_provider_errors_total",
                    "provider" => a.provider.clone(), "kind" => a.outcome.as_str())
                .increment(1);
            }
        }
        let routed = routed?;
        let generation = routed.generation;
        if generation.bytes.len() > self.config.limits.max_input_bytes {
            return Err(PipelineError::BadImage(format!(
                "provider {} sent {} bytes; the limit is {}",
                generation.provider,
                generation.bytes.len(),
                self.config.limits.max_input_bytes
            )));
        }
        let mut stage = StageCost::new(Stage::Generate);
        stage.wall_ms = wall.elapsed().as_secs_f64() * 1e3;
        // The provider's own report when it made one, else the book's figure; an
        // unpriced model's charge is unknown and flagged, never $0.
        stage.micros = routed.charge.micros().unwrap_or(Micros::ZERO);
        stage.unpriced = routed.charge.is_unpriced();
        stage.bytes_out = generation.bytes.len() as u64;
        stage.detail = serde_json::json!({
            "provider": generation.provider,
            "model": generation.model,
            "usage": generation.usage,
            "size": gen.size.to_string(),
            "book_version": routed.charge.book_version,
            "charge": routed.charge,
            "decision": routed.decision,
        });
        Ok(Generated {
            bytes: generation.bytes,
            provider: generation.provider,
            model: generation.model,
            stage,
            slot: Some(GenerationSlot {
                _admitted: admitted,
                _slot: slot,
            }),
        })
    }

    /// The price book in force, for listings and reloads.
    pub fn prices(&self) -> &Arc<LivePrices> {
        self.router.prices()
    }

    /// Every model the configured providers offer (for `imagegate prices check`).
    pub fn offered(&self) -> &[imagegate_providers::price_book::Offered] {
        self.router.prices().offered()
    }

    /// Keeps the price book in force current while the service runs: installs the
    /// file when it changes (looked at every `file_every`), and shares books with the
    /// other replicas of the ledger database (`[fleet] prices_poll_secs`). A bad book
    /// is refused and the old one keeps serving.
    pub fn keep_prices_current(&self, file_every: Duration) -> Vec<tokio::task::JoinHandle<()>> {
        let prices = self.router.prices().clone();
        let mut tasks: Vec<_> = prices.watch_file(file_every).into_iter().collect();
        tasks.push(fleet_prices::spawn(
            self.ledger.clone(),
            prices,
            self.replica.clone(),
            Duration::from_secs(self.config.fleet.prices_poll_secs.max(1)),
        ));
        tasks
    }

    /// `POST /v1/estimate`: what the router would consider and choose for `req`, and
    /// whether the key is already published (a hit costs no provider fee). Spends nothing.
    pub async fn estimate(
        &self,
        req: &ImageRequest,
    ) -> Result<(ContentKey, bool, Estimate), PipelineError> {
        let (gen, profile, policy) = self.resolve(req)?;
        if let Some(hit) = self.screen.check(&gen.prompt) {
            return Err(PipelineError::PromptBlocked {
                rule: hit.rule().to_string(),
            });
        }
        let key = content_key(&gen, &profile);
        let max = req.max_cost_usd.map(Micros::from_usd);
        let estimate =
            self.router
                .estimate(&gen.model, gen.size, policy, max, chrono::Utc::now())?;
        let cached = self.manifest(key).await?.is_some();
        Ok((key, cached, estimate))
    }

    /// Everything after the provider: render on the CPU pool, upload variants, then
    /// the manifest.
    async fn finish(
        &self,
        key: ContentKey,
        profile: &RenderProfile,
        generated: Generated,
    ) -> Result<Manifest, PipelineError> {
        let limits = &self.config.limits;
        let job = render::RenderJob {
            // Moved, not shared: the render frees the encoded picture as soon as it is
            // decoded, instead of it staying alive here until the manifest is written.
            source: generated.bytes,
            profile: profile.clone(),
            limits: DecodeLimits {
                max_pixels: limits.max_pixels,
                max_side: limits.max_side,
                max_input_bytes: limits.max_input_bytes,
            },
            classifier: self.classifier.clone(),
            watermarker: self.watermarkers.get(&profile.name).cloned(),
            usd_per_core_hour: self.config.costs.usd_per_core_hour,
            encode_threads: self.encode_threads,
            idle_workers: self.cpu.idle_workers(),
        };
        let slot = generated.slot;
        let rendered = self
            .cpu
            .run(move || {
                // The picture is in a worker's hands now: the next generation may start.
                drop(slot);
                render::render(job)
            })
            .await??;
        let mut stages = Vec::with_capacity(8);
        if generated.provider != "source" {
            stages.push(generated.stage);
        }
        stages.extend(rendered.stages);

        let upload_started = Instant::now();
        let images: Vec<VariantRef> = rendered
            .files
            .iter()
            .map(|f| VariantRef {
                width: f.width,
                height: f.height,
                format: f.format,
                object: Manifest::variant_object_key(key, f.width, f.format),
                bytes: f.bytes.len() as u64,
            })
            .collect();
        // Variants first, in parallel; the manifest only once all of them are stored.
        let puts = rendered.files.into_iter().zip(&images).map(|(f, v)| {
            self.store
                .put(&v.object, Bytes::from(f.bytes), f.format.content_type())
        });
        futures::future::try_join_all(puts).await?;
        let stored_bytes: u64 = images.iter().map(|v| v.bytes).sum();
        let objects = images.len() as u64 + 1;
        let mut upload = StageCost::new(Stage::Upload);
        upload.bytes_in = stored_bytes;
        upload.bytes_out = stored_bytes;
        let costs = &self.config.costs;
        // PUT fees plus the first month of storage; later months are a projection in reports.
        upload.micros = Micros::from_usd(objects as f64 * costs.put_usd_per_1000 / 1000.0)
            + Micros::for_storage_month(stored_bytes, costs.storage_usd_per_gb_month);
        // Per file, so reports can project delivery bytes by width and format.
        let files: Vec<serde_json::Value> = images
            .iter()
            .map(|v| serde_json::json!({"width": v.width, "format": v.format, "bytes": v.bytes}))
            .collect();
        upload.detail = serde_json::json!({
            "store": self.store.kind(),
            "objects": objects,
            "storage_months": 1,
            "files": files,
        });

        let status = if rendered.verdict.action == imagegate_core::SafetyAction::Block {
            ManifestStatus::Blocked
        } else {
            ManifestStatus::Ok
        };
        let mut manifest = Manifest {
            id: key,
            status,
            provider: generated.provider,
            model: generated.model,
            source_width: rendered.source_width,
            source_height: rendered.source_height,
            images,
            safety: rendered.verdict,
            cost_micros: Micros::ZERO,
            stages: Vec::new(),
            created_at: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            pipeline_version: PIPELINE_VERSION,
        };
        let body_len = serde_json::to_vec(&manifest).map(|v| v.len()).unwrap_or(0) as u64;
        upload.micros += Micros::for_storage_month(body_len, costs.storage_usd_per_gb_month);
        upload.wall_ms = upload_started.elapsed().as_secs_f64() * 1e3;
        stages.push(upload);
        manifest.cost_micros = stages.iter().map(|s| s.micros).sum();
        manifest.stages = stages;
        let body = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| PipelineError::Internal(e.to_string()))?;
        self.store
            .put(
                &Manifest::object_key(key),
                Bytes::from(body),
                "application/json",
            )
            .await?;
        Ok(manifest)
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "replica".into())
}

/// Provider output on its way into the render stages.
struct Generated {
    bytes: Bytes,
    provider: String,
    model: String,
    stage: StageCost,
    /// Held from the provider call until a CPU worker takes the picture, so provider
    /// output never piles up in front of the CPU pool: when rendering is the
    /// bottleneck, new generations wait (holding nothing) instead of every finished
    /// picture waiting (holding its encoded bytes, megabytes each).
    slot: Option<GenerationSlot>,
}

/// A miss's place among `concurrency.generations`, and in the generation queue.
struct GenerationSlot {
    _admitted: tokio::sync::OwnedSemaphorePermit,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

/// Resolves a caller's request against a configuration and its resolved profiles:
/// every check the HTTP and CLI callers rely on, with no I/O, so the fuzz target
/// (`fuzz/`, `parse_request`) exercises exactly what the server runs.
pub fn resolve_request(
    config: &PipelineConfig,
    profiles: &BTreeMap<String, RenderProfile>,
    req: &ImageRequest,
) -> Result<(GenerationRequest, RenderProfile, Policy), PipelineError> {
    let limits = &config.limits;
    let defaults = &config.defaults;
    let normalized = imagegate_core::key::normalize_text(&req.prompt);
    if normalized.is_empty() {
        return Err(PipelineError::BadRequest("prompt is empty".into()));
    }
    for (field, text) in [
        ("prompt", Some(&req.prompt)),
        ("negative_prompt", req.negative_prompt.as_ref()),
    ] {
        if let Some(t) = text {
            let n = t.chars().count();
            if n > limits.max_prompt_chars {
                return Err(PipelineError::BadRequest(format!(
                    "{field} has {n} characters; the limit is {}",
                    limits.max_prompt_chars
                )));
            }
        }
    }
    let profile_name = req.profile.as_deref().unwrap_or(&defaults.profile);
    let mut profile = profiles
        .get(profile_name)
        .cloned()
        .ok_or_else(|| PipelineError::UnknownProfile(profile_name.into()))?;
    if let Some(v) = &req.variants {
        if v.is_empty() || v.len() > limits.max_variants {
            return Err(PipelineError::BadRequest(format!(
                "variants must list 1 to {} widths",
                limits.max_variants
            )));
        }
        profile.variants = v.clone();
    }
    if let Some(f) = &req.formats {
        if f.is_empty() {
            return Err(PipelineError::BadRequest("formats is empty".into()));
        }
        profile.formats = f.clone();
    }
    profile.validate().map_err(PipelineError::BadRequest)?;
    let size: Size = req
        .size
        .as_deref()
        .unwrap_or(&defaults.size)
        .parse()
        .map_err(|e: imagegate_core::RequestError| PipelineError::BadRequest(e.to_string()))?;
    let model: ModelChoice = req
        .model
        .as_deref()
        .unwrap_or(&defaults.model)
        .parse()
        .map_err(|e: imagegate_core::RequestError| PipelineError::BadRequest(e.to_string()))?;
    if let Some(max) = req.max_cost_usd {
        if !(max.is_finite() && max >= 0.0) {
            return Err(PipelineError::BadRequest(
                "max_cost_usd must be a non-negative number".into(),
            ));
        }
    }
    let policy = match &req.policy {
        Some(p) => p
            .parse()
            .map_err(|e: imagegate_providers::router::BadPolicy| {
                PipelineError::BadRequest(e.to_string())
            })?,
        None => config.router.policy,
    };
    let gen = GenerationRequest::new(
        &req.prompt,
        req.negative_prompt.as_deref(),
        model,
        size,
        req.seed.unwrap_or(defaults.seed),
    )
    .map_err(|e| PipelineError::BadRequest(e.to_string()))?;
    Ok((gen, profile, policy))
}
