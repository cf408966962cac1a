//! A partition splits the mesh in two; each half converges on its own and
//! forgets the other after GC; healing rejoins them through the connection
//! maker's redials, and discovery restores the full mesh.

use std::time::Duration;

use weft_tests::sim::{PeerId, Sim, SimConfig};

/// See `sim_convergence.rs`.
const EVENTUAL_BOUND: Duration = Duration::from_secs(60);
/// Defaults of `RouterConfig` and `BackoffConfig` (checked below).
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(4);
const GC_GRACE: Duration = Duration::from_secs(15);
const GOSSIP_INTERVAL: Duration = Duration::from_secs(10);
const MAX_BACKOFF_JITTERED: Duration = Duration::from_millis(37_500);
const N: usize = 24;

fn full_mesh(sim: &Sim, peers: &[PeerId]) -> bool {
    peers
        .iter()
        .all(|&p| sim.router(p).neighbours().len() == peers.len() - 1)
}

#[test]
fn a_partitioned_mesh_converges_per_half_forgets_the_other_then_heals() {
    for seed in 1..=2 {
        partition_and_heal(seed);
    }
}

fn partition_and_heal(seed: u64) {
    // Discovery on (the default): peers dial everyone they hear about, so
    // the random mesh grows into a full mesh.
    let mut sim = Sim::new(SimConfig::new(seed));
    let (peers, edges) = sim.add_random_mesh(N, 3.0);
    let config = sim.router(peers[0]).config();
    assert_eq!(
        (
            config.heartbeat_timeout,
            config.gc_grace,
            config.gossip_interval
        ),
        (HEARTBEAT_TIMEOUT, GC_GRACE, GOSSIP_INTERVAL)
    );
    assert_eq!(
        config.backoff.max.mul_f64(1.0 + config.backoff.jitter),
        MAX_BACKOFF_JITTERED
    );
    let t = sim.converge_within(EVENTUAL_BOUND);
    let full = sim
        .run_until(EVENTUAL_BOUND, Duration::from_secs(1), |s| {
            full_mesh(s, &peers)
        })
        .expect("discovery builds a full mesh");
    sim.converge_within(Duration::ZERO);
    println!(
        "seed {seed}: {N} peers from {} user targets: converged after {t:?}, full mesh after another {full:?}; {}",
        edges.len(),
        sim.gossip_totals().describe(N)
    );

    let (left, right) = peers.split_at(N / 2);
    let (left, right) = (left.to_vec(), right.to_vec());
    let crossing = edges
        .iter()
        .filter(|&&(a, b)| left.contains(&a) != left.contains(&b))
        .count();
    assert!(crossing > 0, "healing needs a user target across the cut");
    let before = sim.gossip_totals();
    sim.partition(&[left.clone(), right.clone()]);
    // Every peer has connections across the cut; each must time out, after
    // which its own entry stops claiming the other half. The many version
    // bumps race as rumours; whichever final version a rumour misses is
    // repaired by periodic full state, which in a full mesh reaches each
    // peer about once per interval.
    let split = sim.converge_into(
        &[left.clone(), right.clone()],
        HEARTBEAT_TIMEOUT + GOSSIP_INTERVAL * 3,
    );
    sim.check_broadcast(usize::MAX).unwrap();
    let stale = sim.check_no_stale_entries().is_err();
    let gc = split
        + sim
            .run_until(
                GC_GRACE + GOSSIP_INTERVAL,
                Duration::from_millis(100),
                |s| s.check_no_stale_entries().is_ok(),
            )
            .unwrap_or_else(|| panic!("{}", sim.check_no_stale_entries().unwrap_err()));
    assert!(stale, "entries of the other half should linger until GC");
    assert!(
        gc >= GC_GRACE,
        "collected after {gc:?}, before the grace period"
    );
    sim.check_routes().unwrap();
    println!(
        "partitioned {}+{}: each half converged after {split:?}, the other half forgotten after {gc:?}; {}",
        left.len(),
        right.len(),
        (sim.gossip_totals() - before).describe(N)
    );

    sim.run_for(Duration::from_secs(60));
    let before = sim.gossip_totals();
    sim.heal_partition();
    // The user targets across the cut have been failing with backoff, now
    // at its cap; the next attempt connects.
    let healed = sim.converge_within(MAX_BACKOFF_JITTERED + Duration::from_secs(10));
    let full = sim
        .run_until(EVENTUAL_BOUND, Duration::from_secs(1), |s| {
            full_mesh(s, &peers)
        })
        .expect("discovery rebuilds the full mesh");
    sim.converge_within(Duration::ZERO);
    sim.check_broadcast(usize::MAX).unwrap();
    sim.check_no_stale_entries().unwrap();
    println!(
        "healed: one mesh after {healed:?}, full mesh after another {full:?}; {}",
        (sim.gossip_totals() - before).describe(N)
    );
}
