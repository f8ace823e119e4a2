//! Codec configuration a publisher controls: avcC / SPS and AudioSpecificConfig.
#![no_main]

use pipelines::media::{AudioTrack, VideoTrack, find_sps_annexb, parse_sps};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let bytes = pipelines::media::Bytes::copy_from_slice(data);
    let _ = VideoTrack::from_avcc(bytes.clone());
    let _ = AudioTrack::from_asc(bytes);
    let _ = parse_sps(data);
    let _ = find_sps_annexb(data);
});
