//! Image bytes as a provider might return them: PNG, JPEG, WebP or anything else.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: {
        // libfuzzer-sys aborts on any panic, even one the decoder catches and turns
        // into an error; the default hook lets those be handled. A panic that escapes
        // the target still aborts (libfuzzer-sys catches it and calls abort).
        drop(std::panic::take_hook());
    },
    |data: &[u8]| imagegate_fuzz::decode_image(data)
);
