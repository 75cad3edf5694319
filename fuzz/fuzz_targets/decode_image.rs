//! Image bytes as a provider might return them: PNG, JPEG, WebP or anything else.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imagegate_fuzz::decode_image(data));
