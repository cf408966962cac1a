//! A snapshot of the router for `weft status` and the HTTP API. Field names
//! are part of the API (`docs/api.md`): add, never rename.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterStatus {
    pub name: String,
    pub nickname: String,
    pub uid: String,
    /// The software version of this router.
    pub version: String,
    pub protocol_min: u8,
    pub protocol_max: u8,
    pub listen_port: u16,
    pub discovery: bool,
    /// Version of this peer's own topology entry.
    pub topology_version: u64,
    pub connections: Vec<ConnectionStatus>,
    pub targets: Vec<TargetStatus>,
    pub peers: Vec<PeerStatus>,
    /// Frame counters, when the data plane runs.
    pub data_plane: Option<DataPlaneStatus>,
}

/// Data-plane counters since start.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPlaneStatus {
    /// MAC addresses currently known (local and behind peers).
    pub macs: usize,
    pub frames_from_tap: u64,
    pub frames_to_tap: u64,
    pub frames_sent: u64,
    pub datagrams_relayed: u64,
    pub icmp_frag_needed: u64,
    pub fragmented: u64,
    /// Large frames (TCP super-segments, up to 64 KB) read from the TAP and
    /// sent whole as segment datagrams; also counted in `frames_sent`.
    #[serde(default)]
    pub large_frames_sent: u64,
    /// Large frames reassembled and written to the TAP whole.
    #[serde(default)]
    pub large_frames_delivered: u64,
    /// Large frames abandoned because a piece was lost or reordered.
    #[serde(default)]
    pub reassembly_abandoned: u64,
    /// Frames or datagrams dropped, by reason.
    pub dropped: std::collections::BTreeMap<String, u64>,
    pub tap_write_errors: u64,
    pub udp_too_big: u64,
    pub udp_send_failed: u64,
    /// Frames datagrams from an address that is no neighbour's.
    pub unknown_sender: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionStatus {
    /// Peer name, once the handshake told us.
    pub peer: Option<String>,
    pub nickname: Option<String>,
    /// Remote socket address of the TCP connection.
    pub address: String,
    /// "outbound" or "inbound".
    pub direction: String,
    /// "handshaking" or "established".
    pub state: String,
    pub conn_id: Option<String>,
    pub protocol_version: Option<u8>,
    /// Seconds since the connection opened.
    pub age_secs: u64,
    /// The UDP data path, for the established connection to a neighbour.
    pub data_path: Option<DataPathStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPathStatus {
    /// Where the neighbour receives UDP.
    pub udp_address: String,
    /// UDP heartbeats flow both ways, so frames use this connection.
    pub usable: bool,
    /// Largest UDP payload sent on this path.
    pub pmtu: usize,
    /// Whether `pmtu` was confirmed by a probe (else it is the safe minimum).
    pub pmtu_verified: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetStatus {
    pub address: String,
    /// "user" or "discovered".
    pub origin: String,
    /// "connected", "connecting", "retrying", "waiting" or "self".
    pub state: String,
    pub failures: u32,
    pub last_error: Option<String>,
    /// Seconds until the next attempt, when retrying.
    pub retry_in_secs: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub name: String,
    pub nickname: String,
    pub uid: String,
    pub version: u64,
    /// Whether a route to the peer exists; unreachable peers linger until GC.
    pub reachable: bool,
    /// This router itself.
    pub is_local: bool,
    /// The neighbour traffic to this peer goes through.
    pub next_hop: Option<String>,
    pub hops: Option<u32>,
    /// The peer's own connections: `(peer name, established)`.
    pub connections: Vec<PeerConnectionStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerConnectionStatus {
    pub peer: String,
    pub address: Option<String>,
    pub outbound: bool,
    pub established: bool,
}
