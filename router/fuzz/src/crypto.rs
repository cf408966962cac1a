//! Helpers and seeds for the crypto targets (`handshake`, `data_open`,
//! `data_fragments`, `channel_open`, `key_files`).
//!
//! Keys are fixed so seeds are reproducible; Noise ephemeral keys are not
//! (snow draws them from the OS), so the handshake target drives a real
//! peer in-process when it needs valid encrypted messages.

use std::sync::Arc;
use std::time::Instant;

use weft_router::core::crypto::data::{HEADER_LEN, OVERHEAD};
use weft_router::core::crypto::fragments::{Defragmenter, Fragment, fragments};
use weft_router::core::crypto::{
    DataKeys, DataLimits, DataSession, Handshake, HandshakeConfig, HandshakeOutcome,
    HandshakeProgress, NoiseConfig, Psk, PskSet, Role, SecureChannel, StaticKeypair, TrustedKeys,
};
use zeroize::Zeroizing;

use crate::Seed;

/// Receiver indexes of the fuzzed side (`LOCAL`) and its peer.
pub const LOCAL_INDEX: u32 = 0x0102_0304;
pub const PEER_INDEX: u32 = 0x0a0b_0c0d;

fn keypair(byte: u8) -> Arc<StaticKeypair> {
    Arc::new(StaticKeypair::from_private(Zeroizing::new([byte; 32])))
}

fn psk(byte: u8) -> Psk {
    Psk::from_bytes(Zeroizing::new([byte; 32]))
}

/// One of four configurations, for the side whose key byte is `key` and
/// whose peer's is `peer`: 0 password, 1 trusted keys, 2 plaintext,
/// 3 password rotation (sends 9, also accepts 8).
pub fn config(choice: u8, key: u8, peer: u8) -> HandshakeConfig {
    let password = |also: Vec<Psk>| {
        let set = Arc::new(PskSet::new(psk(9), also));
        HandshakeConfig::Noise(
            NoiseConfig::new(keypair(key), Some(set), None).expect("has a password"),
        )
    };
    match choice & 3 {
        0 => password(vec![]),
        1 => {
            let trusted: TrustedKeys = [keypair(peer).public()].into_iter().collect();
            HandshakeConfig::Noise(
                NoiseConfig::new(keypair(key), None, Some(Arc::new(trusted))).expect("has keys"),
            )
        }
        2 => HandshakeConfig::Plaintext,
        _ => password(vec![psk(8)]),
    }
}

/// Data keys of the fuzzed side and of its peer (swapped).
pub fn data_sessions(now: Instant, limits: DataLimits) -> (DataSession, DataSession) {
    let keys = |a: u8, b: u8| DataKeys::new(Zeroizing::new([a; 32]), Zeroizing::new([b; 32]));
    (
        DataSession::new(LOCAL_INDEX, PEER_INDEX, keys(1, 2), now, limits),
        DataSession::new(PEER_INDEX, LOCAL_INDEX, keys(2, 1), now, limits),
    )
}

/// Limits that make the data target reach rekeying quickly.
pub fn fuzz_limits() -> DataLimits {
    DataLimits {
        rekey_after_packets: 3,
        ..DataLimits::default()
    }
}

/// Seals `plaintext` as one message and cuts it into fragment datagrams of
/// at most `max_datagram` bytes, as a router sending a large frame does.
pub fn seal_fragments(
    session: &mut DataSession,
    now: Instant,
    plaintext: &[u8],
    max_datagram: usize,
) -> Vec<Vec<u8>> {
    let mut message = plaintext.to_vec();
    let Ok(prefix) = session.seal_message(now, &mut message) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    fragments(&prefix, &[&message], max_datagram, |h, b| {
        out.push([&[&h[..]], b].concat().concat())
    });
    out
}

/// Receives one datagram as the UDP thread does: parse, only the local
/// session's index gets reassembly state, open once whole. Returns the
/// plaintext of a message that opened.
pub fn receive_fragment(
    defragmenter: &mut Defragmenter,
    local: &mut DataSession,
    now: Instant,
    datagram: &[u8],
) -> Option<Vec<u8>> {
    let f = Fragment::parse(datagram).ok()?;
    if f.prefix.index != LOCAL_INDEX {
        return None;
    }
    let message = defragmenter.push(now, &f)?;
    let len = local.open_message(now, &f.prefix, message).ok()?;
    Some(message[..len].to_vec())
}

/// Seals `plaintext` as `session` would send it.
pub fn seal(session: &mut DataSession, now: Instant, plaintext: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; plaintext.len() + OVERHEAD];
    buf[HEADER_LEN..HEADER_LEN + plaintext.len()].copy_from_slice(plaintext);
    let n = session
        .seal(now, &mut buf, plaintext.len())
        .expect("the buffer has room");
    buf.truncate(n);
    buf
}

/// Runs two real handshakes in memory (password on both sides) and returns
/// the initiator's and responder's channels, which rekey every other
/// record so the inputs cover rekey records.
pub fn channel_pair() -> (SecureChannel, SecureChannel) {
    let mut i = Handshake::new(Role::Initiator, config(0, 1, 2), PEER_INDEX);
    let mut r = Handshake::new(Role::Responder, config(0, 2, 1), LOCAL_INDEX);
    let first = i.start().expect("fresh handshake");
    r.start().expect("fresh handshake");
    let step = |h: &mut Handshake, bytes: &[u8]| match h.handle_bytes(bytes) {
        Ok(HandshakeProgress::Continue { send }) => (send, None),
        Ok(HandshakeProgress::Done {
            send,
            outcome: HandshakeOutcome::Established(e),
            ..
        }) => (send, Some(e.channel)),
        other => panic!("in-memory handshake failed: {other:?}"),
    };
    let (to_i, _) = step(&mut r, &first);
    let (to_r, ic) = step(&mut i, &to_i);
    let (_, rc) = step(&mut r, &to_r);
    let (mut ic, mut rc) = (ic.expect("initiator done"), rc.expect("responder done"));
    let limits = DataLimits {
        rekey_after_packets: 2,
        ..DataLimits::default()
    };
    ic.set_rekey_limits(&limits);
    rc.set_rekey_limits(&limits);
    (ic, rc)
}

/// The crypto targets' seeds.
pub fn seeds() -> Vec<Seed> {
    let seed = |target, name, bytes| Seed {
        target,
        name,
        bytes,
    };
    let mut out = Vec::new();

    // handshake: [flags, chunk] then the peer's bytes, or mutations.
    let hello_pw = |verdict: u8| {
        let mut h = vec![1, 1, 1, verdict];
        h.extend(psk(9).id().0);
        h
    };
    // A responder's view: the initiator's Hello then a message 1 (any 32
    // bytes are an ephemeral key), then garbage as message 3.
    let mut responder = vec![0b01, 0xff];
    responder.extend(hello_pw(0));
    responder.extend([0, 32]);
    responder.extend([0x42; 32]);
    responder.extend([0, 64]);
    responder.extend([0x17; 64]);
    out.push(seed("handshake", "responder-password", responder));
    let mut initiator = vec![0b00, 3];
    initiator.extend([1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    initiator.extend([0, 96]);
    initiator.extend([0x33; 96]);
    out.push(seed("handshake", "initiator-password", initiator));
    let mut plain = vec![0b0101, 0xff];
    plain.extend([1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    plain.extend(b"stream bytes");
    out.push(seed("handshake", "responder-plaintext", plain));
    // Man in the middle with a real peer: no mutation, then one bit flip
    // in message 2 (flight 1, byte 40).
    out.push(seed("handshake", "mitm-clean", vec![0b1000, 0xff]));
    out.push(seed(
        "handshake",
        "mitm-flip",
        vec![0b1000, 0xff, 1, 40, 0x01],
    ));
    out.push(seed("handshake", "mitm-keys-responder", vec![0b1011, 7]));

    // data_open: ops, see the target.
    let now = Instant::now();
    let (_, mut peer) = data_sessions(now, fuzz_limits());
    out.push(seed("data_open", "sealed", {
        let mut v = vec![0, 0];
        let d = seal(&mut peer, now, b"\xfe inner datagram");
        v.push(d.len() as u8);
        v.extend(d);
        v
    }));
    out.push(seed(
        "data_open",
        "ops",
        vec![
            1, 4, 1, 2, 3, 4, 2, 1, 8, 5, 6, 7, 8, 9, 10, 11, 12, 3, 4, 30, 2, 1, 1, 0,
        ],
    ));

    // data_fragments: ops, see the target.
    let (_, mut peer) = data_sessions(now, fuzz_limits());
    out.push(seed("data_fragments", "fragment", {
        let mut v = vec![0];
        let d = &seal_fragments(&mut peer, now, &[0x5a; 300], 100)[0];
        v.push(d.len() as u8);
        v.extend(d);
        v
    }));
    out.push(seed(
        "data_fragments",
        "ops",
        vec![
            1, 40, 20, 2, 4, 1, 30, 1, 7, 3, 9, 5, 2, 1, 200, 3, 4, 0, 0, 1,
        ],
    ));

    // channel_open: ops, see the target.
    out.push(seed(
        "channel_open",
        "records",
        b"\x01\x05hello\x01\x00\x02\x03abc\x00\x04\x00\x10\x00\x00".to_vec(),
    ));
    out.push(seed(
        "channel_open",
        "key-refusal",
        b"\x01\x05hello\x00\x03\x00\x00\x01".to_vec(),
    ));

    let kp = StaticKeypair::from_private(Zeroizing::new([7; 32]));
    out.push(seed(
        "key_files",
        "key-file",
        [vec![0], kp.to_file_text().as_bytes().to_vec()].concat(),
    ));
    out.push(seed(
        "key_files",
        "trusted-keys",
        format!(
            "\x01# nodes\n{}  # node-7\n\n{}\n",
            kp.public(),
            keypair(2).public()
        )
        .into_bytes(),
    ));
    out
}
