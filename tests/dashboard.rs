//! The cost dashboard in a real browser: the real `imagegate` binary (local provider,
//! local store, SQLite ledger, real ONNX classifier) answers a few real requests, then
//! Debian's Chromium renders `GET /dashboard` headless and the rendered DOM must show
//! charts drawn from exactly what the ledger holds. `/metrics` must count the same
//! traffic.
//!
//! Set `IMAGEGATE_DASHBOARD_SCREENSHOT=/tmp/dashboard.png` to also keep a screenshot.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support;
use support::{free_port, repo_root, Server};

const CHROMIUM: &str = "/usr/bin/chromium";

/// A missing browser is a failure, not a skip.
fn chromium() -> &'static str {
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: run scripts/setup/test.sh (it installs Debian's chromium)"
    );
    CHROMIUM
}

struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    /// Two providers: `local`, and an `openai` one whose address refuses connections,
    /// so a request pinned to it produces real provider errors.
    fn new(port: u16) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            r#"
pricing = "{pricing}"

[server]
listen = "127.0.0.1:{port}"

[concurrency]
cpu_workers = 2

[costs]
egress_usd_per_gb = 0.085
expected_views_per_image = 1000.0

[[providers]]
kind = "local"
latency_ms = 20

[[providers]]
kind = "openai"
base_url = "http://127.0.0.1:{dead}/v1"
api_key_env = "IMAGEGATE_TEST_OPENAI_KEY"
timeout_secs = 5

[router]
retries_per_candidate = 0

{local}
[profiles.default]
variants = [256, 512, 768]
formats = ["avif", "jpeg"]
avif = {{ quality = 60, speed = 9 }}

# Never requested: its 128-wide files have no data, which the what-ifs must say.
[profiles.thumbs]
variants = [128, 256]
formats = ["avif", "jpeg"]
"#,
            pricing = repo_root().join("config/pricing.toml").display(),
            dead = free_port(),
            local = support::local_sections(
                &dir.path().join("data"),
                &format!("http://127.0.0.1:{port}/cdn")
            ),
        );
        std::fs::write(dir.path().join("imagegate.toml"), config).unwrap();
        Site { dir }
    }

    fn start(&self) -> Server {
        support::serve_config(
            &self.dir.path().join("imagegate.toml"),
            &[("IMAGEGATE_TEST_OPENAI_KEY", "sk-test-not-a-real-key")],
        )
    }

    /// `imagegate report ARGS` on this site's ledger: its stdout, which must succeed.
    fn report(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_imagegate"))
            .arg("--config")
            .arg(self.dir.path().join("imagegate.toml"))
            .arg("report")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    async fn ledger(&self) -> imagegate_ledger::Ledger {
        imagegate_ledger::Ledger::open(&imagegate_ledger::LedgerConfig {
            url: format!("sqlite://{}/data/ledger.db", self.dir.path().display()),
        })
        .await
        .unwrap()
    }
}

async fn post(server: &Server, body: serde_json::Value) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(server.url("/v1/images"))
        .timeout(Duration::from_secs(120))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Runs headless Chromium with `args` then `url`, killing it after two minutes.
fn run_chromium(url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--virtual-time-budget=15000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap());
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within two minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = child.wait().unwrap();
    let out = reader.join().unwrap();
    if !status.success() {
        let err = std::io::read_to_string(child.stderr.take().unwrap()).unwrap_or_default();
        panic!("chromium failed ({status}): {err}");
    }
    out
}

/// The markup of the element whose `id` is given, up to its closing `tag`.
fn element<'a>(dom: &'a str, id: &str, tag: &str) -> &'a str {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the page:\n{dom}"));
    let end = dom[start..]
        .find(&format!("</{tag}>"))
        .unwrap_or_else(|| panic!("#{id} is not closed"));
    &dom[start..start + end]
}

/// The values of `attr` on the chart marks (`class="mark"`) inside `markup`.
fn mark_values(markup: &str, attr: &str) -> Vec<String> {
    markup
        .split('<')
        .filter(|tag| tag.contains("class=\"mark\""))
        .map(|tag| {
            let key = format!("{attr}=\"");
            let at = tag
                .find(&key)
                .unwrap_or_else(|| panic!("a mark without {attr}: {tag}"))
                + key.len();
            tag[at..at + tag[at..].find('"').unwrap()].to_string()
        })
        .collect()
}

/// `/metrics` as (name, labels) → value.
fn parse_metrics(text: &str) -> BTreeMap<(String, BTreeMap<String, String>), f64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let labels = rest
                    .trim_end_matches('}')
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|pair| {
                        let (k, v) = pair.split_once("=\"").unwrap();
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
            None => (series.to_string(), BTreeMap::new()),
        };
        out.insert((name, labels), value.parse().unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_renders_the_ledger_in_headless_chromium() {
    chromium();
    let site = Site::new(free_port());
    let server = site.start();

    // Three misses, two hits of the first, one request pinned to the dead provider.
    let mut ids = Vec::new();
    for (prompt, seed) in [("a lighthouse", 1), ("a red fox", 2), ("a blue whale", 3)] {
        let (status, body) =
            post(&server, serde_json::json!({"prompt": prompt, "seed": seed})).await;
        assert_eq!((status, &body["cache"]), (200, &"miss".into()), "{body}");
        ids.push(body["id"].as_str().unwrap().to_string());
    }
    for _ in 0..2 {
        let (status, body) = post(
            &server,
            serde_json::json!({"prompt": "a lighthouse", "seed": 1}),
        )
        .await;
        assert_eq!((status, &body["cache"]), (200, &"hit".into()), "{body}");
    }
    let (status, body) = post(
        &server,
        serde_json::json!({"prompt": "a harbour", "model": "openai/gpt-image-2"}),
    )
    .await;
    assert_eq!(status, 502, "{body}");

    // What the ledger says, which the page must show.
    let ledger = site.ledger().await;
    let query = |by: &str| imagegate_ledger::ReportQuery {
        group_by: imagegate_ledger::Dimension::parse_list(by).unwrap(),
        ..Default::default()
    };
    let by_day_stage = ledger.report(&query("day,stage")).await.unwrap();
    let by_provider = ledger.report(&query("provider")).await.unwrap();
    let delivery = ledger.delivery(&query("")).await.unwrap();
    ledger.close().await;
    // Requests without stage rows have nothing to stack.
    let stage_rows: Vec<_> = by_day_stage
        .rows
        .iter()
        .filter(|r| r.values[1].1.is_some())
        .collect();
    let stages: BTreeSet<String> = stage_rows
        .iter()
        .filter_map(|r| r.values[1].1.clone())
        .collect();
    assert!(
        stages.contains("generate") && stages.contains("encode"),
        "{stages:?}"
    );
    let providers: BTreeSet<String> = by_provider
        .rows
        .iter()
        .map(|r| r.values[0].1.clone().unwrap_or_else(|| "(none)".into()))
        .collect();
    assert!(providers.contains("local"), "{providers:?}");
    let cache = &by_provider.cache;
    assert_eq!((cache.hits, cache.misses), (2, 3));
    let hit_ratio = format!("{:.1}%", cache.hit_ratio.unwrap() * 100.0);
    assert_eq!(
        delivery.len(),
        6,
        "three widths in two formats: {delivery:?}"
    );

    let screenshot = std::env::var_os("IMAGEGATE_DASHBOARD_SCREENSHOT");
    if let Some(path) = &screenshot {
        let shot = format!("--screenshot={}", PathBuf::from(path).display());
        run_chromium(
            &server.url("/dashboard"),
            &[&shot, "--window-size=1280,1600"],
        );
        let png = std::fs::read(path).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
    }
    let dom = run_chromium(&server.url("/dashboard"), &["--dump-dom"]);
    assert!(
        dom.contains("<body data-state=\"ready\">"),
        "the page did not finish drawing; status: {}",
        element(&dom, "status", "span")
    );

    // Cost by stage per day: one stacked mark per (day, stage) row, every stage named.
    let chart = element(&dom, "chart-stage", "svg");
    let marked: BTreeSet<String> = mark_values(chart, "data-stage").into_iter().collect();
    assert_eq!(marked, stages);
    assert_eq!(mark_values(chart, "data-day").len(), stage_rows.len());
    let legend = element(&dom, "legend-stage", "div");
    for stage in &stages {
        assert!(legend.contains(stage.as_str()), "{stage} not in {legend}");
    }

    // Provider share: one bar per provider the ledger has (failed requests are not
    // booked, so the dead provider has none).
    let chart = element(&dom, "chart-provider", "svg");
    let marked: BTreeSet<String> = mark_values(chart, "data-provider").into_iter().collect();
    assert_eq!(marked, providers);

    // Cache: the ratio the ledger computes, and bars split by outcome.
    assert!(
        element(&dom, "hit-ratio", "b").ends_with(&format!(">{hit_ratio}")),
        "expected {hit_ratio}: {}",
        element(&dom, "hit-ratio", "b")
    );
    let chart = element(&dom, "chart-cache", "svg");
    assert_eq!(
        mark_values(chart, "data-part"),
        ["hits", "misses", "bypasses"]
    );
    assert_eq!(mark_values(chart, "data-count"), ["2", "3", "0"]);

    // Bytes by width and format: one bar per stored (width, format), at its average.
    let chart = element(&dom, "chart-bytes", "svg");
    let widths = mark_values(chart, "data-width");
    let formats = mark_values(chart, "data-format");
    let averages = mark_values(chart, "data-avg-bytes");
    let drawn: BTreeSet<(u32, String)> = widths
        .iter()
        .zip(&formats)
        .map(|(w, f)| (w.parse().unwrap(), f.clone()))
        .collect();
    let stored: BTreeSet<(u32, String)> = delivery
        .iter()
        .map(|r| (r.width, r.format.extension().to_string()))
        .collect();
    assert_eq!(drawn, stored);
    for ((w, f), avg) in widths.iter().zip(&formats).zip(&averages) {
        let row = delivery
            .iter()
            .find(|r| r.width.to_string() == *w && r.format.extension() == f)
            .unwrap();
        let expected = row.bytes as f64 / row.files as f64;
        assert!(
            (avg.parse::<f64>().unwrap() - expected).abs() < 1e-6,
            "{w} {f}: {avg} != {expected}"
        );
    }
    let table = element(&dom, "delivery-table", "table");
    assert_eq!(table.matches("<tr>").count(), 1 + delivery.len(), "{table}");
    let what_if = element(&dom, "what-if", "ul");
    assert!(
        what_if.contains("serve 512 wide instead of 768 (AVIF)"),
        "{what_if}"
    );
    assert!(
        what_if.contains("AVIF instead of JPEG at 768 wide"),
        "{what_if}"
    );
    assert!(
        what_if.contains("no data: no 128-wide avif files stored in the window"),
        "{what_if}"
    );

    // `imagegate report` projects the same bytes as `GET /v1/delivery`.
    let http: serde_json::Value = reqwest::get(server.url("/v1/delivery"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(http["variants"].as_array().unwrap().len(), delivery.len());
    let cli: serde_json::Value = serde_json::from_str(&site.report(&["--format", "json"])).unwrap();
    assert_eq!(cli["delivery"]["variants"], http["variants"]);
    assert_eq!(cli["delivery"]["what_if"], http["what_if"]);
    assert_eq!(cli["total"]["micros"], by_provider.total.totals.micros.0);
    let table = site.report(&["--by", "stage"]);
    assert!(
        table.contains("delivery projection: 1000 views per image at 0.085 USD/GB egress"),
        "{table}"
    );
    let avif_line = table
        .lines()
        .find(|l| l.starts_with("AVIF instead of JPEG at 768 wide"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(avif_line.contains("%"), "{avif_line}");
    let csv = site.report(&["--format", "csv", "--only", "delivery"]);
    assert!(
        csv.starts_with("width,format,files,bytes,avg_bytes,"),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), 1 + delivery.len(), "{csv}");
    for (query, code) in [
        ("?since=soonish", "invalid_time"),
        ("?group_by=stage", "invalid_query"),
    ] {
        let r = reqwest::get(server.url(&format!("/v1/delivery{query}")))
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{body}");
    }

    // Prometheus saw the same traffic, with labels from closed sets.
    let text = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let metrics = parse_metrics(&text);
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        *metrics
            .get(&(name.to_string(), labels.clone()))
            .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"))
    };
    assert!(
        value(
            "imagegate_stage_cost_microdollars_total",
            &[("stage", "generate")]
        ) > 0.0
    );
    assert!(
        value(
            "imagegate_stage_duration_seconds_count",
            &[("stage", "encode")]
        ) > 0.0
    );
    assert_eq!(
        value("imagegate_cache_requests_total", &[("outcome", "hit")]),
        2.0
    );
    assert!(value("imagegate_cache_requests_total", &[("outcome", "miss")]) >= 3.0);
    assert_eq!(
        value(
            "imagegate_provider_errors_total",
            &[("provider", "openai"), ("kind", "upstream")]
        ),
        1.0
    );
    let http = |route: &str, method: &str, status: &str| {
        value(
            "imagegate_http_requests_total",
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    assert_eq!(http("/v1/images", "POST", "200"), 5.0);
    assert_eq!(http("/v1/images", "POST", "502"), 1.0);
    assert!(http("/dashboard", "GET", "200") >= 1.0);
    assert!(http("/v1/delivery", "GET", "200") >= 1.0);
    assert!(http("/v1/costs", "GET", "200") >= 2.0);
    assert!(
        value(
            "imagegate_http_request_duration_seconds_count",
            &[("route", "/v1/images"), ("method", "POST")]
        ) >= 6.0
    );
    // No series carries a prompt or a content key.
    assert!(!text.contains("lighthouse"), "{text}");
    for id in &ids {
        assert!(!text.contains(id.as_str()), "{text}");
    }
}
