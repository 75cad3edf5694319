//! Configuration layering: the TOML file, then `IMAGEGATE_<SECTION>__<KEY>`
//! environment variables on top; validated once, then passed by value.

use anyhow::{Context, Result};
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use imagegate_pipeline::PipelineConfig;
use std::path::Path;

pub const DEFAULT_CONFIG: &str = "config/imagegate.toml";

pub fn load(path: Option<&Path>) -> Result<PipelineConfig> {
    let path = path.unwrap_or(Path::new(DEFAULT_CONFIG));
    if !path.is_file() {
        anyhow::bail!(
            "configuration file {} does not exist (pass --config FILE or set IMAGEGATE_CONFIG)",
            path.display()
        );
    }
    let config: PipelineConfig = Figment::new()
        .merge(Toml::file(path))
        // Only SECTION__KEY variables are settings; IMAGEGATE_CONFIG and friends are not.
        .merge(
            Env::prefixed("IMAGEGATE_")
                .filter(|k| k.as_str().contains("__"))
                .split("__"),
        )
        .extract()
        .with_context(|| format!("configuration {}", path.display()))?;
    config
        .validate()
        .with_context(|| format!("configuration {}", path.display()))?;
    Ok(config)
}
