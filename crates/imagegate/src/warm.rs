//! `imagegate warm TEMPLATES.toml`: fill the cache ahead of traffic from prompt
//! templates, through the same pipeline and ledger as the server.
//!
//! A run has two phases. Planning asks [`Pipeline::estimate`] about every image: its
//! content key, whether it is already published, and what its chosen provider would
//! charge. Published keys are not requested again (no ledger row, no cost), which is
//! what makes a second run all hits at zero cost. Then the misses are generated in
//! template order, at most `--concurrency` at a time, and never started when what is
//! spent plus what is in flight plus the next estimate would pass `--budget-usd`.
//! `--dry-run` stops after planning.
//!
//! Exit status: 0 when every image is published (images skipped for the budget are
//! reported but are not failures: the next run continues where this one stopped),
//! 3 when any image failed, 130 when interrupted, 1 when the run could not start.

use crate::template::{self, Item};
use crate::usd6;
use anyhow::{Context, Result};
use futures::stream::{FuturesUnordered, StreamExt};
use imagegate_core::{ContentKey, ManifestStatus, Micros};
use imagegate_pipeline::{
    CacheOutcome, ImageRequest, Outcome, Pipeline, PipelineConfig, PipelineError, RequestContext,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(clap::Args)]
pub struct Args {
    /// The template file.
    pub templates: PathBuf,
    /// Images generated at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,
    /// Start no image that could take the run's spending past this many USD
    /// (spent plus in flight plus the next image's estimate).
    #[arg(long)]
    pub budget_usd: Option<f64>,
    /// Count images, cached keys and the estimated cost; generate nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Refuse template files that expand to more images than this.
    #[arg(long, default_value_t = 1000)]
    pub max_images: u64,
    /// The API key id the ledger books the run under (`imagegate report --by key`).
    #[arg(long, default_value = "warm")]
    pub key: String,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Queue the misses as deferred jobs due by this RFC 3339 time or within this
    /// duration (`24h`) instead of generating them now: each runs at the cheapest
    /// moment before it, in any `imagegate serve` on the same ledger.
    #[arg(long)]
    pub deliver_by: Option<String>,
}

/// Some images failed.
pub(crate) const EXIT_FAILED: u8 = 3;
/// Ctrl-C: in-flight images were finished, nothing new was started.
const EXIT_INTERRUPTED: u8 = 130;
/// Tries per image when the pipeline answers "at capacity" (another process, e.g. a
/// server on the same store, may share the provider slots).
const OVERLOAD_TRIES: u32 = 4;

/// What planning found out about one image.
pub(crate) enum Plan {
    /// Published already; `original` is what producing it cost the first time.
    Cached {
        original: Micros,
        blocked: Option<String>,
    },
    Generate {
        provider: String,
        model: String,
        expected: Micros,
    },
    /// The same content key as an earlier image of the file.
    Duplicate,
    Fail(String),
}

/// How one image ended.
#[derive(Clone)]
enum Done {
    Hit { original: Micros, spent: Micros },
    Miss { spent: Micros },
    Failed { reason: String, spent: Micros },
    SkippedBudget(String),
    Interrupted,
    Duplicate,
}

pub async fn run(mut config: PipelineConfig, args: Args) -> Result<ExitCode> {
    let path = args.templates.display().to_string();
    let text = std::fs::read_to_string(&args.templates)
        .with_context(|| format!("reading templates {path}"))?;
    let templates = template::parse(&path, &text, &config)?;
    let total = template::check_limit(&path, &text, &templates, args.max_images)?;
    if let Some(b) = args.budget_usd {
        anyhow::ensure!(
            b.is_finite() && b >= 0.0,
            "--budget-usd must be a non-negative number"
        );
    }
    let items: Vec<Item> = templates.iter().flat_map(|t| t.expand()).collect();
    debug_assert_eq!(items.len() as u64, total);
    if let Some(by) = &args.deliver_by {
        imagegate_pipeline::deferred::parse_deliver_by(by, chrono::Utc::now())
            .map_err(|e| anyhow::anyhow!("--deliver-by: {e}"))?;
        // The run spends nothing now; the jobs are paid when they run, under the
        // key's [budgets], which a run-wide cap here could not hold.
        anyhow::ensure!(
            args.budget_usd.is_none(),
            "--budget-usd caps what this run spends now; with --deliver-by the jobs are paid \
             later, under the key's [budgets] limits"
        );
    }
    if args.dry_run || args.deliver_by.is_some() {
        // A dry run reads manifests and prices only, and deferring only queues. The
        // classifier is not part of any content key, so skipping its start-up
        // (seconds of CPU) changes no answer.
        config.safety.classifier = false;
    }
    let allowance = config.budgets.processing_reserve;
    let pipeline = Pipeline::start(config)
        .await
        .context("starting the pipeline")?;
    let plans = plan(&pipeline, &items, usize::from(args.concurrency)).await;
    let result = if args.dry_run {
        Ok(dry_run(&path, &args, &items, &plans, allowance))
    } else if let Some(by) = &args.deliver_by {
        crate::warm_defer::enqueue(&pipeline, &path, &args, by, &items, plans).await
    } else {
        execute(&pipeline, &path, &args, &items, plans, allowance).await
    };
    pipeline.ledger().close().await;
    result
}

/// Estimates every image, `concurrency` at a time, keeping file order.
async fn plan(pipeline: &Pipeline, items: &[Item], concurrency: usize) -> Vec<Plan> {
    let bar = progress(items.len() as u64, "planning");
    let bar = &bar;
    let estimates: Vec<_> = futures::stream::iter(items)
        .map(|item| async move {
            let e = pipeline.estimate(&item.request).await;
            bar.inc(1);
            e
        })
        .buffered(concurrency.max(4))
        .collect()
        .await;
    bar.finish_and_clear();
    let mut seen: HashMap<ContentKey, usize> = HashMap::new();
    let mut plans = Vec::with_capacity(items.len());
    for (i, estimate) in estimates.into_iter().enumerate() {
        let (key, cached, estimate) = match estimate {
            Ok(e) => e,
            Err(e) => {
                plans.push(Plan::Fail(e.to_string()));
                continue;
            }
        };
        if seen.insert(key, i).is_some() {
            plans.push(Plan::Duplicate);
            continue;
        }
        if cached {
            plans.push(match pipeline.manifest(key).await {
                Ok(Some(m)) => Plan::Cached {
                    original: m.cost_micros,
                    blocked: (m.status == ManifestStatus::Blocked).then(|| blocked_reason(&m)),
                },
                Ok(None) => Plan::Fail(format!("the manifest of {key} vanished while planning")),
                Err(e) => Plan::Fail(e.to_string()),
            });
            continue;
        }
        plans.push(match estimate.chosen {
            Some(c) => Plan::Generate {
                provider: c.provider,
                model: c.model,
                expected: c.expected,
            },
            None => {
                let why: Vec<String> = estimate
                    .candidates
                    .iter()
                    .map(|c| {
                        format!(
                            "{}: {}",
                            c.label(),
                            c.skipped_reason
                                .as_ref()
                                .map_or_else(|| "not eligible".to_string(), ToString::to_string)
                        )
                    })
                    .collect();
                Plan::Fail(format!(
                    "no provider can take {} now ({})",
                    estimate.choice,
                    why.join("; ")
                ))
            }
        });
    }
    plans
}

fn blocked_reason(m: &imagegate_core::Manifest) -> String {
    match m.safety.nsfw_score {
        Some(score) => format!(
            "the image was blocked by the {} check (nsfw score {score:.3}); nothing is served for it",
            m.safety.source
        ),
        None => format!(
            "the image was blocked by the {} check; nothing is served for it",
            m.safety.source
        ),
    }
}

/// A bar on a terminal, nothing otherwise (logs and pipes stay clean).
fn progress(len: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>9} [{bar:30}] {pos}/{len} {elapsed_precise} ETA {eta} {msg}",
        )
        .expect("the template is valid")
        .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}

/// Plain status lines for people watching without a terminal bar (CI logs).
fn note(message: &str) {
    eprintln!("warm: {message}");
}

async fn execute(
    pipeline: &Pipeline,
    path: &str,
    args: &Args,
    items: &[Item],
    plans: Vec<Plan>,
    allowance: Micros,
) -> Result<ExitCode> {
    let mut done: Vec<Option<Done>> = vec![None; items.len()];
    let mut queue = Vec::new();
    for (i, p) in plans.into_iter().enumerate() {
        done[i] = match p {
            Plan::Cached {
                original,
                blocked: None,
            } => Some(Done::Hit {
                original,
                spent: Micros::ZERO,
            }),
            Plan::Cached {
                blocked: Some(reason),
                ..
            } => Some(Done::Failed {
                reason,
                spent: Micros::ZERO,
            }),
            Plan::Duplicate => Some(Done::Duplicate),
            Plan::Fail(reason) => Some(Done::Failed {
                reason,
                spent: Micros::ZERO,
            }),
            Plan::Generate { expected, .. } => {
                queue.push((i, expected));
                None
            }
        };
    }
    let budget = args.budget_usd.map(Micros::from_usd);
    note(&format!(
        "{} images from {path}: {} cached, {} to generate, {} failing before generation{}",
        items.len(),
        count(&done, |d| matches!(d, Done::Hit { .. })),
        queue.len(),
        count(&done, |d| matches!(d, Done::Failed { .. })),
        budget.map_or(String::new(), |b| format!("; budget {} USD", usd6(b))),
    ));

    let bar = progress(queue.len() as u64, "warming");
    let run_id = format!(
        "warm-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp()
    );
    let mut spent = Micros::ZERO;
    let mut reserved = Micros::ZERO;
    // What a miss costs beyond its provider estimate (processing, storage): the
    // configured reserve at first, then the most any finished miss needed.
    let mut overhead = allowance;
    let mut stop: Option<Done> = None;
    let mut in_flight = FuturesUnordered::new();
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    let mut listening = true;
    // Counts for the bar's message, starting with what planning settled.
    let mut tally = Tally::default();
    for d in done.iter().flatten() {
        tally.add(d);
    }

    let mut pending = queue.into_iter();
    loop {
        // Start what may start: in order, while there is a slot and the budget holds.
        while stop.is_none() && in_flight.len() < usize::from(args.concurrency) {
            let Some(&(i, expected)) = pending.as_slice().first() else {
                break;
            };
            let need = expected + overhead;
            if let Some(b) = budget {
                if spent.0 + reserved.0 + need.0 > b.0 {
                    if in_flight.is_empty() {
                        stop = Some(Done::SkippedBudget(format!(
                            "needs about {} USD; {} of the {} USD budget is spent",
                            usd6(need),
                            usd6(spent),
                            usd6(b)
                        )));
                    }
                    // Otherwise wait: finished work may have cost less than reserved.
                    break;
                }
            }
            pending.next();
            reserved += need;
            let ctx = RequestContext {
                request_id: format!("{run_id}-{i}"),
                api_key: Some(args.key.clone()),
                survives_restart: false,
            };
            let request = &items[i].request;
            in_flight.push(async move {
                let outcome = generate(pipeline, request, &ctx).await;
                let done = settle(pipeline, &ctx, outcome).await;
                (i, expected, need, done)
            });
        }
        if in_flight.is_empty() {
            break;
        }
        let finished = tokio::select! {
            f = in_flight.next() => f,
            r = &mut interrupt, if listening && stop.is_none() => {
                listening = false;
                // Err: no signal handler could be installed; Ctrl-C then just kills us.
                if r.is_ok() {
                    bar.suspend(|| note("interrupted: finishing the images in flight, starting no more"));
                    stop = Some(Done::Interrupted);
                }
                continue;
            }
        };
        let Some((i, expected, need, d)) = finished else {
            break;
        };
        reserved.0 -= need.0;
        match &d {
            // A blocked image was generated and processed too: it informs the estimate.
            Done::Miss { spent: s } | Done::Failed { spent: s, .. } if s.0 > 0 => {
                overhead = Micros(overhead.0.max(s.0 - expected.0));
                if let Done::Failed { reason, .. } = &d {
                    bar.suspend(|| note(&format!("failed: {}: {reason}", describe(&items[i]))));
                }
            }
            Done::SkippedBudget(reason) if stop.is_none() => {
                // The key's own budget in the configuration refused: so will it the rest.
                stop = Some(Done::SkippedBudget(reason.clone()));
            }
            Done::Failed { reason, .. } => {
                bar.suspend(|| note(&format!("failed: {}: {reason}", describe(&items[i]))));
            }
            _ => {}
        }
        spent += d.spent();
        tally.add(&d);
        done[i] = Some(d);
        bar.inc(1);
        bar.set_message(format!(
            "{} generated · {} hits · {} failed · {} USD",
            tally.misses,
            tally.hits,
            tally.failed,
            usd6(spent)
        ));
    }
    bar.finish_and_clear();
    for (i, _) in pending {
        done[i] = Some(stop.clone().unwrap_or(Done::Interrupted));
    }
    let done: Vec<Done> = done
        .into_iter()
        .map(|d| d.expect("every image is settled"))
        .collect();
    let summary = Summary::new(path, args, items, &done);
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&summary.json())?),
        Format::Table => print!("{}", summary.table()),
    }
    Ok(if done.iter().any(|d| matches!(d, Done::Interrupted)) {
        ExitCode::from(EXIT_INTERRUPTED)
    } else if summary.total.failed > 0 {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

fn count(done: &[Option<Done>], f: impl Fn(&Done) -> bool) -> usize {
    done.iter().flatten().filter(|d| f(d)).count()
}

/// One image through the pipeline, retried when the pipeline is momentarily full.
async fn generate(
    pipeline: &Pipeline,
    request: &ImageRequest,
    ctx: &RequestContext,
) -> Result<Outcome, PipelineError> {
    let mut tries = 0;
    loop {
        tries += 1;
        match pipeline.generate(request, ctx).await {
            Err(PipelineError::Overloaded { retry_after, .. }) if tries < OVERLOAD_TRIES => {
                tokio::time::sleep(retry_after.min(Duration::from_secs(10))).await;
            }
            other => return other,
        }
    }
}

/// What one image came to, and what it cost. A failure can cost too (a provider paid
/// before the store failed): the pipeline has put that charge in the ledger under
/// the request's id by the time it answers, so it is read back from there.
async fn settle(
    pipeline: &Pipeline,
    ctx: &RequestContext,
    outcome: Result<Outcome, PipelineError>,
) -> Done {
    match outcome {
        Ok(o) => {
            let spent: Micros = o.stages.iter().map(|s| s.micros).sum();
            if o.manifest.status == ManifestStatus::Blocked {
                Done::Failed {
                    reason: blocked_reason(&o.manifest),
                    spent,
                }
            } else if o.cache == CacheOutcome::Hit {
                // Published by someone else between planning and now.
                Done::Hit {
                    original: o.manifest.cost_micros,
                    spent,
                }
            } else {
                Done::Miss { spent }
            }
        }
        Err(e @ PipelineError::BudgetExhausted { .. }) => Done::SkippedBudget(e.to_string()),
        Err(e) => {
            let spent = match pipeline.ledger().request_rows(&ctx.request_id).await {
                Ok(rows) => rows.iter().map(|r| r.micros).sum(),
                Err(read) => {
                    tracing::warn!(error = %read, "could not read what a failed image cost");
                    Micros::ZERO
                }
            };
            Done::Failed {
                reason: e.to_string(),
                spent,
            }
        }
    }
}

impl Done {
    fn spent(&self) -> Micros {
        match self {
            Done::Hit { spent, .. } | Done::Miss { spent } | Done::Failed { spent, .. } => *spent,
            _ => Micros::ZERO,
        }
    }
}

/// `avatars {style=ink, animal=fox} 512x512 seed 2`
pub(crate) fn describe(item: &Item) -> String {
    let mut s = item.template.clone();
    if !item.vars.is_empty() {
        let vars: Vec<String> = item.vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
        s.push_str(&format!(" {{{}}}", vars.join(", ")));
    }
    if let Some(size) = &item.request.size {
        s.push_str(&format!(" {size}"));
    }
    if let Some(seed) = item.request.seed {
        s.push_str(&format!(" seed {seed}"));
    }
    s
}

pub(crate) fn item_json(item: &Item) -> serde_json::Value {
    let vars: serde_json::Map<String, serde_json::Value> = item
        .vars
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into()))
        .collect();
    json!({
        "template": item.template,
        "vars": vars,
        "prompt": item.request.prompt,
        "size": item.request.size,
        "seed": item.request.seed,
    })
}

#[derive(Default, Clone)]
struct Tally {
    images: u64,
    hits: u64,
    misses: u64,
    failed: u64,
    skipped_budget: u64,
    interrupted: u64,
    duplicates: u64,
    spent: Micros,
    saved: Micros,
}

impl Tally {
    fn add(&mut self, d: &Done) {
        self.spent += d.spent();
        if !matches!(d, Done::Duplicate) {
            self.images += 1;
        }
        match d {
            Done::Hit { original, .. } => {
                self.hits += 1;
                self.saved += *original;
            }
            Done::Miss { .. } => self.misses += 1,
            Done::Failed { .. } => self.failed += 1,
            Done::SkippedBudget(_) => self.skipped_budget += 1,
            Done::Interrupted => self.interrupted += 1,
            Done::Duplicate => self.duplicates += 1,
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "images": self.images,
            "hits": self.hits,
            "misses": self.misses,
            "failed": self.failed,
            "skipped_budget": self.skipped_budget,
            "interrupted": self.interrupted,
            "duplicates": self.duplicates,
            "spent_micros": self.spent.0,
            "spent_usd": self.spent.as_usd(),
            "saved_micros": self.saved.0,
            "saved_usd": self.saved.as_usd(),
        })
    }
}

struct Summary<'a> {
    path: &'a str,
    args: &'a Args,
    items: &'a [Item],
    done: &'a [Done],
    by_template: Vec<(String, Tally)>,
    total: Tally,
}

impl<'a> Summary<'a> {
    fn new(path: &'a str, args: &'a Args, items: &'a [Item], done: &'a [Done]) -> Summary<'a> {
        let mut by_template: Vec<(String, Tally)> = Vec::new();
        let mut total = Tally::default();
        for (item, d) in items.iter().zip(done) {
            if by_template.last().is_none_or(|(n, _)| *n != item.template) {
                by_template.push((item.template.clone(), Tally::default()));
            }
            by_template.last_mut().expect("pushed above").1.add(d);
            total.add(d);
        }
        Summary {
            path,
            args,
            items,
            done,
            by_template,
            total,
        }
    }

    fn listed(&self, pick: impl Fn(&Done) -> Option<&str>) -> Vec<(&Item, &str)> {
        self.items
            .iter()
            .zip(self.done)
            .filter_map(|(i, d)| pick(d).map(|r| (i, r)))
            .collect()
    }

    fn failures(&self) -> Vec<(&Item, &str)> {
        self.listed(|d| match d {
            Done::Failed { reason, .. } => Some(reason.as_str()),
            _ => None,
        })
    }

    fn skipped(&self) -> Vec<(&Item, &str)> {
        self.listed(|d| match d {
            Done::SkippedBudget(reason) => Some(reason.as_str()),
            _ => None,
        })
    }

    fn json(&self) -> serde_json::Value {
        let listed = |rows: Vec<(&Item, &str)>, field: &str| -> Vec<serde_json::Value> {
            rows.into_iter()
                .map(|(i, r)| {
                    let mut v = item_json(i);
                    v[field] = r.into();
                    v
                })
                .collect()
        };
        let mut out = self.total.json();
        out["templates_file"] = self.path.into();
        out["dry_run"] = false.into();
        out["key"] = self.args.key.clone().into();
        out["budget_usd"] = self.args.budget_usd.into();
        out["templates"] = self
            .by_template
            .iter()
            .map(|(name, t)| {
                let mut v = t.json();
                v["name"] = name.clone().into();
                v
            })
            .collect();
        out["failures"] = listed(self.failures(), "error").into();
        out["skipped"] = listed(self.skipped(), "reason").into();
        out
    }

    fn table(&self) -> String {
        let mut rows = vec![[
            "template",
            "images",
            "hits",
            "misses",
            "failed",
            "skipped_budget",
            "spent_usd",
            "saved_usd",
        ]
        .map(String::from)
        .to_vec()];
        let cells = |name: &str, t: &Tally| {
            vec![
                name.to_string(),
                t.images.to_string(),
                t.hits.to_string(),
                t.misses.to_string(),
                t.failed.to_string(),
                t.skipped_budget.to_string(),
                usd6(t.spent),
                usd6(t.saved),
            ]
        };
        rows.extend(self.by_template.iter().map(|(n, t)| cells(n, t)));
        let total = cells("TOTAL", &self.total);
        let mut out = crate::table::with_total(&rows, &total, 1);
        let t = &self.total;
        if t.duplicates > 0 {
            out.push_str(&format!(
                "\n{} duplicate(s) of earlier images (same content key) were not requested again\n",
                t.duplicates
            ));
        }
        let failures = self.failures();
        if !failures.is_empty() {
            out.push_str(&format!("\nfailed ({}):\n", failures.len()));
            for (item, reason) in failures {
                out.push_str(&format!("  {}: {reason}\n", describe(item)));
            }
        }
        let skipped = self.skipped();
        if !skipped.is_empty() {
            out.push_str(&format!(
                "\nskipped for budget ({}; run again with a larger --budget-usd to continue): {}\n",
                skipped.len(),
                skipped[0].1
            ));
            const SHOWN: usize = 20;
            for (item, _) in skipped.iter().take(SHOWN) {
                out.push_str(&format!("  {}\n", describe(item)));
            }
            if skipped.len() > SHOWN {
                out.push_str(&format!("  … and {} more\n", skipped.len() - SHOWN));
            }
        }
        if t.interrupted > 0 {
            out.push_str(&format!(
                "\ninterrupted: {} image(s) not started; run again to continue\n",
                t.interrupted
            ));
        }
        out
    }
}

/// `--dry-run`: counts and the provider cost of the misses; nothing generated, nothing
/// spent, nothing written to the ledger.
fn dry_run(path: &str, args: &Args, items: &[Item], plans: &[Plan], allowance: Micros) -> ExitCode {
    let mut cached = 0u64;
    let mut duplicates = 0u64;
    let mut by_provider: BTreeMap<(String, String), (u64, Micros)> = BTreeMap::new();
    let mut failures = Vec::new();
    // With a budget, which misses a real run would start (file order, sequentially).
    let budget = args.budget_usd.map(Micros::from_usd);
    let (mut committed, mut fits, mut over_budget) = (Micros::ZERO, 0u64, 0u64);
    for (item, p) in items.iter().zip(plans) {
        match p {
            Plan::Cached { blocked: None, .. } => cached += 1,
            Plan::Cached {
                blocked: Some(r), ..
            } => failures.push((item, r.clone())),
            Plan::Duplicate => duplicates += 1,
            Plan::Fail(r) => failures.push((item, r.clone())),
            Plan::Generate {
                provider,
                model,
                expected,
                ..
            } => {
                let e = by_provider
                    .entry((provider.clone(), model.clone()))
                    .or_default();
                e.0 += 1;
                e.1 += *expected;
                let need = *expected + allowance;
                match budget {
                    Some(b) if over_budget > 0 || committed.0 + need.0 > b.0 => over_budget += 1,
                    _ => {
                        committed += need;
                        fits += 1;
                    }
                }
            }
        }
    }
    let misses: u64 = by_provider.values().map(|(n, _)| n).sum();
    let estimated: Micros = by_provider.values().map(|(_, m)| *m).sum();
    let images = items.len() as u64 - duplicates;
    if args.format == Format::Json {
        let body = json!({
            "templates_file": path,
            "dry_run": true,
            "images": images,
            "cached": cached,
            "to_generate": misses,
            "failing": failures.len(),
            "duplicates": duplicates,
            "estimate": {
                "micros": estimated.0,
                "usd": estimated.as_usd(),
                "by_provider": by_provider.iter().map(|((p, m), (n, c))| json!({
                    "provider": p, "model": m, "images": n, "micros": c.0, "usd": c.as_usd(),
                })).collect::<Vec<_>>(),
            },
            "budget_usd": args.budget_usd,
            "would_skip_for_budget": over_budget,
            "failures": failures.iter().map(|(i, r)| {
                let mut v = item_json(i);
                v["error"] = r.clone().into();
                v
            }).collect::<Vec<_>>(),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&body).expect("JSON values always serialize")
        );
    } else {
        let mut out = format!(
            "dry run of {path}: nothing generated, nothing spent\n\n\
             images       {images}\ncached       {cached}\nto generate  {misses}\nwould fail   {}\n",
            failures.len()
        );
        if duplicates > 0 {
            out.push_str(&format!(
                "duplicates   {duplicates} (same content key as an earlier image)\n"
            ));
        }
        out.push_str("\nestimated provider cost of the images to generate:\n");
        let mut rows = vec![["provider", "model", "images", "usd"]
            .map(String::from)
            .to_vec()];
        rows.extend(
            by_provider
                .iter()
                .map(|((p, m), (n, c))| vec![p.clone(), m.clone(), n.to_string(), usd6(*c)]),
        );
        let total = vec![
            "TOTAL".into(),
            String::new(),
            misses.to_string(),
            usd6(estimated),
        ];
        out.push_str(&crate::table::with_total(&rows, &total, 2));
        out.push_str(&format!(
            "(provider fees; processing and storage add about {} USD per image)\n",
            usd6(allowance)
        ));
        if let Some(b) = budget {
            out.push_str(&format!(
                "\nwith --budget-usd {}: {fits} would be generated, {over_budget} skipped for budget\n",
                usd6(b)
            ));
        }
        if !failures.is_empty() {
            out.push_str(&format!("\nwould fail ({}):\n", failures.len()));
            for (item, reason) in &failures {
                out.push_str(&format!("  {}: {reason}\n", describe(item)));
            }
        }
        print!("{out}");
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}
