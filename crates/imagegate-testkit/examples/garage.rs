//! A throwaway single-node Garage for trying the S3 store by hand or measuring it:
//! prints its settings as one JSON line, then serves until stdin closes.
//!
//!     cargo run -p imagegate-testkit --example garage

use std::io::Read;

fn main() {
    let garage = imagegate_testkit::garage::Garage::start();
    let s = garage.settings();
    println!(
        "{}",
        serde_json::json!({
            "endpoint": s.endpoint,
            "region": s.region,
            "bucket": s.bucket,
            "access_key_id": s.access_key_id,
            "secret_access_key": s.secret_access_key,
            "web_base_url": s.web_base_url,
        })
    );
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}
