//! Who is in the cluster, whether they are healthy, and which edge a viewer should go to.
//!
//! Every node below the origin sends a heartbeat to each of its upstreams every second
//! (`POST /api/v1/cluster/heartbeat`, authenticated like the relay) carrying itself and every
//! member it knows of; the answer carries every member the upstream knows of. So news travels
//! up with the requests and down with the answers, and every node soon knows every edge, which
//! is what routing needs: `GET /api/v1/route` (and a master playlist asked of a node that is not
//! an edge) sends the viewer to the least loaded healthy edge of their region, else of the
//! nearest region that has one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ipnet::IpNet;
use pipelines::config::Role;
use pipelines::media::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, info};

use crate::relay::auth;
use crate::relay::tls::{ClusterLink, ClusterTls};

pub const HEARTBEAT_PATH: &str = "/api/v1/cluster/heartbeat";
/// Heartbeats are sent this often...
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// ... and a member not heard of for this long is unhealthy.
pub const HEALTHY_FOR: Duration = Duration::from_secs(3);

/// A node as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Member {
    pub name: String,
    pub role: Role,
    pub region: String,
    /// Where viewers and other nodes reach its HTTP door: `host:port`.
    pub address: String,
    /// Viewer requests per second, averaged over the last heartbeats.
    pub load: f64,
    /// Room its WebRTC workers have for more viewers, in shares of a core (`None`: it did
    /// not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webrtc_room: Option<f64>,
    /// The upstreams it reads from now.
    pub links: Vec<String>,
    /// When the member itself last said so (milliseconds since the Unix epoch).
    pub seen_ms: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Whether `address` is a plain `host:port` a URL can be made of: a DNS name or an IP address
/// (IPv6 in brackets) and a port, nothing that could carry a user, a path or a script into the
/// `http://` URLs viewers are sent to.
pub fn is_member_address(address: &str) -> bool {
    let Some((host, port)) = address.rsplit_once(':') else {
        return false;
    };
    if !port.parse::<u16>().is_ok_and(|p| p > 0) || host.is_empty() || host.len() > 253 {
        return false;
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    host.split('.').all(|label| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
    })
}

impl Member {
    pub fn healthy(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.seen_ms) <= HEALTHY_FOR.as_millis() as u64
    }
}

/// Where a viewer's region comes from when they do not say: their address.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionRule {
    pub network: IpNet,
    pub region: String,
}

impl RegionRule {
    /// `10.1.0.0/16` → a rule for `region`.
    pub fn parse(cidr: &str, region: &str) -> Option<RegionRule> {
        Some(RegionRule {
            network: cidr.parse().ok()?,
            region: region.to_owned(),
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.network.contains(&ip)
    }
}

/// How routing decides.
#[derive(Debug, Clone, Default)]
pub struct RoutingRules {
    /// Client address → region, first match wins.
    pub regions: Vec<RegionRule>,
    /// For a region, the other regions in order of nearness.
    pub nearby: HashMap<String, Vec<String>>,
}

impl RoutingRules {
    pub fn region_of(&self, ip: IpAddr) -> Option<&str> {
        self.regions
            .iter()
            .find(|r| r.contains(ip))
            .map(|r| r.region.as_str())
    }
}

/// How much an edge is asked for over what it has room for: requests per second over the room
/// its WebRTC workers have (an edge without room for another WebRTC viewer is taken only when
/// no edge has room).
fn weight(m: &Member) -> (bool, f64) {
    let room = m.webrtc_room.unwrap_or(1.0);
    (room <= 0.0, (m.load + 1.0) / (room.max(0.0) + 0.05))
}

fn lighter(a: &Member, b: &Member) -> std::cmp::Ordering {
    let (wa, wb) = (weight(a), weight(b));
    wa.0.cmp(&wb.0)
        .then(wa.1.total_cmp(&wb.1))
        .then(a.name.cmp(&b.name))
}

/// The healthy edge a viewer from `region` should use: the lightest of their region (by
/// [`weight`]), else of the nearest region that has one, else of any region.
pub fn choose<'a>(
    members: &'a [Member],
    region: Option<&str>,
    rules: &RoutingRules,
    now_ms: u64,
) -> Option<&'a Member> {
    let edges: Vec<&Member> = members
        .iter()
        .filter(|m| m.role == Role::Edge && m.healthy(now_ms))
        .collect();
    let least = |region: &str| {
        edges
            .iter()
            .filter(|m| m.region == region)
            .min_by(|a, b| lighter(a, b))
            .copied()
    };
    if let Some(region) = region {
        if let Some(m) = least(region) {
            return Some(m);
        }
        for other in rules.nearby.get(region).into_iter().flatten() {
            if let Some(m) = least(other) {
                return Some(m);
            }
        }
    }
    edges.iter().min_by(|a, b| lighter(a, b)).copied()
}

/// This node's view of the cluster.
pub struct Cluster {
    me: Mutex<Member>,
    members: Mutex<HashMap<String, Member>>,
    secret: String,
    upstreams: Vec<String>,
    pub rules: RoutingRules,
    /// Viewer requests served since the last heartbeat.
    pub requests: AtomicU64,
    /// Over the cluster's TLS; `None` on a node without a cluster secret.
    client: Option<Client<HttpsConnector<HttpConnector>, Full<Bytes>>>,
    /// Addresses that sent this node a genuine heartbeat lately, and when (ms): the tier
    /// below, whose relay connections are not held to the per-address cap.
    member_ips: Mutex<HashMap<IpAddr, u64>>,
    /// Heartbeats heard lately, so none is taken twice.
    replays: auth::Replays,
    /// What this node's WebRTC workers have room for, asked at each heartbeat.
    webrtc_room: std::sync::OnceLock<Box<dyn Fn() -> f64 + Send + Sync>>,
}

/// Members a node keeps at most; more names than this are not taken.
pub const MAX_MEMBERS: usize = 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Cluster {
    pub fn new(
        me: Member,
        secret: &str,
        upstreams: Vec<String>,
        rules: RoutingRules,
        tls: Option<&ClusterTls>,
    ) -> Cluster {
        let client = tls.map(|tls| {
            let mut connector = HttpConnector::new();
            connector.set_connect_timeout(Some(Duration::from_millis(500)));
            Client::builder(TokioExecutor::new()).build(tls.connector(connector))
        });
        Cluster {
            me: Mutex::new(me),
            members: Mutex::new(HashMap::new()),
            secret: secret.to_owned(),
            upstreams,
            rules,
            requests: AtomicU64::new(0),
            client,
            member_ips: Mutex::new(HashMap::new()),
            replays: auth::Replays::default(),
            webrtc_room: std::sync::OnceLock::new(),
        }
    }

    /// Where this node's heartbeats learn the room its WebRTC workers have.
    pub fn measure_webrtc_room(&self, room: impl Fn() -> f64 + Send + Sync + 'static) {
        let _ = self.webrtc_room.set(Box::new(room));
    }

    /// A healthy edge other than this node, of its region, else of the nearest region that
    /// has one, with room for a WebRTC viewer: where viewers this node turns away can go.
    pub fn elsewhere(&self) -> Option<Member> {
        let me = self.me();
        let others: Vec<Member> = self
            .members()
            .into_iter()
            .filter(|m| m.name != me.name && m.webrtc_room.is_none_or(|r| r > 0.0))
            .collect();
        choose(&others, Some(&me.region), &self.rules, now_ms()).cloned()
    }

    /// Whether `ip` sent this node a genuine heartbeat within the last minute.
    pub fn is_member_ip(&self, ip: IpAddr) -> bool {
        let now = now_ms();
        lock(&self.member_ips)
            .get(&ip)
            .is_some_and(|seen| now.saturating_sub(*seen) < 60_000)
    }

    /// `ip` sent a genuine heartbeat. At most [`MAX_MEMBERS`] addresses are kept.
    fn heard_from(&self, ip: IpAddr) {
        let now = now_ms();
        let mut ips = lock(&self.member_ips);
        if ips.len() >= MAX_MEMBERS && !ips.contains_key(&ip) {
            ips.retain(|_, seen| now.saturating_sub(*seen) < 60_000);
            if ips.len() >= MAX_MEMBERS {
                return;
            }
        }
        ips.insert(ip, now);
    }

    pub fn me(&self) -> Member {
        let mut me = lock(&self.me).clone();
        me.seen_ms = now_ms();
        me
    }

    pub fn set_links(&self, links: Vec<String>) {
        lock(&self.me).links = links;
    }

    /// Every member, this node included, by name.
    pub fn members(&self) -> Vec<Member> {
        let me = self.me();
        let mut all: Vec<Member> = lock(&self.members)
            .values()
            .filter(|m| m.name != me.name)
            .cloned()
            .collect();
        all.push(me);
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Takes what a heartbeat said, keeping the newest word on each member. A member's clock
    /// is not trusted past ours: a time ahead of now is taken as now (it cannot stay "healthy"
    /// forever); a member whose address is not a plain `host:port` is not taken (viewers are
    /// sent there); no more than [`MAX_MEMBERS`] are kept.
    pub fn merge(&self, heard: Vec<Member>) {
        let me = lock(&self.me).name.clone();
        let now = now_ms();
        let mut members = lock(&self.members);
        for mut m in heard {
            if m.name == me {
                continue;
            }
            if !is_member_address(&m.address) {
                debug!(member = %m.name, address = %m.address, "member not taken: its address is not host:port");
                continue;
            }
            m.seen_ms = m.seen_ms.min(now);
            if members.len() >= MAX_MEMBERS && !members.contains_key(&m.name) {
                continue;
            }
            match members.get(&m.name) {
                Some(known) if known.seen_ms >= m.seen_ms => {}
                _ => {
                    if !members.contains_key(&m.name) {
                        info!(member = %m.name, role = ?m.role, region = %m.region, "cluster member joined");
                    }
                    members.insert(m.name.clone(), m);
                }
            }
        }
        // Members silent for a minute are forgotten.
        members.retain(|_, m| now.saturating_sub(m.seen_ms) < 60_000);
    }

    /// Whether `header` signs this heartbeat `body`, now, for the first time.
    fn heartbeat_signed(&self, body: &[u8], header: Option<&str>) -> bool {
        auth::verify_signed(&self.secret, HEARTBEAT_PATH, body, header, &self.replays)
    }

    /// Sends heartbeats to the upstreams until `shutdown`.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            let rate =
                self.requests.swap(0, Ordering::Relaxed) as f64 / HEARTBEAT_EVERY.as_secs_f64();
            let room = self.webrtc_room.get().map(|room| room());
            {
                let mut me = lock(&self.me);
                me.load = me.load * 0.5 + rate * 0.5;
                me.webrtc_room = room;
            }
            let body = Bytes::from(serde_json::to_vec(&self.members()).unwrap_or_default());
            for upstream in &self.upstreams {
                match self.beat(upstream, body.clone()).await {
                    Ok(heard) => self.merge(heard),
                    Err(e) => debug!(%upstream, "heartbeat not answered: {e}"),
                }
            }
        }
    }

    async fn beat(&self, upstream: &str, body: Bytes) -> Result<Vec<Member>, String> {
        let client = self
            .client
            .as_ref()
            .ok_or("no cluster secret to reach it with")?;
        let request = hyper::Request::post(format!("https://{upstream}{HEARTBEAT_PATH}"))
            .header(
                hyper::header::AUTHORIZATION,
                auth::signed(&self.secret, HEARTBEAT_PATH, &body),
            )
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(HEARTBEAT_EVERY, client.request(request))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(response.status().to_string());
        }
        let body = tokio::time::timeout(HEARTBEAT_EVERY, response.into_body().collect())
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        serde_json::from_slice(&body.to_bytes()).map_err(|e| e.to_string())
    }
}

/// `POST /api/v1/cluster/heartbeat` (between nodes), `GET /api/v1/cluster` and
/// `GET /api/v1/route`, each mounted with its description ([`utoipa`]).
pub fn router() -> utoipa_axum::router::OpenApiRouter<Arc<Cluster>> {
    utoipa_axum::router::OpenApiRouter::new()
        .routes(utoipa_axum::routes!(heartbeat))
        .routes(utoipa_axum::routes!(view))
        .routes(utoipa_axum::routes!(route))
        // Every member, as the tier below knows them.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_HEARTBEAT))
}

/// The largest heartbeat taken: [`MAX_MEMBERS`] members and their links.
const MAX_HEARTBEAT: usize = 1024 * 1024;

/// The viewer's address, where the server records it.
pub type Peer = axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>;

/// The region a viewer is in: what they say (`?region=`, `X-Tiercast-Region`), else what their
/// address says.
pub fn viewer_region(
    rules: &RoutingRules,
    query: Option<&str>,
    headers: &axum::http::HeaderMap,
    peer: Option<IpAddr>,
) -> Option<String> {
    query
        .map(str::to_owned)
        .or_else(|| {
            headers
                .get("x-tiercast-region")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .or_else(|| peer.and_then(|ip| rules.region_of(ip)).map(str::to_owned))
        .filter(|r| !r.is_empty())
}

impl Cluster {
    /// The edge a viewer from `region` should watch on, if there is a healthy one.
    pub fn route(&self, region: Option<&str>) -> Option<Member> {
        let members = self.members();
        choose(&members, region, &self.rules, now_ms()).cloned()
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/cluster/heartbeat",
    summary = "Between nodes: a node says what it knows of the cluster and hears what this one knows. Needs the cluster token (made from the cluster secret).",
    request_body = Vec<Member>,
    responses(
        (status = 200, body = Vec<Member>),
        (status = 400, description = "Not a list of members.", body = pipelines::http_error::ErrorBody),
        (status = 401, description = "No valid cluster token.", body = pipelines::http_error::ErrorBody),
        (status = 426, description = "Not over the cluster's TLS.", body = pipelines::http_error::ErrorBody),
    )
)]
async fn heartbeat(
    axum::extract::State(cluster): axum::extract::State<Arc<Cluster>>,
    headers: axum::http::HeaderMap,
    link: Option<axum::Extension<ClusterLink>>,
    peer: Option<Peer>,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !cluster.heartbeat_signed(&body, token) {
        return refuse(
            axum::http::StatusCode::UNAUTHORIZED,
            "a heartbeat is signed whole, once, with the cluster secret",
        );
    }
    if link.is_none() {
        return refuse(
            axum::http::StatusCode::UPGRADE_REQUIRED,
            "heartbeats are taken over the cluster's TLS only",
        );
    }
    match serde_json::from_slice::<Vec<Member>>(&body) {
        Ok(heard) => {
            if let Some(peer) = peer {
                cluster.heard_from(peer.0.0.ip());
            }
            cluster.merge(heard);
            axum::Json(cluster.members()).into_response()
        }
        Err(e) => refuse(
            axum::http::StatusCode::BAD_REQUEST,
            &format!("not a list of members: {e}"),
        ),
    }
}

/// `GET /api/v1/cluster`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ClusterView {
    /// This node's name.
    pub me: String,
    pub members: Vec<MemberView>,
}

/// A member as `GET /api/v1/cluster` shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MemberView {
    #[serde(flatten)]
    pub member: Member,
    /// It spoke within the last few heartbeats.
    pub healthy: bool,
    pub seen_secs_ago: f64,
}

/// `GET /api/v1/route`: where a viewer of `stream` should go.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RouteAnswer {
    pub stream: String,
    /// The viewer's region, as asked or as their address says.
    pub region: Option<String>,
    pub edge: String,
    pub edge_region: String,
    pub hls: String,
    pub watch: String,
}

#[utoipa::path(
    get,
    path = "/api/v1/cluster",
    summary = "Every node of the cluster: role, region, load, links and health.",
    responses((status = 200, body = ClusterView))
)]
async fn view(
    axum::extract::State(cluster): axum::extract::State<Arc<Cluster>>,
) -> axum::Json<ClusterView> {
    let now = now_ms();
    let members = cluster
        .members()
        .into_iter()
        .map(|member| MemberView {
            healthy: member.healthy(now),
            seen_secs_ago: now.saturating_sub(member.seen_ms) as f64 / 1000.0,
            member,
        })
        .collect();
    axum::Json(ClusterView {
        me: cluster.me().name.clone(),
        members,
    })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct RouteQuery {
    /// The stream to watch.
    stream: String,
    /// The viewer's region; else X-Tiercast-Region or the viewer's address.
    region: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/route",
    summary = "The edge a viewer of a stream should use: the least loaded healthy edge of the viewer's region, else the nearest region's.",
    params(RouteQuery),
    responses(
        (status = 200, body = RouteAnswer),
        (status = 503, description = "No healthy edge.", body = pipelines::http_error::ErrorBody),
    )
)]
async fn route(
    axum::extract::State(cluster): axum::extract::State<Arc<Cluster>>,
    axum::extract::Query(q): axum::extract::Query<RouteQuery>,
    peer: Option<Peer>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if !pipelines::config::is_path_safe(&q.stream) {
        return refuse(
            axum::http::StatusCode::BAD_REQUEST,
            "a stream name is 1 to 64 letters, digits, '-' or '_'",
        );
    }
    let region = viewer_region(
        &cluster.rules,
        q.region.as_deref(),
        &headers,
        peer.map(|p| p.0.0.ip()),
    );
    // Watch pages on any edge ask this when their edge dies.
    let cors = [(axum::http::header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")];
    match cluster.route(region.as_deref()) {
        Some(edge) => (
            cors,
            axum::Json(RouteAnswer {
                hls: format!("http://{}/hls/{}/master.m3u8", edge.address, q.stream),
                watch: format!("http://{}/watch/{}", edge.address, q.stream),
                stream: q.stream,
                region,
                edge: edge.name,
                edge_region: edge.region,
            }),
        )
            .into_response(),
        None => {
            let status = axum::http::StatusCode::SERVICE_UNAVAILABLE;
            let body = pipelines::http_error::body(status.as_u16(), "no healthy edge");
            let json = [(
                axum::http::header::CONTENT_TYPE,
                pipelines::http_error::CONTENT_TYPE,
            )];
            (status, cors, json, body).into_response()
        }
    }
}

/// An error in the one shape every route uses ([`pipelines::http_error`]).
fn refuse(status: axum::http::StatusCode, why: &str) -> axum::response::Response {
    use axum::response::IntoResponse;
    let body = pipelines::http_error::body(status.as_u16(), why);
    let json = [(
        axum::http::header::CONTENT_TYPE,
        pipelines::http_error::CONTENT_TYPE,
    )];
    (status, json, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, role: Role, region: &str, load: f64, seen_ms: u64) -> Member {
        Member {
            webrtc_room: None,
            name: name.into(),
            role,
            region: region.into(),
            address: format!("{name}:8080"),
            load,
            links: Vec::new(),
            seen_ms,
        }
    }

    #[test]
    fn viewers_go_to_the_least_loaded_healthy_edge_of_their_region_then_the_nearest() {
        let now = 100_000;
        let members = vec![
            member("origin", Role::Origin, "core", 0.0, now),
            member("a1", Role::Edge, "eu", 5.0, now),
            member("a2", Role::Edge, "eu", 2.0, now),
            member("a3", Role::Edge, "eu", 0.0, now - 10_000), // dead
            member("b1", Role::Edge, "us", 9.0, now),
            member("c1", Role::Edge, "asia", 1.0, now),
        ];
        let rules = RoutingRules {
            regions: vec![RegionRule::parse("10.1.0.0/16", "eu").unwrap()],
            nearby: HashMap::from([("africa".into(), vec!["mars".into(), "us".into()])]),
        };
        let pick =
            |region: Option<&str>| choose(&members, region, &rules, now).map(|m| &m.name[..]);
        assert_eq!(pick(Some("eu")), Some("a2"));
        assert_eq!(pick(Some("us")), Some("b1"));
        assert_eq!(
            pick(Some("africa")),
            Some("b1"),
            "the nearest region with an edge"
        );
        assert_eq!(
            pick(Some("nowhere")),
            Some("c1"),
            "else the least loaded anywhere"
        );
        assert_eq!(pick(None), Some("c1"));
        assert_eq!(rules.region_of("10.1.200.3".parse().unwrap()), Some("eu"));
        assert_eq!(rules.region_of("10.2.0.1".parse().unwrap()), None);
        assert_eq!(choose(&members[..1], Some("eu"), &rules, now), None);
    }

    #[test]
    fn cidr_rules_parse_and_match() {
        assert!(RegionRule::parse("10.0.0.0/33", "x").is_none());
        assert!(RegionRule::parse("nonsense", "x").is_none());
        let all = RegionRule::parse("0.0.0.0/0", "x").unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        let v6 = RegionRule::parse("2001:db8::/32", "x").unwrap();
        assert!(v6.contains("2001:db8::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn the_newest_word_on_a_member_wins() {
        let c = Cluster::new(
            member("me", Role::Distribution, "core", 0.0, 0),
            "secret-secret-secret",
            Vec::new(),
            RoutingRules::default(),
            None,
        );
        let now = now_ms();
        c.merge(vec![member("e", Role::Edge, "eu", 1.0, now)]);
        c.merge(vec![member("e", Role::Edge, "eu", 7.0, now - 500)]);
        c.merge(vec![member("me", Role::Edge, "eu", 7.0, now + 1000)]);
        let names: Vec<(String, f64)> = c.members().into_iter().map(|m| (m.name, m.load)).collect();
        assert_eq!(names, [("e".into(), 1.0), ("me".into(), 0.0)]);
    }

    #[test]
    fn a_member_cannot_claim_the_future_or_flood_the_map() {
        let c = Cluster::new(
            member("me", Role::Distribution, "core", 0.0, 0),
            "secret-secret-secret",
            Vec::new(),
            RoutingRules::default(),
            None,
        );
        let hour_ahead = now_ms() + 3_600_000;
        c.merge(vec![member("liar", Role::Edge, "eu", 0.0, hour_ahead)]);
        let liar = c.members().into_iter().find(|m| m.name == "liar").unwrap();
        assert!(liar.seen_ms <= now_ms(), "taken as now, not an hour ahead");
        let now = now_ms();
        let flood = (0..MAX_MEMBERS + 500)
            .map(|i| member(&format!("n{i}"), Role::Edge, "eu", 0.0, now))
            .collect();
        c.merge(flood);
        // The map holds at most MAX_MEMBERS; this node is listed beside them.
        assert!(c.members().len() <= MAX_MEMBERS + 1);
    }

    #[test]
    fn only_plain_host_port_addresses_are_members() {
        for good in [
            "edge-1:8080",
            "10.0.0.7:80",
            "[2001:db8::1]:8080",
            "a.b.example:443",
        ] {
            assert!(is_member_address(good), "{good}");
        }
        for bad in [
            "evil.example/x:80",
            "user@evil.example:80",
            "evil.example:80/",
            "javascript:alert(1)",
            "edge:0",
            ":8080",
            "edge:99999",
            "[nonsense]:80",
            "ed ge:80",
            "edge?x=1:80",
            "-edge:80",
        ] {
            assert!(!is_member_address(bad), "{bad}");
        }
        let c = Cluster::new(
            member("me", Role::Distribution, "core", 0.0, 0),
            "secret-secret-secret",
            Vec::new(),
            RoutingRules::default(),
            None,
        );
        let mut liar = member("liar", Role::Edge, "eu", 0.0, now_ms());
        liar.address = "evil.example/phish?:80".into();
        c.merge(vec![liar]);
        assert!(c.members().iter().all(|m| m.name != "liar"));
    }
}
