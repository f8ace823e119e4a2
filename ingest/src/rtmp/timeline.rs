//! RTMP timestamps are 32-bit milliseconds that wrap, start wherever the publisher likes and
//! sometimes jump. [`Timeline`] maps them onto a session clock that starts at zero, follows
//! the publisher's pace, survives wrap-around and turns absurd jumps into a small step.

use std::time::Duration;

/// A forward jump larger than this is a discontinuity, not elapsed time.
pub const MAX_FORWARD_JUMP_MS: i64 = 10_000;
/// Audio and video interleave with some skew; a backward step larger than this is a reset.
pub const MAX_BACKWARD_STEP_MS: i64 = 5_000;

#[derive(Debug, Default, Clone)]
pub struct Timeline {
    last_in: Option<u32>,
    last_out: i64,
    /// Discontinuities smoothed over, for logs and metrics.
    pub jumps: u64,
}

impl Timeline {
    /// Maps an RTMP timestamp to the session clock (milliseconds from the first message).
    pub fn map(&mut self, ts: u32) -> i64 {
        let out = match self.last_in {
            None => 0,
            Some(prev) => {
                let delta = i64::from(ts.wrapping_sub(prev) as i32);
                if (-MAX_BACKWARD_STEP_MS..=MAX_FORWARD_JUMP_MS).contains(&delta) {
                    self.last_out + delta
                } else {
                    self.jumps += 1;
                    self.last_out
                }
            }
        };
        self.last_in = Some(ts);
        self.last_out = out;
        out
    }
}

/// A millisecond count as a non-negative duration.
pub fn ms(v: i64) -> Duration {
    Duration::from_millis(v.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps() {
        let cases: &[(&str, &[u32], &[i64])] = &[
            ("starts at zero", &[5000, 5033, 5066], &[0, 33, 66]),
            ("wraps", &[u32::MAX - 10, 5, 40], &[0, 16, 51]),
            ("interleave skew", &[100, 90, 133, 110], &[0, -10, 33, 10]),
            (
                "absurd jump forward",
                &[0, 33, 2_000_000_000, 2_000_000_033],
                &[0, 33, 33, 66],
            ),
            (
                "absurd jump back",
                &[1_000_000, 1_000_033, 5, 38],
                &[0, 33, 33, 66],
            ),
        ];
        for (name, input, want) in cases {
            let mut t = Timeline::default();
            let got: Vec<i64> = input.iter().map(|&ts| t.map(ts)).collect();
            assert_eq!(&got[..], *want, "{name}");
        }
    }
}
