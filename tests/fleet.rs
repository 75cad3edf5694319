//! Fleet mode end to end: the real `imagegate` binary publishing to a real Garage S3
//! server, fetched back through Garage's web endpoint (the CDN), and two replicas
//! sharing that store and a real PostgreSQL ledger. Garage and PostgreSQL missing are
//! failures (the testkit says how to set them up), never skips.

use crate::support;

use imagegate_testkit::garage::Garage;
use imagegate_testkit::postgres::TestSchema;
use std::time::Duration;
use support::{client, free_port, repo_root};

const KEY_ID_VAR: &str = "IMAGEGATE_TEST_S3_KEY_ID";
const SECRET_VAR: &str = "IMAGEGATE_TEST_S3_SECRET";
/// Where the replicas keep manifests: a bucket Garage's web endpoint does not serve.
const PRIVATE_BUCKET: &str = "imagegate-private";

/// Garage with the published bucket (served by its web endpoint, the CDN) and the
/// private one.
fn start_garage() -> Garage {
    let garage = Garage::start();
    garage.cli(&["bucket", "create", PRIVATE_BUCKET]);
    garage.cli(&[
        "bucket",
        "allow",
        "--read",
        "--write",
        "--key",
        garage.access_key_id(),
        PRIVATE_BUCKET,
    ]);
    garage
}

/// One imagegate process: its own port and data dir, the shared store and ledger.
struct Replica {
    dir: tempfile::TempDir,
    port: u16,
    server: Option<support::Server>,
    garage_keys: (String, String),
}

struct ReplicaOptions<'a> {
    garage: &'a Garage,
    /// `None`: a SQLite ledger in the replica's own data dir.
    ledger_url: Option<&'a str>,
    latency_ms: u64,
    lease_ttl_secs: u64,
    /// A daily budget for every key (anonymous callers included).
    daily_budget_usd: Option<f64>,
    /// Every caller's request rate: (per minute, burst).
    rate: Option<(u32, u32)>,
}

impl<'a> ReplicaOptions<'a> {
    /// A replica on `garage` with no budget or rate limit, a 300 ms provider and a
    /// 30 s lease.
    fn new(garage: &'a Garage, ledger_url: Option<&'a str>) -> ReplicaOptions<'a> {
        ReplicaOptions {
            garage,
            ledger_url,
            latency_ms: 300,
            lease_ttl_secs: 30,
            daily_budget_usd: None,
            rate: None,
        }
    }
}

impl Replica {
    fn new(opts: ReplicaOptions<'_>) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let s3 = opts.garage.settings();
        let data = dir.path().join("data");
        let ledger = opts
            .ledger_url
            .map(str::to_string)
            .unwrap_or_else(|| format!("sqlite://{}/ledger.db", data.display()));
        let config = format!(
            r#"
pricing = "{pricing}"

[server]
listen = "127.0.0.1:{port}"

[concurrency]
cpu_workers = 2

[[providers]]
kind = "local"
latency_ms = {latency}

[storage]
kind = "s3"
endpoint = "{endpoint}"
region = "{region}"
bucket = "{bucket}"
prefix = "imagegate"
path_style = true
access_key_id_env = "{KEY_ID_VAR}"
secret_access_key_env = "{SECRET_VAR}"
public_base_url = "{web}"
private_bucket = "{PRIVATE_BUCKET}"
max_attempts = 2
attempt_timeout_ms = 2000
operation_timeout_ms = 5000

[ledger]
url = "{ledger}"

[fleet]
lease_ttl_secs = {ttl}
poll_ms = 20

{safety}
[profiles.default]
variants = [256, 512]
formats = ["avif", "jpeg"]
avif = {{ quality = 60, speed = 9 }}
safety = {{ blur_at = 0.2, block_at = 0.8 }}
{budgets}
{rate}
"#,
            budgets = opts
                .daily_budget_usd
                .map(|usd| format!(
                    "[budgets]\nprocessing_reserve_usd = 0.0005\n[budgets.default]\ndaily_usd = {usd}\n"
                ))
                .unwrap_or_default(),
            rate = opts
                .rate
                .map(|(per_minute, burst)| format!(
                    "[server.auth]\nrequests_per_minute = {per_minute}\nburst = {burst}\n"
                ))
                .unwrap_or_default(),
            pricing = repo_root().join("config/pricing.toml").display(),
            latency = opts.latency_ms,
            endpoint = s3.endpoint,
            region = s3.region,
            bucket = s3.bucket,
            web = s3.web_base_url,
            ttl = opts.lease_ttl_secs,
            safety = support::safety_section(None),
        );
        std::fs::write(dir.path().join("imagegate.toml"), config).unwrap();
        let mut replica = Replica {
            dir,
            port,
            server: None,
            garage_keys: (s3.access_key_id, s3.secret_access_key),
        };
        replica.start();
        replica
    }

    fn start(&mut self) {
        let config = self.dir.path().join("imagegate.toml");
        let (key_id, secret) = &self.garage_keys;
        let env = [(KEY_ID_VAR, key_id.as_str()), (SECRET_VAR, secret.as_str())];
        self.server = Some(support::serve_config(&config, &env));
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// kill -9: no graceful anything, as a crashed node.
    fn crash(&mut self) {
        if let Some(server) = self.server.take() {
            server.kill();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.crash();
    }
}

async fn post(
    replica: &Replica,
    body: serde_json::Value,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let r = client()
        .post(replica.url("/v1/images"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.json().await.unwrap())
}

async fn paid_generations(ledger_url: &str, id: &str) -> i64 {
    let ledger = imagegate_ledger::Ledger::open(&imagegate_ledger::LedgerConfig {
        url: ledger_url.to_string(),
    })
    .await
    .unwrap();
    let n = ledger.paid_generations(id.parse().unwrap()).await.unwrap();
    ledger.close().await;
    n
}

async fn generations(ledger_url: &str, id: &str) -> i64 {
    let ledger = imagegate_ledger::Ledger::open(&imagegate_ledger::LedgerConfig {
        url: ledger_url.to_string(),
    })
    .await
    .unwrap();
    let n = ledger
        .stage_count(id.parse().unwrap(), imagegate_core::Stage::Generate)
        .await
        .unwrap();
    ledger.close().await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_publishes_to_the_cdn_and_any_process_serves_the_store_tier() {
    let garage = start_garage();
    let mut a = Replica::new(ReplicaOptions {
        latency_ms: 20,
        ..ReplicaOptions::new(&garage, None)
    });
    let (status, _, body) = post(&a, serde_json::json!({"prompt": "a harbour at dawn"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["cache"], "miss");
    let images = body["images"].as_array().unwrap();
    assert_eq!(images.len(), 4);
    let web = garage.settings().web_base_url;
    for image in images {
        let url = image["url"].as_str().unwrap();
        assert!(
            url.starts_with(&format!("{web}/imagegate/i/")),
            "{url} is not under the CDN base and prefix"
        );
        // Through Garage's web endpoint, as a browser behind the CDN would fetch it.
        let r = client().get(url).send().await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
        let format = image["format"].as_str().unwrap();
        assert_eq!(
            r.headers()["content-type"],
            if format == "avif" {
                "image/avif"
            } else {
                "image/jpeg"
            }
        );
        assert_eq!(
            r.headers()["cache-control"],
            "public, max-age=31536000, immutable"
        );
        let bytes = r.bytes().await.unwrap();
        assert_eq!(bytes.len() as u64, image["bytes"].as_u64().unwrap());
        if format == "jpeg" {
            let decoded = image::load_from_memory(&bytes).unwrap();
            assert_eq!(decoded.width() as u64, image["width"].as_u64().unwrap());
        }
    }
    // The manifest is not on the CDN: not beside the images, not by the private
    // bucket's name.
    let id = body["id"].as_str().unwrap();
    let manifest_path = format!("imagegate/i/{}/{id}/manifest.json", &id[..2]);
    for (url, host) in [
        (format!("{web}/{manifest_path}"), None),
        (format!("{web}/i/{}/{id}/manifest.json", &id[..2]), None),
        (format!("{web}/{manifest_path}"), Some(PRIVATE_BUCKET)),
        (
            format!("{web}/i/{}/{id}/manifest.json", &id[..2]),
            Some(PRIVATE_BUCKET),
        ),
    ] {
        let mut request = client().get(&url);
        if let Some(host) = host {
            request = request.header("host", host);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 404, "GET {url} (Host {host:?})");
    }
    // The manifest is in S3 too: a process with an empty memory cache and its own
    // ledger answers from the store tier without generating.
    a.crash();
    let b = Replica::new(ReplicaOptions {
        latency_ms: 20,
        ..ReplicaOptions::new(&garage, None)
    });
    let (status, _, again) = post(&b, serde_json::json!({"prompt": "a harbour at  dawn"})).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["cache"], "hit");
    assert_eq!(again["id"], body["id"]);
    assert_eq!(again["cost"]["stages"][0]["detail"]["tier"], "store");
    let b_ledger = format!("sqlite://{}/data/ledger.db", b.dir.path().display());
    assert_eq!(
        generations(&b_ledger, body["id"].as_str().unwrap()).await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_s3_outage_answers_503_publishes_nothing_and_recovers_by_itself() {
    let mut garage = start_garage();
    let replica = Replica::new(ReplicaOptions {
        latency_ms: 20,
        ..ReplicaOptions::new(&garage, None)
    });
    let ready = client().get(replica.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    garage.stop();
    let request = serde_json::json!({"prompt": "a lighthouse in a storm"});
    let (status, headers, body) = post(&replica, request.clone()).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "storage_unavailable");
    assert!(headers.contains_key("retry-after"));
    let ready = client().get(replica.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let ledger = format!("sqlite://{}/data/ledger.db", replica.dir.path().display());

    garage.start_again();
    // Nothing of the failed attempt is visible: the key has no manifest.
    let key = client()
        .post(replica.url("/v1/estimate"))
        .json(&request)
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(key["cached"], false, "{key}");
    let id = key["id"].as_str().unwrap().to_string();
    let manifest = client()
        .get(replica.url(&format!("/v1/images/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(manifest.status(), 404);
    // The store was down before any provider was called: nothing was paid.
    assert_eq!(paid_generations(&ledger, &id).await, 0);

    // The same process, not restarted, works again.
    let (status, _, body) = post(&replica, request.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["cache"], "miss");
    assert_eq!(paid_generations(&ledger, &id).await, 1, "paid once: {body}");
    let (status, _, body) = post(&replica, request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["cache"], "hit");
    let ready = client().get(replica.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

/// The store fails after the provider has been paid (Garage stops while the
/// generation runs): the answer is 503, the charge is in the ledger as a failed
/// request and counts against the budget, a retry while the store is down pays
/// nothing more, and once it is back the paid work is published, not paid again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_fails_after_the_provider_answered_keeps_the_charge_and_the_work() {
    const REQUEST_ID: &str = "paid-then-store-down";
    let mut garage = start_garage();
    let replica = Replica::new(ReplicaOptions {
        latency_ms: 2_000,
        ..ReplicaOptions::new(&garage, None)
    });
    let ledger_url = format!("sqlite://{}/data/ledger.db", replica.dir.path().display());
    let request = serde_json::json!({"prompt": "a lighthouse in a storm, paid for"});
    let estimate = support::post_json(replica.url("/v1/estimate"), &request).await;
    let id = estimate["id"]
        .as_str()
        .unwrap_or_else(|| panic!("estimate without id: {estimate}"))
        .to_string();
    let key: imagegate_core::ContentKey = id.parse().unwrap();
    let url = replica.url("/v1/images");
    let first = tokio::spawn({
        let request = request.clone();
        async move {
            let r = client()
                .post(url)
                .header("x-request-id", REQUEST_ID)
                .json(&request)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap())
        }
    });
    // The provider has answered (and charged) once the request's row is written,
    // in progress; the render after it takes longer than this loop's step, so the
    // store goes away between the charge and the upload.
    let ledger = imagegate_ledger::Ledger::open(&imagegate_ledger::LedgerConfig {
        url: ledger_url.clone(),
    })
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while ledger.request_rows(REQUEST_ID).await.unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "never charged");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    garage.stop();
    let (status, body) = first.await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "storage_unavailable");

    assert_eq!(ledger.paid_generations(key).await.unwrap(), 1);
    let costs = support::get_json(replica.url("/v1/costs?group_by=status,stage")).await;
    let failed_generate = costs["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["status"] == "failed" && r["stage"] == "generate")
        .unwrap_or_else(|| panic!("no failed generate row: {costs}"));
    assert!(
        failed_generate["micros"].as_i64().unwrap() >= 2_000,
        "{costs}"
    );
    let committed = ledger
        .committed(None, chrono::Utc::now() - chrono::Duration::hours(1))
        .await
        .unwrap();
    assert!(committed.0 >= 2_000, "the budget sees {committed}");

    // A retry while the store is still down pays nothing more.
    let (status, _, body) = post(&replica, request.clone()).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(ledger.paid_generations(key).await.unwrap(), 1);

    // Back up: the paid work is published (not paid again), then served as a hit.
    garage.start_again();
    let (status, _, body) = post(&replica, request.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["cache"], "miss");
    let reused = body["cost"]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == "generate")
        .unwrap_or_else(|| panic!("no generate stage: {body}"));
    assert_eq!(reused["detail"]["reused"], "rendered files", "{body}");
    assert_eq!(ledger.paid_generations(key).await.unwrap(), 1);
    let (status, _, body) = post(&replica, request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["cache"], "hit");
    ledger.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_one_store_and_ledger_act_as_one() {
    let garage = start_garage();
    let schema = TestSchema::create().await;
    let options = || ReplicaOptions::new(&garage, Some(schema.url()));
    let a = Replica::new(options());
    let b = Replica::new(options());

    // Generated through A, a hit through B.
    let (status, _, first) = post(&a, serde_json::json!({"prompt": "a red kite"})).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["cache"], "miss");
    let (status, _, second) = post(&b, serde_json::json!({"prompt": "a red kite"})).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["cache"], "hit");
    assert_eq!(second["id"], first["id"]);

    // 16 concurrent identical requests spread over both: one generation between them.
    let body = serde_json::json!({"prompt": "a blue heron", "seed": 7});
    let calls = (0..16).map(|i| {
        let target = if i % 2 == 0 { &a } else { &b };
        post(target, body.clone())
    });
    let answers = futures::future::join_all(calls).await;
    let mut misses = 0;
    let mut ids = std::collections::BTreeSet::new();
    for (status, _, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        ids.insert(body["id"].as_str().unwrap().to_string());
        if body["cache"] == "miss" {
            misses += 1;
        }
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(misses, 1, "exactly one replica generates");
    let id = ids.into_iter().next().unwrap();
    assert_eq!(generations(schema.url(), &id).await, 1);
    assert_eq!(
        generations(schema.url(), first["id"].as_str().unwrap()).await,
        1
    );

    // Either replica's cost report covers both: 2 + 16 requests.
    for replica in [&a, &b] {
        let report = support::get_json(replica.url("/v1/costs")).await;
        assert_eq!(report["total"]["requests"], 18, "{report}");
    }
    drop((a, b));
    schema.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crashed_lease_holder_does_not_block_its_key() {
    let garage = start_garage();
    let schema = TestSchema::create().await;
    // A generates slowly and dies holding the lease; B takes over once it expires.
    let mut a = Replica::new(ReplicaOptions {
        latency_ms: 30_000,
        lease_ttl_secs: 2,
        ..ReplicaOptions::new(&garage, Some(schema.url()))
    });
    let b = Replica::new(ReplicaOptions {
        latency_ms: 20,
        lease_ttl_secs: 2,
        ..ReplicaOptions::new(&garage, Some(schema.url()))
    });
    let body = serde_json::json!({"prompt": "an abandoned mill"});
    let a_url = a.url("/v1/images");
    let stuck = tokio::spawn({
        let body = body.clone();
        async move { client().post(a_url).json(&body).send().await }
    });
    // A holds the lease once its generation started.
    let ledger = imagegate_ledger::Ledger::open(&imagegate_ledger::LedgerConfig {
        url: schema.url().to_string(),
    })
    .await
    .unwrap();
    let estimate = support::post_json(b.url("/v1/estimate"), &body).await;
    let key: imagegate_core::ContentKey = estimate["id"].as_str().unwrap().parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while ledger
        .try_acquire_lease(key, "probe", Duration::from_secs(60))
        .await
        .unwrap()
    {
        // Taken by the probe, not by A yet: give it back and look again.
        ledger.release_lease(key, "probe").await.unwrap();
        assert!(
            std::time::Instant::now() < deadline,
            "A never took the lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.crash();
    assert!(stuck.await.unwrap().is_err(), "A died mid-request");

    let (status, _, answer) = post(&b, body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["cache"], "miss");
    assert_eq!(generations(schema.url(), &key.to_hex()).await, 1);
    ledger.close().await;
    drop(b);
    schema.drop_schema().await;
}

/// Two replicas on one PostgreSQL ledger, one daily budget with room for two misses
/// (each reserves $0.0025 and spends about $0.00205), 24 concurrent misses spread
/// over both: the budget holds for the fleet, not per replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_never_spend_past_one_budget() {
    let garage = start_garage();
    let schema = TestSchema::create().await;
    let budget = 0.0065;
    let options = || ReplicaOptions {
        daily_budget_usd: Some(budget),
        ..ReplicaOptions::new(&garage, Some(schema.url()))
    };
    let a = Replica::new(options());
    let b = Replica::new(options());
    let calls = (0..24).map(|i| {
        let target = if i % 2 == 0 { &a } else { &b };
        post(
            target,
            serde_json::json!({"prompt": format!("fleet budget {i}"), "variants": [256], "formats": ["jpeg"]}),
        )
    });
    let answers = futures::future::join_all(calls).await;
    let served = answers.iter().filter(|(s, _, _)| *s == 200).count();
    for (status, _, body) in &answers {
        assert!(
            *status == 200 || (*status == 402 && body["error"]["code"] == "budget_exhausted"),
            "{status} {body}"
        );
    }
    assert!(served >= 2, "{answers:?}");
    let ledger = imagegate_ledger::Ledger::open(&imagegate_ledger::LedgerConfig {
        url: schema.url().to_string(),
    })
    .await
    .unwrap();
    let spent = ledger
        .spent_since(None, chrono::Utc::now() - chrono::Duration::days(1))
        .await
        .unwrap();
    ledger.close().await;
    assert!(
        spent.as_usd() <= budget,
        "{served} served for {spent} of a ${budget} budget"
    );
    drop((a, b));
    schema.drop_schema().await;
}

/// A rate of 6 a minute with bursts of 3, asked of two replicas at once: the fleet
/// admits 3, not 3 per replica; the rest answer 429 with a wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_hold_one_rate_limit() {
    let garage = start_garage();
    let schema = TestSchema::create().await;
    let options = || ReplicaOptions {
        latency_ms: 0,
        rate: Some((6, 3)),
        ..ReplicaOptions::new(&garage, Some(schema.url()))
    };
    let a = Replica::new(options());
    let b = Replica::new(options());
    let calls = (0..10).map(|i| {
        let target = if i % 2 == 0 { &a } else { &b };
        async move {
            let r = client()
                .post(target.url("/v1/estimate"))
                .json(&serde_json::json!({"prompt": "a quiet harbour"}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            (status, retry_after)
        }
    });
    let answers = futures::future::join_all(calls).await;
    let admitted = answers.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(admitted, 3, "{answers:?}");
    for (status, retry_after) in &answers {
        assert!(*status == 200 || *status == 429, "{answers:?}");
        if *status == 429 {
            let wait: u64 = retry_after.as_deref().unwrap().parse().unwrap();
            assert!((1..=20).contains(&wait), "Retry-After {wait}");
        }
    }
    drop((a, b));
    schema.drop_schema().await;
}
