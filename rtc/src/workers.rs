//! Drivers on their own threads, one per core, and how loaded each one is.
//!
//! A node serves what one driver can only as far as one core goes; [`spawn`] runs a driver on
//! a thread of its own (a single-threaded runtime), on a socket of its own, so a node with
//! `N` of them uses `N` cores. Each driver keeps its [`Load`]: the share of its time it spends
//! working rather than waiting, and how long media waits for it. Admission reads it
//! ([`Load::takes_another`]) before a peer is given to a driver, so a driver near its limit
//! turns new peers away instead of making everyone it has late.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};

use crate::driver::{self, Policy};

/// How often a driver says how loaded it is.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// Peers handed to a driver and not yet among its peers are counted as joining for at most
/// this many samples (the driver takes them up within a turn; this only bounds a miscount).
const JOINING_SAMPLES: usize = 8;
/// A peer's cost shows in its driver's (smoothed) load this many samples after it connected;
/// until then it counts as joining.
pub(crate) const SETTLE_SAMPLES: u32 = 3;
/// A driver takes no more peers once working this share of its time would be passed...
pub const ADMIT_BELOW: f64 = 0.85;
/// ... or once every frame waits this long for it: a driver this far behind real time is
/// not keeping up.
pub const LAG_LIMIT: Duration = Duration::from_millis(30);
/// What one peer is taken to cost (a share of a core) until the driver has learned it: on the
/// dear side (a fast machine costs about a third of this per viewer of a 2.5 Mb/s rendition),
/// so that a first rush of viewers cannot take more than the core has before what they cost
/// shows.
const PEER_COST_PRIOR: f64 = 1.0 / 300.0;
/// Bounds on what is learned, against a sample that says nonsense.
const PEER_COST: (f64, f64) = (1.0 / 5000.0, 1.0 / 100.0);
/// What a peer costs is learned from samples of at least this many settled peers (with
/// fewer, fixed costs would say too much).
const LEARN_FROM: usize = 20;

/// A driver's peers at a sample.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Census {
    pub peers: usize,
    /// Connected long enough for what they cost to show in the load.
    pub settled: usize,
    /// Taken up since the last sample.
    pub added: usize,
}

/// How loaded one driver is: written by the driver, read by whoever hands it peers.
///
/// A peer counts as joining from when it is handed over until its cost shows in the driver's
/// load: while it waits to be taken up, while it connects, and a few samples after. What a
/// peer costs is learned from the settled ones alone, with the whole load put on them (the
/// joiners' handshakes too): dear while a rush is on, which is the safe side, and right once
/// it is over. So admission in a rush goes in steps, each as large as the room it has seen.
#[derive(Debug, Default)]
pub struct Load {
    /// Its peers, and those settled, at the last sample.
    peers: AtomicUsize,
    settled: AtomicUsize,
    /// Share of wall time spent working, smoothed (`f64` bits).
    busy: AtomicU64,
    /// How long every piece of media waited for it over the last sample at least (how far
    /// behind real time it is), in microseconds.
    lag_us: AtomicU64,
    /// Peers handed to it and not yet taken up, per sample, the newest first.
    handed: [AtomicUsize; JOINING_SAMPLES],
    /// Where `handed` starts (the driver moves it on every sample).
    newest: AtomicUsize,
    /// What a peer costs, as learned (`f64` bits; 0: not yet).
    per_peer: AtomicU64,
}

impl Load {
    pub fn peers(&self) -> usize {
        self.peers.load(Ordering::Relaxed)
    }

    /// The share of its time the driver spends working (0 to 1).
    pub fn busy(&self) -> f64 {
        f64::from_bits(self.busy.load(Ordering::Relaxed))
    }

    /// How long media waited for it, at worst, lately: how far behind real time it is.
    pub fn lag(&self) -> Duration {
        Duration::from_micros(self.lag_us.load(Ordering::Relaxed))
    }

    /// Peers given to it whose cost does not show in its load yet.
    pub fn joining(&self) -> usize {
        let handed: usize = self.handed.iter().map(|g| g.load(Ordering::Relaxed)).sum();
        let unsettled = self
            .peers()
            .saturating_sub(self.settled.load(Ordering::Relaxed));
        handed + unsettled
    }

    /// A peer is being given to the driver.
    pub fn given(&self) {
        let at = self.newest.load(Ordering::Relaxed) % JOINING_SAMPLES;
        self.handed[at].fetch_add(1, Ordering::Relaxed);
    }

    /// The share of a core a peer of this driver costs, as far as its figures say.
    pub fn per_peer(&self) -> f64 {
        match f64::from_bits(self.per_peer.load(Ordering::Relaxed)) {
            learned if learned > 0.0 => learned,
            _ => PEER_COST_PRIOR,
        }
    }

    /// The share of its time left before [`ADMIT_BELOW`], once the peers joining (and one
    /// more) cost what its peers cost: below zero, it should take no more.
    pub fn headroom(&self) -> f64 {
        ADMIT_BELOW - self.busy() - self.per_peer() * (self.joining() + 1) as f64
    }

    /// Whether one more peer fits without making the others late.
    pub fn takes_another(&self) -> bool {
        self.lag() < LAG_LIMIT && self.headroom() >= 0.0
    }

    /// The driver's side: what the last sample saw.
    fn sampled(&self, census: Census, busy: f64, lag: Duration) {
        let smoothed = (self.busy() + busy) / 2.0;
        self.busy.store(smoothed.to_bits(), Ordering::Relaxed);
        if census.settled >= LEARN_FROM {
            let cost = (smoothed / census.settled as f64).clamp(PEER_COST.0, PEER_COST.1);
            let known = f64::from_bits(self.per_peer.load(Ordering::Relaxed));
            let learned = if known > 0.0 {
                known * 0.7 + cost * 0.3
            } else {
                cost
            };
            self.per_peer.store(learned.to_bits(), Ordering::Relaxed);
        }
        self.lag_us.store(
            lag.as_micros().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
        // Those taken up are among its peers now, the oldest handed first.
        let newest = self.newest.load(Ordering::Relaxed);
        let mut added = census.added;
        for back in (0..JOINING_SAMPLES).rev() {
            if added == 0 {
                break;
            }
            let bucket = &self.handed[newest.wrapping_sub(back) % JOINING_SAMPLES];
            let took = bucket
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_sub(added))
                })
                .map_or(0, |was| was.min(added));
            added -= took;
        }
        self.peers.store(census.peers, Ordering::Relaxed);
        self.settled.store(census.settled, Ordering::Relaxed);
        // What the oldest sample was handed and is still not taken up was miscounted.
        let next = newest.wrapping_add(1);
        self.handed[next % JOINING_SAMPLES].store(0, Ordering::Relaxed);
        self.newest.store(next, Ordering::Relaxed);
    }
}

/// How busy this whole process keeps the cores it may use: a driver can have room while the
/// threads beside it (ingest, relaying, answering offers) take the core it runs on.
#[derive(Debug)]
pub struct Process {
    cores: f64,
    /// When last sampled, the process's CPU time then, and the share it showed.
    last: std::sync::Mutex<(Instant, Duration, f64)>,
}

/// The process is taken as full once it keeps the cores it may use this busy.
pub const PROCESS_FULL: f64 = 0.9;

impl Default for Process {
    fn default() -> Self {
        Process {
            cores: cores() as f64,
            last: std::sync::Mutex::new((Instant::now(), cpu_time(), 0.0)),
        }
    }
}

impl Process {
    /// The share of the cores it may use the process kept busy lately (sampled at most every
    /// [`SAMPLE_EVERY`]).
    pub fn busy(&self) -> f64 {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let wall = now.saturating_duration_since(last.0);
        if wall >= SAMPLE_EVERY {
            let cpu = cpu_time();
            let share = cpu.saturating_sub(last.1).as_secs_f64() / wall.as_secs_f64() / self.cores;
            *last = (now, cpu, (last.2 + share) / 2.0);
        }
        last.2
    }

    /// Whether the process has a core's share to spare for one more peer.
    pub fn has_room(&self) -> bool {
        self.busy() < PROCESS_FULL
    }
}

/// CPU time (user and system) this process has taken.
fn cpu_time() -> Duration {
    // SAFETY: getrusage(2) fills the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// What a driver measures between samples, kept by [`driver::run`].
pub(crate) struct Meter {
    load: Arc<Load>,
    since: Instant,
    idle: Duration,
    /// The shortest any media waited for the driver this sample: a keyframe's burst makes
    /// the few frames after it wait, a driver that is behind makes every frame wait.
    lag: Option<Duration>,
}

impl Meter {
    pub(crate) fn new(load: Arc<Load>) -> Meter {
        Meter {
            load,
            since: Instant::now(),
            idle: Duration::ZERO,
            lag: None,
        }
    }

    /// The driver waited from `from` to `to` with nothing to do.
    pub(crate) fn waited(&mut self, from: Instant, to: Instant) {
        self.idle += to.saturating_duration_since(from);
    }

    /// Media made at `made` was taken up at `now`: how long it waited behind what the driver
    /// had to do before it.
    pub(crate) fn waited_for(&mut self, made: Instant, now: Instant) {
        let waited = now.saturating_duration_since(made);
        self.lag = Some(self.lag.map_or(waited, |lag| lag.min(waited)));
    }

    /// Says what was seen, once a sample's time has passed (`census` counts the peers then).
    pub(crate) fn turn(&mut self, now: Instant, census: impl FnOnce() -> Census) {
        let wall = now.saturating_duration_since(self.since);
        if wall < SAMPLE_EVERY {
            return;
        }
        let busy = 1.0 - (self.idle.as_secs_f64() / wall.as_secs_f64()).min(1.0);
        self.load
            .sampled(census(), busy, self.lag.take().unwrap_or_default());
        self.since = now;
        self.idle = Duration::ZERO;
    }
}

/// The cores this process may use (its CPU affinity and quota).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// One driver on a thread of its own.
pub struct Worker<C, M> {
    pub commands: mpsc::UnboundedSender<C>,
    /// Where its media goes; `None` when the policy takes none.
    pub media: Option<mpsc::Sender<M>>,
    /// The address its peers send to.
    pub candidate: SocketAddr,
    pub load: Arc<Load>,
}

/// Runs `policy`'s driver on `socket` on a new thread named `name` (see [`driver::run`]);
/// `media` is the capacity of its media queue (`0`: it takes none). The future returned
/// ends when the driver has.
pub fn spawn<P: Policy>(
    name: String,
    socket: std::net::UdpSocket,
    candidate: SocketAddr,
    policy: P,
    media: usize,
    stop: watch::Receiver<bool>,
) -> std::io::Result<(
    Worker<P::Command, P::Media>,
    impl Future<Output = ()> + Send,
)> {
    socket.set_nonblocking(true)?;
    let (commands, commands_rx) = mpsc::unbounded_channel();
    let (media_tx, media_rx) = match media {
        0 => (None, None),
        n => {
            let (tx, rx) = mpsc::channel(n);
            (Some(tx), Some(rx))
        }
    };
    let load = Arc::new(Load::default());
    let (done, finished) = oneshot::channel::<()>();
    let measured = load.clone();
    std::thread::Builder::new().name(name).spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        match runtime {
            Ok(runtime) => runtime.block_on(async move {
                match UdpSocket::from_std(socket) {
                    Ok(socket) => {
                        driver::run_measured(
                            socket,
                            candidate,
                            policy,
                            commands_rx,
                            media_rx,
                            stop,
                            measured,
                        )
                        .await
                    }
                    Err(e) => tracing::error!("a worker's socket: {e}"),
                }
            }),
            Err(e) => tracing::error!("a worker's runtime: {e}"),
        }
        let _ = done.send(());
    })?;
    let worker = Worker {
        commands,
        media: media_tx,
        candidate,
        load,
    };
    Ok((worker, async move {
        let _ = finished.await;
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn census(peers: usize, settled: usize, added: usize) -> Census {
        Census {
            peers,
            settled,
            added,
        }
    }

    #[test]
    fn a_driver_near_its_limit_or_late_takes_no_more_and_joiners_count_until_they_show() {
        let load = Load::default();
        // Idle: takes peers, and a burst of joiners fills the room it has.
        assert!(load.takes_another());
        let burst = |load: &Load| {
            (0..5000)
                .take_while(|_| {
                    let ok = load.takes_another();
                    if ok {
                        load.given();
                    }
                    ok
                })
                .count()
        };
        let fits = burst(&load);
        // At what a peer is first taken to cost, 1/300 of a core: 0.85 * 300 of them.
        assert!((254..=255).contains(&fits), "{fits}");
        assert!(!load.takes_another());
        // Taken up, still connecting: still joining, so still no room.
        load.sampled(census(fits, 0, fits), 0.1, Duration::from_millis(2));
        assert_eq!(load.joining(), fits);
        assert!(!load.takes_another());
        // Settled: their cost shows in the load, and says how much room is left. Handshakes
        // of a second step of the rush make the load dear at first...
        for _ in 0..4 {
            load.sampled(census(fits, fits, 0), 0.2, Duration::from_millis(2));
        }
        assert_eq!(load.joining(), 0);
        assert!(load.per_peer() < PEER_COST_PRIOR, "{}", load.per_peer());
        let second = burst(&load);
        assert!(second > 50, "{second}");
        let peers = fits + second;
        load.sampled(census(peers, fits, second), 0.5, Duration::from_millis(2));
        assert!(!load.takes_another());
        // ... and right once it is over: all settled at a quarter of a core.
        for _ in 0..20 {
            load.sampled(census(peers, peers, 0), 0.25, Duration::from_millis(2));
        }
        let learned = load.per_peer();
        assert!(
            (learned - 0.25 / peers as f64).abs() < 0.1 / peers as f64,
            "{learned}"
        );
        assert!(load.takes_another());
        // Working 90 % of its time: no more.
        for _ in 0..10 {
            load.sampled(census(peers, peers, 0), 0.9, Duration::from_millis(2));
        }
        assert!(!load.takes_another());
        // Idle enough, but late: no more.
        for _ in 0..10 {
            load.sampled(census(peers, peers, 0), 0.3, Duration::from_millis(90));
        }
        assert!(!load.takes_another());
        load.sampled(census(peers, peers, 0), 0.3, Duration::from_millis(5));
        assert!(load.takes_another());
    }

    #[test]
    fn peers_handed_over_and_never_taken_up_stop_counting() {
        let load = Load::default();
        for _ in 0..10 {
            load.given();
        }
        load.sampled(census(3, 0, 3), 0.0, Duration::ZERO);
        assert_eq!(load.joining(), 7 + 3);
        for _ in 0..JOINING_SAMPLES {
            load.sampled(census(3, 3, 0), 0.0, Duration::ZERO);
        }
        assert_eq!(load.joining(), 0);
    }

    #[test]
    fn the_meter_says_what_share_of_its_time_a_driver_waited() {
        let load = Arc::new(Load::default());
        let mut meter = Meter::new(load.clone());
        let start = meter.since;
        meter.waited(start, start + Duration::from_millis(750));
        meter.waited_for(start, start + Duration::from_millis(40));
        meter.waited_for(start, start + Duration::from_millis(12));
        meter.turn(start + Duration::from_secs(1), || census(3, 3, 3));
        // Smoothed from zero: half of 0.25.
        assert!((load.busy() - 0.125).abs() < 1e-6, "{}", load.busy());
        assert_eq!(load.lag(), Duration::from_millis(12));
        assert_eq!(load.peers(), 3);
    }
}
