//! Ladder planning. Transcoding only goes down: a rung above the source is dropped, a rung at
//! the source's height passes the source through untouched, the rest are encoded.

use pipelines::config::RungConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The source's own encoded video.
    Passthrough,
    /// Decoded once (shared), scaled and encoded for this rendition alone.
    Encode,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedRendition {
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub video_kbps: u32,
    pub audio_kbps: u32,
    pub max_fps: Option<u32>,
    pub mode: Mode,
}

/// Name of the single rendition a source gets when every rung is above it.
pub const SOURCE_RENDITION: &str = "source";

/// Plans the renditions for a `width`×`height` source at `fps` (when known), best first.
pub fn plan(
    width: u32,
    height: u32,
    fps: Option<f64>,
    rungs: &[RungConfig],
) -> Vec<PlannedRendition> {
    let mut out: Vec<PlannedRendition> = Vec::new();
    let mut passthrough_taken = false;
    for rung in rungs.iter().filter(|r| r.height <= height) {
        // A frame-rate cap below the source's rate needs an encode even at the source's size.
        let fps_fits = match (rung.max_fps, fps) {
            (Some(cap), Some(src)) => f64::from(cap) + 0.01 >= src,
            (Some(_), None) => false,
            (None, _) => true,
        };
        let mode = if rung.height == height && fps_fits && !passthrough_taken {
            passthrough_taken = true;
            Mode::Passthrough
        } else {
            Mode::Encode
        };
        out.push(PlannedRendition {
            name: rung.name.clone(),
            width: if mode == Mode::Passthrough {
                width
            } else {
                scaled_width(width, height, rung.height)
            },
            height: rung.height,
            video_kbps: rung.video_kbps,
            audio_kbps: rung.audio_kbps,
            max_fps: rung.max_fps,
            mode,
        });
    }
    if out.is_empty() {
        // Every rung is above the source: never upscale, pass the source through instead.
        let lowest = rungs.iter().min_by_key(|r| r.height);
        out.push(PlannedRendition {
            name: SOURCE_RENDITION.to_owned(),
            width,
            height,
            video_kbps: lowest.map_or(800, |r| r.video_kbps),
            audio_kbps: lowest.map_or(128, |r| r.audio_kbps),
            max_fps: None,
            mode: Mode::Passthrough,
        });
    }
    out.sort_by(|a, b| {
        b.height
            .cmp(&a.height)
            .then(b.video_kbps.cmp(&a.video_kbps))
    });
    out
}

/// The width that keeps the source's aspect ratio at `target_height`, rounded to even.
pub fn scaled_width(src_width: u32, src_height: u32, target_height: u32) -> u32 {
    let exact = f64::from(src_width) * f64::from(target_height) / f64::from(src_height.max(1));
    ((exact / 2.0).round() as u32 * 2).max(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rung(name: &str, height: u32, kbps: u32) -> RungConfig {
        RungConfig {
            name: name.into(),
            height,
            video_kbps: kbps,
            audio_kbps: 128,
            max_fps: None,
        }
    }

    fn ladder() -> Vec<RungConfig> {
        vec![
            rung("1080p", 1080, 5000),
            rung("720p", 720, 2800),
            rung("480p", 480, 1400),
            rung("360p", 360, 800),
        ]
    }

    fn summary(p: &[PlannedRendition]) -> Vec<(&str, u32, u32, Mode)> {
        p.iter()
            .map(|r| (r.name.as_str(), r.width, r.height, r.mode))
            .collect()
    }

    #[test]
    fn plans() {
        use Mode::*;
        type Case<'a> = (u32, u32, Vec<(&'a str, u32, u32, Mode)>);
        let cases: Vec<Case> = vec![
            (
                1280,
                720,
                vec![
                    ("720p", 1280, 720, Passthrough),
                    ("480p", 854, 480, Encode),
                    ("360p", 640, 360, Encode),
                ],
            ),
            (
                1920,
                1080,
                vec![
                    ("1080p", 1920, 1080, Passthrough),
                    ("720p", 1280, 720, Encode),
                    ("480p", 854, 480, Encode),
                    ("360p", 640, 360, Encode),
                ],
            ),
            // Between rungs: nothing passes through, nothing is upscaled.
            (
                1024,
                576,
                vec![("480p", 854, 480, Encode), ("360p", 640, 360, Encode)],
            ),
            // Portrait: width follows the aspect ratio.
            (
                720,
                1280,
                vec![
                    ("1080p", 608, 1080, Encode),
                    ("720p", 406, 720, Encode),
                    ("480p", 270, 480, Encode),
                    ("360p", 202, 360, Encode),
                ],
            ),
            // Below every rung: the source alone.
            (320, 240, vec![("source", 320, 240, Passthrough)]),
        ];
        for (w, h, want) in cases {
            assert_eq!(summary(&plan(w, h, Some(30.0), &ladder())), want, "{w}x{h}");
        }
    }

    #[test]
    fn fps_cap_below_source_forces_an_encode() {
        let mut l = ladder();
        l[1].max_fps = Some(30);
        assert_eq!(plan(1280, 720, Some(60.0), &l)[0].mode, Mode::Encode);
        assert_eq!(plan(1280, 720, Some(30.0), &l)[0].mode, Mode::Passthrough);
        assert_eq!(plan(1280, 720, None, &l)[0].mode, Mode::Encode);
    }

    #[test]
    fn only_one_passthrough_per_height() {
        let l = vec![rung("hi", 720, 3000), rung("lo", 720, 1500)];
        let p = plan(1280, 720, None, &l);
        assert_eq!(p.iter().filter(|r| r.mode == Mode::Passthrough).count(), 1);
        assert_eq!(p[0].name, "hi");
    }

    #[test]
    fn widths_are_even() {
        for (w, h, t) in [
            (1280, 720, 480),
            (1920, 1080, 360),
            (1366, 768, 360),
            (640, 480, 144),
        ] {
            let sw = scaled_width(w, h, t);
            assert_eq!(sw % 2, 0, "{w}x{h}->{t}: {sw}");
            assert!((f64::from(sw) / f64::from(t) - f64::from(w) / f64::from(h)).abs() < 0.02);
        }
    }
}
