//! The adapters against local servers speaking each provider's wire format: one
//! conformance suite over every adapter (the same failure cases for all), then each
//! adapter's own wire details.

mod common;
mod conformance;

mod automatic1111;
mod bfl;
mod catalog;
mod fal;
mod google;
mod google_batch;
mod openai;
mod openai_batch;
mod provider_config;
mod replicate;
mod stability;

conformance!(openai_conformance, crate::openai::OpenAiWire);
conformance!(google_conformance, crate::google::GoogleWire);
conformance!(stability_conformance, crate::stability::StabilityWire);
conformance!(replicate_conformance, crate::replicate::ReplicateWire);
conformance!(bfl_conformance, crate::bfl::BflWire);
conformance!(fal_conformance, crate::fal::FalWire);
// The web UI has no safety system of its own (imagegate's safety stage screens its
// output), so it has no refusal case; every other case applies.
conformance!(
    automatic1111_conformance,
    crate::automatic1111::A1111Wire,
    [
        success,
        unauthorized_without_leaking_the_key,
        rate_limited_with_retry_after,
        server_error,
        timeout,
        garbage_body,
        non_image_body,
        oversized_body,
    ]
);
