//! The handshake, fed arbitrary bytes as the peer's side, in both roles.
//!
//! Input: byte 0 is flags: bit 0 our role (0 initiator, 1 responder),
//! bits 1-2 our configuration (`crypto::config`: password, trusted keys,
//! plaintext, password rotation), bit 3 man-in-the-middle mode. Byte 1 is
//! the read size (`b + 1`).
//!
//! Direct mode: the rest is the peer's byte stream. Man-in-the-middle mode:
//! a real peer with the same kind of configuration runs the other role,
//! and the rest is triples `(flight, pos, xor)` applied to the peer's
//! flights (0: its first, 1: its second, 2: its third) before we read them.
//! Never panics; without effective mutations the handshake succeeds and
//! both sides agree on the outcome.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_router::core::crypto::{Handshake, HandshakeOutcome, HandshakeProgress, Role};
use weft_router_fuzz::crypto::{LOCAL_INDEX, PEER_INDEX, config};
use weft_router_fuzz::split;

enum End {
    Running,
    Plaintext,
    Encrypted,
    Failed,
}

/// Feeds `bytes` in reads of `chunk`; returns what to send and how it ended.
fn feed(h: &mut Handshake, bytes: &[u8], chunk: u8) -> (Vec<u8>, End) {
    let mut out = Vec::new();
    for piece in split(&[chunk], bytes) {
        match h.handle_bytes(piece) {
            Ok(HandshakeProgress::Continue { send }) => out.extend(send),
            Ok(HandshakeProgress::Done { send, outcome, .. }) => {
                out.extend(send);
                let end = match outcome {
                    HandshakeOutcome::Plaintext => End::Plaintext,
                    HandshakeOutcome::Established(_) => End::Encrypted,
                };
                return (out, end);
            }
            Err(_) => {
                out.extend(h.take_farewell());
                return (out, End::Failed);
            }
        }
    }
    (out, End::Running)
}

fuzz_target!(|data: &[u8]| {
    let [flags, chunk, rest @ ..] = data else {
        return;
    };
    let role = if flags & 1 == 0 {
        Role::Initiator
    } else {
        Role::Responder
    };
    let choice = (flags >> 1) & 3;
    let mut us = Handshake::new(role, config(choice, 1, 2), LOCAL_INDEX);
    let mut to_peer = us.start().expect("fresh handshake");

    if flags & 0b1000 == 0 {
        feed(&mut us, rest, *chunk);
        return;
    }

    let peer_role = match role {
        Role::Initiator => Role::Responder,
        Role::Responder => Role::Initiator,
    };
    let mut peer = Handshake::new(peer_role, config(choice, 2, 1), PEER_INDEX);
    let mut to_us = peer.start().expect("fresh handshake");
    let mutations: Vec<_> = rest.chunks_exact(3).collect();
    let mut effective = false;
    let (mut ours, mut theirs) = (End::Running, End::Running);
    for flight in 0..3u8 {
        if matches!(ours, End::Running) && !to_us.is_empty() {
            for m in mutations.iter().filter(|m| m[0] % 3 == flight) {
                if let Some(b) = to_us.get_mut(usize::from(m[1])) {
                    *b ^= m[2];
                    effective |= m[2] != 0;
                }
            }
            let (out, end) = feed(&mut us, &std::mem::take(&mut to_us), *chunk);
            to_peer.extend(out);
            ours = end;
        }
        if matches!(theirs, End::Running) && !to_peer.is_empty() {
            let (out, end) = feed(&mut peer, &std::mem::take(&mut to_peer), 0xff);
            to_us.extend(out);
            theirs = end;
        }
    }
    if !effective {
        let agreed = matches!(
            (&ours, &theirs),
            (End::Plaintext, End::Plaintext) | (End::Encrypted, End::Encrypted)
        );
        assert!(agreed, "a clean handshake did not complete on both sides");
    }
});
