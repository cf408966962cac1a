//! A snapshot of the router for `weft status` and the HTTP API. Field names
//! are part of the API (`docs/api.md`): add, never rename.

use std::collections::BTreeMap;

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
    /// Encryption of the mesh; `"disabled"` until it is configured.
    #[serde(default)]
    pub encryption: EncryptionStatus,
    /// Connections that ended before their handshake completed, by reason
    /// (see `docs/api.md` for the reasons).
    #[serde(default)]
    pub handshake_failures: BTreeMap<String, u64>,
    /// Gossip traffic by channel and kind, since start.
    #[serde(default)]
    pub gossip: Vec<GossipStatus>,
    /// Addresses the host itself has on the bridge (`weft expose`).
    #[serde(default)]
    pub exposed: Vec<String>,
    /// Times the watchdog found a thread stuck on one piece of work, by
    /// thread (`weft-tap`, `weft-udp`, `router task`); 0 is healthy.
    #[serde(default)]
    pub watchdog_stalls: BTreeMap<String, u64>,
}

impl RouterStatus {
    /// Connections and targets counted the way `weft status` and the
    /// metrics show them.
    pub fn connection_counts(&self) -> ConnectionCounts {
        let mut counts = ConnectionCounts::default();
        for c in &self.connections {
            match c.state.as_str() {
                "established" => counts.established += 1,
                _ => counts.pending += 1,
            }
        }
        for t in &self.targets {
            match t.state.as_str() {
                "connecting" => counts.pending += 1,
                "retrying" if t.failures >= FAILED_AFTER => counts.failed += 1,
                "retrying" => counts.retrying += 1,
                _ => {}
            }
        }
        counts
    }
}

/// Consecutive failures after which a retrying target counts as failed
/// rather than retrying: a peer that refused three times in a row is
/// most likely down or blocked, not briefly unavailable.
pub const FAILED_AFTER: u32 = 3;

/// Connections by state: established and handshaking connections, plus
/// targets being dialled (pending), waiting to retry after fewer than
/// [`FAILED_AFTER`] failures (retrying) or after more (failed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionCounts {
    pub established: usize,
    pub pending: usize,
    pub retrying: usize,
    pub failed: usize,
}

impl ConnectionCounts {
    /// `(state, count)` in display order.
    pub fn by_state(&self) -> [(&'static str, usize); 4] {
        [
            ("established", self.established),
            ("pending", self.pending),
            ("retrying", self.retrying),
            ("failed", self.failed),
        ]
    }
}

/// How the mesh is encrypted, and the counters of the encryption layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionStatus {
    /// `"disabled"`, or the mode once encryption is configured.
    pub mode: String,
    /// Datagrams dropped because they replayed an earlier one.
    #[serde(default)]
    pub replay_drops: u64,
    /// Data-session keys replaced since start (our sending side).
    #[serde(default)]
    pub rekeys: u64,
    /// Control-channel keys replaced since start (our sending side).
    #[serde(default)]
    pub control_rekeys: u64,
}

impl Default for EncryptionStatus {
    fn default() -> Self {
        Self {
            mode: "disabled".into(),
            replay_drops: 0,
            rekeys: 0,
            control_rekeys: 0,
        }
    }
}

/// Gossip messages and bytes of one channel and kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipStatus {
    pub channel: String,
    /// `delta`, `full_state`, `unicast` or `broadcast`.
    pub kind: String,
    pub sent_messages: u64,
    pub sent_bytes: u64,
    pub received_messages: u64,
    pub received_bytes: u64,
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
    pub dropped: BTreeMap<String, u64>,
    pub tap_write_errors: u64,
    pub udp_too_big: u64,
    pub udp_send_failed: u64,
    /// Control datagrams (heartbeats, probes) dropped because the UDP
    /// socket's buffer was full when the router task sent them.
    #[serde(default)]
    pub control_send_dropped: u64,
    /// Frames datagrams from an address that is no neighbour's.
    pub unknown_sender: u64,
    /// Neighbours we share an encrypted data session with.
    #[serde(default)]
    pub encrypted_sessions: usize,
    /// Data-session rekeys (our sending side) since start.
    #[serde(default)]
    pub rekeys: u64,
    /// Encrypted datagrams dropped, by reason: `replay_duplicate`,
    /// `replay_too_old`, `auth_failed` (forged or corrupted), `truncated`,
    /// `unknown_index`, `unknown_epoch`, `bad_magic`.
    #[serde(default)]
    pub crypto_dropped: std::collections::BTreeMap<String, u64>,
    /// Plaintext datagrams refused from a neighbour that encrypts.
    #[serde(default)]
    pub plaintext_refused: u64,
    /// Bytes of Ethernet frames read from the TAP device.
    #[serde(default)]
    pub bytes_from_tap: u64,
    /// Bytes of Ethernet frames written to the TAP device.
    #[serde(default)]
    pub bytes_to_tap: u64,
    /// UDP payload bytes sent to peers (own frames and relayed), as on the
    /// wire (sealed when encrypted).
    #[serde(default)]
    pub bytes_sent: u64,
    /// UDP payload bytes received from the mesh.
    #[serde(default)]
    pub bytes_received: u64,
    /// Bytes of datagrams forwarded for other peers.
    #[serde(default)]
    pub bytes_relayed: u64,
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
    /// "noise" when the connection (control and data) is encrypted,
    /// "none" for plaintext, absent while handshaking.
    #[serde(default)]
    pub encryption: Option<String>,
    /// The peer's authenticated public key, when encrypted.
    #[serde(default)]
    pub remote_key: Option<String>,
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
