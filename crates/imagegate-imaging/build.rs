//! Refuses to build without `nasm`: rav1e (through ravif) silently falls back to plain
//! Rust kernels when nasm is missing, which makes AVIF encoding several times slower.
//! Set `IMAGEGATE_ALLOW_NO_NASM=1` to build anyway (e.g. on a laptop for a quick check).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=IMAGEGATE_ALLOW_NO_NASM");
    println!("cargo:rerun-if-env-changed=PATH");
    if std::env::var("IMAGEGATE_ALLOW_NO_NASM").is_ok_and(|v| v == "1") {
        return;
    }
    // rav1e only has nasm kernels for x86_64; other targets use their own paths.
    if std::env::var("CARGO_CFG_TARGET_ARCH").is_ok_and(|a| a != "x86_64") {
        return;
    }
    let found = Command::new("nasm")
        .arg("-v")
        .output()
        .is_ok_and(|out| out.status.success());
    if !found {
        panic!(
            "\n\nimagegate-imaging: `nasm` was not found on PATH (`nasm -v` failed).\n\
             rav1e needs nasm for its assembly kernels; without them AVIF encoding is \
             several times slower.\n\
             Install it (Debian/Ubuntu: `apt-get install nasm`), or set \
             IMAGEGATE_ALLOW_NO_NASM=1 to build without it knowingly.\n"
        );
    }
}
