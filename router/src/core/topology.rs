//! The mesh's shared picture: every peer's versioned list of connections.
//!
//! Each peer owns exactly one entry, its own, and bumps its version whenever
//! its connections change. Entries travel by gossip; a receiver keeps, per
//! peer name, the entry with the highest `(version, uid)`. Peers that are no
//! longer reachable over symmetric established connections stop being
//! gossiped at once and are garbage-collected after a grace period, which
//! lets late or reordered updates that would make them reachable again land
//! without a full-state round trip.

use std::collections::{HashMap, HashSet};
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use crate::core::gossip::{Channel, ChannelCtx, ChannelError};
use crate::core::identity::{Identity, PeerName, PeerUid};
use crate::core::routes::{Graph, Routes};
use crate::core::wire::topology::{ConnEntry, PeerEntry, TopologyUpdate};

/// What merging an update changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MergeOutcome {
    /// Entries that were new to us, our own included if we had to bump it;
    /// this is the delta to pass on.
    pub delta: Vec<PeerEntry>,
    /// Peers first seen in this update.
    pub joined: Vec<PeerName>,
    /// An entry claimed our name with a different UID: either our previous
    /// incarnation (a restart) or a name collision with a live peer.
    pub superseded_other_incarnation: Option<PeerUid>,
}

#[derive(Debug)]
pub struct Topology {
    local: PeerName,
    peers: HashMap<PeerName, PeerEntry>,
    unreachable_since: HashMap<PeerName, Instant>,
    routes: Routes,
    /// Routes over connections that carry data (UDP both ways).
    data_routes: Routes,
    gc_grace: Duration,
}

impl Topology {
    pub fn new(identity: &Identity, gc_grace: Duration) -> Self {
        let local = PeerEntry {
            name: identity.name,
            nickname: identity.nickname.clone(),
            uid: identity.uid,
            version: 1,
            connections: Vec::new(),
        };
        let mut t = Self {
            local: identity.name,
            peers: HashMap::from([(identity.name, local)]),
            unreachable_since: HashMap::new(),
            routes: Routes::default(),
            data_routes: Routes::default(),
            gc_grace,
        };
        t.recompute(None);
        t
    }

    pub fn local_name(&self) -> PeerName {
        self.local
    }

    pub fn local_entry(&self) -> &PeerEntry {
        &self.peers[&self.local]
    }

    pub fn get(&self, peer: PeerName) -> Option<&PeerEntry> {
        self.peers.get(&peer)
    }

    /// All known peers, reachable or not (GC has not yet dropped them).
    pub fn peers(&self) -> impl Iterator<Item = &PeerEntry> {
        self.peers.values()
    }

    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    pub fn routes_mut(&mut self) -> &mut Routes {
        &mut self.routes
    }

    /// Routes for frames: only over connections both ends flag as carrying
    /// data, so traffic avoids a link whose UDP is blocked.
    pub fn data_routes(&self) -> &Routes {
        &self.data_routes
    }

    /// Number of reachable peers, us included.
    pub fn reachable_count(&self) -> usize {
        self.peers
            .keys()
            .filter(|&&p| self.routes.reachable(p))
            .count()
    }

    /// Replaces our own connection list; bumps our version if it changed.
    /// Returns our new entry when it did (the delta to gossip).
    pub fn set_local_connections(
        &mut self,
        now: Instant,
        mut connections: Vec<ConnEntry>,
    ) -> Option<PeerEntry> {
        connections.sort_by_key(|c| c.peer);
        let local = self.peers.get_mut(&self.local)?;
        if local.connections == connections {
            return None;
        }
        local.connections = connections;
        local.version += 1;
        let entry = local.clone();
        self.recompute(Some(now));
        Some(entry)
    }

    /// Merges an update received from `from`.
    pub fn merge(&mut self, now: Instant, update: TopologyUpdate) -> MergeOutcome {
        let mut out = MergeOutcome::default();
        let mut local_bumped = false;
        for incoming in update.peers {
            if incoming.name == self.local {
                let Some(local) = self.peers.get_mut(&self.local) else {
                    continue;
                };
                if incoming.uid != local.uid || incoming.version > local.version {
                    if incoming.uid != local.uid {
                        out.superseded_other_incarnation = Some(incoming.uid);
                    }
                    // Our entry must outrank whatever is circulating under our
                    // name, or the mesh would keep the stale one.
                    if incoming.version >= local.version {
                        local.version = incoming.version + 1;
                        local_bumped = true;
                    }
                }
                continue;
            }
            let newer = match self.peers.get(&incoming.name) {
                None => {
                    out.joined.push(incoming.name);
                    true
                }
                Some(have) => (incoming.version, incoming.uid) > (have.version, have.uid),
            };
            if newer {
                out.delta.push(incoming.clone());
                self.peers.insert(incoming.name, incoming);
            }
        }
        if local_bumped {
            out.delta.push(self.local_entry().clone());
        }
        if !out.delta.is_empty() {
            self.recompute(Some(now));
        }
        out
    }

    /// Entries worth sending in full state: ourselves and every reachable
    /// peer. Unreachable entries are withheld so a peer we garbage-collected
    /// cannot be resurrected by a neighbour that has not yet done so.
    pub fn full_state(&self) -> Vec<PeerEntry> {
        let mut peers: Vec<PeerEntry> = self
            .peers
            .values()
            .filter(|e| self.routes.reachable(e.name))
            .cloned()
            .collect();
        peers.sort_by_key(|e| e.name);
        peers
    }

    /// Drops peers that have been unreachable for the grace period.
    pub fn gc(&mut self, now: Instant) -> Vec<PeerEntry> {
        let expired: Vec<PeerName> = self
            .unreachable_since
            .iter()
            .filter(|&(_, &since)| now.saturating_duration_since(since) >= self.gc_grace)
            .map(|(&p, _)| p)
            .collect();
        let mut removed = Vec::with_capacity(expired.len());
        for p in expired {
            self.unreachable_since.remove(&p);
            if let Some(e) = self.peers.remove(&p) {
                removed.push(e);
            }
        }
        removed
    }

    /// When the next GC could remove something.
    pub fn next_gc(&self) -> Option<Instant> {
        self.unreachable_since
            .values()
            .min()
            .map(|&t| t + self.gc_grace)
    }

    /// The symmetric graph of the connections `keep` accepts.
    fn graph_of(&self, keep: fn(&ConnEntry) -> bool) -> Graph {
        let claims: Vec<(PeerName, Vec<PeerName>)> = self
            .peers
            .values()
            .map(|e| {
                (
                    e.name,
                    e.connections
                        .iter()
                        .filter(|c| keep(c))
                        .map(|c| c.peer)
                        .collect(),
                )
            })
            .collect();
        Graph::from_claims(claims.iter().map(|(p, c)| (*p, c.as_slice())))
    }

    fn recompute(&mut self, now: Option<Instant>) {
        self.routes = Routes::compute(self.local, self.graph_of(ConnEntry::established));
        self.data_routes = Routes::compute(self.local, self.graph_of(ConnEntry::data));
        let reachable: HashSet<PeerName> = self
            .peers
            .keys()
            .copied()
            .filter(|&p| self.routes.reachable(p))
            .collect();
        self.unreachable_since
            .retain(|p, _| !reachable.contains(p) && self.peers.contains_key(p));
        if let Some(now) = now {
            for &p in self.peers.keys() {
                if !reachable.contains(&p) {
                    self.unreachable_since.entry(p).or_insert(now);
                }
            }
        }
    }
}

/// The topology as a gossip channel, behind the same [`Channel`]
/// interface as every other channel. Merges are kept for the router to
/// react to (routes, discovery, logs) once the handler returns.
#[derive(Debug)]
pub struct TopologyChannel {
    topology: Topology,
    merged: Vec<(PeerName, MergeOutcome)>,
}

impl TopologyChannel {
    pub fn new(topology: Topology) -> Self {
        Self {
            topology,
            merged: Vec::new(),
        }
    }

    /// What each merge since the last call did, with the neighbour that
    /// sent it.
    pub fn take_merged(&mut self) -> Vec<(PeerName, MergeOutcome)> {
        std::mem::take(&mut self.merged)
    }
}

impl Deref for TopologyChannel {
    type Target = Topology;
    fn deref(&self) -> &Topology {
        &self.topology
    }
}

impl DerefMut for TopologyChannel {
    fn deref_mut(&mut self) -> &mut Topology {
        &mut self.topology
    }
}

/// What the topology channel answers a unicast or broadcast: topology
/// travels as plain gossip alone.
fn plain_gossip_only() -> ChannelError {
    ChannelError::Refused("the topology channel carries plain gossip only".into())
}

impl Channel for TopologyChannel {
    fn on_gossip(
        &mut self,
        ctx: &mut ChannelCtx,
        from: PeerName,
        payload: &[u8],
    ) -> Result<(), ChannelError> {
        let update = TopologyUpdate::decode(payload)?;
        let outcome = self.topology.merge(ctx.now, update);
        for chunk in TopologyUpdate::encode_chunked(outcome.delta.clone()) {
            ctx.gossip(chunk);
        }
        self.merged.push((from, outcome));
        Ok(())
    }

    fn on_unicast(
        &mut self,
        _: &mut ChannelCtx,
        _: PeerName,
        _: &[u8],
    ) -> Result<(), ChannelError> {
        Err(plain_gossip_only())
    }

    fn on_broadcast(
        &mut self,
        _: &mut ChannelCtx,
        _: PeerName,
        _: &[u8],
    ) -> Result<(), ChannelError> {
        Err(plain_gossip_only())
    }

    fn full_state(&self) -> Vec<Vec<u8>> {
        TopologyUpdate::encode_chunked(self.topology.full_state())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::wire::topology::FLAG_ESTABLISHED;

    fn n(v: u64) -> PeerName {
        PeerName::from_u64(v).unwrap()
    }

    fn ident(v: u64, uid: u64) -> Identity {
        Identity {
            name: n(v),
            nickname: format!("p{v}"),
            uid: PeerUid(uid),
        }
    }

    fn conns(peers: &[u64]) -> Vec<ConnEntry> {
        peers
            .iter()
            .map(|&p| ConnEntry {
                peer: n(p),
                addr: None,
                flags: FLAG_ESTABLISHED,
            })
            .collect()
    }

    fn entry(v: u64, uid: u64, version: u64, peers: &[u64]) -> PeerEntry {
        PeerEntry {
            name: n(v),
            nickname: format!("p{v}"),
            uid: PeerUid(uid),
            version,
            connections: conns(peers),
        }
    }

    #[test]
    fn newest_version_wins_and_uid_breaks_ties() {
        let t0 = Instant::now();
        let mut t = Topology::new(&ident(1, 1), Duration::from_secs(10));
        t.set_local_connections(t0, conns(&[2]));
        let m = t.merge(
            t0,
            TopologyUpdate {
                peers: vec![entry(2, 5, 3, &[1])],
            },
        );
        assert_eq!(m.joined, vec![n(2)]);
        assert_eq!(t.routes().next_hop(n(2)), Some(n(2)));
        // older version ignored, no delta
        assert!(
            t.merge(
                t0,
                TopologyUpdate {
                    peers: vec![entry(2, 5, 2, &[])]
                }
            )
            .delta
            .is_empty()
        );
        // same version, higher uid wins
        let m = t.merge(
            t0,
            TopologyUpdate {
                peers: vec![entry(2, 9, 3, &[])],
            },
        );
        assert_eq!(m.delta.len(), 1);
        assert_eq!(t.get(n(2)).unwrap().uid, PeerUid(9));
        assert!(
            !t.routes().reachable(n(2)),
            "new entry lists no connection back to us"
        );
    }

    #[test]
    fn a_stale_entry_about_ourselves_makes_us_outrank_it() {
        let t0 = Instant::now();
        let mut t = Topology::new(&ident(1, 2), Duration::from_secs(10));
        let m = t.merge(
            t0,
            TopologyUpdate {
                peers: vec![entry(1, 1, 40, &[3])],
            },
        );
        assert_eq!(m.superseded_other_incarnation, Some(PeerUid(1)));
        assert_eq!(t.local_entry().version, 41);
        assert_eq!(t.local_entry().uid, PeerUid(2));
        assert_eq!(m.delta, vec![t.local_entry().clone()]);
    }

    #[test]
    fn unreachable_peers_are_withheld_then_collected() {
        let t0 = Instant::now();
        let mut t = Topology::new(&ident(1, 1), Duration::from_secs(10));
        t.set_local_connections(t0, conns(&[2]));
        t.merge(
            t0,
            TopologyUpdate {
                peers: vec![entry(2, 2, 1, &[1, 3]), entry(3, 3, 1, &[2])],
            },
        );
        assert_eq!(t.routes().next_hop(n(3)), Some(n(2)));
        assert_eq!(t.full_state().len(), 3);
        t.set_local_connections(t0 + Duration::from_secs(1), conns(&[]));
        assert_eq!(t.full_state().len(), 1);
        assert!(t.gc(t0 + Duration::from_secs(5)).is_empty());
        let removed = t.gc(t0 + Duration::from_secs(11));
        assert_eq!(removed.len(), 2);
        assert_eq!(t.peers().count(), 1);
    }

    #[test]
    fn a_peer_that_becomes_reachable_again_is_not_collected() {
        let t0 = Instant::now();
        let mut t = Topology::new(&ident(1, 1), Duration::from_secs(10));
        t.merge(
            t0,
            TopologyUpdate {
                peers: vec![entry(2, 2, 1, &[1])],
            },
        );
        assert!(t.next_gc().is_some());
        t.set_local_connections(t0 + Duration::from_secs(1), conns(&[2]));
        assert!(t.next_gc().is_none());
        assert!(t.gc(t0 + Duration::from_secs(60)).is_empty());
    }
}
