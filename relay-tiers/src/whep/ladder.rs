//! Which rendition of its stream a WebRTC viewer gets, by what its path carries: its bandwidth
//! estimate ([`rtc::twcc`], from its transport-cc feedback, capped by its REMB) moves it down
//! the ladder as soon as it no longer covers the rendition, and up once it has covered the
//! next one up for a while. Moves happen at the next keyframe of the rendition moved to, on the
//! same RTP stream (no renegotiation).
//!
//! The estimate grows toward the rendition above while the path shows no harm, so a move up
//! is a probe: where the path does not carry it, loss or a queue shows within a report or
//! two, and the viewer goes back down. Each probe that fails that way doubles the wait before
//! the next one (up to [`LONGEST_HOLD`]), so a viewer on a link that never carries more is
//! not made to freeze again and again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pipelines::stream::Stream;

/// A rendition no longer covered: the estimate is below this share of what it takes.
const DOWN_BELOW: f64 = 0.9;
/// The rendition moved down to takes at most this share of the estimate.
const DOWN_TO: f64 = 0.85;
/// A move up needs the estimate this far above what the rendition above takes...
const UP_ABOVE: f64 = 1.15;
/// ... for this long.
const UP_AFTER: Duration = Duration::from_secs(2);
/// The estimate may grow to this share over what the rendition above takes (to prove
/// [`UP_ABOVE`]).
const PROBE: f64 = 1.25;
/// After a move down, no move up for this long at first...
const FIRST_HOLD: Duration = Duration::from_secs(4);
/// ... twice as long after each failed probe (a move down this soon after a move up), at most
/// this long.
const LONGEST_HOLD: Duration = Duration::from_secs(64);
const FAILED_PROBE_WITHIN: Duration = Duration::from_secs(10);

/// Which way a viewer moved, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Move {
    Down,
    Up,
}

/// One viewer's place on its stream's ladder.
pub(super) struct Ladder {
    /// The stream's renditions, the best first.
    rungs: Vec<Arc<Stream>>,
    /// Moved by its estimate; `false` for a viewer that asked for its rendition.
    pub(super) auto: bool,
    /// Since when the estimate has covered the rendition above.
    covered_since: Option<Instant>,
    hold_until: Option<Instant>,
    hold: Duration,
    last_up: Option<Instant>,
}

impl Ladder {
    /// `renditions`' bandwidths are what each takes on the path (audio included, as a
    /// playlist advertises them).
    pub(super) fn new(renditions: &[Arc<Stream>], auto: bool) -> Ladder {
        let mut rungs: Vec<Arc<Stream>> = renditions
            .iter()
            .filter(|r| r.info.bandwidth > 0)
            .cloned()
            .collect();
        rungs.sort_by(|a, b| b.info.bandwidth.cmp(&a.info.bandwidth));
        Ladder {
            auto: auto && rungs.len() > 1,
            rungs,
            covered_since: None,
            hold_until: None,
            hold: FIRST_HOLD,
            last_up: None,
        }
    }

    /// What rung `i` takes on the path.
    fn takes(&self, i: usize) -> f64 {
        self.rungs[i].info.bandwidth as f64
    }

    fn rung_of(&self, current: &Stream) -> Option<usize> {
        self.rungs.iter().position(|r| r.id == current.id)
    }

    /// What the estimate should grow toward while the viewer gets `current`: the rendition
    /// above, with room to prove it; or `current` itself.
    pub(super) fn wanted(&self, current: &Stream) -> u64 {
        match self.rung_of(current) {
            Some(i) if self.auto && i > 0 => (self.takes(i - 1) * PROBE) as u64,
            _ => current.info.bandwidth,
        }
    }

    /// Where a viewer getting `current` goes, now that its estimate is `estimate` bits per
    /// second: `None` to stay.
    pub(super) fn next(
        &mut self,
        current: &Stream,
        estimate: u64,
        now: Instant,
    ) -> Option<(Arc<Stream>, Move)> {
        if !self.auto {
            return None;
        }
        let i = self.rung_of(current)?;
        let estimate = estimate as f64;
        if estimate < self.takes(i) * DOWN_BELOW && i + 1 < self.rungs.len() {
            let to = (i + 1..self.rungs.len())
                .find(|&j| self.takes(j) <= estimate * DOWN_TO)
                .unwrap_or(self.rungs.len() - 1);
            let failed_probe = self
                .last_up
                .is_some_and(|up| now.saturating_duration_since(up) < FAILED_PROBE_WITHIN);
            self.hold = if failed_probe {
                (self.hold * 2).min(LONGEST_HOLD)
            } else {
                FIRST_HOLD
            };
            self.hold_until = Some(now + self.hold);
            self.covered_since = None;
            return Some((self.rungs[to].clone(), Move::Down));
        }
        if i == 0 || estimate < self.takes(i - 1) * UP_ABOVE {
            self.covered_since = None;
            return None;
        }
        let since = *self.covered_since.get_or_insert(now);
        let held = self.hold_until.is_some_and(|until| now < until);
        if held || now.saturating_duration_since(since) < UP_AFTER {
            return None;
        }
        self.covered_since = None;
        self.last_up = Some(now);
        Some((self.rungs[i - 1].clone(), Move::Up))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipelines::stream::StreamInfo;

    fn rung(name: &str, bps: u64) -> Arc<Stream> {
        Arc::new(Stream::new(
            StreamInfo {
                name: name.into(),
                width: 0,
                height: 0,
                bandwidth: bps,
            },
            None,
            None,
        ))
    }

    #[test]
    fn a_viewer_moves_down_at_once_and_up_once_its_path_has_carried_more_for_a_while() {
        let ladder = [
            rung("360p", 900_000),
            rung("720p", 2_500_000),
            rung("180p", 250_000),
        ];
        let (top, mid, low) = (&ladder[1], &ladder[0], &ladder[2]);
        let mut l = Ladder::new(&ladder, true);
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // Covered: stays. The estimate may grow past the top only to what it takes.
        assert!(l.next(top, 2_700_000, t0).is_none());
        assert_eq!(l.wanted(top), 2_500_000);
        // Not covered: down at once, to the best the estimate carries with room.
        let (to, way) = l.next(top, 1_100_000, t0).unwrap();
        assert_eq!((to.info.name.as_str(), way), ("360p", Move::Down));
        // On 360p the estimate grows toward 720p, with room to prove it...
        assert!(l.wanted(mid) > 2_500_000);
        // ... but covering it moves the viewer up only after the hold, and 2 s of it.
        assert!(l.next(mid, 1_500_000, t0 + s(1)).is_none());
        assert!(l.next(mid, 3_100_000, t0 + s(3)).is_none());
        assert!(l.next(mid, 3_100_000, t0 + s(4)).is_none());
        let (to, way) = l.next(mid, 3_100_000, t0 + s(5)).unwrap();
        assert_eq!((to.info.name.as_str(), way), ("720p", Move::Up));
        // The probe fails (down again soon): the next waits twice as long.
        let (to, _) = l.next(top, 300_000, t0 + s(7)).unwrap();
        assert_eq!(to.info.name, "180p", "300 kb/s carries only the lowest");
        for t in 7..15 {
            assert!(l.next(low, 5_000_000, t0 + s(t)).is_none(), "{t}");
        }
        let (to, _) = l.next(low, 5_000_000, t0 + s(16)).unwrap();
        assert_eq!(to.info.name, "360p");
        // The lowest rung is as low as it goes.
        let mut l = Ladder::new(&ladder, true);
        assert!(l.next(low, 10_000, t0).is_none());
    }

    #[test]
    fn a_viewer_that_chose_its_rendition_stays_on_it() {
        let ladder = [rung("720p", 2_500_000), rung("360p", 900_000)];
        let mut l = Ladder::new(&ladder, false);
        assert!(l.next(&ladder[0], 100_000, Instant::now()).is_none());
        assert_eq!(l.wanted(&ladder[0]), 2_500_000);
        // One rendition: nowhere to move.
        let mut l = Ladder::new(&ladder[..1], true);
        assert!(!l.auto);
        assert!(l.next(&ladder[0], 100_000, Instant::now()).is_none());
    }
}
