//! Bytes from a hostile RTMP peer: handshake, chunking, AMF commands, FLV tags.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: {
        // rml_rtmp can panic on a hostile chunk stream (arithmetic overflow in its chunk
        // deserializer); the connection catches that and ends itself (`conn::guarded`), as it
        // does in the node. So the hook stays quiet: a panic that escapes the connection still
        // ends the run as a crash (libfuzzer-sys aborts on it).
        std::panic::set_hook(Box::new(|_| {}));
    },
    |data: &[u8]| {
        ingest::rtmp::conn::fuzz_one_connection(data);
    }
);
