//! The HTTP surface as exposed to the world: the OpenAI-compatible route driven by
//! the official `openai` Python client, API keys, rate limits, logs that carry
//! request ids and never secrets, and a graceful stop on SIGTERM.

use crate::support;

use std::process::Command;
use std::time::Duration;
use support::{client, small_config, Site};

/// A fake provider secret: must never show up in logs or answers.
const PROVIDER_SECRET: &str = "sk-imagegate-test-7f3a9c1e5b2d4f6a8c0e";

fn create_key(site: &Site, name: &str, extra: &[&str]) -> String {
    let mut args = vec!["keys", "create", "--name", name];
    args.extend_from_slice(extra);
    let out = site.cli(&args);
    assert!(
        out.status.success(),
        "keys create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(token.starts_with("ig_"), "{token:?}");
    token
}

fn key_id(token: &str) -> &str {
    &token[3..19]
}

/// Waits out the server's key reload interval (`reload_secs = 1` in these configs).
async fn until_keys_reload() {
    tokio::time::sleep(Duration::from_millis(2500)).await;
}

pub(crate) fn python_for_openai_client() -> String {
    let out = Command::new(support::repo_root().join("scripts/python-venv.sh"))
        .arg("openai-client")
        .arg(support::repo_root().join("scripts/requirements/openai-client.txt"))
        .output()
        .expect("scripts/python-venv.sh runs");
    assert!(
        out.status.success(),
        "could not create the openai client venv (PyPI reachable?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_official_openai_client_works_against_generations() {
    // The CDN URLs in answers point at this server, so it listens on a known port.
    let port = support::free_port();
    let site = Site::new(|dir| {
        let addr = format!("127.0.0.1:{port}");
        small_config(dir, &addr, &addr, "[server.auth]\nreload_secs = 1\n")
    });
    let token = create_key(&site, "openai-client", &[]);
    let server = site.serve(&[]);
    let python = python_for_openai_client();
    let out = tokio::task::spawn_blocking({
        let base = server.base.clone();
        let token = token.clone();
        move || {
            Command::new(python)
                .arg(support::repo_root().join("scripts/openai_client_check.py"))
                .arg(base)
                .arg(token)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "openai client check failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["bad_n"]["param"], "n");
    assert_eq!(seen["bad_n"]["type"], "invalid_request_error");
    assert_eq!(seen["blocked"]["code"], "content_policy_violation");
    assert_eq!(seen["bad_key"]["code"], "invalid_api_key");
    assert_eq!(seen["b64_is_avif"], true);

    // The ledger booked the client's images under its key id.
    let report = site.cli(&["report", "--by", "key", "--format", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    let row = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == key_id(&token))
        .unwrap_or_else(|| panic!("no ledger rows for the key: {report}"));
    assert_eq!(
        row["requests"], 3,
        "two url images and one b64 hit: {report}"
    );
}

/// The README's Python example, between its `readme-sdk-example` marker and the end
/// of the code block.
fn readme_sdk_example() -> String {
    let readme = std::fs::read_to_string(support::repo_root().join("README.md")).unwrap();
    let after = readme
        .split_once("<!-- readme-sdk-example -->")
        .expect("README.md marks its SDK example with <!-- readme-sdk-example -->")
        .1;
    let code = after
        .split_once("```python\n")
        .expect("a python block follows the marker")
        .1;
    code.split_once("```")
        .expect("the block ends")
        .0
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_readme_sdk_example_runs_on_the_embedded_defaults() {
    // As a new user runs it: the embedded defaults, no key created, the port moved
    // with --listen (the answer's URLs must follow it), the official SDK with its
    // obligatory but meaningless API key.
    let data = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let listen = format!("127.0.0.1:{port}");
    let server = support::serve_embedded_defaults(data.path(), &["--listen", &listen]);
    let example = readme_sdk_example();
    assert!(example.contains("http://127.0.0.1:8080/v1"), "{example}");
    let script = example.replace("http://127.0.0.1:8080", &server.base);
    let python = python_for_openai_client();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python).arg("-c").arg(script).output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "the README example failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let url = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(
        url.starts_with(&format!("http://{listen}/cdn/")),
        "the example printed {url:?}, not a URL under the port served on"
    );
    let image = client().get(&url).send().await.unwrap();
    assert_eq!(image.status(), 200, "{url}");
    assert!(image.bytes().await.unwrap().len() > 100);

    // A caller that cannot be anonymous hears that no key exists and how to make one.
    let proxied = client()
        .post(server.url("/v1/images"))
        .header("x-forwarded-for", "203.0.113.9")
        .json(&serde_json::json!({"prompt": "a lighthouse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(proxied.status(), 401);
    let body: serde_json::Value = proxied.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("no API key exists") && message.contains("imagegate keys create"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_gate_every_api_route_and_revocation_applies() {
    let site = Site::new(|dir| {
        small_config(
            dir,
            "0.0.0.0:0",
            "127.0.0.1:1",
            "[server.auth]\nreload_secs = 1\n",
        )
    });
    let server = site.serve(&[]);
    // It prints the wildcard it listens on; a client calls it by loopback (a Host of
    // 0.0.0.0 is no loopback name, so it would not be anonymous).
    let local = server.base.replace("0.0.0.0", "127.0.0.1");
    let estimate = |auth: Option<String>, base: String| async move {
        let mut r = client()
            .post(format!("{base}/v1/estimate"))
            .json(&serde_json::json!({"prompt": "a quiet harbour"}));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json::<serde_json::Value>().await.unwrap())
    };
    // No key exists: loopback callers may be anonymous, others may not.
    assert_eq!(estimate(None, local.clone()).await.0, 200);
    let outside = non_loopback_address();
    let (status, body) = estimate(None, format!("http://{outside}:{}", server.port())).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "missing_api_key");

    // Once a key exists (created by the CLI while the server runs), every caller
    // needs one, and only a valid one passes.
    let token = create_key(&site, "app", &[]);
    until_keys_reload().await;
    let (status, body) = estimate(None, local.clone()).await;
    assert_eq!(status, 401, "{body}");
    let forged = format!("Bearer ig_{}_{}", key_id(&token), "0".repeat(64));
    for bad in [forged, "Bearer nonsense".into(), "Basic abc".into()] {
        let (status, body) = estimate(Some(bad.clone()), local.clone()).await;
        assert_eq!(status, 401, "{bad}: {body}");
    }
    let good = format!("Bearer {token}");
    assert_eq!(estimate(Some(good.clone()), local.clone()).await.0, 200);
    // Probes and metrics stay open.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = client().get(server.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }

    let revoked = site.cli(&["keys", "revoke", key_id(&token)]);
    assert!(revoked.status.success());
    until_keys_reload().await;
    let (status, body) = estimate(Some(good), local.clone()).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "revoked_api_key");
    let listed = String::from_utf8(site.cli(&["keys", "list"]).stdout).unwrap();
    assert!(listed.contains(key_id(&token)) && !listed.contains(&token[20..]));
}

#[test]
fn keys_are_created_standard_or_admin_and_listed_with_their_scope() {
    let site = Site::new(|dir| small_config(dir, "127.0.0.1:0", "127.0.0.1:1", ""));
    let app = create_key(&site, "app", &[]);
    let ops = create_key(&site, "ops", &["--admin"]);
    let out = site.cli(&["keys", "list"]);
    assert!(out.status.success());
    let listed = String::from_utf8(out.stdout).unwrap();
    let scope_of = |token: &str| {
        let line = listed
            .lines()
            .find(|l| l.starts_with(key_id(token)))
            .unwrap_or_else(|| panic!("{} is not listed:\n{listed}", key_id(token)));
        line.split_whitespace().nth(3).unwrap().to_string()
    };
    assert_eq!(scope_of(&app), "standard", "{listed}");
    assert_eq!(scope_of(&ops), "admin", "{listed}");
    assert!(listed.lines().next().unwrap().contains("scope"), "{listed}");
}

/// An address of this machine other than loopback, to call from "outside".
fn non_loopback_address() -> String {
    let out = Command::new("hostname").arg("-I").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.split_whitespace()
        .find(|a| {
            a.parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| !ip.is_loopback())
        })
        .unwrap_or_else(|| panic!("this machine has no non-loopback IPv4 address: {text:?}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_over_its_rate_answers_429_with_retry_after() {
    let site = Site::new(|dir| {
        small_config(
            dir,
            "127.0.0.1:0",
            "127.0.0.1:1",
            "[server.auth]\nreload_secs = 1\nrequests_per_minute = 600\nburst = 3\n",
        )
    });
    let slow = create_key(&site, "slow", &["--requests-per-minute", "6"]);
    let fast = create_key(&site, "fast", &[]);
    let server = site.serve(&[]);
    let call = |token: String| {
        let url = server.url("/v1/estimate");
        async move {
            client()
                .post(url)
                .bearer_auth(token)
                .json(&serde_json::json!({"prompt": "a quiet harbour"}))
                .send()
                .await
                .unwrap()
        }
    };
    // The burst passes, the next is refused with a wait time; other keys are unaffected.
    for _ in 0..3 {
        assert_eq!(call(slow.clone()).await.status(), 200);
    }
    let refused = call(slow.clone()).await;
    assert_eq!(refused.status(), 429);
    let wait: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=10).contains(&wait), "Retry-After {wait}");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(call(fast.clone()).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logs_carry_request_ids_and_never_secrets() {
    let site = Site::new(|dir| {
        let openai = format!(
            "[[providers]]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:{}/v1\"\napi_key_env = \"IMAGEGATE_TEST_OPENAI_KEY\"\ntimeout_secs = 2\n[server.auth]\nreload_secs = 1\n",
            support::free_port()
        );
        small_config(dir, "127.0.0.1:0", "127.0.0.1:1", &openai)
    });
    let token = create_key(&site, "logger", &[]);
    let server = site.serve(&[("IMAGEGATE_TEST_OPENAI_KEY", PROVIDER_SECRET)]);
    let http = client();
    // A success, a provider failure (the pinned OpenAI endpoint is down), a bad key.
    let ok = http
        .post(server.url("/v1/images"))
        .bearer_auth(&token)
        .header("x-request-id", "req-ok-1")
        .json(&serde_json::json!({"prompt": "a lantern"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["x-request-id"], "req-ok-1");
    let failed = http
        .post(server.url("/v1/images"))
        .bearer_auth(&token)
        .header("x-request-id", "req-fail-2")
        .json(&serde_json::json!({"prompt": "a lantern", "model": "openai/gpt-image-2"}))
        .send()
        .await
        .unwrap();
    assert!(failed.status().is_server_error(), "{}", failed.status());
    let failed_body = failed.text().await.unwrap();
    let bad = http
        .post(server.url("/v1/images"))
        .header("authorization", format!("Bearer {token}x"))
        .json(&serde_json::json!({"prompt": "a lantern"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    server.stop();

    let log = std::fs::read_to_string(site.log()).unwrap();
    let secret_part = &token[20..];
    for (what, secret) in [
        ("provider key", PROVIDER_SECRET),
        ("API key secret", secret_part),
    ] {
        assert!(!log.contains(secret), "the {what} appears in the logs");
        assert!(
            !failed_body.contains(secret),
            "the {what} appears in an answer"
        );
    }
    // Every line logged while handling a request names it.
    let mut request_lines = 0;
    for line in log.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let in_request = v["spans"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["name"] == "request"));
        if in_request {
            request_lines += 1;
            assert!(
                v["span"]["request_id"].is_string() || v["spans"][0]["request_id"].is_string(),
                "a request's log line without its id: {line}"
            );
        }
    }
    assert!(
        log.contains("req-fail-2"),
        "the failed request's error is logged with its id:\n{log}"
    );
    assert!(request_lines > 0, "no request-scoped log lines:\n{log}");
}

/// SIGTERM while a miss is being generated: the server stops accepting at once,
/// finishes the request in flight (its client gets the full 200 answer), commits the
/// request's ledger rows, and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_finishes_the_request_in_flight_and_its_ledger_rows() {
    let site = Site::new(|dir| {
        // A 3 s provider, so the request is surely in flight when the signal lands.
        small_config(dir, "127.0.0.1:0", "127.0.0.1:1", "")
            .replace("latency_ms = 10", "latency_ms = 3000")
    });
    let server = site.serve(&[]);
    let url = server.url("/v1/images");
    let in_flight = tokio::spawn(async move {
        client()
            .post(url)
            .json(&serde_json::json!({"prompt": "a lighthouse in fog"}))
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        !in_flight.is_finished(),
        "the miss finished before the signal"
    );
    server.terminate();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let late = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap()
        .get(server.url("/healthz"))
        .send()
        .await;
    assert!(
        late.is_err(),
        "a new request was served after SIGTERM: {late:?}"
    );

    let answer = in_flight
        .await
        .unwrap()
        .expect("the request in flight is answered");
    assert_eq!(answer.status(), 200);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["cache"], "miss", "{body}");
    assert!(!body["images"].as_array().unwrap().is_empty(), "{body}");

    let status = server.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit status {status}");
    let ledger = imagegate_ledger::Ledger::open(&imagegate_ledger::LedgerConfig {
        url: site.ledger_url(),
    })
    .await
    .unwrap();
    let totals = ledger.stage_totals().await.unwrap();
    let generate = totals
        .iter()
        .find(|t| t.stage == "generate")
        .unwrap_or_else(|| panic!("no generate row in the ledger: {totals:?}"));
    assert_eq!(generate.rows, 1, "{totals:?}");
    ledger.close().await;
}

/// With transparent huge pages, mimalloc's arena kept whole 2 MiB pages resident for
/// a few live blocks each: 50-100 MB more at the peak of 64 concurrent misses. The
/// server turns THP off for its own process; `MIMALLOC_ALLOW_THP=1` leaves it as the
/// system has it, for an operator who trades that memory for about 5% more hits.
#[test]
fn the_server_turns_transparent_huge_pages_off_unless_told_not_to() {
    for (env, expected) in [(&[][..], "0"), (&[("MIMALLOC_ALLOW_THP", "1")][..], "1")] {
        let site = Site::new(|dir| {
            let addr = format!("127.0.0.1:{}", support::free_port());
            small_config(dir, &addr, &addr, "")
        });
        let server = site.serve(env);
        assert_eq!(
            server.proc_status("THP_enabled"),
            expected,
            "THP_enabled of a server started with {env:?}"
        );
        server.stop();
    }
}

/// GET `path` with `token`: (status, body).
async fn get_as(server: &support::Server, token: &str, path: &str) -> (u16, serde_json::Value) {
    let r = client()
        .get(server.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn post_image_as(
    server: &support::Server,
    token: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let r = client()
        .post(server.url("/v1/images"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Files a `/v1/delivery` answer counts over its variants.
fn delivered_files(delivery: &serde_json::Value) -> u64 {
    delivery["variants"]
        .as_array()
        .unwrap_or_else(|| panic!("{delivery}"))
        .iter()
        .map(|v| v["files"].as_u64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_sees_its_own_spending_and_only_admins_see_all_or_refresh() {
    let site = Site::new(|dir| small_config(dir, "127.0.0.1:0", "127.0.0.1:1", ""));
    let app = create_key(&site, "app", &[]);
    let other = create_key(&site, "other", &[]);
    let ops = create_key(&site, "ops", &["--admin"]);
    let server = site.serve(&[]);

    let harbour = serde_json::json!({"prompt": "a harbour at noon"});
    let (status, app_image) = post_image_as(&server, &app, harbour.clone()).await;
    assert_eq!(status, 200, "{app_image}");
    let (status, other_image) = post_image_as(
        &server,
        &other,
        serde_json::json!({"prompt": "a mill at night"}),
    )
    .await;
    assert_eq!(status, 200, "{other_image}");
    let files_per_image = app_image["images"].as_array().unwrap().len() as u64;

    // A standard key: its own rows only, in the costs, the deliveries and every
    // query the dashboard page makes.
    let (status, costs) = get_as(&server, &app, "/v1/costs?group_by=key").await;
    assert_eq!(status, 200, "{costs}");
    let rows = costs["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{costs}");
    assert_eq!(rows[0]["key"], key_id(&app), "{costs}");
    assert_eq!(costs["total"]["requests"], 1, "{costs}");
    let app_micros = costs["total"]["micros"].as_i64().unwrap();
    assert!(app_micros > 0, "{costs}");
    for path in [
        "/v1/costs?group_by=day,stage&since=7d",
        "/v1/costs?group_by=provider&since=7d",
        "/v1/costs?group_by=model",
    ] {
        let (status, body) = get_as(&server, &app, path).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["total"]["micros"], app_micros, "{path}: {body}");
        assert_eq!(body["total"]["requests"], 1, "{path}: {body}");
    }
    for path in ["/v1/delivery", "/v1/delivery?since=7d"] {
        let (status, delivery) = get_as(&server, &app, path).await;
        assert_eq!(status, 200, "{path}: {delivery}");
        assert_eq!(
            delivered_files(&delivery),
            files_per_image,
            "{path}: {delivery}"
        );
    }
    // Naming itself is fine; naming another key needs an admin.
    let own = format!("/v1/costs?key={}", key_id(&app));
    assert_eq!(
        get_as(&server, &app, &own).await.1["total"]["micros"],
        app_micros
    );
    for path in [
        format!("/v1/costs?key={}", key_id(&other)),
        format!("/v1/delivery?key={}", key_id(&other)),
    ] {
        let (status, body) = get_as(&server, &app, &path).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(body["error"]["code"], "admin_required", "{body}");
    }

    // Without `since`, the window reaches 30 days back (and says so).
    let since = chrono::DateTime::parse_from_rfc3339(costs["since"].as_str().unwrap()).unwrap();
    let back = chrono::Utc::now().signed_duration_since(since);
    assert!(
        (back - chrono::Duration::days(30)).num_seconds().abs() < 120,
        "since {since} is {back} ago"
    );

    // An admin key sees every key, or the one it names.
    let (status, all) = get_as(&server, &ops, "/v1/costs?group_by=key").await;
    assert_eq!(status, 200, "{all}");
    let keys: Vec<&str> = all["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert!(
        keys.contains(&key_id(&app)) && keys.contains(&key_id(&other)),
        "{all}"
    );
    assert_eq!(all["total"]["requests"], 2, "{all}");
    let path = format!("/v1/costs?group_by=key&key={}", key_id(&other));
    let (_, one) = get_as(&server, &ops, &path).await;
    assert_eq!(one["rows"].as_array().unwrap().len(), 1, "{one}");
    assert_eq!(one["rows"][0]["key"], key_id(&other), "{one}");
    let (_, delivery) = get_as(&server, &ops, "/v1/delivery").await;
    assert_eq!(
        delivered_files(&delivery),
        2 * files_per_image,
        "{delivery}"
    );

    // Republishing is an admin's: a standard key is refused before anything is paid.
    let mut refresh = harbour.clone();
    refresh["cache"] = "refresh".into();
    let (status, body) = post_image_as(&server, &app, refresh.clone()).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "admin_required", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--admin"),
        "{body}"
    );
    let (status, body) = post_image_as(&server, &ops, refresh).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["cache"], "miss", "{body}");
    let (_, after) = get_as(&server, &ops, "/v1/costs?group_by=key").await;
    assert_eq!(
        after["total"]["requests"], 3,
        "the refused refresh was not booked: {after}"
    );
    let (_, app_after) = get_as(&server, &app, "/v1/costs").await;
    assert_eq!(app_after["total"]["micros"], app_micros, "{app_after}");
}
