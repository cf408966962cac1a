//! Timers: heartbeats, liveness and handshake deadlines, periodic full
//! state, channel timers, data paths, GC and redials.

use std::time::Instant;

use rand::Rng;
use tracing::info;

use super::Router;
use crate::core::connection::{CloseReason, ConnState};
use crate::core::gossip;
use crate::core::wire::control::ControlMessage;

impl Router {
    /// Runs timers: heartbeats, liveness, periodic gossip, GC and redials.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut to_close = Vec::new();
        let mut to_heartbeat = Vec::new();
        for (&h, c) in &self.conns {
            match c.state {
                ConnState::Established { .. } => {
                    let silent = now.saturating_duration_since(c.last_recv);
                    if silent >= self.config.heartbeat_timeout {
                        to_close.push((h, CloseReason::HeartbeatTimeout(silent)));
                    } else if now.saturating_duration_since(c.last_send)
                        >= self.config.heartbeat_interval
                    {
                        to_heartbeat.push(h);
                    }
                }
                _ => {
                    if now.saturating_duration_since(c.opened_at) >= self.config.handshake_timeout {
                        to_close.push((
                            h,
                            CloseReason::HandshakeTimeout(self.config.handshake_timeout),
                        ));
                    }
                }
            }
        }
        for (h, reason) in to_close {
            self.close(now, h, reason, true);
        }
        for h in to_heartbeat {
            self.send(now, h, &ControlMessage::Heartbeat);
        }
        if now >= self.next_full_gossip {
            self.next_full_gossip = now
                + self
                    .config
                    .gossip_interval
                    .mul_f64(self.rng.random_range(0.9..1.1));
            let neighbours = self.neighbours();
            if let Some(&peer) =
                gossip::choose_neighbours(&mut self.rng, &neighbours, None, 1).first()
            {
                self.send_full_state(now, peer);
            }
        }
        self.run_data_paths(now);
        let due: Vec<String> = self
            .channels
            .iter()
            .filter(|(_, c)| {
                c.as_deref()
                    .and_then(|c| c.poll_timeout())
                    .is_some_and(|t| t <= now)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            self.run_channel(now, &name, None, |c, ctx| c.on_timeout(ctx));
        }
        let removed = self.topology.gc(now);
        if !removed.is_empty() {
            for e in &removed {
                info!(peer = %e.name, nickname = %e.nickname, "peer left: unreachable for {:?}", self.config.gc_grace);
            }
            self.topology_changed(now);
        }
        self.dial_due(now);
    }

    /// When [`Router::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next = Some(self.next_full_gossip);
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n: Instant| n.min(t)));
            }
        };
        for c in self.channels.values().flatten() {
            consider(c.poll_timeout());
        }
        for c in self.conns.values() {
            match c.state {
                ConnState::Established { .. } => {
                    consider(Some(c.last_recv + self.config.heartbeat_timeout));
                    consider(Some(c.last_send + self.config.heartbeat_interval));
                }
                _ => consider(Some(c.opened_at + self.config.handshake_timeout)),
            }
        }
        consider(self.topology.next_gc());
        consider(self.maker.next_wakeup());
        for p in self.paths.values() {
            consider(Some(p.next_deadline()));
        }
        next
    }
}
