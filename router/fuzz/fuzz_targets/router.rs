//! A whole `Router` with one neighbour speaking arbitrary bytes.
//!
//! Input: a three-byte `RouterHeader` (how much valid handshake precedes the
//! fuzzed bytes, whether a second connection from the same peer races the
//! first, read size, virtual time per read), then the stream; in the
//! auto-framed mode the stream is records, each a control message or a UDP
//! datagram from the peer's address (`handle_udp`: data-path heartbeats and
//! path-MTU probes). The router must never panic, everything it sends on
//! TCP or UDP must be valid protocol (checked by `SentStreams`), and timers
//! run throughout: heartbeats, liveness, periodic gossip, GC, UDP probing.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    weft_router_fuzz::run_router(data);
});
