//! The sans-IO mesh router: events and the current time in, actions out.
//!
//! The I/O shell (or the simulation) owns the sockets. It reports what
//! happened with the `handle_*` methods, then drains [`Router::poll_action`]
//! and sleeps until [`Router::poll_timeout`], calling
//! [`Router::handle_timeout`] when that passes. The router never reads a
//! clock, never blocks, and draws all randomness from a seeded RNG, so a
//! simulation replays exactly.
//!
//! One `Router` type, its `impl` split by concern:
//!
//! | File | Holds |
//! |---|---|
//! | `router.rs` | The types ([`RouterConfig`], [`Action`], [`SessionEvent`], [`GossipError`], [`Router`], [`DataView`]), construction and accessors. |
//! | `router/connections.rs` | Control connections: open, handshake bytes, features, duplicate and self detection, framing, close; encryption settings. |
//! | `router/gossip.rs` | Channels and gossip: registration, `run_channel`, spread, unicast and broadcast relay, full state. |
//! | `router/discovery.rs` | Targets, reacting to topology changes (our own entry, reachability events), discovery and dialling. |
//! | `router/data_paths.rs` | The data plane's side: UDP heartbeats and path MTU per neighbour, [`DataView`], data sessions. |
//! | `router/timers.rs` | [`Router::handle_timeout`] and [`Router::poll_timeout`]. |
//! | `router/status.rs` | The [`RouterStatus`](crate::core::status::RouterStatus) snapshot, as far as the core knows it. |

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::core::conn_maker::{BackoffConfig, ConnHandle, ConnectionMaker};
use crate::core::connection::Connection;
use crate::core::crypto::{DataLimits, DataSession, HandshakeConfig};
use crate::core::data_path::{DataPath, DataPathConfig};
use crate::core::gossip::{Channel, GossipStats};
use crate::core::identity::{Identity, PeerName};
use crate::core::prefix::IpNet;
use crate::core::rate_limit::HandshakeLimiter;
use crate::core::routes::Routes;
use crate::core::topology::{Topology, TopologyChannel};
use crate::core::wire::addr::PeerAddr;
use crate::core::wire::preamble::{PROTOCOL_MAX, PROTOCOL_MIN, Preamble};

mod connections;
mod data_paths;
mod discovery;
mod gossip;
mod status;
mod timers;

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
        /// [`CloseReason::label`](crate::core::connection::CloseReason::label):
        /// what metrics count the close as.
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

    /// The next thing for the I/O shell to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }
}

#[cfg(test)]
mod tests;
