//! Transport-wide congestion control for media sealed outside a session (the call server's
//! forwarding), sans-IO: every packet sent to a peer carries the next transport-wide sequence
//! number (the `transport-cc` header extension) and is noted with its send time and size; the
//! peer's feedback (RTCP transport-cc) says which arrived, and when. From that, an estimate of
//! what the path to the peer carries:
//!
//! - **Loss** over 10 % in a report cuts the estimate by half the loss (once per episode:
//!   not again within [`HOLD`]).
//! - **Queueing**: a report's one-way delays more than [`OVERUSE`] above the lowest recently
//!   seen mean a queue is building on the path: the estimate drops below what was received.
//! - Otherwise (little loss, no queue) it grows by half per second toward what the receiver
//!   wants ([`Estimator::want`]), never far past it. Media is the probe: a receiver moved up
//!   a layer on the grown estimate shows within a report or two whether the path carries it,
//!   and a cut follows if not.
//!
//! What the peer's estimate of its own (REMB) says caps it. Times come in from the caller, so
//! the estimate is tested with simulated time.

use std::time::{Duration, Instant};

/// Packets remembered for their feedback: a second of 20 Mb/s to one peer, where feedback
/// comes every 100 ms or so. A ring of them, so a peer's records are made once, 32 KiB.
const RECORDS: usize = 2048;
/// Loss in a report above this cuts the estimate.
const LOSS_CUT: f64 = 0.10;
/// Loss in a report below this lets it grow.
const LOSS_GROW: f64 = 0.02;
/// Queueing delay above this is overuse.
pub const OVERUSE: Duration = Duration::from_millis(50);
/// Queueing delay below this lets the estimate grow.
const UNDERUSE: Duration = Duration::from_millis(25);
/// Growth per second while the path shows no harm.
const GROWTH: f64 = 0.5;
/// After a cut, no growth for this long.
pub const HOLD: Duration = Duration::from_millis(500);
/// How far past what the receiver wants the estimate may go.
const HEADROOM: f64 = 1.1;
/// The lowest delay is looked for over windows of this length (two of them).
const BASE_WINDOW: Duration = Duration::from_secs(5);
const MIN_BPS: u64 = 100_000;
const MAX_BPS: u64 = 100_000_000;

/// A packet sent: when (microseconds after the estimator's `time_zero`) and its size.
#[derive(Debug, Clone, Copy, Default)]
struct Record {
    at_us: u64,
    size: u32,
}

/// One peer's transport-wide sequence numbers, the packets sent with them, and the estimate
/// their feedback makes.
#[derive(Debug)]
pub struct Estimator {
    next: u64,
    /// The first sequence number handed out.
    first: u64,
    /// Packet `seq` is at `seq % RECORDS`, for the last [`RECORDS`] sent.
    sent: Box<[Record]>,
    /// The origin arrival times of reports are read against (any fixed instant).
    time_zero: Instant,
    estimate: u64,
    wanted: u64,
    start: u64,
    remb: Option<u64>,
    /// The lowest one-way delay (arrival - send, in the two clocks) of this window and the
    /// one before, in seconds, and when this window began.
    base: (f64, f64, Instant),
    /// Received bits per second, smoothed.
    acked_bps: f64,
    last_update: Option<Instant>,
    hold_until: Option<Instant>,
}

/// What one report said, for tests and metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Report {
    pub received: usize,
    pub lost: usize,
    /// Mean delay above the lowest recently seen.
    pub queueing: Duration,
}

impl Estimator {
    /// Starts at `start_bps` until feedback says otherwise. `first_seq` is the first sequence
    /// number handed out.
    pub fn new(start_bps: u64, first_seq: u64, now: Instant) -> Estimator {
        Estimator {
            next: first_seq,
            first: first_seq,
            sent: vec![Record::default(); RECORDS].into_boxed_slice(),
            time_zero: now,
            estimate: start_bps,
            wanted: start_bps,
            start: start_bps,
            remb: None,
            base: (f64::MAX, f64::MAX, now),
            acked_bps: 0.0,
            last_update: None,
            hold_until: None,
        }
    }

    /// The sequence number for a packet of `size` bytes sent now (its low 16 bits go in the
    /// header extension).
    pub fn on_send(&mut self, size: usize, now: Instant) -> u16 {
        let seq = self.next;
        self.next += 1;
        self.sent[seq as usize % RECORDS] = Record {
            at_us: now.saturating_duration_since(self.time_zero).as_micros() as u64,
            size: size as u32,
        };
        seq as u16
    }

    /// The estimate, bits per second.
    pub fn estimate(&self) -> u64 {
        match self.remb {
            Some(remb) => self.estimate.min(remb).max(MIN_BPS),
            None => self.estimate,
        }
    }

    /// What the receiver's layers would take: the estimate grows toward it, not past.
    pub fn want(&mut self, bps: u64) {
        self.wanted = bps;
    }

    /// The peer's own estimate (REMB).
    pub fn remb(&mut self, bps: u64) {
        self.remb = Some(bps);
    }

    /// A transport-cc feedback from the peer, as str0m parsed it.
    pub fn on_feedback(&mut self, twcc: str0m::rtp::rtcp::Twcc, now: Instant) -> Option<Report> {
        let newest = self.next.checked_sub(1)?;
        let reports: Vec<(u64, Option<Instant>)> = twcc
            .into_iter(self.time_zero, newest.into())
            .map(|(seq, _, arrived)| (*seq, arrived))
            .collect();
        self.on_reports(&reports, now)
    }

    /// Which of the packets sent arrived, and when (in the peer's clock, from any fixed
    /// origin). Sequence numbers never sent, or forgotten, are passed over.
    pub fn on_reports(
        &mut self,
        reports: &[(u64, Option<Instant>)],
        now: Instant,
    ) -> Option<Report> {
        if self.next == self.first {
            return None; // Nothing sent yet.
        }
        // The packets still remembered.
        let first = self.first.max(self.next.saturating_sub(RECORDS as u64));
        let (mut received, mut lost) = (0usize, 0usize);
        let mut delays = Vec::with_capacity(reports.len());
        let mut bits = 0u64;
        let mut span: Option<(Instant, Instant)> = None;
        for &(seq, arrived) in reports {
            if seq < first || seq >= self.next {
                continue;
            }
            let record = self.sent[seq as usize % RECORDS];
            match arrived {
                None => lost += 1,
                Some(at) => {
                    received += 1;
                    bits += u64::from(record.size) * 8;
                    let arrival = at.saturating_duration_since(self.time_zero).as_secs_f64();
                    let sent = record.at_us as f64 / 1e6;
                    delays.push(arrival - sent);
                    span = Some(match span {
                        None => (at, at),
                        Some((a, b)) => (a.min(at), b.max(at)),
                    });
                }
            }
        }
        if received + lost == 0 {
            return None;
        }
        // The lowest delay over the last two windows is the path without a queue.
        if now.saturating_duration_since(self.base.2) >= BASE_WINDOW {
            self.base = (f64::MAX, self.base.0, now);
        }
        for &d in &delays {
            self.base.0 = self.base.0.min(d);
        }
        let base = self.base.0.min(self.base.1);
        let queueing = if delays.is_empty() {
            0.0
        } else {
            delays.iter().map(|d| d - base).sum::<f64>() / delays.len() as f64
        };
        let queueing = Duration::from_secs_f64(queueing.max(0.0));
        if let Some((a, b)) = span {
            let secs = b.saturating_duration_since(a).as_secs_f64().max(0.05);
            let rate = bits as f64 / secs;
            self.acked_bps = if self.acked_bps == 0.0 {
                rate
            } else {
                0.8 * self.acked_bps + 0.2 * rate
            };
        }
        let loss = lost as f64 / (received + lost) as f64;
        let dt = self
            .last_update
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
            .min(Duration::from_secs(1));
        self.last_update = Some(now);
        let held = self.hold_until.is_some_and(|t| now < t);
        let mut estimate = self.estimate as f64;
        if loss > LOSS_CUT {
            if !held {
                estimate *= 1.0 - 0.5 * loss;
                self.hold_until = Some(now + HOLD);
            }
        } else if queueing > OVERUSE {
            if self.acked_bps > 0.0 {
                estimate = estimate.min(0.85 * self.acked_bps);
            }
            self.hold_until = Some(now + HOLD);
        } else if !held && loss < LOSS_GROW && queueing < UNDERUSE {
            let ceiling = (self.wanted as f64 * HEADROOM).max(self.start as f64);
            if estimate < ceiling {
                estimate = (estimate * (1.0 + GROWTH * dt.as_secs_f64())).min(ceiling);
            }
        }
        self.estimate = (estimate as u64).clamp(MIN_BPS, MAX_BPS);
        Some(Report {
            received,
            lost,
            queueing,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A path of `capacity` bits per second with a queue in front (drops past `queue_limit`),
    /// `base` one-way delay, packets of 1,000 bytes sent as fast as the estimate allows, and
    /// feedback every 100 ms: the estimate after `seconds`.
    fn run(est: &mut Estimator, capacity: f64, wanted: u64, seconds: u64, t0: Instant) -> Vec<u64> {
        let base = Duration::from_millis(20);
        let queue_limit = Duration::from_millis(300);
        let mut queue_free = t0;
        let mut estimates = Vec::new();
        let mut reports = Vec::new();
        let mut now = t0;
        let end = t0 + Duration::from_secs(seconds);
        let mut next_feedback = t0 + Duration::from_millis(100);
        let mut sent_bits = 0.0;
        let mut since = t0;
        while now < end {
            est.want(wanted);
            // Send at the estimate, capped at what is wanted.
            let rate = (est.estimate().min(wanted)) as f64;
            let elapsed = now.duration_since(since).as_secs_f64();
            if sent_bits < rate * elapsed {
                let seq = est.next;
                est.on_send(1000, now);
                sent_bits += 8000.0;
                let service = Duration::from_secs_f64(8000.0 / capacity);
                let start = queue_free.max(now);
                if start.duration_since(now) > queue_limit {
                    reports.push((seq, None));
                } else {
                    queue_free = start + service;
                    reports.push((seq, Some(queue_free + base)));
                }
            }
            if now >= next_feedback {
                est.on_reports(&reports, now);
                reports.clear();
                next_feedback = now + Duration::from_millis(100);
                estimates.push(est.estimate());
            }
            now += Duration::from_micros(500);
            if elapsed > 1.0 {
                since = now;
                sent_bits = 0.0;
            }
        }
        estimates
    }

    #[test]
    fn on_a_clear_path_it_grows_to_what_is_wanted_and_stops_there() {
        let t0 = Instant::now();
        let mut est = Estimator::new(1_500_000, 1, t0);
        let estimates = run(&mut est, 50e6, 8_000_000, 8, t0);
        let last = *estimates.last().unwrap();
        assert!(last >= 8_000_000, "{estimates:?}");
        assert!(last <= 8_800_000, "{estimates:?}");
        // Within five seconds of the start.
        assert!(estimates[50] >= 8_000_000, "{estimates:?}");
    }

    #[test]
    fn a_narrow_path_holds_it_near_its_capacity() {
        let t0 = Instant::now();
        let mut est = Estimator::new(1_500_000, 1, t0);
        let estimates = run(&mut est, 3e6, 10_000_000, 20, t0);
        let tail = &estimates[estimates.len() - 50..];
        let mean = tail.iter().sum::<u64>() as f64 / tail.len() as f64;
        assert!((1.5e6..=3.6e6).contains(&mean), "{mean} from {estimates:?}");
    }

    #[test]
    fn heavy_loss_cuts_it_and_unknown_sequence_numbers_are_passed_over() {
        let t0 = Instant::now();
        let mut est = Estimator::new(4_000_000, 100, t0);
        let mut reports = Vec::new();
        for n in 0..20 {
            let seq = est.next;
            est.on_send(1000, t0);
            let arrived = (n % 2 == 0).then_some(t0 + Duration::from_millis(10));
            reports.push((seq, arrived));
        }
        let report = est
            .on_reports(&reports, t0 + Duration::from_millis(50))
            .unwrap();
        assert_eq!((report.received, report.lost), (10, 10));
        assert!(est.estimate() <= 3_000_000);
        let before = est.estimate();
        let unknown = [(5, Some(t0)), (99, None), (100_000, None)];
        assert!(est.on_reports(&unknown, t0).is_none());
        assert_eq!(est.estimate(), before);
    }

    #[test]
    fn the_peers_own_estimate_caps_it() {
        let t0 = Instant::now();
        let mut est = Estimator::new(4_000_000, 1, t0);
        est.remb(700_000);
        assert_eq!(est.estimate(), 700_000);
    }
}
