//! A `Connection` fed an arbitrary byte stream: the whole handshake path.
//!
//! Input: byte 0 holds flags (bits 0-1 a [`Prefix`] of valid handshake put
//! before the fuzzed bytes, `CONN_FLAG_OUTBOUND`, `CONN_FLAG_WIDE_VERSIONS`),
//! byte 1 the read size minus one; the rest is the stream. Besides never
//! panicking, the events must follow the handshake: at most one
//! `VersionAgreed` (first, within our range, after any handshake bytes to
//! send), then at most one `Features`,
//! and only after that `Message`s, never features or close.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use weft_router::core::connection::{ConnEvent, ConnState, Connection, Direction};
use weft_router::core::crypto::{DataLimits, HandshakeConfig};
use weft_router::core::identity::ConnId;
use weft_router::core::wire::addr::PeerAddr;
use weft_router::core::wire::control::ControlMessage;
use weft_router::core::wire::preamble::{PROTOCOL_MAX, PROTOCOL_MIN, Preamble};
use weft_router_fuzz::{
    CONN_FLAG_OUTBOUND, CONN_FLAG_WIDE_VERSIONS, CONNECTION_HEADER_LEN, PEER_UID, Prefix,
    peer_socket, split,
};

fuzz_target!(|data: &[u8]| {
    let Some((header, fuzz)) = data.split_at_checked(CONNECTION_HEADER_LEN) else {
        return;
    };
    let (flags, chunk) = (header[0], header[1]);
    let direction = if flags & CONN_FLAG_OUTBOUND != 0 {
        Direction::Outbound {
            target: PeerAddr::from_socket(peer_socket(6783)),
        }
    } else {
        Direction::Inbound
    };
    let versions = if flags & CONN_FLAG_WIDE_VERSIONS != 0 {
        1..=3
    } else {
        PROTOCOL_MIN..=PROTOCOL_MAX
    };
    let mut now = Instant::now();
    let local_half = 0x0f0f;
    let mut c = Connection::new(
        now,
        1,
        direction,
        peer_socket(40000),
        Preamble::new(versions.clone()),
        local_half,
        HandshakeConfig::Plaintext,
        DataLimits::default(),
        7,
    );
    let stream = Prefix::from_bits(flags).stream(PEER_UID, fuzz);

    let (mut agreed, mut featured) = (false, false);
    for read in split(&[chunk], &stream) {
        now += Duration::from_millis(10);
        let events = c.handle_bytes(now, read);
        // After `Closed` the router closes the connection; nothing more is read.
        let closed = matches!(events.last(), Some(ConnEvent::Closed(_)));
        assert_eq!(c.last_recv, now);
        for event in events {
            match event {
                ConnEvent::VersionAgreed(v) => {
                    assert!(!agreed, "versions agreed twice");
                    assert!(versions.contains(&v));
                    agreed = true;
                }
                ConnEvent::Features(f) => {
                    assert!(agreed && !featured, "features out of order");
                    featured = true;
                    assert_ne!(f.listen_port, 0);
                    assert_eq!(c.id(), Some(ConnId(local_half ^ f.conn_half)));
                    assert_eq!(c.remote(), Some(&f));
                }
                ConnEvent::Message(m) => {
                    assert!(featured, "message before features");
                    assert!(!matches!(
                        m,
                        ControlMessage::Features(_) | ControlMessage::Close { .. }
                    ));
                }
                ConnEvent::Send(bytes) => {
                    // Only handshake bytes, only before versions agree.
                    assert!(!agreed && !bytes.is_empty(), "handshake bytes out of order");
                }
                ConnEvent::Closed(_) => {}
            }
        }
        match c.state {
            ConnState::AwaitPreamble | ConnState::AwaitCrypto { .. } => assert!(!agreed),
            ConnState::AwaitFeatures { .. } => assert!(agreed && !featured),
            ConnState::Established { .. } => assert!(featured),
        }
        if closed {
            return;
        }
    }
});
