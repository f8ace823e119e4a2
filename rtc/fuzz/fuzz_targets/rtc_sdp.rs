//! Any bytes as an SDP offer through `rtc::sdp::normalize_offer` (what WHIP and WHEP run every
//! offer through): a string back, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(sdp) = std::str::from_utf8(data) {
        let _ = rtc::sdp::normalize_offer(sdp);
    }
});
