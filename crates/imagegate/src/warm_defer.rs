//! `imagegate warm --deliver-by 24h`: the template set's misses become deferred jobs
//! in the ledger's queue instead of being generated now. Each job waits for the
//! cheapest moment before the deadline (surge windows, an upstream batch API) and is
//! run by the worker of any `imagegate serve` on the same ledger; the jobs survive
//! this command, which only queues them and reports what the plan saves against
//! generating now. What the jobs finally cost is in `imagegate report --only
//! savings` and `GET /v1/jobs`.

use crate::template::Item;
use crate::usd6;
use crate::warm::{Args, Format, Plan};
use anyhow::Result;
use imagegate_core::Micros;
use imagegate_pipeline::deferred::Deferred;
use imagegate_pipeline::{Pipeline, RequestContext};
use serde_json::json;
use std::process::ExitCode;

/// How one image went into the queue.
enum Queued {
    Job {
        id: String,
        run_after: chrono::DateTime<chrono::Utc>,
        /// Quoted now and at the planned moment; None: unknown (never $0).
        live: Option<Micros>,
        planned: Option<Micros>,
        /// False: the same request was already queued by this key.
        created: bool,
    },
    /// Published between planning and queueing: nothing to do.
    Published,
    Cached,
    Duplicate,
    Failed(String),
}

pub async fn enqueue(
    pipeline: &Pipeline,
    path: &str,
    args: &Args,
    deliver_by: &str,
    items: &[Item],
    plans: Vec<Plan>,
) -> Result<ExitCode> {
    let run_id = format!(
        "warm-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp()
    );
    let mut queued = Vec::with_capacity(items.len());
    for (i, (item, plan)) in items.iter().zip(plans).enumerate() {
        queued.push(match plan {
            Plan::Cached { .. } => Queued::Cached,
            Plan::Duplicate => Queued::Duplicate,
            Plan::Fail(reason) => Queued::Failed(reason),
            Plan::Generate { .. } => {
                let mut request = item.request.clone();
                request.deliver_by = Some(deliver_by.to_string());
                let ctx = RequestContext {
                    request_id: format!("{run_id}-{i}"),
                    api_key: Some(args.key.clone()),
                    survives_restart: false,
                };
                match pipeline.defer(&request, &ctx, None).await {
                    Ok(Deferred::Queued { job, created }) => Queued::Job {
                        id: job.id.clone(),
                        run_after: job.run_after,
                        live: job.live_micros,
                        planned: job.planned_micros,
                        created,
                    },
                    Ok(Deferred::Published(_)) => Queued::Published,
                    Err(e) => Queued::Failed(e.to_string()),
                }
            }
        });
    }
    let totals = Totals::of(&queued);
    match args.format {
        Format::Json => {
            let lines: Vec<serde_json::Value> = items
                .iter()
                .zip(&queued)
                .map(|(item, q)| {
                    let mut line = crate::warm::item_json(item);
                    line["outcome"] = q.json();
                    line
                })
                .collect();
            let body = json!({
                "templates": path,
                "deliver_by": deliver_by,
                "images": lines,
                "total": totals.json(),
            });
            println!("{}", serde_json::to_string_pretty(&body)?);
        }
        Format::Table => print!("{}", table(path, deliver_by, items, &queued, &totals)),
    }
    Ok(if totals.failed > 0 {
        ExitCode::from(crate::warm::EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

impl Queued {
    fn json(&self) -> serde_json::Value {
        let usd = |m: Option<Micros>| m.map(Micros::as_usd);
        match self {
            Queued::Job {
                id,
                run_after,
                live,
                planned,
                created,
            } => json!({
                "status": if *created { "queued" } else { "already_queued" },
                "job": id,
                "run_after": run_after.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "live_provider_usd": usd(*live),
                "planned_provider_usd": usd(*planned),
            }),
            Queued::Published => json!({"status": "published"}),
            Queued::Cached => json!({"status": "cached"}),
            Queued::Duplicate => json!({"status": "duplicate"}),
            Queued::Failed(reason) => json!({"status": "failed", "reason": reason}),
        }
    }
}

/// The run's sums. Savings count only jobs whose both prices are known.
#[derive(Default)]
struct Totals {
    jobs: u64,
    cached: u64,
    failed: u64,
    unpriced: u64,
    live: Micros,
    planned: Micros,
}

impl Totals {
    fn of(queued: &[Queued]) -> Totals {
        let mut t = Totals::default();
        for q in queued {
            match q {
                Queued::Job { live, planned, .. } => {
                    t.jobs += 1;
                    match (live, planned) {
                        (Some(l), Some(p)) => {
                            t.live += *l;
                            t.planned += *p;
                        }
                        _ => t.unpriced += 1,
                    }
                }
                Queued::Cached | Queued::Published => t.cached += 1,
                Queued::Failed(_) => t.failed += 1,
                Queued::Duplicate => {}
            }
        }
        t
    }

    fn saved(&self) -> Micros {
        self.live.saturating_sub(self.planned)
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "jobs": self.jobs,
            "cached": self.cached,
            "failed": self.failed,
            "unpriced_jobs": self.unpriced,
            "live_provider_usd": self.live.as_usd(),
            "planned_provider_usd": self.planned.as_usd(),
            "saved_usd": self.saved().as_usd(),
        })
    }
}

fn table(
    path: &str,
    deliver_by: &str,
    items: &[Item],
    queued: &[Queued],
    totals: &Totals,
) -> String {
    let price = |m: &Option<Micros>| m.map_or("unknown".to_string(), usd6);
    let mut out = format!(
        "{} images from {path}, deliver by {deliver_by}: {} queued as jobs, {} cached, {} failed\n",
        items.len(),
        totals.jobs,
        totals.cached,
        totals.failed
    );
    for (item, q) in items.iter().zip(queued) {
        let what = crate::warm::describe(item);
        match q {
            Queued::Job {
                id,
                run_after,
                live,
                planned,
                created,
            } => out.push_str(&format!(
                "  {what}: {id}{} runs {} at {} USD (live now {} USD)\n",
                if *created { "" } else { " (already queued)" },
                run_after.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                price(planned),
                price(live),
            )),
            Queued::Failed(reason) => out.push_str(&format!("  {what}: failed: {reason}\n")),
            Queued::Cached | Queued::Published | Queued::Duplicate => {}
        }
    }
    let percent = if totals.live.0 > 0 {
        format!(
            " ({:.0}%)",
            100.0 * totals.saved().0 as f64 / totals.live.0 as f64
        )
    } else {
        String::new()
    };
    out.push_str(&format!(
        "provider fees: {} USD planned against {} USD now, saving {} USD{percent}{}\n",
        usd6(totals.planned),
        usd6(totals.live),
        usd6(totals.saved()),
        if totals.unpriced > 0 {
            format!(
                "; {} jobs with an unknown price are not counted",
                totals.unpriced
            )
        } else {
            String::new()
        }
    ));
    out.push_str(
        "the jobs run in any `imagegate serve` on this ledger; follow them with GET /v1/jobs \
         and `imagegate report --only savings`\n",
    );
    out
}
