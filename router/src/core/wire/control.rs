//! The messages carried in control-connection frames.
//!
//! Each frame payload is one postcard-encoded [`ControlMessage`]; the first
//! byte is the variant index (see `docs/protocol.md` for every field).

use serde::{Deserialize, Serialize};

use super::{WireError, decode, encode};
use crate::core::identity::{PeerName, PeerUid, validate_nickname};

/// Longest gossip channel name accepted, in bytes.
pub const MAX_CHANNEL_LEN: usize = 32;

/// What a router says about itself once the protocol version is agreed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Features {
    pub name: PeerName,
    pub nickname: String,
    pub uid: PeerUid,
    /// This side's random half of the connection id.
    pub conn_half: u64,
    /// The TCP port this router accepts connections on; combined with the
    /// connection's remote IP it tells others how to reach the sender.
    pub listen_port: u16,
    /// The UDP port this router receives data on (the same number as the
    /// TCP port unless configured otherwise).
    pub udp_port: u16,
    /// The sender sees the receiver's address inside its `--trusted-subnets`:
    /// if both sides say so, data between them is not encrypted (the
    /// control connection always is, when encryption is on).
    pub trusts_you: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlMessage {
    /// 0: first frame in each direction, exactly once.
    Features(Features),
    /// 1: liveness; sent every heartbeat interval when nothing else was.
    Heartbeat,
    /// 2: plain gossip from a direct neighbour, merged and passed on if new.
    Gossip { channel: String, payload: Vec<u8> },
    /// 3: addressed to `dst`, relayed hop by hop along unicast routes;
    /// each relay decrements `hop_limit` and drops the message at 1.
    GossipUnicast {
        channel: String,
        src: PeerName,
        dst: PeerName,
        hop_limit: u8,
        payload: Vec<u8>,
    },
    /// 4: from `src` to every peer, forwarded down `src`'s spanning tree.
    GossipBroadcast {
        channel: String,
        src: PeerName,
        payload: Vec<u8>,
    },
    /// 5: the sender is closing the connection and says why.
    Close { reason: String },
}

/// Longest close reason we send or accept, in bytes.
pub const MAX_REASON_LEN: usize = 256;

impl ControlMessage {
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Parses and validates a frame payload.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let msg: ControlMessage = decode("control message", bytes)?;
        msg.validate()?;
        Ok(msg)
    }

    fn validate(&self) -> Result<(), WireError> {
        let malformed = |detail: String| WireError::Malformed {
            what: "control message",
            detail,
        };
        match self {
            ControlMessage::Features(f) => {
                validate_nickname(&f.nickname).map_err(|e| malformed(e.to_string()))?;
                if f.listen_port == 0 || f.udp_port == 0 {
                    return Err(malformed("features carry port 0".into()));
                }
            }
            ControlMessage::Gossip { channel, .. }
            | ControlMessage::GossipUnicast { channel, .. }
            | ControlMessage::GossipBroadcast { channel, .. } => {
                validate_channel(channel).map_err(malformed)?
            }
            ControlMessage::Close { reason } if reason.len() > MAX_REASON_LEN => {
                return Err(malformed(format!("close reason of {} bytes", reason.len())));
            }
            ControlMessage::Close { .. } | ControlMessage::Heartbeat => {}
        }
        Ok(())
    }
}

/// Channel names are short lowercase identifiers such as `topology`.
pub fn validate_channel(channel: &str) -> Result<(), String> {
    if channel.is_empty()
        || channel.len() > MAX_CHANNEL_LEN
        || !channel
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!("invalid gossip channel name {channel:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name(v: u64) -> PeerName {
        PeerName::from_u64(v).unwrap()
    }

    #[test]
    fn features_bytes_are_as_documented() {
        let msg = ControlMessage::Features(Features {
            name: name(0x0201_0203_0405),
            nickname: "h1".into(),
            uid: PeerUid(1),
            conn_half: 0x80,
            listen_port: 6783,
            udp_port: 6783,
            trusts_you: true,
        });
        let bytes = msg.encode();
        assert_eq!(
            bytes,
            [
                0x00, // variant 0: Features
                0x85, 0x88, 0x8c, 0x90, 0x90, 0x40, // name 0x020102030405 as varint
                0x02, b'h', b'1', // nickname
                0x01, // uid
                0x80, 0x01, // conn_half 128
                0xff, 0x34, // listen port 6783
                0xff, 0x34, // UDP port 6783
                0x01, // trusts_you
            ]
        );
        assert_eq!(ControlMessage::decode(&bytes), Ok(msg));
    }

    #[test]
    fn heartbeat_and_gossip_bytes_are_as_documented() {
        assert_eq!(ControlMessage::Heartbeat.encode(), [0x01]);
        let g = ControlMessage::GossipUnicast {
            channel: "ab".into(),
            src: name(1),
            dst: name(2),
            hop_limit: 64,
            payload: vec![0xee],
        };
        assert_eq!(
            g.encode(),
            [0x03, 0x02, b'a', b'b', 0x01, 0x02, 0x40, 0x01, 0xee]
        );
    }

    #[test]
    fn rejects_invalid_fields_and_trailing_bytes() {
        let bad_channel = ControlMessage::Gossip {
            channel: "Top ology".into(),
            payload: vec![],
        }
        .encode();
        assert!(ControlMessage::decode(&bad_channel).is_err());
        let mut hb = ControlMessage::Heartbeat.encode();
        hb.push(0);
        assert!(matches!(
            ControlMessage::decode(&hb),
            Err(WireError::TrailingBytes { .. })
        ));
        assert!(ControlMessage::decode(&[0x09]).is_err());
        assert!(ControlMessage::decode(&[]).is_err());
        // A nickname length far beyond the frame must fail cleanly.
        assert!(ControlMessage::decode(&[0x00, 0x01, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = ControlMessage::decode(&bytes);
        }

        #[test]
        fn gossip_round_trips(channel in "[a-z][a-z0-9-]{0,31}", src in 0u64..1 << 48, dst in 0u64..1 << 48,
                              payload in proptest::collection::vec(any::<u8>(), 0..100)) {
            for msg in [
                ControlMessage::Gossip { channel: channel.clone(), payload: payload.clone() },
                ControlMessage::GossipUnicast { channel: channel.clone(), src: name(src), dst: name(dst), hop_limit: src as u8, payload: payload.clone() },
                ControlMessage::GossipBroadcast { channel: channel.clone(), src: name(src), payload: payload.clone() },
            ] {
                prop_assert_eq!(ControlMessage::decode(&msg.encode()), Ok(msg));
            }
        }
    }
}
