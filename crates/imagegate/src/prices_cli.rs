//! `imagegate prices check` and `imagegate prices list`: the price book held against
//! the configured providers, without starting the service or needing provider keys.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use imagegate_providers::price_book::{audit, Listed};
use imagegate_providers::{offered_by, PriceBook};
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum Action {
    /// Lists prices older than --max-age-days, offered models without an entry, and
    /// retired models still configured (and, as warnings, models retiring within 30
    /// days). Exits 1 when anything but a warning is found, so a deploy can gate on it.
    Check(CheckArgs),
    /// The book as the service prices with it: per provider and model, one 1024x1024
    /// image at each quality tier, the surge and discount in force now, status, as_of.
    List(ListArgs),
}

#[derive(Args)]
pub struct CheckArgs {
    /// A price read longer ago than this is stale.
    #[arg(long, default_value_t = 90)]
    pub max_age_days: i64,
    /// JSON instead of lines of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ListArgs {
    /// JSON (the same as GET /v1/prices) instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(config: imagegate_pipeline::PipelineConfig, action: Action) -> Result<ExitCode> {
    let book = PriceBook::load(&config.pricing)
        .with_context(|| format!("loading the price book {}", config.pricing.display()))?;
    match action {
        Action::Check(args) => check(&config, &book, &args),
        Action::List(args) => {
            let listing = book.listing(chrono::Utc::now());
            if args.json {
                println!("{}", serde_json::to_string_pretty(&listing)?);
            } else {
                print!("{}", table(&listing));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn check(
    config: &imagegate_pipeline::PipelineConfig,
    book: &PriceBook,
    args: &CheckArgs,
) -> Result<ExitCode> {
    let offered = offered_by(&config.providers);
    let findings = audit(
        book,
        &offered,
        chrono::Utc::now().date_naive(),
        args.max_age_days,
    );
    let failing = findings.iter().filter(|f| f.fails()).count();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "book": config.pricing.display().to_string(),
                "version": book.version(),
                "offered": offered.len(),
                "findings": findings,
            }))?
        );
    } else {
        for f in &findings {
            let level = if f.fails() { "error" } else { "warning" };
            println!("{level}: {} ({})", f, f.as_str());
        }
        println!(
            "{}: {} offered model(s), {} entries, {} finding(s), {failing} failing",
            config.pricing.display(),
            offered.len(),
            book.entries().len(),
            findings.len()
        );
    }
    Ok(if failing > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn table(listing: &[Listed]) -> String {
    let mut out = String::from(
        "provider   model                             status       1024x1024 (quality: usd)                   surge  discount  as_of\n",
    );
    for l in listing {
        let tiers = l
            .image_1024
            .iter()
            .map(|t| {
                let usd = t
                    .usd
                    .map_or_else(|| "n/a".to_string(), |u| format!("{u:.6}"));
                match &t.quality {
                    Some(q) => format!("{q}: {usd}"),
                    None => usd,
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        out.push_str(&format!(
            "{:<10} {:<33} {:<12} {:<42} {:<6} {:<9} {}\n",
            l.provider,
            l.model,
            l.status.as_str(),
            tiers,
            l.surge_multiplier,
            format!("{}%", l.discount_pct),
            l.as_of
        ));
    }
    out
}
