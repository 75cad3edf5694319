use std::path::PathBuf;

/// Everything that can go wrong in the safety stage. Load-time variants name the file
/// and say how to fix it; they are meant to stop start-up, not a request.
#[derive(Debug, thiserror::Error)]
pub enum SafetyError {
    #[error("NSFW model not found at {path} (run scripts/fetch-models.sh, or set the model path)")]
    ModelMissing { path: PathBuf },

    #[error("ONNX Runtime library not found at {path} (run scripts/fetch-models.sh, or set the runtime library path)")]
    RuntimeMissing { path: PathBuf },

    #[error("cannot load ONNX Runtime from {path}: {reason}")]
    RuntimeLoad { path: PathBuf, reason: String },

    #[error("ONNX Runtime is already loaded from {loaded} in this process; cannot also load {requested}")]
    RuntimeConflict { loaded: PathBuf, requested: PathBuf },

    #[error("cannot load NSFW model {path}: {reason} (a corrupt or wrong file? re-run scripts/fetch-models.sh)")]
    ModelLoad { path: PathBuf, reason: String },

    #[error("{path} does not have the pinned sha256 {expected} (found {actual}): re-run scripts/fetch-models.sh")]
    DigestMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },

    #[error("invalid classifier configuration: {0}")]
    Config(String),

    #[error("cannot classify image: {0}")]
    BadImage(String),

    #[error("ONNX Runtime failed: {0}")]
    Runtime(String),

    #[error("deny-list word {word:?} is unusable: {reason}")]
    BadWord { word: String, reason: String },

    #[error("deny-list pattern {pattern:?} is not a valid regular expression: {reason}")]
    BadPattern { pattern: String, reason: String },
}
