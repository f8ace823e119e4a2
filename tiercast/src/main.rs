//! `tiercast`: one binary per node.
//!
//! - `tiercast run [--config FILE] [--demo-source]`: run a node (no `--config`: the built-in
//!   all-in-one node).
//! - `tiercast check --config FILE`: validate a config and say what it would run.

mod demo;
mod http;
mod kafka;
mod metrics;
mod openapi;
mod services;
mod wiring;

use std::path::PathBuf;
use std::sync::Arc;

use crate::kafka::KafkaSink;
use anyhow::Context;
use clap::{Parser, Subcommand};
use pipelines::events::EventBus;
use pipelines::{Config, Registry};
use recorder::archiver::Archiver;
use recorder::chunks::ChunkStore;
use recorder::notifier::Notifier;
use recorder::s3::Bucket;
use recorder::store::{LocalObjectStore, ObjectStore, S3ObjectStore};
use relay_tiers::cluster::{Cluster, Member, RegionRule, RoutingRules};
use relay_tiers::egress::Egress;
use relay_tiers::feeds::FeedStore;
use relay_tiers::relay::pull::{PullSettings, Puller};
use relay_tiers::relay::tap::TapStore;
use relay_tiers::whep::{Whep, WhepLimits};
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
}

fn load(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    match path {
        None => Ok(Config::builtin()),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            // Secrets may stay out of the file (a Kubernetes Secret, a systemd credential).
            let secret = std::env::var(pipelines::config::CLUSTER_SECRET_ENV).ok();
            Ok(Config::parse_with(
                &text,
                &path.display().to_string(),
                secret,
            )?)
        }
    }
}

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
        Command::Archiver { config, all } => load(Some(&config)).and_then(|c| archiver(c, all)),
        Command::Run {
            config,
            demo_source,
        } => load(config.as_ref()).and_then(|c| run(c, demo_source)),
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
    println!("{}: ok", path.display());
    println!(
        "  rtmp  {}  (app {:?})",
        config.rtmp.listen, config.rtmp.app
    );
    println!("  http  {}", config.http.listen);
    println!("  data  {}", config.node.data_dir.display());
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

fn run(config: Config, demo_source: bool) -> anyhow::Result<()> {
    pipelines::gst_util::init()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(Arc::new(config), demo_source))
}

async fn serve(config: Arc<Config>, demo_source: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.node.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.node.data_dir.display()))?;
    let registry = Arc::new(Registry::new(&config.streams));
    let (bus, kafka) = event_bus(&config)?;
    let (chunks, recordings) = stores(&config).await;
    let hls = Arc::new(relay_tiers::hls::store::HlsStore::default());
    let role = config.node.role;
    // Distribution and edge nodes take their media from the tier above, not from publishers.
    let ingests = !role.pulls();
    // Renditions leave for the tier below through taps, wherever a cluster is configured.
    let taps = (!config.cluster.secret.is_empty()).then(|| Arc::new(TapStore::default()));
    let feeds = Arc::new(FeedStore::default());
    let egress = Egress {
        hls: hls.clone(),
        taps: taps.clone(),
        feeds: feeds.clone(),
        secret: config.cluster.secret.clone(),
        segment_target: std::time::Duration::from_secs(u64::from(config.hls.segment_seconds)),
        playlist_length: config.hls.playlist_length as usize,
        transcoders: Arc::new(transcode::GstTranscoders),
    };
    let puller = role.pulls().then(|| {
        let c = &config.cluster;
        Puller::new(
            PullSettings {
                upstreams: c.upstreams.clone(),
                secret: c.secret.clone(),
                linger: std::time::Duration::from_secs(u64::from(c.linger_seconds)),
                renditions: c.renditions.clone(),
                segment_target: std::time::Duration::from_secs(u64::from(
                    config.hls.segment_seconds,
                )),
                playlist_length: config.hls.playlist_length as usize,
            },
            Egress {
                taps: Some(taps.clone().unwrap_or_default()),
                ..egress.clone()
            },
        )
    });
    let factory = Arc::new(wiring::Broadcast::new(
        config.clone(),
        bus.clone(),
        chunks.clone(),
        Egress {
            taps: taps.clone().filter(|_| ingests),
            ..egress.clone()
        },
    ));
    let mut services = Services::new();
    let archiver = (ingests && config.recording.embedded_archiver).then(|| {
        notify(&config, &bus, &mut services);
        // Local chunks are this node's alone: what is there at start was left by its last run.
        let sole_writer = matches!(chunks, ChunkStore::Local(_));
        let live = registry.clone();
        let archiver = archiver_for(&config, chunks, recordings.clone(), &bus)
            .sole_writer(sole_writer)
            .live_sessions(move |stream, session| {
                live.get(stream)
                    .and_then(|e| e.live_session())
                    .is_some_and(|s| s.id == session)
            });
        Arc::new(archiver)
    });
    if let Some(archiver) = archiver.clone() {
        let stop = services.signal(Stage::Archive);
        services.spawn(
            Stage::Archive,
            "archiver",
            archiver.run(bus.subscribe(), stop),
        );
    }

    let rtmp = if ingests {
        let rtmp_settings = ingest::rtmp::RtmpSettings {
            app: config.rtmp.app.clone(),
            max_connections: config.rtmp.max_connections,
            merge_read: std::time::Duration::from_millis(u64::from(config.rtmp.merge_read_ms)),
            ..Default::default()
        };
        let server = ingest::rtmp::RtmpServer::bind(
            config.rtmp.listen,
            rtmp_settings,
            registry.clone(),
            factory.clone(),
        )
        .await
        .with_context(|| format!("rtmp.listen {}", config.rtmp.listen))?;
        Some(server)
    } else {
        None
    };
    let rtmp_addr = rtmp.as_ref().map(|r| r.local_addr()).transpose()?;
    let whip = if ingests {
        let whip = ingest::whip::Whip::start(
            config.webrtc.whip_listen,
            config.webrtc.advertise.parse().ok(),
            registry.clone(),
            factory.clone(),
            egress.transcoders.clone(),
            // A VP8 source becomes H.264 at the best rung's rate, keyframes on the GOP.
            pipelines::transcoders::Vp8Settings {
                kbps: config
                    .ladders
                    .values()
                    .flatten()
                    .map(|r| r.video_kbps)
                    .max()
                    .unwrap_or(2500),
                gop_frames: config.transcode.gop_seconds * 30,
                preset: config.transcode.x264_preset.clone(),
            },
            services.signal(Stage::Ingest),
        )
        .await
        .with_context(|| format!("webrtc.whip_listen {}", config.webrtc.whip_listen))?;
        let (whip, driver) = whip;
        services.spawn(Stage::Ingest, "whip", driver);
        Some(whip)
    } else {
        None
    };
    let http_listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("http.listen {}", config.http.listen))?;
    let http_addr = http_listener.local_addr()?;
    let whep = Whep::start(
        config.webrtc.listen,
        config.webrtc.advertise.parse().ok(),
        WhepLimits {
            per_node: config.webrtc.max_viewers,
            per_stream: config.webrtc.max_viewers_per_stream,
        },
        feeds,
        bus.clone(),
        services.signal(Stage::Serve),
    )
    .await
    .with_context(|| format!("webrtc.listen {}", config.webrtc.listen))?;
    let (whep, driver) = whep;
    services.spawn(Stage::Serve, "whep", driver);
    let cluster = Arc::new(cluster_view(&config, http_addr));
    if !config.cluster.upstreams.is_empty() {
        let stop = services.signal(Stage::Serve);
        services.spawn(Stage::Serve, "heartbeats", cluster.clone().run(stop));
    }
    if let Some(puller) = puller.clone() {
        let stop = services.signal(Stage::Serve);
        services.spawn(
            Stage::Serve,
            "relay-links",
            show_links(puller, cluster.clone(), stop),
        );
    }
    let router = http::router(http::Services {
        config: config.clone(),
        registry: registry.clone(),
        hls,
        recordings,
        archiver,
        kafka: kafka.clone(),
        bus: bus.clone(),
        taps,
        puller,
        cluster,
        whep,
        whip,
    });

    // Tests and scripts read this line to find the ports (`listen = "127.0.0.1:0"`).
    let rtmp_shown = rtmp_addr.map_or("none".to_owned(), |a| a.to_string());
    println!("tiercast listening rtmp={rtmp_shown} http={http_addr}");
    info!(rtmp_addr = %rtmp_shown, %http_addr, ?role, region = %config.node.region, data_dir = %config.node.data_dir.display(), "tiercast node up");
    if let Some(rtmp_addr) = rtmp_addr {
        for s in &config.streams {
            info!(
                "publish to rtmp://{}/{}/<key of {}>, watch http://{}/hls/{}/master.m3u8",
                rtmp_addr, config.rtmp.app, s.name, http_addr, s.name
            );
        }
    } else {
        info!(upstreams = ?config.cluster.upstreams, "streams are pulled from upstream when first watched");
    }

    if let Some(rtmp) = rtmp {
        let stop = services.signal(Stage::Ingest);
        services.spawn(Stage::Ingest, "rtmp", rtmp.run(stop));
    }
    let mut stop = services.signal(Stage::Serve);
    services.spawn(Stage::Serve, "http", async move {
        let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
        let served = axum::serve(http_listener, service)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = served {
            warn!("http server: {e}");
        }
    });
    let demo = if let (true, Some(rtmp_addr)) = (demo_source, rtmp_addr) {
        let key = config
            .streams
            .iter()
            .find(|s| s.name == pipelines::config::DEFAULT_STREAM)
            .or(config.streams.first())
            .map(|s| (s.name.clone(), s.key.clone()));
        match key {
            Some((name, key)) => {
                let url = format!("rtmp://{}/{}/{key}", loopback(rtmp_addr), config.rtmp.app);
                info!(stream = %name, "demo source publishing");
                demo::DemoSource::start(&url)
                    .map_err(|e| warn!("demo source not started: {e}"))
                    .ok()
            }
            None => None,
        }
    } else {
        None
    };

    info!(services = ?services.names(), "services running");
    wait_for_signal().await;
    info!("shutting down");
    drop(demo);
    // Publishes end first; then the archiver makes their recordings; then HTTP and the rest.
    services.stop().await;
    if let Some(kafka) = kafka {
        let _ = tokio::task::spawn_blocking(move || kafka.flush(std::time::Duration::from_secs(5)))
            .await;
    }
    Ok(())
}

/// Keeps the cluster view's list of what this node reads from up to date.
async fn show_links(puller: Puller, cluster: Arc<Cluster>, mut stop: watch::Receiver<bool>) {
    loop {
        let mut links: Vec<String> = puller
            .status()
            .into_iter()
            .filter_map(|p| p.upstream)
            .collect();
        links.sort();
        links.dedup();
        cluster.set_links(links);
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
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

/// This node as the cluster sees it, and how it routes viewers.
fn cluster_view(config: &Config, http_addr: std::net::SocketAddr) -> Cluster {
    let node = &config.node;
    let address = if node.advertise.is_empty() {
        http_addr.to_string()
    } else {
        node.advertise.clone()
    };
    let me = Member {
        name: if node.name.is_empty() {
            address.clone()
        } else {
            node.name.clone()
        },
        role: node.role,
        region: node.region.clone(),
        address,
        load: 0.0,
        links: Vec::new(),
        seen_ms: 0,
    };
    let rules = RoutingRules {
        regions: config
            .routing
            .regions
            .iter()
            .filter_map(|r| RegionRule::parse(&r.cidr, &r.region))
            .collect(),
        nearby: config.routing.nearby.clone().into_iter().collect(),
    };
    Cluster::new(
        me,
        &config.cluster.secret,
        config.cluster.upstreams.clone(),
        rules,
    )
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
