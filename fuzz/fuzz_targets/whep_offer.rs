//! Any bytes as a WHEP offer: an SDP answer or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(sdp) = std::str::from_utf8(data) {
        let candidate = "127.0.0.1:8189".parse().expect("an address");
        let _ = relay_tiers::whep::answer_offer(sdp, candidate, None);
    }
});
