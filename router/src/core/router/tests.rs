//! Router-level tests: a few routers wired together by a synchronous pump
//! that moves bytes between connection handles. The full simulation (many
//! peers, latency, loss, partitions) lives in the `tests` crate.

use std::collections::HashMap;

use super::*;
use crate::core::gossip::GossipKind;
use crate::core::identity::PeerUid;
use crate::core::wire::control::ControlMessage;

struct Net {
    now: Instant,
    routers: Vec<Router>,
    addrs: Vec<SocketAddr>,
    /// (router, handle) -> (router, handle) of the other end.
    links: HashMap<(usize, ConnHandle), (usize, ConnHandle)>,
    /// Pairs whose traffic is silently dropped.
    blackholed: Vec<(usize, usize)>,
    /// Pairs whose UDP (only) is dropped.
    udp_blocked: Vec<(usize, usize)>,
    /// Largest UDP payload carried between a pair, when limited.
    udp_limit: HashMap<(usize, usize), usize>,
    closed: Vec<(usize, String)>,
    /// Routers that crashed: nothing answers at their address.
    down: Vec<usize>,
}

fn identity(i: u64, uid: u64) -> Identity {
    Identity {
        name: PeerName::from_u64(0x0200_0000_0000 + i).unwrap(),
        nickname: format!("h{i}"),
        uid: PeerUid(uid),
    }
}

fn config(id: Identity) -> RouterConfig {
    let mut c = RouterConfig::new(id, 6783, 1);
    c.discovery = false;
    c
}

impl Net {
    fn new(configs: Vec<RouterConfig>) -> Self {
        let now = Instant::now();
        let addrs = (0..configs.len())
            .map(|i| format!("192.0.2.{}:6783", i + 1).parse().unwrap())
            .collect();
        let routers = configs.into_iter().map(|c| Router::new(c, now)).collect();
        Self {
            now,
            routers,
            addrs,
            links: HashMap::new(),
            blackholed: Vec::new(),
            udp_blocked: Vec::new(),
            udp_limit: HashMap::new(),
            closed: Vec::new(),
            down: Vec::new(),
        }
    }

    fn target(&self, i: usize) -> PeerAddr {
        PeerAddr::from_socket(self.addrs[i])
    }

    fn index_of(&self, target: &PeerAddr) -> Option<usize> {
        self.addrs
            .iter()
            .position(|a| Some(*a) == target.socket_addr())
    }

    /// Moves actions until nothing is left to do at the current time.
    fn pump(&mut self) {
        loop {
            let mut progressed = false;
            for i in 0..self.routers.len() {
                while let Some(action) = self.routers[i].poll_action() {
                    progressed = true;
                    self.apply(i, action);
                }
                while let Some((to, bytes)) = self.routers[i].poll_transmit_udp() {
                    progressed = true;
                    self.deliver_udp(i, to, &bytes);
                }
            }
            if !progressed {
                return;
            }
        }
    }

    fn deliver_udp(&mut self, i: usize, to: SocketAddr, bytes: &[u8]) {
        let Some(j) = self.addrs.iter().position(|a| *a == to) else {
            return;
        };
        if self.down.contains(&j) {
            return;
        }
        let pair = (i.min(j), i.max(j));
        if self.blackholed.contains(&pair) || self.udp_blocked.contains(&pair) {
            return;
        }
        if self.udp_limit.get(&pair).is_some_and(|&l| bytes.len() > l) {
            return;
        }
        let from = self.addrs[i];
        self.routers[j].handle_udp(self.now, from, bytes);
    }

    fn apply(&mut self, i: usize, action: Action) {
        let now = self.now;
        match action {
            Action::Dial { target } => match self.index_of(&target) {
                Some(j) if !self.down.contains(&j) => {
                    let mine = self.routers[i].handle_dial_succeeded(now, &target, self.addrs[j]);
                    let src = SocketAddr::new(self.addrs[i].ip(), 40000 + mine as u16);
                    let theirs = self.routers[j].handle_inbound(now, src);
                    self.links.insert((i, mine), (j, theirs));
                    self.links.insert((j, theirs), (i, mine));
                }
                _ => self.routers[i].handle_dial_failed(now, &target, "connection refused"),
            },
            Action::Send { conn, bytes } => {
                if let Some(&(j, h)) = self.links.get(&(i, conn))
                    && !self.blackholed.contains(&(i.min(j), i.max(j)))
                {
                    self.routers[j].handle_bytes(now, h, &bytes);
                }
            }
            Action::Close { conn, reason, .. } => {
                self.closed.push((i, reason));
                if let Some((j, h)) = self.links.remove(&(i, conn)) {
                    self.links.remove(&(j, h));
                    self.routers[j].handle_closed(now, h, "closed by peer");
                }
            }
        }
    }

    /// Advances virtual time in steps, running timers.
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now = (self.now + Duration::from_millis(100)).min(end);
            for r in &mut self.routers {
                if r.poll_timeout().is_some_and(|t| t <= self.now) {
                    r.handle_timeout(self.now);
                }
            }
            self.pump();
        }
    }

    fn established(&self, i: usize) -> Vec<PeerName> {
        self.routers[i].neighbours()
    }

    /// Router `i` dies: its peers see their connections reset, and nothing
    /// answers at its address until [`Net::restart`].
    fn crash(&mut self, i: usize) {
        let now = self.now;
        let theirs: Vec<(usize, ConnHandle)> = self
            .links
            .iter()
            .filter(|(_, (j, _))| *j == i)
            .map(|(&end, _)| end)
            .collect();
        for (j, h) in theirs {
            if let Some(other) = self.links.remove(&(j, h)) {
                self.links.remove(&other);
            }
            self.routers[j].handle_closed(now, h, "connection reset by peer");
        }
        self.down.push(i);
        self.pump();
    }

    /// A new incarnation of router `i`, with `config`, at the same address.
    fn restart(&mut self, i: usize, config: RouterConfig) {
        self.routers[i] = Router::new(config, self.now);
        self.down.retain(|&j| j != i);
        self.pump();
    }
}

#[test]
fn two_routers_handshake_and_share_topology() {
    let mut net = Net::new(vec![config(identity(1, 11)), config(identity(2, 22))]);
    let t = net.target(1);
    net.routers[0].add_targets(net.now, [t]);
    net.pump();
    let (a, b) = (
        net.routers[0].identity().name,
        net.routers[1].identity().name,
    );
    assert_eq!(net.established(0), vec![b]);
    assert_eq!(net.established(1), vec![a]);
    assert_eq!(net.routers[0].topology().routes().next_hop(b), Some(b));
    assert_eq!(net.routers[1].topology().routes().next_hop(a), Some(a));
    let status = net.routers[1].status(net.now);
    assert_eq!(status.connections[0].direction, "inbound");
    assert_eq!(status.connections[0].state, "established");
    assert_eq!(status.peers.len(), 2);
    // both sides derive the same connection id
    let id0 = net.routers[0].connections().next().unwrap().id();
    let id1 = net.routers[1].connections().next().unwrap().id();
    assert!(id0.is_some() && id0 == id1);
}

#[test]
fn connecting_to_ourselves_is_rejected_and_never_retried() {
    let mut net = Net::new(vec![config(identity(1, 11))]);
    let t = net.target(0);
    net.routers[0].add_targets(net.now, [t.clone()]);
    net.pump();
    assert!(net.established(0).is_empty());
    assert!(
        net.closed
            .iter()
            .any(|(_, r)| r == "connected to ourselves"),
        "{:?}",
        net.closed
    );
    net.advance(Duration::from_secs(120));
    let status = net.routers[0].status(net.now);
    assert_eq!(status.targets[0].state, "self");
    assert!(
        net.routers[0].connections().next().is_none(),
        "no further dial"
    );
}

#[test]
fn a_name_collision_is_rejected_with_a_reason_on_both_sides() {
    let mut net = Net::new(vec![config(identity(1, 11)), config(identity(1, 99))]);
    let t = net.target(1);
    net.routers[0].add_targets(net.now, [t]);
    net.pump();
    assert!(net.established(0).is_empty() && net.established(1).is_empty());
    assert_eq!(net.closed.len(), 2, "{:?}", net.closed);
    for (_, reason) in &net.closed {
        assert!(reason.contains("peer name collision"), "{reason}");
    }
    let status = net.routers[0].status(net.now);
    assert_eq!(status.targets[0].state, "retrying");
    assert!(
        status.targets[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("collision")
    );
}

#[test]
fn no_common_version_is_rejected_on_both_sides_naming_both_versions() {
    // A router of the build before version 2 (it said 1) dials this one.
    let mut old = config(identity(1, 11));
    old.protocol_versions = 1..=1;
    let new = config(identity(2, 22));
    assert_eq!(new.protocol_versions, 2..=2, "this build speaks 2 alone");
    let mut net = Net::new(vec![old, new]);
    let t = net.target(1);
    net.routers[0].add_targets(net.now, [t]);
    net.pump();
    assert!(net.established(0).is_empty() && net.established(1).is_empty());
    let reason = |i: usize| {
        net.closed
            .iter()
            .find(|(r, _)| *r == i)
            .map(|(_, reason)| reason.as_str())
            .unwrap_or_else(|| panic!("router {i} closed nothing: {:?}", net.closed))
    };
    assert_eq!(
        reason(0),
        "no common protocol version: we speak 1..=1, the peer speaks 2..=2; upgrade the older router"
    );
    assert_eq!(
        reason(1),
        "no common protocol version: we speak 2..=2, the peer speaks 1..=1; upgrade the older router"
    );
    assert!(
        net.closed
            .iter()
            .all(|(_, r)| r.starts_with("no common protocol version")),
        "{:?}",
        net.closed
    );
}

#[test]
fn highest_common_version_is_chosen() {
    let mut a = config(identity(1, 11));
    a.protocol_versions = 1..=3;
    let mut b = config(identity(2, 22));
    b.protocol_versions = 2..=5;
    let mut net = Net::new(vec![a, b]);
    let t = net.target(1);
    net.routers[0].add_targets(net.now, [t]);
    net.pump();
    assert_eq!(
        net.routers[0].status(net.now).connections[0].protocol_version,
        Some(3)
    );
    assert_eq!(
        net.routers[1].status(net.now).connections[0].protocol_version,
        Some(3)
    );
}

#[test]
fn simultaneous_dials_leave_exactly_one_connection_chosen_alike() {
    let mut net = Net::new(vec![config(identity(1, 11)), config(identity(2, 22))]);
    let (t0, t1) = (net.target(0), net.target(1));
    let now = net.now;
    net.routers[0].add_targets(now, [t1]);
    net.routers[1].add_targets(now, [t0]);
    net.pump();
    net.advance(Duration::from_secs(30));
    let c0: Vec<&Connection> = net.routers[0].connections().collect();
    let c1: Vec<&Connection> = net.routers[1].connections().collect();
    assert_eq!((c0.len(), c1.len()), (1, 1));
    assert_eq!(c0[0].id(), c1[0].id());
    // peer 1 has the lower name, so the survivor is the one it dialled
    assert!(c0[0].is_outbound() && !c1[0].is_outbound());
    // and neither keeps redialling
    for r in &net.routers {
        assert!(
            r.status(net.now)
                .targets
                .iter()
                .all(|t| t.state == "connected"),
            "{:?}",
            r.status(net.now).targets
        );
    }
}

#[test]
fn a_silent_connection_is_declared_dead_within_the_heartbeat_timeout() {
    let mut net = Net::new(vec![config(identity(1, 11)), config(identity(2, 22))]);
    let t = net.target(1);
    net.routers[0].add_targets(net.now, [t]);
    net.pump();
    net.advance(Duration::from_secs(10));
    assert_eq!(
        net.established(0).len(),
        1,
        "heartbeats keep an idle connection alive"
    );
    net.blackholed.push((0, 1));
    net.advance(Duration::from_millis(3500));
    assert_eq!(net.established(0).len(), 1);
    net.advance(Duration::from_millis(700));
    assert!(net.established(0).is_empty() && net.established(1).is_empty());
    assert!(
        net.closed
            .iter()
            .any(|(_, r)| r.starts_with("no heartbeat")),
        "{:?}",
        net.closed
    );
}

#[test]
fn a_line_relays_topology_so_the_ends_route_through_the_middle() {
    let mut net = Net::new((1..=3).map(|i| config(identity(i, i * 11))).collect());
    let t1 = net.target(1);
    let now = net.now;
    net.routers[0].add_targets(now, [t1.clone()]);
    net.routers[2].add_targets(now, [t1]);
    net.pump();
    let (a, b, c) = (
        net.routers[0].identity().name,
        net.routers[1].identity().name,
        net.routers[2].identity().name,
    );
    assert_eq!(net.routers[0].topology().routes().next_hop(c), Some(b));
    assert_eq!(net.routers[2].topology().routes().next_hop(a), Some(b));
    assert_eq!(net.routers[2].topology().routes().hops(a), Some(2));
}

#[test]
fn a_restarted_peer_replaces_its_old_connection_and_entry() {
    let mut net = Net::new(vec![config(identity(1, 11)), config(identity(2, 22))]);
    let t = net.target(1);
    net.routers[0].add_targets(net.now, [t]);
    net.pump();
    // Router 0 restarts (same name, new uid) without its old socket closing.
    let now = net.now;
    net.routers[0] = Router::new(config(identity(1, 12)), now);
    net.links.retain(|&(i, _), _| i != 0);
    let t = net.target(1);
    net.routers[0].add_targets(now, [t]);
    net.pump();
    let a = net.routers[0].identity().name;
    assert_eq!(net.routers[1].neighbours(), vec![a]);
    assert_eq!(
        net.routers[1].connections().count(),
        1,
        "the old incarnation's connection is gone"
    );
    assert_eq!(net.routers[1].topology().get(a).unwrap().uid, PeerUid(12));
    assert!(net.routers[1].topology().routes().reachable(a));
}

#[test]
fn garbage_on_the_port_is_rejected_without_a_reply() {
    let mut net = Net::new(vec![config(identity(1, 11))]);
    let now = net.now;
    let h = net.routers[0].handle_inbound(now, "192.0.2.9:5555".parse().unwrap());
    assert!(
        matches!(net.routers[0].poll_action(), Some(Action::Send { .. })),
        "our preamble"
    );
    net.routers[0].handle_bytes(now, h, b"GET / HTTP/1.1\r\n\r\n");
    match net.routers[0].poll_action() {
        Some(Action::Close { reason, .. }) => {
            assert!(reason.contains("not a weft router"), "{reason}")
        }
        other => panic!("expected close, got {other:?}"),
    }
    assert!(net.routers[0].poll_action().is_none());
}

#[test]
fn a_handshake_that_stalls_times_out() {
    let mut net = Net::new(vec![config(identity(1, 11))]);
    let now = net.now;
    net.routers[0].handle_inbound(now, "192.0.2.9:5555".parse().unwrap());
    net.pump();
    net.advance(Duration::from_secs(6));
    assert!(
        net.closed
            .iter()
            .any(|(_, r)| r.starts_with("handshake not completed")),
        "{:?}",
        net.closed
    );
    assert_eq!(net.routers[0].connections().count(), 0);
}

#[test]
fn a_connect_flood_is_refused_beyond_the_pending_limit_and_peers_keep_working() {
    let mut net = Net::new(vec![config(identity(1, 11)), config(identity(2, 22))]);
    let t = net.target(1);
    net.routers[0].add_targets(net.now, [t]);
    net.pump();
    let now = net.now;
    // From many addresses, so the per-address rate limit is not what
    // refuses them.
    for i in 0..(MAX_PENDING_HANDSHAKES + 10) {
        let ip = std::net::Ipv4Addr::new(198, 18, (i / 200) as u8, (i % 200) as u8 + 1);
        net.routers[1].handle_inbound(now, SocketAddr::new(ip.into(), 1000 + i as u16));
    }
    net.pump();
    let refused = net
        .closed
        .iter()
        .filter(|(_, r)| r.starts_with("too many pending handshakes"))
        .count();
    assert_eq!(refused, 10);
    assert_eq!(
        net.routers[1].connections().count(),
        MAX_PENDING_HANDSHAKES + 1
    );
    net.advance(Duration::from_secs(6));
    assert_eq!(
        net.routers[1].connections().count(),
        1,
        "stalled handshakes time out"
    );
    assert_eq!(
        net.established(1).len(),
        1,
        "the real peer stayed connected throughout"
    );
}

#[test]
fn one_address_opening_connections_fast_is_rate_limited() {
    let mut net = Net::new(vec![config(identity(1, 11)), config(identity(2, 22))]);
    let t = net.target(1);
    net.routers[0].add_targets(net.now, [t]);
    net.pump();
    let now = net.now;
    for i in 0..30u16 {
        net.routers[1].handle_inbound(
            now,
            SocketAddr::new("192.0.2.99".parse().unwrap(), 1000 + i),
        );
    }
    net.pump();
    let limited = net
        .closed
        .iter()
        .filter(|(_, r)| r.starts_with("too many connection attempts from 192.0.2.99"))
        .count();
    assert_eq!(
        limited,
        30 - crate::core::rate_limit::HANDSHAKE_BURST as usize
    );
    assert_eq!(net.established(1).len(), 1, "the real peer is unaffected");
}

fn connect_all(net: &mut Net, edges: &[(usize, usize)]) {
    let now = net.now;
    for &(a, b) in edges {
        let t = net.target(b);
        net.routers[a].add_targets(now, [t]);
    }
    net.pump();
}

#[test]
fn udp_heartbeats_make_a_connection_carry_data_with_a_verified_pmtu() {
    let mut net = Net::new(vec![config(identity(1, 11)), config(identity(2, 22))]);
    connect_all(&mut net, &[(0, 1)]);
    let b = net.routers[1].identity().name;
    assert_eq!(
        net.routers[0].topology().data_routes().next_hop(b),
        None,
        "no data before UDP is proven"
    );
    net.advance(Duration::from_secs(2));
    assert_eq!(net.routers[0].topology().data_routes().next_hop(b), Some(b));
    let status = net.routers[0].status(net.now);
    let dp = status.connections[0]
        .data_path
        .clone()
        .expect("data path status");
    assert!(dp.usable && dp.pmtu_verified);
    assert_eq!(dp.pmtu, 1472);
    assert_eq!(dp.udp_address, "192.0.2.2:6783");
    let view = net.routers[0].data_view();
    assert_eq!(view.neighbours[&b].payload_limit, 1472);
    assert!(view.routes.next_hop(b).is_some());
}

#[test]
fn data_routes_avoid_a_link_whose_udp_is_blocked() {
    // triangle 0-1, 0-2, 2-1 with UDP blocked between 0 and 1
    let mut net = Net::new((1..=3).map(|i| config(identity(i, i * 11))).collect());
    net.udp_blocked.push((0, 1));
    connect_all(&mut net, &[(0, 1), (0, 2), (2, 1)]);
    net.advance(Duration::from_secs(3));
    let (b, c) = (
        net.routers[1].identity().name,
        net.routers[2].identity().name,
    );
    assert_eq!(
        net.routers[0].topology().routes().next_hop(b),
        Some(b),
        "control goes direct"
    );
    assert_eq!(
        net.routers[0].topology().data_routes().next_hop(b),
        Some(c),
        "data goes around"
    );
    let status = net.routers[0].status(net.now);
    let direct = status
        .connections
        .iter()
        .find(|c| c.peer.as_deref() == Some(&b.to_string()))
        .unwrap();
    assert!(!direct.data_path.as_ref().unwrap().usable);
    // UDP comes back: data goes direct again
    net.udp_blocked.clear();
    net.advance(Duration::from_secs(3));
    assert_eq!(net.routers[0].topology().data_routes().next_hop(b), Some(b));
    // and dies again while TCP lives: routes move away within the UDP timeout
    net.udp_blocked.push((0, 1));
    net.advance(Duration::from_secs(4));
    assert_eq!(net.routers[0].topology().data_routes().next_hop(b), Some(c));
    assert_eq!(net.established(0).len(), 2, "TCP stayed up throughout");
}

#[test]
fn a_narrow_path_gets_a_smaller_verified_pmtu() {
    let mut net = Net::new(vec![config(identity(1, 11)), config(identity(2, 22))]);
    net.udp_limit.insert((0, 1), 1200);
    connect_all(&mut net, &[(0, 1)]);
    net.advance(Duration::from_secs(10));
    let dp = net.routers[0].status(net.now).connections[0]
        .data_path
        .clone()
        .unwrap();
    assert!(dp.usable && dp.pmtu_verified, "{dp:?}");
    assert!(dp.pmtu <= 1200 && dp.pmtu > 1190, "{dp:?}");
}

#[test]
fn a_neighbour_that_restarts_without_dialling_is_redialled_until_forgotten() {
    let discovering = |i: u64, uid: u64| {
        let mut c = config(identity(i, uid));
        c.discovery = true;
        c
    };
    let mut net = Net::new(vec![
        discovering(1, 11),
        discovering(2, 22),
        discovering(3, 33),
    ]);
    // 2 and 3 dial 1; discovery connects 2 and 3 as well.
    for i in [1, 2] {
        let t = net.target(0);
        net.routers[i].add_targets(net.now, [t]);
    }
    net.advance(Duration::from_secs(5));
    let three = net.routers[2].identity().name;
    for i in [0, 1] {
        assert!(net.established(i).contains(&three), "{i}: {:?}", net.closed);
    }

    // 3 crashes and is back a few seconds later, dialling nobody: 1, which
    // only ever had 3's inbound connection, and 2 both redial it.
    net.crash(2);
    net.advance(Duration::from_secs(3));
    assert!(!net.established(0).contains(&three));
    net.restart(2, discovering(3, 34));
    net.advance(Duration::from_secs(10));
    for i in [0, 1] {
        assert!(
            net.established(i).contains(&three),
            "router {i} did not redial the restarted peer"
        );
    }

    // Once the topology has forgotten it (gc_grace), nobody dials it.
    net.crash(2);
    net.advance(net.routers[0].config().gc_grace + Duration::from_secs(5));
    let three_addr = net.addrs[2].to_string();
    for i in [0, 1] {
        let targets = net.routers[i].status(net.now).targets;
        assert!(
            targets.iter().all(|t| t.address != three_addr),
            "router {i} still dials the forgotten peer: {targets:?}"
        );
    }
}

#[test]
fn udp_from_the_wrong_address_or_for_someone_else_is_ignored() {
    let mut net = Net::new(vec![config(identity(1, 11)), config(identity(2, 22))]);
    connect_all(&mut net, &[(0, 1)]);
    let (a, b) = (
        net.routers[0].identity().name,
        net.routers[1].identity().name,
    );
    let conn_id = net.routers[1].connections().next().unwrap().id().unwrap().0;
    let forged = crate::core::wire::udp::heartbeat(a, b, conn_id, true);
    let now = net.now;
    net.routers[1].handle_udp(now, "198.51.100.7:6783".parse().unwrap(), &forged);
    net.routers[1].handle_udp(now, "192.0.2.1:6783".parse().unwrap(), &forged[..10]);
    assert!(
        !net.routers[1].status(now).connections[0]
            .data_path
            .clone()
            .unwrap()
            .usable
    );
}

mod encryption {
    use super::*;

    fn noise(password: &str) -> HandshakeConfig {
        crate::core::crypto::test_config(password)
    }

    fn encrypted(i: u64, trusted: &[&str]) -> RouterConfig {
        let mut c = config(identity(i, i * 11));
        c.crypto = noise("sesame");
        c.trusted_subnets = trusted.iter().map(|s| s.parse().unwrap()).collect();
        c
    }

    fn installs(r: &mut Router) -> Vec<PeerName> {
        let mut out = Vec::new();
        while let Some(e) = r.poll_session() {
            if let SessionEvent::Install { peer, .. } = e {
                out.push(peer);
            }
        }
        out
    }

    #[test]
    fn encrypted_peers_get_data_sessions_unless_both_trust_the_subnet() {
        // (trusted subnets of router 1, of router 2, sessions expected)
        let cases: [(&[&str], &[&str], bool); 3] = [
            (&[], &[], true),
            (&["192.0.2.0/24"], &[], true),
            (&["192.0.2.0/24"], &["192.0.2.1/32"], false),
        ];
        for (a, b, sessions) in cases {
            let mut net = Net::new(vec![encrypted(1, a), encrypted(2, b)]);
            let t = net.target(1);
            net.routers[0].add_targets(net.now, [t]);
            net.pump();
            assert_eq!(net.established(0).len(), 1, "{a:?} {b:?}: {:?}", net.closed);
            let (one, two) = (
                net.routers[0].identity().name,
                net.routers[1].identity().name,
            );
            let got = (installs(&mut net.routers[0]), installs(&mut net.routers[1]));
            if sessions {
                assert_eq!(got, (vec![two], vec![one]), "{a:?} {b:?}");
            } else {
                assert_eq!(got, (vec![], vec![]), "{a:?} {b:?}");
            }
            assert_eq!(net.routers[0].encryption_mode(), "noise (password)");
            assert_eq!(
                net.routers[0].status(net.now).encryption.mode,
                "noise (password)"
            );
        }
    }

    #[test]
    fn control_channels_rekey_on_time_and_count_without_dropping_the_connection() {
        // (records per key, expected rekeys of each router in 10 minutes):
        // heartbeats alone carry the 120 s time limit; with a limit of two
        // records the count rules.
        for (records, rekeys) in [(1 << 30, 4..=5), (2, 40..=10_000)] {
            let configs = [encrypted(1, &[]), encrypted(2, &[])].map(|mut c| {
                c.data_limits.rekey_after_packets = records;
                c
            });
            let mut net = Net::new(configs.into());
            let t = net.target(1);
            net.routers[0].add_targets(net.now, [t]);
            net.pump();
            let id = |net: &Net| net.routers[0].connections().next().and_then(|c| c.id());
            let first = id(&net).expect("established");
            for _ in 0..60 {
                net.advance(Duration::from_secs(10));
            }
            for i in 0..2 {
                let n = net.routers[i].status(net.now).encryption.control_rekeys;
                assert!(
                    rekeys.contains(&n),
                    "router {i}: {n} rekeys, limit {records}"
                );
            }
            assert_eq!(id(&net), Some(first), "the connection survived its rekeys");
            assert!(net.closed.is_empty(), "{:?}", net.closed);
        }
    }

    #[test]
    fn a_wrong_password_never_establishes_and_says_why() {
        let mut bad = encrypted(2, &[]);
        bad.crypto = noise("other");
        let mut net = Net::new(vec![encrypted(1, &[]), bad]);
        let t = net.target(1);
        net.routers[0].add_targets(net.now, [t]);
        net.pump();
        assert!(net.established(0).is_empty());
        assert!(
            net.closed
                .iter()
                .any(|(_, r)| r == "authentication failed: password mismatch"),
            "{:?}",
            net.closed
        );
    }
}

#[test]
fn unicast_gossip_is_relayed_with_one_hop_less_and_dropped_at_its_limit() {
    // A line 0 - 1 - 2, in plaintext, so a test can speak for router 0.
    let mut net = Net::new((1..=3).map(|i| config(identity(i, i * 11))).collect());
    connect_all(&mut net, &[(0, 1), (1, 2)]);
    let from_0 = net
        .links
        .iter()
        .find(|(from, to)| from.0 == 1 && to.0 == 0)
        .map(|(from, _)| from.1)
        .expect("router 1 has a connection from router 0");
    let unicast = |hop_limit| {
        let msg = ControlMessage::GossipUnicast {
            channel: "test".into(),
            src: identity(1, 11).name,
            dst: identity(3, 33).name,
            hop_limit,
            payload: vec![7],
        };
        crate::core::wire::framing::encode_frame(&msg.encode()).unwrap()
    };
    let relayed = |net: &Net, i: usize| {
        net.routers[i]
            .gossip_stats()
            .sent
            .get(&("test".to_owned(), GossipKind::Unicast))
            .map_or(0, |c| c.messages)
    };
    let now = net.now;
    net.routers[1].handle_bytes(now, from_0, &unicast(1));
    net.pump();
    assert_eq!(net.routers[1].gossip_stats().hop_limit_exceeded, 1);
    assert_eq!(
        relayed(&net, 1),
        0,
        "a message at its limit goes no further"
    );

    net.routers[1].handle_bytes(now, from_0, &unicast(2));
    net.pump();
    assert_eq!(relayed(&net, 1), 1, "one hop left: relayed to router 2");
    let received = net.routers[2]
        .gossip_stats()
        .received
        .get(&("test".to_owned(), GossipKind::Unicast))
        .map_or(0, |c| c.messages);
    assert_eq!(received, 1);
    let reported = net.routers[2].status(net.now).gossip;
    assert!(
        reported
            .iter()
            .any(|g| g.channel == "test" && g.kind == "unicast" && g.received_messages == 1),
        "the status reports the core's gossip counters: {reported:?}"
    );
    assert!(net.closed.is_empty(), "{:?}", net.closed);
}
