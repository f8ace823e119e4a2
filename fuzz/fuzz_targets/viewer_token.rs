//! Any text as a viewer token, for any stream and rendition: a grant or a refusal, never a
//! panic; and a token is never good for a stream it was not minted for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pipelines::config::Access;
use relay_tiers::access::{Grant, Tokens, admit, carry, parse_ttl};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let tokens = Tokens::new("fuzz-cluster-secret").expect("a secret");
    let (token, stream) = text.split_once('\n').unwrap_or((text, "main"));
    let client = std::net::IpAddr::from([127, 0, 0, 1]);
    let _ = admit(Some(&tokens), Access::Token, stream, Some(stream), Some(token), client);
    let _ = parse_ttl(token);
    let _ = carry(text, token);
    // Minted for `stream`, it opens `stream` and nothing else.
    let minted = tokens.mint(&Grant::for_secs(stream, 60));
    assert!(tokens.read(stream, &minted).is_ok());
    assert!(tokens.read(&format!("{stream}x"), &minted).is_err());
});
