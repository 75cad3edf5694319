//! The `imagegate` command: `serve`, `warm`, `process`, `classify`, `estimate` and `report`,
//! on one configuration tree loaded from TOML and `IMAGEGATE_<SECTION>__<KEY>`
//! environment variables.

mod alloc;
mod config;
mod prices_cli;
mod provenance_cli;
mod report_cli;
mod table;
mod template;
mod verify_cli;
mod warm;
mod warm_defer;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use imagegate_pipeline::{Pipeline, RequestContext};
use imagegate_server::AppState;
use std::path::PathBuf;
use std::sync::Arc;

/// mimalloc for small blocks, glibc (mmap) for pictures: see alloc.rs.
#[global_allocator]
static ALLOCATOR: alloc::SplitAllocator = alloc::SplitAllocator;

#[derive(Parser)]
#[command(
    name = "imagegate",
    version,
    about = "Prompts in, CDN-ready images out, every stage costed."
)]
struct Cli {
    /// Configuration file (default: config/imagegate.toml, or IMAGEGATE_CONFIG).
    #[arg(long, global = true, env = "IMAGEGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP service.
    Serve(ServeArgs),
    /// Fill the cache ahead of traffic from prompt templates (see
    /// config/templates.example.toml), through the same pipeline and ledger as `serve`.
    /// Exit status: 0 all published (images skipped for the budget are reported, not
    /// failures), 3 some failed, 130 interrupted, 1 could not start.
    Warm(warm::Args),
    /// Run the post-generation stages (safety, variants, watermark, encode, store) on
    /// an image you already have, printing the same JSON as POST /v1/images.
    Process(ProcessArgs),
    /// What the router would consider and choose for a request, with expected cost and
    /// latency per candidate; generates nothing.
    Estimate(EstimateArgs),
    /// What the ledger says was spent: totals grouped by stage, provider, model, API
    /// key and/or day, what the cache saved, and what delivering the stored variants
    /// would cost (with what-ifs: narrower widths, newer formats).
    Report(report_cli::Args),
    /// The price book: `check` it against the configured providers (stale prices,
    /// missing entries, retired models), or `list` what it charges now.
    Prices {
        #[command(subcommand)]
        action: prices_cli::Action,
    },
    /// API keys for the HTTP service (stored as hashes in the ledger database).
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Score images with the NSFW classifier and print the action per file.
    Classify(ClassifyArgs),
    /// Where files came from: this service's invisible watermark and the request
    /// that made each picture (JSON per file). Exit status 3 when a file is unmarked.
    Verify(verify_cli::Args),
    /// Content Credentials set-up: `init` makes a development CA and signing
    /// certificate.
    Provenance {
        #[command(subcommand)]
        action: provenance_cli::Action,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free port).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
}

#[derive(clap::Args)]
struct ProcessArgs {
    file: PathBuf,
    #[arg(long)]
    profile: Option<String>,
}

// The request fields of `POST /v1/images` a caller may set from the command line.
#[derive(clap::Args)]
struct EstimateArgs {
    #[arg(long)]
    prompt: String,
    #[arg(long)]
    negative_prompt: Option<String>,
    /// A class (draft, standard, premium) or provider/model.
    #[arg(long)]
    model: Option<String>,
    #[arg(long)]
    size: Option<String>,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    profile: Option<String>,
    /// cheapest, fastest or balanced.
    #[arg(long)]
    policy: Option<String>,
    #[arg(long)]
    max_cost_usd: Option<f64>,
}

impl From<EstimateArgs> for imagegate_pipeline::ImageRequest {
    fn from(a: EstimateArgs) -> Self {
        imagegate_pipeline::ImageRequest {
            prompt: a.prompt,
            negative_prompt: a.negative_prompt,
            model: a.model,
            size: a.size,
            seed: a.seed,
            profile: a.profile,
            policy: a.policy,
            max_cost_usd: a.max_cost_usd,
            ..Default::default()
        }
    }
}

#[derive(clap::Args)]
struct ClassifyArgs {
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// JSON lines instead of a table.
    #[arg(long)]
    json: bool,
    /// Profile whose thresholds decide the action.
    #[arg(long)]
    profile: Option<String>,
}

#[derive(Subcommand)]
enum KeysAction {
    /// Create a key and print it once; only its hash is stored.
    Create(CreateKeyArgs),
    /// List keys (ids, names, limits, scopes; never secrets).
    List,
    /// Revoke a key by id; it stops working within [server.auth] reload_secs.
    Revoke { id: String },
    /// Set (or with --clear remove) a key's default webhook: where its deferred
    /// jobs' ends are announced when a request names none.
    Webhook {
        id: String,
        /// An http(s) URL; its address is checked before every delivery.
        #[arg(required_unless_present = "clear", conflicts_with = "clear")]
        url: Option<String>,
        #[arg(long)]
        clear: bool,
    },
}

#[derive(clap::Args)]
struct CreateKeyArgs {
    /// A label for people (e.g. the app that uses it).
    #[arg(long)]
    name: String,
    /// This key's sustained limit; [server.auth] requests_per_minute by default.
    #[arg(long)]
    requests_per_minute: Option<u32>,
    /// An admin key: sees every key's costs and deliveries (others see their
    /// own) and may republish (`cache: refresh`).
    #[arg(long)]
    admin: bool,
}

fn main() -> std::process::ExitCode {
    alloc::tune();
    let cli = Cli::parse();
    // warm draws a progress bar on stderr; routine info lines would tear it.
    let quiet = matches!(cli.command, Command::Warm(_));
    init_logging(cli.log_json, quiet);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(json: bool, quiet: bool) {
    let default = if quiet { "warn" } else { "info,sqlx=warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(cli: Cli) -> Result<std::process::ExitCode> {
    let config = config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve(a) => serve(config, a.listen).await,
        command => run_offline(config.into_pipeline(), command).await,
    }
}

/// Every command but `serve`.
async fn run_offline(
    config: imagegate_pipeline::PipelineConfig,
    command: Command,
) -> Result<std::process::ExitCode> {
    match command {
        Command::Serve(_) => unreachable!("serve is run with the whole tree"),
        Command::Process(a) => process(config, a.file, a.profile).await,
        Command::Warm(args) => warm::run(config, args).await,
        Command::Report(args) => report_cli::run(config, args).await,
        Command::Keys { action } => keys(config, action).await,
        Command::Prices { action } => prices_cli::run(config, action),
        Command::Classify(a) => classify(config, a.files, a.json, a.profile).await,
        Command::Estimate(a) => estimate(config, a.into()).await,
        Command::Verify(args) => verify_cli::run(config, args).await,
        Command::Provenance { action } => provenance_cli::run(action),
    }
}

/// Micro-dollars as `0.040213`: exact, from the integer, never via a float.
fn usd6(m: imagegate_core::Micros) -> String {
    m.to_string().replacen('$', "", 1)
}

async fn estimate(
    config: imagegate_pipeline::PipelineConfig,
    request: imagegate_pipeline::ImageRequest,
) -> Result<std::process::ExitCode> {
    let pipeline = Pipeline::start(config)
        .await
        .context("starting the pipeline")?;
    let (key, cached, estimate) = pipeline.estimate(&request).await?;
    let body = imagegate_server::estimate_body(key, cached, &estimate);
    println!("{}", serde_json::to_string_pretty(&body)?);
    pipeline.ledger().close().await;
    Ok(std::process::ExitCode::SUCCESS)
}

async fn keys(
    config: imagegate_pipeline::PipelineConfig,
    action: KeysAction,
) -> Result<std::process::ExitCode> {
    let ledger = imagegate_ledger::Ledger::open(&config.ledger)
        .await
        .context("opening the ledger")?;
    let code = match action {
        KeysAction::Create(CreateKeyArgs {
            name,
            requests_per_minute,
            admin,
        }) => {
            let scope = if admin {
                imagegate_ledger::KeyScope::Admin
            } else {
                imagegate_ledger::KeyScope::Standard
            };
            let key = ledger
                .create_api_key(&name, requests_per_minute, scope)
                .await?;
            eprintln!(
                "created {} key {} ({}); it is shown once, store it now:",
                key.record.scope, key.record.id, key.record.name
            );
            println!("{}", key.token);
            std::process::ExitCode::SUCCESS
        }
        KeysAction::List => {
            println!(
                "{:<16}  {:<24}  {:>8}  {:<8}  {:<24}  revoked",
                "id", "name", "rpm", "scope", "created"
            );
            for k in ledger.api_keys().await? {
                println!(
                    "{:<16}  {:<24}  {:>8}  {:<8}  {:<24}  {}",
                    k.id,
                    k.name,
                    k.requests_per_minute
                        .map_or("default".to_string(), |r| r.to_string()),
                    k.scope,
                    k.created_at,
                    k.revoked_at.as_deref().unwrap_or("-")
                );
            }
            std::process::ExitCode::SUCCESS
        }
        KeysAction::Webhook { id, url, .. } => {
            // The form only: whether the address may be called is decided by the
            // server's [server.webhooks] policy before each delivery.
            if let Some(url) = &url {
                imagegate_server::webhooks::WebhookTarget::parse(url, true)
                    .with_context(|| format!("webhook URL {url:?}"))?;
            }
            if ledger.set_key_webhook(&id, url.as_deref()).await? {
                match &url {
                    Some(url) => eprintln!("key {id}'s deferred jobs announce their end to {url}"),
                    None => eprintln!("key {id} has no default webhook now"),
                }
                std::process::ExitCode::SUCCESS
            } else {
                eprintln!("error: no key with id {id:?}");
                std::process::ExitCode::FAILURE
            }
        }
        KeysAction::Revoke { id } => {
            if ledger.revoke_api_key(&id).await? {
                eprintln!("revoked key {id}");
                std::process::ExitCode::SUCCESS
            } else {
                eprintln!("error: no live key with id {id:?}");
                std::process::ExitCode::FAILURE
            }
        }
    };
    ledger.close().await;
    Ok(code)
}

async fn serve(
    mut config: config::Config,
    listen: Option<std::net::SocketAddr>,
) -> Result<std::process::ExitCode> {
    if let Some(l) = listen {
        config.server.listen = l;
    }
    let addr = config.server.listen;
    // Bound first: the local store's URLs follow the address actually bound (a port
    // of 0 included) unless storage.public_base_url says otherwise.
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;
    config.server.listen = local;
    if local.ip().is_unspecified() {
        if let imagegate_pipeline::config::StorageConfig::Local(store) = &config.pipeline.storage {
            if store.public_base_url.is_none() {
                tracing::warn!(
                    %local,
                    "listening on every interface, but image URLs name loopback: set \
                     storage.public_base_url (IMAGEGATE_STORAGE__PUBLIC_BASE_URL) to the \
                     address clients reach"
                );
            }
        }
    }
    let server = config.server.clone();
    let pipeline = Pipeline::start(config.into_pipeline())
        .await
        .context("starting the pipeline")?;
    let auth = imagegate_server::auth::Auth::start(pipeline.ledger().clone(), server.auth.clone())
        .await
        .context("loading API keys")?;
    // The price book follows its file, SIGHUP and the other replicas without a
    // restart; a broken book is refused and the old one keeps serving.
    let _price_tasks = pipeline.keep_prices_current(PRICES_FILE_POLL);
    // Deferred jobs (`deliver_by`) run here at their planned moments.
    let _deferred = pipeline.run_deferred_jobs();
    let hangup = reload_prices_on_sighup(pipeline.prices().clone());
    let state = Arc::new(AppState::new(
        pipeline,
        server,
        imagegate_server::metrics_handle(),
        auth,
    )?);
    // Announces ended jobs to their webhooks (when a signing secret is set).
    let _webhooks = imagegate_server::webhooks::spawn(state.clone());
    // Tests and scripts read this line to learn the port when asked for port 0.
    println!("imagegate listening on http://{local}");
    tracing::info!(%local, "listening");
    imagegate_server::serve(listener, state.clone(), shutdown_signal()).await?;
    hangup.abort();
    state.pipeline.ledger().close().await;
    tracing::info!("stopped");
    Ok(std::process::ExitCode::SUCCESS)
}

/// How often `serve` looks at the price book's file for edits.
const PRICES_FILE_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// SIGHUP reloads the price book from its file.
fn reload_prices_on_sighup(
    prices: Arc<imagegate_providers::LivePrices>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(mut hangups) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot listen for SIGHUP; the price book reloads on file changes only");
            return;
        };
        while hangups.recv().await.is_some() {
            match prices.reload_file() {
                Ok(r) => {
                    tracing::info!(version = %r.version, changed = r.changed, "SIGHUP: price book reloaded")
                }
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: price book refused; the old one stays in force")
                }
            }
        }
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

async fn process(
    config: imagegate_pipeline::PipelineConfig,
    file: PathBuf,
    profile: Option<String>,
) -> Result<std::process::ExitCode> {
    let max = config.limits.max_input_bytes as u64;
    let size = std::fs::metadata(&file)
        .with_context(|| format!("reading {}", file.display()))?
        .len();
    if size > max {
        bail!("{} has {size} bytes; the limit is {max}", file.display());
    }
    let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    let pipeline = Pipeline::start(config)
        .await
        .context("starting the pipeline")?;
    let ctx = RequestContext {
        request_id: format!("cli-process-{}", std::process::id()),
        api_key: None,
        survives_restart: false,
    };
    let outcome = pipeline
        .process(Bytes::from(bytes), profile.as_deref(), &ctx)
        .await
        .with_context(|| format!("processing {}", file.display()))?;
    let (status, body) = imagegate_server::outcome_body(&pipeline, &outcome);
    println!("{}", serde_json::to_string_pretty(&body)?);
    pipeline.ledger().close().await;
    Ok(if status.is_success() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(3)
    })
}

/// One file's NSFW score and the action it leads to, or why it could not be scored.
type Scored = Result<(f32, &'static str)>;

async fn classify(
    config: imagegate_pipeline::PipelineConfig,
    files: Vec<PathBuf>,
    json: bool,
    profile: Option<String>,
) -> Result<std::process::ExitCode> {
    let profile_name = profile.unwrap_or_else(|| config.defaults.profile.clone());
    let thresholds = config
        .profiles
        .get(&profile_name)
        .with_context(|| format!("profile {profile_name:?} is not configured"))?
        .safety;
    let classifier_config = config
        .safety
        .classifier_config(config.concurrency.resolved_cpu_workers());
    let limits = imagegate_imaging::DecodeLimits {
        max_pixels: config.limits.max_pixels,
        max_side: config.limits.max_side,
        max_input_bytes: config.limits.max_input_bytes,
    };
    let rows = tokio::task::spawn_blocking(move || -> Result<Vec<(PathBuf, Scored)>> {
        let classifier = imagegate_safety::Classifier::load(&classifier_config)?;
        Ok(files
            .into_iter()
            .map(|f| {
                let scored = (|| -> Scored {
                    let bytes =
                        std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
                    let image = imagegate_imaging::decode(&bytes, &limits)?;
                    let score = classifier.score(&image)?;
                    Ok((score, imagegate_safety::decide(score, thresholds).as_str()))
                })();
                (f, scored)
            })
            .collect())
    })
    .await??;
    let mut failed = false;
    if !json {
        println!("{:<8} {:<6} file", "nsfw", "action");
    }
    for (file, result) in rows {
        match (result, json) {
            (Ok((score, action)), true) => println!(
                "{}",
                serde_json::json!({"file": file.display().to_string(), "nsfw_score": score, "action": action})
            ),
            (Ok((score, action)), false) => println!("{score:<8.4} {action:<6} {}", file.display()),
            (Err(e), true) => {
                failed = true;
                println!(
                    "{}",
                    serde_json::json!({"file": file.display().to_string(), "error": format!("{e:#}")})
                )
            }
            (Err(e), false) => {
                failed = true;
                println!("{:<8} {:<6} {}: {e:#}", "-", "error", file.display())
            }
        }
    }
    Ok(if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    })
}
