//! Retransmissions for one sent RTP stream, sans-IO: a history of the packets sent (references
//! to the payloads every receiver shares), the sequence numbers a NACK asks for (RFC 4585
//! generic NACK: a packet id and a bitmask of the 16 after it), and a budget so no receiver,
//! honest or not, can make us send more than a share of the stream's own rate again.
//!
//! A packet asked for twice within [`RESEND_GAP`] goes once: the second request crossed the
//! first retransmission on the way.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A packet is sent again at most once in this long.
pub const RESEND_GAP: Duration = Duration::from_millis(100);

/// One packet as it was sent.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Extended sequence number (rollover counter and sequence).
    pub seq: u64,
    pub payload: Arc<[u8]>,
    /// RTP timestamp.
    pub time: u32,
    pub marker: bool,
    resent: Option<Instant>,
}

/// The last packets of a stream, in sequence order.
#[derive(Debug)]
pub struct History {
    packets: VecDeque<Sent>,
    capacity: usize,
    budget: Budget,
}

/// The sequence numbers one NACK entry asks for: `pid`, then each bit of `blp`.
pub fn lost(pid: u16, blp: u16) -> impl Iterator<Item = u16> {
    std::iter::once(pid).chain(
        (0..16)
            .filter(move |b| blp & (1 << b) != 0)
            .map(move |b| pid.wrapping_add(b + 1)),
    )
}

impl History {
    /// Keeps `capacity` packets; retransmissions get `bytes_per_second` (a share of the
    /// stream's rate) with at most half a second's worth at once.
    pub fn new(capacity: usize, bytes_per_second: u64, now: Instant) -> History {
        History {
            packets: VecDeque::with_capacity(capacity),
            capacity: capacity.max(1),
            budget: Budget::new(bytes_per_second, now),
        }
    }

    /// Notes a packet just sent (sequence numbers follow each other).
    pub fn push(&mut self, seq: u64, payload: Arc<[u8]>, time: u32, marker: bool) {
        if self.packets.len() == self.capacity {
            self.packets.pop_front();
        }
        self.packets.push_back(Sent {
            seq,
            payload,
            time,
            marker,
            resent: None,
        });
    }

    pub fn len(&self) -> usize {
        self.packets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// Retransmissions get `bytes_per_second` from now on (what the path has room for
    /// changes with its estimate, and with the stream's rate).
    pub fn set_budget(&mut self, bytes_per_second: u64) {
        self.budget.per_second = bytes_per_second;
        self.budget.tokens = self.budget.tokens.min(bytes_per_second as f64 / 2.0);
    }

    /// Bytes the budget has refused so far.
    pub fn refused_bytes(&self) -> u64 {
        self.budget.refused
    }

    /// The packet whose 16-bit sequence number is `seq16`, to send again now: `None` when it
    /// has left the history, went again less than [`RESEND_GAP`] ago, or the budget is spent.
    pub fn resend(&mut self, seq16: u16, now: Instant) -> Option<&Sent> {
        let newest = self.packets.back()?.seq;
        // How far back from the newest, in the 16-bit space the receiver speaks.
        let back = (newest as u16).wrapping_sub(seq16) as usize;
        let index = self.packets.len().checked_sub(1 + back)?;
        let packet = &mut self.packets[index];
        if packet
            .resent
            .is_some_and(|t| now.duration_since(t) < RESEND_GAP)
        {
            return None;
        }
        if !self.budget.take(packet.payload.len() as u64, now) {
            return None;
        }
        packet.resent = Some(now);
        Some(packet)
    }
}

/// A token bucket of bytes, refilled as time passes.
#[derive(Debug)]
struct Budget {
    per_second: u64,
    tokens: f64,
    at: Instant,
    refused: u64,
}

impl Budget {
    fn new(per_second: u64, now: Instant) -> Budget {
        Budget {
            per_second,
            tokens: per_second as f64 / 2.0,
            at: now,
            refused: 0,
        }
    }

    fn take(&mut self, bytes: u64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = self.at.max(now);
        let burst = self.per_second as f64 / 2.0;
        self.tokens = (self.tokens + elapsed * self.per_second as f64).min(burst);
        if self.tokens < bytes as f64 {
            self.refused += bytes;
            return false;
        }
        self.tokens -= bytes as f64;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(now: Instant, per_second: u64) -> History {
        let mut h = History::new(320, per_second, now);
        for seq in 65_500u64..65_500 + 400 {
            h.push(seq, Arc::from(vec![0u8; 1000]), seq as u32, false);
        }
        h
    }

    #[test]
    fn a_nack_entry_names_its_packet_and_the_bits_after_it() {
        assert_eq!(lost(10, 0).collect::<Vec<_>>(), [10]);
        assert_eq!(lost(10, 0b101).collect::<Vec<_>>(), [10, 11, 13]);
        assert_eq!(lost(65_535, 1).collect::<Vec<_>>(), [65_535, 0]);
        assert_eq!(lost(0, 0xffff).count(), 17);
    }

    #[test]
    fn packets_are_found_across_the_16_bit_rollover_and_only_while_kept() {
        let now = Instant::now();
        let mut h = history(now, 1_000_000);
        // The newest is 65_899 (16-bit 363); the oldest kept 65_580 (16-bit 44).
        assert_eq!(h.resend(363, now).map(|p| p.seq), Some(65_899));
        assert_eq!(h.resend(44, now).map(|p| p.seq), Some(65_580));
        assert_eq!(h.resend(64, now).map(|p| p.seq), Some(65_600));
        assert!(h.resend(43, now).is_none(), "left the history");
        assert!(
            h.resend(65_535, now).is_none(),
            "before the rollover: left too"
        );
        assert!(h.resend(364, now).is_none(), "not sent yet");
    }

    #[test]
    fn a_packet_asked_for_twice_at_once_goes_once() {
        let now = Instant::now();
        let mut h = history(now, 1_000_000);
        assert!(h.resend(300, now).is_some());
        assert!(h.resend(300, now + Duration::from_millis(20)).is_none());
        assert!(h.resend(300, now + RESEND_GAP).is_some());
    }

    #[test]
    fn a_flood_of_nacks_costs_at_most_the_budget() {
        let now = Instant::now();
        // 100 kB/s for retransmissions: 50 kB at once, then 100 kB each second.
        let mut h = history(now, 100_000);
        let mut sent = 0u64;
        for ms in 0..2_000u64 {
            let t = now + Duration::from_millis(ms);
            for seq16 in 44..=363u16 {
                if let Some(p) = h.resend(seq16, t) {
                    sent += p.payload.len() as u64;
                }
            }
        }
        // Over 2 s: the first half second's worth plus 2 s of refill, at most.
        assert!(sent <= 50_000 + 200_000, "{sent}");
        assert!(sent >= 200_000, "the budget is used, not starved: {sent}");
        assert!(h.refused_bytes() > 0);
    }
}
