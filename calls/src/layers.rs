//! The call server's choices for one subscriber of one published video track, without IO or
//! clocks of its own (time comes in), so they are tested with simulated time:
//!
//! - which simulcast layer it gets ([`choose`]): the smallest that covers the tile it renders,
//!   stepped down while the layer's rate does not fit its share of the bandwidth estimate;
//!   never more than is published. A publisher without simulcast has [`downscales`] of its
//!   one layer to choose from besides it, which the call server makes when chosen;
//! - when it moves ([`Forwarder`]): only at a keyframe of the layer it moves to;
//! - its RTP timestamps ([`Forwarder::forward`]): one continuous timeline whatever layer the
//!   frames come from (each layer has a clock of its own), so a switch is seamless. Sequence
//!   numbers and the SSRC are the subscriber's own stream's: the call server packetizes each
//!   frame for each subscriber.

use std::time::{Duration, Instant};

/// One published layer (a simulcast RID, or the one stream of a publisher without simulcast),
/// as the call server has measured it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Layer {
    /// The RID (`q`, `h`, `f`, ...), or `None` without simulcast.
    pub rid: Option<String>,
    /// From its last keyframe; 0 until one came.
    pub width: u32,
    pub height: u32,
    /// Its rate over the last seconds.
    pub bps: u64,
}

/// The layer (index into `layers`) for a tile of `tile` (width, height; `(0, 0)`: not said)
/// and a budget of `budget_bps` for this track (`None`: no estimate yet).
///
/// By size: the smallest layer that covers the tile, else the largest. By rate: down from
/// there while the layer's rate exceeds the budget and a smaller one exists. Layers not seen
/// with a size yet are chosen only when no layer has one.
pub fn choose(layers: &[Layer], tile: (u32, u32), budget_bps: Option<u64>) -> Option<usize> {
    let mut sized: Vec<usize> = (0..layers.len())
        .filter(|&i| layers[i].height > 0)
        .collect();
    if sized.is_empty() {
        return (!layers.is_empty()).then_some(0);
    }
    sized.sort_by_key(|&i| (layers[i].height, layers[i].width));
    let covers = |i: usize| layers[i].width >= tile.0 && layers[i].height >= tile.1;
    let mut at = match tile {
        (0, 0) => sized.len() - 1,
        _ => sized
            .iter()
            .position(|&i| covers(i))
            .unwrap_or(sized.len() - 1),
    };
    if let Some(budget) = budget_bps {
        while at > 0 && layers[sized[at]].bps > budget {
            at -= 1;
        }
    }
    Some(sized[at])
}

/// The prefix of a downscale's layer name (`~320x180`); simulcast RIDs are the publisher's,
/// and a track that has them is never downscaled.
pub const DOWNSCALED: char = '~';
/// Nothing is downscaled to less than this wide.
pub const MIN_DOWNSCALE_WIDTH: u32 = 160;
/// The least rate a downscale is encoded at.
const MIN_DOWNSCALE_BPS: u64 = 100_000;

/// The layers a publisher's one `layer` (no simulcast) can be downscaled to: halved, and
/// halved again, while at least [`MIN_DOWNSCALE_WIDTH`] wide; each with the rate it is to be
/// encoded at (the published rate in proportion to the area). Never larger than published;
/// none before the published size is known.
pub fn downscales(layer: &Layer) -> Vec<Layer> {
    let mut out = Vec::new();
    if layer.rid.is_some() || layer.width == 0 || layer.height == 0 {
        return out;
    }
    let (mut width, mut height) = (layer.width, layer.height);
    while width / 2 >= MIN_DOWNSCALE_WIDTH {
        // Even sizes: what 4:2:0 encoders take.
        (width, height) = ((width / 2) & !1, ((height / 2) & !1).max(2));
        let area = f64::from(width * height) / f64::from(layer.width * layer.height);
        out.push(Layer {
            rid: Some(format!("{DOWNSCALED}{width}x{height}")),
            width,
            height,
            bps: ((layer.bps as f64 * area) as u64).max(MIN_DOWNSCALE_BPS),
        });
    }
    out
}

/// The size a downscale's layer name says (`~320x180`), or `None` for a publisher's own layer.
pub fn downscaled_size(rid: &str) -> Option<(u32, u32)> {
    let (w, h) = rid.strip_prefix(DOWNSCALED)?.split_once('x')?;
    Some((w.parse().ok()?, h.parse().ok()?))
}

/// One subscriber's layers for all the video it gets: what each tile wants by size
/// ([`choose`] without an estimate), then, while the total rate exceeds `estimate_bps`, the
/// track taking the most steps down a layer (so a small tile's cheap layer is not starved to
/// pay for a large one, as an even split would). `None` for a track with nothing to choose.
pub fn allocate(
    tracks: &[(&[Layer], (u32, u32))],
    estimate_bps: Option<u64>,
) -> Vec<Option<usize>> {
    let mut chosen: Vec<Option<usize>> = tracks
        .iter()
        .map(|(layers, tile)| choose(layers, *tile, None))
        .collect();
    let Some(estimate) = estimate_bps else {
        return chosen;
    };
    let rate = |t: usize, i: Option<usize>| i.map_or(0, |i| tracks[t].0[i].bps);
    loop {
        let total: u64 = (0..tracks.len()).map(|t| rate(t, chosen[t])).sum();
        if total <= estimate {
            return chosen;
        }
        let step = (0..tracks.len())
            .filter_map(|t| Some((t, smaller(tracks[t].0, chosen[t]?)?)))
            .max_by_key(|&(t, _)| rate(t, chosen[t]));
        match step {
            Some((t, i)) => chosen[t] = Some(i),
            None => return chosen,
        }
    }
}

/// The next layer below `i` by size, if there is one with a size.
fn smaller(layers: &[Layer], i: usize) -> Option<usize> {
    let key = |l: &Layer| (l.height, l.width);
    (0..layers.len())
        .filter(|&j| layers[j].height > 0 && key(&layers[j]) < key(&layers[i]))
        .max_by_key(|&j| key(&layers[j]))
}

/// Why a subscriber moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The tile it renders at changed.
    Size,
    /// Its bandwidth estimate changed.
    Bandwidth,
    /// The layer it had stopped coming.
    Gone,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Size => "size",
            Reason::Bandwidth => "bandwidth",
            Reason::Gone => "layer_gone",
        }
    }
}

/// A frame to send on: its timestamp on the subscriber's timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub rtp_time: u64,
    /// The first frame of a layer this subscriber moved to.
    pub switched: bool,
}

/// One subscriber's view of one published track: the layer it gets, the one it moves to,
/// and its timeline.
#[derive(Debug)]
pub struct Forwarder {
    /// The layer being sent (its RID), once one is.
    current: Option<Option<String>>,
    /// The layer to move to at its next keyframe, and why.
    target: Option<(Option<String>, Reason)>,
    /// What `rtp_time` the subscriber's stream is at minus the layer's own.
    offset: i64,
    /// The last timestamp sent, and when its frame arrived.
    last: Option<(u64, Instant)>,
    clock_rate: u32,
    /// When a keyframe of the target was last asked for.
    asked: Option<Instant>,
}

/// A keyframe of a layer being moved to is asked for at most this often.
pub const ASK_EVERY: Duration = Duration::from_millis(500);

impl Forwarder {
    pub fn new(clock_rate: u32) -> Forwarder {
        Forwarder {
            current: None,
            target: None,
            offset: 0,
            last: None,
            clock_rate,
            asked: None,
        }
    }

    /// The layer sent now.
    pub fn current(&self) -> Option<Option<&str>> {
        self.current.as_ref().map(|r| r.as_deref())
    }

    /// The layer it should get (from [`choose`]); it moves at that layer's next keyframe.
    pub fn want(&mut self, rid: Option<String>, reason: Reason) {
        if self.current.as_ref() == Some(&rid) {
            self.target = None;
        } else if self.target.as_ref().map(|(r, _)| r) != Some(&rid) {
            self.target = Some((rid, reason));
            self.asked = None;
        }
    }

    /// The layer it waits for a keyframe of, and why it moves, if it is moving.
    pub fn moving(&self) -> Option<(Option<&str>, Reason)> {
        self.target.as_ref().map(|(r, why)| (r.as_deref(), *why))
    }

    /// Whether to ask the publisher for a keyframe of the target layer now (at most every
    /// [`ASK_EVERY`]).
    pub fn ask_keyframe(&mut self, now: Instant) -> Option<Option<String>> {
        let (rid, _) = self.target.as_ref()?;
        if self
            .asked
            .is_some_and(|at| now.duration_since(at) < ASK_EVERY)
        {
            return None;
        }
        self.asked = Some(now);
        Some(rid.clone())
    }

    /// A frame of layer `rid` with the layer's timestamp `rtp_time`, arrived `at`: the timestamp
    /// to send it with, or `None` when this subscriber does not get it (another layer, or the
    /// layer it moves to before its keyframe).
    pub fn forward(
        &mut self,
        rid: Option<&str>,
        rtp_time: u64,
        keyframe: bool,
        at: Instant,
    ) -> Option<Forward> {
        let is = |layer: &Option<String>| layer.as_deref() == rid;
        let moving_here = self.target.as_ref().is_some_and(|(r, _)| is(r));
        let switched = if moving_here {
            if !keyframe {
                // Until its keyframe comes, the layer it has goes on (or nothing, at first).
                return None;
            }
            self.current = Some(rid.map(str::to_owned));
            self.target = None;
            true
        } else if self.current.as_ref().is_some_and(is) {
            false
        } else {
            return None;
        };
        if switched {
            // The new layer's first frame lands where the old timeline would have been by now.
            let out = match self.last {
                Some((last, when)) => {
                    let elapsed = at.saturating_duration_since(when);
                    let ticks = (elapsed.as_secs_f64() * f64::from(self.clock_rate)) as u64;
                    last + ticks.max(1)
                }
                None => rtp_time,
            };
            self.offset = out as i64 - rtp_time as i64;
        }
        let out = (rtp_time as i64 + self.offset).max(0) as u64;
        // Never backwards: a reordered frame of the layer keeps the last time.
        let out = self.last.map_or(out, |(last, _)| out.max(last));
        self.last = Some((out, at));
        Some(Forward {
            rtp_time: out,
            switched,
        })
    }
}

/// The size of a VP8 keyframe (RFC 6386 §9.1), or `None` for an interframe or junk.
pub fn vp8_keyframe_size(frame: &[u8]) -> Option<(u32, u32)> {
    if frame.len() < 10 || frame[0] & 1 != 0 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let width = u32::from(u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff);
    let height = u32::from(u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff);
    Some((width, height))
}

/// The size an H.264 access unit (Annex B) says in its SPS, if it carries one.
pub fn h264_keyframe_size(access_unit: &[u8]) -> Option<(u32, u32)> {
    let sps = pipelines::media::find_sps_annexb(access_unit)?;
    let info = pipelines::media::parse_sps(sps).ok()?;
    Some((info.width, info.height))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(rid: &str, width: u32, height: u32, kbps: u64) -> Layer {
        Layer {
            rid: Some(rid.into()),
            width,
            height,
            bps: kbps * 1000,
        }
    }

    fn ladder() -> Vec<Layer> {
        // As a browser sends them: in its own order, not by size.
        vec![
            layer("f", 1280, 720, 1700),
            layer("q", 320, 180, 150),
            layer("h", 640, 360, 500),
        ]
    }

    #[test]
    fn the_smallest_layer_covering_the_tile_within_the_estimate_never_more_than_published() {
        let l = ladder();
        let rid = |i: Option<usize>| i.and_then(|i| l[i].rid.clone()).unwrap();
        assert_eq!(rid(choose(&l, (320, 180), None)), "q");
        assert_eq!(rid(choose(&l, (321, 180), None)), "h");
        assert_eq!(rid(choose(&l, (640, 360), None)), "h");
        assert_eq!(
            rid(choose(&l, (1920, 1080), None)),
            "f",
            "never above what is published"
        );
        assert_eq!(rid(choose(&l, (0, 0), None)), "f", "no tile said: the best");
        // The estimate steps it down, never below the smallest.
        assert_eq!(rid(choose(&l, (1280, 720), Some(1_000_000))), "h");
        assert_eq!(rid(choose(&l, (1280, 720), Some(200_000))), "q");
        assert_eq!(rid(choose(&l, (1280, 720), Some(10_000))), "q");
        // A layer not seen with a size yet waits; without any, the first is taken.
        let mut fresh = ladder();
        fresh[0].height = 0;
        assert_eq!(rid(choose(&fresh, (1280, 720), None)), "h");
        let no_size = vec![Layer::default()];
        assert_eq!(choose(&no_size, (320, 180), None), Some(0));
        assert_eq!(choose(&[], (320, 180), None), None);
    }

    #[test]
    fn a_switch_waits_for_the_keyframe_and_keeps_one_timeline() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut f = Forwarder::new(90_000);
        f.want(Some("q".into()), Reason::Size);
        // Nothing before q's first keyframe.
        assert_eq!(f.forward(Some("q"), 1_000, false, ms(0)), None);
        assert_eq!(f.ask_keyframe(ms(0)), Some(Some("q".into())));
        assert_eq!(f.ask_keyframe(ms(100)), None, "asked at most every 500 ms");
        let first = f.forward(Some("q"), 1_000, true, ms(0)).unwrap();
        assert!(first.switched);
        // Frames of other layers are not this subscriber's.
        assert_eq!(f.forward(Some("h"), 777_000, false, ms(33)), None);
        let second = f.forward(Some("q"), 4_000, false, ms(33)).unwrap();
        assert_eq!(second.rtp_time - first.rtp_time, 3_000);
        // The tile grows: h from its keyframe on; q goes on until then.
        f.want(Some("h".into()), Reason::Size);
        assert_eq!(f.moving(), Some((Some("h"), Reason::Size)));
        assert_eq!(f.forward(Some("h"), 780_000, false, ms(66)), None);
        let q = f.forward(Some("q"), 7_000, false, ms(66)).unwrap();
        let h = f.forward(Some("h"), 783_000, true, ms(100)).unwrap();
        assert!(h.switched && f.moving().is_none());
        assert_eq!(f.current(), Some(Some("h")));
        // h's timeline continues q's: 34 ms later, not h's own clock.
        assert_eq!(h.rtp_time - q.rtp_time, 3_060);
        let next = f.forward(Some("h"), 786_000, false, ms(133)).unwrap();
        assert_eq!(next.rtp_time - h.rtp_time, 3_000);
        assert_eq!(
            f.forward(Some("q"), 10_000, false, ms(133)),
            None,
            "q is left"
        );
        // Wanting what it has is no move.
        f.want(Some("h".into()), Reason::Bandwidth);
        assert!(f.moving().is_none());
    }

    #[test]
    fn timestamps_never_go_back_even_for_a_layer_whose_clock_is_behind() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(90_000);
        f.want(Some("f".into()), Reason::Size);
        let a = f.forward(Some("f"), 5_000_000, true, t0).unwrap();
        f.want(Some("q".into()), Reason::Bandwidth);
        let b = f.forward(Some("q"), 10, true, t0).unwrap();
        assert!(b.rtp_time > a.rtp_time, "{a:?} then {b:?}");
        // A reordered older frame of q keeps the last time rather than going back.
        let c = f.forward(Some("q"), 5, false, t0).unwrap();
        assert_eq!(c.rtp_time, b.rtp_time);
    }

    #[test]
    fn the_estimate_is_shared_by_stepping_down_the_costliest_track_first() {
        let big = ladder();
        let small = vec![layer("q", 320, 180, 150), layer("h", 640, 360, 500)];
        let tracks: Vec<(&[Layer], (u32, u32))> = vec![(&big, (1280, 720)), (&small, (320, 180))];
        let rid = |picked: &[Option<usize>]| -> Vec<String> {
            picked
                .iter()
                .zip(&tracks)
                .map(|(i, (l, _))| l[i.unwrap()].rid.clone().unwrap())
                .collect()
        };
        // Enough for both: each tile's own.
        assert_eq!(rid(&allocate(&tracks, Some(2_000_000))), ["f", "q"]);
        assert_eq!(rid(&allocate(&tracks, None)), ["f", "q"]);
        // 1 Mbps: the 720p tile steps down; the small one keeps what it needs (an even split
        // would have left it 500 kbps and the big one 500 kbps: "h" and "q" alike here, but
        // at 700 kbps the big one still gets "h").
        assert_eq!(rid(&allocate(&tracks, Some(1_000_000))), ["h", "q"]);
        assert_eq!(rid(&allocate(&tracks, Some(700_000))), ["h", "q"]);
        // Too little for anything: every track at its least.
        assert_eq!(rid(&allocate(&tracks, Some(100_000))), ["q", "q"]);
        assert_eq!(allocate(&[(&[], (320, 180))], Some(1)), [None]);
    }

    #[test]
    fn a_single_layer_is_downscaled_by_halves_never_up_and_chosen_like_simulcast() {
        let published = Layer {
            rid: None,
            width: 640,
            height: 360,
            bps: 1_200_000,
        };
        let steps = downscales(&published);
        let sizes: Vec<_> = steps.iter().map(|l| (l.width, l.height)).collect();
        assert_eq!(sizes, [(320, 180), (160, 90)]);
        assert_eq!(steps[0].rid.as_deref(), Some("~320x180"));
        assert_eq!(steps[0].bps, 300_000);
        assert_eq!(steps[1].bps, 100_000, "never below the least rate");
        assert_eq!(downscaled_size("~320x180"), Some((320, 180)));
        assert_eq!(downscaled_size("h"), None);
        assert_eq!(downscaled_size("~x"), None);
        // What is chosen: the published layer and its downscales, as with simulcast.
        let mut all = vec![published.clone()];
        all.extend(steps);
        let rid = |i: Option<usize>| i.and_then(|i| all[i].rid.clone());
        assert_eq!(
            rid(choose(&all, (320, 180), None)).as_deref(),
            Some("~320x180")
        );
        assert_eq!(
            rid(choose(&all, (100, 56), None)).as_deref(),
            Some("~160x90")
        );
        assert_eq!(
            rid(choose(&all, (640, 360), None)),
            None,
            "the publisher's own"
        );
        assert_eq!(
            rid(choose(&all, (1920, 1080), None)),
            None,
            "never upscaled"
        );
        assert_eq!(
            rid(choose(&all, (640, 360), Some(400_000))).as_deref(),
            Some("~320x180"),
            "a low estimate takes a downscale too"
        );
        // Odd sizes come out even; small, simulcast or unsized publishers get none.
        let odd = Layer {
            width: 1278,
            height: 718,
            ..published.clone()
        };
        assert_eq!(downscales(&odd)[0].width, 638);
        assert_eq!(downscales(&odd)[0].height, 358);
        let small = Layer {
            width: 318,
            height: 178,
            ..published.clone()
        };
        assert!(downscales(&small).is_empty());
        assert!(downscales(&layer("f", 1280, 720, 1700)).is_empty());
        assert!(downscales(&Layer::default()).is_empty());
    }

    #[test]
    fn keyframe_sizes_from_vp8_and_h264() {
        // A VP8 keyframe header: frame tag, start code, 640x360.
        let mut vp8 = vec![0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a];
        vp8.extend_from_slice(&640u16.to_le_bytes());
        vp8.extend_from_slice(&360u16.to_le_bytes());
        assert_eq!(vp8_keyframe_size(&vp8), Some((640, 360)));
        vp8[0] |= 1;
        assert_eq!(vp8_keyframe_size(&vp8), None, "an interframe");
        assert_eq!(vp8_keyframe_size(&[0; 4]), None);
        let track = pipelines::media::fixtures::video_track();
        let mut au = Vec::new();
        for set in track.parameter_sets() {
            au.extend_from_slice(&[0, 0, 0, 1]);
            au.extend_from_slice(set);
        }
        assert_eq!(h264_keyframe_size(&au), Some((track.width, track.height)));
        assert_eq!(h264_keyframe_size(&[0, 0, 1, 0x41, 0]), None);
    }
}
