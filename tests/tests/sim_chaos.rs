//! Random faults on a lossy network — links cut and healed, peers killed,
//! restarted and revived — then everything heals and the mesh must
//! converge with every link back and nothing stale left.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use weft_tests::sim::{Death, NetConfig, Sim, SimConfig};

/// See `sim_convergence.rs`; on top, user targets may have backed off to
/// the 30 s cap (37.5 s with jitter) while their peer was unreachable.
const EVENTUAL_BOUND: Duration = Duration::from_secs(60);

#[test]
fn the_mesh_recovers_from_random_faults() {
    for seed in 1..=3 {
        let mut sim = Sim::new(
            SimConfig::new(seed)
                .discovery(false)
                .net(NetConfig::lossy()),
        );
        let (peers, edges) = sim.add_random_mesh(30, 3.0);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut cut = Vec::new();
        for _ in 0..40 {
            sim.run_for(Duration::from_millis(rng.random_range(100..3000)));
            let how = if rng.random_bool(0.5) {
                Death::Silent
            } else {
                Death::Reset
            };
            match rng.random_range(0..5) {
                0 => {
                    let (a, b) = edges[rng.random_range(0..edges.len())];
                    sim.cut_link(a, b, how);
                    cut.push((a, b));
                }
                1 if !cut.is_empty() => {
                    let (a, b) = cut.swap_remove(rng.random_range(0..cut.len()));
                    sim.heal_link(a, b);
                }
                2 => sim.restart(peers[rng.random_range(0..peers.len())], how),
                3 => sim.kill(peers[rng.random_range(0..peers.len())], how),
                _ => sim.revive(peers[rng.random_range(0..peers.len())]),
            }
        }
        for (a, b) in cut.drain(..) {
            sim.heal_link(a, b);
        }
        for &p in &peers {
            sim.revive(p);
        }
        let t = sim.converge_when(EVENTUAL_BOUND, |s| s.check_links(&edges));
        sim.check_broadcast(usize::MAX).unwrap();
        let stale = sim
            .run_until(Duration::from_secs(60), Duration::from_millis(100), |s| {
                s.check_no_stale_entries().is_ok()
            })
            .unwrap_or_else(|| panic!("{}", sim.check_no_stale_entries().unwrap_err()));
        println!(
            "seed {seed}: after 40 random faults, converged {t:?} after healing, no stale entries after {stale:?}; {} closes; {}",
            sim.close_log().len(),
            sim.gossip_totals().describe(peers.len())
        );
    }
}
