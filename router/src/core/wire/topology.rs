//! Payload of the `topology` gossip channel: peer entries, each a versioned
//! list of that peer's connections.

use serde::{Deserialize, Serialize};

use super::addr::WireAddr;
use super::{WireError, decode, encode};
use crate::core::identity::{PeerName, PeerUid, validate_nickname};

/// Full state is sent in chunks of at most this many encoded bytes, each a
/// self-contained update, so even a mesh of many thousand peers never needs a
/// frame near [`super::framing::MAX_FRAME_LEN`].
pub const FULL_STATE_CHUNK: usize = 256 * 1024;

/// Most connections one peer entry may list.
pub const MAX_CONNECTIONS_PER_PEER: usize = 4096;

/// `ConnEntry::flags` bit: the entry's owner dialled this connection.
pub const FLAG_OUTBOUND: u8 = 0x01;
/// `ConnEntry::flags` bit: the handshake completed and heartbeats flow.
pub const FLAG_ESTABLISHED: u8 = 0x02;
/// `ConnEntry::flags` bit: UDP heartbeats flow both ways, so the connection
/// can carry data. Data routes use only connections both ends flag so.
pub const FLAG_DATA: u8 = 0x04;
/// Bits this version understands; others are reserved: sent as zero,
/// ignored on receipt so later versions can add meaning.
pub const KNOWN_FLAGS: u8 = FLAG_OUTBOUND | FLAG_ESTABLISHED | FLAG_DATA;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologyUpdate {
    pub peers: Vec<PeerEntry>,
}

/// One peer's view of its own connections, owned and versioned by that peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEntry {
    pub name: PeerName,
    pub nickname: String,
    pub uid: PeerUid,
    /// Bumped by the owner on every change; the highest version wins.
    pub version: u64,
    pub connections: Vec<ConnEntry>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnEntry {
    pub peer: PeerName,
    /// Where the owner reaches `peer`: the remote IP of the connection and
    /// `peer`'s advertised listen port. Used for discovery.
    pub addr: Option<WireAddr>,
    pub flags: u8,
}

impl ConnEntry {
    pub fn outbound(&self) -> bool {
        self.flags & FLAG_OUTBOUND != 0
    }

    pub fn established(&self) -> bool {
        self.flags & FLAG_ESTABLISHED != 0
    }

    /// Established and usable for data (UDP works both ways).
    pub fn data(&self) -> bool {
        self.established() && self.flags & FLAG_DATA != 0
    }
}

impl TopologyUpdate {
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Parses and validates an update received from the network.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let update: TopologyUpdate = decode("topology update", bytes)?;
        for peer in &update.peers {
            peer.validate().map_err(|detail| WireError::Malformed {
                what: "topology update",
                detail: format!("entry for {}: {detail}", peer.name),
            })?;
        }
        Ok(update)
    }

    /// Splits entries into self-contained updates of at most
    /// [`FULL_STATE_CHUNK`] encoded bytes each.
    pub fn encode_chunked(peers: Vec<PeerEntry>) -> Vec<Vec<u8>> {
        let mut chunks = Vec::new();
        let mut current = Vec::new();
        let mut size = 0;
        for peer in peers {
            let len = encode(&peer).len();
            if !current.is_empty() && size + len > FULL_STATE_CHUNK {
                chunks.push(
                    TopologyUpdate {
                        peers: std::mem::take(&mut current),
                    }
                    .encode(),
                );
                size = 0;
            }
            size += len;
            current.push(peer);
        }
        if !current.is_empty() {
            chunks.push(TopologyUpdate { peers: current }.encode());
        }
        chunks
    }
}

impl PeerEntry {
    fn validate(&self) -> Result<(), String> {
        validate_nickname(&self.nickname).map_err(|e| e.to_string())?;
        if PeerName::from_u64(self.name.as_u64()).is_err() {
            return Err("peer name exceeds 48 bits".into());
        }
        if self.connections.len() > MAX_CONNECTIONS_PER_PEER {
            return Err(format!("{} connections listed", self.connections.len()));
        }
        let mut seen = std::collections::HashSet::with_capacity(self.connections.len());
        for c in &self.connections {
            if c.peer == self.name {
                return Err("lists a connection to itself".into());
            }
            if PeerName::from_u64(c.peer.as_u64()).is_err() {
                return Err("connection peer name exceeds 48 bits".into());
            }
            if !seen.insert(c.peer) {
                return Err(format!("lists {} twice", c.peer));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name(v: u64) -> PeerName {
        PeerName::from_u64(v).unwrap()
    }

    fn entry(n: u64, conns: &[u64]) -> PeerEntry {
        PeerEntry {
            name: name(n),
            nickname: format!("p{n}"),
            uid: PeerUid(n * 10),
            version: 3,
            connections: conns
                .iter()
                .map(|&c| ConnEntry {
                    peer: name(c),
                    addr: None,
                    flags: FLAG_ESTABLISHED,
                })
                .collect(),
        }
    }

    #[test]
    fn update_bytes_are_as_documented() {
        let update = TopologyUpdate {
            peers: vec![PeerEntry {
                name: name(1),
                nickname: "a".into(),
                uid: PeerUid(2),
                version: 3,
                connections: vec![ConnEntry {
                    peer: name(4),
                    addr: Some(WireAddr::V4([192, 0, 2, 9], 6783)),
                    flags: FLAG_OUTBOUND | FLAG_ESTABLISHED,
                }],
            }],
        };
        let bytes = update.encode();
        assert_eq!(
            bytes,
            [
                0x01, // one peer
                0x01, 0x01, b'a', 0x02, 0x03, // name, nickname, uid, version
                0x01, // one connection
                0x04, 0x01, 0x00, 192, 0, 2, 9, 0xff, 0x34, // peer, Some(V4 addr)
                0x03, // flags
            ]
        );
        assert_eq!(TopologyUpdate::decode(&bytes), Ok(update));
    }

    #[test]
    fn rejects_self_loops_duplicates_and_oversized_names() {
        let bad = |u: TopologyUpdate| TopologyUpdate::decode(&u.encode()).is_err();
        assert!(bad(TopologyUpdate {
            peers: vec![entry(1, &[1])]
        }));
        assert!(bad(TopologyUpdate {
            peers: vec![entry(1, &[2, 2])]
        }));
        let mut e = entry(1, &[2]);
        e.connections[0].peer = PeerName::from_u64(5).unwrap();
        assert!(!bad(TopologyUpdate { peers: vec![e] }));
        // a name of 2^48 encoded by hand: varint 0x80 0x80 0x80 0x80 0x80 0x80 0x40
        let raw = [
            0x01, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40, 0x01, b'a', 0x00, 0x00, 0x00,
        ];
        assert!(TopologyUpdate::decode(&raw).is_err());
    }

    #[test]
    fn chunks_are_bounded_and_complete() {
        let peers: Vec<PeerEntry> = (1..20_000)
            .map(|n| entry(n, &[n + 1, n + 2, n + 3]))
            .collect();
        let chunks = TopologyUpdate::encode_chunked(peers.clone());
        assert!(chunks.len() > 1);
        let mut back = Vec::new();
        for c in &chunks {
            assert!(c.len() <= FULL_STATE_CHUNK + 64);
            back.extend(TopologyUpdate::decode(c).unwrap().peers);
        }
        assert_eq!(back, peers);
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = TopologyUpdate::decode(&bytes);
        }
    }
}
