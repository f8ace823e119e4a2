//! Any heartbeat (its `Authorization` line, then its body): refused unless signed, never a
//! panic; and a body that does parse is a list of members the node can hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_tiers::cluster::{HEARTBEAT_PATH, Member};
use relay_tiers::relay::auth::{Replays, verify_signed};

fuzz_target!(|data: &[u8]| {
    let (header, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let header = std::str::from_utf8(header).ok();
    let replays = Replays::default();
    // Nobody without the secret can sign; the fuzzer has no secret.
    assert!(!verify_signed("fuzz-cluster-secret", HEARTBEAT_PATH, body, header, &replays));
    let _ = serde_json::from_slice::<Vec<Member>>(body);
});
