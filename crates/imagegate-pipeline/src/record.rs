//! The ledger rows of answers. A miss's row is its production's bill (`tab`), in the
//! ledger before the production ends; a hit writes a row of its own here: the
//! lookup, what the store GET cost, and what the key cost when it was made.

use crate::error::PipelineError;
use crate::{Outcome, Pipeline, RequestContext, Tier};
use imagegate_core::{Manifest, ManifestStatus, Micros, Stage, StageCost};
use imagegate_ledger::{CacheOutcome, RequestRecord, RequestStatus};
use std::sync::Arc;
use std::time::Instant;

/// The answer of the caller whose production made `manifest`: its costs, which the
/// production's bill already put in the ledger.
pub(crate) fn answer_miss(manifest: Arc<Manifest>) -> Outcome {
    let stages = manifest.stages.clone();
    metrics::counter!("imagegate_cache_requests_total", "outcome" => CacheOutcome::Miss.as_str())
        .increment(1);
    count_stages(&stages);
    Outcome {
        manifest,
        cache: CacheOutcome::Miss,
        stages,
    }
}

/// Records a hit from `tier` and answers it.
pub(crate) async fn answer_hit(
    pipeline: &Pipeline,
    manifest: Arc<Manifest>,
    tier: Tier,
    profile: &str,
    ctx: &RequestContext,
    started: Instant,
) -> Result<Outcome, PipelineError> {
    let mut lookup = StageCost::new(Stage::Cache);
    lookup.wall_ms = started.elapsed().as_secs_f64() * 1e3;
    if tier == Tier::Store {
        // One GET of the manifest from the object store.
        lookup.micros = Micros::from_usd(pipeline.config().costs.get_usd_per_1000 / 1000.0);
    }
    lookup.detail = serde_json::json!({
        "tier": tier.as_str(),
        "original_usd": manifest.cost_micros.as_usd(),
    });
    let stages = vec![lookup];
    let record = RequestRecord {
        request_id: ctx.request_id.clone(),
        key: manifest.id,
        cache: CacheOutcome::Hit,
        status: match manifest.status {
            ManifestStatus::Ok => RequestStatus::Ok,
            ManifestStatus::Blocked => RequestStatus::Blocked,
        },
        provider: Some(manifest.provider.clone()),
        model: Some(manifest.model.clone()),
        api_key: ctx.api_key.clone(),
        profile: profile.into(),
        wall_ms: started.elapsed().as_secs_f64() * 1e3,
    };
    pipeline.ledger().record(&record, &stages).await?;
    metrics::counter!("imagegate_cache_requests_total", "outcome" => CacheOutcome::Hit.as_str())
        .increment(1);
    count_stages(&stages);
    Ok(Outcome {
        manifest,
        cache: CacheOutcome::Hit,
        stages,
    })
}

fn count_stages(stages: &[StageCost]) {
    for s in stages {
        metrics::counter!("imagegate_stage_cost_microdollars_total", "stage" => s.stage.as_str())
            .increment(s.micros.0.max(0) as u64);
        metrics::histogram!("imagegate_stage_duration_seconds", "stage" => s.stage.as_str())
            .record(s.wall_ms / 1e3);
    }
}
