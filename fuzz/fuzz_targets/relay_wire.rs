//! Any bytes from an upstream node, in any pieces: messages or an error,
//! never a panic, and never more than the bytes given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_tiers::relay::wire::Decoder;

fuzz_target!(|data: &[u8]| {
    // The first byte says where the input is cut in two, as TCP may cut it.
    let (cut, rest) = data.split_first().map_or((0, data), |(c, r)| (*c as usize, r));
    let cut = cut.min(rest.len());
    let mut decoder = Decoder::default();
    for piece in [&rest[..cut], &rest[cut..]] {
        decoder.feed(piece);
        while let Ok(Some(_)) = decoder.next() {}
    }
});
