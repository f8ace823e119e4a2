//! Secrets (stream keys, tokens) compared in constant time: how long a comparison takes says
//! nothing of how much of a guess was right; and an address that keeps guessing wrong is made
//! to wait ([`Guesses`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Wrong keys an address may send within [`GUESS_WINDOW`] before it has to wait.
pub const FREE_GUESSES: u32 = 5;
/// How long wrong keys are remembered.
pub const GUESS_WINDOW: Duration = Duration::from_secs(60);
/// The longest an address waits after a wrong key.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// Addresses remembered at most; past it the stalest are forgotten.
const MAX_ADDRESSES: usize = 4096;

/// Wrong stream keys per client address (RTMP and WHIP alike; IPv6 by its /64): past
/// [`FREE_GUESSES`] in a minute, each further wrong key makes the address wait twice as long as
/// the last (1 s, 2 s, 4 s, ... at most a minute) before any key from it is looked at again. A
/// right key does not clear it: a publisher with a key of its own could otherwise guess others'
/// without end.
#[derive(Debug, Default)]
pub struct Guesses {
    by_address: Mutex<HashMap<IpAddr, Guessing>>,
}

#[derive(Debug, Clone, Copy)]
struct Guessing {
    wrong: u32,
    first: Instant,
    until: Option<Instant>,
}

impl Guesses {
    /// `Err(wait)`: the address must wait this long before its next key is looked at.
    pub fn allowed(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let ip = by_prefix(ip);
        let map = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&ip).and_then(|g| g.until) {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    /// Judges a key from `ip` in one step (so parallel attempts cannot all pass the check
    /// before the first is counted): `Err(wait)` if the address must wait, else whether
    /// `right` says the key is right, a wrong one counted.
    pub fn judge(
        &self,
        ip: IpAddr,
        now: Instant,
        right: impl FnOnce() -> bool,
    ) -> Result<bool, Duration> {
        let prefix = by_prefix(ip);
        let mut map = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(until) = map.get(&prefix).and_then(|g| g.until)
            && until > now
        {
            return Err(until - now);
        }
        let right = right();
        if !right {
            Self::count_wrong(&mut map, prefix, now);
        }
        Ok(right)
    }

    /// A wrong key from `ip`.
    pub fn wrong(&self, ip: IpAddr, now: Instant) {
        let ip = by_prefix(ip);
        let mut map = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        Self::count_wrong(&mut map, ip, now);
    }

    fn count_wrong(map: &mut HashMap<IpAddr, Guessing>, ip: IpAddr, now: Instant) {
        if map.len() >= MAX_ADDRESSES && !map.contains_key(&ip) {
            map.retain(|_, g| {
                now.duration_since(g.first) < GUESS_WINDOW || g.until.is_some_and(|u| u > now)
            });
            if map.len() >= MAX_ADDRESSES {
                let stalest = map.iter().min_by_key(|(_, g)| g.first).map(|(a, _)| *a);
                map.remove(&stalest.expect("a full map has entries"));
            }
        }
        let g = map.entry(ip).or_insert(Guessing {
            wrong: 0,
            first: now,
            until: None,
        });
        if now.duration_since(g.first) >= GUESS_WINDOW && g.until.is_none_or(|u| u <= now) {
            *g = Guessing {
                wrong: 0,
                first: now,
                until: None,
            };
        }
        g.wrong += 1;
        if g.wrong > FREE_GUESSES {
            let wait = Duration::from_secs(1 << (g.wrong - FREE_GUESSES - 1).min(6)).min(MAX_WAIT);
            g.until = Some(now + wait);
        }
    }
}

/// The address a client is counted under: IPv4 as it is, IPv6 by its /64 (one host has a
/// whole /64 to pick addresses from).
pub fn by_prefix(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let mut s = v6.segments();
            s[4..].fill(0);
            IpAddr::from(s)
        }
        v4 => v4,
    }
}

/// Whether `given` is `expected`, in time that depends only on their lengths.
pub fn same(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    let mut differ = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        differ |= x ^ y;
    }
    std::hint::black_box(differ) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_that_keeps_guessing_waits_longer_each_time() {
        let guesses = Guesses::default();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t = Instant::now();
        for _ in 0..FREE_GUESSES {
            assert_eq!(guesses.allowed(a, t), Ok(()));
            guesses.wrong(a, t);
        }
        assert_eq!(guesses.allowed(a, t), Ok(()), "five are free");
        guesses.wrong(a, t);
        assert_eq!(guesses.allowed(a, t), Err(Duration::from_secs(1)));
        let later = t + Duration::from_secs(1);
        assert_eq!(guesses.allowed(a, later), Ok(()));
        guesses.wrong(a, later);
        assert_eq!(guesses.allowed(a, later), Err(Duration::from_secs(2)));
        // Another address is not held up; another host of the same IPv6 /64 is.
        assert_eq!(guesses.allowed(b, later), Ok(()));
        let (v6, v6_next): (IpAddr, IpAddr) = (
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
        );
        for _ in 0..=FREE_GUESSES {
            guesses.wrong(v6, later);
        }
        assert!(guesses.allowed(v6_next, later).is_err());
        // However many guesses, the wait stays within a minute.
        for _ in 0..100 {
            guesses.wrong(b, later);
        }
        assert!(guesses.allowed(b, later).unwrap_err() <= MAX_WAIT);
        // In one step: a waiting address's key is not even looked at.
        let c: IpAddr = "192.0.2.3".parse().unwrap();
        for _ in 0..FREE_GUESSES {
            assert_eq!(guesses.judge(c, later, || false), Ok(false));
        }
        assert_eq!(guesses.judge(c, later, || true), Ok(true));
        assert_eq!(guesses.judge(c, later, || false), Ok(false));
        assert!(guesses.judge(c, later, || panic!("looked at")).is_err());
    }

    #[test]
    fn only_the_same_secret_is_the_same() {
        assert!(same("0123456789abcdef", "0123456789abcdef"));
        assert!(!same("0123456789abcdeX", "0123456789abcdef"));
        assert!(!same("0123456789abcde", "0123456789abcdef"));
        assert!(!same("0123456789abcdef0", "0123456789abcdef"));
        assert!(!same("", "k"));
        assert!(same("", ""));
    }
}
