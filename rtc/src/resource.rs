//! Who may act on which WebRTC session (WHIP, WHEP), and how much one address may ask for.
//!
//! - A session is named in its `Location` URL by an unguessable id: 128 random bits (OpenSSL's
//!   generator), 32 hex digits. [`Resources::find`] answers only for that id under the stream
//!   it was made for, so a guessed id, or another stream's, names nothing.
//! - One address holds at most `per_address` sessions at once, and makes offers at no more than
//!   `offers_per_second` (a token bucket with as much burst): past either, the caller answers
//!   `429` with the [`Refused::retry_after`] it is given.
//! - Every map is bounded: sessions by `max_sessions`, the per-address buckets by
//!   [`MAX_ADDRESSES`] (idle ones are forgotten first).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Addresses whose offer rate is remembered at most.
pub const MAX_ADDRESSES: usize = 65_536;

/// How many sessions, and how fast, one address may open.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Sessions at once, all streams.
    pub max_sessions: usize,
    /// Sessions one address holds at once.
    pub per_address: usize,
    /// Offers one address may make per second (and in a burst).
    pub offers_per_second: u32,
}

/// Why a session was not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// This address made too many offers lately.
    OfferRate,
    /// This address holds as many sessions as it may.
    AddressFull,
    /// The node holds as many sessions as it may.
    NodeFull,
}

impl Refused {
    /// When to ask again (`Retry-After`, in seconds).
    pub fn retry_after(self) -> u64 {
        match self {
            Refused::OfferRate => 1,
            // Unconnected sessions are let go within the driver's connect deadline.
            Refused::AddressFull | Refused::NodeFull => 15,
        }
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refused::OfferRate => "too many offers from this address; slow down",
            Refused::AddressFull => "this address has as many sessions as it may",
            Refused::NodeFull => "this node has as many sessions as it takes",
        })
    }
}

struct Session {
    stream: String,
    peer: u64,
    address: IpAddr,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Default)]
struct State {
    /// By resource id.
    sessions: HashMap<String, Session>,
    /// Resource id by peer.
    by_peer: HashMap<u64, String>,
    per_address: HashMap<IpAddr, usize>,
    buckets: HashMap<IpAddr, Bucket>,
    next_peer: u64,
}

/// The sessions of one door (WHIP or WHEP) on this node.
pub struct Resources {
    limits: Limits,
    state: Mutex<State>,
}

/// A fresh resource id: 128 random bits as 32 hex digits.
pub fn resource_id() -> String {
    let mut bytes = [0u8; 16];
    // OpenSSL's generator is seeded from the system's; it fails only when the system's does.
    openssl::rand::rand_bytes(&mut bytes).expect("the system's random generator works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Resources {
    pub fn new(limits: Limits) -> Resources {
        Resources {
            limits,
            state: Mutex::new(State {
                next_peer: 1,
                ..State::default()
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts an offer from `address` against its rate; call before the offer's work is done.
    pub fn offer(&self, address: IpAddr, now: Instant) -> Result<(), Refused> {
        let rate = f64::from(self.limits.offers_per_second.max(1));
        let mut state = self.state();
        if state.buckets.len() >= MAX_ADDRESSES && !state.buckets.contains_key(&address) {
            // Forget the addresses that have been quiet longest (a full bucket is one that
            // could make a burst anyway).
            state
                .buckets
                .retain(|_, b| now.duration_since(b.at).as_secs_f64() * rate < rate);
            if state.buckets.len() >= MAX_ADDRESSES {
                return Err(Refused::OfferRate);
            }
        }
        let bucket = state.buckets.entry(address).or_insert(Bucket {
            tokens: rate,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * rate;
        bucket.tokens = (bucket.tokens + refill).min(rate);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            return Err(Refused::OfferRate);
        }
        bucket.tokens -= 1.0;
        Ok(())
    }

    /// Opens a session of `stream` for `address`: its resource id and peer id.
    pub fn open(&self, stream: &str, address: IpAddr) -> Result<(String, u64), Refused> {
        let mut state = self.state();
        if state.sessions.len() >= self.limits.max_sessions {
            return Err(Refused::NodeFull);
        }
        let held = state.per_address.get(&address).copied().unwrap_or(0);
        if held >= self.limits.per_address {
            return Err(Refused::AddressFull);
        }
        let id = resource_id();
        let peer = state.next_peer;
        state.next_peer += 1;
        state.per_address.insert(address, held + 1);
        state.by_peer.insert(peer, id.clone());
        let session = Session {
            stream: stream.to_owned(),
            peer,
            address,
        };
        state.sessions.insert(id.clone(), session);
        Ok((id, peer))
    }

    /// The peer of resource `id`, only when it is a session of `stream`.
    pub fn find(&self, stream: &str, id: &str) -> Option<u64> {
        let state = self.state();
        let session = state.sessions.get(id)?;
        (session.stream == stream).then_some(session.peer)
    }

    /// The session of `peer` is over: its id names nothing from now on.
    pub fn close(&self, peer: u64) {
        let mut state = self.state();
        let Some(id) = state.by_peer.remove(&peer) else {
            return;
        };
        let Some(session) = state.sessions.remove(&id) else {
            return;
        };
        if let Some(held) = state.per_address.get_mut(&session.address) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                state.per_address.remove(&session.address);
            }
        }
    }

    /// Sessions open now.
    pub fn len(&self) -> usize {
        self.state().sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits() -> Limits {
        Limits {
            max_sessions: 5,
            per_address: 2,
            offers_per_second: 3,
        }
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn ids_are_unguessable_and_name_a_session_only_under_its_stream() {
        let r = Resources::new(limits());
        let (id, peer) = r.open("main", A).unwrap();
        assert_eq!(id.len(), 32);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(resource_id(), resource_id());
        assert_eq!(r.find("main", &id), Some(peer));
        assert_eq!(r.find("other", &id), None);
        assert_eq!(r.find("main", "1"), None);
        assert_eq!(r.find("main", &peer.to_string()), None);
        r.close(peer);
        assert_eq!(r.find("main", &id), None);
        assert!(r.is_empty());
    }

    #[test]
    fn one_address_holds_only_its_share_and_the_node_its_total() {
        let r = Resources::new(limits());
        let (_, a1) = r.open("s", A).unwrap();
        r.open("s", A).unwrap();
        assert_eq!(r.open("s", A), Err(Refused::AddressFull));
        // Another address is not held back by the first.
        r.open("s", B).unwrap();
        r.close(a1);
        r.open("s", A).unwrap();
        r.open("s", B).unwrap();
        assert_eq!(r.len(), 4);
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        r.open("s", c).unwrap();
        assert_eq!(r.open("s", c), Err(Refused::NodeFull));
        assert_eq!(Refused::NodeFull.retry_after(), 15);
    }

    #[test]
    fn offers_are_rate_limited_per_address_and_refill_with_time() {
        let r = Resources::new(limits());
        let t = Instant::now();
        for _ in 0..3 {
            r.offer(A, t).unwrap();
        }
        assert_eq!(r.offer(A, t), Err(Refused::OfferRate));
        r.offer(B, t).unwrap();
        // A third of a second later, one more.
        let later = t + Duration::from_millis(340);
        r.offer(A, later).unwrap();
        assert_eq!(r.offer(A, later), Err(Refused::OfferRate));
        assert_eq!(Refused::OfferRate.retry_after(), 1);
    }
}
