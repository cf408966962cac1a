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
//! Topology is the built-in channel; address allocation and names register
//! their own [`Channel`]s on the same mechanism, and the topology channel
//! itself implements the same trait.
//!
//! A channel is a sans-IO state machine like the router around it: every
//! handler gets a [`ChannelCtx`] with the time and an outbox, a channel asks
//! for a wake-up with [`Channel::poll_timeout`], and it hears when peers
//! become reachable or unreachable. The router owns the channels, sends
//! what they put in the outbox once the handler returns, and gives their
//! state to the shell by type ([`crate::core::Router::channel`]).

use std::any::Any;
use std::collections::BTreeMap;
use std::time::Instant;

use rand::Rng;
use rand::seq::IndexedRandom;
use serde::Serialize;

use crate::core::identity::PeerName;
use crate::core::wire::WireError;

/// The channel that carries topology.
pub const TOPOLOGY_CHANNEL: &str = "topology";

/// Hops a unicast gossip message may take before it is dropped: far more
/// than any route in a mesh (whose diameter grows with the log of its
/// size), so only a routing loop while routes converge reaches it.
pub const UNICAST_HOP_LIMIT: u8 = 64;

/// Why a channel refused a message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// The payload does not decode: a bug or an attack from the sender.
    #[error("{0}")]
    Malformed(#[from] WireError),
    /// The payload decodes but cannot be accepted (it contradicts what the
    /// channel knows, or comes from a peer that may not send it).
    #[error("refused: {0}")]
    Refused(String),
}

/// A peer's reachability changed (as the topology's routes see it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerEvent {
    Reachable,
    Unreachable,
}

/// What a channel asks the router to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outgoing {
    /// Plain gossip to `fanout` neighbours (never back to the neighbour the
    /// message being handled came from).
    Gossip(Vec<u8>),
    /// To one peer, relayed along unicast routes.
    Unicast { dst: PeerName, payload: Vec<u8> },
    /// To every reachable peer, down our broadcast tree.
    Broadcast(Vec<u8>),
}

/// What a channel's handler is given: the time, who we are, and where to
/// put what it wants sent.
pub struct ChannelCtx<'a> {
    pub now: Instant,
    pub local: PeerName,
    out: &'a mut Vec<Outgoing>,
}

impl<'a> ChannelCtx<'a> {
    pub fn new(now: Instant, local: PeerName, out: &'a mut Vec<Outgoing>) -> Self {
        Self { now, local, out }
    }

    /// Gossips `payload` (a delta others should merge) to a few neighbours.
    pub fn gossip(&mut self, payload: Vec<u8>) {
        self.out.push(Outgoing::Gossip(payload));
    }

    /// Sends `payload` to `dst` wherever it is in the mesh.
    pub fn unicast(&mut self, dst: PeerName, payload: Vec<u8>) {
        self.out.push(Outgoing::Unicast { dst, payload });
    }

    /// Sends `payload` to every reachable peer, once each.
    pub fn broadcast(&mut self, payload: Vec<u8>) {
        self.out.push(Outgoing::Broadcast(payload));
    }
}

/// A gossip channel's state machine. Handlers take input and time and put
/// output in the context; none does I/O.
pub trait Channel: Any + Send {
    /// Plain gossip from neighbour `from`: merge it, and gossip on
    /// ([`ChannelCtx::gossip`]) only what was new.
    fn on_gossip(
        &mut self,
        ctx: &mut ChannelCtx,
        from: PeerName,
        payload: &[u8],
    ) -> Result<(), ChannelError>;
    /// A unicast message from `src` addressed to us.
    fn on_unicast(
        &mut self,
        ctx: &mut ChannelCtx,
        src: PeerName,
        payload: &[u8],
    ) -> Result<(), ChannelError>;
    /// A broadcast from `src`; the router forwards it whatever this returns.
    fn on_broadcast(
        &mut self,
        ctx: &mut ChannelCtx,
        src: PeerName,
        payload: &[u8],
    ) -> Result<(), ChannelError>;
    /// Complete state for a new neighbour and periodic repair, in chunks
    /// that each fit a frame.
    fn full_state(&self) -> Vec<Vec<u8>>;
    /// `peer` became reachable or unreachable.
    fn on_peer(&mut self, _ctx: &mut ChannelCtx, _peer: PeerName, _event: PeerEvent) {}
    /// The time [`Channel::poll_timeout`] asked for has come.
    fn on_timeout(&mut self, _ctx: &mut ChannelCtx) {}
    /// When the channel next wants [`Channel::on_timeout`].
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
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
    /// Unicast messages dropped at their hop limit (a routing loop).
    pub hop_limit_exceeded: u64,
    /// Messages a channel refused, by channel.
    pub refused: BTreeMap<String, u64>,
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
