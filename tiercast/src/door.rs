//! The HTTP door's connections: how many, from whom, and for how long.
//!
//! A client gets [`HEADER_READ`] to send a request's head (a slowloris trickling one byte at a
//! time is let go then, and an idle keep-alive connection too); a connection on which nothing
//! moves either way for [`STALLED`] is closed (a client that stops reading a segment, a
//! WebSocket gone quiet); the node holds at most `[http] max_connections`, and one address at
//! most `[http] max_connections_per_address`. Past either cap a connection is answered `503`
//! with `Retry-After` and closed at once, before anything is read from it.

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

/// Serves `router` on `listener` until `stop`, then lets requests in flight finish (at most
/// [`DRAIN`]).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    caps: Caps,
    mut stop: watch::Receiver<bool>,
) {
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
        let Some(held) = counts.take(pipelines::secret::by_prefix(peer.ip()), caps) else {
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
        let mut stop = stop.clone();
        connections.spawn(async move {
            let _held = held;
            let service =
                hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    router.clone().call(request)
                });
            let io = TokioIo::new(Watched::new(socket, STALLED));
            let connection = http.serve_connection(io, service).with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = stopped(&mut stop) => connection.as_mut().graceful_shutdown(),
            }
            let _ = connection.await;
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

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Open connections, in all and per address.
#[derive(Default)]
struct Counts(Mutex<(usize, HashMap<IpAddr, usize>)>);

impl Counts {
    /// A place for one more connection from `ip`, if the caps allow it.
    fn take(self: &Arc<Self>, ip: IpAddr, caps: Caps) -> Option<Held> {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (total, by_address) = &mut *counts;
        let mine = by_address.get(&ip).copied().unwrap_or(0);
        if *total >= caps.total || mine >= caps.per_address {
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
        let first = counts.take(a, caps).expect("room");
        let _second = counts.take(a, caps).expect("room");
        assert!(counts.take(a, caps).is_none(), "a third from one address");
        let _third = counts.take(b, caps).expect("another address has room");
        assert!(counts.take(b, caps).is_none(), "the node is full");
        drop(first);
        assert!(counts.take(a, caps).is_some(), "a place came back");
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
