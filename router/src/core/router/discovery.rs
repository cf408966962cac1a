//! Targets, and what follows a topology change: our own entry, channels
//! told who came and went, discovered addresses, dials.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use tracing::{debug, info};

use super::{Action, Router};
use crate::core::conn_maker::{TargetOrigin, TargetState};
use crate::core::connection::Connection;
use crate::core::gossip::PeerEvent;
use crate::core::identity::PeerName;
use crate::core::wire::addr::{PeerAddr, WireAddr};
use crate::core::wire::topology::{ConnEntry, FLAG_DATA, FLAG_ESTABLISHED, FLAG_OUTBOUND};

impl Router {
    /// Dials these addresses now and keeps them connected.
    pub fn add_targets(&mut self, now: Instant, targets: impl IntoIterator<Item = PeerAddr>) {
        for t in targets {
            self.maker.add(now, t, TargetOrigin::User);
        }
        self.dial_due(now);
    }

    /// Stops dialling these addresses; returns the ones that were targets.
    pub fn forget_targets(&mut self, targets: &[PeerAddr]) -> Vec<PeerAddr> {
        targets
            .iter()
            .filter(|t| self.maker.forget(t))
            .cloned()
            .collect()
    }

    /// Addresses given by the user (what `--resume` would persist).
    pub fn user_targets(&self) -> Vec<PeerAddr> {
        self.maker
            .targets()
            .filter(|(_, t)| t.origin == TargetOrigin::User)
            .map(|(a, _)| a.clone())
            .collect()
    }

    /// Reacts to what the topology channel merged: logs, routes, discovery.
    /// (The channel itself gossiped the new entries on.)
    pub(super) fn after_topology_merges(&mut self, now: Instant) {
        let mut changed = false;
        for (from, outcome) in self.topology.take_merged() {
            self.log_merge(from, &outcome);
            changed |= !outcome.delta.is_empty();
        }
        if changed {
            self.topology_changed(now);
        }
    }

    fn log_merge(&self, from: PeerName, outcome: &crate::core::topology::MergeOutcome) {
        if let Some(uid) = outcome.superseded_other_incarnation {
            info!(
                stale_uid = %uid,
                "an entry under our name with another uid was circulating (our previous incarnation, or a name collision); our entry now outranks it"
            );
        }
        for p in &outcome.joined {
            if let Some(e) = self.topology.get(*p) {
                info!(peer = %p, nickname = %e.nickname, via = %from, "peer joined");
            }
        }
    }

    /// Rebuilds our own entry from established connections and gossips it
    /// if it changed.
    pub(super) fn update_local_entry(&mut self, now: Instant) {
        let entries: Vec<ConnEntry> = self
            .by_peer
            .iter()
            .filter_map(|(&peer, h)| {
                let c = self.conns.get(h)?;
                let data = self.paths.get(&peer).is_some_and(|p| p.reported_usable());
                let flags = FLAG_ESTABLISHED
                    | if c.is_outbound() { FLAG_OUTBOUND } else { 0 }
                    | if data { FLAG_DATA } else { 0 };
                Some(ConnEntry {
                    peer,
                    addr: c.remote_listen_addr().map(WireAddr::from),
                    flags,
                })
            })
            .collect();
        if let Some(entry) = self.topology.set_local_connections(now, entries) {
            self.spread_topology(now, vec![entry], None);
            self.topology_changed(now);
        }
    }

    /// Reacts to any change of the topology: channels hear who came and
    /// went, discovery targets, redials.
    pub(super) fn topology_changed(&mut self, now: Instant) {
        self.data_version += 1;
        self.tell_channels_reachability(now);
        if self.config.discovery {
            let me = self.config.identity.name;
            let routes = self.topology.routes();
            // Where reachable peers' entries (ours included) say each
            // reachable peer listens.
            let mut seen: HashMap<PeerName, BTreeSet<PeerAddr>> = HashMap::new();
            for e in self.topology.peers().filter(|e| routes.reachable(e.name)) {
                for c in &e.connections {
                    if c.peer != me
                        && routes.reachable(c.peer)
                        && let Some(addr) = c.addr
                    {
                        seen.entry(c.peer)
                            .or_default()
                            .insert(PeerAddr::from_socket(addr.into()));
                    }
                }
            }
            // A peer that went away (a crash, a reboot) keeps the addresses
            // it was last seen at, and is dialled there with backoff until
            // the topology forgets it: it may come back without dialling
            // anyone itself.
            let topology = &self.topology;
            self.last_addrs
                .retain(|&peer, _| topology.get(peer).is_some());
            self.last_addrs.extend(seen);
            let found: BTreeMap<PeerAddr, PeerName> = self
                .last_addrs
                .iter()
                .filter(|(peer, _)| !self.by_peer.contains_key(peer))
                .flat_map(|(&peer, addrs)| addrs.iter().map(move |a| (a.clone(), peer)))
                .collect();
            self.maker.set_discovered(now, found);
        }
        self.dial_due(now);
    }

    /// Tells every registered channel which peers became reachable or
    /// unreachable since the last change.
    fn tell_channels_reachability(&mut self, now: Instant) {
        let me = self.config.identity.name;
        let routes = self.topology.routes();
        let reachable: BTreeSet<PeerName> = self
            .topology
            .peers()
            .map(|e| e.name)
            .filter(|&p| p != me && routes.reachable(p))
            .collect();
        let events: Vec<(PeerName, PeerEvent)> = reachable
            .difference(&self.reachable)
            .map(|&p| (p, PeerEvent::Reachable))
            .chain(
                self.reachable
                    .difference(&reachable)
                    .map(|&p| (p, PeerEvent::Unreachable)),
            )
            .collect();
        self.reachable = reachable;
        if events.is_empty() {
            return;
        }
        let names: Vec<String> = self.channels.keys().cloned().collect();
        for name in names {
            for &(peer, event) in &events {
                self.run_channel(now, &name, None, |c, ctx| c.on_peer(ctx, peer, event));
            }
        }
    }

    pub(super) fn dial_due(&mut self, now: Instant) {
        // A target already served by an established connection (one the
        // peer dialled, or one to the discovered peer) needs no dial.
        let mut satisfied = Vec::new();
        for (addr, t) in self.maker.targets() {
            if t.state != TargetState::Waiting {
                continue;
            }
            let by_name = match t.origin {
                TargetOrigin::Discovered(peer) => self.by_peer.get(&peer).copied(),
                TargetOrigin::User => None,
            };
            let by_addr = addr.socket_addr().and_then(|sa| {
                self.by_peer.values().copied().find(|h| {
                    self.conns.get(h).and_then(Connection::remote_listen_addr) == Some(sa)
                })
            });
            if let Some(h) = by_name.or(by_addr) {
                satisfied.push((addr.clone(), h));
            }
        }
        for (addr, h) in satisfied {
            self.maker.connected(now, &addr, h);
        }
        for target in self.maker.due(now) {
            debug!(%target, "dialling");
            self.actions.push_back(Action::Dial { target });
        }
    }
}
