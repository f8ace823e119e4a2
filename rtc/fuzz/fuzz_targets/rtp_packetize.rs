//! Any bytes as an H.264 access unit (length-prefixed NAL units, as a publisher sends them)
//! with any parameter sets (empty ones too: they come from the publisher's configuration)
//! through the RTP packetizer every WebRTC viewer's video goes through, at any payload size:
//! payloads no larger than asked for (within 3..=65535), never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&[first, sps_len, pps_len], rest)) = data.split_first_chunk::<3>() else {
        return;
    };
    let max = usize::from(first) * 8;
    let (sps, rest) = rest.split_at(usize::from(sps_len % 16).min(rest.len()));
    let (pps, au) = rest.split_at(usize::from(pps_len % 16).min(rest.len()));
    let packets = rtc::rtp::h264(au, first & 1 == 1, &[sps, pps], max);
    assert!(packets.payloads.iter().all(|p| p.len() <= max.max(3)));
});
