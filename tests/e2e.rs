//! End to end: the real `imagegate` binary on an ephemeral port with the embedded
//! defaults (local provider, local store, SQLite ledger, real ONNX classifier),
//! driven over HTTP like a user would.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support;
use support::{client, free_port, repo_root, Server};

struct Options {
    latency_ms: u64,
    generations: usize,
    generation_queue: usize,
    blur_at: f32,
    block_at: f32,
    model: Option<PathBuf>,
    daily_budget_usd: Option<f64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            latency_ms: 50,
            generations: 16,
            generation_queue: 256,
            blur_at: 0.2,
            block_at: 0.8,
            model: None,
            daily_budget_usd: None,
        }
    }
}

/// A data directory and a configuration that outlive server restarts.
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new(opts: Options) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let data = dir.path().join("data");
        let config = format!(
            r#"
pricing = "{pricing}"

[server]
listen = "127.0.0.1:{port}"
max_body_bytes = 16384

[concurrency]
cpu_workers = 2
generations = {generations}
generation_queue = {generation_queue}

[limits]
max_prompt_chars = 500

[[providers]]
kind = "local"
latency_ms = {latency}

[storage]
kind = "local"
root = "{data}/objects"
public_base_url = "http://127.0.0.1:{port}/cdn"

[ledger]
url = "sqlite://{data}/ledger.db"
{safety}
[profiles.default]
variants = [256, 512, 768]
formats = ["avif", "jpeg"]
avif = {{ quality = 60, speed = 9 }}
safety = {{ blur_at = {blur_at}, block_at = {block_at} }}
watermark = {{ mark = {{ text = {{ text = "imagegate" }} }}, opacity = 0.6, scale = 0.25 }}
{budgets}
"#,
            generations = opts.generations,
            generation_queue = opts.generation_queue,
            latency = opts.latency_ms,
            data = data.display(),
            safety = support::safety_section(opts.model.as_deref()),
            pricing = repo_root().join("config/pricing.toml").display(),
            budgets = opts
                .daily_budget_usd
                .map(|usd| format!("[budgets]\nprocessing_reserve_usd = 0.0005\n[budgets.default]\ndaily_usd = {usd}\n"))
                .unwrap_or_default(),
            blur_at = opts.blur_at,
            block_at = opts.block_at,
        );
        std::fs::write(dir.path().join("imagegate.toml"), config).unwrap();
        Site { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("imagegate.toml")
    }

    fn objects(&self) -> PathBuf {
        self.dir.path().join("data/objects")
    }

    fn start(&self) -> Server {
        support::serve_config(&self.config(), &[])
    }

    async fn ledger(&self) -> imagegate_ledger::Ledger {
        imagegate_ledger::Ledger::open(&imagegate_ledger::LedgerConfig {
            url: format!("sqlite://{}/data/ledger.db", self.dir.path().display()),
        })
        .await
        .unwrap()
    }

    async fn generations(&self, id: &str) -> i64 {
        let ledger = self.ledger().await;
        let n = ledger
            .stage_count(id.parse().unwrap(), imagegate_core::Stage::Generate)
            .await
            .unwrap();
        ledger.close().await;
        n
    }
}

async fn post(server: &Server, body: serde_json::Value) -> (u16, serde_json::Value) {
    let r = client()
        .post(server.url("/v1/images"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// Decodes an AVIF with libavif's own tool (an independent decoder), returning its size.
fn avif_dimensions(bytes: &[u8]) -> (u32, u32) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("in.avif");
    let out = dir.path().join("out.png");
    std::fs::write(&src, bytes).unwrap();
    let status = Command::new("avifdec")
        .arg(&src)
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .expect(
            "avifdec (Debian libavif-bin) is needed to check AVIF output: run scripts/setup/test.sh",
        );
    assert!(status.success(), "avifdec could not decode our AVIF");
    let png = image::open(&out).unwrap();
    (png.width(), png.height())
}

fn stage_names(cost: &serde_json::Value) -> Vec<String> {
    cost["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap().to_string())
        .collect()
}

fn assert_total_is_sum(cost: &serde_json::Value) {
    let sum: f64 = cost["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["usd"].as_f64().unwrap())
        .sum();
    let total = cost["total_usd"].as_f64().unwrap();
    assert!(
        (sum - total).abs() < 1e-9,
        "total {total} != sum of stages {sum}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_request_then_hit_then_hit_after_restart() {
    let site = Site::new(Options::default());
    let server = site.start();
    let body = serde_json::json!({"prompt": "a lighthouse at dusk, watercolor", "seed": 42});
    let (status, miss) = post(&server, body.clone()).await;
    assert_eq!(status, 200, "{miss}");
    assert_eq!(miss["cache"], "miss");
    assert_eq!(miss["status"], "ok");
    assert_eq!(miss["provider"], "local");
    assert_eq!(miss["model"], "procedural-v1");
    let id = miss["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 64);
    assert_eq!(miss["safety"]["action"], "allow");
    assert!(miss["safety"]["nsfw_score"].as_f64().unwrap() < 0.2);
    assert_eq!(
        stage_names(&miss["cost"]),
        [
            "generate",
            "decode",
            "safety",
            "resize",
            "watermark",
            // The invisible watermark (before encode), then Content Credentials.
            "provenance",
            "encode",
            "provenance",
            "upload"
        ]
    );
    assert_eq!(miss["cost"]["stages"][0]["usd"].as_f64().unwrap(), 0.002);
    assert_total_is_sum(&miss["cost"]);

    let images = miss["images"].as_array().unwrap();
    assert_eq!(images.len(), 6);
    for img in images {
        let (w, h) = (
            img["width"].as_u64().unwrap() as u32,
            img["height"].as_u64().unwrap() as u32,
        );
        assert!([256, 512, 768].contains(&w) && w == h, "{img}");
        let url = img["url"].as_str().unwrap();
        assert!(url.starts_with(&server.url("/cdn/i/")), "{url}");
        let r = client().get(url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let headers = r.headers().clone();
        assert_eq!(
            headers["cache-control"],
            "public, max-age=31536000, immutable"
        );
        let etag = headers["etag"].to_str().unwrap().to_string();
        let bytes = r.bytes().await.unwrap();
        assert_eq!(bytes.len() as u64, img["bytes"].as_u64().unwrap());
        match img["format"].as_str().unwrap() {
            "avif" => {
                assert_eq!(headers["content-type"], "image/avif");
                assert_eq!(avif_dimensions(&bytes), (w, h));
            }
            "jpeg" => {
                assert_eq!(headers["content-type"], "image/jpeg");
                let decoded =
                    image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg).unwrap();
                assert_eq!((decoded.width(), decoded.height()), (w, h));
            }
            other => panic!("unexpected format {other}"),
        }
        let revalidated = client()
            .get(url)
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(revalidated.status(), 304);
    }
    let srcset = miss["srcset"]["avif"].as_str().unwrap();
    assert!(
        srcset.contains(" 256w") && srcset.contains(" 768w"),
        "{srcset}"
    );

    // Same request spelled differently: a hit with the same id and URLs.
    let respelled =
        serde_json::json!({"prompt": "  a lighthouse   at dusk,\twatercolor ", "seed": 42});
    let (status, hit) = post(&server, respelled).await;
    assert_eq!(status, 200);
    assert_eq!(hit["cache"], "hit");
    assert_eq!(hit["id"], miss["id"]);
    assert_eq!(hit["images"], miss["images"]);
    assert_eq!(stage_names(&hit["cost"]), ["cache"]);
    assert!(hit["cost"]["total_usd"].as_f64().unwrap() < 0.00001);

    // The original cost stays readable.
    let manifest = support::get_json(server.url(&format!("/v1/images/{id}"))).await;
    assert_eq!(manifest["cost"]["total_usd"], miss["cost"]["total_usd"]);
    assert_eq!(manifest["images"], miss["images"]);

    server.stop();
    let server = site.start();
    let (status, after_restart) = post(&server, body).await;
    assert_eq!(status, 200);
    assert_eq!(after_restart["cache"], "hit");
    assert_eq!(
        after_restart["cost"]["stages"][0]["detail"]["tier"],
        "store"
    );
    assert_eq!(after_restart["images"], miss["images"]);
    assert_eq!(site.generations(&id).await, 1);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_identical_requests_cause_one_generation() {
    let site = Site::new(Options {
        latency_ms: 500,
        ..Options::default()
    });
    let server = site.start();
    let body = serde_json::json!({"prompt": "thirty-two callers, one painting", "variants": [256]});
    let answers = futures::future::join_all((0..32).map(|_| post(&server, body.clone()))).await;
    let mut misses = 0;
    for (status, answer) in &answers {
        assert_eq!(*status, 200, "{answer}");
        assert_eq!(answer["id"], answers[0].1["id"]);
        if answer["cache"] == "miss" {
            misses += 1;
        } else {
            assert_eq!(answer["cache"], "hit");
        }
    }
    assert_eq!(misses, 1, "exactly one caller runs the generation");
    assert_eq!(
        site.generations(answers[0].1["id"].as_str().unwrap()).await,
        1
    );
    server.stop();
}

/// The key id of a request body, from `/v1/estimate` (which spends nothing).
async fn key_of(server: &Server, body: &serde_json::Value) -> String {
    let estimate = support::post_json(server.url("/v1/estimate"), body).await;
    estimate["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callers_who_leave_mid_generation_cause_one_generation_and_the_next_request_hits() {
    let site = Site::new(Options {
        latency_ms: 1500,
        ..Options::default()
    });
    let server = site.start();
    let body = serde_json::json!({"prompt": "a kite over the dunes", "variants": [256]});
    let id = key_of(&server, &body).await;
    // The first caller gives up 300 ms in, three more who joined it too: the
    // generation (paid once) goes on without any of them.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let first = impatient
        .post(server.url("/v1/images"))
        .header("x-request-id", "the-first-caller")
        .json(&body)
        .send()
        .await;
    assert!(first.is_err(), "the generation takes 1.5 s: {first:?}");
    let joined = futures::future::join_all(
        (0..3).map(|_| impatient.post(server.url("/v1/images")).json(&body).send()),
    )
    .await;
    assert!(joined.iter().all(Result::is_err));
    // Nobody waits; the key is published all the same.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let published = client()
            .get(server.url(&format!("/v1/images/{id}")))
            .send()
            .await
            .unwrap()
            .status();
        if published == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never published");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, answer) = post(&server, body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["cache"], "hit");
    let ledger = site.ledger().await;
    assert_eq!(
        ledger.paid_generations(id.parse().unwrap()).await.unwrap(),
        1,
        "the provider was paid once"
    );
    // The miss is booked to the caller who started it, though it left.
    let rows = ledger.request_rows("the-first-caller").await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].cache, imagegate_ledger::CacheOutcome::Miss);
    assert_eq!(rows[0].status, imagegate_ledger::RequestStatus::Ok);
    assert!(rows[0].micros.0 >= 2_000, "{rows:?}");
    ledger.close().await;
    server.stop();
}

/// kill -9 while 64 misses are in flight: every answer that reported a cost has its
/// ledger row, every published key has all of its files, and paid work that had not
/// finished is in the ledger as in progress (its charge), not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_64_concurrent_misses_loses_nothing_acknowledged() {
    let site = Site::new(Options {
        latency_ms: 100,
        ..Options::default()
    });
    let server = site.start();
    let answered = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let requests: Vec<_> = (0..64)
        .map(|i| {
            let url = server.url("/v1/images");
            let answered = answered.clone();
            tokio::spawn(async move {
                let request_id = format!("kill-9-{i}");
                let r = client()
                    .post(url)
                    .header("x-request-id", &request_id)
                    .json(&serde_json::json!({"prompt": format!("crash test {i}"), "variants": [256]}))
                    .send()
                    .await;
                if let Ok(r) = r {
                    if r.status() == 200 {
                        if let Ok(body) = r.json::<serde_json::Value>().await {
                            answered.lock().unwrap().push((request_id, body));
                        }
                    }
                }
            })
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while answered.lock().unwrap().len() < 8 {
        assert!(std::time::Instant::now() < deadline, "nothing was answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill();
    for r in requests {
        let _ = r.await;
    }
    let answered = answered.lock().unwrap().clone();
    let ledger = site.ledger().await;
    for (request_id, body) in &answered {
        let rows = ledger.request_rows(request_id).await.unwrap();
        assert_eq!(rows.len(), 1, "{request_id}: {rows:?}");
        let reported = total_micros(body);
        assert_eq!(rows[0].micros.0, reported, "{request_id}: {body}");
        assert_eq!(rows[0].status, imagegate_ledger::RequestStatus::Ok);
    }
    // No half-published key: a manifest exists only with every file it lists.
    let mut published = 0;
    for path in walk(&site.objects()) {
        if path.file_name().is_some_and(|n| n == "manifest.json") {
            published += 1;
            let manifest: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            for image in manifest["images"].as_array().unwrap() {
                let file = site.objects().join(image["object"].as_str().unwrap());
                assert!(
                    file.is_file(),
                    "{} lists a missing {}",
                    path.display(),
                    file.display()
                );
            }
        }
    }
    assert!(
        published >= answered.len(),
        "{published} published, {} answered",
        answered.len()
    );
    // Paid and unfinished: charged, in progress; the next start leaves young ones be.
    let stats: Vec<imagegate_ledger::RequestRow> = {
        let mut rows = Vec::new();
        for i in 0..64 {
            rows.extend(ledger.request_rows(&format!("kill-9-{i}")).await.unwrap());
        }
        rows
    };
    let in_progress = stats
        .iter()
        .filter(|r| r.status == imagegate_ledger::RequestStatus::InProgress)
        .count();
    eprintln!(
        "kill -9 under 64 misses: {} answered, {published} published, {in_progress} paid and in progress, {} rows",
        answered.len(),
        stats.len()
    );
    assert!(stats.iter().all(|r| r.micros.0 > 0), "{stats:?}");
    ledger.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_get_clear_json_errors_and_change_nothing() {
    let site = Site::new(Options::default());
    let server = site.start();
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        (
            "not json",
            client()
                .post(server.url("/v1/images"))
                .header("content-type", "application/json")
                .body("{"),
            400,
            "invalid_json",
        ),
        (
            "no prompt",
            client()
                .post(server.url("/v1/images"))
                .json(&serde_json::json!({"seed": 1})),
            400,
            "invalid_json",
        ),
        (
            "unknown field",
            client()
                .post(server.url("/v1/images"))
                .json(&serde_json::json!({"prompt": "x", "colour": 1})),
            400,
            "invalid_json",
        ),
        (
            "wrong type",
            client()
                .post(server.url("/v1/images"))
                .json(&serde_json::json!({"prompt": 5})),
            400,
            "invalid_json",
        ),
        (
            "empty prompt",
            client()
                .post(server.url("/v1/images"))
                .json(&serde_json::json!({"prompt": " \t "})),
            400,
            "invalid_request",
        ),
        (
            "long prompt",
            client()
                .post(server.url("/v1/images"))
                .json(&serde_json::json!({"prompt": "a".repeat(501)})),
            400,
            "invalid_request",
        ),
        (
            "bad size",
            client()
                .post(server.url("/v1/images"))
                .json(&serde_json::json!({"prompt": "x", "size": "big"})),
            400,
            "invalid_request",
        ),
        (
            "huge size",
            client()
                .post(server.url("/v1/images"))
                .json(&serde_json::json!({"prompt": "x", "size": "100000x100000"})),
            400,
            "invalid_request",
        ),
        (
            "bad model",
            client()
                .post(server.url("/v1/images"))
                .json(&serde_json::json!({"prompt": "x", "model": "ultra"})),
            400,
            "invalid_request",
        ),
        (
            "unknown model",
            client()
                .post(server.url("/v1/images"))
                .json(&serde_json::json!({"prompt": "x", "model": "openai/dall-e-3"})),
            400,
            "no_provider",
        ),
        (
            "bad format",
            client()
                .post(server.url("/v1/images"))
                .json(&serde_json::json!({"prompt": "x", "formats": ["gif"]})),
            400,
            "invalid_json",
        ),
        (
            "too many variants",
            client()
                .post(server.url("/v1/images"))
                .json(&serde_json::json!({"prompt": "x", "variants": [1,2,3,4,5,6,7,8,9]})),
            400,
            "invalid_request",
        ),
        (
            "tiny variant",
            client()
                .post(server.url("/v1/images"))
                .json(&serde_json::json!({"prompt": "x", "variants": [4]})),
            400,
            "invalid_request",
        ),
        (
            "unknown profile",
            client()
                .post(server.url("/v1/images"))
                .json(&serde_json::json!({"prompt": "x", "profile": "nope"})),
            400,
            "unknown_profile",
        ),
        (
            "bad policy",
            client()
                .post(server.url("/v1/images"))
                .json(&serde_json::json!({"prompt": "x", "policy": "random"})),
            400,
            "invalid_request",
        ),
        (
            "negative budget",
            client()
                .post(server.url("/v1/images"))
                .json(&serde_json::json!({"prompt": "x", "max_cost_usd": -1})),
            400,
            "invalid_request",
        ),
        (
            "budget too small",
            client()
                .post(server.url("/v1/images"))
                .json(&serde_json::json!({"prompt": "x", "max_cost_usd": 0.001})),
            402,
            "cost_limit_exceeded",
        ),
        (
            "deny-listed prompt",
            client()
                .post(server.url("/v1/images"))
                .json(&serde_json::json!({"prompt": "a ForbiddenWord here"})),
            422,
            "prompt_blocked",
        ),
        (
            "body too large",
            client()
                .post(server.url("/v1/images"))
                .json(&serde_json::json!({"prompt": "x".repeat(20_000)})),
            413,
            "payload_too_large",
        ),
        (
            "not json content type",
            client().post(server.url("/v1/images")).body("prompt=x"),
            415,
            "unsupported_media_type",
        ),
        (
            "bad id",
            client().get(server.url("/v1/images/zzz")),
            400,
            "invalid_id",
        ),
        (
            "unknown id",
            client().get(server.url(&format!("/v1/images/{}", "ab".repeat(32)))),
            404,
            "not_found",
        ),
        (
            "unknown route",
            client().get(server.url("/v2/whatever")),
            404,
            "not_found",
        ),
        (
            "wrong method",
            client().get(server.url("/v1/images")),
            405,
            "method_not_allowed",
        ),
        (
            "cdn escape",
            client().get(server.url("/cdn/../ledger.db")),
            404,
            "not_found",
        ),
        (
            "cdn temp dir",
            client().get(server.url("/cdn/.tmp/x")),
            404,
            "not_found",
        ),
    ];
    for (name, request, status, code) in cases {
        let r = request.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{name}");
        let body: serde_json::Value = r
            .json()
            .await
            .unwrap_or_else(|e| panic!("{name}: body is not JSON: {e}"));
        assert_eq!(body["error"]["code"], code, "{name}: {body}");
        assert!(
            !body["error"]["message"].as_str().unwrap().is_empty(),
            "{name}"
        );
    }
    // Nothing was generated, paid for or stored by any of them (the deny-listed prompt
    // included: it never reached the provider).
    let ledger = site.ledger().await;
    assert_eq!(ledger.stage_totals().await.unwrap(), vec![]);
    ledger.close().await;
    let stored: Vec<_> = walk(&site.objects())
        .into_iter()
        .filter(|p| !p.starts_with(site.objects().join(".tmp")))
        .collect();
    assert!(stored.is_empty(), "bad requests stored {stored:?}");

    let health = client().get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = client().get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let metrics = client()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("imagegate_prompts_blocked_total"),
        "{metrics}"
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cdn_serves_image_files_and_never_a_manifest() {
    let site = Site::new(Options::default());
    let server = site.start();
    let (status, miss) = post(&server, serde_json::json!({"prompt": "a quiet pier"})).await;
    assert_eq!(status, 200, "{miss}");
    let id = miss["id"].as_str().unwrap().to_string();
    let key = format!("i/{}/{id}/manifest.json", &id[..2]);
    let cdn_status = |path: String| {
        let url = server.url(&format!("/cdn/{path}"));
        async move { client().get(url).send().await.unwrap().status().as_u16() }
    };
    // The manifest (costs, the routing decision, provider errors) is kept apart from
    // the published files, and `/cdn/` answers neither place.
    assert!(site.objects().join(".private").join(&key).is_file());
    assert!(!site.objects().join(&key).exists());
    assert_eq!(cdn_status(key.clone()).await, 404);
    assert_eq!(cdn_status(format!(".private/{key}")).await, 404);
    let image = miss["images"][0]["url"].as_str().unwrap();
    assert_eq!(client().get(image).send().await.unwrap().status(), 200);

    // A manifest an older release published beside the images: still a hit from the
    // store tier after a restart, still not served.
    server.stop();
    std::fs::rename(
        site.objects().join(".private").join(&key),
        site.objects().join(&key),
    )
    .unwrap();
    let server = site.start();
    let url = server.url(&format!("/cdn/{key}"));
    assert_eq!(client().get(url).send().await.unwrap().status(), 404);
    let (status, hit) = post(&server, serde_json::json!({"prompt": "a quiet pier"})).await;
    assert_eq!(status, 200, "{hit}");
    assert_eq!(hit["cache"], "hit");
    assert_eq!(hit["cost"]["stages"][0]["detail"]["tier"], "store");
    assert_eq!(site.generations(&id).await, 1);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_generation_queue_answers_503_with_retry_after() {
    let site = Site::new(Options {
        latency_ms: 3000,
        generations: 1,
        generation_queue: 0,
        ..Options::default()
    });
    let server = site.start();
    let url = server.url("/v1/images");
    let answers = futures::future::join_all((0..3).map(|i| {
        let url = url.clone();
        async move {
        let r = client()
            .post(url)
            .json(&serde_json::json!({"prompt": format!("distinct prompt {i}"), "variants": [256], "formats": ["jpeg"]}))
            .send()
            .await
            .unwrap();
        let retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
        (r.status().as_u16(), retry_after, r.json::<serde_json::Value>().await.unwrap())
    }}))
    .await;
    let ok = answers.iter().filter(|(s, _, _)| *s == 200).count();
    let refused: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 503).collect();
    assert_eq!(ok, 1, "{answers:?}");
    assert_eq!(refused.len(), 2, "{answers:?}");
    for (_, retry_after, body) in refused {
        assert!(retry_after
            .as_deref()
            .is_some_and(|v| v.parse::<u64>().unwrap() >= 1));
        assert_eq!(body["error"]["code"], "overloaded");
    }
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blocked_images_store_nothing_and_the_verdict_is_cached() {
    // Thresholds of zero block everything the classifier sees.
    let site = Site::new(Options {
        block_at: 0.0,
        ..Options::default()
    });
    let server = site.start();
    let body = serde_json::json!({"prompt": "anything at all"});
    let (status, first) = post(&server, body.clone()).await;
    assert_eq!(status, 422, "{first}");
    assert_eq!(first["error"]["code"], "content_blocked");
    assert_eq!(first["safety"]["action"], "block");
    assert!(stage_names(&first["cost"]).contains(&"generate".to_string()));
    let (status, second) = post(&server, body).await;
    assert_eq!(status, 422);
    assert_eq!(second["cache"], "hit");
    assert_eq!(site.generations(first["id"].as_str().unwrap()).await, 1);
    let images: Vec<_> = walk(&site.objects())
        .into_iter()
        .filter(|p| !p.ends_with("manifest.json"))
        .collect();
    assert!(
        images
            .iter()
            .all(|p| p.starts_with(site.objects().join(".tmp"))),
        "{images:?}"
    );
    server.stop();
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A PNG whose header claims 100000x100000 pixels but which is a few bytes long.
fn decompression_bomb_png() -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend(data);
        out.extend(&body);
        out.extend(crc32(&body).to_be_bytes());
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend(100_000u32.to_be_bytes());
    ihdr.extend(100_000u32.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    chunk(&mut png, b"IHDR", &ihdr);
    // A stored (uncompressed) zlib stream of a few zero bytes.
    chunk(
        &mut png,
        b"IDAT",
        &[
            0x78, 0x01, 0x01, 0x04, 0x00, 0xFB, 0xFF, 0, 0, 0, 0, 0x00, 0x04, 0x00, 0x01,
        ],
    );
    chunk(&mut png, b"IEND", &[]);
    png
}

#[test]
fn process_refuses_a_decompression_bomb_and_stores_nothing() {
    let site = Site::new(Options::default());
    let bomb = site.dir.path().join("bomb.png");
    std::fs::write(&bomb, decompression_bomb_png()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_imagegate"))
        .arg("--config")
        .arg(site.config())
        .arg("process")
        .arg(&bomb)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("100000x100000") && stderr.contains("limit"),
        "{stderr}"
    );
    let stored: Vec<_> = walk(&site.objects()).into_iter().collect();
    assert!(stored.is_empty(), "a refused image stored {stored:?}");
}

#[test]
fn process_renders_an_image_the_user_has() {
    let site = Site::new(Options::default());
    let src = site.dir.path().join("photo.png");
    let mut img = image::RgbImage::new(640, 480);
    for (x, y, p) in img.enumerate_pixels_mut() {
        *p = image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8]);
    }
    img.save(&src).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_imagegate"))
        .arg("--config")
        .arg(site.config())
        .arg("process")
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["cache"], "miss");
    assert_eq!(body["provider"], "source");
    // 768 is wider than the source: never upscaled, so 256, 512 and the 640 original.
    let widths: Vec<u64> = body["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["width"].as_u64().unwrap())
        .collect();
    assert_eq!(widths, [256, 256, 512, 512, 640, 640]);
    for img in body["images"].as_array().unwrap() {
        let path = site
            .objects()
            .join(img["url"].as_str().unwrap().split("/cdn/").nth(1).unwrap());
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            img["bytes"].as_u64().unwrap()
        );
    }
    assert!(!stage_names(&body["cost"]).contains(&"generate".to_string()));
}

/// Mean absolute difference between horizontally adjacent pixels: detail left in a picture.
fn detail(img: &image::RgbImage) -> f64 {
    let mut sum = 0u64;
    for y in 0..img.height() {
        for x in 1..img.width() {
            let (a, b) = (img.get_pixel(x - 1, y), img.get_pixel(x, y));
            sum += (0..3).map(|c| u64::from(a[c].abs_diff(b[c]))).sum::<u64>();
        }
    }
    sum as f64 / f64::from(img.width() * img.height())
}

async fn jpeg_768(server: &Server, prompt: &str) -> (serde_json::Value, image::RgbImage) {
    let (status, body) = post(
        server,
        serde_json::json!({"prompt": prompt, "variants": [768], "formats": ["jpeg"]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let url = body["images"][0]["url"].as_str().unwrap().to_string();
    let bytes = client()
        .get(url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    (body, image::load_from_memory(&bytes).unwrap().to_rgb8())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blur_verdicts_deliver_a_strongly_blurred_image() {
    let plain_site = Site::new(Options::default());
    let blur_site = Site::new(Options {
        blur_at: 0.0,
        block_at: 1.0,
        ..Options::default()
    });
    let (plain, blurred) = (plain_site.start(), blur_site.start());
    let prompt = "a busy market street full of detail";
    let (plain_body, plain_img) = jpeg_768(&plain, prompt).await;
    let (blur_body, blur_img) = jpeg_768(&blurred, prompt).await;
    assert_eq!(plain_body["safety"]["action"], "allow");
    assert_eq!(blur_body["safety"]["action"], "blur");
    assert_eq!(
        blur_body["safety"]["nsfw_score"],
        plain_body["safety"]["nsfw_score"]
    );
    let (d_plain, d_blur) = (detail(&plain_img), detail(&blur_img));
    assert!(
        d_blur < d_plain / 2.0,
        "blurred detail {d_blur} vs plain {d_plain}"
    );
    plain.stop();
    blurred.stop();
}

#[test]
fn classify_prints_a_score_and_action_per_file() {
    let site = Site::new(Options::default());
    let picture = site.dir.path().join("gradient.png");
    let img = image::RgbImage::from_fn(300, 200, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    img.save(&picture).unwrap();
    let missing = site.dir.path().join("missing.png");
    let out = Command::new(env!("CARGO_BIN_EXE_imagegate"))
        .arg("--config")
        .arg(site.config())
        .args(["classify", "--json"])
        .arg(&picture)
        .arg(&missing)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a file that could not be scored makes the exit status non-zero"
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["action"], "allow");
    assert!(
        lines[0]["nsfw_score"].as_f64().unwrap() < 0.2,
        "{}",
        lines[0]
    );
    assert!(
        lines[1]["error"].as_str().unwrap().contains("missing.png"),
        "{}",
        lines[1]
    );
}

#[test]
fn a_missing_model_stops_start_up_naming_the_file() {
    let absent = PathBuf::from("/nonexistent/models/open-nsfw.onnx");
    let site = Site::new(Options {
        model: Some(absent.clone()),
        ..Options::default()
    });
    let out = Command::new(env!("CARGO_BIN_EXE_imagegate"))
        .arg("--config")
        .arg(site.config())
        .arg("serve")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&absent.display().to_string()), "{stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout).is_empty(),
        "it never listened"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn estimate_shows_candidates_and_spends_nothing() {
    let site = Site::new(Options::default());
    let server = site.start();
    let body = serde_json::json!({"prompt": "what would this cost", "policy": "balanced"});
    let url = server.url("/v1/estimate");
    let estimate = |body: serde_json::Value| {
        let url = url.clone();
        async move {
            let r = client().post(url).json(&body).send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let (status, before) = estimate(body.clone()).await;
    assert_eq!(status, 200, "{before}");
    assert_eq!(before["cached"], false);
    assert_eq!(before["policy"], "balanced");
    assert_eq!(before["chosen"]["provider"], "local");
    assert_eq!(before["chosen"]["model"], "procedural-v1");
    assert_eq!(before["chosen"]["expected_usd"].as_f64().unwrap(), 0.002);
    let ledger = site.ledger().await;
    assert_eq!(
        ledger.stage_totals().await.unwrap(),
        vec![],
        "an estimate records no cost"
    );

    let (status, generated) = post(&server, body.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(generated["id"], before["id"]);
    let decision = &generated["cost"]["stages"][0]["detail"]["decision"];
    assert_eq!(decision["chosen"], "local/procedural-v1", "{decision}");
    let (_, after) = estimate(body).await;
    assert_eq!(after["cached"], true);

    let (status, bad) = estimate(serde_json::json!({"prompt": "x", "policy": "random"})).await;
    assert_eq!(
        (status, bad["error"]["code"].as_str()),
        (400, Some("invalid_request"))
    );
    ledger.close().await;
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_budget_race_never_overspends() {
    // $0.002 per image plus processing: room for two misses, not three.
    let budget = 0.0055;
    let site = Site::new(Options {
        daily_budget_usd: Some(budget),
        latency_ms: 300,
        ..Options::default()
    });
    let server = site.start();
    let answers = futures::future::join_all((0..12).map(|i| {
        let body = serde_json::json!({"prompt": format!("budget race {i}"), "variants": [256], "formats": ["jpeg"]});
        post(&server, body)
    }))
    .await;
    let ok = answers.iter().filter(|(s, _)| *s == 200).count();
    let refused: Vec<_> = answers.iter().filter(|(s, _)| *s == 402).collect();
    assert_eq!(ok + refused.len(), answers.len(), "{answers:?}");
    assert_eq!(ok, 2, "{answers:?}");
    for (_, body) in refused {
        assert_eq!(body["error"]["code"], "budget_exhausted");
    }
    let ledger = site.ledger().await;
    let spent = ledger
        .spent_since(None, chrono::Utc::now() - chrono::Duration::days(1))
        .await
        .unwrap();
    assert!(
        spent.as_usd() <= budget,
        "spent {spent} of a ${budget} budget"
    );
    ledger.close().await;
    // With the budget spent, a hit is still served: it pays no provider fee.
    let paid = answers.iter().position(|(s, _)| *s == 200).unwrap();
    let again = serde_json::json!({"prompt": format!("budget race {paid}"), "variants": [256], "formats": ["jpeg"]});
    let (status, hit) = post(&server, again).await;
    assert_eq!(status, 200, "{hit}");
    assert_eq!(hit["cache"], "hit");
    server.stop();
}

/// Exact micro-dollars of a response's `cost.total_usd` (the API prints micros as USD).
fn total_micros(body: &serde_json::Value) -> i64 {
    (body["cost"]["total_usd"].as_f64().unwrap() * 1e6).round() as i64
}

fn report_cli(site: &Site, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_imagegate"))
        .arg("--config")
        .arg(site.config())
        .arg("report")
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn costs_and_report_sum_exactly_what_responses_charged() {
    let site = Site::new(Options::default());
    let server = site.start();
    let mut charged = 0i64;
    let mut first_miss = None;
    for body in [
        serde_json::json!({"prompt": "a red fox in snow", "seed": 1}),
        serde_json::json!({"prompt": "a red fox in snow", "seed": 1}),
        serde_json::json!({"prompt": "a blue whale, ink", "seed": 2, "variants": [256]}),
    ] {
        let (status, answer) = post(&server, body).await;
        assert_eq!(status, 200, "{answer}");
        charged += total_micros(&answer);
        if answer["cache"] == "miss" {
            first_miss.get_or_insert(total_micros(&answer));
        }
    }
    let costs = |query: &str| {
        let url = server.url(&format!("/v1/costs{query}"));
        async move {
            let r = client().get(url).send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };

    let (status, by_stage) = costs("?group_by=stage").await;
    assert_eq!(status, 200, "{by_stage}");
    assert_eq!(
        by_stage["total"]["micros"].as_i64().unwrap(),
        charged,
        "{by_stage}"
    );
    assert_eq!(by_stage["total"]["requests"], 3);
    let rows_sum: i64 = by_stage["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["micros"].as_i64().unwrap())
        .sum();
    assert_eq!(rows_sum, charged);
    let generate = by_stage["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["stage"] == "generate")
        .expect("a generate row");
    assert_eq!(generate["requests"], 2);
    assert_eq!(by_stage["cache"]["hits"], 1);
    assert_eq!(by_stage["cache"]["misses"], 2);
    assert_eq!(by_stage["cache"]["hit_ratio"].as_f64().unwrap(), 1.0 / 3.0);
    // The one hit is credited with what its key's generation cost in full.
    assert_eq!(
        by_stage["cache"]["saved_micros"].as_i64(),
        first_miss,
        "{by_stage}"
    );

    let (status, by_provider_day) = costs("?group_by=provider,model,day&since=1h").await;
    assert_eq!(status, 200, "{by_provider_day}");
    assert_eq!(
        by_provider_day["total"]["micros"].as_i64().unwrap(),
        charged
    );
    assert_eq!(by_provider_day["rows"][0]["provider"], "local");
    let (_, future) = costs("?since=2100-01-01T00:00:00Z").await;
    assert_eq!(future["total"]["micros"], 0);
    assert_eq!(future["rows"], serde_json::json!([]));

    for (query, code) in [
        ("?group_by=stage,colour", "invalid_group_by"),
        ("?since=yesterday-ish", "invalid_time"),
        ("?since=1h&until=2h", "invalid_time"),
        ("?group=stage", "invalid_query"),
    ] {
        let (status, err) = costs(query).await;
        assert_eq!(
            (status, err["error"]["code"].as_str()),
            (400, Some(code)),
            "{query}: {err}"
        );
    }
    let (_, err) = costs("?group_by=colour").await;
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("stage, provider, model, key, day"),
        "{message}"
    );

    // The CLI reads the same ledger (WAL: fine while the server runs) and agrees.
    let out = report_cli(&site, &["--by", "stage", "--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cli["rows"], by_stage["rows"]);
    assert_eq!(cli["total"], by_stage["total"]);
    assert_eq!(cli["cache"], by_stage["cache"]);

    let out = report_cli(&site, &["--by", "stage,provider", "--since", "7d"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    let total_line = table.lines().find(|l| l.starts_with("TOTAL")).unwrap();
    let usd = format!("{}.{:06}", charged / 1_000_000, charged % 1_000_000);
    assert!(total_line.contains(&usd), "{table}");
    assert!(table.contains("1 hits, 2 misses"), "{table}");

    let out = report_cli(&site, &["--by", "day", "--format", "csv"]);
    let csv = String::from_utf8(out.stdout).unwrap();
    assert!(csv.starts_with("row,day,requests,usd,"), "{csv}");
    assert!(
        csv.lines()
            .last()
            .unwrap()
            .ends_with(&format!(",{charged}")),
        "{csv}"
    );

    let out = report_cli(&site, &["--by", "colour"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected one of stage"));
    server.stop();
}
