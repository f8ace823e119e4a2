//! The HTTP door's connections: how many, from whom, and for how long.
//!
//! A client gets [`HEADER_READ`] to send a request's head (a slowloris trickling one byte at a
//! time is let go then, and an idle keep-alive connection too); a connection on which nothing
//! moves either way for [`STALLED`] is closed (a client that stops reading a segment, a
//! WebSocket gone quiet); the node holds at most `[http] max_connections`, and one address at
//! most `[http] max_connections_per_address` (nodes of the tier below, known by their
//! heartbeats, are held only to the first). Past either cap a connection is answered `503`
//! with `Retry-After` and closed at once, before anything is read from it.
//!
//! A connection whose first byte is a TLS handshake is the cluster's: it is served through the
//! cluster's TLS ([`relay_tiers::relay::tls`]) and its requests are marked [`ClusterLink`], the
//! only ones the relay and the heartbeat take.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use relay_tiers::cluster::Cluster;
use relay_tiers::relay::tls::{ClusterLink, HANDSHAKE, TlsAcceptor};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tower::Service;
use tracing::{debug, warn};

/// How long a client may take to send a request's head, and how long a keep-alive connection
/// may sit idle between requests.
pub const HEADER_READ: Duration = Duration::from_secs(10);
/// How long a connection may go with no byte moving either way, once a request is being
/// answered (a long body, an upgraded WebSocket).
pub const STALLED: Duration = Duration::from_secs(60);
/// How long requests in flight are let finish after the stop signal.
const DRAIN: Duration = Duration::from_secs(10);

const OVER_CAPACITY_BODY: &str =
    r#"{"error":{"code":"service_unavailable","message":"too many connections, retry"}}"#;

/// What a connection past the caps is told, whole, before it is closed.
fn over_capacity() -> Vec<u8> {
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{OVER_CAPACITY_BODY}",
        OVER_CAPACITY_BODY.len()
    )
    .into_bytes()
}

/// The caps on connections.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub total: usize,
    pub per_address: usize,
}

/// How a listener takes connections.
pub struct Door {
    pub caps: Caps,
    /// Connections that open with a TLS handshake are the cluster's; without it, none are.
    pub tls: Option<TlsAcceptor>,
    /// Who the tier below is: its addresses are held only to the cap in all.
    pub members: Option<Arc<Cluster>>,
    /// The operator's own listener (`[http] admin_listen`): its requests are marked
    /// [`AdminDoor`].
    pub admin: bool,
}

/// Set on every request that came in through `[http] admin_listen`.
#[derive(Debug, Clone, Copy)]
pub struct AdminDoor;

/// What a connection's requests are marked with.
#[derive(Debug, Clone, Copy, Default)]
struct Marks {
    link: Option<ClusterLink>,
    admin: Option<AdminDoor>,
}

/// Serves `router` on `listener` until `stop`, then lets requests in flight finish (at most
/// [`DRAIN`]).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    door: Door,
    mut stop: watch::Receiver<bool>,
) {
    let Door {
        caps,
        tls,
        members,
        admin,
    } = door;
    let marks = Marks {
        link: None,
        admin: admin.then_some(AdminDoor),
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ)
        .max_buf_size(64 * 1024);
    let http = Arc::new(http);
    let counts = Arc::new(Counts::default());
    let over_capacity = over_capacity();
    let mut connections = JoinSet::new();
    loop {
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, mostly: let some close before trying again.
                    warn!("http accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
            Some(_) = connections.join_next() => continue,
        };
        let member = members.as_ref().is_some_and(|c| c.is_member_ip(peer.ip()));
        let Some(held) = counts.take(pipelines::secret::by_prefix(peer.ip()), caps, member) else {
            debug!(%peer, "http connection over the caps");
            let _ = socket.try_write(&over_capacity);
            // Said and done: no reset that could make the client lose the answer.
            let _ = socket
                .into_std()
                .map(|s| s.shutdown(std::net::Shutdown::Write));
            continue;
        };
        let _ = socket.set_nodelay(true);
        let router = router.clone();
        let http = http.clone();
        let stop = stop.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let _held = held;
            let Some(first) = first_byte(&socket).await else {
                return;
            };
            let watched = Watched::new(socket, STALLED);
            match tls {
                Some(acceptor) if first == HANDSHAKE => {
                    match tokio::time::timeout(HEADER_READ, acceptor.accept(watched)).await {
                        Ok(Ok(tls)) => {
                            let marks = Marks {
                                link: Some(ClusterLink),
                                ..marks
                            };
                            connection(&http, router, peer, marks, tls, stop).await
                        }
                        Ok(Err(e)) => debug!(%peer, "cluster TLS refused: {e}"),
                        Err(_) => debug!(%peer, "cluster TLS handshake too slow"),
                    }
                }
                _ => connection(&http, router, peer, marks, watched, stop).await,
            }
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN, async {
        while connections.join_next().await.is_some() {}
    });
    if drained.await.is_err() {
        warn!(
            left = connections.len(),
            "http connections cut at the drain deadline"
        );
    }
}

/// The first byte a client sends, once it has (without taking it); `None` if it sends none
/// within [`HEADER_READ`].
async fn first_byte(socket: &TcpStream) -> Option<u8> {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(HEADER_READ, socket.peek(&mut byte)).await {
        Ok(Ok(1)) => Some(byte[0]),
        _ => None,
    }
}

/// Serves the requests of one connection until it closes or `stop` (then gracefully).
async fn connection<I>(
    http: &hyper::server::conn::http1::Builder,
    router: Router,
    peer: std::net::SocketAddr,
    marks: Marks,
    io: I,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        if let Some(link) = marks.link {
            request.extensions_mut().insert(link);
        }
        if let Some(admin) = marks.admin {
            request.extensions_mut().insert(admin);
        }
        router.clone().call(request)
    });
    let connection = http
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = stopped(&mut stop) => connection.as_mut().graceful_shutdown(),
    }
    let _ = connection.await;
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Open connections, in all and per address.
#[derive(Default)]
struct Counts(Mutex<(usize, HashMap<IpAddr, usize>)>);

impl Counts {
    /// A place for one more connection from `ip`, if the caps allow it; a `member` of the
    /// cluster is held only to the cap in all.
    fn take(self: &Arc<Self>, ip: IpAddr, caps: Caps, member: bool) -> Option<Held> {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (total, by_address) = &mut *counts;
        let mine = by_address.get(&ip).copied().unwrap_or(0);
        if *total >= caps.total || (mine >= caps.per_address && !member) {
            return None;
        }
        *total += 1;
        by_address.insert(ip, mine + 1);
        Some(Held {
            counts: self.clone(),
            ip,
        })
    }
}

/// One connection's place; given back on drop.
struct Held {
    counts: Arc<Counts>,
    ip: IpAddr,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(|e| e.into_inner());
        let (total, by_address) = &mut *counts;
        *total -= 1;
        if let Some(n) = by_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                by_address.remove(&self.ip);
            }
        }
    }
}

/// A socket that fails with `TimedOut` once neither a read nor a write has moved a byte for
/// `limit` while one of them waits.
struct Watched {
    socket: TcpStream,
    limit: Duration,
    moved: Instant,
    timer: Pin<Box<Sleep>>,
}

impl Watched {
    fn new(socket: TcpStream, limit: Duration) -> Self {
        let now = Instant::now();
        Self {
            socket,
            limit,
            moved: now,
            timer: Box::pin(tokio::time::sleep_until(now + limit)),
        }
    }

    /// Called when the socket is not ready: an error once it has stalled for the limit.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            let deadline = self.moved + self.limit;
            if self.timer.deadline() != deadline {
                self.timer.as_mut().reset(deadline);
            }
            ready!(self.timer.as_mut().poll(cx));
            if Instant::now() >= self.moved + self.limit {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection stalled",
                ));
            }
        }
    }
}

impl Watched {
    /// A write's outcome: bytes out count as movement; a write that waits may have stalled.
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match written {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    self.moved = Instant::now();
                }
                Poll::Ready(r)
            }
            Poll::Pending => self.stalled(cx).map(Err),
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.socket).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.moved = Instant::now();
                }
                Poll::Ready(r)
            }
            Poll::Pending => self.stalled(cx).map(Err),
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.socket).poll_write(cx, data);
        self.wrote(cx, written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.socket).poll_write_vectored(cx, data);
        self.wrote(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_per_address_and_in_all_and_places_come_back() {
        let counts = Arc::new(Counts::default());
        let caps = Caps {
            total: 3,
            per_address: 2,
        };
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = counts.take(a, caps, false).expect("room");
        let _second = counts.take(a, caps, false).expect("room");
        assert!(
            counts.take(a, caps, false).is_none(),
            "a third from one address"
        );
        let member = counts
            .take(a, caps, true)
            .expect("a member is held to the cap in all only");
        drop(member);
        let _third = counts
            .take(b, caps, false)
            .expect("another address has room");
        assert!(counts.take(b, caps, false).is_none(), "the node is full");
        assert!(counts.take(b, caps, true).is_none(), "full for members too");
        drop(first);
        assert!(counts.take(a, caps, false).is_some(), "a place came back");
    }

    #[test]
    fn the_answer_past_the_caps_is_whole() {
        let answer = String::from_utf8(over_capacity()).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{answer}"
        );
    }

    #[tokio::test]
    async fn a_socket_where_nothing_moves_fails_at_the_limit() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut watched = Watched::new(server, Duration::from_millis(300));
        let mut buf = [0u8; 8];
        client.write_all(b"x").await.unwrap();
        assert_eq!(watched.read(&mut buf).await.unwrap(), 1, "a byte moves");
        let read = watched.read(&mut buf).await;
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::TimedOut);
    }
}
