//! Configuration layering: the TOML file, then `IMAGEGATE_<SECTION>__<KEY>`
//! environment variables on top; validated once, then passed by value.
//!
//! Each crate owns its section's type; the tree is composed here: `[server]` is the
//! HTTP server's, every other section the pipeline's.

use anyhow::{Context, Result};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::Dict;
use figment::Figment;
use imagegate_pipeline::config::StorageConfig;
use imagegate_pipeline::PipelineConfig;
use imagegate_server::ServerConfig;
use std::path::Path;

pub const DEFAULT_CONFIG: &str = "config/imagegate.toml";

pub fn load(path: Option<&Path>) -> Result<Config> {
    let path = path.unwrap_or(Path::new(DEFAULT_CONFIG));
    if !path.is_file() {
        anyhow::bail!(
            "configuration file {} does not exist (pass --config FILE or set IMAGEGATE_CONFIG)",
            path.display()
        );
    }
    let figment = Figment::new()
        .merge(Toml::file(path))
        // Only SECTION__KEY variables are settings; IMAGEGATE_CONFIG and friends are not.
        .merge(
            Env::prefixed("IMAGEGATE_")
                .filter(|k| k.as_str().contains("__"))
                .split("__"),
        );
    let invalid = || format!("configuration {}", path.display());
    let config = compose(&figment).with_context(invalid)?;
    config
        .server
        .validate()
        .map_err(|e| e.under("server"))
        .with_context(invalid)?;
    config.pipeline.validate().with_context(invalid)?;
    Ok(config)
}

/// The whole tree.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    /// Every other section.
    pub pipeline: PipelineConfig,
}

/// Hands each section to the type of the crate that owns it. Each refuses fields it
/// does not know, and the pipeline's refuses sections nobody owns, so a typo anywhere
/// fails here. (Not `#[serde(flatten)]`: a flattened struct never sees unknown keys.)
fn compose(figment: &Figment) -> Result<Config> {
    let mut tree: Dict = figment.extract()?;
    let server = match tree.remove(SERVER) {
        Some(section) => {
            Figment::from(Serialized::default(SERVER, section)).extract_inner(SERVER)?
        }
        None => ServerConfig::default(),
    };
    let pipeline = Figment::from(Serialized::defaults(tree)).extract()?;
    Ok(Config { server, pipeline })
}

/// The section `imagegate-server` owns.
const SERVER: &str = "server";

impl Config {
    /// The pipeline's sections, with the one value only the composition knows: a
    /// local store's files served by `imagegate serve` are at the `/cdn/` of the
    /// address it listens on, unless `storage.public_base_url` says otherwise.
    pub fn into_pipeline(self) -> PipelineConfig {
        let mut pipeline = self.pipeline;
        if let StorageConfig::Local(store) = &mut pipeline.storage {
            if store.public_base_url.is_none() && self.server.serve_cdn {
                store.public_base_url = Some(self.server.local_cdn_base_url());
            }
        }
        pipeline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<Config> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("imagegate.toml");
        std::fs::write(&path, text)?;
        load(Some(&path))
    }

    const SHIPPED: &str = include_str!("../../../config/imagegate.toml");

    #[test]
    fn the_shipped_tree_composes_and_the_cdn_follows_listen() {
        let mut config = load_text(SHIPPED).expect("the shipped configuration loads");
        config.server.listen = "0.0.0.0:9123".parse().unwrap();
        let pipeline = config.into_pipeline();
        assert_eq!(
            pipeline.local_public_base_url().unwrap().as_deref(),
            Some("http://127.0.0.1:9123/cdn")
        );
    }

    #[test]
    fn each_section_refuses_what_it_does_not_know_and_names_the_path() {
        let typo = load_text(&format!("{SHIPPED}\n[bogus]\nx = 1\n")).expect_err("refused");
        assert!(format!("{typo:#}").contains("bogus"), "{typo:#}");
        let server = load_text(&SHIPPED.replace("[server]", "[server]\nlisten_on = 1"))
            .expect_err("refused");
        assert!(format!("{server:#}").contains("listen_on"), "{server:#}");
        assert!(SHIPPED.contains("\nburst = 100 "));
        let burst =
            load_text(&SHIPPED.replace("\nburst = 100 ", "\nburst = 0 ")).expect_err("refused");
        assert!(
            format!("{burst:#}").contains("server.auth.burst"),
            "{burst:#}"
        );
    }
}
