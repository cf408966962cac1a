//! Channels and gossip over the control connections: registration,
//! running a channel's handlers and sending what it queued, spreading
//! plain gossip, relaying unicast and broadcast, full state for repair.

use std::time::Instant;

use tracing::{debug, warn};

use super::{GossipError, Router};
use crate::core::conn_maker::ConnHandle;
use crate::core::connection::CloseReason;
use crate::core::gossip::{
    self, Channel, ChannelCtx, ChannelError, GossipKind, Outgoing, PeerEvent, TOPOLOGY_CHANNEL,
    UNICAST_HOP_LIMIT,
};
use crate::core::identity::PeerName;
use crate::core::wire::control::{ControlMessage, validate_channel};
use crate::core::wire::topology::{PeerEntry, TopologyUpdate};

impl Router {
    /// Registers a gossip channel (address allocation, names, ...). It
    /// hears at once about every peer reachable now.
    pub fn register_channel(
        &mut self,
        now: Instant,
        name: &str,
        channel: Box<dyn Channel>,
    ) -> Result<(), GossipError> {
        validate_channel(name).map_err(GossipError::BadChannel)?;
        if name == TOPOLOGY_CHANNEL || self.channels.contains_key(name) {
            return Err(GossipError::DuplicateChannel(name.to_owned()));
        }
        self.channels.insert(name.to_owned(), Some(channel));
        let reachable: Vec<PeerName> = self.reachable.iter().copied().collect();
        for peer in reachable {
            self.run_channel(now, name, None, |c, ctx| {
                c.on_peer(ctx, peer, PeerEvent::Reachable)
            });
        }
        Ok(())
    }

    /// A registered channel's state, by its type (for status and the API).
    pub fn channel<T: Channel>(&self, name: &str) -> Option<&T> {
        let channel: &dyn Channel = self.channels.get(name)?.as_deref()?;
        (channel as &dyn std::any::Any).downcast_ref::<T>()
    }

    /// Calls `f` on the registered channel `name` of type `T` (a local
    /// request: allocate an address, register a name), then sends what it
    /// queued. `None` if there is no such channel of that type.
    pub fn with_channel<T: Channel, R>(
        &mut self,
        now: Instant,
        name: &str,
        f: impl FnOnce(&mut T, &mut ChannelCtx) -> R,
    ) -> Option<R> {
        self.run_channel(now, name, None, |c, ctx| {
            (c as &mut dyn std::any::Any)
                .downcast_mut::<T>()
                .map(|t| f(t, ctx))
        })
        .flatten()
    }

    /// Plain gossip to `fanout` random neighbours.
    pub fn send_gossip(
        &mut self,
        now: Instant,
        channel: &str,
        payload: Vec<u8>,
    ) -> Result<(), GossipError> {
        validate_channel(channel).map_err(GossipError::BadChannel)?;
        let msg = ControlMessage::Gossip {
            channel: channel.to_owned(),
            payload,
        };
        self.spread(now, &msg, channel, None, GossipKind::Delta);
        Ok(())
    }

    /// Sends `payload` to `dst`, relayed along unicast routes.
    pub fn send_unicast(
        &mut self,
        now: Instant,
        channel: &str,
        dst: PeerName,
        payload: Vec<u8>,
    ) -> Result<(), GossipError> {
        validate_channel(channel).map_err(GossipError::BadChannel)?;
        let hop = self
            .topology
            .routes()
            .next_hop(dst)
            .ok_or(GossipError::NoRoute(dst))?;
        let msg = ControlMessage::GossipUnicast {
            channel: channel.to_owned(),
            src: self.config.identity.name,
            dst,
            hop_limit: UNICAST_HOP_LIMIT,
            payload,
        };
        self.send_to_peer(now, hop, &msg, channel, GossipKind::Unicast);
        Ok(())
    }

    /// Sends `payload` to every reachable peer down our broadcast tree.
    pub fn send_broadcast(
        &mut self,
        now: Instant,
        channel: &str,
        payload: Vec<u8>,
    ) -> Result<(), GossipError> {
        validate_channel(channel).map_err(GossipError::BadChannel)?;
        let src = self.config.identity.name;
        let msg = ControlMessage::GossipBroadcast {
            channel: channel.to_owned(),
            src,
            payload,
        };
        let hops = self.topology.routes_mut().broadcast_next_hops(src).to_vec();
        for hop in hops {
            self.send_to_peer(now, hop, &msg, channel, GossipKind::Broadcast);
        }
        Ok(())
    }

    /// Runs `f` on channel `name` (the topology included), then sends what
    /// it queued; plain gossip never goes back to `from`, the neighbour
    /// the message being handled came from. `None` if there is no such
    /// channel.
    pub(super) fn run_channel<R>(
        &mut self,
        now: Instant,
        name: &str,
        from: Option<PeerName>,
        f: impl FnOnce(&mut dyn Channel, &mut ChannelCtx) -> R,
    ) -> Option<R> {
        let mut out = Vec::new();
        let mut ctx = ChannelCtx::new(now, self.config.identity.name, &mut out);
        let result = if name == TOPOLOGY_CHANNEL {
            f(&mut self.topology, &mut ctx)
        } else {
            let mut channel = self.channels.get_mut(name)?.take()?;
            let result = f(channel.as_mut(), &mut ctx);
            if let Some(slot) = self.channels.get_mut(name) {
                *slot = Some(channel);
            }
            result
        };
        for o in out {
            self.send_outgoing(now, name, from, o);
        }
        if name == TOPOLOGY_CHANNEL {
            self.after_topology_merges(now);
        }
        Some(result)
    }

    fn send_outgoing(&mut self, now: Instant, channel: &str, from: Option<PeerName>, o: Outgoing) {
        let sent = match o {
            Outgoing::Gossip(payload) => {
                let msg = ControlMessage::Gossip {
                    channel: channel.to_owned(),
                    payload,
                };
                self.spread(now, &msg, channel, from, GossipKind::Delta);
                Ok(())
            }
            Outgoing::Unicast { dst, payload } => self.send_unicast(now, channel, dst, payload),
            Outgoing::Broadcast(payload) => self.send_broadcast(now, channel, payload),
        };
        if let Err(e) = sent {
            self.stats.undeliverable += 1;
            debug!(%channel, error = %e, "channel message not sent");
        }
    }

    /// Logs and counts a message a channel refused.
    fn refused(&mut self, channel: &str, peer: PeerName, how: GossipKind, e: &ChannelError) {
        *self.stats.refused.entry(channel.to_owned()).or_default() += 1;
        warn!(%peer, %channel, kind = ?how, error = %e, "gossip refused");
    }

    pub(super) fn on_message(&mut self, now: Instant, conn: ConnHandle, msg: ControlMessage) {
        let Some(from) = self
            .conns
            .get(&conn)
            .and_then(|c| c.remote())
            .map(|f| f.name)
        else {
            return;
        };
        let me = self.config.identity.name;
        match msg {
            ControlMessage::Heartbeat
            | ControlMessage::Features(_)
            | ControlMessage::Close { .. } => {}
            ControlMessage::Gossip { channel, payload } => {
                self.stats
                    .record_received(&channel, GossipKind::Delta, payload.len());
                let handled = self.run_channel(now, &channel, Some(from), |c, ctx| {
                    c.on_gossip(ctx, from, &payload)
                });
                match handled {
                    // Topology is the mesh itself: a neighbour that sends
                    // it garbage breaks the protocol.
                    Some(Err(ChannelError::Malformed(e))) if channel == TOPOLOGY_CHANNEL => {
                        self.close(now, conn, CloseReason::Protocol(e), true);
                    }
                    Some(Err(e)) => self.refused(&channel, from, GossipKind::Delta, &e),
                    Some(Ok(())) | None => {}
                }
            }
            ControlMessage::GossipUnicast {
                channel,
                src,
                dst,
                hop_limit,
                payload,
            } => {
                self.stats
                    .record_received(&channel, GossipKind::Unicast, payload.len());
                if dst == me {
                    let handled = self.run_channel(now, &channel, None, |c, ctx| {
                        c.on_unicast(ctx, src, &payload)
                    });
                    if let Some(Err(e)) = handled {
                        self.refused(&channel, src, GossipKind::Unicast, &e);
                    }
                    return;
                }
                if hop_limit <= 1 {
                    self.stats.hop_limit_exceeded += 1;
                    debug!(%src, %dst, %channel, "dropping unicast gossip at its hop limit");
                    return;
                }
                match self.topology.routes().next_hop(dst) {
                    Some(hop) => {
                        let msg = ControlMessage::GossipUnicast {
                            channel: channel.clone(),
                            src,
                            dst,
                            hop_limit: hop_limit - 1,
                            payload,
                        };
                        self.send_to_peer(now, hop, &msg, &channel, GossipKind::Unicast);
                    }
                    None => {
                        self.stats.undeliverable += 1;
                        debug!(%src, %dst, %channel, "dropping unicast gossip: no route");
                    }
                }
            }
            ControlMessage::GossipBroadcast {
                channel,
                src,
                payload,
            } => {
                self.stats
                    .record_received(&channel, GossipKind::Broadcast, payload.len());
                if src == me {
                    return;
                }
                let handled = self.run_channel(now, &channel, None, |c, ctx| {
                    c.on_broadcast(ctx, src, &payload)
                });
                if let Some(Err(e)) = handled {
                    self.refused(&channel, src, GossipKind::Broadcast, &e);
                }
                let hops = self.topology.routes_mut().broadcast_next_hops(src).to_vec();
                let msg = ControlMessage::GossipBroadcast {
                    channel: channel.clone(),
                    src,
                    payload,
                };
                for hop in hops.into_iter().filter(|&h| h != from && h != src) {
                    self.send_to_peer(now, hop, &msg, &channel, GossipKind::Broadcast);
                }
            }
        }
    }

    pub(super) fn send_full_state(&mut self, now: Instant, peer: PeerName) {
        let topology = (
            TOPOLOGY_CHANNEL.to_owned(),
            Channel::full_state(&self.topology),
        );
        let states: Vec<(String, Vec<Vec<u8>>)> = std::iter::once(topology)
            .chain(
                self.channels
                    .iter()
                    .filter_map(|(name, c)| Some((name.clone(), c.as_deref()?.full_state()))),
            )
            .collect();
        for (channel, chunks) in states {
            for payload in chunks {
                let msg = ControlMessage::Gossip {
                    channel: channel.clone(),
                    payload,
                };
                self.send_to_peer(now, peer, &msg, &channel, GossipKind::FullState);
            }
        }
    }

    pub(super) fn spread_topology(
        &mut self,
        now: Instant,
        delta: Vec<PeerEntry>,
        from: Option<PeerName>,
    ) {
        for payload in TopologyUpdate::encode_chunked(delta) {
            let msg = ControlMessage::Gossip {
                channel: TOPOLOGY_CHANNEL.into(),
                payload,
            };
            self.spread(now, &msg, TOPOLOGY_CHANNEL, from, GossipKind::Delta);
        }
    }

    /// Sends plain gossip to every neighbour that depends on us and to
    /// `fanout` random others, never back to `from`.
    ///
    /// A neighbour with at most `fanout` connections of its own (a leaf, or
    /// a peer whose topology we have not heard yet) has few other sources:
    /// sampled like the rest it would miss most rumours and wait for
    /// periodic repair, which takes minutes behind a busy hub. It always
    /// gets the delta. Each peer still sends at most its degree in messages
    /// per change, whatever the size of the mesh.
    fn spread(
        &mut self,
        now: Instant,
        msg: &ControlMessage,
        channel: &str,
        from: Option<PeerName>,
        kind: GossipKind,
    ) {
        let k = gossip::fanout(self.topology.reachable_count());
        let (dependent, others): (Vec<PeerName>, Vec<PeerName>) = self
            .neighbours()
            .into_iter()
            .filter(|&n| Some(n) != from)
            .partition(|&n| {
                let degree = self.topology.get(n).map_or(0, |e| {
                    e.connections.iter().filter(|c| c.established()).count()
                });
                degree <= k
            });
        let sampled = gossip::choose_neighbours(&mut self.rng, &others, None, k);
        for peer in dependent.into_iter().chain(sampled) {
            self.send_to_peer(now, peer, msg, channel, kind);
        }
    }

    fn send_to_peer(
        &mut self,
        now: Instant,
        peer: PeerName,
        msg: &ControlMessage,
        channel: &str,
        kind: GossipKind,
    ) {
        if let Some(&h) = self.by_peer.get(&peer) {
            let bytes = self.send(now, h, msg);
            self.stats.record_sent(channel, kind, bytes);
        }
    }
}
