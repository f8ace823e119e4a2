//! `tiercast`: one binary per node.
//!
//! - `tiercast run [--config FILE] [--demo-source]`: run a node (no `--config`: the built-in
//!   all-in-one node).
//! - `tiercast check --config FILE`: validate a config and say what it would run.
//! - `tiercast token --config FILE --stream S --ttl 1h`: mint a viewer token for a stream with
//!   `access = "token"`; `tiercast token --config FILE --user alice`: a user token for calls.

mod demo;
mod door;
mod http;
mod kafka;
mod metrics;
mod node;
mod openapi;
mod services;
mod wiring;

use std::path::PathBuf;
use std::sync::Arc;

use crate::kafka::KafkaSink;
use anyhow::Context;
use clap::{Parser, Subcommand};
use pipelines::Config;
use pipelines::events::EventBus;
use recorder::archiver::Archiver;
use recorder::chunks::ChunkStore;
use recorder::notifier::Notifier;
use recorder::s3::Bucket;
use recorder::store::{LocalObjectStore, ObjectStore, S3ObjectStore};
use services::{Services, Stage};
use tokio::sync::watch;
use tracing::{info, warn};

#[derive(Debug, Parser)]
#[command(
    name = "tiercast",
    version,
    about = "Live broadcast, relay tiers and calls on GStreamer"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node.
    Run {
        /// The node's TOML file; without it, the built-in all-in-one node.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Also publish a synthetic camera and tone into the `demo` stream.
        #[arg(long)]
        demo_source: bool,
    },
    /// Run the archiver alone: recorded sessions become MP4s as they end.
    Archiver {
        #[arg(long)]
        config: PathBuf,
        /// Archive every session in the chunk store now, without waiting for it to look idle
        /// (only when no node is recording into this store).
        #[arg(long)]
        all: bool,
    },
    /// Validate a config file and print what the node would run.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Mint a viewer token (for streams with `access = "token"`), signed with the cluster
    /// secret: every node of the cluster takes it; or, with --user, a user token for calls,
    /// signed with the calls secret.
    Token {
        #[arg(long)]
        config: PathBuf,
        /// The stream a viewer token is for.
        #[arg(long, required_unless_present = "user", conflicts_with = "user")]
        stream: Option<String>,
        /// The user a calls token is for (`[[calls.users]]` id, or one the directory knows).
        #[arg(long)]
        user: Option<String>,
        /// The name others see (a user token; default: the directory's).
        #[arg(long, requires = "user")]
        name: Option<String>,
        /// How long it holds: 90s, 30m, 1h, 1d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Only a viewer at this address may use it.
        #[arg(long)]
        address: Option<std::net::IpAddr>,
        /// Only this rendition.
        #[arg(long)]
        rendition: Option<String>,
    },
}

fn load(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    match path {
        None => Ok(Config::builtin()),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            // Secrets may stay out of the file (a Kubernetes Secret, a systemd credential).
            let secret = std::env::var(pipelines::config::CLUSTER_SECRET_ENV).ok();
            let mut config = Config::parse_with(&text, &path.display().to_string(), secret)?;
            if let Ok(calls) = std::env::var(pipelines::config::CALLS_SECRET_ENV) {
                config.calls.secret = calls;
                config.calls.validate().map_err(|(key, why)| {
                    anyhow::anyhow!(
                        "{}: calls.{key}: {why}",
                        pipelines::config::CALLS_SECRET_ENV
                    )
                })?;
            }
            Ok(config)
        }
    }
}

/// mimalloc: a media node allocates and frees packet-sized buffers all the time. Under the
/// call server bench, glibc's malloc and free took about 7.6% of the node's time and
/// mimalloc takes 2.5% (bench/RESULTS.md, (h)).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { config } => check(&config),
        Command::Token {
            config,
            stream,
            user,
            name,
            ttl,
            address,
            rendition,
        } => load(Some(&config)).and_then(|c| match (stream, user) {
            (Some(stream), _) => token(&c, &stream, &ttl, address, rendition),
            (None, Some(user)) => user_token(&c, &user, name.as_deref(), &ttl),
            (None, None) => anyhow::bail!("--stream or --user"),
        }),
        Command::Archiver { config, all } => load(Some(&config)).and_then(|c| archiver(c, all)),
        Command::Run {
            config,
            demo_source,
        } => load(config.as_ref()).and_then(|c| {
            warn_weak(&c, config.as_ref());
            run(c, demo_source)
        }),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tiercast: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn check(path: &PathBuf) -> anyhow::Result<()> {
    let config = load(Some(path))?;
    let text = std::fs::read_to_string(path)?;
    let weak = config.weak_secrets(&text);
    for (key, line, why) in &weak {
        let at = line.map(|l| format!(":{l}")).unwrap_or_default();
        eprintln!("{}{at}: {key}: {why}", path.display());
    }
    if !weak.is_empty() {
        anyhow::bail!("{} guessable key(s) or secret(s)", weak.len());
    }
    println!("{}: ok", path.display());
    println!(
        "  rtmp  {}  (app {:?})",
        config.rtmp.listen, config.rtmp.app
    );
    println!("  http  {}", config.http.listen);
    println!("  data  {}", config.node.data_dir.display());
    println!("  runs  {}", node::Plan::of(&config).services().join(", "));
    for s in &config.streams {
        let rungs: Vec<String> = config
            .ladder(&s.ladder)
            .iter()
            .map(|r| format!("{} ({}p, {} kb/s)", r.name, r.height, r.video_kbps))
            .collect();
        println!(
            "  stream {:?} ladder {:?}: {}",
            s.name,
            s.ladder,
            rungs.join(", ")
        );
    }
    Ok(())
}

/// `run` starts with guessable secrets (a lab, a test), but says so.
fn warn_weak(config: &Config, path: Option<&PathBuf>) {
    let Some(text) = path.and_then(|p| std::fs::read_to_string(p).ok()) else {
        return;
    };
    for (key, line, why) in config.weak_secrets(&text) {
        warn!(%key, line = line.unwrap_or_default(), "{why}; `tiercast check` refuses this file");
    }
}

/// Prints a viewer token for `stream`, and the URLs that carry it.
fn token(
    config: &Config,
    stream: &str,
    ttl: &str,
    address: Option<std::net::IpAddr>,
    rendition: Option<String>,
) -> anyhow::Result<()> {
    use relay_tiers::access::{Grant, Tokens, parse_ttl};
    let tokens = Tokens::new(&config.cluster.secret)
        .context("viewer tokens are signed with [cluster] secret, and this config has none")?;
    if !pipelines::config::is_path_safe(stream) {
        anyhow::bail!("{stream:?} is not a stream name");
    }
    let ttl = parse_ttl(ttl).map_err(anyhow::Error::msg)?;
    let grant = Grant {
        address,
        rendition,
        ..Grant::for_secs(stream, ttl)
    };
    let token = tokens.mint(&grant);
    println!("{token}");
    eprintln!("expires {} (Unix time); watch with", grant.expires);
    eprintln!("  /hls/{stream}/master.m3u8?token={token}");
    eprintln!("  /whep/{stream}?token={token}");
    Ok(())
}

/// Prints a user token for calls: `GET /ws?token=` and the call page take it.
fn user_token(config: &Config, user: &str, name: Option<&str>, ttl: &str) -> anyhow::Result<()> {
    if !config.calls.enabled() {
        anyhow::bail!("user tokens are signed with [calls] secret, and this config has none");
    }
    if !pipelines::config::is_path_safe(user) {
        anyhow::bail!("{user:?}: 1 to 64 letters, digits, '-' or '_'");
    }
    let ttl = relay_tiers::access::parse_ttl(ttl).map_err(anyhow::Error::msg)?;
    let known = config.calls.users.iter().find(|u| u.id == user);
    if known.is_none() && !config.calls.users.is_empty() {
        warn!(
            user,
            "not in [[calls.users]]: this node will refuse the token"
        );
    }
    let name = name
        .map(str::to_owned)
        .or_else(|| known.map(|u| u.name.clone()))
        .unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let token = calls::token::mint(&config.calls.secret, user, &name, now, now + ttl);
    println!("{token}");
    eprintln!("expires {} (Unix time); sign in with", now + ttl);
    eprintln!("  /call?token={token}");
    Ok(())
}

fn run(config: Config, demo_source: bool) -> anyhow::Result<()> {
    pipelines::gst_util::init()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(node::serve(Arc::new(config), demo_source))
}

/// The node's event bus: `events.jsonl` always, Kafka when configured.
fn event_bus(config: &Config) -> anyhow::Result<(Arc<EventBus>, Option<Arc<KafkaSink>>)> {
    let data = &config.node.data_dir;
    let mut bus = EventBus::new(Some(&data.join("events.jsonl")))
        .with_context(|| format!("{}/events.jsonl", data.display()))?;
    let kafka = match &config.events.kafka {
        None => None,
        Some(k) => {
            let sink = Arc::new(KafkaSink::new(k)?);
            bus = bus.with_sink(Box::new(sink.clone()));
            tokio::spawn({
                let sink = sink.clone();
                async move { sink.ensure_topics().await }
            });
            info!(brokers = %k.brokers, "events go to Kafka too");
            Some(sink)
        }
    };
    Ok((Arc::new(bus), kafka))
}

/// The chunk store and the object store: under `data_dir`, or in the `[recording.s3]` bucket.
async fn stores(config: &Config) -> (ChunkStore, ObjectStore) {
    let data = &config.node.data_dir;
    let local_chunks = ChunkStore::local(data.join("chunks"));
    let Some(s3) = &config.recording.s3 else {
        let objects = ObjectStore::Local(LocalObjectStore::new(data.join("recordings")));
        return (local_chunks, objects);
    };
    let bucket = Bucket::connect(s3).await;
    tokio::spawn({
        let bucket = bucket.clone();
        async move {
            match bucket.check().await {
                Ok(()) => info!(bucket = %bucket.name(), "recordings go to S3"),
                Err(e) => warn!("the recordings bucket is not reachable yet: {e}"),
            }
        }
    });
    let chunks = if s3.chunks_prefix.is_empty() {
        local_chunks
    } else {
        ChunkStore::S3 {
            bucket: bucket.clone(),
            prefix: s3.chunks_prefix.clone(),
        }
    };
    let objects = ObjectStore::S3(S3ObjectStore::new(
        bucket,
        &s3.recordings_prefix,
        data.join("archive-tmp"),
        std::time::Duration::from_secs(u64::from(s3.presign_seconds)),
    ));
    (chunks, objects)
}

fn archiver_for(
    config: &Config,
    chunks: ChunkStore,
    recordings: ObjectStore,
    bus: &Arc<EventBus>,
) -> Archiver {
    Archiver::new(chunks, recordings, bus.clone()).orphans_after(std::time::Duration::from_secs(
        u64::from(config.recording.orphan_after_seconds),
    ))
}

/// Webhooks for recording events, in the process that makes the recordings.
/// The webhook notifier, stopped with the archiver (whose recordings it announces).
fn notify(config: &Config, bus: &Arc<EventBus>, services: &mut Services) {
    if let Some(notifier) = notifier(config) {
        let stop = services.signal(Stage::Archive);
        services.spawn(Stage::Archive, "notifier", notifier.run(bus.clone(), stop));
    }
}

fn notifier(config: &Config) -> Option<Arc<Notifier>> {
    (!config.notify.webhooks.is_empty()).then(|| {
        Arc::new(Notifier::new(
            config.notify.webhooks.clone(),
            config.notify.secret.clone(),
        ))
    })
}

/// Kafka consumer group shared by every archiver.
const ARCHIVER_GROUP: &str = "tiercast-archiver";

/// `tiercast archiver`: the archiver alone. With Kafka, it takes `stream.ended` from the
/// `tiercast-archiver` consumer group (several archivers share the work) until stopped, and
/// archives sessions whose node died (no chunk for `recording.orphan_after_seconds`). Without
/// Kafka it archives such sessions (every session with `--all`) and exits.
fn archiver(config: Config, all: bool) -> anyhow::Result<()> {
    pipelines::gst_util::init()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let data = config.node.data_dir.clone();
        std::fs::create_dir_all(&data)
            .with_context(|| format!("cannot create data_dir {}", data.display()))?;
        let (bus, kafka) = event_bus(&config)?;
        let (chunks, recordings) = stores(&config).await;
        let archiver = Arc::new(archiver_for(&config, chunks, recordings, &bus).sole_writer(all));
        let (stop_tx, stop) = watch::channel(false);
        let stop_consumer = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (events, consumer) = match &config.events.kafka {
            Some(k) => {
                let (tx, rx) = tokio::sync::broadcast::channel(1024);
                let thread = crate::kafka::consume(
                    k,
                    ARCHIVER_GROUP,
                    &["tiercast.streams"],
                    tx,
                    stop_consumer.clone(),
                )?;
                (rx, Some(thread))
            }
            None => (bus.subscribe(), None),
        };
        println!("tiercast archiver ready");
        info!(kafka = consumer.is_some(), "archiver running");
        if consumer.is_none() {
            // Nothing will announce new sessions: archive what is there, then stop.
            let _ = stop_tx.send(true);
        }
        if let Some(notifier) = notifier(&config) {
            tokio::spawn(notifier.run(bus.clone(), stop.clone()));
        }
        let task = tokio::spawn(archiver.run(events, stop));
        if consumer.is_some() {
            wait_for_signal().await;
            let _ = stop_tx.send(true);
        }
        let _ = task.await;
        stop_consumer.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(kafka) = kafka {
            let _ =
                tokio::task::spawn_blocking(move || kafka.flush(std::time::Duration::from_secs(5)))
                    .await;
        }
        Ok(())
    })
}

/// The address a local client reaches a listener on.
fn loopback(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    if addr.ip().is_unspecified() {
        std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}
