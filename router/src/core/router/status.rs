//! The status snapshot, filled with everything the core knows:
//! connections, targets, peers and routes, encryption mode and control
//! rekeys, gossip counters. The shell adds what only it knows (data-plane
//! counters, watchdog stalls, exposed addresses, handshake failures).

use std::collections::BTreeMap;
use std::time::Instant;

use super::Router;
use crate::core::conn_maker::{TargetOrigin, TargetState};
use crate::core::connection::ConnState;
use crate::core::crypto::HandshakeConfig;
use crate::core::gossip::{GossipKind, GossipStats};
use crate::core::status::{
    ConnectionStatus, DataPathStatus, EncryptionStatus, GossipStatus, PeerConnectionStatus,
    PeerStatus, RouterStatus, TargetStatus,
};

impl Router {
    /// How new connections are protected, in words for `weft status`.
    pub fn encryption_mode(&self) -> &'static str {
        match &self.config.crypto {
            HandshakeConfig::Plaintext => "disabled",
            HandshakeConfig::Noise(n) => match (n.has_password(), n.has_trusted_keys()) {
                (true, true) => "noise (password and trusted keys)",
                (true, false) => "noise (password)",
                _ => "noise (trusted keys)",
            },
        }
    }

    pub fn status(&self, now: Instant) -> RouterStatus {
        let id = &self.config.identity;
        let connections = self
            .conns
            .values()
            .map(|c| {
                let remote = c.remote();
                ConnectionStatus {
                    peer: remote.map(|f| f.name.to_string()),
                    nickname: remote.map(|f| f.nickname.clone()),
                    address: c.remote_addr.to_string(),
                    direction: if c.is_outbound() {
                        "outbound"
                    } else {
                        "inbound"
                    }
                    .into(),
                    state: match c.state {
                        ConnState::Established { .. } => "established",
                        _ => "handshaking",
                    }
                    .into(),
                    conn_id: c.id().map(|i| i.to_string()),
                    protocol_version: match c.state {
                        ConnState::Established { version, .. }
                        | ConnState::AwaitFeatures { version }
                        | ConnState::AwaitCrypto { version } => Some(version),
                        ConnState::AwaitPreamble => None,
                    },
                    age_secs: now.saturating_duration_since(c.opened_at).as_secs(),
                    encryption: c.can_send_messages().then(|| {
                        if c.security.is_some() {
                            "noise"
                        } else {
                            "none"
                        }
                        .into()
                    }),
                    remote_key: c.security.as_ref().map(|s| s.remote_static.to_string()),
                    data_path: remote
                        .filter(|f| self.by_peer.get(&f.name) == Some(&c.handle))
                        .and_then(|f| self.paths.get(&f.name))
                        .map(|p| DataPathStatus {
                            udp_address: p.addr.to_string(),
                            usable: p.usable(now),
                            pmtu: p.payload_limit(),
                            pmtu_verified: p.pmtu_verified(),
                        }),
                }
            })
            .collect();
        let targets = self
            .maker
            .targets()
            .map(|(addr, t)| TargetStatus {
                address: addr.to_string(),
                origin: match t.origin {
                    TargetOrigin::User => "user".into(),
                    TargetOrigin::Discovered(_) => "discovered".into(),
                },
                state: match t.state {
                    TargetState::Connected(_) => "connected",
                    TargetState::Connecting => "connecting",
                    TargetState::Waiting if t.failures > 0 => "retrying",
                    TargetState::Waiting => "waiting",
                    TargetState::IsSelf => "self",
                }
                .into(),
                failures: t.failures,
                last_error: t.last_error.clone(),
                retry_in_secs: (t.state == TargetState::Waiting && t.failures > 0)
                    .then(|| t.next_attempt.saturating_duration_since(now).as_secs()),
            })
            .collect();
        let routes = self.topology.routes();
        let mut peers: Vec<PeerStatus> = self
            .topology
            .peers()
            .map(|e| PeerStatus {
                name: e.name.to_string(),
                nickname: e.nickname.clone(),
                uid: e.uid.to_string(),
                version: e.version,
                reachable: routes.reachable(e.name),
                is_local: e.name == id.name,
                next_hop: routes.next_hop(e.name).map(|h| h.to_string()),
                hops: routes.hops(e.name),
                connections: e
                    .connections
                    .iter()
                    .map(|c| PeerConnectionStatus {
                        peer: c.peer.to_string(),
                        address: c.addr.map(|a| a.to_string()),
                        outbound: c.outbound(),
                        established: c.established(),
                    })
                    .collect(),
            })
            .collect();
        peers.sort_by(|a, b| (!a.is_local, &a.name).cmp(&(!b.is_local, &b.name)));
        RouterStatus {
            name: id.name.to_string(),
            nickname: id.nickname.clone(),
            uid: id.uid.to_string(),
            version: env!("CARGO_PKG_VERSION").into(),
            protocol_min: *self.config.protocol_versions.start(),
            protocol_max: *self.config.protocol_versions.end(),
            listen_port: self.config.listen_port,
            discovery: self.config.discovery,
            topology_version: self.topology.local_entry().version,
            connections,
            targets,
            peers,
            data_plane: None,
            encryption: EncryptionStatus {
                mode: self.encryption_mode().into(),
                control_rekeys: self.control_rekeys,
                ..Default::default()
            },
            handshake_failures: Default::default(),
            gossip: gossip_status(&self.stats),
            exposed: Vec::new(),
            watchdog_stalls: BTreeMap::new(),
        }
    }
}

/// Gossip counters as the status reports them, one entry per channel and
/// kind.
fn gossip_status(stats: &GossipStats) -> Vec<GossipStatus> {
    let blank = |(channel, kind): &(String, GossipKind)| GossipStatus {
        channel: channel.clone(),
        kind: gossip_kind_name(*kind).into(),
        sent_messages: 0,
        sent_bytes: 0,
        received_messages: 0,
        received_bytes: 0,
    };
    let mut out: BTreeMap<(String, GossipKind), GossipStatus> = BTreeMap::new();
    for (key, c) in &stats.sent {
        let e = out.entry(key.clone()).or_insert_with(|| blank(key));
        e.sent_messages = c.messages;
        e.sent_bytes = c.bytes;
    }
    for (key, c) in &stats.received {
        let e = out.entry(key.clone()).or_insert_with(|| blank(key));
        e.received_messages = c.messages;
        e.received_bytes = c.bytes;
    }
    out.into_values().collect()
}

fn gossip_kind_name(kind: GossipKind) -> &'static str {
    match kind {
        GossipKind::Delta => "delta",
        GossipKind::FullState => "full_state",
        GossipKind::Unicast => "unicast",
        GossipKind::Broadcast => "broadcast",
    }
}
