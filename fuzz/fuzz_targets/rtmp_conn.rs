//! Bytes from a hostile RTMP peer: handshake, chunking, AMF commands, FLV tags.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ingest::rtmp::conn::fuzz_one_connection(data);
});
