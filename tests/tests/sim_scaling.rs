//! How gossip cost grows with the mesh: random meshes of average degree 3 at
//! 25, 50, 100 and 200 peers (and 1,000, ignored by default).
//!
//! Two costs are told apart:
//! - **Initial convergence** necessarily costs each peer Θ(N) bytes: it must
//!   learn N entries. We measure the first 5 s, before any periodic gossip
//!   (the first full state to a random neighbour is due after 5–10 s), and
//!   assert that bytes per peer per peer known stay roughly flat.
//! - **A change** after convergence (a link cut silently, a peer joining)
//!   should cost each peer a few small deltas whatever N is. We assert that
//!   delta bytes per peer per change grow well below linearly. Full state
//!   in the same window (sent to a new neighbour, and the periodic
//!   anti-entropy of one full state per peer per interval, Θ(N) per interval
//!   by design) is printed separately.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use weft_tests::sim::{Death, GossipTotals, Sim, SimConfig, connected_without};

/// Time before the first periodic full state can be sent.
const BURST: Duration = Duration::from_secs(5);
/// See `sim_convergence.rs`: the core needs minutes on sparse random meshes.
const EVENTUAL_BOUND: Duration = Duration::from_secs(120);
/// Lets the last redundant copies of a delta drain after convergence.
const SETTLE: Duration = Duration::from_secs(2);
const CUTS: usize = 3;

struct Figures {
    n: usize,
    edges: usize,
    converged: Duration,
    burst: GossipTotals,
    /// 20 s without changes: periodic anti-entropy only.
    idle: GossipTotals,
    /// Per cut: gossip sent from the cut until converged plus [`SETTLE`].
    cuts: Vec<(Duration, GossipTotals)>,
    join: (Duration, GossipTotals),
}

impl Figures {
    fn burst_per_peer(&self) -> f64 {
        self.burst.total() as f64 / self.n as f64
    }

    fn cut_delta_per_peer(&self) -> f64 {
        let sum: u64 = self.cuts.iter().map(|(_, g)| g.delta).sum();
        sum as f64 / self.cuts.len() as f64 / self.n as f64
    }

    fn print(&self) {
        let n = self.n as f64;
        println!(
            "N={:4} edges={:4}: converged after {:?}; first {BURST:?}: {:.0} B/peer = {:.0} B/peer/N",
            self.n,
            self.edges,
            self.converged,
            self.burst_per_peer(),
            self.burst_per_peer() / n
        );
        println!("        first {BURST:?}: {}", self.burst.describe(self.n));
        println!(
            "        idle 20 s (periodic full state): {:.0} B/peer/interval",
            self.idle.full_state as f64 / n / 2.0
        );
        for (t, g) in &self.cuts {
            println!(
                "        link cut: converged after {t:?}; delta {:.0} B/peer, full state {:.0} B/peer",
                g.delta as f64 / n,
                g.full_state as f64 / n
            );
        }
        let (t, g) = &self.join;
        println!(
            "        peer joined: converged after {t:?}; delta {:.0} B/peer, full state {:.0} B/peer",
            g.delta as f64 / (n + 1.0),
            g.full_state as f64 / (n + 1.0)
        );
        println!(
            "        => delta per peer per link cut: {:.0} B",
            self.cut_delta_per_peer()
        );
    }
}

fn measure(n: usize, seed: u64) -> Figures {
    let mut sim = Sim::new(SimConfig::new(seed).discovery(false));
    let (peers, edges) = sim.add_random_mesh(n, 3.0);
    assert_eq!(peers, (0..n).collect::<Vec<_>>());
    let mut edges = edges;
    sim.run_for(BURST);
    let burst = sim.gossip_totals();
    let converged = BURST + sim.converge_when(EVENTUAL_BOUND, |s| s.check_links(&edges));

    let before = sim.gossip_totals();
    sim.run_for(Duration::from_secs(20));
    let idle = sim.gossip_totals() - before;

    let mut rng = StdRng::seed_from_u64(seed);
    let mut cuts = Vec::new();
    for _ in 0..CUTS {
        // A link whose loss leaves the mesh connected: routes change, no
        // peer becomes unreachable.
        let i = loop {
            let i = rng.random_range(0..edges.len());
            if connected_without(n, &edges, Some(i)) {
                break i;
            }
        };
        let (a, b) = edges.remove(i);
        let before = sim.gossip_totals();
        sim.cut_link(a, b, Death::Silent);
        let t = sim.converge_when(EVENTUAL_BOUND, |s| s.check_links(&edges));
        sim.run_for(SETTLE);
        cuts.push((t, sim.gossip_totals() - before));
    }

    let before = sim.gossip_totals();
    let new = sim.add_peer();
    let via = rng.random_range(0..n);
    sim.add_targets(new, &[via]);
    edges.push((new, via));
    let t = sim.converge_when(EVENTUAL_BOUND, |s| s.check_links(&edges));
    sim.run_for(SETTLE);
    let join = (t, sim.gossip_totals() - before);

    Figures {
        n,
        edges: edges.len() + CUTS - 1,
        converged,
        burst,
        idle,
        cuts,
        join,
    }
}

#[test]
fn change_cost_grows_sublinearly_and_initial_cost_linearly() {
    let figures: Vec<Figures> = [25, 50, 100, 200].map(|n| measure(n, 7)).into();
    for f in &figures {
        f.print();
    }
    let (small, large) = (&figures[0], &figures[figures.len() - 1]);
    let growth = large.n as f64 / small.n as f64;

    let initial =
        (large.burst_per_peer() / large.n as f64) / (small.burst_per_peer() / small.n as f64);
    println!(
        "initial bytes/peer/N, N={} vs N={}: x{initial:.2}",
        large.n, small.n
    );
    assert!(
        initial < 2.0,
        "initial convergence costs each peer more than linearly in N: bytes/peer/N grew x{initial:.2}"
    );

    let change = large.cut_delta_per_peer() / small.cut_delta_per_peer();
    println!(
        "delta bytes/peer per link cut, N={} vs N={}: x{change:.2} (linear would be x{growth:.0})",
        large.n, small.n
    );
    assert!(
        change < growth / 2.0,
        "a change costs each peer nearly linearly in N: x{change:.2} for x{growth:.0} peers"
    );

    let join = |f: &Figures| f.join.1.delta as f64 / (f.n + 1) as f64;
    let join_growth = join(large) / join(small);
    println!(
        "delta bytes/peer per join, N={} vs N={}: x{join_growth:.2}",
        large.n, small.n
    );
    assert!(
        join_growth < growth / 2.0,
        "a join costs each peer nearly linearly in N: x{join_growth:.2} for x{growth:.0} peers"
    );
}

#[test]
#[ignore = "slow: ~30 CPU-minutes in the test profile; cargo test --release -p weft-tests --test sim_scaling -- --ignored --nocapture"]
fn thousand_peers() {
    measure(1000, 7).print();
}
