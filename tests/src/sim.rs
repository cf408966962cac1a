//! A deterministic simulation of many weft routers in one process.
//!
//! Every peer is a real [`Router`] from the sans-IO core. The simulation owns
//! the clock (a fixed [`Instant`] plus a virtual offset; the core only
//! compares instants), the randomness (one seeded [`StdRng`], from which each
//! router's own seed is drawn) and the network, which models TCP as the core
//! sees it:
//!
//! - A dial to a live, reachable peer connects after one round trip; to a
//!   dead peer it is refused after one round trip; across a cut link or to an
//!   unknown address it fails after [`NetConfig::connect_timeout`].
//! - Writes arrive after a random latency, possibly split into several
//!   chunks at random boundaries (to exercise framing) and possibly stalled
//!   as if a segment had been lost and retransmitted. Order within one
//!   direction of one connection is always kept; nothing orders deliveries
//!   across connections.
//! - A cut link (or a partition) blackholes: bytes in flight and later are
//!   dropped silently and the connection is never closed, so only heartbeat
//!   timeouts can notice. Once a connection has lost bytes it stays broken
//!   even if the link heals, as TCP would after its retransmissions gave up;
//!   this keeps a byte stream from ever arriving with a hole in it. A cut can
//!   instead reset connections, and a killed peer's connections can die
//!   silently (host crash) or with a reset (process crash).
//!
//! Events (timers, connects, deliveries) sit in one queue ordered by
//! `(virtual time, insertion sequence)`, so a run is a pure function of the
//! seed and the calls made on the [`Sim`].
//!
//! **The truth** against which convergence is judged is the set of live,
//! established connections: a pair of peers is an edge when both are alive,
//! both routers hold the same simulated connection as established with each
//! other, the connection has lost nothing, and the underlay link between them
//! is up. This holds with discovery on or off; with discovery on the graph
//! simply grows towards a full mesh as peers dial what they hear about.
//!
//! ```
//! use std::time::Duration;
//! use weft_tests::sim::{Death, Sim, SimConfig};
//!
//! let mut sim = Sim::new(SimConfig::new(42).discovery(false));
//! let (peers, edges) = sim.add_random_mesh(10, 3.0);
//! let took = sim.converge_when(Duration::from_secs(300), |s| s.check_links(&edges));
//! println!("converged after {took:?}: {}", sim.gossip_totals().describe(peers.len()));
//!
//! let (a, b) = edges[0];
//! sim.cut_link(a, b, Death::Silent);
//! let healed = sim.run_until(Duration::from_secs(60), Duration::from_millis(100), |s| {
//!     s.check_routes().is_ok() && s.close_log().len() >= 2
//! });
//! assert!(healed.is_some());
//! ```

use std::cell::Cell;
use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::{Add, Sub};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use weft_router::core::conn_maker::ConnHandle;
use weft_router::core::connection::ConnState;
use weft_router::core::gossip::{GossipKind, GossipStats};
use weft_router::core::identity::{ConnId, Identity, PeerName, PeerUid};
use weft_router::core::wire::addr::PeerAddr;
use weft_router::core::{Action, Router, RouterConfig};

/// Index of a peer slot in the simulation; stable across restarts.
pub type PeerId = usize;

/// Identifies one simulated TCP connection.
pub type LinkId = u64;

/// The TCP port every simulated router listens on.
pub const LISTEN_PORT: u16 = 6783;

/// Adjacency of a peer graph, every live peer a key, neighbours ascending.
pub type PeerGraph = BTreeMap<PeerName, BTreeSet<PeerName>>;

/// How the simulated underlay behaves.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// One-way latency of each chunk, drawn uniformly from `min..=max`.
    pub latency: (Duration, Duration),
    /// Each write is split into `1..=max_split` chunks at random boundaries.
    pub max_split: usize,
    /// Chance that a chunk is held back as if a segment was lost.
    pub stall_probability: f64,
    /// Extra delay of a stalled chunk, drawn uniformly from `min..=max`.
    pub stall: (Duration, Duration),
    /// How long a dial to an unreachable address takes to fail.
    pub connect_timeout: Duration,
}

impl Default for NetConfig {
    /// A LAN-to-WAN mix: 1–20 ms one way, writes split in up to 3 chunks.
    fn default() -> Self {
        Self {
            latency: (Duration::from_millis(1), Duration::from_millis(20)),
            max_split: 3,
            stall_probability: 0.0,
            stall: (Duration::ZERO, Duration::ZERO),
            connect_timeout: Duration::from_secs(3),
        }
    }
}

impl NetConfig {
    /// A poor network: 1–80 ms one way, writes split in up to 8 chunks, and
    /// 2% of chunks stalled by 0.2–1 s as if retransmitted (which, TCP being
    /// in order, also holds back everything behind them).
    pub fn lossy() -> Self {
        Self {
            latency: (Duration::from_millis(1), Duration::from_millis(80)),
            max_split: 8,
            stall_probability: 0.02,
            stall: (Duration::from_millis(200), Duration::from_millis(1000)),
            connect_timeout: Duration::from_secs(3),
        }
    }
}

/// Settings of a whole simulation.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seeds the simulation's RNG, from which every router's seed and UID,
    /// every peer name and every network delay is drawn.
    pub seed: u64,
    pub net: NetConfig,
    /// Whether routers dial peers they learn about through gossip.
    pub discovery: bool,
    /// Applied to each router's config after the defaults and `discovery`.
    pub configure: fn(&mut RouterConfig),
}

impl SimConfig {
    /// Default network and router settings, discovery on.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            net: NetConfig::default(),
            discovery: true,
            configure: |_| {},
        }
    }

    /// Turns discovery on or off for every router.
    pub fn discovery(mut self, on: bool) -> Self {
        self.discovery = on;
        self
    }

    /// Replaces the network model.
    pub fn net(mut self, net: NetConfig) -> Self {
        self.net = net;
        self
    }

    /// Adjusts every router's config (timers, backoff, ...).
    pub fn configure(mut self, f: fn(&mut RouterConfig)) -> Self {
        self.configure = f;
        self
    }
}

/// How connections die when a link is cut or a peer is killed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Death {
    /// Packets vanish; the other end only notices by heartbeat timeout.
    Silent,
    /// The other end gets a reset after one-way latency.
    Reset,
}

/// Gossip bytes sent, summed over peers, by kind (all channels).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GossipTotals {
    /// Plain gossip carrying what changed.
    pub delta: u64,
    /// Full state: to a new neighbour, and periodic anti-entropy.
    pub full_state: u64,
    pub unicast: u64,
    pub broadcast: u64,
    /// Messages of every kind.
    pub messages: u64,
}

impl GossipTotals {
    fn add_stats(&mut self, stats: &GossipStats) {
        self.delta += stats.sent_bytes(GossipKind::Delta);
        self.full_state += stats.sent_bytes(GossipKind::FullState);
        self.unicast += stats.sent_bytes(GossipKind::Unicast);
        self.broadcast += stats.sent_bytes(GossipKind::Broadcast);
        self.messages += stats.sent.values().map(|c| c.messages).sum::<u64>();
    }

    /// Bytes of every kind.
    pub fn total(&self) -> u64 {
        self.delta + self.full_state + self.unicast + self.broadcast
    }

    /// One line: totals by kind, then the average per peer.
    pub fn describe(&self, peers: usize) -> String {
        let per = |b: u64| b as f64 / peers.max(1) as f64;
        format!(
            "total {} B in {} msgs (delta {} B, full-state {} B, unicast {} B, broadcast {} B); \
             per peer {:.0} B (delta {:.0}, full-state {:.0}, unicast {:.0}, broadcast {:.0})",
            self.total(),
            self.messages,
            self.delta,
            self.full_state,
            self.unicast,
            self.broadcast,
            per(self.total()),
            per(self.delta),
            per(self.full_state),
            per(self.unicast),
            per(self.broadcast),
        )
    }
}

impl Add for GossipTotals {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self {
            delta: self.delta + o.delta,
            full_state: self.full_state + o.full_state,
            unicast: self.unicast + o.unicast,
            broadcast: self.broadcast + o.broadcast,
            messages: self.messages + o.messages,
        }
    }
}

impl Sub for GossipTotals {
    type Output = Self;
    fn sub(self, o: Self) -> Self {
        Self {
            delta: self.delta - o.delta,
            full_state: self.full_state - o.full_state,
            unicast: self.unicast - o.unicast,
            broadcast: self.broadcast - o.broadcast,
            messages: self.messages - o.messages,
        }
    }
}

/// A connection a router closed, as seen by the simulation.
#[derive(Clone, Debug)]
pub struct CloseRecord {
    /// Virtual time since the start of the simulation.
    pub at: Duration,
    pub peer: PeerId,
    pub remote: PeerId,
    pub link: LinkId,
    pub reason: String,
}

/// One simulated connection between two peers, for inspection.
#[derive(Clone, Debug)]
pub struct LinkInfo {
    pub id: LinkId,
    /// `[dialer, acceptor]`.
    pub peers: [PeerId; 2],
    /// Per side: whether that router still holds the connection.
    pub open: [bool; 2],
    /// Per side: the core's connection id once established there.
    pub conn_id: [Option<ConnId>; 2],
    /// The connection lost bytes and will never carry any again.
    pub broken: bool,
}

impl LinkInfo {
    /// Both routers hold this connection as established.
    pub fn established_both_ways(&self) -> bool {
        self.conn_id[0].is_some() && self.conn_id[1].is_some()
    }
}

/// Breadth-first tree of the reference route computation.
#[derive(Clone, Debug)]
pub struct RefTree {
    /// Reached peers in visiting order, root first.
    pub order: Vec<PeerName>,
    pub parent: BTreeMap<PeerName, PeerName>,
    pub hops: BTreeMap<PeerName, u32>,
    /// For every reached peer but the root: the root's neighbour on the path.
    pub first_hop: BTreeMap<PeerName, PeerName>,
}

impl RefTree {
    /// Peers whose parent is `peer`, ascending by name.
    pub fn children(&self, peer: PeerName) -> Vec<PeerName> {
        self.parent
            .iter()
            .filter(|&(_, &p)| p == peer)
            .map(|(&c, _)| c)
            .collect()
    }
}

/// Reference BFS, written independently of the core: neighbours are visited
/// in ascending name order and a peer's parent is the first peer to reach
/// it, so ties between equal-length paths go to the lowest name at each
/// level. A destination's next hop is the first hop of its tree path.
pub fn reference_bfs(graph: &PeerGraph, root: PeerName) -> RefTree {
    let mut tree = RefTree {
        order: vec![root],
        parent: BTreeMap::new(),
        hops: BTreeMap::from([(root, 0)]),
        first_hop: BTreeMap::new(),
    };
    let mut queue = VecDeque::from([root]);
    while let Some(p) = queue.pop_front() {
        let d = tree.hops[&p];
        for &n in graph.get(&p).into_iter().flatten() {
            if tree.hops.contains_key(&n) {
                continue;
            }
            tree.hops.insert(n, d + 1);
            tree.parent.insert(n, p);
            let hop = if p == root { n } else { tree.first_hop[&p] };
            tree.first_hop.insert(n, hop);
            tree.order.push(n);
            queue.push_back(n);
        }
    }
    tree
}

/// A random connected graph on `n` vertices with about `n * avg_degree / 2`
/// edges: a random recursive tree (vertex `i` attaches to a uniformly chosen
/// earlier vertex) plus uniformly random extra edges. Edges are `(a, b)`
/// with `a != b`, no duplicates, in a random orientation.
pub fn random_connected_graph(
    rng: &mut impl Rng,
    n: usize,
    avg_degree: f64,
) -> Vec<(usize, usize)> {
    fn add(
        seen: &mut BTreeSet<(usize, usize)>,
        edges: &mut Vec<(usize, usize)>,
        rng: &mut impl Rng,
        a: usize,
        b: usize,
    ) {
        if a != b && seen.insert((a.min(b), a.max(b))) {
            edges.push(if rng.random_bool(0.5) { (a, b) } else { (b, a) });
        }
    }
    let mut seen = BTreeSet::new();
    let mut edges = Vec::new();
    for i in 1..n {
        let j = rng.random_range(0..i);
        add(&mut seen, &mut edges, rng, i, j);
    }
    let max_edges = n * n.saturating_sub(1) / 2;
    let want = ((n as f64 * avg_degree / 2.0).round() as usize).min(max_edges);
    while edges.len() < want {
        let a = rng.random_range(0..n);
        let b = rng.random_range(0..n);
        add(&mut seen, &mut edges, rng, a, b);
    }
    edges
}

/// Whether the undirected graph on `0..n` stays connected without edge `skip`.
pub fn connected_without(n: usize, edges: &[(usize, usize)], skip: Option<usize>) -> bool {
    let mut adj = vec![Vec::new(); n];
    for (i, &(a, b)) in edges.iter().enumerate() {
        if Some(i) != skip {
            adj[a].push(b);
            adj[b].push(a);
        }
    }
    let mut seen = vec![false; n];
    let mut stack = vec![0];
    seen[0] = n > 0;
    while let Some(p) = stack.pop() {
        for &q in &adj[p] {
            if !seen[q] {
                seen[q] = true;
                stack.push(q);
            }
        }
    }
    seen.iter().all(|&s| s)
}

struct Slot {
    name: PeerName,
    nickname: String,
    addr: SocketAddr,
    /// User targets, re-added when the peer restarts.
    targets: Vec<PeerAddr>,
    /// Bumped on every kill, so events meant for an earlier life are dropped.
    incarnation: u64,
    router: Option<Router>,
    /// When the pending timer event fires, and its generation.
    timer: Option<Duration>,
    timer_gen: u64,
    /// Guard against a router asking to be woken at the same instant forever.
    busy: (Duration, u32),
}

struct SimConn {
    /// `[dialer, acceptor]`.
    peers: [PeerId; 2],
    /// Per side: the incarnation and router handle, while that side is open.
    ends: [Option<(u64, ConnHandle)>; 2],
    /// Per receiving side: when the last chunk towards it is delivered.
    tail: [Duration; 2],
    broken: bool,
}

enum Event {
    Timer {
        peer: PeerId,
        generation: u64,
    },
    Connect {
        dialer: PeerId,
        incarnation: u64,
        target: PeerAddr,
        acceptor: PeerId,
    },
    DialFailed {
        peer: PeerId,
        incarnation: u64,
        target: PeerAddr,
        error: &'static str,
    },
    Deliver {
        link: LinkId,
        to: usize,
        bytes: Vec<u8>,
    },
    /// The other end closed; arrives in order after its last bytes.
    Fin {
        link: LinkId,
        to: usize,
    },
    /// A reset: arrives regardless of link state and of bytes lost.
    Reset {
        link: LinkId,
        to: usize,
    },
}

struct Queued {
    at: Duration,
    seq: u64,
    event: Event,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

type Setup = Box<dyn FnMut(PeerId, &mut Router, Instant)>;

/// `(peer, incarnation, handle)`: one router's end of a connection.
type EndKey = (PeerId, u64, ConnHandle);

/// The simulated network of routers. See the module docs.
pub struct Sim {
    config: SimConfig,
    base: Instant,
    now: Duration,
    rng: StdRng,
    peers: Vec<Slot>,
    by_addr: BTreeMap<SocketAddr, PeerId>,
    by_name: BTreeMap<PeerName, PeerId>,
    links: BTreeMap<LinkId, SimConn>,
    next_link: LinkId,
    /// Which side of which link each router handle is.
    ends: BTreeMap<EndKey, (LinkId, usize)>,
    queue: BinaryHeap<Reverse<Queued>>,
    seq: u64,
    next_ephemeral_port: u16,
    cut: BTreeSet<(PeerId, PeerId)>,
    groups: Option<BTreeMap<PeerId, usize>>,
    /// Stats of routers that were killed, so totals survive restarts.
    retired: GossipTotals,
    closes: Vec<CloseRecord>,
    events: u64,
    setup: Option<Setup>,
    check_hint: Cell<PeerId>,
}

impl Sim {
    /// An empty simulation at virtual time zero.
    pub fn new(config: SimConfig) -> Self {
        Self {
            rng: StdRng::seed_from_u64(config.seed),
            config,
            base: Instant::now(),
            now: Duration::ZERO,
            peers: Vec::new(),
            by_addr: BTreeMap::new(),
            by_name: BTreeMap::new(),
            links: BTreeMap::new(),
            next_link: 1,
            ends: BTreeMap::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            next_ephemeral_port: 32768,
            cut: BTreeSet::new(),
            groups: None,
            retired: GossipTotals::default(),
            closes: Vec::new(),
            events: 0,
            setup: None,
            check_hint: Cell::new(0),
        }
    }

    /// Runs `f` on every router when it is created (now and on restarts),
    /// e.g. to register gossip channels. Set it before adding peers.
    pub fn on_router_created(&mut self, f: impl FnMut(PeerId, &mut Router, Instant) + 'static) {
        self.setup = Some(Box::new(f));
    }

    // ----- time and inspection -----

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now
    }

    /// The current virtual instant, as routers see it.
    pub fn now(&self) -> Instant {
        self.base + self.now
    }

    /// Events processed so far (a cheap fingerprint of a run).
    pub fn events_processed(&self) -> u64 {
        self.events
    }

    /// Peers ever added, dead ones included (ids are `0..peer_count()`).
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Peers whose router is running, ascending.
    pub fn live_peers(&self) -> Vec<PeerId> {
        (0..self.peers.len())
            .filter(|&p| self.is_alive(p))
            .collect()
    }

    /// Whether the peer's router is running (not killed).
    pub fn is_alive(&self, peer: PeerId) -> bool {
        self.peers[peer].router.is_some()
    }

    /// The peer's name; it survives restarts.
    pub fn name(&self, peer: PeerId) -> PeerName {
        self.peers[peer].name
    }

    /// The peer's underlay listen address (`10.x.y.z:6783`, never bound).
    pub fn addr(&self, peer: PeerId) -> SocketAddr {
        self.peers[peer].addr
    }

    /// The peer slot that has this name.
    pub fn peer_by_name(&self, name: PeerName) -> Option<PeerId> {
        self.by_name.get(&name).copied()
    }

    /// The UID of the peer's current incarnation.
    pub fn uid(&self, peer: PeerId) -> Option<PeerUid> {
        self.peers[peer].router.as_ref().map(|r| r.identity().uid)
    }

    /// The live router of `peer`.
    pub fn router(&self, peer: PeerId) -> &Router {
        self.peers[peer]
            .router
            .as_ref()
            .unwrap_or_else(|| panic!("peer {peer} is not alive"))
    }

    /// Calls `f` on the router with the current time, then carries out
    /// whatever it asked for. Use this for every mutating call.
    pub fn act<R>(&mut self, peer: PeerId, f: impl FnOnce(&mut Router, Instant) -> R) -> R {
        let now = self.now();
        let router = self.peers[peer]
            .router
            .as_mut()
            .unwrap_or_else(|| panic!("peer {peer} is not alive"));
        let out = f(router, now);
        self.sync(peer);
        out
    }

    /// Connections each router closed, in order, with the reason it gave.
    pub fn close_log(&self) -> &[CloseRecord] {
        &self.closes
    }

    /// Simulated connections between `a` and `b` (either direction) that at
    /// least one side still holds.
    pub fn links_between(&self, a: PeerId, b: PeerId) -> Vec<LinkInfo> {
        self.links
            .iter()
            .filter(|(_, c)| {
                (c.peers == [a, b] || c.peers == [b, a]) && c.ends.iter().any(Option::is_some)
            })
            .map(|(&id, c)| LinkInfo {
                id,
                peers: c.peers,
                open: [c.ends[0].is_some(), c.ends[1].is_some()],
                conn_id: [0, 1].map(|side| {
                    let (_, h) = c.ends[side]?;
                    self.peers[c.peers[side]]
                        .router
                        .as_ref()?
                        .connection(h)?
                        .id()
                }),
                broken: c.broken,
            })
            .collect()
    }

    /// A hash of what the run produced so far: time, event count, gossip
    /// totals, every close with its reason, and each live router's own
    /// entry and routes. Equal seeds and calls must give equal fingerprints.
    pub fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        (self.now, self.events, self.gossip_totals()).hash(&mut h);
        for c in &self.closes {
            (c.at, c.peer, c.remote, c.link, &c.reason).hash(&mut h);
        }
        for p in self.live_peers() {
            let r = self.router(p);
            let e = r.topology().local_entry();
            (e.uid, e.version, e.connections.len()).hash(&mut h);
            let mut routes: Vec<(PeerName, PeerName)> = r.topology().routes().unicast().collect();
            routes.sort_unstable();
            routes.hash(&mut h);
        }
        h.finish()
    }

    /// Gossip bytes sent by every router so far, killed ones included.
    pub fn gossip_totals(&self) -> GossipTotals {
        let mut t = self.retired;
        for r in self.peers.iter().filter_map(|s| s.router.as_ref()) {
            t.add_stats(r.gossip_stats());
        }
        t
    }

    // ----- building the mesh -----

    /// Adds and starts a peer with a fresh random name.
    pub fn add_peer(&mut self) -> PeerId {
        let id = self.peers.len();
        let name = loop {
            let n = PeerName::random(&mut self.rng);
            if !self.by_name.contains_key(&n) {
                break n;
            }
        };
        let host = u32::try_from(id + 1).expect("fewer than 2^24 peers");
        assert!(host < 1 << 24, "fewer than 2^24 peers");
        let ip = Ipv4Addr::from(0x0a00_0000 | host);
        let addr = SocketAddr::new(IpAddr::V4(ip), LISTEN_PORT);
        self.peers.push(Slot {
            name,
            nickname: format!("p{id}"),
            addr,
            targets: Vec::new(),
            incarnation: 0,
            router: None,
            timer: None,
            timer_gen: 0,
            busy: (Duration::ZERO, 0),
        });
        self.by_addr.insert(addr, id);
        self.by_name.insert(name, id);
        self.start(id);
        id
    }

    /// Adds and starts `n` peers, with no targets.
    pub fn add_peers(&mut self, n: usize) -> Vec<PeerId> {
        (0..n).map(|_| self.add_peer()).collect()
    }

    /// Gives `peer` the addresses of `others` as user targets (kept across
    /// restarts of `peer`).
    pub fn add_targets(&mut self, peer: PeerId, others: &[PeerId]) {
        let addrs: Vec<PeerAddr> = others
            .iter()
            .map(|&o| PeerAddr::from_socket(self.peers[o].addr))
            .collect();
        self.peers[peer].targets.extend(addrs.iter().cloned());
        if self.is_alive(peer) {
            self.act(peer, |r, now| r.add_targets(now, addrs));
        }
    }

    /// Adds `n` peers wired as a random connected graph of about
    /// `avg_degree` (see [`random_connected_graph`]); for each edge `(a, b)`
    /// only `a` gets `b` as a target. Returns the peers and the edges.
    pub fn add_random_mesh(
        &mut self,
        n: usize,
        avg_degree: f64,
    ) -> (Vec<PeerId>, Vec<(PeerId, PeerId)>) {
        let peers = self.add_peers(n);
        let edges: Vec<(PeerId, PeerId)> = random_connected_graph(&mut self.rng, n, avg_degree)
            .into_iter()
            .map(|(a, b)| (peers[a], peers[b]))
            .collect();
        for &(a, b) in &edges {
            self.add_targets(a, &[b]);
        }
        (peers, edges)
    }

    // ----- faults -----

    /// Stops the peer (this is also how a peer is removed for good); its
    /// connections die as `how` says. Its gossip counters are kept.
    pub fn kill(&mut self, peer: PeerId, how: Death) {
        let slot = &mut self.peers[peer];
        let Some(router) = slot.router.take() else {
            return;
        };
        self.retired.add_stats(router.gossip_stats());
        let inc = slot.incarnation;
        slot.incarnation += 1;
        slot.timer = None;
        slot.timer_gen += 1;
        let ends: Vec<(EndKey, (LinkId, usize))> = self
            .ends
            .range((peer, inc, 0)..=(peer, inc, ConnHandle::MAX))
            .map(|(k, v)| (*k, *v))
            .collect();
        for (key, (link, side)) in ends {
            self.ends.remove(&key);
            let at = self.now + self.sample_latency();
            let Some(c) = self.links.get_mut(&link) else {
                continue;
            };
            c.ends[side] = None;
            match how {
                Death::Silent => c.broken = true,
                Death::Reset => {
                    c.broken = true;
                    self.push(at, Event::Reset { link, to: 1 - side });
                }
            }
            self.forget_link_if_closed(link);
        }
    }

    /// Kills the peer and starts it again at once: same name and address,
    /// new UID, new router seed, same user targets.
    pub fn restart(&mut self, peer: PeerId, how: Death) {
        self.kill(peer, how);
        self.start(peer);
    }

    /// Starts a killed peer again (new UID).
    pub fn revive(&mut self, peer: PeerId) {
        if !self.is_alive(peer) {
            self.start(peer);
        }
    }

    /// Cuts the underlay link between `a` and `b`.
    pub fn cut_link(&mut self, a: PeerId, b: PeerId, how: Death) {
        self.cut.insert((a.min(b), a.max(b)));
        if how == Death::Reset {
            let ids: Vec<LinkId> = self.links_between(a, b).iter().map(|l| l.id).collect();
            for link in ids {
                self.reset_link(link);
            }
        }
    }

    /// Undoes [`Sim::cut_link`]; connections that lost bytes stay broken.
    pub fn heal_link(&mut self, a: PeerId, b: PeerId) {
        self.cut.remove(&(a.min(b), a.max(b)));
    }

    /// Splits the underlay: peers in different groups cannot reach each
    /// other; peers in no group are isolated. Replaces any earlier partition.
    pub fn partition(&mut self, groups: &[Vec<PeerId>]) {
        let mut map = BTreeMap::new();
        for (g, peers) in groups.iter().enumerate() {
            for &p in peers {
                map.insert(p, g);
            }
        }
        self.groups = Some(map);
    }

    /// Ends any partition (cut links stay cut).
    pub fn heal_partition(&mut self) {
        self.groups = None;
    }

    /// Whether the underlay currently carries packets between `a` and `b`.
    pub fn link_up(&self, a: PeerId, b: PeerId) -> bool {
        if a == b {
            return true;
        }
        if self.cut.contains(&(a.min(b), a.max(b))) {
            return false;
        }
        match &self.groups {
            None => true,
            Some(g) => match (g.get(&a), g.get(&b)) {
                (Some(x), Some(y)) => x == y,
                _ => false,
            },
        }
    }

    // ----- running -----

    /// Advances virtual time by `d`, processing every event due.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(Reverse(top)) = self.queue.peek() {
            if top.at > end {
                break;
            }
            let Some(Reverse(q)) = self.queue.pop() else {
                break;
            };
            self.now = self.now.max(q.at);
            self.events += 1;
            self.process(q.event);
        }
        self.now = end;
    }

    /// Runs until `done` holds, checking it now and then every `step`, for
    /// at most `limit`. Returns how long it took, or `None` on timeout.
    pub fn run_until(
        &mut self,
        limit: Duration,
        step: Duration,
        mut done: impl FnMut(&mut Sim) -> bool,
    ) -> Option<Duration> {
        let start = self.now;
        loop {
            if done(self) {
                return Some(self.now - start);
            }
            if self.now - start >= limit {
                return None;
            }
            self.run_for(step);
        }
    }

    /// Runs until every live peer is connected into one mesh in truth,
    /// [`Sim::check_routes`] passes and so does [`Sim::check_broadcast`] for
    /// 16 sources (checked every 100 ms); returns the time taken. Panics
    /// with the last mismatch after `limit`.
    pub fn converge_within(&mut self, limit: Duration) -> Duration {
        self.converge_when(limit, |_| Ok(()))
    }

    /// Like [`Sim::converge_within`], but `also` must hold too (for example
    /// [`Sim::check_links`], so that a transient state with some links
    /// still missing does not count).
    pub fn converge_when(
        &mut self,
        limit: Duration,
        also: impl FnMut(&mut Sim) -> Result<(), String>,
    ) -> Duration {
        let all = self.live_peers();
        self.converge_into_when(&[all], limit, also)
    }

    /// Like [`Sim::converge_within`], but the truth must split into exactly
    /// these connected components (every live peer in one of them).
    pub fn converge_into(&mut self, groups: &[Vec<PeerId>], limit: Duration) -> Duration {
        self.converge_into_when(groups, limit, |_| Ok(()))
    }

    fn converge_into_when(
        &mut self,
        groups: &[Vec<PeerId>],
        limit: Duration,
        mut also: impl FnMut(&mut Sim) -> Result<(), String>,
    ) -> Duration {
        let want: BTreeSet<BTreeSet<PeerId>> =
            groups.iter().map(|g| g.iter().copied().collect()).collect();
        let mut check = |s: &mut Sim| -> Result<(), String> {
            let got: BTreeSet<BTreeSet<PeerId>> = s.components().into_iter().collect();
            if got != want {
                let sizes: Vec<usize> = got.iter().map(BTreeSet::len).collect();
                return Err(format!(
                    "connected components of sizes {sizes:?} are not the expected {:?}",
                    want.iter().map(BTreeSet::len).collect::<Vec<_>>()
                ));
            }
            also(s)?;
            s.check_routes()?;
            s.check_broadcast(16)
        };
        match self.run_until(limit, Duration::from_millis(100), |s| check(s).is_ok()) {
            Some(t) => t,
            None => {
                let why = check(self).unwrap_err();
                panic!("no convergence within {limit:?} (at {:?}): {why}", self.now)
            }
        }
    }

    // ----- the truth and the checks -----

    /// The live, established connections (see the module docs), with every
    /// live peer as a key.
    pub fn true_graph(&self) -> PeerGraph {
        let mut g: PeerGraph = self
            .live_peers()
            .into_iter()
            .map(|p| (self.peers[p].name, BTreeSet::new()))
            .collect();
        for c in self.links.values() {
            if c.broken || !self.link_up(c.peers[0], c.peers[1]) {
                continue;
            }
            let remote_of = |side: usize| -> Option<PeerName> {
                let (inc, h) = c.ends[side]?;
                let slot = &self.peers[c.peers[side]];
                if slot.incarnation != inc {
                    return None;
                }
                let conn = slot.router.as_ref()?.connection(h)?;
                match &conn.state {
                    ConnState::Established { remote, .. } => Some(remote.name),
                    _ => None,
                }
            };
            let (na, nb) = (self.peers[c.peers[0]].name, self.peers[c.peers[1]].name);
            if remote_of(0) == Some(nb) && remote_of(1) == Some(na) {
                g.entry(na).or_default().insert(nb);
                g.entry(nb).or_default().insert(na);
            }
        }
        g
    }

    /// Checks that each of these peer pairs is an edge of the truth.
    pub fn check_links(&self, pairs: &[(PeerId, PeerId)]) -> Result<(), String> {
        let truth = self.true_graph();
        let missing: Vec<&(PeerId, PeerId)> = pairs
            .iter()
            .filter(|(a, b)| {
                !truth
                    .get(&self.peers[*a].name)
                    .is_some_and(|n| n.contains(&self.peers[*b].name))
            })
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("links not established: {missing:?}"))
        }
    }

    /// Connected components of [`Sim::true_graph`], each a set of peers.
    pub fn components(&self) -> Vec<BTreeSet<PeerId>> {
        let truth = self.true_graph();
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for &name in truth.keys() {
            if seen.contains(&name) {
                continue;
            }
            let tree = reference_bfs(&truth, name);
            seen.extend(tree.order.iter().copied());
            out.push(tree.order.iter().map(|n| self.by_name[n]).collect());
        }
        out
    }

    /// Checks every live router's unicast routes against [`reference_bfs`]
    /// on [`Sim::true_graph`]: same next hop and hop count for every peer
    /// reachable in truth, no route to anything else, and the reachable
    /// peers known under their current UID.
    pub fn check_routes(&self) -> Result<(), String> {
        let truth = self.true_graph();
        // Start where the last check failed: while waiting for convergence
        // the same peer tends to lag, and this keeps each check to one BFS.
        let mut live = self.live_peers();
        let start = live.partition_point(|&p| p < self.check_hint.get());
        live.rotate_left(start);
        for p in live {
            self.check_hint.set(p);
            let me = self.peers[p].name;
            let tree = reference_bfs(&truth, me);
            let router = self.router(p);
            let routes = router.topology().routes();
            for &dest in &tree.order[1..] {
                let want = (tree.first_hop[&dest], tree.hops[&dest]);
                let got = routes.next_hop(dest).zip(routes.hops(dest));
                if got != Some(want) {
                    return Err(format!(
                        "peer {p} ({me}) routes to {dest} (peer {:?}) via {got:?}, truth says (next hop, hops) = {want:?}",
                        self.peer_by_name(dest)
                    ));
                }
                let uid = router.topology().get(dest).map(|e| e.uid);
                let current = self.peer_by_name(dest).and_then(|d| self.uid(d));
                if uid != current {
                    return Err(format!(
                        "peer {p} ({me}) knows {dest} with uid {uid:?}, its current uid is {current:?}"
                    ));
                }
            }
            let extra = routes.unicast().count() + 1 - tree.order.len();
            if extra != 0 {
                let stale: Vec<PeerName> = routes
                    .unicast()
                    .map(|(d, _)| d)
                    .filter(|d| !tree.hops.contains_key(d))
                    .collect();
                return Err(format!(
                    "peer {p} ({me}) has routes to peers unreachable in truth: {stale:?}"
                ));
            }
        }
        Ok(())
    }

    /// Checks broadcast trees: for each source S (all live peers, or the
    /// first `max_sources` of them in a seeded random order), every live
    /// peer's `broadcast_next_hops(S)` equals its children in the reference
    /// BFS tree rooted at S.
    pub fn check_broadcast(&mut self, max_sources: usize) -> Result<(), String> {
        let truth = self.true_graph();
        let mut sources = self.live_peers();
        if sources.len() > max_sources {
            sources.shuffle(&mut StdRng::seed_from_u64(self.config.seed ^ 0xb4));
            sources.truncate(max_sources);
        }
        for s in sources {
            let src = self.peers[s].name;
            let tree = reference_bfs(&truth, src);
            for p in self.live_peers() {
                let me = self.peers[p].name;
                let want = tree.children(me);
                let router = self.peers[p].router.as_mut().expect("live");
                let got = router.topology_mut().routes_mut().broadcast_next_hops(src);
                if got != want.as_slice() {
                    return Err(format!(
                        "peer {p} ({me}) forwards broadcasts from {src} (peer {s}) to {got:?}, truth says {want:?}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks that no live router holds a topology entry for a peer that is
    /// not reachable from it in truth (dead, or cut off and garbage
    /// collected), nor one under an old UID.
    pub fn check_no_stale_entries(&self) -> Result<(), String> {
        let truth = self.true_graph();
        for p in self.live_peers() {
            let me = self.peers[p].name;
            let tree = reference_bfs(&truth, me);
            for e in self.router(p).topology().peers() {
                let current = self.peer_by_name(e.name).and_then(|d| self.uid(d));
                if !tree.hops.contains_key(&e.name) || current != Some(e.uid) {
                    return Err(format!(
                        "peer {p} ({me}) still holds an entry for {} (uid {}, peer {:?}, current uid {current:?})",
                        e.name,
                        e.uid,
                        self.peer_by_name(e.name)
                    ));
                }
            }
        }
        Ok(())
    }

    // ----- internals -----

    fn start(&mut self, peer: PeerId) {
        let uid = PeerUid(self.rng.random());
        let seed = self.rng.random();
        let slot = &self.peers[peer];
        let identity = Identity {
            name: slot.name,
            nickname: slot.nickname.clone(),
            uid,
        };
        let mut config = RouterConfig::new(identity, LISTEN_PORT, seed);
        config.discovery = self.config.discovery;
        (self.config.configure)(&mut config);
        let now = self.base + self.now;
        let mut router = Router::new(config, now);
        if let Some(setup) = self.setup.as_mut() {
            setup(peer, &mut router, now);
        }
        let targets = slot.targets.clone();
        self.peers[peer].router = Some(router);
        self.act(peer, |r, now| r.add_targets(now, targets));
    }

    fn push(&mut self, at: Duration, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            at,
            seq: self.seq,
            event,
        }));
    }

    fn sample_latency(&mut self) -> Duration {
        let (lo, hi) = self.config.net.latency;
        self.rng.random_range(lo..=hi)
    }

    /// Drains the router's actions, then (re)arms its timer.
    fn sync(&mut self, peer: PeerId) {
        while let Some(action) = self.peers[peer]
            .router
            .as_mut()
            .and_then(Router::poll_action)
        {
            self.apply(peer, action);
        }
        let Some(router) = self.peers[peer].router.as_ref() else {
            return;
        };
        let next = router
            .poll_timeout()
            .map(|t| t.saturating_duration_since(self.base).max(self.now));
        let slot = &mut self.peers[peer];
        if next != slot.timer {
            slot.timer = next;
            slot.timer_gen += 1;
            let generation = slot.timer_gen;
            if let Some(at) = next {
                self.push(at, Event::Timer { peer, generation });
            }
        }
    }

    fn apply(&mut self, peer: PeerId, action: Action) {
        let inc = self.peers[peer].incarnation;
        match action {
            Action::Dial { target } => {
                let rtt = self.sample_latency() * 2;
                let acceptor = target
                    .socket_addr()
                    .and_then(|a| self.by_addr.get(&a).copied());
                let (at, event) = match acceptor {
                    Some(acceptor) if self.link_up(peer, acceptor) => (
                        self.now + rtt,
                        Event::Connect {
                            dialer: peer,
                            incarnation: inc,
                            target,
                            acceptor,
                        },
                    ),
                    _ => (
                        self.now + self.config.net.connect_timeout,
                        Event::DialFailed {
                            peer,
                            incarnation: inc,
                            target,
                            error: "connection timed out",
                        },
                    ),
                };
                self.push(at, event);
            }
            Action::Send { conn, bytes } => {
                if let Some(&(link, side)) = self.ends.get(&(peer, inc, conn)) {
                    self.transmit(link, 1 - side, bytes);
                }
            }
            Action::Close { conn, reason, .. } => {
                let Some((link, side)) = self.ends.remove(&(peer, inc, conn)) else {
                    return;
                };
                let Some(c) = self.links.get_mut(&link) else {
                    return;
                };
                c.ends[side] = None;
                let remote = c.peers[1 - side];
                let other_open = c.ends[1 - side].is_some();
                self.closes.push(CloseRecord {
                    at: self.now,
                    peer,
                    remote,
                    link,
                    reason,
                });
                if other_open {
                    let at = self.in_order(link, 1 - side);
                    self.push(at, Event::Fin { link, to: 1 - side });
                } else {
                    self.forget_link_if_closed(link);
                }
            }
        }
    }

    /// Delivery time of the next chunk towards `to`, after every earlier one.
    fn in_order(&mut self, link: LinkId, to: usize) -> Duration {
        let mut delay = self.sample_latency();
        let net = &self.config.net;
        if net.stall_probability > 0.0 && self.rng.random_bool(net.stall_probability) {
            let (lo, hi) = net.stall;
            delay += self.rng.random_range(lo..=hi);
        }
        let c = self.links.get_mut(&link).expect("link exists");
        let at = (self.now + delay).max(c.tail[to]);
        c.tail[to] = at;
        at
    }

    fn transmit(&mut self, link: LinkId, to: usize, bytes: Vec<u8>) {
        let pieces = self.config.net.max_split.clamp(1, bytes.len().max(1));
        let pieces = self.rng.random_range(1..=pieces);
        let mut cuts: Vec<usize> = (1..pieces)
            .map(|_| self.rng.random_range(1..bytes.len()))
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut start = 0;
        for end in cuts.into_iter().chain([bytes.len()]) {
            let at = self.in_order(link, to);
            self.push(
                at,
                Event::Deliver {
                    link,
                    to,
                    bytes: bytes[start..end].to_vec(),
                },
            );
            start = end;
        }
    }

    fn reset_link(&mut self, link: LinkId) {
        let Some(c) = self.links.get_mut(&link) else {
            return;
        };
        c.broken = true;
        let open = [c.ends[0].is_some(), c.ends[1].is_some()];
        let at = self.now + Duration::from_millis(1);
        for side in (0..2).filter(|&s| open[s]) {
            self.push(at, Event::Reset { link, to: side });
        }
    }

    fn forget_link_if_closed(&mut self, link: LinkId) {
        if self
            .links
            .get(&link)
            .is_some_and(|c| c.ends.iter().all(Option::is_none))
        {
            self.links.remove(&link);
        }
    }

    /// The router end of `link` on side `to`, if that side is open.
    fn end(&self, link: LinkId, to: usize) -> Option<(PeerId, ConnHandle)> {
        let c = self.links.get(&link)?;
        let (inc, h) = c.ends[to]?;
        let peer = c.peers[to];
        (self.peers[peer].incarnation == inc && self.is_alive(peer)).then_some((peer, h))
    }

    /// Whether bytes on `link` still get through; marks it broken if not.
    fn passes(&mut self, link: LinkId) -> bool {
        let Some(c) = self.links.get(&link) else {
            return false;
        };
        if c.broken {
            return false;
        }
        let (a, b) = (c.peers[0], c.peers[1]);
        if self.link_up(a, b) {
            return true;
        }
        if let Some(c) = self.links.get_mut(&link) {
            c.broken = true;
        }
        false
    }

    fn process(&mut self, event: Event) {
        match event {
            Event::Timer { peer, generation } => {
                let slot = &mut self.peers[peer];
                if slot.timer_gen != generation || slot.router.is_none() {
                    return;
                }
                slot.timer = None;
                if slot.busy.0 == self.now {
                    slot.busy.1 += 1;
                    assert!(
                        slot.busy.1 < 1000,
                        "peer {peer} keeps asking to be woken at {:?}: poll_timeout does not advance",
                        self.now
                    );
                } else {
                    slot.busy = (self.now, 0);
                }
                self.act(peer, |r, now| r.handle_timeout(now));
            }
            Event::Connect {
                dialer,
                incarnation,
                target,
                acceptor,
            } => {
                if self.peers[dialer].incarnation != incarnation || !self.is_alive(dialer) {
                    return;
                }
                if !self.link_up(dialer, acceptor) {
                    let at = self.now + self.config.net.connect_timeout;
                    self.push(
                        at,
                        Event::DialFailed {
                            peer: dialer,
                            incarnation,
                            target,
                            error: "connection timed out",
                        },
                    );
                    return;
                }
                if !self.is_alive(acceptor) {
                    self.act(dialer, |r, now| {
                        r.handle_dial_failed(now, &target, "connection refused")
                    });
                    return;
                }
                let link = self.next_link;
                self.next_link += 1;
                let port = self.next_ephemeral_port;
                self.next_ephemeral_port = self.next_ephemeral_port.checked_add(1).unwrap_or(32768);
                let dialer_sock = SocketAddr::new(self.peers[dialer].addr.ip(), port);
                let acceptor_sock = self.peers[acceptor].addr;
                let acc_inc = self.peers[acceptor].incarnation;
                self.links.insert(
                    link,
                    SimConn {
                        peers: [dialer, acceptor],
                        ends: [None, None],
                        tail: [self.now; 2],
                        broken: false,
                    },
                );
                // Register both handles before either side's actions run, so
                // the first bytes each sends find the other end.
                let now = self.now();
                let ha = self.peers[acceptor]
                    .router
                    .as_mut()
                    .expect("alive")
                    .handle_inbound(now, dialer_sock);
                let hd = self.peers[dialer]
                    .router
                    .as_mut()
                    .expect("alive")
                    .handle_dial_succeeded(now, &target, acceptor_sock);
                let c = self.links.get_mut(&link).expect("just inserted");
                c.ends = [Some((incarnation, hd)), Some((acc_inc, ha))];
                self.ends.insert((acceptor, acc_inc, ha), (link, 1));
                self.ends.insert((dialer, incarnation, hd), (link, 0));
                self.sync(acceptor);
                self.sync(dialer);
            }
            Event::DialFailed {
                peer,
                incarnation,
                target,
                error,
            } => {
                if self.peers[peer].incarnation == incarnation && self.is_alive(peer) {
                    self.act(peer, |r, now| r.handle_dial_failed(now, &target, error));
                }
            }
            Event::Deliver { link, to, bytes } => {
                if !self.passes(link) {
                    return;
                }
                if let Some((peer, h)) = self.end(link, to) {
                    self.act(peer, |r, now| r.handle_bytes(now, h, &bytes));
                }
            }
            Event::Fin { link, to } => {
                if !self.passes(link) {
                    return;
                }
                if let Some((peer, h)) = self.end(link, to) {
                    self.act(peer, |r, now| {
                        r.handle_closed(now, h, "connection closed by peer")
                    });
                }
            }
            Event::Reset { link, to } => {
                if let Some((peer, h)) = self.end(link, to) {
                    self.act(peer, |r, now| {
                        r.handle_closed(now, h, "connection reset by peer")
                    });
                }
            }
        }
    }
}

impl fmt::Debug for Sim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim")
            .field("seed", &self.config.seed)
            .field("elapsed", &self.now)
            .field("peers", &self.peers.len())
            .field("live", &self.live_peers().len())
            .field("links", &self.links.len())
            .field("queued", &self.queue.len())
            .field("events", &self.events)
            .finish()
    }
}
