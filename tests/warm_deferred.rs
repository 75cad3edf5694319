//! `imagegate warm --deliver-by`: a template set queued as deferred jobs during a
//! surge is planned for the surge's end at a third of the live price, the summary
//! says what that saves, a running server's worker makes the images, and
//! `imagegate report --only savings` shows each lever's dollars from the ledger:
//! the deferral recorded, a cache hit recorded, the delivery choices projected.

use crate::deferred::{config, surge_until_next_minute, until_final};
use crate::support::Site;
use std::time::Duration;

const TEMPLATES: &str = r#"
[[template]]
name = "stations"
prompt = "a {kind} railway station at night, gouache"
sizes = ["1024x1024"]
vars.kind = ["brick", "glass", "timber"]
"#;

fn json_of(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON ({e}); stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn warm_defers_a_template_set_and_the_report_shows_each_lever() {
    let (surge, surge_ends) = surge_until_next_minute();
    let site = Site::new(|dir| config(dir, &surge));
    let file = site.dir.path().join("stations.toml");
    std::fs::write(&file, TEMPLATES).unwrap();
    let file = file.to_str().unwrap();

    let refused = site.cli(&["warm", file, "--deliver-by", "someday"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--deliver-by"),
        "{refused:?}"
    );

    let capped = site.cli(&["warm", file, "--deliver-by", "2h", "--budget-usd", "1"]);
    assert!(!capped.status.success());
    assert!(
        String::from_utf8_lossy(&capped.stderr).contains("[budgets]"),
        "{capped:?}"
    );

    let queued = site.cli(&["warm", file, "--deliver-by", "2h", "--format", "json"]);
    assert!(queued.status.success(), "{queued:?}");
    let summary = json_of(&queued);
    let total = &summary["total"];
    assert_eq!(total["jobs"], 3, "{summary}");
    let live = total["live_provider_usd"].as_f64().unwrap();
    let planned = total["planned_provider_usd"].as_f64().unwrap();
    assert!(
        live > 0.0 && (live - 3.0 * planned).abs() < 1e-9,
        "{summary}"
    );
    assert!(
        (total["saved_usd"].as_f64().unwrap() - (live - planned)).abs() < 1e-9,
        "{summary}"
    );
    let ids: Vec<String> = summary["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let outcome = &i["outcome"];
            assert_eq!(outcome["status"], "queued", "{i}");
            let run_after: chrono::DateTime<chrono::Utc> =
                outcome["run_after"].as_str().unwrap().parse().unwrap();
            assert_eq!(run_after.timestamp(), surge_ends.timestamp(), "{i}");
            outcome["job"].as_str().unwrap().to_string()
        })
        .collect();
    // A second run finds the same jobs pending, and the table says so.
    let again = site.cli(&["warm", file, "--deliver-by", "2h"]);
    assert!(again.status.success(), "{again:?}");
    let table = String::from_utf8(again.stdout).unwrap();
    assert_eq!(table.matches("(already queued)").count(), 3, "{table}");
    assert!(table.contains("saving"), "{table}");

    // A server on the same ledger runs them at the surge's end.
    let server = site.serve(&[]);
    for id in &ids {
        let job = until_final(&server, id, Duration::from_secs(150)).await;
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    // One live request for a warmed image: a recorded cache hit, for the cache lever.
    let hit = crate::support::post_json(
        server.url("/v1/images"),
        &serde_json::json!({"prompt": "a glass railway station at night, gouache", "size": "1024x1024"}),
    )
    .await;
    assert_eq!(hit["cache"], "hit", "{hit}");
    let warm_again = site.cli(&["warm", file, "--format", "json"]);
    assert!(warm_again.status.success(), "{warm_again:?}");
    assert_eq!(json_of(&warm_again)["hits"], 3);
    server.stop();

    let report = site.cli(&["report", "--only", "savings", "--format", "json"]);
    assert!(report.status.success(), "{report:?}");
    let savings = &json_of(&report)["savings"];
    let deferral = &savings["deferral"];
    assert_eq!(deferral["jobs"], 3, "{savings}");
    assert_eq!(deferral["jobs_unpriced"], 0, "{savings}");
    assert_eq!(savings["cache_hits"], 1, "{savings}");
    assert!(
        savings["cache_saved_usd"].as_f64().unwrap() > 0.0,
        "{savings}"
    );
    let saved = deferral["saved_usd"].as_f64().unwrap();
    assert!(
        (saved
            - (deferral["live_provider_usd"].as_f64().unwrap()
                - deferral["paid_provider_usd"].as_f64().unwrap()))
        .abs()
            < 1e-9
            && (saved - (live - planned)).abs() < 1e-6,
        "the saving recorded is the one planned: {savings}"
    );
    // The deferral config serves AVIF and JPEG at 64 and 128 px: AVIF instead of
    // JPEG, and 64 instead of 128, are levers with stored files on both sides.
    let levers = savings["delivery"].as_array().unwrap();
    assert!(
        levers
            .iter()
            .any(|l| l["kind"] == "format" && l["images"] == 3),
        "{savings}"
    );
    assert!(levers.iter().any(|l| l["kind"] == "width"), "{savings}");
    let table = site.cli(&["report", "--only", "savings"]);
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(table.contains("savings by lever"), "{table}");
    assert!(table.contains("deferral"), "{table}");
    assert!(table.contains("cache hits"), "{table}");
}
