//! Any bytes as an H.264 access unit (length-prefixed NAL units, as a publisher sends them)
//! through the RTP packetizer every WebRTC viewer's video goes through: payloads no larger
//! than asked for, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, au)) = data.split_first() else {
        return;
    };
    let max = 16 + usize::from(first) * 4;
    let sets: [&[u8]; 2] = [&[0x67, 0x42, 0xc0, 0x1f], &[0x68, 0xce]];
    let packets = rtc::rtp::h264(au, first & 1 == 1, &sets, max);
    assert!(packets.payloads.iter().all(|p| p.len() <= max));
});
