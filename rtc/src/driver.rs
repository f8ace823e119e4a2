//! One IO driver for many WebRTC peers on one UDP socket, whatever they are for (WHIP
//! publishers, WHEP viewers, next call participants).
//!
//! Each peer is a sans-IO [`Rtc`] (str0m) with the policy's own state beside it. The driver
//! owns the socket and the time: datagrams in, read in bounded bursts and handed to the peer
//! they belong to (by source address once ICE has told us, else by whose ICE credentials a
//! STUN request carries); timers; and everything peers send, batched ([`Batch`]: `sendmmsg`,
//! UDP GSO). Only peers with something new (input, media, a due timer) are driven, so an idle
//! peer costs nothing per event.
//!
//! What the peers are for is a [`Policy`]: commands from the HTTP side (add, remove, ...),
//! media to send (prepared once, delivered to each peer that wants it), and what to do with
//! each session's events.
//!
//! A fault (a panic) in what the driver does for one peer is caught and logged, and that peer
//! is let go; one in preparing media drops that media. The other peers never notice.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use str0m::net::{Protocol, Receive};
use str0m::{Event, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error};

use crate::udp::{Batch, Reader};
use crate::workers::{Census, Load, Meter, SAMPLE_EVERY, SETTLE_SAMPLES};

/// Datagrams made before they are sent, at most: a keyframe for every viewer is megabytes.
const FLUSH_AT: usize = 512;
/// Datagrams read in one burst before the peers are driven again.
const READ_BURST: usize = 256;
/// The driver looks at its peers at least this often.
const IDLE_TURN: Duration = Duration::from_millis(100);
/// A peer that has not connected (ICE and DTLS) this long after it was added is let go, and
/// whatever slot it held with it: an offer that never connects (no candidates, a client that
/// went away) cannot hold one.
pub const CONNECT_WITHIN: Duration = Duration::from_secs(15);

/// Faults caught so far, in every driver of this process.
static FAULTS: AtomicU64 = AtomicU64::new(0);

/// Faults (panics) the drivers of this process have caught, each costing one peer or one
/// piece of media.
pub fn faults() -> u64 {
    FAULTS.load(Ordering::Relaxed)
}

/// Runs `f`, what the driver does for `what`; a panic in it is caught, counted and logged.
fn guarded<T>(what: impl FnOnce() -> String, f: impl FnOnce() -> T) -> Option<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(done) => Some(done),
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            FAULTS.fetch_add(1, Ordering::Relaxed);
            error!("{} failed ({why}); let go, the others go on", what());
            None
        }
    }
}

/// Runs `f` for `peer`; if it panics, the peer is let go (reaped with the dead).
fn for_peer<S>(peer: &mut Peer<S>, f: impl FnOnce(&mut Peer<S>)) {
    let id = peer.id;
    if guarded(|| format!("peer {id}"), || f(peer)).is_none() {
        peer.faulted = true;
    }
}

/// One WebRTC connection and what its policy keeps about it.
pub struct Peer<S> {
    pub id: u64,
    pub rtc: Rtc,
    pub state: S,
    /// Where the peer's packets go (the nominated ICE pair), once str0m has sent there
    /// anything but a STUN answer.
    pub remote: Option<SocketAddr>,
    /// Has input or output to handle.
    pub dirty: bool,
    next_timeout: Instant,
    /// When it was added, and when it connected since.
    born: Instant,
    connected: Option<Instant>,
    /// Something done for it panicked: its state cannot be trusted, it is let go.
    faulted: bool,
}

/// What a peer's policy does with its session's events.
pub trait Session {
    fn on_event(&mut self, rtc: &mut Rtc, event: Event);

    /// After the session has said all it had to: datagrams the policy owes the peer itself
    /// (retransmissions it seals), to `remote`.
    fn after_pump(&mut self, remote: SocketAddr, out: &mut Batch) {
        let _ = (remote, out);
    }
}

impl<S: Session> Peer<S> {
    pub fn new(id: u64, rtc: Rtc, state: S) -> Peer<S> {
        Peer {
            id,
            rtc,
            state,
            remote: None,
            dirty: true,
            next_timeout: Instant::now(),
            born: Instant::now(),
            connected: None,
            faulted: false,
        }
    }

    /// Everything the session has to send or say, up to its next timer.
    pub fn pump(&mut self, out: &mut Batch) {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.next_timeout = t;
                    break;
                }
                Ok(Output::Transmit(t)) => {
                    // STUN answers go wherever a check came from (a browser checks every
                    // pair it has); DTLS, RTP and RTCP go to the pair ICE chose.
                    if !is_stun(&t.contents) {
                        self.remote = Some(t.destination);
                    }
                    out.push(t.destination, t.contents.into());
                }
                Ok(Output::Event(e)) => {
                    if matches!(e, Event::Connected) && self.connected.is_none() {
                        self.connected = Some(Instant::now());
                    }
                    self.state.on_event(&mut self.rtc, e);
                }
                Err(e) => {
                    debug!(peer = self.id, "peer failed: {e}");
                    self.rtc.disconnect();
                    break;
                }
            }
        }
        if let Some(to) = self.remote {
            self.state.after_pump(to, out);
        }
    }
}

/// A STUN message: its first two bits are zero (RFC 7983), where DTLS starts at 20 and RTP
/// and RTCP at 128.
fn is_stun(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| *b < 4)
}

/// The peers of one driver, and where to find them.
pub struct Peers<S> {
    list: Vec<Peer<S>>,
    /// Who sends from where, once ICE has told us.
    by_source: HashMap<SocketAddr, u64>,
    /// Where each peer is in `list`.
    index: HashMap<u64, usize>,
    /// Peers added since the last census.
    added: usize,
}

impl<S> Default for Peers<S> {
    fn default() -> Self {
        Peers {
            list: Vec::new(),
            by_source: HashMap::new(),
            index: HashMap::new(),
            added: 0,
        }
    }
}

impl<S> Peers<S> {
    pub fn add(&mut self, peer: Peer<S>) {
        self.added += 1;
        self.index.insert(peer.id, self.list.len());
        self.list.push(peer);
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut Peer<S>> {
        let i = *self.index.get(&id)?;
        self.list.get_mut(i)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Peer<S>> {
        self.list.iter()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Peer<S>> {
        self.list.iter_mut()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The peer `input` (a datagram from `source`) is for.
    fn route(&mut self, source: SocketAddr, input: &Input) -> Option<usize> {
        let known = self
            .by_source
            .get(&source)
            .and_then(|id| self.index.get(id).copied())
            .filter(|&i| self.list[i].rtc.accepts(input));
        // A new address: whoever's ICE credentials its STUN request carries.
        let found = known.or_else(|| self.list.iter().position(|p| p.rtc.accepts(input)))?;
        self.by_source.insert(source, self.list[found].id);
        Some(found)
    }

    /// Removes the peers whose sessions are over (or that faulted), handing each to `gone`.
    /// How many peers there are, how many have been connected long enough for their cost
    /// to show, and how many were added since the last census.
    fn census(&mut self, now: Instant) -> Census {
        let settle = SAMPLE_EVERY * SETTLE_SAMPLES;
        let settled = self
            .list
            .iter()
            .filter(|p| {
                p.connected
                    .is_some_and(|at| now.saturating_duration_since(at) >= settle)
            })
            .count();
        Census {
            peers: self.list.len(),
            settled,
            added: std::mem::take(&mut self.added),
        }
    }

    fn reap(&mut self, mut gone: impl FnMut(Peer<S>)) {
        let alive = |p: &Peer<S>| !p.faulted && p.rtc.is_alive();
        if self.list.iter().all(alive) {
            return;
        }
        let (alive, dead): (Vec<_>, Vec<_>) = self.list.drain(..).partition(alive);
        self.list = alive;
        for peer in dead {
            self.by_source.retain(|_, id| *id != peer.id);
            let id = peer.id;
            guarded(|| format!("letting peer {id} go"), || gone(peer));
        }
        self.index = self
            .list
            .iter()
            .enumerate()
            .map(|(i, p)| (p.id, i))
            .collect();
    }
}

/// What a driver's peers are for.
pub trait Policy: Send + 'static {
    type State: Session + Send;
    /// From the HTTP side: add a peer, remove one, ...
    type Command: Send;
    /// Media to send (a frame of some stream), as it arrives.
    type Media: Send;
    /// Media made ready once for every peer (RTP payloads).
    type Prepared;

    fn on_command(&mut self, peers: &mut Peers<Self::State>, command: Self::Command);

    /// Makes `media` ready for the peers; `None` when no peer takes it.
    fn prepare(&mut self, peers: &Peers<Self::State>, media: Self::Media)
    -> Option<Self::Prepared>;

    /// Hands `prepared` to `peer` if it wants it, its datagrams into `out`.
    fn deliver(
        &mut self,
        peer: &mut Peer<Self::State>,
        prepared: &Self::Prepared,
        now: Instant,
        out: &mut Batch,
    );

    /// At the start of each turn, with every peer: what one peer received goes to others (the
    /// call server forwards media between its participants), sealed into `out` or handed to
    /// their sessions. Peers given something to send are marked dirty, and are driven in the
    /// same turn.
    fn exchange(&mut self, peers: &mut Peers<Self::State>, now: Instant, out: &mut Batch) {
        let _ = (peers, now, out);
    }

    /// Each turn, for every peer before it is driven (a keyframe to ask for, ...).
    fn before_drive(&mut self, peer: &mut Peer<Self::State>, now: Instant) {
        let _ = (peer, now);
    }

    /// Each turn, for every peer after it was driven (media its session gave up, ...).
    fn after_drive(&mut self, peer: &mut Peer<Self::State>) {
        let _ = peer;
    }

    /// A peer whose session is over, removed.
    fn gone(&mut self, peer: Peer<Self::State>);

    /// When the driver stops, after every peer has been through [`Policy::gone`]: what must
    /// still finish before the driver returns (a publisher's session closing its last segment).
    fn finishing(&mut self) -> impl Future<Output = ()> + Send + 'static {
        std::future::ready(())
    }

    /// After every turn, with what the socket has sent so far.
    fn after_turn(&mut self, out: &Batch) {
        let _ = out;
    }

    /// When `media` was made, for how long it waited for the driver ([`Load::lag`]); `None`:
    /// not known.
    fn made_at(&self, media: &Self::Prepared) -> Option<Instant> {
        let _ = media;
        None
    }
}

/// Serves `policy`'s peers on `socket` until `commands` closes or `stop` turns true (then
/// every peer is let go through [`Policy::gone`] first). `candidate` is the address
/// peers send to (ICE only takes packets addressed to a candidate it knows, whatever address
/// the socket is bound to).
pub async fn run<P: Policy>(
    socket: UdpSocket,
    candidate: SocketAddr,
    policy: P,
    commands: mpsc::UnboundedReceiver<P::Command>,
    media: Option<mpsc::Receiver<P::Media>>,
    stop: watch::Receiver<bool>,
) {
    let load = Arc::default();
    run_measured(socket, candidate, policy, commands, media, stop, load).await
}

/// [`run`], saying how loaded the driver is in `load`.
pub async fn run_measured<P: Policy>(
    socket: UdpSocket,
    candidate: SocketAddr,
    mut policy: P,
    mut commands: mpsc::UnboundedReceiver<P::Command>,
    mut media: Option<mpsc::Receiver<P::Media>>,
    mut stop: watch::Receiver<bool>,
    load: Arc<Load>,
) {
    let mut meter = Meter::new(load);
    let mut peers: Peers<P::State> = Peers::default();
    let mut reader = Reader::default();
    let mut out = Batch::default();
    loop {
        let now = Instant::now();
        let mut next = now + IDLE_TURN;
        guarded(
            || "exchanging media".to_owned(),
            || policy.exchange(&mut peers, now, &mut out),
        );
        for peer in peers.list.iter_mut() {
            if peer.faulted {
                continue;
            }
            if peer.connected.is_none() {
                let deadline = peer.born + CONNECT_WITHIN;
                if now >= deadline && peer.rtc.is_alive() {
                    debug!(
                        peer = peer.id,
                        "not connected within {CONNECT_WITHIN:?}; let go"
                    );
                    peer.rtc.disconnect();
                }
                next = next.min(deadline);
            }
            for_peer(peer, |peer| {
                policy.before_drive(peer, now);
                if peer.next_timeout <= now {
                    let _ = peer.rtc.handle_input(Input::Timeout(now));
                    peer.dirty = true;
                }
                if peer.dirty {
                    peer.dirty = false;
                    peer.pump(&mut out);
                }
                policy.after_drive(peer);
            });
            if out.len() >= FLUSH_AT {
                out.flush(&socket).await;
            }
            next = next.min(peer.next_timeout);
        }
        if !out.is_empty() {
            out.flush(&socket).await;
        }
        policy.after_turn(&out);
        peers.reap(|peer| policy.gone(peer));
        let idle_from = Instant::now();
        meter.turn(idle_from, || peers.census(idle_from));
        let wait = next.saturating_duration_since(idle_from);
        let woken = tokio::select! {
            r = socket.readable() => Woken::Readable(r.is_ok()),
            command = commands.recv() => Woken::Command(command),
            Some(m) = recv(&mut media) => Woken::Media(m),
            _ = tokio::time::sleep(wait) => Woken::Timer,
            () = stopped(&mut stop) => Woken::Stop,
        };
        meter.waited(idle_from, Instant::now());
        match woken {
            Woken::Readable(false) | Woken::Timer => {}
            Woken::Readable(true) => {
                let mut read = 0;
                // Until the socket has nothing more (which clears its readiness) or a burst
                // is read.
                while read < READ_BURST && reader.read(&socket).is_ok() {
                    let now = Instant::now();
                    for (source, datagram) in reader.datagrams() {
                        read += 1;
                        let Ok(contents) = datagram.try_into() else {
                            continue;
                        };
                        let input = Input::Receive(
                            now,
                            Receive {
                                proto: Protocol::Udp,
                                source,
                                destination: candidate,
                                contents,
                            },
                        );
                        if let Some(i) = peers.route(source, &input)
                            && !peers.list[i].faulted
                        {
                            for_peer(&mut peers.list[i], |peer| {
                                let _ = peer.rtc.handle_input(input);
                                // Polled before its next datagram: a session in RTP mode
                                // keeps only the last packet it was given until it is polled.
                                peer.pump(&mut out);
                                peer.dirty = true;
                            });
                        }
                    }
                    if out.len() >= FLUSH_AT {
                        out.flush(&socket).await;
                    }
                }
            }
            Woken::Command(None) => return,
            Woken::Command(Some(command)) => {
                guarded(
                    || "a command".to_owned(),
                    || policy.on_command(&mut peers, command),
                );
            }
            Woken::Media(m) => {
                let prepared = guarded(
                    || "preparing media".to_owned(),
                    || policy.prepare(&peers, m),
                );
                let Some(prepared) = prepared.flatten() else {
                    continue;
                };
                let now = Instant::now();
                if let Some(made) = policy.made_at(&prepared) {
                    meter.waited_for(made, now);
                }
                for peer in peers.list.iter_mut() {
                    if peer.faulted {
                        continue;
                    }
                    for_peer(peer, |peer| policy.deliver(peer, &prepared, now, &mut out));
                    if out.len() >= FLUSH_AT {
                        out.flush(&socket).await;
                    }
                }
            }
            Woken::Stop => {
                // Every peer is let go as if it had left: the policy ends what it was for
                // (a publisher's session ends cleanly, a viewer is counted out).
                for peer in peers.list.iter_mut() {
                    peer.rtc.disconnect();
                }
                peers.reap(|peer| policy.gone(peer));
                policy.finishing().await;
                return;
            }
        }
    }
}

/// What a driver waiting for something to do was woken by.
enum Woken<C, M> {
    /// The socket (or an error, `false`, that is not the driver's to handle).
    Readable(bool),
    Command(Option<C>),
    Media(M),
    Timer,
    Stop,
}

/// Returns once `stop` says so; never when its sender is gone without saying it.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The next media, or never when the policy takes none.
async fn recv<M>(media: &mut Option<mpsc::Receiver<M>>) -> Option<M> {
    match media {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    struct Quiet;
    impl Session for Quiet {
        fn on_event(&mut self, _: &mut Rtc, _: Event) {}
    }

    /// Delivers numbers; peer 1's session fails on every one.
    #[derive(Default, Clone)]
    struct Faulty {
        delivered: Arc<Mutex<Vec<(u64, u32)>>>,
        gone: Arc<Mutex<Vec<u64>>>,
        added: Arc<Mutex<usize>>,
    }

    impl Policy for Faulty {
        type State = Quiet;
        type Command = Peer<Quiet>;
        type Media = u32;
        type Prepared = u32;

        fn on_command(&mut self, peers: &mut Peers<Quiet>, peer: Peer<Quiet>) {
            peers.add(peer);
            *self.added.lock().unwrap() += 1;
        }

        fn prepare(&mut self, _: &Peers<Quiet>, media: u32) -> Option<u32> {
            assert_ne!(media, 13, "unlucky media");
            Some(media)
        }

        fn deliver(&mut self, peer: &mut Peer<Quiet>, media: &u32, _: Instant, _: &mut Batch) {
            assert_ne!(peer.id, 1, "a fault in peer 1's session");
            self.delivered.lock().unwrap().push((peer.id, *media));
        }

        fn gone(&mut self, peer: Peer<Quiet>) {
            self.gone.lock().unwrap().push(peer.id);
        }
    }

    #[tokio::test]
    async fn a_fault_for_one_peer_or_one_frame_costs_only_that() {
        let policy = Faulty::default();
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let candidate = socket.local_addr().unwrap();
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (media, media_rx) = mpsc::channel(16);
        let (stop, stop_rx) = watch::channel(false);
        let driver = tokio::spawn(run(
            socket,
            candidate,
            policy.clone(),
            commands_rx,
            Some(media_rx),
            stop_rx,
        ));
        for id in [1, 2] {
            let rtc = str0m::RtcConfig::new().build(Instant::now());
            commands.send(Peer::new(id, rtc, Quiet)).unwrap();
        }
        // Commands and media are separate channels: both peers are in before the media.
        let deadline = Instant::now() + Duration::from_secs(5);
        while *policy.added.lock().unwrap() < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let before = faults();
        for m in [7, 13, 8] {
            media.send(m).await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while policy.delivered.lock().unwrap().len() < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.send(true).unwrap();
        driver.await.expect("the driver itself never panics");
        // Peer 2 got every frame but the one that could not be prepared; peer 1 was let go at
        // its first fault.
        assert_eq!(*policy.delivered.lock().unwrap(), [(2, 7), (2, 8)]);
        assert_eq!(*policy.gone.lock().unwrap(), [1, 2]);
        assert!(faults() >= before + 2);
    }
}
