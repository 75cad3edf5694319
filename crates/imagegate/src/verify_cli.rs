//! `imagegate verify FILE...`: each file's provenance (the invisible watermark and
//! the request that made it), as `POST /v1/verify` reports it.

use anyhow::{Context, Result};
use imagegate_pipeline::{Pipeline, PipelineConfig};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

/// Exit status: 0 when every file carries this service's watermark, 3 when some
/// do not, 1 when a file cannot be read.
pub async fn run(config: PipelineConfig, args: Args) -> Result<std::process::ExitCode> {
    let pipeline = Pipeline::start(config)
        .await
        .context("starting the pipeline")?;
    let mut all_marked = true;
    for path in &args.files {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let report = pipeline
            .verify(bytes.into())
            .await
            .with_context(|| format!("verifying {}", path.display()))?;
        all_marked &= report.watermark.found;
        let mut json = serde_json::to_value(&report)?;
        json["file"] = serde_json::Value::String(path.display().to_string());
        println!("{}", serde_json::to_string_pretty(&json)?);
    }
    pipeline.ledger().close().await;
    Ok(if all_marked {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(3)
    })
}
