//! Deferred generation against the real binary: `POST /v1/images` with `deliver_by`
//! answers 202 with a job planned for the cheapest moment by the price book's surge
//! windows, the job runs then through the same pipeline as a live request (classified,
//! encoded, stored, costed) and the ledger keeps what it cost against what it would
//! have cost live; a published key is answered at once; a live request takes a
//! pending job's generation over; and accepted jobs survive a kill -9.

use crate::support;

use chrono::{DateTime, Duration as Span, Timelike, Utc};
use std::path::Path;
use std::time::{Duration, Instant};
use support::{client, get_json, Site};

/// The local provider, the real classifier, a copy of the shipped price book with
/// `surge` appended, and a worker that looks for due jobs ten times a second.
pub(crate) fn config(dir: &Path, surge: &str) -> String {
    let book = dir.join("pricing.toml");
    let shipped = std::fs::read_to_string(support::repo_root().join("config/pricing.toml"));
    std::fs::write(&book, format!("{}\n{surge}\n", shipped.unwrap())).unwrap();
    let data = dir.join("data");
    let models = support::models_dir();
    format!(
        r#"
pricing = "{book}"

[server]
listen = "127.0.0.1:0"

[concurrency]
cpu_workers = 2

[[providers]]
kind = "local"
latency_ms = 5

[storage]
kind = "local"
root = "{data}/objects"

[ledger]
url = "sqlite://{data}/ledger.db"

[safety]
classifier = true
model = "{models}/open-nsfw.onnx"
runtime_library = "{models}/libonnxruntime.so.1.31.1"

[profiles.default]
variants = [64, 128]
formats = ["avif", "jpeg"]
avif = {{ quality = 60, speed = 9 }}

[deferred]
poll_ms = 100
lease_secs = 3
"#,
        book = book.display(),
        data = data.display(),
        models = models.display(),
    )
}

/// A 3x surge on the local provider from the current minute to the next minute
/// boundary at least 20 s away; returns the book text and when the surge ends.
pub(crate) fn surge_until_next_minute() -> (String, DateTime<Utc>) {
    let now = Utc::now();
    let start = now.with_second(0).unwrap().with_nanosecond(0).unwrap();
    let mut end = start + Span::minutes(1);
    if end - now < Span::seconds(20) {
        end += Span::minutes(1);
    }
    let book = format!(
        "[[surge]]\nprovider = \"local\"\nstart = \"{}\"\nend = \"{}\"\nmultiplier = 3.0\n",
        start.format("%H:%M"),
        end.format("%H:%M")
    );
    (book, end)
}

pub(crate) async fn ledger(site: &Site) -> imagegate_ledger::Ledger {
    imagegate_ledger::Ledger::open(&imagegate_ledger::LedgerConfig {
        url: site.ledger_url(),
    })
    .await
    .unwrap()
}

/// `POST /v1/images`: (status, body, Location).
pub(crate) async fn post_image(
    server: &support::Server,
    body: serde_json::Value,
) -> (u16, serde_json::Value, Option<String>) {
    let r = client()
        .post(server.url("/v1/images"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let location = r
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string());
    (status, r.json().await.unwrap(), location)
}

/// Polls a job until it is final; panics with the job after `limit`.
pub(crate) async fn until_final(
    server: &support::Server,
    id: &str,
    limit: Duration,
) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let job = get_json(server.url(&format!("/v1/jobs/{id}"))).await;
        let status = job["status"].as_str().unwrap_or_else(|| panic!("{job}"));
        if !matches!(status, "queued" | "running") {
            return job;
        }
        assert!(
            started.elapsed() < limit,
            "job still {status} after {limit:?}: {job}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn usd(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deferred_job_waits_out_the_surge_and_costs_what_it_saved() {
    let (surge, surge_ends) = surge_until_next_minute();
    let site = Site::new(|dir| config(dir, &surge));
    let server = site.serve(&[]);

    // Refused like a live request would be, and for a deadline that cannot be kept.
    for (body, code) in [
        (
            serde_json::json!({"prompt": "a kiln", "deliver_by": "tomorrow"}),
            "invalid_request",
        ),
        (
            serde_json::json!({"prompt": "a kiln", "deliver_by": "2020-01-01T00:00:00Z"}),
            "invalid_request",
        ),
        (
            serde_json::json!({"prompt": "a kiln", "deliver_by": "900h"}),
            "invalid_request",
        ),
        (
            serde_json::json!({"prompt": "a kiln", "deliver_by": "1h", "cache": "bypass"}),
            "invalid_request",
        ),
        (
            serde_json::json!({"prompt": "a kiln", "deliver_by": "1h", "size": "big"}),
            "invalid_request",
        ),
    ] {
        let (status, answer, _) = post_image(&server, body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{body}: {answer}");
    }
    let (status, answer, _) = post_image(
        &server,
        serde_json::json!({"prompt": "a kiln", "deliver_by": "tomorrow"}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("deliver_by"),
        "{answer}"
    );

    // Inside the surge: planned for its end, at a third of the live price.
    let lighthouse = serde_json::json!({"prompt": "a lighthouse at dusk", "deliver_by": "1h"});
    let (status, job, location) = post_image(&server, lighthouse.clone()).await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(job["object"], "job");
    assert_eq!(job["status"], "queued");
    assert_eq!(job["status_url"], format!("/v1/jobs/{id}"));
    assert_eq!(location.as_deref(), Some(format!("/v1/jobs/{id}").as_str()));
    let run_after: DateTime<Utc> = job["run_after"].as_str().unwrap().parse().unwrap();
    assert_eq!(run_after, surge_ends, "{job}");
    let live = usd(&job["cost"]["live_provider_usd"]);
    let planned = usd(&job["cost"]["planned_provider_usd"]);
    assert!(close(live, 3.0 * planned) && planned > 0.0, "{job}");
    assert!(job["cost"]["charged_usd"].is_null(), "{job}");

    // The same request again is the same job; the queue lists it.
    let (status, again, _) = post_image(&server, lighthouse.clone()).await;
    assert_eq!(status, 202);
    assert_eq!(again["id"], id.as_str());
    let queued = get_json(server.url("/v1/jobs?status=queued")).await;
    assert_eq!(queued["object"], "list");
    assert_eq!(queued["data"].as_array().unwrap().len(), 1, "{queued}");
    let bad = client()
        .get(server.url("/v1/jobs?status=sleeping"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    // A live request for a key a pending job will make takes it over: made now at
    // the surge price; the job later finds it published and pays no provider.
    let mill = serde_json::json!({"prompt": "a mill by the river", "deliver_by": "1h"});
    let (status, mill_job, _) = post_image(&server, mill).await;
    assert_eq!(status, 202, "{mill_job}");
    let (status, live_mill, _) = post_image(
        &server,
        serde_json::json!({"prompt": "a mill by the river"}),
    )
    .await;
    assert_eq!(status, 200, "{live_mill}");
    assert_eq!(live_mill["cache"], "miss");
    assert_eq!(live_mill["id"], mill_job["image_id"]);

    // Still queued until the surge ends.
    assert!(Utc::now() < surge_ends);
    assert_eq!(
        get_json(server.url(&format!("/v1/jobs/{id}"))).await["status"],
        "queued"
    );

    let limit = (surge_ends - Utc::now()).to_std().unwrap() + Duration::from_secs(30);
    let done = until_final(&server, &id, limit).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let started: DateTime<Utc> = done["started_at"].as_str().unwrap().parse().unwrap();
    assert!(
        started >= surge_ends,
        "started {started}, before the surge ended"
    );
    let cost = &done["cost"];
    assert!(close(usd(&cost["provider_usd"]), planned), "{done}");
    let charged = usd(&cost["charged_usd"]);
    assert!(
        close(usd(&cost["live_equivalent_usd"]), charged - planned + live),
        "{done}"
    );
    assert!(close(usd(&cost["saved_usd"]), live - planned), "{done}");
    // The image is a live one's: classified, encoded, stored, served.
    let image = &done["image"];
    assert_eq!(image["id"], done["image_id"]);
    assert_eq!(image["safety"]["action"], "allow", "{image}");
    let url = image["images"][0]["url"].as_str().unwrap();
    assert_eq!(client().get(url).send().await.unwrap().status(), 200);

    let mill_done = until_final(
        &server,
        mill_job["id"].as_str().unwrap(),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(mill_done["status"], "succeeded", "{mill_done}");
    assert!(
        close(usd(&mill_done["cost"]["provider_usd"]), 0.0),
        "{mill_done}"
    );

    // A deferred request for a published key completes at once, for no provider fee.
    let (status, hit, _) = post_image(&server, lighthouse).await;
    assert_eq!(status, 200, "{hit}");
    assert_eq!(hit["cache"], "hit");
    assert_eq!(hit["id"], done["image_id"]);

    let ledger = ledger(&site).await;
    for key in [&done["image_id"], &mill_job["image_id"]] {
        let key = key.as_str().unwrap().parse().unwrap();
        assert_eq!(ledger.paid_generations(key).await.unwrap(), 1, "{key}");
    }
    let rows = ledger.request_rows(&id).await.unwrap();
    assert_eq!(rows.len(), 1, "the job's one generation: {rows:?}");
    assert_eq!(rows[0].cache, imagegate_ledger::CacheOutcome::Miss);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deadline_inside_the_surge_is_met_at_full_price() {
    // A surge all day: no cheaper moment before any deadline.
    let surge =
        "[[surge]]\nprovider = \"local\"\nstart = \"00:00\"\nend = \"00:00\"\nmultiplier = 2.0\n";
    let site = Site::new(|dir| config(dir, surge));
    let server = site.serve(&[]);
    let (status, job, _) = post_image(
        &server,
        serde_json::json!({"prompt": "a greenhouse", "deliver_by": "2h"}),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let done = until_final(
        &server,
        job["id"].as_str().unwrap(),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let cost = &done["cost"];
    assert!(
        close(usd(&cost["provider_usd"]), usd(&cost["live_provider_usd"])),
        "{done}"
    );
    assert!(close(usd(&cost["saved_usd"]), 0.0), "{done}");
}

/// A kill -9 with accepted jobs pending loses none: after a restart every accepted
/// job completes exactly once and no key is generated twice; one whose deadline
/// passed while the server was down ends `expired`, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn accepted_jobs_survive_kill_9_and_each_completes_once() {
    let site = Site::new(|dir| config(dir, ""));
    // This replica accepts jobs but runs none.
    let accepting = site.serve(&[("IMAGEGATE_DEFERRED__WORKERS", "0")]);
    let mut ids = Vec::new();
    for n in 0..8 {
        let body = serde_json::json!({"prompt": format!("harbour study {n}"), "deliver_by": "1h"});
        let (status, job, _) = post_image(&accepting, body.clone()).await;
        assert_eq!(status, 202, "{job}");
        // Accepted twice, one job.
        let (_, twin, _) = post_image(&accepting, body).await;
        assert_eq!(twin["id"], job["id"]);
        ids.push((
            job["id"].as_str().unwrap().to_string(),
            job["image_id"].clone(),
        ));
    }
    let (status, short, _) = post_image(
        &accepting,
        serde_json::json!({"prompt": "a ferry", "deliver_by": "2s"}),
    )
    .await;
    assert_eq!(status, 202, "{short}");
    let queued = get_json(accepting.url("/v1/jobs?status=queued&limit=50")).await;
    assert_eq!(queued["data"].as_array().unwrap().len(), 9, "{queued}");
    drop(accepting); // SIGKILL
    tokio::time::sleep(Duration::from_secs(3)).await;

    let server = site.serve(&[("IMAGEGATE_DEFERRED__WORKERS", "2")]);
    for (id, _) in &ids {
        let done = until_final(&server, id, Duration::from_secs(120)).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["attempts"], 1, "{done}");
    }
    let expired = until_final(
        &server,
        short["id"].as_str().unwrap(),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(expired["status"], "expired", "{expired}");
    assert_eq!(expired["error"]["code"], "deadline_exceeded", "{expired}");
    let succeeded = get_json(server.url("/v1/jobs?status=succeeded&limit=50")).await;
    assert_eq!(
        succeeded["data"].as_array().unwrap().len(),
        8,
        "{succeeded}"
    );

    let ledger = ledger(&site).await;
    for (id, key) in &ids {
        let key = key.as_str().unwrap().parse().unwrap();
        assert_eq!(ledger.paid_generations(key).await.unwrap(), 1, "{key}");
        assert_eq!(ledger.request_rows(id).await.unwrap().len(), 1, "{id}");
    }
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_sees_only_its_own_jobs_unless_admin() {
    let site = Site::new(|dir| config(dir, ""));
    let create = |name: &str, admin: bool| {
        let mut args = vec!["keys", "create", "--name", name];
        if admin {
            args.push("--admin");
        }
        let out = site.cli(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let (app, other, ops) = (
        create("app", false),
        create("other", false),
        create("ops", true),
    );
    let server = site.serve(&[("IMAGEGATE_DEFERRED__WORKERS", "0")]);
    let submit = |token: String, prompt: &'static str| {
        let url = server.url("/v1/images");
        async move {
            let r = client()
                .post(url)
                .bearer_auth(token)
                .json(&serde_json::json!({"prompt": prompt, "deliver_by": "1h"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
            r.json::<serde_json::Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let mine = submit(app.clone(), "a barn").await;
    // The same request from another key is that key's own job.
    let theirs = submit(other.clone(), "a barn").await;
    assert_ne!(mine, theirs);
    let get = |token: &str, path: &str| {
        client()
            .get(server.url(path))
            .bearer_auth(token.to_string())
            .send()
    };
    let r = get(&app, &format!("/v1/jobs/{mine}")).await.unwrap();
    assert_eq!(r.status(), 200);
    let r = get(&app, &format!("/v1/jobs/{theirs}")).await.unwrap();
    assert_eq!(r.status(), 404, "another key's job is not found");
    let listed: serde_json::Value = get(&app, "/v1/jobs").await.unwrap().json().await.unwrap();
    let listed: Vec<_> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].clone())
        .collect();
    assert_eq!(listed, vec![serde_json::json!(mine)]);
    let all: serde_json::Value = get(&ops, "/v1/jobs").await.unwrap().json().await.unwrap();
    assert_eq!(all["data"].as_array().unwrap().len(), 2, "{all}");
    assert_eq!(
        get(&ops, &format!("/v1/jobs/{theirs}"))
            .await
            .unwrap()
            .status(),
        200
    );
}

/// The official `openai` Python client runs a 20-line image batch unmodified:
/// files.create, batches.create, batches.retrieve until completed, files.content;
/// every line answers with a CDN URL serving its image.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_official_openai_client_runs_a_batch_of_20_images() {
    let site = Site::new(|dir| config(dir, ""));
    let out = site.cli(&["keys", "create", "--name", "batch-client"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let server = site.serve(&[("IMAGEGATE_DEFERRED__WORKERS", "2")]);
    let python = crate::api::python_for_openai_client();
    let script = support::repo_root().join("scripts/openai_batch_check.py");
    let base = server.base.clone();
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .arg(base)
            .arg(token)
            .arg("20")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        run.status.success(),
        "the batch check failed:\n{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(seen["urls"], 20, "{seen}");
    let statuses = seen["statuses"].as_array().unwrap();
    assert_eq!(statuses.last().unwrap(), "completed", "{seen}");
    // Every line is a job of the batch, each generated once.
    let ledger = ledger(&site).await;
    let jobs = ledger
        .jobs(&imagegate_ledger::JobFilter {
            batch: seen["batch"].as_str().map(str::to_string),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(jobs.len(), 20);
    for job in &jobs {
        assert_eq!(job.status, imagegate_ledger::JobStatus::Succeeded);
        assert_eq!(ledger.paid_generations(job.content_key).await.unwrap(), 1);
    }
}

/// A raw multipart upload, as any HTTP client can send one.
fn multipart(purpose: &str, jsonl: &str) -> (String, Vec<u8>) {
    let boundary = "imagegate-test-boundary";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n\
         Content-Type: application/jsonl\r\n\r\n{jsonl}\r\n--{boundary}--\r\n"
    );
    (
        format!("multipart/form-data; boundary={boundary}"),
        body.into_bytes(),
    )
}

async fn upload(server: &support::Server, jsonl: &str) -> serde_json::Value {
    let (ctype, body) = multipart("batch", jsonl);
    let r = client()
        .post(server.url("/v1/files"))
        .header("content-type", ctype)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn line(custom_id: &str, body: serde_json::Value) -> String {
    serde_json::json!({"custom_id": custom_id, "method": "POST", "url": "/v1/images/generations", "body": body}).to_string()
}

/// A malformed file fails the batch whole with `errors`; a refused line is a line of
/// the error file; a cancelled batch cancels the lines not yet run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_validation_errors_and_cancel_move_as_openais_do() {
    let site = Site::new(|dir| config(dir, ""));
    // No worker: lines stay queued until cancelled.
    let server = site.serve(&[("IMAGEGATE_DEFERRED__WORKERS", "0")]);
    let create = |file: String| {
        let url = server.url("/v1/batches");
        async move {
            post_json_status(
                url,
                serde_json::json!({"input_file_id": file, "endpoint": "/v1/images/generations", "completion_window": "24h"}),
            )
            .await
        }
    };

    let bad = upload(
        &server,
        &[
            line("a", serde_json::json!({"prompt": "a bowl"})),
            "not json".to_string(),
            line("a", serde_json::json!({"prompt": "a cup"})),
        ]
        .join("\n"),
    )
    .await;
    assert_eq!(bad["purpose"], "batch");
    let (status, failed) = create(bad["id"].as_str().unwrap().to_string()).await;
    assert_eq!(status, 200, "{failed}");
    assert_eq!(failed["status"], "failed", "{failed}");
    let codes: Vec<_> = failed["errors"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["code"].as_str().unwrap().to_string(),
                e["line"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        codes,
        vec![
            ("invalid_json_line".to_string(), 2),
            ("duplicate_custom_id".to_string(), 3)
        ]
    );

    // Wrong endpoint or window: refused outright.
    let (status, refused) = post_json_status(
        server.url("/v1/batches"),
        serde_json::json!({"input_file_id": bad["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}),
    )
    .await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["param"], "endpoint");

    let good = upload(
        &server,
        &[
            line("ok-1", serde_json::json!({"prompt": "a teapot"})),
            line("ok-2", serde_json::json!({"prompt": "a saucer"})),
            line("two", serde_json::json!({"prompt": "a spoon", "n": 2})),
            line(
                "size",
                serde_json::json!({"prompt": "a fork", "size": "huge"}),
            ),
        ]
        .join("\n"),
    )
    .await;
    let (status, batch) = create(good["id"].as_str().unwrap().to_string()).await;
    assert_eq!(status, 200, "{batch}");
    assert_eq!(batch["status"], "in_progress", "{batch}");
    assert_eq!(batch["request_counts"]["total"], 4);
    assert_eq!(batch["request_counts"]["failed"], 2);
    let id = batch["id"].as_str().unwrap();

    let (status, cancelled) = post_json_status(
        server.url(&format!("/v1/batches/{id}/cancel")),
        serde_json::json!({}),
    )
    .await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    assert!(cancelled["cancelled_at"].is_i64());
    assert!(cancelled["output_file_id"].is_null());
    let errors = client()
        .get(server.url(&format!(
            "/v1/files/{}/content",
            cancelled["error_file_id"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut lines: Vec<serde_json::Value> = errors
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    lines.sort_by_key(|l| l["custom_id"].as_str().unwrap().to_string());
    let summary: Vec<_> = lines
        .iter()
        .map(|l| {
            let code = if l["error"].is_null() {
                l["response"]["body"]["error"]["code"].clone()
            } else {
                l["error"]["code"].clone()
            };
            (
                l["custom_id"].as_str().unwrap().to_string(),
                code.as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("ok-1".to_string(), "batch_cancelled".to_string()),
            ("ok-2".to_string(), "batch_cancelled".to_string()),
            ("size".to_string(), "invalid_request".to_string()),
            ("two".to_string(), "invalid_value".to_string()),
        ],
        "{errors}"
    );
    let (status, again) = post_json_status(
        server.url(&format!("/v1/batches/{id}/cancel")),
        serde_json::json!({}),
    )
    .await;
    assert_eq!(status, 409, "{again}");
    let listed = get_json(server.url("/v1/batches")).await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 2, "{listed}");
}

async fn post_json_status(url: String, body: serde_json::Value) -> (u16, serde_json::Value) {
    let r = client().post(url).json(&body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// OpenAI's Files and Batches API for images, as a local server: the uploaded JSONL
/// is read for its `custom_id`s, the batch stays `in_progress` until the test lets
/// it finish, then (after one 429 with `Retry-After`) goes `finalizing` and
/// `completed`, and its output file answers every line with an image and the token
/// usage OpenAI reports (https://platform.openai.com/docs/api-reference/batch).
#[derive(Clone, Default)]
struct OpenAiBatches(std::sync::Arc<std::sync::Mutex<BatchesState>>);

#[derive(Default)]
struct BatchesState {
    uploads: Vec<Vec<String>>,
    created: u32,
    polls: u32,
    finish: bool,
    rate_limited: bool,
    finalized: bool,
}

impl OpenAiBatches {
    fn with<T>(&self, f: impl FnOnce(&mut BatchesState) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }
}

fn openai_batch(status: &str, output: Option<&str>) -> serde_json::Value {
    serde_json::json!({
        "id": "batch_1", "object": "batch", "endpoint": "/v1/images/generations",
        "errors": null, "input_file_id": "file-in-1", "completion_window": "24h",
        "status": status, "output_file_id": output, "error_file_id": null,
        "created_at": 1_776_800_000, "expires_at": 1_776_886_400,
        "request_counts": {"total": 1, "completed": 0, "failed": 0}, "metadata": {}
    })
}

impl wiremock::Respond for OpenAiBatches {
    fn respond(&self, request: &wiremock::Request) -> wiremock::ResponseTemplate {
        use wiremock::ResponseTemplate as R;
        let path = request.url.path().to_string();
        let method = request.method.as_str().to_string();
        self.with(|s| match (method.as_str(), path.as_str()) {
            ("POST", "/v1/files") => {
                let body = String::from_utf8_lossy(&request.body).to_string();
                let ids = body
                    .lines()
                    .filter(|l| l.starts_with('{'))
                    .map(|l| {
                        let line: serde_json::Value = serde_json::from_str(l).unwrap();
                        assert_eq!(line["url"], "/v1/images/generations", "{line}");
                        line["custom_id"].as_str().unwrap().to_string()
                    })
                    .collect();
                s.uploads.push(ids);
                R::new(200).set_body_json(serde_json::json!({
                    "id": "file-in-1", "object": "file", "bytes": body.len(),
                    "created_at": 1_776_800_000, "filename": "input.jsonl", "purpose": "batch"
                }))
            }
            ("POST", "/v1/batches") => {
                s.created += 1;
                R::new(200).set_body_json(openai_batch("validating", None))
            }
            ("GET", "/v1/batches/batch_1") => {
                s.polls += 1;
                if !s.finish {
                    let status = if s.polls == 1 { "validating" } else { "in_progress" };
                    return R::new(200).set_body_json(openai_batch(status, None));
                }
                if !s.rate_limited {
                    s.rate_limited = true;
                    return R::new(429).insert_header("retry-after", "1").set_body_json(
                        serde_json::json!({"error": {"message": "Rate limit reached",
                            "type": "requests", "param": null, "code": "rate_limit_exceeded"}}),
                    );
                }
                if !s.finalized {
                    s.finalized = true;
                    return R::new(200).set_body_json(openai_batch("finalizing", None));
                }
                R::new(200).set_body_json(openai_batch("completed", Some("file-out-1")))
            }
            ("GET", "/v1/files/file-out-1/content") => {
                let mut png = std::io::Cursor::new(Vec::new());
                image::RgbImage::from_fn(256, 256, |x, y| {
                    image::Rgb([(x % 256) as u8, (y % 256) as u8, 120])
                })
                .write_to(&mut png, image::ImageFormat::Png)
                .unwrap();
                use base64::Engine as _;
                let b64 = base64::engine::general_purpose::STANDARD.encode(png.into_inner());
                let lines: Vec<String> = s
                    .uploads
                    .iter()
                    .flatten()
                    .map(|id| {
                        // 4 text input tokens at $5/M and 1766 image output tokens at
                        // $30/M: $0.053, the live price of a 1024x1024 medium image.
                        serde_json::json!({
                            "id": format!("batch_req_{id}"), "custom_id": id,
                            "response": {"status_code": 200, "request_id": "req_1", "body": {
                                "created": 1_776_800_100, "data": [{"b64_json": b64}],
                                "quality": "medium", "size": "1024x1024",
                                "usage": {"total_tokens": 1770, "input_tokens": 4,
                                    "output_tokens": 1766,
                                    "input_tokens_details": {"text_tokens": 4, "image_tokens": 0},
                                    "output_tokens_details": {"image_tokens": 1766, "text_tokens": 0}}
                            }},
                            "error": null
                        })
                        .to_string()
                    })
                    .collect();
                R::new(200).set_body_string(lines.join("\n") + "\n")
            }
            _ => R::new(404).set_body_json(serde_json::json!({"error": {
                "message": format!("no route {method} {path}"), "type": "invalid_request_error",
                "param": null, "code": null}})),
        })
    }
}

async fn until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what}: not after {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A job with a day and more to spare, for a model whose provider has a batch API,
/// goes through that API at half the live price: one upstream batch, charged at the
/// batch price when its result is read, the image published as a live one's. A
/// kill -9 while the batch is polled loses nothing: the restarted server resumes
/// polling the same batch and submits nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_with_time_to_spare_goes_through_the_openai_batch_api_at_half_price() {
    let upstream = wiremock::MockServer::start().await;
    let batches = OpenAiBatches::default();
    wiremock::Mock::given(wiremock::matchers::any())
        .respond_with(batches.clone())
        .mount(&upstream)
        .await;
    let site = Site::new(|dir| {
        format!(
            "{}upstream_poll_ms = 200\n\n[[providers]]\nkind = \"openai\"\nbase_url = \"{}/v1\"\n\
             api_key_env = \"IMAGEGATE_TEST_OPENAI_KEY\"\ntimeout_secs = 5\n",
            config(dir, ""),
            upstream.uri()
        )
    });
    let env = [("IMAGEGATE_TEST_OPENAI_KEY", "sk-test-upstream")];
    let server = site.serve(&env);

    let request = serde_json::json!({
        "prompt": "a lighthouse keeper's ledger, ink on paper",
        "model": "openai/gpt-image-2",
        "size": "1024x1024",
        "deliver_by": "30h",
    });
    let (status, job, _) = post_image(&server, request).await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let live = usd(&job["cost"]["live_provider_usd"]);
    let planned = usd(&job["cost"]["planned_provider_usd"]);
    assert!(close(live, 0.053), "{job}");
    assert!(
        close(planned, live / 2.0),
        "planned at the batch price: {job}"
    );

    // Submitted once and polled; then the server dies mid-poll.
    until(
        "the upstream batch is polled",
        Duration::from_secs(30),
        || batches.with(|s| s.created == 1 && s.polls >= 2),
    )
    .await;
    assert_eq!(
        get_json(server.url(&format!("/v1/jobs/{id}"))).await["status"],
        "running"
    );
    server.kill();
    let polls_before = batches.with(|s| s.polls);

    let server = site.serve(&env);
    until(
        "the restarted server polls the same batch",
        Duration::from_secs(30),
        || batches.with(|s| s.polls > polls_before),
    )
    .await;
    batches.with(|s| s.finish = true);
    let done = until_final(&server, &id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    batches.with(|s| {
        assert_eq!(s.created, 1, "one upstream batch, never submitted again");
        assert_eq!(s.uploads, vec![vec![id.clone()]]);
        assert!(s.rate_limited && s.finalized);
    });

    // Charged at the batch price: half the live quote.
    let cost = &done["cost"];
    assert!(close(usd(&cost["provider_usd"]), live / 2.0), "{done}");
    assert!(
        close(usd(&cost["saved_usd"]), live - live / 2.0),
        "the ledger keeps the live equivalent: {done}"
    );
    let ledger = ledger(&site).await;
    let key = done["image_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(ledger.paid_generations(key).await.unwrap(), 1);
    let rows = ledger.request_rows(&id).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0].cache, rows[0].status),
        (
            imagegate_ledger::CacheOutcome::Miss,
            imagegate_ledger::RequestStatus::Ok
        )
    );
    let recorded = ledger.upstream_batches().await.unwrap();
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0].upstream_id.as_deref(), Some("batch_1"));
    assert_eq!(recorded[0].input_file_id.as_deref(), Some("file-in-1"));
    assert_eq!(
        recorded[0].status,
        imagegate_ledger::UpstreamStatus::Completed
    );

    // Published and served like a live miss: classified, encoded, stored.
    let image = &done["image"];
    assert_eq!(image["safety"]["action"], "allow", "{image}");
    let url = image["images"][0]["url"].as_str().unwrap();
    assert_eq!(client().get(url).send().await.unwrap().status(), 200);
    server.stop();
}
