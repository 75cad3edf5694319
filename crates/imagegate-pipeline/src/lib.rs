//! One request end to end: resolve the request against its profile, compute the
//! content key, answer from the cache (memory, then the manifest in the object
//! store) or produce the key once however many callers wait (single flight, in a
//! task that outlives them), publish variants then the manifest, and put every
//! stage's cost in the ledger when it is incurred.
//!
//! It owns order, concurrency limits and cost capture; the stages themselves live in
//! their crates. Files by job: `request` (what callers ask), `single_flight` (one
//! production per key), `fleet` (one per key across replicas), `produce` (a miss,
//! made), `render` (its CPU stages), `publish` (files, then the manifest), `tab` (its
//! bill), `paid` (paid work kept for a retry), `record` (the answers' ledger rows),
//! `budget` (spending limits), `deferred` (jobs that wait for the cheapest moment).
//! Entry points: [`Pipeline::start`], [`Pipeline::generate`], [`Pipeline::process`],
//! [`Pipeline::defer`].

pub mod budget;
pub mod config;
pub mod cpu;
pub mod deferred;
mod error;
mod fleet;
mod fleet_prices;
mod key_memo;
mod paid;
mod produce;
pub mod provenance;
mod publish;
mod record;
mod render;
mod request;
mod single_flight;
mod tab;
pub mod verify;

pub use config::PipelineConfig;
pub use error::{PipelineError, RequestFault};
pub use imagegate_ledger::CacheOutcome;
pub use request::{resolve_request, CacheMode, ImageRequest, RequestContext};

use bytes::Bytes;
use cpu::CpuPool;
use fleet::Produced;
use imagegate_core::{
    content_key, source_key, ConfigError, ContentKey, GenerationRequest, Manifest, Micros,
    RenderProfile, StageCost, VariantRef,
};
use imagegate_imaging::Watermarker;
use imagegate_ledger::Ledger;
use imagegate_providers::{
    Estimate, LivePrices, Policy, PriceBook, ProviderSet, Router, SkipReason,
};
use imagegate_safety::{Classifier, PromptScreen};
use imagegate_storage::{LocalStore, ObjectStore, S3Store};
use produce::{Order, Production, Source};
use single_flight::{Flight, SingleFlight};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Charges still `in_progress` this long after they were opened belong to a process
/// that died between paying a provider and settling; start-up marks them abandoned.
/// Longer than any production runs (provider deadline, render, upload, fleet wait).
const STALE_CHARGE_AGE: Duration = Duration::from_secs(3600);

/// What a request got: the manifest, whether it was a hit, and what this request
/// itself cost (a miss: every stage; a hit: the lookup).
#[derive(Debug, Clone)]
pub struct Outcome {
    pub manifest: Arc<Manifest>,
    pub cache: CacheOutcome,
    pub stages: Vec<StageCost>,
}

/// Where a hit was answered from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tier {
    /// This process's memory (or another caller's production it waited for).
    Memory,
    /// The manifest in the object store: one GET.
    Store,
}

impl Tier {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Tier::Memory => "memory",
            Tier::Store => "store",
        }
    }
}

/// The pipeline: cheap to clone (one `Arc`), so a production can take it into a task
/// of its own.
#[derive(Clone)]
pub struct Pipeline {
    inner: Arc<Inner>,
}

struct Inner {
    config: PipelineConfig,
    profiles: BTreeMap<String, RenderProfile>,
    watermarkers: HashMap<String, Arc<Watermarker>>,
    watermarking: Option<provenance::Watermarking>,
    credentials: Option<Arc<provenance::Credentials>>,
    router: Router,
    budgets: budget::Budgets,
    classifier: Option<Arc<Classifier>>,
    screen: PromptScreen,
    store: Arc<dyn ObjectStore>,
    ledger: Ledger,
    cache: moka::future::Cache<ContentKey, Arc<Manifest>>,
    /// Content keys of recent requests (`POST /v1/images` computes one per request).
    keys: key_memo::KeyMemo,
    productions: SingleFlight<ContentKey, Production>,
    paid: paid::PaidWorkCache,
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
        config.validate()?;
        let profiles = config.resolved_profiles()?;
        let mut watermarkers = HashMap::new();
        for (name, p) in &profiles {
            if let Some(spec) = &p.watermark {
                let wm = Watermarker::new(spec).map_err(|e| {
                    ConfigError::new(format!("profiles.{name}.watermark"), e.to_string())
                })?;
                watermarkers.insert(name.clone(), Arc::new(wm));
            }
        }
        let watermarking = provenance::Watermarking::from_config(&config.provenance.watermark)?;
        let credentials =
            provenance::Credentials::from_config(&config.provenance.c2pa)?.map(Arc::new);
        let marks = provenance::marks(watermarking.as_ref(), credentials.as_deref());
        let profiles: BTreeMap<String, RenderProfile> = profiles
            .into_iter()
            .map(|(name, mut p)| {
                p.provenance = marks;
                (name, p)
            })
            .collect();
        let providers = ProviderSet::from_config(&config.providers)?.into_providers();
        // A price book error names its file already.
        let price_book = PriceBook::load(&config.pricing)
            .map_err(|e| ConfigError::new("pricing", e.to_string()))?;
        // Every offered model priced, or marked unpriced: refused here, not at $0 later.
        let prices = LivePrices::new(
            price_book,
            Some(config.pricing.clone()),
            imagegate_providers::router::offered(&providers),
        )
        .map_err(|e| ConfigError::new("pricing", e.to_string()))?;
        // Router::new refuses configuration only; its faults name their field.
        let router = Router::new(providers, Arc::new(prices), config.router.clone())?;
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
                    .local_public_base_url()?
                    .expect("a local store has a base URL");
                Arc::new(LocalStore::open(&lc.root, &base).await?)
            }
            config::StorageConfig::S3(sc) => Arc::new(S3Store::open(sc).await?),
        };
        let ledger = Ledger::open(&config.ledger).await?;
        let abandoned = ledger.abandon_stale_charges(STALE_CHARGE_AGE).await?;
        if abandoned > 0 {
            tracing::warn!(
                abandoned,
                "paid requests left in progress by a process that stopped are now marked abandoned"
            );
        }
        let budgets = budget::Budgets::new(config.budgets.clone(), ledger.clone());
        let c = &config.concurrency;
        let workers = c.resolved_cpu_workers();
        // Checked now so that a kernel refusing perf events is in the start-up log,
        // not first noticed by a request.
        if cpu::TaskClock::available() {
            tracing::debug!("perf task clocks available: a lone libaom encode may thread");
        }
        Ok(Pipeline {
            inner: Arc::new(Inner {
                cache: moka::future::Cache::new(c.cache_entries),
                keys: key_memo::KeyMemo::new(),
                productions: SingleFlight::new(),
                paid: paid::PaidWorkCache::new(),
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
                watermarking,
                credentials,
                router,
                budgets,
                classifier,
                screen,
                store,
                ledger,
                config,
            }),
        })
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner.store
    }

    pub fn ledger(&self) -> &Ledger {
        &self.inner.ledger
    }

    pub fn config(&self) -> &PipelineConfig {
        &self.inner.config
    }

    pub(crate) fn router(&self) -> &Router {
        &self.inner.router
    }

    pub(crate) fn cache(&self) -> &moka::future::Cache<ContentKey, Arc<Manifest>> {
        &self.inner.cache
    }

    pub(crate) fn paid(&self) -> &paid::PaidWorkCache {
        &self.inner.paid
    }

    pub(crate) fn cpu(&self) -> &CpuPool {
        &self.inner.cpu
    }

    pub(crate) fn classifier(&self) -> Option<&Arc<Classifier>> {
        self.inner.classifier.as_ref()
    }

    pub(crate) fn watermarker(&self, profile: &str) -> Option<Arc<Watermarker>> {
        self.inner.watermarkers.get(profile).cloned()
    }

    /// The invisible watermark, when enabled.
    pub fn watermarking(&self) -> Option<&provenance::Watermarking> {
        self.inner.watermarking.as_ref()
    }

    /// Content Credentials, when enabled.
    pub fn credentials(&self) -> Option<&Arc<provenance::Credentials>> {
        self.inner.credentials.as_ref()
    }

    pub(crate) fn encode_threads(&self) -> usize {
        self.inner.encode_threads
    }

    /// This process's name among the replicas (lease holders are named after it).
    pub fn replica(&self) -> &str {
        &self.inner.replica
    }

    /// The generation queue and the slots it waits for.
    pub(crate) fn generation_limits(&self) -> (&Arc<Semaphore>, &Arc<Semaphore>) {
        (
            &self.inner.generation_admission,
            &self.inner.generation_slots,
        )
    }

    /// The public URL of one stored variant.
    pub fn url_of(&self, variant: &VariantRef) -> String {
        self.inner.store.public_url(&variant.object)
    }

    /// Is every dependency usable right now?
    pub async fn ready(&self) -> Result<(), PipelineError> {
        self.inner.store.check().await?;
        self.inner.ledger.ping().await?;
        Ok(())
    }

    /// Resolves a caller's request into what decides the output, and how to route it.
    pub fn resolve(
        &self,
        req: &ImageRequest,
    ) -> Result<(GenerationRequest, RenderProfile, Policy), PipelineError> {
        resolve_request(&self.inner.config, &self.inner.profiles, req)
    }

    /// `POST /v1/images`: generate (or fetch from cache) and deliver.
    pub async fn generate(
        &self,
        req: &ImageRequest,
        ctx: &RequestContext,
    ) -> Result<Outcome, PipelineError> {
        let started = Instant::now();
        let (gen, profile, policy) = self.resolve(req)?;
        if let Some(hit) = self.inner.screen.check(&gen.prompt) {
            metrics::counter!("imagegate_prompts_blocked_total").increment(1);
            return Err(PipelineError::PromptBlocked {
                rule: hit.rule().to_string(),
            });
        }
        let (key, remember) = self.inner.keys.key(&gen, &profile);
        let max_cost = req.max_cost_usd.map(Micros::from_usd);
        if req.cache == CacheMode::Use {
            if let Some(manifest) = self.inner.cache.get(&key).await {
                remember.remember();
                return record::answer_hit(
                    self,
                    manifest,
                    Tier::Memory,
                    &profile.name,
                    ctx,
                    started,
                )
                .await;
            }
            if let Some(running) = self.inner.productions.running(&key) {
                remember.remember();
                return self
                    .wait_for(Flight::Joined(running), &profile.name, ctx, started)
                    .await;
            }
        }
        // This caller may start a paid production: held to max_cost_usd and to the
        // key's budget before any provider is called.
        let reservation = self
            .admit_paid(&gen, policy, max_cost, ctx.api_key.as_deref())
            .await?;
        remember.remember();
        let order = Order {
            key,
            source: Source::Provider {
                request: gen,
                policy,
                max_cost,
            },
            profile: profile.clone(),
            mode: req.cache,
            ctx: ctx.clone(),
            started,
            reservation,
        };
        let flight = self.start_production(order);
        self.wait_for(flight, &profile.name, ctx, started).await
    }

    /// The budget reservation for a miss that may pay a provider, after checking
    /// `max_cost` against what the router would call.
    async fn admit_paid(
        &self,
        gen: &GenerationRequest,
        policy: Policy,
        max_cost: Option<Micros>,
        api_key: Option<&str>,
    ) -> Result<Option<budget::Reservation>, PipelineError> {
        let constrained = max_cost.is_some() || self.inner.budgets.is_limited(api_key);
        if !constrained {
            return Ok(None);
        }
        let estimate = self.inner.router.estimate(
            &gen.model,
            gen.size,
            policy,
            max_cost,
            chrono::Utc::now(),
        )?;
        // The candidates the router would call under the cap, so this check and the
        // call agree (and `/v1/estimate` with them).
        let expected = estimate.chosen.as_ref().map(|c| c.expected);
        if let (Some(max), None) = (max_cost, &estimate.chosen) {
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
                    max_usd: max.as_usd(),
                });
            }
        }
        self.inner
            .budgets
            .reserve(api_key, expected.unwrap_or_default())
            .await
    }

    /// Starts `order` in a task of its own, or joins the production of its key that
    /// already runs (a bypass never joins: it wants a production of its own).
    fn start_production(&self, order: Order) -> Flight<Production> {
        let pipeline = self.clone();
        if order.mode == CacheMode::Bypass {
            let task = tokio::spawn(produce::produce(pipeline, order));
            let joined = futures::FutureExt::shared(futures::FutureExt::boxed(async move {
                task.await
                    .unwrap_or_else(|e| Err(production_panicked(e.to_string())))
            }));
            return Flight::Started(joined);
        }
        self.inner.productions.join_or_start(
            order.key,
            move || produce::produce(pipeline, order),
            |message| Err(production_panicked(message)),
        )
    }

    /// Waits for a production and answers this caller: the one that started it gets
    /// the miss (its costs are in the ledger already), the ones that joined a hit.
    async fn wait_for(
        &self,
        flight: Flight<Production>,
        profile: &str,
        ctx: &RequestContext,
        started: Instant,
    ) -> Result<Outcome, PipelineError> {
        let (joined, started_it) = match flight {
            Flight::Started(j) => (j, true),
            Flight::Joined(j) => (j, false),
        };
        match (joined.await?, started_it) {
            (Produced::Made(manifest), true) => Ok(record::answer_miss(manifest)),
            (Produced::Found(manifest), true) => {
                record::answer_hit(self, manifest, Tier::Store, profile, ctx, started).await
            }
            (Produced::Made(manifest) | Produced::Found(manifest), false) => {
                record::answer_hit(self, manifest, Tier::Memory, profile, ctx, started).await
            }
        }
    }

    /// `imagegate process`: the post-generation stages on an image the caller has.
    pub async fn process(
        &self,
        image: Bytes,
        profile_name: Option<&str>,
        ctx: &RequestContext,
    ) -> Result<Outcome, PipelineError> {
        let started = Instant::now();
        let name = profile_name.unwrap_or(&self.inner.config.defaults.profile);
        let profile = self
            .inner
            .profiles
            .get(name)
            .cloned()
            .ok_or_else(|| PipelineError::UnknownProfile(name.into()))?;
        if image.len() > self.inner.config.limits.max_input_bytes {
            return Err(PipelineError::BadImage(format!(
                "the file has {} bytes; the limit is {}",
                image.len(),
                self.inner.config.limits.max_input_bytes
            )));
        }
        let key = source_key(&image, &profile);
        if let Some(manifest) = self.inner.cache.get(&key).await {
            return record::answer_hit(self, manifest, Tier::Memory, &profile.name, ctx, started)
                .await;
        }
        let order = Order {
            key,
            source: Source::Upload(image),
            profile: profile.clone(),
            mode: CacheMode::Use,
            ctx: ctx.clone(),
            started,
            reservation: None,
        };
        let flight = self.start_production(order);
        self.wait_for(flight, &profile.name, ctx, started).await
    }

    /// The manifest of a key, if it was ever published.
    pub async fn manifest(&self, key: ContentKey) -> Result<Option<Arc<Manifest>>, PipelineError> {
        if let Some(m) = self.inner.cache.get(&key).await {
            return Ok(Some(m));
        }
        let Some(m) = self.read_manifest(key).await? else {
            return Ok(None);
        };
        let m = Arc::new(m);
        self.inner.cache.insert(key, m.clone()).await;
        Ok(Some(m))
    }

    pub(crate) async fn read_manifest(
        &self,
        key: ContentKey,
    ) -> Result<Option<Manifest>, PipelineError> {
        let Some(obj) = self
            .inner
            .store
            .get_private(&Manifest::object_key(key))
            .await?
        else {
            return Ok(None);
        };
        let manifest: Manifest = serde_json::from_slice(&obj.bytes)
            .map_err(|e| PipelineError::Storage(format!("manifest of {key} is unreadable: {e}")))?;
        Ok(Some(manifest))
    }

    /// The price book in force, for listings and reloads.
    pub fn prices(&self) -> &Arc<LivePrices> {
        self.inner.router.prices()
    }

    /// Every model the configured providers offer (for `imagegate prices check`).
    pub fn offered(&self) -> &[imagegate_providers::price_book::Offered] {
        self.inner.router.prices().offered()
    }

    /// Keeps the price book in force current while the service runs: installs the
    /// file when it changes (looked at every `file_every`), and shares books with the
    /// other replicas of the ledger database (`[fleet] prices_poll_secs`). A bad book
    /// is refused and the old one keeps serving.
    pub fn keep_prices_current(&self, file_every: Duration) -> Vec<tokio::task::JoinHandle<()>> {
        let prices = self.inner.router.prices().clone();
        let mut tasks: Vec<_> = prices.watch_file(file_every).into_iter().collect();
        tasks.push(fleet_prices::spawn(
            self.inner.ledger.clone(),
            prices,
            self.inner.replica.clone(),
            Duration::from_secs(self.inner.config.fleet.prices_poll_secs.max(1)),
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
        if let Some(hit) = self.inner.screen.check(&gen.prompt) {
            return Err(PipelineError::PromptBlocked {
                rule: hit.rule().to_string(),
            });
        }
        let key = content_key(&gen, &profile);
        let max = req.max_cost_usd.map(Micros::from_usd);
        let estimate =
            self.inner
                .router
                .estimate(&gen.model, gen.size, policy, max, chrono::Utc::now())?;
        let cached = self.manifest(key).await?.is_some();
        Ok((key, cached, estimate))
    }
}

fn production_panicked(message: String) -> PipelineError {
    PipelineError::Internal(format!("a production stopped unexpectedly: {message}"))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "replica".into())
}
