//! `SecureChannel::open` on arbitrary bytes mixed with genuine records.
//!
//! A real handshake in memory gives a channel pair; the input is a
//! sequence of ops, each a byte `op % 3` then a length byte and that many
//! bytes: 0 feeds the bytes raw, 1 has the peer seal them and feeds the
//! records, 2 has the peer seal them and feeds the records cut after the
//! first `len / 2` bytes (the rest follows in the next op's feed). The
//! peer rekeys every other record. Never panics; while only genuine records arrive, the plaintext comes out
//! intact; after any error every later call fails.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_router_fuzz::crypto::channel_pair;

fuzz_target!(|data: &[u8]| {
    let (mut peer, mut local) = channel_pair();
    let now = std::time::Instant::now();
    let mut input = data.iter().copied();
    let mut carry = Vec::new();
    let (mut expected, mut got) = (Vec::new(), Vec::new());
    let mut clean = true;
    let mut failed = false;
    while let Some(op) = input.next() {
        let len = usize::from(input.next().unwrap_or(0));
        let bytes: Vec<u8> = input.by_ref().take(len).collect();
        let mut feed = std::mem::take(&mut carry);
        match op % 3 {
            0 => {
                clean &= bytes.is_empty();
                feed.extend(&bytes);
            }
            1 => {
                peer.seal(now, &bytes, &mut feed)
                    .expect("sealing never fails here");
                expected.extend(&bytes);
            }
            _ => {
                let mut records = Vec::new();
                peer.seal(now, &bytes, &mut records)
                    .expect("sealing never fails here");
                expected.extend(&bytes);
                let cut = (records.len() / 2).min(records.len());
                feed.extend(&records[..cut]);
                carry = records[cut..].to_vec();
            }
        }
        let result = local.open(&feed, &mut got);
        if failed {
            assert!(result.is_err(), "a failed channel accepted input");
        }
        failed |= result.is_err();
        if clean {
            assert!(result.is_ok(), "genuine records failed");
            assert!(expected.starts_with(&got));
        }
    }
});
