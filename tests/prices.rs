//! The price book against the real binary: edits apply without a restart and broken
//! ones are refused while the old prices keep serving; a retired model answers 410
//! naming its replacement; an unpriced offer stops start-up unless marked; and
//! `max_cost_usd` bounds the model actually called.

use crate::support;

use std::path::Path;
use std::time::{Duration, Instant};
use support::{client, Site};

/// Local providers only, no classifier (so no model files), a copy of the shipped
/// price book the test may edit, and `extra` appended.
fn config(dir: &Path, providers: &str, extra: &str) -> String {
    let book = dir.join("pricing.toml");
    if !book.exists() {
        let shipped = support::repo_root().join("config/pricing.toml");
        std::fs::copy(shipped, &book).unwrap();
    }
    let data = dir.join("data");
    format!(
        r#"
pricing = "{book}"

[server]
listen = "127.0.0.1:0"

[concurrency]
cpu_workers = 2

{providers}

[storage]
kind = "local"
root = "{data}/objects"

[ledger]
url = "sqlite://{data}/ledger.db"

[safety]
classifier = false

[profiles.default]
variants = [64]
formats = ["jpeg"]
{extra}
"#,
        book = book.display(),
        data = data.display(),
    )
}

const ONE_LOCAL: &str = "[[providers]]\nkind = \"local\"\nlatency_ms = 5\n";

fn edit_book(site: &Site, from: &str, to: &str) {
    let path = site.dir.path().join("pricing.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "the book has {from:?}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

async fn quote(base: &str) -> f64 {
    let r = client()
        .post(format!("{base}/v1/estimate"))
        .json(&serde_json::json!({"prompt": "a kettle", "size": "1024x1024"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    body["chosen"]["expected_usd"].as_f64().unwrap()
}

async fn wait_for_quote(base: &str, want: f64) -> Duration {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(15) {
        if quote(base).await == want {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the quote never became {want}");
}

fn log_has(site: &Site, needle: &str) -> bool {
    std::fs::read_to_string(site.log())
        .unwrap_or_default()
        .contains(needle)
}

#[tokio::test]
async fn edits_apply_without_a_restart_and_broken_ones_are_refused() {
    let site = Site::new(|dir| config(dir, ONE_LOCAL, ""));
    let server = site.serve(&[]);
    let base = server.base.clone();
    assert_eq!(quote(&base).await, 0.002);
    let prices = support::get_json(server.url("/v1/prices")).await;
    let first_version = prices["version"].as_str().unwrap().to_string();
    let local = prices["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["provider"] == "local")
        .unwrap();
    assert_eq!(local["image_1024"][0]["usd"], 0.002);
    assert_eq!(local["status"], "current");

    // An edit changes the next quote, within the file watcher's second.
    edit_book(
        &site,
        "usd_per_megapixel = 0.002",
        "usd_per_megapixel = 0.004",
    );
    let took = wait_for_quote(&base, 0.004).await;
    assert!(took < Duration::from_secs(5), "{took:?}");
    let prices = support::get_json(server.url("/v1/prices")).await;
    assert_ne!(prices["version"], first_version.as_str());

    // A broken edit is refused with its line and column; the old prices keep serving.
    edit_book(
        &site,
        "usd_per_megapixel = 0.004\n",
        "usd_per_megapixel = \n",
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(quote(&base).await, 0.004);
    assert!(
        log_has(&site, "edited price book refused"),
        "refusal logged"
    );
    let r = client()
        .post(server.url("/v1/admin/prices/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_price_book");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("line"), "{message}");
    assert_eq!(quote(&base).await, 0.004);

    // Fixed, and reloaded (by the watcher or the SIGHUP, whichever comes first).
    edit_book(
        &site,
        "usd_per_megapixel = \n",
        "usd_per_megapixel = 0.006\n",
    );
    let pid = server.pid();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_for_quote(&base, 0.006).await;
    let started = Instant::now();
    while !log_has(&site, "SIGHUP: price book reloaded") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "SIGHUP not handled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // An admin reload of an unchanged file says so.
    let r = client()
        .post(server.url("/v1/admin/prices/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["changed"], false);
    server.stop();
}

#[tokio::test]
async fn a_retired_model_answers_410_naming_its_replacement() {
    let providers = "[[providers]]\nkind = \"local\"\nlatency_ms = 5\nmodels = [\n  { name = \"procedural-v1\", classes = [\"draft\", \"standard\", \"premium\"] },\n  { name = \"procedural-v0\", classes = [\"draft\"] },\n]\n";
    let site = Site::new(|dir| config(dir, providers, ""));
    let book = site.dir.path().join("pricing.toml");
    let mut text = std::fs::read_to_string(&book).unwrap();
    text.push_str(
        "\n[[model]]\nprovider = \"local\"\nmodel = \"procedural-v0\"\nsource = \"test\"\nas_of = 2026-12-05\n\
         retired = 2026-01-01\nreplacement = \"procedural-v1\"\n\
         [model.pricing]\ntype = \"per_image\"\nprices = [{ usd = 0.0001 }]\n",
    );
    std::fs::write(&book, text).unwrap();
    let server = site.serve(&[]);
    let r = client()
        .post(server.url("/v1/images"))
        .json(&serde_json::json!({"prompt": "a kettle", "model": "local/procedural-v0"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 410);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_retired");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("procedural-v1"), "{message}");
    // The class it served still works, through the current model only, although the
    // retired one would be cheaper.
    let r = client()
        .post(server.url("/v1/estimate"))
        .json(&serde_json::json!({"prompt": "a kettle", "model": "draft"}))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["chosen"]["model"], "procedural-v1");
    let skipped = body["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["model"] == "procedural-v0")
        .unwrap();
    assert!(skipped["skipped_reason"]
        .as_str()
        .unwrap()
        .starts_with("retired"));
    // `prices check` flags the retired model still configured.
    let out = site.cli(&["prices", "check"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("retired_configured"), "{text}");
    server.stop();
}

#[tokio::test]
async fn an_unpriced_offer_stops_start_up_unless_marked() {
    let unmarked = "[[providers]]\nkind = \"local\"\nmodels = [{ name = \"procedural-x\", classes = [\"draft\"] }]\n";
    let site = Site::new(|dir| config(dir, unmarked, ""));
    let out = site.cli(&["estimate", "--prompt", "a kettle"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("local/procedural-x") && err.contains("unpriced = true"),
        "{err}"
    );
    let check = site.cli(&["prices", "check"]);
    assert!(!check.status.success());
    assert!(String::from_utf8_lossy(&check.stdout).contains("missing"));

    let marked = "[[providers]]\nkind = \"local\"\nmodels = [{ name = \"procedural-x\", classes = [\"draft\"], unpriced = true }]\n";
    let site = Site::new(|dir| config(dir, marked, ""));
    let out = site.cli(&["estimate", "--prompt", "a kettle", "--model", "draft"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["chosen"]["price_source"], "unpriced");
    let server = site.serve(&[]);
    let r = client()
        .post(server.url("/v1/images"))
        .json(&serde_json::json!({"prompt": "a kettle", "model": "draft"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The charge is unknown and flagged, never $0 silently.
    let out = site.cli(&["prices", "check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    server.stop();
}

#[tokio::test]
async fn max_cost_bounds_the_model_called_even_for_fastest() {
    // "fastdear" is fast and $0.08 an image; "slowcheap" is slow and $0.002.
    let providers = "[[providers]]\nkind = \"local\"\nname = \"fastdear\"\nlatency_ms = 5\nmodels = [{ name = \"procedural-dear\", classes = [\"premium\"] }]\n\n\
[[providers]]\nkind = \"local\"\nname = \"slowcheap\"\nlatency_ms = 5\nmodels = [{ name = \"procedural-v1\", classes = [\"premium\"] }]\n";
    let extra = "[router]\nlatency_prior_ms = { fastdear = 100, slowcheap = 5000 }\n";
    let site = Site::new(|dir| config(dir, providers, extra));
    let book = site.dir.path().join("pricing.toml");
    let mut text = std::fs::read_to_string(&book).unwrap();
    text.push_str(
        "\n[[model]]\nprovider = \"local\"\nmodel = \"procedural-dear\"\nsource = \"test\"\nas_of = 2026-12-05\n\
         [model.pricing]\ntype = \"per_image\"\nprices = [{ usd = 0.08 }]\n",
    );
    std::fs::write(&book, text).unwrap();
    let server = site.serve(&[]);
    let request = |cap: Option<f64>| {
        let mut body =
            serde_json::json!({"prompt": "a kettle", "model": "premium", "policy": "fastest"});
        if let Some(cap) = cap {
            body["max_cost_usd"] = cap.into();
        }
        body
    };
    // Uncapped, fastest picks the dear one.
    let est = support::post_json(server.url("/v1/estimate"), &request(None)).await;
    assert_eq!(est["chosen"]["provider"], "fastdear");
    // Capped at $0.01: the estimate and the call both use the cheap one.
    let est = support::post_json(server.url("/v1/estimate"), &request(Some(0.01))).await;
    assert_eq!(est["chosen"]["provider"], "slowcheap");
    let r = client()
        .post(server.url("/v1/images"))
        .json(&request(Some(0.01)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let costs = support::get_json(server.url("/v1/costs?group_by=provider")).await;
    let text = costs.to_string();
    assert!(
        text.contains("slowcheap") && !text.contains("fastdear"),
        "{text}"
    );
    // A cap below every candidate: 402 before any call.
    let r = client()
        .post(server.url("/v1/images"))
        .json(&serde_json::json!({"prompt": "another kettle", "model": "premium", "max_cost_usd": 0.001}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 402);
    server.stop();
}
