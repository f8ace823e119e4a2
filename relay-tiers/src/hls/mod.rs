//! HLS: each rendition is segmented in memory ([`segmenter`], over our own MPEG-TS muxer
//! [`ts`]), the multivariant playlist is made from the registry ([`playlist`]), and
//! [`routes`] serve both from the [`store`].

pub mod playlist;
pub mod routes;
pub mod segmenter;
pub mod store;
pub mod ts;

/// Media playlist file name inside a rendition's path.
pub const MEDIA_PLAYLIST: &str = "index.m3u8";

/// Track fixtures for this module's tests: x264's 1280x720 High 3.1 parameter sets, 48 kHz
/// stereo AAC-LC.
#[cfg(test)]
pub(crate) mod fixtures {
    use pipelines::media::{AudioTrack, Bytes, VideoTrack};

    pub fn video_track() -> VideoTrack {
        let sps: &[u8] = &[
            0x67, 0x64, 0x00, 0x1f, 0xac, 0xd9, 0x40, 0x50, 0x05, 0xbb, 0x01, 0x10, 0x00, 0x00,
            0x03, 0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x83, 0x19, 0x60,
        ];
        let mut avcc = vec![1, 0x64, 0x00, 0x1f, 0xff, 0xe1, 0x00, sps.len() as u8];
        avcc.extend_from_slice(sps);
        avcc.extend_from_slice(&[1, 0, 4, 0x68, 0xeb, 0xe3, 0xcb]);
        VideoTrack::from_avcc(Bytes::from(avcc)).unwrap()
    }

    pub fn audio_track() -> AudioTrack {
        AudioTrack::from_asc(Bytes::from_static(&[0x11, 0x90])).unwrap()
    }
}
