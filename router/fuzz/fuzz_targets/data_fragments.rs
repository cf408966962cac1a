//! Sealed messages in fragments (`crypto/fragments.rs`): `Fragment::parse`,
//! the `Defragmenter` and `DataSession::open_message` on arbitrary
//! datagrams, interleaved with genuine messages from a peer session that
//! rekeys every 3 datagrams.
//!
//! Input: a sequence of ops, each a byte `op % 6` followed by its operands:
//! 0 `len bytes…`: receive these raw bytes; 1 `len max`: the peer seals a
//! message of `1 + 37 * len` bytes in fragments of at most `25 + 8 * max`
//! bytes, all received in order; 2: replay every fragment of the last
//! message that opened; 3 `secs`: advance the clock; 4 `k pos bit`: a
//! message with one bit flipped in fragment `k`; 5 `k`: a message with
//! fragment `k` lost. Never panics; a genuine message received whole opens
//! to its plaintext; a replayed, tampered or incomplete one never opens.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use weft_router::core::crypto::fragments::Defragmenter;
use weft_router_fuzz::crypto::{data_sessions, fuzz_limits, receive_fragment, seal_fragments};

fuzz_target!(|data: &[u8]| {
    let mut now = std::time::Instant::now();
    let (mut local, mut peer) = data_sessions(now, fuzz_limits());
    let mut defrag = Defragmenter::new();
    let mut accepted: Vec<Vec<u8>> = Vec::new();
    let mut input = data.iter().copied();
    let mut next = || input.next();
    while let Some(op) = next() {
        match op % 6 {
            0 => {
                let len = usize::from(next().unwrap_or(0));
                let raw: Vec<u8> = (0..len).map_while(|_| next()).collect();
                receive_fragment(&mut defrag, &mut local, now, &raw);
            }
            1 => {
                let len = 1 + 37 * usize::from(next().unwrap_or(0));
                let max = 25 + 8 * usize::from(next().unwrap_or(0));
                let plaintext: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let fs = seal_fragments(&mut peer, now, &plaintext, max);
                let opened: Vec<Vec<u8>> = fs
                    .iter()
                    .filter_map(|d| receive_fragment(&mut defrag, &mut local, now, d))
                    .collect();
                // A message that waited past the overlap may be refused;
                // one that opens is exactly what was sent, once.
                assert!(opened.len() <= 1);
                if let Some(p) = opened.first() {
                    assert_eq!(p, &plaintext);
                    accepted = fs;
                }
            }
            2 => {
                for d in &accepted {
                    assert!(
                        receive_fragment(&mut defrag, &mut local, now, d).is_none(),
                        "a replayed message opened"
                    );
                }
            }
            3 => now += Duration::from_secs(u64::from(next().unwrap_or(0))),
            4 => {
                let k = usize::from(next().unwrap_or(0));
                let pos = usize::from(next().unwrap_or(0));
                let bit = next().unwrap_or(0) % 8;
                let mut fs = seal_fragments(&mut peer, now, &[0x42; 3000], 500);
                let k = k % fs.len();
                let at = pos % fs[k].len();
                fs[k][at] ^= 1 << bit;
                for d in &fs {
                    assert!(
                        receive_fragment(&mut defrag, &mut local, now, d).is_none(),
                        "a flipped bit at fragment {k} byte {at} opened"
                    );
                }
            }
            _ => {
                let k = usize::from(next().unwrap_or(0));
                let mut fs = seal_fragments(&mut peer, now, &[0x17; 3000], 500);
                fs.remove(k % fs.len());
                for d in &fs {
                    assert!(
                        receive_fragment(&mut defrag, &mut local, now, d).is_none(),
                        "a message with a lost fragment opened"
                    );
                }
            }
        }
    }
});
