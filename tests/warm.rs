//! `imagegate warm`: the real binary on a temporary data directory with the local
//! provider, the real ONNX classifier and a SQLite ledger, checked through its own
//! output and `imagegate report`, like a user scripting it would.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support;
use support::repo_root;

/// The local provider's price at 512x512: $0.002 per 1024x1024, in proportion to pixels.
const LOCAL_512_MICROS: i64 = 500;

/// A data directory with a configuration, and template files written into it.
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        // Small variants and JPEG only: the tests are about warming, not encoding.
        let config = format!(
            r#"
pricing = "{pricing}"

[concurrency]
cpu_workers = 2

[[providers]]
kind = "local"
latency_ms = 20

[budgets]
processing_reserve_usd = 0.0005

{local}
[profiles.default]
variants = [128, 256]
formats = ["jpeg"]
safety = {{ blur_at = 0.2, block_at = 0.8 }}

[profiles.tiny]
variants = [64]
formats = ["jpeg"]
"#,
            pricing = repo_root().join("config/pricing.toml").display(),
            local = support::local_sections(&dir.path().join("data"), "http://127.0.0.1:1/cdn"),
        );
        std::fs::write(dir.path().join("imagegate.toml"), config).unwrap();
        Site { dir }
    }

    fn templates(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_imagegate"))
            .arg("--config")
            .arg(self.dir.path().join("imagegate.toml"))
            .args(args)
            .output()
            .unwrap()
    }

    /// `imagegate warm FILE ARGS... --format json`: exit code and the summary.
    fn warm_json(&self, file: &Path, args: &[&str]) -> (i32, serde_json::Value) {
        let mut all = vec!["warm", file.to_str().unwrap()];
        all.extend(args);
        all.extend(["--format", "json"]);
        let out = self.run(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let summary = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("no JSON summary ({e}); stderr: {stderr}"));
        (out.status.code().unwrap(), summary)
    }

    /// What the ledger holds, through `imagegate report --by stage --format json`.
    fn ledger(&self) -> Ledger {
        let out = self.run(&["report", "--by", "stage", "--format", "json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let generations = report["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["stage"] == "generate")
            .map_or(0, |r| r["requests"].as_i64().unwrap());
        Ledger {
            requests: report["total"]["requests"].as_i64().unwrap(),
            micros: report["total"]["micros"].as_i64().unwrap(),
            generations,
        }
    }

    fn objects(&self) -> usize {
        fn walk(dir: &Path) -> usize {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return 0;
            };
            entries
                .map(|e| {
                    let p = e.unwrap().path();
                    if p.is_dir() {
                        walk(&p)
                    } else {
                        1
                    }
                })
                .sum()
        }
        walk(&self.dir.path().join("data/objects"))
    }
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Ledger {
    requests: i64,
    micros: i64,
    generations: i64,
}

fn n(v: &serde_json::Value) -> i64 {
    v.as_i64().unwrap_or_else(|| panic!("not an integer: {v}"))
}

const SIX: &str = r#"
[defaults]
sizes = ["512x512"]

[[template]]
name = "avatars"
prompt = "a {style} avatar of a {animal}"

[template.vars]
style = ["ink", "clay"]
animal = ["fox", "owl"]

[[template]]
name = "skies"
prompt = "a sky at dusk"
seeds = [1, 2]
profile = "tiny"
"#;

#[test]
fn a_warm_run_publishes_every_image_and_a_second_run_is_all_hits() {
    let site = Site::new();
    let file = site.templates("six.toml", SIX);

    let (code, first) = site.warm_json(&file, &["--concurrency", "3"]);
    assert_eq!(code, 0, "{first}");
    assert_eq!(
        (
            n(&first["images"]),
            n(&first["misses"]),
            n(&first["hits"]),
            n(&first["failed"])
        ),
        (6, 6, 0, 0),
        "{first}"
    );
    assert_eq!(first["templates"][0]["name"], "avatars");
    assert_eq!(n(&first["templates"][0]["misses"]), 4);
    assert_eq!(n(&first["templates"][1]["misses"]), 2);
    let ledger = site.ledger();
    assert_eq!(ledger.generations, 6, "one generation row per image");
    assert_eq!(ledger.requests, 6);
    assert_eq!(
        ledger.micros,
        n(&first["spent_micros"]),
        "warm reports what the ledger recorded"
    );
    assert!(ledger.micros >= 6 * LOCAL_512_MICROS, "{ledger:?}");
    // Booked under the warm key, so reports can tell warming from traffic.
    let by_key = site.run(&["report", "--by", "key", "--format", "json"]);
    let by_key: serde_json::Value = serde_json::from_slice(&by_key.stdout).unwrap();
    assert_eq!(by_key["rows"][0]["key"], "warm", "{by_key}");
    let objects = site.objects();

    let (code, second) = site.warm_json(&file, &[]);
    assert_eq!(code, 0, "{second}");
    assert_eq!(
        (
            n(&second["images"]),
            n(&second["hits"]),
            n(&second["misses"])
        ),
        (6, 6, 0),
        "{second}"
    );
    assert_eq!(n(&second["spent_micros"]), 0);
    assert_eq!(
        n(&second["saved_micros"]),
        n(&first["spent_micros"]),
        "each hit saves what its key cost to produce"
    );
    assert_eq!(site.ledger(), ledger, "a resumed run adds no ledger rows");
    assert_eq!(site.objects(), objects, "and stores nothing");

    // The table a person reads.
    let out = site.run(&["warm", file.to_str().unwrap()]);
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.starts_with(
            "template  images  hits  misses  failed  skipped_budget  spent_usd  saved_usd"
        ),
        "{table}"
    );
    let total = table.lines().find(|l| l.starts_with("TOTAL")).unwrap();
    let cells: Vec<&str> = total.split_whitespace().collect();
    assert_eq!(&cells[..6], ["TOTAL", "6", "6", "0", "0", "0"], "{table}");
    assert_eq!(cells[6], "0.000000", "{table}");
}

#[test]
fn a_dry_run_counts_and_prices_without_generating_anything() {
    let site = Site::new();
    let two = site.templates(
        "two.toml",
        "[[template]]\nname = \"a\"\nprompt = \"a {x} tree\"\nsizes = [\"512x512\"]\nvars.x = [\"pine\", \"oak\"]\n",
    );
    let five = site.templates(
        "five.toml",
        "[[template]]\nname = \"a\"\nprompt = \"a {x} tree\"\nsizes = [\"512x512\"]\nvars.x = [\"pine\", \"oak\", \"elm\", \"ash\", \"yew\"]\n",
    );
    let (code, warmed) = site.warm_json(&two, &[]);
    assert_eq!((code, n(&warmed["misses"])), (0, 2), "{warmed}");
    let before = site.ledger();
    let objects = site.objects();

    let (code, dry) = site.warm_json(&five, &["--dry-run"]);
    assert_eq!(code, 0, "{dry}");
    assert_eq!(dry["dry_run"], true);
    assert_eq!(
        (
            n(&dry["images"]),
            n(&dry["cached"]),
            n(&dry["to_generate"]),
            n(&dry["failing"])
        ),
        (5, 2, 3, 0),
        "{dry}"
    );
    assert_eq!(
        n(&dry["estimate"]["micros"]),
        3 * LOCAL_512_MICROS,
        "the local provider's price times the misses: {dry}"
    );
    let by_provider = &dry["estimate"]["by_provider"][0];
    assert_eq!(
        (&by_provider["provider"], &by_provider["model"]),
        (
            &serde_json::json!("local"),
            &serde_json::json!("procedural-v1")
        )
    );
    assert_eq!(n(&by_provider["images"]), 3);
    assert_eq!(site.ledger(), before, "a dry run writes no ledger rows");
    assert_eq!(site.objects(), objects, "and stores nothing");

    let out = site.run(&["warm", five.to_str().unwrap(), "--dry-run"]);
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("cached       2\n"), "{table}");
    assert!(table.contains("to generate  3\n"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("TOTAL") && l.ends_with("3  0.001500")),
        "{table}"
    );
    assert_eq!(site.ledger(), before);
}

#[test]
fn a_budget_stops_starting_work_and_the_next_run_continues() {
    let site = Site::new();
    let file = site.templates(
        "six.toml",
        "[[template]]\nname = \"b\"\nprompt = \"a {x} mountain\"\nsizes = [\"512x512\"]\nvars.x = [\"red\", \"blue\", \"green\", \"grey\", \"gold\", \"white\"]\n",
    );
    // Each miss reserves $0.0005 (provider) + $0.0005 (processing_reserve_usd) and
    // really costs a little over $0.0005: three fit in $0.0025, a fourth could not.
    let budget = 0.0025;
    let (code, run) = site.warm_json(
        &file,
        &["--budget-usd", &budget.to_string(), "--concurrency", "3"],
    );
    assert_eq!(code, 0, "skipped for budget is not a failure: {run}");
    assert_eq!(n(&run["misses"]), 3, "{run}");
    assert_eq!(n(&run["skipped_budget"]), 3, "{run}");
    assert_eq!(n(&run["failed"]), 0, "{run}");
    let spent = n(&run["spent_micros"]);
    assert!(spent <= 2500, "spent {spent} micros of a $0.0025 budget");
    assert_eq!(site.ledger().micros, spent);
    assert_eq!(site.ledger().generations, 3);
    let skipped = run["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 3);
    assert_eq!(skipped[0]["vars"]["x"], "grey", "file order: {run}");
    assert!(
        skipped[0]["reason"].as_str().unwrap().contains("budget"),
        "{run}"
    );

    // The table says so too.
    let out = site.run(&["warm", file.to_str().unwrap(), "--budget-usd", "0"]);
    assert_eq!(out.status.code(), Some(0));
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("skipped for budget (3;"), "{table}");
    assert!(table.contains("  b {x=grey} 512x512\n"), "{table}");

    let (code, rest) = site.warm_json(&file, &[]);
    assert_eq!(code, 0, "{rest}");
    assert_eq!((n(&rest["hits"]), n(&rest["misses"])), (3, 3), "{rest}");
    assert_eq!(site.ledger().generations, 6);
}

#[test]
fn failed_images_are_listed_and_the_others_still_done() {
    let site = Site::new();
    let file = site.templates(
        "mixed.toml",
        r#"
[defaults]
sizes = ["256x256"]

[[template]]
name = "things"
prompt = "a {thing} on a shelf"
vars.thing = ["vase", "forbiddenword", "clock"]

[[template]]
name = "pinned"
prompt = "a quiet harbour"
model = "nosuch/model-9"
"#,
    );
    let (code, run) = site.warm_json(&file, &[]);
    assert_eq!(code, 3, "failures exit with status 3: {run}");
    assert_eq!(
        (n(&run["images"]), n(&run["misses"]), n(&run["failed"])),
        (4, 2, 2),
        "{run}"
    );
    let failures = run["failures"].as_array().unwrap();
    assert_eq!(failures[0]["vars"]["thing"], "forbiddenword");
    assert!(
        failures[0]["error"]
            .as_str()
            .unwrap()
            .contains("prompt blocked"),
        "{run}"
    );
    assert_eq!(failures[1]["template"], "pinned");
    assert!(
        failures[1]["error"].as_str().unwrap().contains("nosuch"),
        "{run}"
    );
    assert_eq!(site.ledger().generations, 2, "the other images were made");

    let out = site.run(&["warm", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("\nfailed (2):\n"), "{table}");
    assert!(
        table.contains("  things {thing=forbiddenword} 256x256: prompt blocked by rule"),
        "{table}"
    );
    assert!(table.contains("  pinned 256x256: "), "{table}");
}

/// Runs warm on a bad file: it must fail before touching anything, naming the place.
fn refused(site: &Site, text: &str, extra: &[&str]) -> String {
    let file = site.templates("bad.toml", text);
    let mut args = vec!["warm", file.to_str().unwrap()];
    args.extend(extra);
    let out = site.run(&args);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(out.stdout.is_empty());
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn bad_template_files_name_line_and_column() {
    let site = Site::new();
    let cases: &[(&str, &str, &str)] = &[
        (
            "[[template]]\nname = \"a\"\nprompt = \"unterminated\nvars.x = []\n",
            ":3:",
            "",
        ),
        (
            "[[template]]\nname = \"a\"\nprompt = \"a {colour} cat\"\n",
            ":3:13: {colour} has no values",
            "",
        ),
        (
            "[[template]]\nname = \"a\"\nprompt = \"a cat\"\n[template.vars]\nmood = [\"calm\"]\n",
            ":5:1: variable \"mood\" is listed but the prompt never uses {mood}",
            "",
        ),
        (
            "[[template]]\nname = \"a\"\nprompt = \"a {x} cat\"\nvars.x = []\n",
            ":4:10: variable \"x\" has no values",
            "",
        ),
        (
            "[[template]]\nname = \"a\"\nprompt = \"a cat\"\nseeds = []\n",
            ":4:9: seeds is empty",
            "",
        ),
        (
            "[[template]]\nname = \"a\"\nprompt = \"a cat\"\nprofile = \"poster\"\n",
            ":4:11: profile \"poster\" is not configured (configured: default, tiny)",
            "",
        ),
        (
            "[[template]]\nname = \"a\"\nprompt = \"a cat\"\nsizes = [\"512x512\", \"1024\"]\n",
            ":4:21: size \"1024\" is not WIDTHxHEIGHT",
            "",
        ),
        (
            "[defaults]\nmodel = \"huge\"\n[[template]]\nname = \"a\"\nprompt = \"a cat\"\n",
            ":2:9: model \"huge\" is neither a class",
            "",
        ),
        (
            "[[template]]\nname = \"a\"\nprompt = \"a cat\"\nsize = [\"512x512\"]\n",
            ":4:1: unknown field `size`",
            "",
        ),
        (
            "[[template]]\nname = \"a\"\nprompt = \"a {x} {y}\"\nvars.x = [\"1\", \"2\", \"3\"]\nvars.y = [\"1\", \"2\", \"3\"]\n",
            ":2:8: the templates expand to 9 images, above the limit of 8",
            "--max-images=8",
        ),
        ("# nothing here\n", ":1:1: no templates", ""),
    ];
    for (text, expected, extra) in cases {
        let extra: Vec<&str> = [*extra].into_iter().filter(|e| !e.is_empty()).collect();
        let stderr = refused(&site, text, &extra);
        assert!(
            stderr.contains(&format!("bad.toml{expected}")),
            "expected {expected:?} for\n{text}\ngot:\n{stderr}"
        );
    }

    // Every mistake at once, in file order, each with the offending line shown.
    let stderr = refused(
        &site,
        "[[template]]\nname = \"a\"\nprompt = \"{x}\"\nvars.x = [\"1\", \"1\"]\n\n[[template]]\nname = \"a\"\nprompt = \"b\"\nsizes = [\"9x9\"]\n",
        &[],
    );
    assert!(stderr.contains("bad.toml has 3 errors"), "{stderr}");
    let at: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix(site.dir.path().join("bad.toml").to_str().unwrap()))
        .collect();
    assert_eq!(at.len(), 3, "{stderr}");
    assert!(
        at[0].starts_with(":4:16: value \"1\" is listed twice"),
        "{stderr}"
    );
    assert!(
        at[1].starts_with(":7:8: a template named \"a\" already exists"),
        "{stderr}"
    );
    assert!(at[2].starts_with(":9:10: size 9x9 is outside"), "{stderr}");
    assert!(
        stderr.contains("  | sizes = [\"9x9\"]\n  |          ^"),
        "{stderr}"
    );
    assert!(
        !site.dir.path().join("data").exists(),
        "a refused file starts nothing"
    );
}
