//! Any bytes as generic NACK entries (RFC 4585: a packet id and a bitmask, 4 bytes each), as a
//! receiver sends them, through `rtc::nack::lost` and a small sent history: never a panic, at
//! most 17 sequence numbers per entry, and only the packets asked for sent again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rtc::nack::{History, lost};
use std::sync::Arc;
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let [capacity, start_hi, start_lo, entries @ ..] = data else {
        return;
    };
    let now = Instant::now();
    let mut history = History::new(usize::from(*capacity % 64), 50_000, now);
    // Sent packets around the 16-bit rollover, depending on the input.
    let start = 65_536u64 * 3 + u64::from(u16::from_be_bytes([*start_hi, *start_lo]));
    for seq in start..start + 80 {
        history.push(seq, Arc::from(vec![0u8; 200]), seq as u32, seq % 5 == 0);
    }
    for (n, entry) in entries.chunks_exact(4).enumerate() {
        let pid = u16::from_be_bytes([entry[0], entry[1]]);
        let blp = u16::from_be_bytes([entry[2], entry[3]]);
        let seqs: Vec<u16> = lost(pid, blp).collect();
        assert!(!seqs.is_empty() && seqs.len() <= 17);
        assert_eq!(seqs[0], pid);
        assert_eq!(seqs.len(), 1 + blp.count_ones() as usize);
        let at = now + Duration::from_millis(n as u64 * 7);
        for seq16 in seqs {
            if let Some(p) = history.resend(seq16, at) {
                assert_eq!(p.seq as u16, seq16);
                assert!(p.seq >= start && p.seq < start + 80);
            }
        }
    }
});
