//! Route computation over the topology graph.
//!
//! Only *symmetric, established* connections are edges: A–B counts when A's
//! entry lists B as established and B's entry lists A. Half-open or one-sided
//! connections (a peer that has not yet gossiped, or whose link just died)
//! never carry traffic.
//!
//! Everything is breadth-first with ties broken toward the lowest peer name,
//! so every peer that holds the same topology computes the same routes. That
//! is what makes per-source broadcast trees work: each peer independently
//! computes its children in the source's tree, and a broadcast reaches every
//! peer exactly once.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::core::identity::PeerName;

/// Adjacency lists of the symmetric graph, each list sorted by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Graph {
    adj: BTreeMap<PeerName, Vec<PeerName>>,
}

impl Graph {
    /// Builds the graph from each peer's established connections, keeping
    /// only edges both ends claim.
    pub fn from_claims<'a>(claims: impl IntoIterator<Item = (PeerName, &'a [PeerName])>) -> Self {
        let claims: HashMap<PeerName, &[PeerName]> = claims.into_iter().collect();
        let mut adj: BTreeMap<PeerName, Vec<PeerName>> = BTreeMap::new();
        for (&a, bs) in &claims {
            let list = adj.entry(a).or_default();
            for &b in bs.iter() {
                if b != a && claims.get(&b).is_some_and(|back| back.contains(&a)) {
                    list.push(b);
                }
            }
        }
        for list in adj.values_mut() {
            list.sort_unstable();
            list.dedup();
        }
        Self { adj }
    }

    pub fn neighbours(&self, peer: PeerName) -> &[PeerName] {
        self.adj.get(&peer).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Breadth-first tree rooted at `root`: each reached peer's parent (the
    /// root has none) and distance, in visiting order.
    pub fn bfs(&self, root: PeerName) -> BfsTree {
        let mut tree = BfsTree {
            order: vec![root],
            parent: HashMap::new(),
            hops: HashMap::from([(root, 0)]),
        };
        let mut queue = VecDeque::from([root]);
        while let Some(p) = queue.pop_front() {
            let d = tree.hops[&p];
            for &n in self.neighbours(p) {
                if let std::collections::hash_map::Entry::Vacant(v) = tree.hops.entry(n) {
                    v.insert(d + 1);
                    tree.parent.insert(n, p);
                    tree.order.push(n);
                    queue.push_back(n);
                }
            }
        }
        tree
    }
}

#[derive(Clone, Debug)]
pub struct BfsTree {
    /// Reached peers in visiting order, root first.
    pub order: Vec<PeerName>,
    pub parent: HashMap<PeerName, PeerName>,
    pub hops: HashMap<PeerName, u32>,
}

impl BfsTree {
    /// Peers whose parent is `peer`, ascending by name.
    pub fn children(&self, peer: PeerName) -> Vec<PeerName> {
        let mut c: Vec<PeerName> = self
            .parent
            .iter()
            .filter(|&(_, &p)| p == peer)
            .map(|(&n, _)| n)
            .collect();
        c.sort_unstable();
        c
    }
}

/// Routes from the local peer's point of view.
#[derive(Clone, Debug, Default)]
pub struct Routes {
    local: Option<PeerName>,
    graph: Graph,
    /// destination -> (next hop, hop count), for every reachable peer but us.
    unicast: HashMap<PeerName, (PeerName, u32)>,
    /// source -> our children in source's broadcast tree; filled lazily.
    broadcast: HashMap<PeerName, Vec<PeerName>>,
}

impl Routes {
    pub fn compute(local: PeerName, graph: Graph) -> Self {
        let tree = graph.bfs(local);
        let mut unicast: HashMap<PeerName, (PeerName, u32)> =
            HashMap::with_capacity(tree.order.len());
        for &peer in tree.order.iter().skip(1) {
            let parent = tree.parent[&peer];
            let first_hop = if parent == local {
                peer
            } else {
                unicast[&parent].0
            };
            unicast.insert(peer, (first_hop, tree.hops[&peer]));
        }
        Self {
            local: Some(local),
            graph,
            unicast,
            broadcast: HashMap::new(),
        }
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The neighbour to send to for `dest`, if `dest` is reachable.
    pub fn next_hop(&self, dest: PeerName) -> Option<PeerName> {
        self.unicast.get(&dest).map(|&(hop, _)| hop)
    }

    /// Hop count to `dest`, if reachable.
    pub fn hops(&self, dest: PeerName) -> Option<u32> {
        self.unicast.get(&dest).map(|&(_, hops)| hops)
    }

    /// Whether `peer` is us or reachable from us.
    pub fn reachable(&self, peer: PeerName) -> bool {
        Some(peer) == self.local || self.unicast.contains_key(&peer)
    }

    /// Every reachable peer except us, with its next hop.
    pub fn unicast(&self) -> impl Iterator<Item = (PeerName, PeerName)> + '_ {
        self.unicast.iter().map(|(&d, &(h, _))| (d, h))
    }

    /// The neighbours a broadcast from `source` must be forwarded to by us:
    /// our children in the BFS tree rooted at `source`.
    pub fn broadcast_next_hops(&mut self, source: PeerName) -> &[PeerName] {
        let Some(local) = self.local else { return &[] };
        let graph = &self.graph;
        self.broadcast
            .entry(source)
            .or_insert_with(|| graph.bfs(source).children(local))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(v: u64) -> PeerName {
        PeerName::from_u64(v).unwrap()
    }

    fn graph(edges: &[(u64, u64)]) -> Graph {
        let mut claims: BTreeMap<PeerName, Vec<PeerName>> = BTreeMap::new();
        for &(a, b) in edges {
            claims.entry(n(a)).or_default().push(n(b));
            claims.entry(n(b)).or_default().push(n(a));
        }
        Graph::from_claims(claims.iter().map(|(k, v)| (*k, v.as_slice())))
    }

    #[test]
    fn one_sided_claims_are_not_edges() {
        let a = [n(2)];
        let b: [PeerName; 0] = [];
        let g = Graph::from_claims([(n(1), &a[..]), (n(2), &b[..])]);
        assert!(g.neighbours(n(1)).is_empty());
    }

    #[test]
    fn ties_break_toward_the_lowest_name() {
        // square 1-2-4-3-1: 4 is two hops from 1 via 2 or via 3
        let g = graph(&[(1, 2), (2, 4), (4, 3), (3, 1)]);
        let r = Routes::compute(n(1), g);
        assert_eq!(r.next_hop(n(4)), Some(n(2)));
        assert_eq!(r.hops(n(4)), Some(2));
    }

    #[test]
    fn broadcast_trees_cover_each_peer_once() {
        let g = graph(&[(1, 2), (2, 4), (4, 3), (3, 1), (4, 5)]);
        let peers = [1, 2, 3, 4, 5];
        for &src in &peers {
            let mut received = HashMap::from([(n(src), 1)]);
            let mut frontier = vec![n(src)];
            while let Some(p) = frontier.pop() {
                let mut r = Routes::compute(p, g.clone());
                for &c in r.broadcast_next_hops(n(src)) {
                    *received.entry(c).or_insert(0) += 1;
                    frontier.push(c);
                }
            }
            for &p in &peers {
                assert_eq!(received.get(&n(p)), Some(&1), "src {src} peer {p}");
            }
        }
    }

    proptest! {
        /// On any graph: following next hops reaches the destination along a
        /// shortest path (so never loops), and broadcast trees reach every
        /// reachable peer exactly once.
        #[test]
        fn routes_are_shortest_and_loop_free(edges in proptest::collection::vec((1u64..20, 1u64..20), 0..60)) {
            let edges: Vec<(u64, u64)> = edges.into_iter().filter(|(a, b)| a != b).collect();
            let g = graph(&edges);
            let peers: Vec<PeerName> = (1..20).map(n).collect();
            let mut routes: HashMap<PeerName, Routes> =
                peers.iter().map(|&p| (p, Routes::compute(p, g.clone()))).collect();
            for &src in &peers {
                let dist = g.bfs(src).hops;
                for &dst in &peers {
                    if src == dst { continue; }
                    let mut at = src;
                    let mut steps = 0;
                    while at != dst {
                        match routes[&at].next_hop(dst) {
                            Some(h) => { prop_assert!(g.neighbours(at).contains(&h)); at = h; steps += 1; }
                            None => break,
                        }
                        prop_assert!(steps <= peers.len());
                    }
                    match dist.get(&dst) {
                        Some(&d) => { prop_assert_eq!(at, dst); prop_assert_eq!(steps, d as usize); }
                        None => prop_assert!(routes[&src].next_hop(dst).is_none()),
                    }
                }
                let mut count: HashMap<PeerName, u32> = HashMap::from([(src, 1)]);
                let mut frontier = vec![src];
                while let Some(p) = frontier.pop() {
                    let next = routes.get_mut(&p).unwrap().broadcast_next_hops(src).to_vec();
                    for c in next { *count.entry(c).or_default() += 1; frontier.push(c); }
                }
                for (p, c) in &count { prop_assert_eq!(*c, 1, "peer {} got {} copies", p, c); }
                prop_assert_eq!(count.len(), dist.len());
            }
        }
    }
}
