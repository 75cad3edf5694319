//! A miss, made: the picture (from a provider, paid; from a provider's batch, paid
//! already; or from the caller), the render on the CPU pool, publishing, and the
//! bill. It runs in a task of its own (see `single_flight`), so it finishes and
//! records its costs whoever still waits.
//!
//! Money is settled as it is spent: the provider's charge goes into the ledger the
//! moment the provider answers (`tab`); a failure after that settles the bill as
//! `failed` with the stages that ran, and keeps the paid work (`paid`) so that the
//! retry does not pay again.

use crate::budget::Reservation;
use crate::error::PipelineError;
use crate::fleet::{self, Produced};
use crate::paid::{Origin, PaidWork, RenderedFiles, StoredFile};
use crate::publish::{self, Location};
use crate::render::{self, RenderJob};
use crate::request::{CacheMode, RequestContext};
use crate::tab::Tab;
use crate::Pipeline;
use bytes::Bytes;
use imagegate_core::{
    ContentKey, GenerationRequest, Manifest, ManifestStatus, Micros, RenderProfile, Stage,
    StageCost,
};
use imagegate_imaging::DecodeLimits;
use imagegate_ledger::{CacheOutcome, ChargeId, RequestRecord, RequestStatus};
use imagegate_providers::Policy;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A charge this many times its estimate (and at least [`OVER_ESTIMATE_MIN`] above
/// it) is flagged: the price book or the provider's usage is off.
const OVER_ESTIMATE_FACTOR: i64 = 2;
const OVER_ESTIMATE_MIN: Micros = Micros(10_000);

/// Where a production's picture comes from.
pub(crate) enum Source {
    /// A provider, through the router: paid.
    Provider {
        request: GenerationRequest,
        policy: Policy,
        max_cost: Option<Micros>,
    },
    /// The caller's own picture (`imagegate process`).
    Upload(Bytes),
    /// A provider's answer to one line of its batch API (`deferred::upstream`),
    /// paid already: its charge is in the ledger (`charge`, with the paid `stage`),
    /// so the bill settles that row; every stage after it is a live miss's.
    PaidUpstream {
        origin: Origin,
        bytes: Bytes,
        charge: ChargeId,
        stage: StageCost,
    },
}

/// Everything one production needs, owned: it outlives the request that made it.
pub(crate) struct Order {
    pub key: ContentKey,
    pub source: Source,
    pub profile: RenderProfile,
    pub mode: CacheMode,
    pub ctx: RequestContext,
    pub started: Instant,
    pub reservation: Option<Reservation>,
}

/// The production's outcome, shared by every caller waiting for it.
pub(crate) type Production = Result<Produced, PipelineError>;

/// Runs `order` to the end: under the key's lease and after a look in the store
/// (unless it bypasses them), publishing and recording what it makes, and putting
/// it in the memory cache for the callers who come next.
pub(crate) async fn produce(pipeline: Pipeline, order: Order) -> Production {
    let key = order.key;
    let mode = order.mode;
    let produced = match mode {
        CacheMode::Use => {
            fleet::once_across_replicas(&pipeline, key, true, || make(&pipeline, order)).await
        }
        CacheMode::Refresh => {
            fleet::once_across_replicas(&pipeline, key, false, || make(&pipeline, order)).await
        }
        CacheMode::Bypass => make(&pipeline, order).await.map(Produced::Made),
    };
    if mode != CacheMode::Bypass {
        if let Ok(Produced::Made(m) | Produced::Found(m)) = &produced {
            pipeline.cache().insert(key, m.clone()).await;
        }
    }
    produced
}

async fn make(pipeline: &Pipeline, order: Order) -> Result<Arc<Manifest>, PipelineError> {
    let Order {
        key,
        source,
        profile,
        mode,
        ctx,
        started,
        reservation,
    } = order;
    let request = RequestRecord {
        request_id: ctx.request_id.clone(),
        key,
        cache: if mode == CacheMode::Bypass {
            CacheOutcome::Bypass
        } else {
            CacheOutcome::Miss
        },
        status: RequestStatus::InProgress,
        provider: None,
        model: None,
        api_key: ctx.api_key.clone(),
        profile: profile.name.clone(),
        wall_ms: 0.0,
    };
    let mut tab = Tab::new(pipeline.ledger().clone(), request, started, reservation);
    if let Source::PaidUpstream { charge, stage, .. } = &source {
        tab.adopt(*charge, stage.clone());
    }
    let location = match mode {
        CacheMode::Bypass => Location::Bypass {
            nonce: format!("{:016x}", rand::random::<u64>()),
        },
        CacheMode::Use | CacheMode::Refresh => Location::Key,
    };
    // Only a plain miss may finish paid work an earlier request left: a refresh or a
    // bypass asks for a new picture.
    let kept = match mode {
        CacheMode::Use => match pipeline.paid().take(key) {
            Some(kept) => Some(kept),
            None if ctx.survives_restart => durable_source(pipeline, key).await,
            None => None,
        },
        CacheMode::Refresh | CacheMode::Bypass => None,
    };
    let durable = ctx.survives_restart && mode == CacheMode::Use;

    let (origin, rendered) = match kept {
        Some(PaidWork::Rendered { origin, rendered }) => {
            reused(&mut tab, &origin, "rendered files");
            (origin, rendered)
        }
        kept => {
            let (origin, bytes, slot) = match (kept, source) {
                (Some(PaidWork::Source { origin, bytes }), _) => {
                    reused(&mut tab, &origin, "provider output");
                    (origin, bytes, None)
                }
                (_, Source::Upload(bytes)) => (Origin::upload(), bytes, None),
                (_, Source::PaidUpstream { origin, bytes, .. }) => (origin, bytes, None),
                (
                    _,
                    Source::Provider {
                        request,
                        policy,
                        max_cost,
                    },
                ) => {
                    let generated = call_provider(pipeline, &request, policy, max_cost).await?;
                    let origin = Origin {
                        provider: generated.provider.clone(),
                        model: generated.model.clone(),
                    };
                    tab.request_mut().provider = Some(origin.provider.clone());
                    tab.request_mut().model = Some(origin.model.clone());
                    if let Err(e) = tab.paid(generated.stage).await {
                        // Paid but not yet in the ledger: the bill keeps trying; the
                        // picture waits for the retry instead of being paid for again.
                        pipeline.paid().keep(
                            key,
                            PaidWork::Source {
                                origin,
                                bytes: generated.bytes,
                            },
                        );
                        return Err(e);
                    }
                    if durable {
                        keep_durably(pipeline, key, &origin, &ctx, &generated.bytes).await;
                    }
                    (origin, generated.bytes, Some(generated.slot))
                }
            };
            tab.request_mut().provider = Some(origin.provider.clone());
            tab.request_mut().model = Some(origin.model.clone());
            let rendered =
                match render_on_pool(pipeline, key, &profile, &origin, bytes, slot, &mut tab).await
                {
                    Ok(rendered) => Arc::new(rendered),
                    Err(Unrendered { error, kept }) => {
                        if let Some(bytes) = kept {
                            pipeline
                                .paid()
                                .keep(key, PaidWork::Source { origin, bytes });
                        }
                        return Err(tab.fail(error).await);
                    }
                };
            (origin, rendered)
        }
    };

    match publish::publish(pipeline, key, &location, &origin, &rendered, tab.stages()).await {
        Ok((manifest, upload)) => {
            tab.add(upload);
            let status = match manifest.status {
                ManifestStatus::Ok => RequestStatus::Ok,
                ManifestStatus::Blocked => RequestStatus::Blocked,
            };
            tab.settle(status).await?;
            if durable {
                if let Err(e) = pipeline.ledger().drop_paid_source(key).await {
                    // Harmless: a later production of the key finds it published.
                    tracing::warn!(key = %key, error = %e, "a published key's kept picture was not deleted");
                }
            }
            Ok(Arc::new(manifest))
        }
        Err((error, upload)) => {
            tab.add(upload);
            if location == Location::Key {
                pipeline
                    .paid()
                    .keep(key, PaidWork::Rendered { origin, rendered });
            }
            Err(tab.fail(error).await)
        }
    }
}

/// The picture an earlier production of `key` paid for and kept in the ledger
/// before its process died.
async fn durable_source(pipeline: &Pipeline, key: ContentKey) -> Option<PaidWork> {
    match pipeline.ledger().paid_source(key).await {
        Ok(kept) => kept.map(|k| PaidWork::Source {
            origin: Origin {
                provider: k.provider,
                model: k.model,
            },
            bytes: Bytes::from(k.bytes),
        }),
        Err(e) => {
            tracing::warn!(key = %key, error = %e, "the ledger's kept pictures could not be read");
            None
        }
    }
}

/// Keeps a paid picture in the ledger until it is published. Its charge is already
/// there; if this write fails the picture still goes on in memory, and only a crash
/// before publishing would then pay for it again.
async fn keep_durably(
    pipeline: &Pipeline,
    key: ContentKey,
    origin: &Origin,
    ctx: &RequestContext,
    bytes: &Bytes,
) {
    let source = imagegate_ledger::PaidSource {
        provider: origin.provider.clone(),
        model: origin.model.clone(),
        request_id: ctx.request_id.clone(),
        bytes: bytes.to_vec(),
    };
    if let Err(e) = pipeline.ledger().keep_paid_source(key, &source).await {
        tracing::warn!(key = %key, error = %e, "a paid picture could not be kept in the ledger");
    }
}

/// Paid work taken from an earlier, failed request: its charge is in the ledger
/// already, so this request's generate stage costs nothing and says why.
fn reused(tab: &mut Tab, origin: &Origin, what: &str) {
    tab.request_mut().provider = Some(origin.provider.clone());
    tab.request_mut().model = Some(origin.model.clone());
    let mut stage = StageCost::new(Stage::Generate);
    stage.detail = serde_json::json!({
        "provider": origin.provider,
        "model": origin.model,
        "reused": what,
        "note": "paid by an earlier request that failed after the provider answered",
    });
    tab.add(stage);
}

/// A render that did not happen or did not finish, and the picture when it is
/// still worth keeping (the pool was full: the picture itself is fine).
struct Unrendered {
    error: PipelineError,
    kept: Option<Bytes>,
}

async fn render_on_pool(
    pipeline: &Pipeline,
    key: ContentKey,
    profile: &RenderProfile,
    origin: &Origin,
    source: Bytes,
    slot: Option<GenerationSlot>,
    tab: &mut Tab,
) -> Result<RenderedFiles, Unrendered> {
    let limits = &pipeline.config().limits;
    if source.len() > limits.max_input_bytes {
        return Err(Unrendered {
            error: PipelineError::BadImage(format!(
                "provider {} sent {} bytes; the limit is {}",
                origin.provider,
                source.len(),
                limits.max_input_bytes
            )),
            kept: None,
        });
    }
    let admitted = match pipeline.cpu().admit() {
        Ok(admitted) => admitted,
        Err(e) => {
            return Err(Unrendered {
                error: e.into(),
                kept: Some(source),
            })
        }
    };
    let job = RenderJob {
        // Moved, not shared: the render frees the encoded picture as soon as it is
        // decoded, instead of it staying alive here until the manifest is written.
        source,
        profile: profile.clone(),
        limits: DecodeLimits {
            max_pixels: limits.max_pixels,
            max_side: limits.max_side,
            max_input_bytes: limits.max_input_bytes,
        },
        classifier: pipeline.classifier().cloned(),
        watermarker: pipeline.watermarker(&profile.name),
        invisible: pipeline.watermarking().map(|w| w.mark_for(key)),
        credentials: pipeline
            .credentials()
            .filter(|_| origin.provider != imagegate_core::ModelChoice::UPLOAD_PROVIDER)
            .map(|c| {
                (
                    c.clone(),
                    imagegate_provenance::Generator {
                        provider: origin.provider.clone(),
                        model: origin.model.clone(),
                    },
                )
            }),
        usd_per_core_hour: pipeline.config().costs.usd_per_core_hour,
        encode_threads: pipeline.encode_threads(),
        idle_workers: pipeline.cpu().idle_workers(),
    };
    let ran = admitted
        .run(move || {
            // The picture is in a worker's hands now: the next generation may start.
            drop(slot);
            let mut stages = Vec::with_capacity(6);
            let rendered = render::render(job, &mut stages);
            (rendered, stages)
        })
        .await;
    let (rendered, stages) = ran.map_err(|e| Unrendered {
        error: e.into(),
        kept: None,
    })?;
    for s in stages {
        tab.add(s);
    }
    let rendered = rendered.map_err(|error| Unrendered { error, kept: None })?;
    Ok(RenderedFiles {
        verdict: rendered.verdict,
        source_width: rendered.source_width,
        source_height: rendered.source_height,
        files: rendered
            .files
            .into_iter()
            .map(|f| StoredFile {
                width: f.width,
                height: f.height,
                format: f.format,
                bytes: Bytes::from(f.bytes),
            })
            .collect(),
    })
}

/// Provider output on its way into the render stages.
struct Generated {
    bytes: Bytes,
    provider: String,
    model: String,
    stage: StageCost,
    slot: GenerationSlot,
}

/// A miss's place among `concurrency.generations`, and in the generation queue: held
/// from the provider call until a CPU worker takes the picture, so provider output
/// never piles up in front of the CPU pool. When rendering is the bottleneck, new
/// generations wait (holding nothing) instead of every finished picture waiting
/// (holding its encoded bytes, megabytes each).
struct GenerationSlot {
    _admitted: tokio::sync::OwnedSemaphorePermit,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

async fn call_provider(
    pipeline: &Pipeline,
    gen: &GenerationRequest,
    policy: Policy,
    max_cost: Option<Micros>,
) -> Result<Generated, PipelineError> {
    let (admission, slots) = pipeline.generation_limits();
    let admitted =
        admission
            .clone()
            .try_acquire_owned()
            .map_err(|_| PipelineError::Overloaded {
                what: "generation",
                retry_after: Duration::from_secs(2),
            })?;
    let slot = slots
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
    let routed = pipeline
        .router()
        .generate(&normalized, policy, max_cost)
        .await;
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
    let mut stage = StageCost::new(Stage::Generate);
    stage.wall_ms = wall.elapsed().as_secs_f64() * 1e3;
    // The provider's own report when it made one, else the book's figure; an
    // unpriced model's charge is unknown and flagged, never $0.
    let charged = routed.charge.micros();
    stage.micros = charged.unwrap_or(Micros::ZERO);
    stage.unpriced = routed.charge.is_unpriced();
    stage.bytes_out = generation.bytes.len() as u64;
    let expected = routed.decision.chosen.as_deref().and_then(|chosen| {
        routed
            .decision
            .candidates
            .iter()
            .find(|c| c.label() == chosen)
            .map(|c| c.expected)
    });
    let over_estimate = match (charged, expected) {
        (Some(charged), Some(expected)) => {
            charged > expected.saturating_mul(OVER_ESTIMATE_FACTOR)
                && charged.saturating_sub(expected) > OVER_ESTIMATE_MIN
        }
        _ => false,
    };
    if over_estimate {
        metrics::counter!("imagegate_charges_over_estimate_total",
            "provider" => generation.provider.clone())
        .increment(1);
        tracing::warn!(
            provider = %generation.provider,
            model = %generation.model,
            charged = %stage.micros,
            expected = %expected.unwrap_or_default(),
            "a provider charge far above its estimate"
        );
    }
    stage.detail = serde_json::json!({
        "provider": generation.provider,
        "model": generation.model,
        "usage": generation.usage,
        "size": gen.size.to_string(),
        "book_version": routed.charge.book_version,
        "charge": routed.charge,
        "decision": routed.decision,
        "over_estimate": over_estimate,
    });
    Ok(Generated {
        bytes: generation.bytes,
        provider: generation.provider,
        model: generation.model,
        stage,
        slot: GenerationSlot {
            _admitted: admitted,
            _slot: slot,
        },
    })
}
