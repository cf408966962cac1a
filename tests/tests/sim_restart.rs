//! A peer restarts under the same name with a new UID: every other peer
//! ends up knowing the new incarnation, whose entry must outrank the old
//! one's higher version.

use std::time::Duration;

use weft_tests::sim::{Death, Sim, SimConfig};

/// See `sim_convergence.rs`.
const EVENTUAL_BOUND: Duration = Duration::from_secs(60);

#[test]
fn a_restarted_peer_is_known_everywhere_under_its_new_uid() {
    // Reset: the process restarted and the kernel reset its sockets.
    // Silent: the host rebooted; neighbours learn only from heartbeat
    // timeouts or from the new incarnation connecting to them.
    for how in [Death::Reset, Death::Silent] {
        let mut sim = Sim::new(SimConfig::new(6).discovery(false));
        let (peers, edges) = sim.add_random_mesh(30, 3.0);
        sim.converge_when(EVENTUAL_BOUND, |s| s.check_links(&edges));
        let degree = |p| edges.iter().filter(|&&(a, b)| a == p || b == p).count();
        let x = peers.iter().copied().max_by_key(|&p| degree(p)).unwrap();
        let name = sim.name(x);
        let (old_uid, old_version) = {
            let e = sim.router(x).topology().local_entry();
            (e.uid, e.version)
        };
        let closes = sim.close_log().len();
        sim.restart(x, how);
        let new_uid = sim.uid(x).unwrap();
        assert_ne!(old_uid, new_uid);
        // Until every link is back: neighbours that dial x notice the old
        // connection is dead (at once, or by heartbeat timeout) and redial.
        let t = sim.converge_when(EVENTUAL_BOUND, |s| s.check_links(&edges));
        sim.check_broadcast(usize::MAX).unwrap();
        sim.check_no_stale_entries().unwrap();
        for &p in &peers {
            let e = sim.router(p).topology().get(name).unwrap();
            assert_eq!(e.uid, new_uid, "peer {p} knows {name} under uid {}", e.uid);
        }
        let version = sim.router(x).topology().local_entry().version;
        assert!(
            version > old_version,
            "new entry v{version} must outrank v{old_version}"
        );
        let mut reasons: Vec<&str> = sim.close_log()[closes..]
            .iter()
            .map(|c| c.reason.as_str())
            .collect();
        reasons.sort_unstable();
        reasons.dedup();
        println!(
            "{how:?} restart of peer {x} ({name}, {} links, v{old_version}): converged after {t:?}; \
             new uid everywhere, entry now v{version}; neighbours closed old connections with {reasons:?}",
            degree(x)
        );
    }
}

#[test]
fn a_peer_dead_longer_than_gc_is_forgotten_and_rejoins() {
    let mut sim = Sim::new(SimConfig::new(9).discovery(false));
    let (peers, edges) = sim.add_random_mesh(20, 3.0);
    sim.converge_when(EVENTUAL_BOUND, |s| s.check_links(&edges));
    let x = peers[7];
    sim.kill(x, Death::Silent);
    // Routes drop x once its neighbours time out; its entry goes at GC.
    let gone = sim
        .run_until(Duration::from_secs(60), Duration::from_millis(100), |s| {
            s.check_no_stale_entries().is_ok()
        })
        .unwrap_or_else(|| panic!("{}", sim.check_no_stale_entries().unwrap_err()));
    sim.check_routes().unwrap();
    sim.revive(x);
    let back = sim.converge_when(EVENTUAL_BOUND, |s| s.check_links(&edges));
    sim.check_no_stale_entries().unwrap();
    println!(
        "peer {x} killed: forgotten everywhere after {gone:?}; revived, converged after {back:?}"
    );
}
