//! The control plane's side of the data plane: UDP heartbeats and path
//! MTU per neighbour ([`DataPath`](crate::core::data_path::DataPath)), the
//! [`DataView`] the data plane routes by, and the data sessions handed to
//! the shell.

use std::net::SocketAddr;
use std::time::Instant;

use tracing::{debug, info};

use super::{DataView, NeighbourPath, Router, SessionEvent};
use crate::core::data_path::ack_for_probe;
use crate::core::wire::udp::{self, HEADER_LEN as UDP_HEADER_LEN, Kind};

impl Router {
    /// The next data-plane session change for the I/O shell.
    pub fn poll_session(&mut self) -> Option<SessionEvent> {
        self.sessions_out.pop_front()
    }

    /// A control datagram (heartbeat, PMTU probe or ack) arrived on the UDP
    /// port from `from`. Frames datagrams belong to the data plane and are
    /// ignored here. Anything malformed, or from an address that is not the
    /// claimed neighbour's, is dropped.
    pub fn handle_udp(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        let Ok(header) = udp::Header::parse(datagram) else {
            return;
        };
        if header.dst != Some(self.config.identity.name) {
            return;
        }
        let body = &datagram[UDP_HEADER_LEN..];
        let Some(path) = self.paths.get_mut(&header.src) else {
            return;
        };
        if path.addr.ip() != from.ip() {
            debug!(peer = %header.src, %from, expected = %path.addr, "UDP datagram from an unexpected address");
            return;
        }
        let was_usable = path.reported_usable();
        let changed = match header.kind {
            Kind::Heartbeat => match udp::parse_heartbeat(body) {
                Ok((conn_id, hears_you)) => path.on_heartbeat(now, conn_id, hears_you),
                Err(_) => false,
            },
            Kind::PmtuProbe => {
                if let Ok(id) = udp::parse_pmtu_probe(body) {
                    let ack =
                        ack_for_probe(self.config.identity.name, header.src, id, datagram.len());
                    self.udp_out.push_back((path.addr, ack));
                }
                false
            }
            Kind::PmtuAck => match udp::parse_pmtu_ack(body) {
                Ok((id, size)) => {
                    let changed = path.on_probe_ack(now, id, size);
                    if changed {
                        info!(peer = %header.src, pmtu = path.payload_limit(), "path MTU verified");
                    }
                    changed
                }
                Err(_) => false,
            },
            Kind::Frames | Kind::Segment => false,
        };
        if changed {
            let usable = path.reported_usable();
            if usable != was_usable {
                info!(peer = %header.src, usable, "UDP data path {}", if usable { "up" } else { "down" });
            }
            self.data_version += 1;
            self.update_local_entry(now);
        }
    }

    /// The next UDP datagram to send, with its destination.
    pub fn poll_transmit_udp(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.udp_out.pop_front()
    }

    /// Changes whenever [`Router::data_view`] changes; poll it after every
    /// call into the router and republish the view when it moved.
    pub fn data_version(&self) -> u64 {
        self.data_version
    }

    /// Routes and neighbour paths for the data plane.
    pub fn data_view(&self) -> DataView {
        DataView {
            version: self.data_version,
            local: self.config.identity.name,
            routes: self.topology.data_routes().clone(),
            neighbours: self
                .paths
                .iter()
                .map(|(&p, path)| {
                    let np = NeighbourPath {
                        addr: path.addr,
                        payload_limit: path.payload_limit(),
                        usable: path.reported_usable(),
                        verified: path.pmtu_verified(),
                    };
                    (p, np)
                })
                .collect(),
        }
    }

    pub(super) fn run_data_paths(&mut self, now: Instant) {
        let local = self.config.identity.name;
        let mut changed = false;
        for (peer, path) in self.paths.iter_mut() {
            let was_usable = path.reported_usable();
            if path.on_timeout(now) {
                changed = true;
                let usable = path.reported_usable();
                if usable != was_usable {
                    info!(peer = %peer, usable, "UDP data path {}", if usable { "up" } else { "down" });
                }
            }
            for d in path.poll_transmit(now, local) {
                self.udp_out.push_back((path.addr, d));
            }
        }
        if changed {
            self.data_version += 1;
            self.update_local_entry(now);
        }
    }
}
