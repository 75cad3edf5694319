//! The safety stage of imagegate: screening prompts before anything is generated,
//! classifying generated images with Yahoo's open_nsfw model on the real ONNX Runtime
//! (through `ort`, loaded dynamically from a pinned `libonnxruntime`), and turning a
//! score into an action (allow / blur / block).
//!
//! This crate owns the deny-list ([`PromptScreen`]), the classifier ([`Classifier`],
//! with its preprocessing [`preprocess`] that reproduces the reference implementation)
//! and the policy ([`decide`]). It deliberately does not decode, blur, store, cache or
//! cost anything, and it is synchronous: the pipeline runs [`Classifier::score`] on its
//! bounded blocking pool and does everything else with the verdict.
//!
//! Main entry points: [`Classifier::load`] once at start-up (every missing or broken
//! file is reported there, naming the path), then [`Classifier::score`] per image and
//! [`decide`] with the profile's thresholds; [`PromptScreen::check`] before generation.

mod classifier;
mod crop_resample;
mod error;
mod pillow_resample;
mod policy;
mod preprocess;
mod prompt_screen;

pub use classifier::{
    Classifier, ClassifierConfig, MODEL_FILE, MODEL_SHA256, RUNTIME_LIBRARY_FILE, RUNTIME_SHA256,
};
pub use error::SafetyError;
pub use policy::decide;
pub use preprocess::{preprocess, preprocess_reference, CROP, INPUT_LEN, MEAN_BGR, RESIZE};
pub use prompt_screen::{PromptScreen, ScreenHit};
