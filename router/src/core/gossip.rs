//! Gossip as a mechanism: named channels and three ways to deliver.
//!
//! - **Gossip**: merge-able state sent to a few neighbours. A receiver merges
//!   it and passes on only what was new to it, to `fanout` neighbours chosen
//!   at random; periodically one random neighbour gets the full state, which
//!   repairs anything a rumour missed. A change therefore costs each peer a
//!   few small messages, not the whole state, however large the mesh.
//! - **Unicast**: addressed to one peer, relayed hop by hop along unicast
//!   routes.
//! - **Broadcast**: from one source to all, forwarded down the source's
//!   spanning tree, so every peer gets it exactly once in a stable topology.
//!
//! Topology is the built-in channel; address allocation and names will
//! register their own [`Gossiper`]s on the same mechanism.

use std::collections::BTreeMap;

use rand::Rng;
use rand::seq::IndexedRandom;
use serde::Serialize;

use crate::core::identity::PeerName;

/// The channel that carries topology.
pub const TOPOLOGY_CHANNEL: &str = "topology";

/// A gossip channel's state machine. All methods are pure with respect to
/// I/O: they take bytes and return bytes.
pub trait Gossiper: Send {
    /// Merges plain gossip; returns the part that was new to us, to pass on.
    fn on_gossip(&mut self, from: PeerName, payload: &[u8]) -> Result<Option<Vec<u8>>, String>;
    /// A unicast message addressed to us.
    fn on_unicast(&mut self, src: PeerName, payload: &[u8]) -> Result<(), String>;
    /// A broadcast from `src`; it is forwarded regardless of the result.
    fn on_broadcast(&mut self, src: PeerName, payload: &[u8]) -> Result<(), String>;
    /// Complete state for periodic anti-entropy, in chunks that each fit a frame.
    fn full_state(&self) -> Vec<Vec<u8>>;
}

/// How a gossip message travelled; bytes are accounted per kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GossipKind {
    /// Plain gossip carrying only what changed.
    Delta,
    /// Plain gossip carrying full state (new connections, periodic repair).
    FullState,
    Unicast,
    Broadcast,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counter {
    pub messages: u64,
    pub bytes: u64,
}

impl Counter {
    pub fn add(&mut self, bytes: usize) {
        self.messages += 1;
        self.bytes += bytes as u64;
    }
}

/// Gossip traffic this router sent and received, per channel and kind.
/// Bytes are whole frames including the length prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GossipStats {
    pub sent: BTreeMap<(String, GossipKind), Counter>,
    pub received: BTreeMap<(String, GossipKind), Counter>,
    /// Unicast or broadcast messages we could not forward (no route).
    pub undeliverable: u64,
}

impl GossipStats {
    pub fn record_sent(&mut self, channel: &str, kind: GossipKind, bytes: usize) {
        self.sent
            .entry((channel.to_owned(), kind))
            .or_default()
            .add(bytes);
    }

    pub fn record_received(&mut self, channel: &str, kind: GossipKind, bytes: usize) {
        self.received
            .entry((channel.to_owned(), kind))
            .or_default()
            .add(bytes);
    }

    /// Total bytes sent of one kind over all channels.
    pub fn sent_bytes(&self, kind: GossipKind) -> u64 {
        self.sent
            .iter()
            .filter(|((_, k), _)| *k == kind)
            .map(|(_, c)| c.bytes)
            .sum()
    }

    pub fn total_sent_bytes(&self) -> u64 {
        self.sent.values().map(|c| c.bytes).sum()
    }
}

/// How many neighbours a delta goes to, for a mesh of `known_peers`:
/// `max(3, ⌊log2 N⌋ + 1)` (the bit length of N). Rumour spreading reaches everyone with high
/// probability at this fanout; periodic full state catches the rest.
pub fn fanout(known_peers: usize) -> usize {
    let log2 = usize::BITS - known_peers.max(1).leading_zeros();
    (log2 as usize).max(3)
}

/// Picks up to `k` neighbours at random, never `exclude`.
pub fn choose_neighbours(
    rng: &mut impl Rng,
    neighbours: &[PeerName],
    exclude: Option<PeerName>,
    k: usize,
) -> Vec<PeerName> {
    let candidates: Vec<PeerName> = neighbours
        .iter()
        .copied()
        .filter(|&n| Some(n) != exclude)
        .collect();
    if candidates.len() <= k {
        return candidates;
    }
    candidates.choose_multiple(rng, k).copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn fanout_grows_logarithmically() {
        assert_eq!(fanout(1), 3);
        assert_eq!(fanout(100), 7);
        assert_eq!(fanout(1000), 10);
        assert_eq!(fanout(100_000), 17);
    }

    #[test]
    fn chooses_distinct_neighbours_excluding_the_sender() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let ns: Vec<PeerName> = (1..=20).map(|v| PeerName::from_u64(v).unwrap()).collect();
        let picked = choose_neighbours(&mut rng, &ns, Some(ns[0]), 5);
        assert_eq!(picked.len(), 5);
        assert!(!picked.contains(&ns[0]));
        let set: std::collections::HashSet<_> = picked.iter().collect();
        assert_eq!(set.len(), 5);
        assert_eq!(
            choose_neighbours(&mut rng, &ns[..2], Some(ns[0]), 5),
            vec![ns[1]]
        );
    }
}
