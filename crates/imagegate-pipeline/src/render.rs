//! The synchronous, CPU-only part of a miss: decode with limits, classify, blur or
//! block, resize to each variant, watermark, encode. Runs on the [`CpuPool`]; every
//! stage's wall and thread-CPU time is measured and priced here.
//!
//! [`CpuPool`]: crate::cpu::CpuPool

use crate::cpu::{measure, IdleWorkers, TaskClock};
use crate::error::PipelineError;
use imagegate_core::{
    ImageFormat, Micros, RenderProfile, SafetyAction, SafetyVerdict, Stage, StageCost,
};
use imagegate_imaging::{DecodeLimits, Watermarker};
use imagegate_safety::Classifier;
use std::sync::Arc;

pub(crate) struct RenderJob {
    pub source: bytes::Bytes,
    pub profile: RenderProfile,
    pub limits: DecodeLimits,
    pub classifier: Option<Arc<Classifier>>,
    pub watermarker: Option<Arc<Watermarker>>,
    /// The invisible watermark, put in each variant after its last resize.
    pub invisible: Option<crate::provenance::InvisibleMark>,
    /// Content Credentials for every file after its final encode, and who made
    /// the picture (provider output only; an upload's origin is the caller's).
    pub credentials: Option<(
        Arc<crate::provenance::Credentials>,
        imagegate_provenance::Generator,
    )>,
    pub usd_per_core_hour: f64,
    /// Threads one render may encode on at once (files are independent).
    pub encode_threads: usize,
    /// Where threads beyond the job's own come from: only workers that are idle.
    pub idle_workers: IdleWorkers,
}

pub(crate) struct EncodedFile {
    pub width: u32,
    pub height: u32,
    pub format: ImageFormat,
    pub bytes: Vec<u8>,
}

pub(crate) struct Rendered {
    pub verdict: SafetyVerdict,
    pub source_width: u32,
    pub source_height: u32,
    /// Empty when the verdict is `block`.
    pub files: Vec<EncodedFile>,
}

/// How strongly a `blur` verdict blurs: sigma as a fraction of the width, enough
/// that nothing in the picture stays recognisable.
const BLUR_SIGMA_FRACTION: f32 = 0.03;

fn stage(stage: Stage, wall_ms: f64, cpu_ms: f64, usd_per_core_hour: f64) -> StageCost {
    let mut s = StageCost::new(stage);
    s.wall_ms = wall_ms;
    s.cpu_ms = cpu_ms;
    s.micros = Micros::for_cpu_seconds(cpu_ms / 1e3, usd_per_core_hour);
    s
}

/// Renders `job`, pushing each stage's cost onto `stages` as it completes: a render
/// that fails halfway has still spent the CPU of the stages before, and the caller
/// records them.
pub(crate) fn render(
    job: RenderJob,
    stages: &mut Vec<StageCost>,
) -> Result<Rendered, PipelineError> {
    let price = job.usd_per_core_hour;

    let decoded = measure(|| imagegate_imaging::decode(&job.source, &job.limits));
    let mut s = stage(Stage::Decode, decoded.wall_ms, decoded.cpu_ms, price);
    s.bytes_in = job.source.len() as u64;
    let mut image = match decoded.value {
        Ok(image) => image,
        Err(e) => {
            s.detail = serde_json::json!({"error": e.to_string()});
            stages.push(s);
            return Err(PipelineError::BadImage(e.to_string()));
        }
    };
    let (source_width, source_height) = image.dimensions();
    // A provider that signed its output: every variant keeps that manifest as its
    // parent ingredient. Read once here, while the bytes are at hand; priced with
    // the signing below.
    let parent = job.credentials.as_ref().map(|(credentials, _)| {
        measure(|| match credentials.signer.parent_of(&job.source) {
            Ok(parent) => (parent, None),
            Err(e) => {
                // A provider manifest the c2pa crate cannot even parse is left out
                // (and said so) rather than failing a picture that is fine.
                tracing::warn!(error = %e, "provider output's C2PA manifest unreadable");
                (None, Some(e.to_string()))
            }
        })
    });
    // Only the pixels matter from here on; the encoded bytes are megabytes.
    drop(job.source);
    s.bytes_out = u64::from(source_width) * u64::from(source_height) * 3;
    s.detail = serde_json::json!({"width": source_width, "height": source_height});
    stages.push(s);

    let thresholds = job.profile.safety;
    let classified = measure(|| -> Result<SafetyVerdict, PipelineError> {
        let verdict = match &job.classifier {
            Some(c) => {
                let score = c
                    .score(&image)
                    .map_err(|e| PipelineError::Safety(e.to_string()))?;
                SafetyVerdict {
                    nsfw_score: Some(score),
                    action: imagegate_safety::decide(score, thresholds),
                    source: "classifier".into(),
                }
            }
            None => SafetyVerdict {
                nsfw_score: None,
                action: SafetyAction::Allow,
                source: "none".into(),
            },
        };
        if verdict.action == SafetyAction::Blur {
            image = imagegate_imaging::blur(&image, BLUR_SIGMA_FRACTION);
        }
        Ok(verdict)
    });
    let verdict = classified.value?;
    let mut s = stage(Stage::Safety, classified.wall_ms, classified.cpu_ms, price);
    s.detail = serde_json::json!({
        "nsfw_score": verdict.nsfw_score,
        "action": verdict.action.as_str(),
        "blur_at": thresholds.blur_at,
        "block_at": thresholds.block_at,
    });
    stages.push(s);
    if verdict.action == SafetyAction::Block {
        return Ok(Rendered {
            verdict,
            source_width,
            source_height,
            files: Vec::new(),
        });
    }

    let widths = job.profile.widths();
    let resized = measure(|| -> Result<Vec<image::RgbImage>, PipelineError> {
        widths
            .iter()
            .map(|&w| {
                imagegate_imaging::resize(&image, w)
                    .map_err(|e| PipelineError::BadImage(e.to_string()))
            })
            .collect()
    });
    let mut variants = resized.value?;
    drop(image);
    // Widths above the source collapse to the source size: keep one of each.
    variants.dedup_by_key(|v| v.width());
    let mut s = stage(Stage::Resize, resized.wall_ms, resized.cpu_ms, price);
    s.bytes_out = variants.iter().map(|v| v.as_raw().len() as u64).sum();
    s.detail =
        serde_json::json!({"widths": variants.iter().map(|v| v.width()).collect::<Vec<_>>()});
    stages.push(s);

    if let Some(wm) = &job.watermarker {
        let marked = measure(|| variants.iter_mut().for_each(|v| wm.apply(v)));
        let mut s = stage(Stage::Watermark, marked.wall_ms, marked.cpu_ms, price);
        s.detail = serde_json::json!({"variants": variants.len()});
        stages.push(s);
    }

    if let Some(mark) = &job.invisible {
        let marked = measure(|| {
            for v in variants.iter_mut() {
                imagegate_provenance::embed(v, &mark.key, mark.payload, mark.psnr_db);
            }
        });
        let mut s = stage(Stage::Provenance, marked.wall_ms, marked.cpu_ms, price);
        s.detail = serde_json::json!({
            "invisible_watermark": {
                "key_id": mark.key.id(),
                "payload_key_prefix": mark.payload.key_prefix_hex(),
                "psnr_db": mark.psnr_db,
                "variants": variants.len(),
            }
        });
        stages.push(s);
    }

    let mut formats = job.profile.formats.clone();
    formats.sort_unstable();
    formats.dedup();
    let encode_started = std::time::Instant::now();
    // The job's own worker plus whichever others sit idle right now, up to
    // encode_threads in all; held until the last file is encoded. Files beyond
    // one per thread spread over the threads; threads beyond one per file go to
    // libaom, when their CPU time can be counted.
    let libaom_may_thread = libaom_can_thread(&formats, &job.profile);
    let threads_wanted = if libaom_may_thread {
        job.encode_threads
    } else {
        job.encode_threads.min(variants.len() * formats.len())
    };
    let helpers = job.idle_workers.take(threads_wanted.saturating_sub(1));
    let (files, encode_cpu_ms) = encode_all(
        &variants,
        &formats,
        &job.profile,
        1 + helpers.len(),
        libaom_may_thread,
    )?;
    drop(helpers);
    let encode_wall_ms = encode_started.elapsed().as_secs_f64() * 1e3;
    let mut s = stage(Stage::Encode, encode_wall_ms, encode_cpu_ms, price);
    s.bytes_in = variants.iter().map(|v| v.as_raw().len() as u64).sum();
    s.bytes_out = files.iter().map(|f| f.bytes.len() as u64).sum();
    s.detail = serde_json::json!({
        "files": files.len(),
        "avif_quality": job.profile.avif.quality,
        "avif_speed": job.profile.avif.speed,
        "jpeg_quality": job.profile.jpeg.quality,
    });
    stages.push(s);

    let mut files = files;
    if let (Some((credentials, generator)), Some(parent)) = (&job.credentials, parent) {
        let (parent_wall_ms, parent_cpu_ms) = (parent.wall_ms, parent.cpu_ms);
        let (parent, parent_error) = parent.value;
        let before: u64 = files.iter().map(|f| f.bytes.len() as u64).sum();
        let signed = measure(|| -> Result<(), PipelineError> {
            for f in files.iter_mut() {
                f.bytes = credentials
                    .signer
                    .sign(&f.bytes, f.format, generator, parent.as_ref())
                    .map_err(|e| {
                        PipelineError::Internal(format!("signing {} {}px: {e}", f.format, f.width))
                    })?;
            }
            Ok(())
        });
        let mut s = stage(
            Stage::Provenance,
            parent_wall_ms + signed.wall_ms,
            parent_cpu_ms + signed.cpu_ms,
            price,
        );
        s.bytes_in = before;
        s.bytes_out = files.iter().map(|f| f.bytes.len() as u64).sum();
        s.detail = serde_json::json!({
            "c2pa": {
                "files": files.len(),
                "bytes_added": s.bytes_out.saturating_sub(before),
                "signature_reserve": credentials.signer.reserve_size(),
                "ephemeral_certificate": credentials.ephemeral,
                "parent_manifest": parent.as_ref().map(|p| serde_json::json!({
                    "label": p.manifest_label(),
                    "bytes": p.manifest_bytes(),
                })),
                "parent_error": parent_error,
            }
        });
        stages.push(s);
        signed.value?;
    }

    Ok(Rendered {
        verdict,
        source_width,
        source_height,
        files,
    })
}

/// Whether an encode may hand spare threads to libaom: only libaom AVIF encodes
/// thread internally, and only a task clock counts the threads libaom starts.
fn libaom_can_thread(formats: &[ImageFormat], profile: &RenderProfile) -> bool {
    formats.contains(&ImageFormat::Avif)
        && profile.avif.encoder == imagegate_core::profile::AvifEncoder::Aom
        && TaskClock::available()
}

/// How `threads` split among `files`: scoped worker threads (one per file at
/// most), and the threads each libaom encoder may use (the spare ones, shared out
/// evenly, when libaom may thread at all).
fn split_threads(
    threads: usize,
    files: usize,
    libaom_may_thread: bool,
) -> (usize, std::num::NonZeroUsize) {
    let workers = threads.clamp(1, files.max(1));
    let libaom_threads = if libaom_may_thread {
        std::num::NonZeroUsize::new(threads / workers).unwrap_or(std::num::NonZeroUsize::MIN)
    } else {
        std::num::NonZeroUsize::MIN
    };
    (workers, libaom_threads)
}

/// One encode job's position in (variant, format) order and its result.
type IndexedFile = (usize, Result<EncodedFile, PipelineError>);

/// Encodes every variant in every format on up to `threads` threads: one scoped
/// thread per file while there are more files than threads, and the rest, when
/// there are fewer, split among the files' libaom encoders. Returns the files in
/// (variant, format) order and the CPU time summed over the scoped threads, each
/// measured with its own clock (a task clock when libaom threads are on, so that
/// libaom's threads count too).
fn encode_all(
    variants: &[image::RgbImage],
    formats: &[ImageFormat],
    profile: &RenderProfile,
    threads: usize,
    libaom_may_thread: bool,
) -> Result<(Vec<EncodedFile>, f64), PipelineError> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let jobs: Vec<(&image::RgbImage, ImageFormat)> = variants
        .iter()
        .flat_map(|v| formats.iter().map(move |&f| (v, f)))
        .collect();
    let (workers, libaom_threads) = split_threads(threads, jobs.len(), libaom_may_thread);
    let next = AtomicUsize::new(0);
    let worker = || -> (Vec<IndexedFile>, f64) {
        // Started on the thread it measures, after this job's scoped threads exist,
        // so a task clock counts this thread's libaom threads and no sibling's. A
        // clock that cannot start (out of descriptors, say) keeps this thread's
        // encodes on one thread, which its own clock prices.
        let task_clock = (libaom_threads.get() > 1)
            .then(|| {
                TaskClock::start()
                    .inspect_err(|e| {
                        tracing::warn!(error = %e, "no task clock: encoding on one thread");
                    })
                    .ok()
            })
            .flatten();
        let threads_per_encode = if task_clock.is_some() {
            libaom_threads
        } else {
            std::num::NonZeroUsize::MIN
        };
        let measured = measure(|| {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(v, format)) = jobs.get(i) else {
                    break;
                };
                let file =
                    imagegate_imaging::encode_threaded(v, format, profile, threads_per_encode)
                        .map(|bytes| EncodedFile {
                            width: v.width(),
                            height: v.height(),
                            format,
                            bytes,
                        })
                        .map_err(|e| {
                            PipelineError::Internal(format!(
                                "encoding {format} {}px: {e}",
                                v.width()
                            ))
                        });
                done.push((i, file));
            }
            done
        });
        let cpu_ms = match task_clock.map(|clock| clock.elapsed_ms()) {
            Some(Ok(ms)) => ms,
            Some(Err(e)) => {
                // Reading a counter we hold open does not fail in practice; if it
                // does, the thread clock is a lower bound, and the log says so.
                tracing::warn!(error = %e, "task clock unreadable: encode CPU undercounted");
                measured.cpu_ms
            }
            None => measured.cpu_ms,
        };
        (measured.value, cpu_ms)
    };
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (1..workers).map(|_| scope.spawn(worker)).collect();
        let mut all = vec![worker()];
        for h in handles {
            all.push(h.join().unwrap_or_else(|_| (vec![], 0.0)));
        }
        all
    });
    let cpu_ms = results.iter().map(|(_, cpu)| cpu).sum();
    let mut indexed: Vec<IndexedFile> = results.into_iter().flat_map(|(files, _)| files).collect();
    if indexed.len() != jobs.len() {
        return Err(PipelineError::Internal("an encoder thread panicked".into()));
    }
    indexed.sort_by_key(|(i, _)| *i);
    let files = indexed
        .into_iter()
        .map(|(_, f)| f)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((files, cpu_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::thread_cpu_ms;
    use imagegate_core::profile::{AvifSettings, JpegSettings};

    /// A deterministic picture with gradients and noise, so libaom has real work
    /// in every superblock.
    fn textured(side: u32) -> image::RgbImage {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        image::RgbImage::from_fn(side, side, |x, y| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let noise = (state & 0x3f) as u8;
            image::Rgb([
                (x / 3) as u8 ^ noise,
                (y / 3) as u8 ^ noise,
                ((x + y) / 6) as u8 ^ noise,
            ])
        })
    }

    fn profile(formats: Vec<ImageFormat>) -> RenderProfile {
        RenderProfile {
            name: "test".into(),
            variants: vec![768],
            formats,
            avif: AvifSettings::default(),
            jpeg: JpegSettings::default(),
            webp_quality: None,
            watermark: None,
            safety: Default::default(),
            provenance: Default::default(),
        }
    }

    #[test]
    fn a_lone_avif_hands_spare_threads_to_libaom_and_counts_their_cpu() {
        let variants = vec![textured(768)];
        let profile = profile(vec![ImageFormat::Avif]);
        let before = thread_cpu_ms();
        let formats = [ImageFormat::Avif];
        let (files, counted_cpu_ms) = encode_all(
            &variants,
            &formats,
            &profile,
            2,
            libaom_can_thread(&formats, &profile),
        )
        .expect("encoding");
        let calling_thread_cpu_ms = thread_cpu_ms() - before;
        assert_eq!(files.len(), 1);
        assert!(files[0].bytes.starts_with(&[0, 0, 0]) && files[0].bytes.len() > 1000);
        // The encode ran on this thread and on the thread libaom started: what it
        // reports must include the second one's time, which this thread's clock
        // cannot see.
        assert!(
            counted_cpu_ms > calling_thread_cpu_ms + 1.0,
            "reported {counted_cpu_ms} ms of CPU; the calling thread used {calling_thread_cpu_ms} ms"
        );
    }

    #[test]
    fn threads_go_to_files_first_and_the_spare_ones_to_libaom() {
        let split = |threads, files, libaom| {
            let (workers, libaom_threads) = split_threads(threads, files, libaom);
            (workers, libaom_threads.get())
        };
        // More files than threads: one file per thread, libaom on one thread each.
        assert_eq!(split(2, 6, true), (2, 1));
        assert_eq!(split(4, 4, true), (4, 1));
        // Fewer: the spare threads are shared out among the files' encoders.
        assert_eq!(split(2, 1, true), (1, 2));
        assert_eq!(split(4, 2, true), (2, 2));
        assert_eq!(split(5, 2, true), (2, 2));
        // Never when libaom may not thread (rav1e, no AVIF, or no task clock).
        assert_eq!(split(4, 1, false), (1, 1));
        assert_eq!(split(0, 3, true), (1, 1));
    }
}
