//! Publishing a key: every variant first, in parallel, then the manifest that lists
//! them, last, so a key exists exactly when all of its files do. A bypass publishes
//! its files where no key's files live and writes no manifest: it answers its own
//! caller without replacing what others are served.

use crate::error::PipelineError;
use crate::paid::{Origin, RenderedFiles};
use crate::Pipeline;
use chrono::{SecondsFormat, Utc};
use imagegate_core::{
    ContentKey, Manifest, ManifestStatus, Micros, SafetyAction, Stage, StageCost, VariantRef,
    PIPELINE_VERSION,
};
use std::time::Instant;

/// Where a production's files go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Location {
    /// The key's own place, manifest last.
    Key,
    /// A place of this request's own (`nonce`), no manifest.
    Bypass { nonce: String },
}

/// Uploads `rendered` for `key` and, for [`Location::Key`], writes its manifest. The
/// manifest lists `stages` and the upload stage this adds. Returns the manifest and
/// the upload stage; on failure the error and the upload stage (what was stored
/// before the failure costs too).
pub(crate) async fn publish(
    pipeline: &Pipeline,
    key: ContentKey,
    location: &Location,
    origin: &Origin,
    rendered: &RenderedFiles,
    stages: &[StageCost],
) -> Result<(Manifest, StageCost), (PipelineError, StageCost)> {
    let store = pipeline.store();
    let costs = &pipeline.config().costs;
    let started = Instant::now();
    let images: Vec<VariantRef> = rendered
        .files
        .iter()
        .map(|f| VariantRef {
            width: f.width,
            height: f.height,
            format: f.format,
            object: match location {
                Location::Key => Manifest::variant_object_key(key, f.width, f.format),
                Location::Bypass { nonce } => {
                    Manifest::bypass_variant_object_key(key, nonce, f.width, f.format)
                }
            },
            bytes: f.bytes.len() as u64,
        })
        .collect();
    // Every put runs to its end, so the stage can say what was stored (and is paid
    // for) even when one of them fails.
    let puts = rendered
        .files
        .iter()
        .zip(&images)
        .map(|(f, v)| store.put(&v.object, f.bytes.clone(), f.format.content_type()));
    let results = futures::future::join_all(puts).await;
    let stored: Vec<&VariantRef> = images
        .iter()
        .zip(&results)
        .filter(|(_, r)| r.is_ok())
        .map(|(v, _)| v)
        .collect();
    let stored_bytes: u64 = stored.iter().map(|v| v.bytes).sum();
    let mut upload = StageCost::new(Stage::Upload);
    upload.bytes_in = images.iter().map(|v| v.bytes).sum();
    upload.bytes_out = stored_bytes;
    // PUT fees plus the first month of storage; later months are a projection in reports.
    let put_fees =
        |objects: usize| Micros::from_usd(objects as f64 * costs.put_usd_per_1000 / 1000.0);
    upload.micros = put_fees(stored.len())
        + Micros::for_storage_month(stored_bytes, costs.storage_usd_per_gb_month);
    // Per file, so reports can project delivery bytes by width and format.
    let files: Vec<serde_json::Value> = stored
        .iter()
        .map(|v| serde_json::json!({"width": v.width, "format": v.format, "bytes": v.bytes}))
        .collect();
    let write_manifest = *location == Location::Key;
    upload.detail = serde_json::json!({
        "store": store.kind(),
        "objects": stored.len() + usize::from(write_manifest),
        "storage_months": 1,
        "files": files,
    });
    if let Some(failed) = results.into_iter().find_map(Result::err) {
        upload.wall_ms = started.elapsed().as_secs_f64() * 1e3;
        upload.detail["objects"] = stored.len().into();
        upload.detail["error"] = failed.to_string().into();
        return Err((PipelineError::from(failed), upload));
    }

    let status = if rendered.verdict.action == SafetyAction::Block {
        ManifestStatus::Blocked
    } else {
        ManifestStatus::Ok
    };
    let mut manifest = Manifest {
        id: key,
        status,
        provider: origin.provider.clone(),
        model: origin.model.clone(),
        source_width: rendered.source_width,
        source_height: rendered.source_height,
        images,
        safety: rendered.verdict.clone(),
        cost_micros: Micros::ZERO,
        stages: Vec::new(),
        created_at: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        pipeline_version: PIPELINE_VERSION,
    };
    if write_manifest {
        let body_len = serde_json::to_vec(&manifest).map_or(0, |v| v.len()) as u64;
        upload.micros +=
            put_fees(1) + Micros::for_storage_month(body_len, costs.storage_usd_per_gb_month);
    }
    // The manifest's own put is not in the time: the manifest cannot hold it.
    upload.wall_ms = started.elapsed().as_secs_f64() * 1e3;
    let mut all: Vec<StageCost> = stages.to_vec();
    all.push(upload.clone());
    manifest.cost_micros = all.iter().map(|s| s.micros).sum();
    manifest.stages = all;
    if write_manifest {
        let body = match serde_json::to_vec_pretty(&manifest) {
            Ok(body) => body,
            Err(e) => return Err((PipelineError::Internal(e.to_string()), upload)),
        };
        // Private: a manifest carries costs, the routing decision and provider errors.
        if let Err(e) = store
            .put_private(
                &Manifest::object_key(key),
                bytes::Bytes::from(body),
                "application/json",
            )
            .await
        {
            upload.wall_ms = started.elapsed().as_secs_f64() * 1e3;
            upload.detail["error"] = e.to_string().into();
            return Err((PipelineError::from(e), upload));
        }
    }
    Ok((manifest, upload))
}
