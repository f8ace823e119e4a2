//! A node: the services its role runs, started in order and stopped in stages
//! ([`crate::services`]).
//!
//! | service              | stage   | all | origin | distribution | edge |
//! |----------------------|---------|-----|--------|--------------|------|
//! | `rtmp`, `whip`       | Ingest  | ✓   | ✓      |              |      |
//! | `archiver`, `notifier` | Archive | ✓ ¹ | ✓ ¹  |              |      |
//! | `spill`              | Archive | ³   | ³      |              |      |
//! | `whep`, `http`       | Serve   | ✓   | ✓      | ✓            | ✓    |
//! | `call-server`, `calls` | Serve | ⁴   | ⁴      | ⁴            | ⁴    |
//! | `relay-links`        | Serve   |     |        | ✓            | ✓    |
//! | `heartbeats`         | Serve   | ²   | ²      | ²            | ²    |
//!
//! ¹ with `recording.embedded_archiver`; ² with `cluster.upstreams`; ³ with chunks in a bucket
//! (`[recording.s3]`): what the last run left waiting on the disk goes up; ⁴ with `[calls] secret`
//! (signaling on `GET /ws`, the call server on `[calls] listen`). Renditions leave for the
//! tier below through taps wherever `cluster.secret` is set. [`Plan`] is this table in code.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pipelines::config::Role;
use pipelines::events::EventBus;
use pipelines::{Config, Registry};
use recorder::archiver::Archiver;
use recorder::chunks::ChunkStore;
use recorder::store::ObjectStore;
use relay_tiers::access::Tokens;
use relay_tiers::cluster::{Cluster, Member, RegionRule, RoutingRules};
use relay_tiers::egress::Egress;
use relay_tiers::feeds::FeedStore;
use relay_tiers::hls::store::HlsStore;
use relay_tiers::relay::pull::{PullSettings, Puller};
use relay_tiers::relay::tap::TapStore;
use relay_tiers::relay::tls::ClusterTls;
use relay_tiers::whep::{Whep, WhepLimits, WhepSettings};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::kafka::KafkaSink;
use crate::services::{Services, Stage};
use crate::{demo, http, wiring};

/// What a node runs, from its role and config: the table at the top of this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Publishers come in (RTMP, WHIP).
    pub ingest: bool,
    /// Streams are pulled from the tier above when first watched.
    pub pull: bool,
    /// Recordings are made into MP4s here.
    pub archive: bool,
    /// Renditions leave for the tier below.
    pub taps: bool,
    /// This node tells the tier above it is alive.
    pub heartbeats: bool,
    /// People call each other here (signaling, rooms).
    pub calls: bool,
}

impl Plan {
    pub fn of(config: &Config) -> Plan {
        let role = config.node.role;
        let ingest = !role.pulls();
        Plan {
            ingest,
            pull: role.pulls(),
            archive: ingest && config.recording.embedded_archiver,
            taps: !config.cluster.secret.is_empty(),
            heartbeats: !config.cluster.upstreams.is_empty(),
            calls: config.calls.enabled(),
        }
    }

    /// The services, by name, in the order they stop.
    pub fn services(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.ingest {
            names.extend(["rtmp", "whip"]);
        }
        if self.archive {
            names.push("archiver");
        }
        names.extend(["whep", "http"]);
        if self.calls {
            names.extend(["call-server", "calls"]);
        }
        if self.pull {
            names.push("relay-links");
        }
        if self.heartbeats {
            names.push("heartbeats");
        }
        names
    }
}

/// What every service of a node shares.
struct Core {
    config: Arc<Config>,
    plan: Plan,
    registry: Arc<Registry>,
    bus: Arc<EventBus>,
    kafka: Option<Arc<KafkaSink>>,
    chunks: ChunkStore,
    recordings: ObjectStore,
    hls: Arc<HlsStore>,
    taps: Option<Arc<TapStore>>,
    feeds: Arc<FeedStore>,
    egress: Egress,
    /// Viewer tokens, under the cluster secret.
    tokens: Option<Arc<Tokens>>,
    /// TLS between the tiers, on nodes with a cluster secret.
    tls: Option<ClusterTls>,
}

/// The publishers' doors, on nodes that ingest.
struct Ingest {
    rtmp: ingest::rtmp::RtmpServer,
    whip: Arc<ingest::whip::Whip>,
}

/// Runs a node until Ctrl-C or SIGTERM, then stops it in stages.
pub async fn serve(config: Arc<Config>, demo_source: bool) -> anyhow::Result<()> {
    let core = Core::new(config.clone()).await?;
    let plan = core.plan;
    let mut services = Services::new();
    let puller = plan.pull.then(|| core.puller());
    let archiver = plan.archive.then(|| core.archiver(&mut services));
    if plan.ingest && matches!(core.chunks, ChunkStore::S3 { .. }) {
        let stop = services.signal(Stage::Archive);
        let spill = config.node.data_dir.join("spill");
        let resume = recorder::spill::resume(core.chunks.clone(), spill, core.bus.clone(), stop);
        services.spawn(Stage::Archive, "spill", resume);
    }
    let ingest = match plan.ingest {
        true => Some(core.ingest(&mut services).await?),
        false => None,
    };
    let http_listener = TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("http.listen {}", config.http.listen))?;
    let http_addr = http_listener.local_addr()?;
    let admin_listener = match config.http.admin_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("http.admin_listen {addr}"))?,
        ),
        None => None,
    };
    let admin_addr = admin_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;
    let cluster = Arc::new(cluster_view(&config, http_addr, core.tls.as_ref()));
    let whep = core.whep(&mut services, cluster.clone()).await?;
    let measured = Arc::downgrade(&whep);
    cluster.measure_webrtc_room(move || measured.upgrade().map_or(0.0, |w| w.headroom()));
    if plan.heartbeats {
        let stop = services.signal(Stage::Serve);
        services.spawn(Stage::Serve, "heartbeats", cluster.clone().run(stop));
    }
    if let Some(puller) = puller.clone() {
        let stop = services.signal(Stage::Serve);
        let links = show_links(puller, cluster.clone(), stop);
        services.spawn(Stage::Serve, "relay-links", links);
    }
    let calls = match plan.calls {
        true => Some(calls_from(&config, core.bus.clone(), &mut services).await?),
        false => None,
    };
    let rtmp_addr = ingest.as_ref().map(|i| i.rtmp.local_addr()).transpose()?;
    let door_cluster = cluster.clone();
    let router = http::router(http::Services {
        config: config.clone(),
        registry: core.registry.clone(),
        hls: core.hls.clone(),
        recordings: core.recordings.clone(),
        archiver,
        kafka: core.kafka.clone(),
        bus: core.bus.clone(),
        taps: core.taps.clone(),
        puller,
        cluster,
        whep,
        whip: ingest.as_ref().map(|i| i.whip.clone()),
        tokens: core.tokens.clone(),
        calls,
    });
    let admin_router = router.clone();
    announce(&config, rtmp_addr, http_addr, admin_addr);
    if let Some(ingest) = ingest {
        let stop = services.signal(Stage::Ingest);
        services.spawn(Stage::Ingest, "rtmp", ingest.rtmp.run(stop));
    }
    let stop = services.signal(Stage::Serve);
    services.spawn(
        Stage::Serve,
        "http",
        crate::door::serve(
            http_listener,
            router,
            crate::door::Door {
                caps: door_caps(&config),
                tls: core.tls.as_ref().map(ClusterTls::acceptor),
                members: Some(door_cluster),
                admin: false,
            },
            stop,
        ),
    );
    if let Some(listener) = admin_listener {
        let stop = services.signal(Stage::Serve);
        let door = crate::door::Door {
            caps: door_caps(&config),
            tls: None,
            members: None,
            admin: true,
        };
        let admin = crate::door::serve(listener, admin_router, door, stop);
        services.spawn(Stage::Serve, "admin-http", admin);
    }
    let demo = rtmp_addr
        .filter(|_| demo_source)
        .and_then(|a| demo_source_into(&config, a));

    info!(services = ?services.names(), "services running");
    crate::wait_for_signal().await;
    info!("shutting down");
    drop(demo);
    // Publishes end first; then the archiver makes their recordings; then HTTP and the rest.
    services.stop().await;
    if let Some(kafka) = core.kafka {
        let flush = move || kafka.flush(Duration::from_secs(5));
        let _ = tokio::task::spawn_blocking(flush).await;
    }
    Ok(())
}

impl Core {
    async fn new(config: Arc<Config>) -> anyhow::Result<Core> {
        let data = &config.node.data_dir;
        std::fs::create_dir_all(data)
            .with_context(|| format!("cannot create data_dir {}", data.display()))?;
        let plan = Plan::of(&config);
        let (bus, kafka) = crate::event_bus(&config)?;
        let (chunks, recordings) = crate::stores(&config).await;
        let hls = Arc::new(HlsStore::default());
        let taps = plan.taps.then(|| Arc::new(TapStore::default()));
        let feeds = Arc::new(FeedStore::default());
        let egress = Egress {
            hls: hls.clone(),
            taps: taps.clone(),
            feeds: feeds.clone(),
            segment_target: Duration::from_secs(u64::from(config.hls.segment_seconds)),
            playlist_length: config.hls.playlist_length as usize,
            transcoders: Arc::new(transcode::GstTranscoders),
        };
        let tokens = Tokens::new(&config.cluster.secret).map(Arc::new);
        let tls = cluster_tls(&config.cluster)?;
        Ok(Core {
            registry: Arc::new(Registry::new(&config.streams).with_admission(
                pipelines::admission::Admission::new(&config.admission, &node_name(&config)),
            )),
            config,
            plan,
            bus,
            kafka,
            chunks,
            recordings,
            hls,
            taps,
            feeds,
            egress,
            tokens,
            tls,
        })
    }

    /// Links to the tier above, made when a stream is first watched.
    fn puller(&self) -> Puller {
        let c = &self.config.cluster;
        let settings = PullSettings {
            upstreams: c.upstreams.clone(),
            secret: c.secret.clone(),
            linger: Duration::from_secs(u64::from(c.linger_seconds)),
            renditions: c.renditions.clone(),
            segment_target: self.egress.segment_target,
            playlist_length: self.egress.playlist_length,
            tls: self
                .tls
                .clone()
                .expect("a node that pulls has a cluster secret (checked by validate)"),
        };
        // A pulled stream is tapped again for a tier below this one.
        let egress = Egress {
            taps: Some(self.taps.clone().unwrap_or_default()),
            ..self.egress.clone()
        };
        Puller::new(settings, egress)
    }

    /// The embedded archiver and its webhook notifier.
    fn archiver(&self, services: &mut Services) -> Arc<Archiver> {
        crate::notify(&self.config, &self.bus, services);
        // Local chunks are this node's alone: what is there at start was left by its last run.
        let sole_writer = matches!(self.chunks, ChunkStore::Local(_));
        let live = self.registry.clone();
        let archiver = crate::archiver_for(
            &self.config,
            self.chunks.clone(),
            self.recordings.clone(),
            &self.bus,
        )
        .sole_writer(sole_writer)
        .live_sessions(move |stream, session| {
            live.get(stream)
                .and_then(|e| e.live_session())
                .is_some_and(|s| s.id == session)
        });
        let archiver = Arc::new(archiver);
        let stop = services.signal(Stage::Archive);
        let run = archiver.clone().run(self.bus.subscribe(), stop);
        services.spawn(Stage::Archive, "archiver", run);
        archiver
    }

    /// RTMP and WHIP, into one media graph per session.
    async fn ingest(&self, services: &mut Services) -> anyhow::Result<Ingest> {
        let config = &self.config;
        let egress = Egress {
            taps: self.taps.clone(),
            ..self.egress.clone()
        };
        let factory = Arc::new(wiring::Broadcast::new(
            config.clone(),
            self.bus.clone(),
            self.chunks.clone(),
            egress,
        ));
        let settings = ingest::rtmp::RtmpSettings {
            app: config.rtmp.app.clone(),
            max_connections: config.rtmp.max_connections,
            merge_read: Duration::from_millis(u64::from(config.rtmp.merge_read_ms)),
            ..Default::default()
        };
        let rtmp = ingest::rtmp::RtmpServer::bind(
            config.rtmp.listen,
            settings,
            self.registry.clone(),
            factory.clone(),
        )
        .await
        .with_context(|| format!("rtmp.listen {}", config.rtmp.listen))?;
        let settings = ingest::whip::WhipSettings {
            listen: config.webrtc.whip_listen,
            advertise: config.webrtc.advertise.parse().ok(),
            vp8: vp8_settings(config),
            limits: rtc::resource::Limits {
                // A publisher per stream, and as many again still connecting or leaving.
                max_sessions: config.streams.len().max(1) * 2,
                per_address: config.webrtc.max_sessions_per_address,
                offers_per_second: config.webrtc.offers_per_second_per_address,
            },
        };
        let (whip, driver) = ingest::whip::Whip::start(
            settings,
            self.registry.clone(),
            factory,
            self.egress.transcoders.clone(),
            services.signal(Stage::Ingest),
        )
        .await
        .with_context(|| format!("webrtc.whip_listen {}", config.webrtc.whip_listen))?;
        services.spawn(Stage::Ingest, "whip", driver);
        Ok(Ingest { rtmp, whip })
    }

    /// WebRTC viewers (WHEP), on every node.
    async fn whep(
        &self,
        services: &mut Services,
        cluster: Arc<Cluster>,
    ) -> anyhow::Result<Arc<Whep>> {
        let webrtc = &self.config.webrtc;
        let settings = WhepSettings {
            listen: webrtc.listen,
            advertise: webrtc.advertise.parse().ok(),
            workers: webrtc.workers.resolve(rtc::workers::cores()),
            limits: WhepLimits {
                per_node: webrtc.max_viewers,
                per_stream: webrtc.max_viewers_per_stream,
                per_address: webrtc.max_sessions_per_address,
                offers_per_second: webrtc.offers_per_second_per_address,
            },
        };
        let (whep, driver) = Whep::start(
            settings,
            self.feeds.clone(),
            self.tokens.clone(),
            self.registry.clone(),
            self.bus.clone(),
            Some(cluster),
            services.signal(Stage::Serve),
        )
        .await
        .with_context(|| format!("webrtc.listen {}", webrtc.listen))?;
        services.spawn(Stage::Serve, "whep", driver);
        Ok(whep)
    }
}

/// A VP8 source becomes H.264 at the best rung's rate, keyframes on the GOP.
fn vp8_settings(config: &Config) -> pipelines::transcoders::Vp8Settings {
    let rungs = config.ladders.values().flatten();
    pipelines::transcoders::Vp8Settings {
        kbps: rungs.map(|r| r.video_kbps).max().unwrap_or(2500),
        gop_frames: config.transcode.gop_seconds * 30,
        preset: config.transcode.x264_preset.clone(),
    }
}

/// Says where the node listens. Tests and scripts read the first line to find the ports
/// (`listen = "127.0.0.1:0"`).
fn announce(
    config: &Config,
    rtmp_addr: Option<std::net::SocketAddr>,
    http_addr: std::net::SocketAddr,
    admin_addr: Option<std::net::SocketAddr>,
) {
    let rtmp_shown = rtmp_addr.map_or("none".to_owned(), |a| a.to_string());
    match admin_addr {
        Some(admin) => {
            println!("tiercast listening rtmp={rtmp_shown} http={http_addr} admin={admin}")
        }
        None => println!("tiercast listening rtmp={rtmp_shown} http={http_addr}"),
    }
    let role: Role = config.node.role;
    info!(rtmp_addr = %rtmp_shown, %http_addr, ?role, region = %config.node.region, data_dir = %config.node.data_dir.display(), "tiercast node up");
    let Some(rtmp_addr) = rtmp_addr else {
        info!(upstreams = ?config.cluster.upstreams, "streams are pulled from upstream when first watched");
        return;
    };
    for s in &config.streams {
        info!(
            "publish to rtmp://{}/{}/<key of {}>, watch http://{}/hls/{}/master.m3u8",
            rtmp_addr, config.rtmp.app, s.name, http_addr, s.name
        );
    }
}

/// `[http]`'s caps on connections.
fn door_caps(config: &Config) -> crate::door::Caps {
    crate::door::Caps {
        total: config.http.max_connections,
        per_address: config.http.max_connections_per_address,
    }
}

/// `--demo-source`: a synthetic camera and tone published into the `demo` stream (else the
/// first one).
fn demo_source_into(config: &Config, rtmp_addr: std::net::SocketAddr) -> Option<demo::DemoSource> {
    let stream = config
        .streams
        .iter()
        .find(|s| s.name == pipelines::config::DEFAULT_STREAM)
        .or(config.streams.first())?;
    let url = format!(
        "rtmp://{}/{}/{}",
        crate::loopback(rtmp_addr),
        config.rtmp.app,
        stream.key
    );
    info!(stream = %stream.name, "demo source publishing");
    demo::DemoSource::start(&url)
        .map_err(|e| warn!("demo source not started: {e}"))
        .ok()
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
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// This node as the cluster sees it, and how it routes viewers.
fn cluster_view(
    config: &Config,
    http_addr: std::net::SocketAddr,
    tls: Option<&ClusterTls>,
) -> Cluster {
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
        webrtc_room: None,
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
        tls,
    )
}

/// The node's name for the admission webhooks: `[node] name`, else the machine's host name.
/// Calls from `[calls]`: signaling with the directory in `[[calls.users]]` and the rooms with
/// rules, and the call server on `[calls] listen`.
async fn calls_from(
    config: &Config,
    bus: Arc<EventBus>,
    services: &mut Services,
) -> anyhow::Result<Arc<calls::ws::Calls>> {
    let c = &config.calls;
    let settings = calls::sfu::SfuSettings {
        listen: c.listen,
        advertise: config.webrtc.advertise.parse().ok(),
        transcoders: Arc::new(transcode::GstTranscoders),
    };
    let stop = services.signal(Stage::Serve);
    let (sfu, from_sfu, driver) = calls::sfu::Sfu::start(settings, bus.clone(), stop)
        .await
        .with_context(|| format!("calls.listen {}", c.listen))?;
    services.spawn(Stage::Serve, "call-server", driver);
    let directory: Arc<dyn calls::directory::Directory> = if c.users_url.is_empty() {
        Arc::new(calls::directory::Embedded::new(&c.users))
    } else {
        let cache_for = Duration::from_secs(c.users_cache_seconds);
        Arc::new(calls::directory::Remote::new(&c.users_url, cache_for))
    };
    let rooms = c
        .rooms
        .iter()
        .map(|r| {
            let rules = calls::switchboard::RoomRules {
                pin: r.pin.clone(),
                max: r.max_participants,
            };
            (r.name.clone(), rules)
        })
        .collect();
    let ring = Duration::from_secs(u64::from(c.ring_seconds));
    let board =
        calls::switchboard::Switchboard::new(directory.clone(), rooms, ring, c.max_room_size);
    let calls = calls::ws::Calls::new(board, directory, &c.secret, bus, (sfu, from_sfu));
    let stop = services.signal(Stage::Serve);
    services.spawn(Stage::Serve, "calls", calls.clone().run(stop));
    Ok(calls)
}

fn node_name(config: &Config) -> String {
    if !config.node.name.is_empty() {
        return config.node.name.clone();
    }
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// The cluster's TLS: from `[cluster]`'s files, else made from its secret; none without one.
fn cluster_tls(cluster: &pipelines::config::ClusterConfig) -> anyhow::Result<Option<ClusterTls>> {
    if let Some((cert, key, ca)) = cluster.tls_files() {
        return Ok(Some(ClusterTls::from_files(cert, key, ca)?));
    }
    if cluster.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(ClusterTls::from_secret(&cluster.secret)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(toml: &str) -> Plan {
        Plan::of(&Config::parse_with(toml, "test", None).expect("a valid config"))
    }

    #[test]
    fn each_role_runs_what_the_table_says() {
        let all = plan("");
        assert_eq!(all.services(), ["rtmp", "whip", "archiver", "whep", "http"]);
        let edge = plan(
            "[node]\nrole = \"edge\"\n[cluster]\nsecret = \"0123456789abcdef0123456789abcdef\"\nupstreams = [\"127.0.0.1:1\"]\n",
        );
        assert_eq!(
            edge.services(),
            ["whep", "http", "relay-links", "heartbeats"]
        );
        assert!(edge.taps && !edge.ingest && !edge.archive);
        let origin = plan(
            "[node]\nrole = \"origin\"\n[cluster]\nsecret = \"0123456789abcdef0123456789abcdef\"\n[recording]\nembedded_archiver = false\n",
        );
        assert_eq!(origin.services(), ["rtmp", "whip", "whep", "http"]);
    }
}
