//! `DataSession::open` on arbitrary datagrams, interleaved with genuine
//! ones from a peer session that rekeys every 3 datagrams.
//!
//! Input: a sequence of ops, each a byte `op % 5` followed by its operands:
//! 0 `len bytes…`: open these raw bytes; 1 `len`: the peer seals `len`
//! bytes and we open them; 2: replay the last datagram we accepted;
//! 3 `secs`: advance the clock; 4 `pos bit`: the peer seals a datagram, one
//! bit of it is flipped, we open it. Never panics; a genuine datagram that
//! opens yields its plaintext, a replayed or tampered one never opens.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use weft_router::core::crypto::data::peek_receiver_index;
use weft_router_fuzz::crypto::{LOCAL_INDEX, data_sessions, fuzz_limits, seal};

fuzz_target!(|data: &[u8]| {
    let mut now = std::time::Instant::now();
    let (mut local, mut peer) = data_sessions(now, fuzz_limits());
    let mut accepted: Option<Vec<u8>> = None;
    let mut input = data.iter().copied();
    while let Some(op) = input.next() {
        match op % 5 {
            0 => {
                let len = usize::from(input.next().unwrap_or(0));
                let mut raw: Vec<u8> = input.by_ref().take(len).collect();
                let index = peek_receiver_index(&raw);
                if local.open(now, &mut raw).is_ok() {
                    assert_eq!(index, Some(LOCAL_INDEX));
                }
            }
            1 => {
                let len = usize::from(input.next().unwrap_or(0));
                let plaintext = vec![0x5a; len];
                let d = seal(&mut peer, now, &plaintext);
                let mut buf = d.clone();
                if let Ok(p) = local.open(now, &mut buf) {
                    assert_eq!(p, &plaintext[..]);
                    accepted = Some(d);
                }
            }
            2 => {
                if let Some(d) = &accepted {
                    let mut buf = d.clone();
                    assert!(local.open(now, &mut buf).is_err(), "a replay opened");
                }
            }
            3 => now += Duration::from_secs(u64::from(input.next().unwrap_or(0))),
            _ => {
                let pos = usize::from(input.next().unwrap_or(0));
                let bit = input.next().unwrap_or(0) % 8;
                let mut d = seal(&mut peer, now, b"tampered");
                let at = pos % d.len();
                d[at] ^= 1 << bit;
                assert!(
                    local.open(now, &mut d).is_err(),
                    "a flipped bit at {at} opened"
                );
            }
        }
    }
});
