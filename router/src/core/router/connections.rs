//! Control connections: opening, the handshake's features, duplicate and
//! self detection, framing outgoing messages and closing.

use std::net::SocketAddr;
use std::time::Instant;

use rand::Rng;
use tracing::{debug, info, warn};

use super::{Action, MAX_PENDING_HANDSHAKES, Router, SessionEvent};
use crate::core::conn_maker::ConnHandle;
use crate::core::connection::{CloseReason, ConnEvent, Connection, Direction};
use crate::core::crypto::{DataSession, HandshakeConfig};
use crate::core::data_path::DataPath;
use crate::core::wire::addr::PeerAddr;
use crate::core::wire::control::{ControlMessage, Features, MAX_REASON_LEN};

impl Router {
    /// A dial requested by [`Action::Dial`] connected. Returns the handle
    /// under which the shell reports this connection from now on.
    pub fn handle_dial_succeeded(
        &mut self,
        now: Instant,
        target: &PeerAddr,
        remote: SocketAddr,
    ) -> ConnHandle {
        self.open(
            now,
            Direction::Outbound {
                target: target.clone(),
            },
            remote,
        )
    }

    pub fn handle_dial_failed(&mut self, now: Instant, target: &PeerAddr, error: &str) {
        debug!(%target, error, "dial failed");
        self.maker
            .failed(now, target, error.to_owned(), &mut self.rng);
    }

    /// Someone connected to our listener.
    ///
    /// While [`MAX_PENDING_HANDSHAKES`] connections are still handshaking,
    /// a new one is closed at once, before any parsing: a connect flood
    /// cannot starve established peers of memory or timer work.
    pub fn handle_inbound(&mut self, now: Instant, remote: SocketAddr) -> ConnHandle {
        let pending = self.conns.values().filter(|c| c.remote().is_none()).count();
        let handle = self.open(now, Direction::Inbound, remote);
        if !self.limiter.allow(now, remote.ip()) {
            debug!(%remote, "refusing connection: too many handshakes from this address");
            self.close(now, handle, CloseReason::RateLimited(remote.ip()), false);
        } else if pending >= MAX_PENDING_HANDSHAKES {
            warn!(%remote, pending, "refusing connection: too many pending handshakes");
            self.close(
                now,
                handle,
                CloseReason::TooManyHandshakes(MAX_PENDING_HANDSHAKES),
                false,
            );
        }
        handle
    }

    /// Bytes arrived on a connection.
    pub fn handle_bytes(&mut self, now: Instant, conn: ConnHandle, bytes: &[u8]) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let events = c.handle_bytes(now, bytes);
        for event in events {
            if !self.conns.contains_key(&conn) {
                return;
            }
            match event {
                ConnEvent::Send(bytes) => self.actions.push_back(Action::Send { conn, bytes }),
                ConnEvent::VersionAgreed(_) => {
                    let features = ControlMessage::Features(Features {
                        name: self.config.identity.name,
                        nickname: self.config.identity.nickname.clone(),
                        uid: self.config.identity.uid,
                        conn_half: self.conns[&conn].local_half,
                        listen_port: self.config.listen_port,
                        udp_port: self.config.udp_port,
                        trusts_you: self.trusts(self.conns[&conn].remote_addr.ip()),
                    });
                    self.send(now, conn, &features);
                }
                ConnEvent::Features(features) => self.on_features(now, conn, features),
                ConnEvent::Message(msg) => self.on_message(now, conn, msg),
                ConnEvent::Closed(reason) => {
                    let notify = !matches!(reason, CloseReason::RemoteClosed(_));
                    self.close(now, conn, reason, notify);
                }
            }
        }
    }

    /// The socket closed or failed underneath us.
    pub fn handle_closed(&mut self, now: Instant, conn: ConnHandle, error: &str) {
        if self.conns.contains_key(&conn) {
            self.close(now, conn, CloseReason::Io(error.to_owned()), false);
        }
    }

    /// Closes every connection, telling peers why.
    pub fn shutdown(&mut self, now: Instant) {
        let handles: Vec<ConnHandle> = self.conns.keys().copied().collect();
        for h in handles {
            self.close(now, h, CloseReason::Shutdown, true);
        }
    }

    /// Replaces the encryption settings for handshakes from now on
    /// (password rotation); established connections keep their sessions.
    pub fn set_crypto(&mut self, crypto: HandshakeConfig) {
        self.config.crypto = crypto;
    }

    fn open(&mut self, now: Instant, direction: Direction, remote: SocketAddr) -> ConnHandle {
        let handle = self.next_handle;
        self.next_handle += 1;
        let conn = Connection::new(
            now,
            handle,
            direction,
            remote,
            self.preamble,
            self.rng.random(),
            self.config.crypto.clone(),
            self.config.data_limits,
            self.rng.random(),
        );
        self.actions.push_back(Action::Send {
            conn: handle,
            bytes: conn.preamble_bytes(),
        });
        debug!(conn = handle, %remote, outbound = conn.is_outbound(), "connection opened");
        self.conns.insert(handle, conn);
        handle
    }

    fn on_features(&mut self, now: Instant, conn: ConnHandle, f: Features) {
        let me = self.config.identity.name;
        if f.name == me {
            let reason = if f.uid == self.config.identity.uid {
                if let Some(Direction::Outbound { target }) =
                    self.conns.get(&conn).map(|c| c.direction.clone())
                {
                    self.maker.mark_self(&target);
                }
                CloseReason::ConnectedToSelf
            } else {
                CloseReason::NameCollision {
                    name: f.name,
                    their_uid: f.uid,
                }
            };
            self.close(now, conn, reason, true);
            return;
        }
        if let Some(&other) = self.by_peer.get(&f.name)
            && other != conn
        {
            let Some(old) = self.conns.get(&other) else {
                return;
            };
            let old_uid = old.remote().map(|r| r.uid);
            if old_uid != Some(f.uid) {
                self.close(now, other, CloseReason::ReplacedByNewIncarnation, true);
            } else {
                let new_outbound = self.conns.get(&conn).is_some_and(Connection::is_outbound);
                let initiator = |outbound: bool| if outbound { me } else { f.name };
                let (init_new, init_old) = (initiator(new_outbound), initiator(old.is_outbound()));
                // Both ends apply the same rule: prefer the connection the
                // lower-named peer dialled; if one side dialled twice, keep
                // the newer connection.
                let keep_new = init_new == init_old || init_new == me.min(f.name);
                let (loser, winner, kept_by) = if keep_new {
                    (other, conn, init_new)
                } else {
                    (conn, other, init_old)
                };
                if let Some(Direction::Outbound { target }) =
                    self.conns.get(&loser).map(|c| c.direction.clone())
                {
                    self.maker.connected(now, &target, winner);
                }
                self.close(
                    now,
                    loser,
                    CloseReason::Duplicate {
                        kept_initiated_by: kept_by,
                    },
                    true,
                );
                if !keep_new {
                    return;
                }
            }
        }
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        info!(
            peer = %f.name, nickname = %f.nickname, conn_id = ?c.id(), addr = %c.remote_addr,
            outbound = c.is_outbound(), encrypted = c.security.is_some(), "connection established"
        );
        if let Direction::Outbound { target } = &c.direction {
            let target = target.clone();
            self.maker.connected(now, &target, conn);
        }
        self.by_peer.insert(f.name, conn);
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let udp_addr = SocketAddr::new(c.remote_addr.ip(), f.udp_port);
        let conn_id = c.id().map_or(0, |i| i.0);
        let data_in_clear = f.trusts_you && self.trusts(c.remote_addr.ip());
        if data_in_clear && c.security.is_some() {
            info!(peer = %f.name, "data to this peer is not encrypted: both sides trust each other's subnet");
        }
        if let Some(c) = self.conns.get_mut(&conn)
            && !data_in_clear
            && let (Some(sec), Some(keys)) = (c.security.clone(), c.take_data_keys())
        {
            let session = DataSession::new(
                c.local_index,
                sec.remote_index,
                keys,
                now,
                self.config.data_limits,
            );
            self.sessions_out.push_back(SessionEvent::Install {
                peer: f.name,
                addr: udp_addr,
                session: Box::new(session),
            });
        }
        self.paths.insert(
            f.name,
            DataPath::new(
                now,
                f.name,
                udp_addr,
                conn_id,
                self.config.data_path.clone(),
            ),
        );
        self.data_version += 1;
        self.update_local_entry(now);
        self.send_full_state(now, f.name);
    }

    /// Whether `ip` lies in one of our trusted subnets.
    fn trusts(&self, ip: std::net::IpAddr) -> bool {
        self.config.trusted_subnets.iter().any(|s| s.contains(&ip))
    }

    /// Frames and queues `msg`; returns the bytes queued.
    pub(super) fn send(&mut self, now: Instant, conn: ConnHandle, msg: &ControlMessage) -> usize {
        let Some(c) = self.conns.get_mut(&conn) else {
            return 0;
        };
        let rekeys = c.control_rekeys().sent;
        match c.encode(now, msg) {
            Ok(bytes) => {
                let rekeyed = c.control_rekeys().sent - rekeys;
                if rekeyed > 0 {
                    self.control_rekeys += rekeyed;
                    info!(
                        conn,
                        peer = c.remote().map(|f| f.name.to_string()),
                        "control channel rekeyed"
                    );
                }
                let len = bytes.len();
                self.actions.push_back(Action::Send { conn, bytes });
                len
            }
            Err(e) => {
                warn!(conn, error = %e, "BUG: could not frame an outgoing message; dropped");
                0
            }
        }
    }

    pub(super) fn close(
        &mut self,
        now: Instant,
        conn: ConnHandle,
        reason: CloseReason,
        notify: bool,
    ) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let text = reason.to_string();
        if notify && c.can_send_messages() {
            let mut said = text.clone();
            if said.len() > MAX_REASON_LEN {
                let mut cut = MAX_REASON_LEN;
                while !said.is_char_boundary(cut) {
                    cut -= 1;
                }
                said.truncate(cut);
            }
            self.send(now, conn, &ControlMessage::Close { reason: said });
        }
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.actions.push_back(Action::Close {
            conn,
            reason: text.clone(),
            label: reason.label(),
        });
        let peer = c.remote().map(|f| f.name);
        match peer {
            Some(p) => {
                info!(peer = %p, conn_id = ?c.id(), addr = %c.remote_addr, reason = %text, "connection closed")
            }
            None => {
                info!(addr = %c.remote_addr, reason = %text, "connection failed during handshake")
            }
        }
        let was_neighbour = peer.is_some_and(|p| self.by_peer.get(&p) == Some(&conn));
        if let Direction::Outbound { target } = &c.direction {
            match (&reason, was_neighbour) {
                (CloseReason::ConnectedToSelf | CloseReason::Duplicate { .. }, _) => {}
                (_, true) => self.maker.disconnected(now, conn, &text, &mut self.rng),
                (_, false) => self.maker.failed(now, target, text.clone(), &mut self.rng),
            }
        } else {
            self.maker.disconnected(now, conn, &text, &mut self.rng);
        }
        if was_neighbour && let Some(p) = peer {
            if c.security.is_some() {
                self.sessions_out.push_back(SessionEvent::Remove {
                    peer: p,
                    local_index: c.local_index,
                });
            }
            self.by_peer.remove(&p);
            self.paths.remove(&p);
            self.data_version += 1;
            self.update_local_entry(now);
        }
    }
}
