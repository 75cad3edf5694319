//! `POST /v1/images` bodies: JSON parsing and resolution against the default config.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imagegate_fuzz::parse_request(data));
