//! A simulated link between two str0m sessions, with no socket: what each sends crosses in
//! turns (optionally lost, or swapped pairwise), and time jumps to the next timer when nothing
//! is in flight, except where OpenSSL's own clock must really pass.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::net::{Protocol, Receive};
use str0m::{Event, Input, Output, Rtc};

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// One datagram on the link.
pub struct Datagram {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub contents: Vec<u8>,
}

/// What is in flight between the two sessions, and how the link treats it.
pub struct Wire {
    in_flight: VecDeque<Datagram>,
    /// Swap each pair of datagrams before delivering them.
    pub reorder: bool,
    /// Let real time pass while waiting for a timer, instead of jumping to it: OpenSSL keeps
    /// its own clock for DTLS retransmissions, so a lost flight of ours is sent again only
    /// when that much real time has passed.
    pub real_time: bool,
}

impl Wire {
    pub fn new(reorder: bool, real_time: bool) -> Wire {
        Wire {
            in_flight: VecDeque::new(),
            reorder,
            real_time,
        }
    }

    /// One turn between two sessions, each at its address: what each says goes to
    /// `on_event` (with 0 for the first, 1 for the second), what each sends crosses unless
    /// `lose` takes it. When nothing is in flight, `now` moves to the next timer (at most to
    /// `until`; not at all once there).
    ///
    /// A session is drained after every datagram handed to it: str0m takes one input at a
    /// time (its "single-mutation invariant"; in RTP mode a packet not polled for before the
    /// next input is lost).
    pub fn turn(
        &mut self,
        now: &mut Instant,
        until: Instant,
        mut ends: [(&mut Rtc, SocketAddr); 2],
        mut on_event: impl FnMut(usize, &mut Rtc, Event),
        mut lose: impl FnMut(&Datagram) -> bool,
    ) {
        let mut out = Vec::new();
        let mut next = until;
        for (side, (rtc, from)) in ends.iter_mut().enumerate() {
            next = next.min(say(side, rtc, *from, &mut out, &mut on_event));
        }
        self.send(out, &mut lose);
        if self.in_flight.is_empty() {
            if *now >= until {
                return;
            }
            // Nothing to deliver: time moves to the next timer.
            let next = next.max(*now + Duration::from_millis(1));
            *now = if self.real_time {
                let wait = next.saturating_duration_since(Instant::now());
                std::thread::sleep(wait.min(Duration::from_millis(50)));
                Instant::now()
            } else {
                next
            };
            for (rtc, _) in ends.iter_mut() {
                rtc.handle_input(Input::Timeout(*now)).unwrap();
            }
            return;
        }
        let mut out = Vec::new();
        while let Some(d) = self.in_flight.pop_front() {
            let Some(side) = ends.iter().position(|(_, at)| *at == d.to) else {
                continue;
            };
            let (rtc, from) = &mut ends[side];
            deliver(rtc, *now, &d);
            say(side, rtc, *from, &mut out, &mut on_event);
        }
        self.send(out, &mut lose);
    }

    /// Datagrams onto the link (those `lose` leaves), the last two swapped if it reorders.
    fn send(&mut self, out: Vec<Datagram>, lose: &mut impl FnMut(&Datagram) -> bool) {
        if out.is_empty() {
            return;
        }
        self.in_flight.extend(out.into_iter().filter(|d| !lose(d)));
        if self.reorder && self.in_flight.len() >= 2 {
            let last = self.in_flight.len() - 1;
            self.in_flight.swap(last - 1, last);
        }
    }
}

/// Everything `rtc` (end `side`) has to say up to its next timer: its datagrams (from `from`)
/// into `out`, its events to `on_event` as they come. Returns when that timer is.
fn say(
    side: usize,
    rtc: &mut Rtc,
    from: SocketAddr,
    out: &mut Vec<Datagram>,
    on_event: &mut impl FnMut(usize, &mut Rtc, Event),
) -> Instant {
    loop {
        match rtc.poll_output().expect("the session works") {
            Output::Timeout(t) => return t,
            Output::Transmit(t) => out.push(Datagram {
                from,
                to: t.destination,
                contents: t.contents.into(),
            }),
            Output::Event(e) => on_event(side, rtc, e),
        }
    }
}

/// Hands `d` to `rtc` at `now`, if it is for this session.
pub fn deliver(rtc: &mut Rtc, now: Instant, d: &Datagram) {
    let input = Input::Receive(
        now,
        Receive {
            proto: Protocol::Udp,
            source: d.from,
            destination: d.to,
            contents: d.contents.as_slice().try_into().unwrap(),
        },
    );
    if rtc.accepts(&input) {
        rtc.handle_input(input).unwrap();
    }
}
