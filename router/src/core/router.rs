//! The sans-IO mesh router: events and the current time in, actions out.
//!
//! The I/O shell (or the simulation) owns the sockets. It reports what
//! happened with the `handle_*` methods, then drains [`Router::poll_action`]
//! and sleeps until [`Router::poll_timeout`], calling
//! [`Router::handle_timeout`] when that passes. The router never reads a
//! clock, never blocks, and draws all randomness from a seeded RNG, so a
//! simulation replays exactly.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tracing::{debug, info, warn};

use crate::core::conn_maker::{
    BackoffConfig, ConnHandle, ConnectionMaker, TargetOrigin, TargetState,
};
use crate::core::connection::{CloseReason, ConnEvent, ConnState, Connection, Direction};
use crate::core::crypto::{DataLimits, DataSession, HandshakeConfig};
use crate::core::data_path::{DataPath, DataPathConfig, ack_for_probe};
use crate::core::gossip::{
    self, Channel, ChannelCtx, ChannelError, GossipKind, GossipStats, Outgoing, PeerEvent,
    TOPOLOGY_CHANNEL, UNICAST_HOP_LIMIT,
};
use crate::core::identity::{Identity, PeerName};
use crate::core::prefix::IpNet;
use crate::core::rate_limit::HandshakeLimiter;
use crate::core::routes::Routes;
use crate::core::status::{
    ConnectionStatus, DataPathStatus, EncryptionStatus, PeerConnectionStatus, PeerStatus,
    RouterStatus, TargetStatus,
};
use crate::core::topology::{Topology, TopologyChannel};
use crate::core::wire::addr::{PeerAddr, WireAddr};
use crate::core::wire::control::{ControlMessage, Features, MAX_REASON_LEN, validate_channel};
use crate::core::wire::preamble::{PROTOCOL_MAX, PROTOCOL_MIN, Preamble};
use crate::core::wire::topology::{
    ConnEntry, FLAG_DATA, FLAG_ESTABLISHED, FLAG_OUTBOUND, PeerEntry, TopologyUpdate,
};
use crate::core::wire::udp::{self, HEADER_LEN as UDP_HEADER_LEN, Kind};

/// Default interval between heartbeats on an idle control connection.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(1000);
/// Default silence after which a control connection is declared dead.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(4000);

/// Inbound connections allowed to be mid-handshake at once.
pub const MAX_PENDING_HANDSHAKES: usize = 64;

/// Tunables. Defaults suit a LAN or a few datacenters; every one of them is
/// a trade between detection speed and chatter.
#[derive(Clone, Debug)]
pub struct RouterConfig {
    pub identity: Identity,
    /// The TCP port we accept connections on, advertised to peers.
    pub listen_port: u16,
    /// The UDP port we receive data on, advertised to peers.
    pub udp_port: u16,
    /// UDP heartbeats and path MTU discovery per neighbour.
    pub data_path: DataPathConfig,
    /// Dial peers we learn about through gossip.
    pub discovery: bool,
    pub protocol_versions: RangeInclusive<u8>,
    /// How often an idle connection sends a heartbeat.
    pub heartbeat_interval: Duration,
    /// Silence after which a connection is declared dead.
    pub heartbeat_timeout: Duration,
    /// Time allowed from TCP connect to received features.
    pub handshake_timeout: Duration,
    /// How often full state goes to one random neighbour.
    pub gossip_interval: Duration,
    /// How long an unreachable peer is kept before it is forgotten.
    pub gc_grace: Duration,
    pub backoff: BackoffConfig,
    /// Encryption for new connections: plaintext, or Noise with a password
    /// and/or trusted keys (core/crypto). Changing it affects only
    /// handshakes that start afterwards.
    pub crypto: HandshakeConfig,
    /// Rekey limits of data-plane sessions.
    pub data_limits: DataLimits,
    /// Underlay subnets trusted not to need data encryption: data to a
    /// peer goes unencrypted when each side sees the other's address in
    /// its trusted subnets. Control stays encrypted.
    pub trusted_subnets: Vec<IpNet>,
    /// Seed for every random choice the core makes.
    pub seed: u64,
}

impl RouterConfig {
    pub fn new(identity: Identity, listen_port: u16, seed: u64) -> Self {
        Self {
            identity,
            listen_port,
            udp_port: listen_port,
            data_path: DataPathConfig::default(),
            discovery: true,
            protocol_versions: PROTOCOL_MIN..=PROTOCOL_MAX,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            heartbeat_timeout: DEFAULT_HEARTBEAT_TIMEOUT,
            handshake_timeout: Duration::from_secs(5),
            gossip_interval: Duration::from_secs(10),
            gc_grace: Duration::from_secs(15),
            backoff: BackoffConfig::default(),
            crypto: HandshakeConfig::Plaintext,
            data_limits: DataLimits::default(),
            trusted_subnets: Vec::new(),
            seed,
        }
    }
}

/// What the I/O shell must do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Open a TCP connection to `target`, then report the outcome with
    /// [`Router::handle_dial_succeeded`] or [`Router::handle_dial_failed`].
    Dial { target: PeerAddr },
    /// Write these bytes to the connection, in order.
    Send { conn: ConnHandle, bytes: Vec<u8> },
    /// Flush pending sends, then close the connection. The core has already
    /// forgotten it; further reports about it are ignored.
    Close {
        conn: ConnHandle,
        reason: String,
        /// [`CloseReason::label`]: what metrics count the close as.
        label: Option<&'static str>,
    },
}

/// A data-plane session for the I/O shell to install or drop; see
/// [`Router::poll_session`].
#[derive(Debug)]
pub enum SessionEvent {
    /// Seal datagrams to `peer` and open datagrams carrying receiver index
    /// `session.local_index()` with this session from now on.
    Install {
        peer: PeerName,
        /// The peer's UDP address, for sealing control datagrams to it.
        addr: SocketAddr,
        session: Box<DataSession>,
    },
    /// The connection that made the session with index `local_index` is
    /// gone; drop the session if it is still the one installed.
    Remove { peer: PeerName, local_index: u32 },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GossipError {
    #[error("no route to peer {0}")]
    NoRoute(PeerName),
    #[error("{0}")]
    BadChannel(String),
    #[error("gossip channel {0:?} is already registered")]
    DuplicateChannel(String),
    #[error("gossip payload of {0} bytes does not fit in a frame")]
    TooLarge(usize),
}

pub struct Router {
    config: RouterConfig,
    rng: StdRng,
    preamble: Preamble,
    conns: BTreeMap<ConnHandle, Connection>,
    /// The established connection to each neighbour.
    by_peer: HashMap<PeerName, ConnHandle>,
    next_handle: ConnHandle,
    topology: TopologyChannel,
    maker: ConnectionMaker,
    /// Registered channels; a slot is empty only while its handler runs.
    channels: BTreeMap<String, Option<Box<dyn Channel>>>,
    /// Peers reachable at the last topology change, to tell channels who
    /// came and went.
    reachable: BTreeSet<PeerName>,
    actions: VecDeque<Action>,
    sessions_out: VecDeque<SessionEvent>,
    limiter: HandshakeLimiter,
    next_full_gossip: Instant,
    stats: GossipStats,
    /// The UDP data path to each neighbour.
    paths: HashMap<PeerName, DataPath>,
    udp_out: VecDeque<(SocketAddr, Vec<u8>)>,
    /// Bumped whenever [`Router::data_view`] would return something new.
    data_version: u64,
    /// Control-channel rekeys (our sending side) since start.
    control_rekeys: u64,
    /// Where each peer last listened, as gossip or our own connections
    /// told us; kept while the peer is in the topology, so discovery keeps
    /// redialling a peer that went away until it is forgotten.
    last_addrs: HashMap<PeerName, BTreeSet<PeerAddr>>,
}

/// What the data plane needs from the control plane: routes over
/// data-carrying connections and where each neighbour receives UDP.
#[derive(Clone, Debug)]
pub struct DataView {
    pub version: u64,
    pub local: PeerName,
    pub routes: Routes,
    pub neighbours: HashMap<PeerName, NeighbourPath>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeighbourPath {
    pub addr: SocketAddr,
    /// Largest UDP payload the path carries.
    pub payload_limit: usize,
    pub usable: bool,
    /// Whether `payload_limit` is a verified path MTU, or the safe minimum
    /// used until probing finishes.
    pub verified: bool,
}

impl Router {
    pub fn new(config: RouterConfig, now: Instant) -> Self {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let first_gossip = now + config.gossip_interval.mul_f64(rng.random_range(0.5..1.0));
        Self {
            preamble: Preamble::new(config.protocol_versions.clone()),
            topology: TopologyChannel::new(Topology::new(&config.identity, config.gc_grace)),
            reachable: BTreeSet::new(),
            maker: ConnectionMaker::new(config.backoff.clone()),
            config,
            rng,
            conns: BTreeMap::new(),
            by_peer: HashMap::new(),
            next_handle: 1,
            channels: BTreeMap::new(),
            actions: VecDeque::new(),
            sessions_out: VecDeque::new(),
            limiter: HandshakeLimiter::default(),
            next_full_gossip: first_gossip,
            stats: GossipStats::default(),
            control_rekeys: 0,
            last_addrs: HashMap::new(),
            paths: HashMap::new(),
            udp_out: VecDeque::new(),
            data_version: 1,
        }
    }

    pub fn identity(&self) -> &Identity {
        &self.config.identity
    }

    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Mutable access for lazily computed broadcast routes.
    pub fn topology_mut(&mut self) -> &mut Topology {
        &mut self.topology
    }

    pub fn gossip_stats(&self) -> &GossipStats {
        &self.stats
    }

    /// Neighbours with an established connection, ascending by name.
    pub fn neighbours(&self) -> Vec<PeerName> {
        let mut n: Vec<PeerName> = self.by_peer.keys().copied().collect();
        n.sort_unstable();
        n
    }

    pub fn connection(&self, conn: ConnHandle) -> Option<&Connection> {
        self.conns.get(&conn)
    }

    pub fn connections(&self) -> impl Iterator<Item = &Connection> {
        self.conns.values()
    }

    // ----- targets -----

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

    // ----- events from the I/O shell -----

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

    /// Closes every connection, telling peers why.
    pub fn shutdown(&mut self, now: Instant) {
        let handles: Vec<ConnHandle> = self.conns.keys().copied().collect();
        for h in handles {
            self.close(now, h, CloseReason::Shutdown, true);
        }
    }

    /// The next data-plane session change for the I/O shell.
    pub fn poll_session(&mut self) -> Option<SessionEvent> {
        self.sessions_out.pop_front()
    }

    /// Whether `ip` lies in one of our trusted subnets.
    fn trusts(&self, ip: std::net::IpAddr) -> bool {
        self.config.trusted_subnets.iter().any(|s| s.contains(&ip))
    }

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

    /// Replaces the encryption settings for handshakes from now on
    /// (password rotation); established connections keep their sessions.
    pub fn set_crypto(&mut self, crypto: HandshakeConfig) {
        self.config.crypto = crypto;
    }

    /// The next thing for the I/O shell to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
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

    // ----- the UDP data path -----

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

    fn run_data_paths(&mut self, now: Instant) {
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

    // ----- gossip API for channels -----

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

    /// Runs `f` on channel `name` (the topology included), then sends what
    /// it queued; plain gossip never goes back to `from`, the neighbour
    /// the message being handled came from. `None` if there is no such
    /// channel.
    fn run_channel<R>(
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

    // ----- status -----

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
                control_rekeys: self.control_rekeys,
                ..Default::default()
            },
            handshake_failures: Default::default(),
            gossip: Vec::new(),
            exposed: Vec::new(),
            watchdog_stalls: BTreeMap::new(),
        }
    }

    // ----- internals -----

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

    fn on_message(&mut self, now: Instant, conn: ConnHandle, msg: ControlMessage) {
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

    /// Reacts to what the topology channel merged: logs, routes, discovery.
    /// (The channel itself gossiped the new entries on.)
    fn after_topology_merges(&mut self, now: Instant) {
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
    fn update_local_entry(&mut self, now: Instant) {
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
    fn topology_changed(&mut self, now: Instant) {
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

    fn dial_due(&mut self, now: Instant) {
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

    fn send_full_state(&mut self, now: Instant, peer: PeerName) {
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

    fn spread_topology(&mut self, now: Instant, delta: Vec<PeerEntry>, from: Option<PeerName>) {
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

    /// Frames and queues `msg`; returns the bytes queued.
    fn send(&mut self, now: Instant, conn: ConnHandle, msg: &ControlMessage) -> usize {
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

    fn close(&mut self, now: Instant, conn: ConnHandle, reason: CloseReason, notify: bool) {
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

#[cfg(test)]
mod tests;
