//! Connection liveness: a blackholed link is declared dead by heartbeat
//! timeout and routes move; simultaneous dials end with one connection.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use weft_tests::sim::{Death, PeerId, Sim, SimConfig, connected_without};

/// See `sim_convergence.rs`.
const EVENTUAL_BOUND: Duration = Duration::from_secs(60);
/// Defaults of `RouterConfig` (checked below).
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(4);
/// Largest one-way latency of the default simulated network.
const MAX_LATENCY: Duration = Duration::from_millis(20);

/// When each end of the `a`–`b` connection closed it after `since`, and why.
fn closed_after(
    sim: &Sim,
    a: PeerId,
    b: PeerId,
    since: Duration,
) -> Vec<(PeerId, Duration, String)> {
    sim.close_log()
        .iter()
        .filter(|c| c.at >= since && ((c.peer, c.remote) == (a, b) || (c.peer, c.remote) == (b, a)))
        .map(|c| (c.peer, c.at - since, c.reason.clone()))
        .collect()
}

/// A converged 30-peer mesh and one of its links whose loss keeps it connected.
fn mesh_and_redundant_link(seed: u64) -> (Sim, PeerId, PeerId) {
    let mut sim = Sim::new(SimConfig::new(seed).discovery(false));
    let (peers, edges) = sim.add_random_mesh(30, 3.0);
    let config = sim.router(peers[0]).config();
    assert_eq!(
        (config.heartbeat_interval, config.heartbeat_timeout),
        (HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT)
    );
    sim.converge_when(EVENTUAL_BOUND, |s| s.check_links(&edges));
    let mut rng = StdRng::seed_from_u64(seed);
    let (a, b) = loop {
        let i = rng.random_range(0..edges.len());
        if connected_without(peers.len(), &edges, Some(i)) {
            break edges[i];
        }
    };
    (sim, a, b)
}

#[test]
fn a_blackholed_link_is_declared_dead_within_the_heartbeat_timeout() {
    for seed in 1..=3 {
        let (mut sim, a, b) = mesh_and_redundant_link(seed);
        let (na, nb) = (sim.name(a), sim.name(b));
        let cut = sim.elapsed();
        sim.cut_link(a, b, Death::Silent);
        let detected = sim
            .run_until(HEARTBEAT_TIMEOUT * 2, Duration::from_millis(10), |s| {
                closed_after(s, a, b, cut).len() == 2
            })
            .expect("both ends close the connection");
        let closes = closed_after(&sim, a, b, cut);
        println!("seed {seed}: link {a}-{b} cut silently; closed after {closes:?}");
        for (peer, after, reason) in &closes {
            assert!(reason.starts_with("no heartbeat"), "{peer}: {reason}");
            // The last bytes arrived at most one heartbeat interval (plus
            // latency) before the cut, and the timeout counts from them.
            assert!(
                *after <= HEARTBEAT_TIMEOUT + Duration::from_millis(10)
                    && *after + HEARTBEAT_INTERVAL + MAX_LATENCY * 2 >= HEARTBEAT_TIMEOUT,
                "peer {peer} declared the link dead {after:?} after the cut"
            );
        }
        assert!(detected <= HEARTBEAT_TIMEOUT + Duration::from_millis(10));
        // Each end routes around the cut as soon as it noticed.
        for (from, to) in [(a, nb), (b, na)] {
            let routes = sim.router(from).topology().routes();
            assert!(
                routes.hops(to).is_some_and(|h| h > 1) && routes.next_hop(to) != Some(to),
                "peer {from} still routes directly to {to}"
            );
        }
        let t = sim.converge_within(EVENTUAL_BOUND);
        sim.check_broadcast(usize::MAX).unwrap();
        println!("seed {seed}: whole mesh converged {t:?} after detection");
    }
}

#[test]
fn a_reset_link_is_noticed_at_once() {
    let (mut sim, a, b) = mesh_and_redundant_link(4);
    let cut = sim.elapsed();
    sim.cut_link(a, b, Death::Reset);
    sim.run_for(Duration::from_millis(50));
    let closes = closed_after(&sim, a, b, cut);
    println!("link {a}-{b} reset; closed after {closes:?}");
    assert_eq!(closes.len(), 2, "{closes:?}");
    let t = sim.converge_within(EVENTUAL_BOUND);
    println!("converged {t:?} after the reset");
}

/// Both peers dial each other at the same instant; both connections
/// complete their handshakes; each side must keep the same one.
#[test]
fn simultaneous_dials_leave_exactly_one_connection() {
    for seed in 0..32 {
        let mut sim = Sim::new(SimConfig::new(seed));
        let a = sim.add_peer();
        let b = sim.add_peer();
        // No virtual time passes between the two: both dial at t = 0.
        sim.add_targets(a, &[b]);
        sim.add_targets(b, &[a]);
        sim.run_for(Duration::from_secs(30));
        let links = sim.links_between(a, b);
        assert_eq!(links.len(), 1, "seed {seed}: {links:?}");
        let l = &links[0];
        assert!(l.open == [true, true] && !l.broken, "seed {seed}: {l:?}");
        assert!(
            l.established_both_ways() && l.conn_id[0] == l.conn_id[1],
            "seed {seed}: {l:?}"
        );
        for (p, q) in [(a, b), (b, a)] {
            assert_eq!(sim.router(p).neighbours(), vec![sim.name(q)]);
            assert_eq!(
                sim.router(p).connections().count(),
                1,
                "seed {seed}: peer {p}"
            );
        }
        // Only the duplicate was closed, once per side, and nothing flapped.
        let closes = sim.close_log();
        assert!(closes.len() <= 2, "seed {seed}: {closes:?}");
        assert!(
            closes
                .iter()
                .all(|c| c.reason.starts_with("duplicate connection")
                    || c.reason.starts_with("closed by peer: duplicate connection")),
            "seed {seed}: {closes:?}"
        );
        if seed == 0 {
            println!("seed 0: kept {l:?}; closed {closes:?}");
        }
        sim.converge_within(Duration::ZERO);
    }
}

/// A peer given its own address (say, a host list shared by every host)
/// recognises itself and never dials it again.
#[test]
fn a_peer_targeting_itself_stops_dialling_it() {
    let mut sim = Sim::new(SimConfig::new(3));
    let (peers, edges) = sim.add_random_mesh(5, 2.0);
    sim.add_targets(peers[0], &[peers[0]]);
    sim.converge_when(Duration::from_secs(10), |s| s.check_links(&edges));
    sim.run_for(Duration::from_secs(120));
    let own: Vec<_> = sim
        .close_log()
        .iter()
        .filter(|c| c.peer == peers[0] && c.remote == peers[0])
        .map(|c| c.reason.clone())
        .collect();
    assert_eq!(
        own,
        vec!["connected to ourselves"; 2],
        "one attempt, both ends closed"
    );
    sim.check_routes().unwrap();
    let status = sim.router(peers[0]).status(sim.now());
    let me = sim.addr(peers[0]).to_string();
    let target = status.targets.iter().find(|t| t.address == me).unwrap();
    assert_eq!(target.state, "self");
}
