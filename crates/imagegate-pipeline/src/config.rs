//! The pipeline's part of the configuration tree. Each component's own section type
//! lives beside the component (providers, storage, ledger, safety); this module
//! composes them and validates what spans several.

use imagegate_core::{ConfigError, ModelChoice, RenderProfile, Size};
use imagegate_ledger::LedgerConfig;
use imagegate_providers::ProviderConfig;
use imagegate_storage::{LocalStoreConfig, S3StoreConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    #[serde(default)]
    pub concurrency: ConcurrencyConfig,
    #[serde(default)]
    pub defaults: DefaultsConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub costs: CostsConfig,
    pub providers: Vec<ProviderConfig>,
    /// The price book (`config/pricing.toml`): what each provider model costs.
    #[serde(default = "default_pricing")]
    pub pricing: PathBuf,
    #[serde(default)]
    pub router: imagegate_providers::RouterConfig,
    /// Daily and monthly spending limits per API key.
    #[serde(default)]
    pub budgets: crate::budget::BudgetsConfig,
    pub storage: StorageConfig,
    pub ledger: LedgerConfig,
    /// How replicas sharing one store and ledger coordinate.
    #[serde(default)]
    pub fleet: FleetConfig,
    /// Jobs deferred with `deliver_by`.
    #[serde(default)]
    pub deferred: crate::deferred::DeferredConfig,
    pub safety: SafetyConfig,
    /// The invisible watermark and Content Credentials.
    #[serde(default)]
    pub provenance: imagegate_provenance::ProvenanceConfig,
    pub profiles: BTreeMap<String, RenderProfile>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConcurrencyConfig {
    /// CPU stages running at once; 0 means one per core.
    pub cpu_workers: usize,
    /// CPU jobs allowed to wait for a worker before requests get 503.
    pub cpu_queue: usize,
    /// Threads one miss encodes its files on; 0 means one per CPU worker. The files of
    /// one image are independent, so this cuts a miss's latency when the pool is idle.
    /// Threads beyond one per file go to libaom (tile columns), where the kernel
    /// allows perf task clocks to count their CPU time.
    pub encode_threads: usize,
    /// Misses between their provider call and a CPU worker at once: calling the
    /// provider, or holding its picture until a worker takes it. The bound on
    /// provider output waiting in memory, as well as on provider calls.
    pub generations: usize,
    /// Misses allowed to wait for a provider slot before requests get 503.
    pub generation_queue: usize,
    /// Manifests kept in memory.
    pub cache_entries: u64,
}

impl ConcurrencyConfig {
    /// `cpu_workers` with 0 resolved to one per core.
    pub fn resolved_cpu_workers(&self) -> usize {
        if self.cpu_workers == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        } else {
            self.cpu_workers
        }
    }
}

impl Default for ConcurrencyConfig {
    fn default() -> Self {
        ConcurrencyConfig {
            cpu_workers: 0,
            cpu_queue: 64,
            encode_threads: 0,
            generations: 16,
            generation_queue: 256,
            cache_entries: 100_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DefaultsConfig {
    pub profile: String,
    pub size: String,
    pub model: String,
    pub seed: u64,
}

impl Default for DefaultsConfig {
    fn default() -> Self {
        DefaultsConfig {
            profile: "default".into(),
            size: "1024x1024".into(),
            model: "standard".into(),
            seed: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Decoded pixels any image (provider output or upload) may have.
    pub max_pixels: u64,
    pub max_side: u32,
    /// Encoded bytes a provider or a caller may hand us.
    pub max_input_bytes: usize,
    /// Characters in a prompt or negative prompt, after normalization.
    pub max_prompt_chars: usize,
    /// Variant widths a request may ask for.
    pub max_variants: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_pixels: 64_000_000,
            max_side: 8192,
            max_input_bytes: 64 * 1024 * 1024,
            max_prompt_chars: 4000,
            max_variants: 8,
        }
    }
}

/// Prices of what imagegate itself spends, beside the providers' fees.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CostsConfig {
    /// One vCPU for an hour.
    pub usd_per_core_hour: f64,
    pub storage_usd_per_gb_month: f64,
    /// Object PUT requests, per thousand.
    pub put_usd_per_1000: f64,
    /// Object GET requests, per thousand.
    pub get_usd_per_1000: f64,
    /// Delivery bytes, for projections.
    pub egress_usd_per_gb: f64,
    /// How often one stored variant is expected to be served, for the delivery
    /// projection of `imagegate report` and `GET /v1/delivery` (nothing is charged).
    pub expected_views_per_image: f64,
}

impl Default for CostsConfig {
    fn default() -> Self {
        // AWS list prices (us-east-1, 2024): c7g vCPU-hour on demand, S3 Standard
        // storage, PUT and GET requests, CloudFront first-tier egress.
        CostsConfig {
            usd_per_core_hour: 0.0363,
            storage_usd_per_gb_month: 0.023,
            put_usd_per_1000: 0.005,
            get_usd_per_1000: 0.0004,
            egress_usd_per_gb: 0.085,
            expected_views_per_image: 1000.0,
        }
    }
}

/// Cross-replica single flight: a miss takes a lease on its key in the ledger
/// database before generating; other replicas wait for its manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// A lease not renewed for this long is free again (its holder died). The holder
    /// renews every third of it.
    pub lease_ttl_secs: u64,
    /// How long a replica waits for another's generation before answering 503.
    pub wait_secs: u64,
    /// First interval between looks at the store while waiting (doubles up to 8x).
    pub poll_ms: u64,
    /// How often a replica looks for a price book another replica published: every
    /// replica prices with the same book at most this long after it changes.
    pub prices_poll_secs: u64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            lease_ttl_secs: 30,
            wait_secs: 240,
            poll_ms: 50,
            prices_poll_secs: 5,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum StorageConfig {
    /// A directory served by imagegate under `/cdn/`: one machine.
    Local(LocalStoreConfig),
    /// Any S3 API (AWS, Garage, MinIO, R2) behind a CDN: a fleet.
    S3(S3StoreConfig),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafetyConfig {
    /// Run the NSFW classifier on every image. Off means every image is allowed and
    /// the verdict says so (`source: "none"`).
    pub classifier: bool,
    /// The ONNX model; read only when `classifier` is on. Defaults to where
    /// `scripts/fetch-models.sh` puts it.
    #[serde(default = "default_model")]
    pub model: PathBuf,
    /// The ONNX Runtime shared library; read only when `classifier` is on.
    #[serde(default = "default_runtime_library")]
    pub runtime_library: PathBuf,
    /// sha256 the model must have; empty skips the check (for a model of your own).
    #[serde(default = "pinned_model_sha256")]
    pub model_sha256: String,
    #[serde(default = "pinned_runtime_sha256")]
    pub runtime_sha256: String,
    /// ONNX Runtime sessions, each holding the model's weights (about 30 MB). 0 means
    /// one per four CPU workers: classifying is about a tenth of a miss's CPU, so one
    /// session keeps up with four workers, and a second on two cores only cost memory
    /// (BENCHMARKS.md, peak RSS).
    #[serde(default = "default_sessions")]
    pub sessions: usize,
    #[serde(default = "default_intra_threads")]
    pub intra_threads: usize,
    #[serde(default)]
    pub deny_words: Vec<String>,
    #[serde(default)]
    pub deny_patterns: Vec<String>,
}

fn default_pricing() -> PathBuf {
    PathBuf::from("config/pricing.toml")
}
fn default_model() -> PathBuf {
    PathBuf::from("models").join(imagegate_safety::MODEL_FILE)
}
fn default_runtime_library() -> PathBuf {
    PathBuf::from("models").join(imagegate_safety::RUNTIME_LIBRARY_FILE)
}
fn pinned_model_sha256() -> String {
    imagegate_safety::MODEL_SHA256.into()
}
fn pinned_runtime_sha256() -> String {
    imagegate_safety::RUNTIME_SHA256.into()
}
fn default_sessions() -> usize {
    0
}
fn default_intra_threads() -> usize {
    1
}

impl SafetyConfig {
    /// The classifier's settings for a pool of `cpu_workers` workers.
    pub fn classifier_config(&self, cpu_workers: usize) -> imagegate_safety::ClassifierConfig {
        imagegate_safety::ClassifierConfig {
            model_path: self.model.clone(),
            runtime_library: self.runtime_library.clone(),
            sessions: if self.sessions == 0 {
                cpu_workers.div_ceil(4).max(1)
            } else {
                self.sessions
            },
            intra_threads: self.intra_threads,
            model_sha256: Some(self.model_sha256.clone()),
            runtime_sha256: Some(self.runtime_sha256.clone()),
        }
    }
}

impl PipelineConfig {
    /// Checks what serde cannot: cross-field rules and value ranges, each fault named
    /// by its path in the configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fault = |path: &str, problem: String| Err(ConfigError::new(path, problem));
        if self.providers.is_empty() {
            return fault(
                "providers",
                "is empty: configure at least one provider".into(),
            );
        }
        if self.profiles.is_empty() {
            return fault(
                "profiles",
                "is empty: configure at least one render profile".into(),
            );
        }
        for (name, profile) in &self.profiles {
            let section = format!("profiles.{name}");
            let mut p = profile.clone();
            p.name = name.clone();
            p.validate().map_err(|e| e.under(&section))?;
            if p.formats.contains(&imagegate_core::ImageFormat::Avif)
                && !imagegate_imaging::avif_encoder_available(p.avif.encoder)
            {
                return fault(
                    &format!("{section}.avif.encoder"),
                    format!(
                        "{:?} is not in this build (built without imagegate-imaging's `aom` \
                         feature); use \"rav1e\" or rebuild with it",
                        p.avif.encoder.as_str()
                    ),
                );
            }
            if p.variants.len() > self.limits.max_variants {
                return fault(
                    &format!("{section}.variants"),
                    "lists more widths than limits.max_variants".into(),
                );
            }
        }
        if !self.profiles.contains_key(&self.defaults.profile) {
            return fault(
                "defaults.profile",
                format!("{:?} is not a configured profile", self.defaults.profile),
            );
        }
        if let Err(e) = self.defaults.size.parse::<Size>() {
            return fault("defaults.size", e.to_string());
        }
        if let Err(e) = self.defaults.model.parse::<ModelChoice>() {
            return fault("defaults.model", e.to_string());
        }
        let c = &self.costs;
        for (name, v) in [
            ("usd_per_core_hour", c.usd_per_core_hour),
            ("storage_usd_per_gb_month", c.storage_usd_per_gb_month),
            ("put_usd_per_1000", c.put_usd_per_1000),
            ("get_usd_per_1000", c.get_usd_per_1000),
            ("egress_usd_per_gb", c.egress_usd_per_gb),
            ("expected_views_per_image", c.expected_views_per_image),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return fault(
                    &format!("costs.{name}"),
                    "must be a non-negative number".into(),
                );
            }
        }
        for (name, v) in [
            ("max_pixels", self.limits.max_pixels),
            ("max_side", u64::from(self.limits.max_side)),
            ("max_prompt_chars", self.limits.max_prompt_chars as u64),
        ] {
            if v == 0 {
                return fault(&format!("limits.{name}"), "must be positive".into());
            }
        }
        self.router.validate().map_err(|e| e.under("router"))?;
        Ok(())
    }

    /// The URL base of the local store's files (`storage.public_base_url`; whoever
    /// composes the tree fills it in when the files are served at an address only it
    /// knows, as `imagegate serve` does with its `/cdn/`). None for other stores.
    pub fn local_public_base_url(&self) -> Result<Option<String>, ConfigError> {
        match &self.storage {
            StorageConfig::Local(local) => match &local.public_base_url {
                Some(url) => Ok(Some(url.clone())),
                None => Err(ConfigError::new(
                    "storage.public_base_url",
                    "is unset, and nothing serves the store's files: set the URL they are \
                     served at, or leave server.serve_cdn on",
                )),
            },
            StorageConfig::S3(_) => Ok(None),
        }
    }

    /// Parses the pipeline's sections of a whole configuration file, setting aside
    /// the sections named in `owned_elsewhere` (read by the crates that own them), so
    /// an unknown section or field is still refused.
    pub fn from_toml_sections(
        text: &str,
        owned_elsewhere: &[&str],
    ) -> Result<PipelineConfig, toml::de::Error> {
        let mut table: toml::Table = toml::from_str(text)?;
        for section in owned_elsewhere {
            table.remove(*section);
        }
        PipelineConfig::deserialize(table)
    }

    /// Profiles with their names filled in and logo digests computed, so the content
    /// key follows the logo's bytes.
    pub fn resolved_profiles(&self) -> Result<BTreeMap<String, RenderProfile>, ConfigError> {
        let mut out = BTreeMap::new();
        for (name, profile) in &self.profiles {
            let mut p = profile.clone();
            p.name = name.clone();
            if let Some(wm) = &mut p.watermark {
                if let imagegate_core::WatermarkMark::Logo { path, digest } = &mut wm.mark {
                    let bytes = std::fs::read(&*path).map_err(|e| {
                        ConfigError::new(
                            format!("profiles.{name}.watermark.logo"),
                            format!("{}: {e}", path.display()),
                        )
                    })?;
                    *digest = blake3::hash(&bytes).to_hex().to_string();
                }
            }
            out.insert(name.clone(), p);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped configuration, which every test below breaks in one place.
    fn shipped() -> PipelineConfig {
        PipelineConfig::from_toml_sections(
            include_str!("../../../config/imagegate.toml"),
            &["server"],
        )
        .expect("config/imagegate.toml parses")
    }

    #[test]
    fn a_fault_names_its_field_from_the_root_of_the_tree() {
        shipped()
            .validate()
            .expect("the shipped configuration is valid");
        let fault = |edit: &dyn Fn(&mut PipelineConfig)| {
            let mut c = shipped();
            edit(&mut c);
            c.validate().expect_err("the edit breaks the configuration")
        };
        let e = fault(&|c| c.router.breaker.failure_threshold = 0);
        assert_eq!(e.path, "router.breaker.failure_threshold");
        assert_eq!(
            e.to_string(),
            "router.breaker.failure_threshold: must be positive"
        );
        let e = fault(&|c| {
            let name = c.defaults.profile.clone();
            c.profiles.get_mut(&name).unwrap().avif.quality = 0.0;
        });
        let default = shipped().defaults.profile;
        assert_eq!(e.path, format!("profiles.{default}.avif.quality"));
        let e = fault(&|c| c.limits.max_side = 0);
        assert_eq!(e.path, "limits.max_side");
        let e = fault(&|c| c.defaults.size = "big".into());
        assert_eq!(e.path, "defaults.size");
        assert!(e.problem.contains("\"big\""), "{e}");
    }

    fn safety(sessions: Option<usize>) -> SafetyConfig {
        let mut fields = serde_json::json!({
            "classifier": true,
            "model": "models/open-nsfw.onnx",
            "runtime_library": "models/libonnxruntime.so",
        });
        if let Some(n) = sessions {
            fields["sessions"] = n.into();
        }
        serde_json::from_value(fields).expect("a safety section")
    }

    #[test]
    fn a_safety_section_without_the_classifier_needs_no_model_paths() {
        let off: SafetyConfig =
            serde_json::from_value(serde_json::json!({"classifier": false})).expect("parses");
        assert!(!off.classifier);
        assert_eq!(off.model, PathBuf::from("models/open-nsfw.onnx"));
    }

    #[test]
    fn sections_owned_elsewhere_are_set_aside_and_unknown_ones_refused() {
        let text = include_str!("../../../config/imagegate.toml");
        assert!(
            toml::from_str::<PipelineConfig>(text).is_err(),
            "[server] is not the pipeline's"
        );
        let typo = format!("{text}\n[bogus]\nx = 1\n");
        let e = PipelineConfig::from_toml_sections(&typo, &["server"]).expect_err("refused");
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn dollar_amounts_are_read_as_micros_and_a_negative_one_is_refused_by_name() {
        let text = include_str!("../../../config/imagegate.toml");
        let with = |budgets: &str| {
            PipelineConfig::from_toml_sections(&format!("{text}\n{budgets}"), &["server"])
        };
        let c = with("[budgets.keys.k1]\ndaily_usd = 0.25\n").expect("parses");
        assert_eq!(
            c.budgets.keys["k1"].daily,
            Some(imagegate_core::Micros(250_000))
        );
        let e = with("[budgets.keys.k1]\ndaily_usd = -1\n").expect_err("refused");
        let e = e.to_string();
        assert!(
            e.contains("-1 is not a non-negative amount of dollars"),
            "{e}"
        );
        assert!(e.contains("daily_usd"), "{e}");
    }

    #[test]
    fn a_local_store_needs_the_url_its_files_are_served_at() {
        let mut c = shipped();
        let StorageConfig::Local(local) = &mut c.storage else {
            panic!("the shipped store is local");
        };
        local.public_base_url = None;
        let e = c.local_public_base_url().expect_err("nobody said where");
        assert_eq!(e.path, "storage.public_base_url");
        if let StorageConfig::Local(local) = &mut c.storage {
            local.public_base_url = Some("http://cdn.example/i".into());
        }
        assert_eq!(
            c.local_public_base_url().unwrap().as_deref(),
            Some("http://cdn.example/i")
        );
    }

    #[test]
    fn sessions_default_to_one_per_four_cpu_workers() {
        let auto = safety(None);
        let sessions = |workers| auto.classifier_config(workers).sessions;
        assert_eq!(
            [
                sessions(1),
                sessions(2),
                sessions(4),
                sessions(5),
                sessions(16)
            ],
            [1, 1, 1, 2, 4]
        );
        assert_eq!(safety(Some(3)).classifier_config(2).sessions, 3);
        assert_eq!(safety(Some(0)).classifier_config(8).sessions, 2);
    }
}
