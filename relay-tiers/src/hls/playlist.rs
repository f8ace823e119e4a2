//! The multivariant (master) playlist, made from what the registry knows about a session.

use std::fmt::Write;

use super::MEDIA_PLAYLIST;

#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub name: String,
    /// Peak bits per second.
    pub bandwidth: u64,
    pub average_bandwidth: Option<u64>,
    pub width: u32,
    pub height: u32,
    pub codecs: Option<String>,
    pub frame_rate: Option<f64>,
}

/// Writes the multivariant playlist listing `variants` (best first), each pointing at
/// `<name>/index.m3u8`.
pub fn multivariant(variants: &[Variant]) -> String {
    let mut out = String::from("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    for v in variants {
        let _ = write!(
            out,
            "#EXT-X-STREAM-INF:BANDWIDTH={},RESOLUTION={}x{}",
            v.bandwidth, v.width, v.height
        );
        if let Some(average) = v.average_bandwidth {
            let _ = write!(out, ",AVERAGE-BANDWIDTH={average}");
        }
        if let Some(codecs) = &v.codecs {
            let _ = write!(out, ",CODECS=\"{codecs}\"");
        }
        if let Some(fps) = v.frame_rate {
            let _ = write!(out, ",FRAME-RATE={fps:.3}");
        }
        let _ = write!(out, "\n{}/{MEDIA_PLAYLIST}\n", v.name);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_each_variant_with_its_attributes() {
        let text = multivariant(&[
            Variant {
                name: "720p".into(),
                bandwidth: 2_928_000,
                average_bandwidth: Some(2_500_000),
                width: 1280,
                height: 720,
                codecs: Some("avc1.64001f,mp4a.40.2".into()),
                frame_rate: Some(30.0),
            },
            Variant {
                name: "360p".into(),
                bandwidth: 928_000,
                average_bandwidth: None,
                width: 640,
                height: 360,
                codecs: None,
                frame_rate: None,
            },
        ]);
        assert_eq!(
            text,
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-INDEPENDENT-SEGMENTS\n\
             #EXT-X-STREAM-INF:BANDWIDTH=2928000,RESOLUTION=1280x720,AVERAGE-BANDWIDTH=2500000,CODECS=\"avc1.64001f,mp4a.40.2\",FRAME-RATE=30.000\n720p/index.m3u8\n\
             #EXT-X-STREAM-INF:BANDWIDTH=928000,RESOLUTION=640x360\n360p/index.m3u8\n"
        );
    }
}
