//! Unicast and broadcast gossip on a registered channel: relayed along
//! routes, delivered exactly once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use weft_router::core::gossip::{GossipKind, Gossiper};
use weft_router::core::identity::PeerName;
use weft_tests::sim::{PeerId, Sim, SimConfig};

const CHANNEL: &str = "sim-test";
/// See `sim_convergence.rs`.
const EVENTUAL_BOUND: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, PartialEq, Eq)]
enum How {
    Unicast,
    Broadcast,
}

/// `(receiver, how, source, payload)` for every message any router's
/// channel received.
type Inbox = Arc<Mutex<Vec<(PeerId, How, PeerName, Vec<u8>)>>>;

/// A channel that only records what reaches it.
struct Recorder {
    me: PeerId,
    inbox: Inbox,
}

impl Gossiper for Recorder {
    fn on_gossip(&mut self, _: PeerName, _: &[u8]) -> Result<Option<Vec<u8>>, String> {
        Ok(None)
    }

    fn on_unicast(&mut self, src: PeerName, payload: &[u8]) -> Result<(), String> {
        let msg = (self.me, How::Unicast, src, payload.to_vec());
        self.inbox.lock().unwrap().push(msg);
        Ok(())
    }

    fn on_broadcast(&mut self, src: PeerName, payload: &[u8]) -> Result<(), String> {
        let msg = (self.me, How::Broadcast, src, payload.to_vec());
        self.inbox.lock().unwrap().push(msg);
        Ok(())
    }

    fn full_state(&self) -> Vec<Vec<u8>> {
        Vec::new()
    }
}

fn sent(sim: &Sim, peer: PeerId, kind: GossipKind) -> u64 {
    sim.router(peer)
        .gossip_stats()
        .sent
        .get(&(CHANNEL.to_owned(), kind))
        .map_or(0, |c| c.messages)
}

#[test]
fn unicast_reaches_a_far_peer_once_and_broadcast_reaches_everyone_once() {
    let inbox: Inbox = Arc::default();
    let mut sim = Sim::new(SimConfig::new(5).discovery(false));
    let shared = inbox.clone();
    sim.on_router_created(move |me, router| {
        let inbox = shared.clone();
        router
            .register_channel(CHANNEL, Box::new(Recorder { me, inbox }))
            .unwrap();
    });
    let (peers, edges) = sim.add_random_mesh(40, 3.0);
    sim.converge_when(EVENTUAL_BOUND, |s| s.check_links(&edges));

    // The pair farthest apart, lowest ids first.
    let (src, dst, hops) = peers
        .iter()
        .flat_map(|&a| peers.iter().map(move |&b| (a, b)))
        .filter_map(|(a, b)| {
            let hops = sim.router(a).topology().routes().hops(sim.name(b))?;
            Some((a, b, hops))
        })
        .max_by_key(|&(a, b, hops)| (hops, std::cmp::Reverse((a, b))))
        .unwrap();
    let relays_before: Vec<u64> = peers
        .iter()
        .map(|&p| sent(&sim, p, GossipKind::Unicast))
        .collect();
    let dst_name = sim.name(dst);
    sim.act(src, |r, now| {
        r.send_unicast(now, CHANNEL, dst_name, b"hello".to_vec())
    })
    .unwrap();
    sim.run_for(Duration::from_secs(1));
    let got = std::mem::take(&mut *inbox.lock().unwrap());
    assert_eq!(
        got,
        vec![(dst, How::Unicast, sim.name(src), b"hello".to_vec())],
        "unicast {src} -> {dst}"
    );
    let senders: Vec<PeerId> = peers
        .iter()
        .copied()
        .filter(|&p| sent(&sim, p, GossipKind::Unicast) > relays_before[p])
        .collect();
    assert_eq!(
        senders.len(),
        hops as usize,
        "one send per hop, by {senders:?}"
    );
    println!("unicast {src} -> {dst}: {hops} hops, sent by {senders:?}");

    for (i, &src) in [src, dst, peers[0]].iter().enumerate() {
        let payload = vec![i as u8; 100 + i];
        let p = payload.clone();
        sim.act(src, |r, now| r.send_broadcast(now, CHANNEL, p))
            .unwrap();
        sim.run_for(Duration::from_secs(1));
        let mut got: Vec<PeerId> = inbox
            .lock()
            .unwrap()
            .drain(..)
            .map(|(me, how, from, data)| {
                assert_eq!(
                    (how, from, &data),
                    (How::Broadcast, sim.name(src), &payload)
                );
                me
            })
            .collect();
        got.sort_unstable();
        let want: Vec<PeerId> = peers.iter().copied().filter(|&p| p != src).collect();
        assert_eq!(
            got, want,
            "broadcast from {src}: every other peer exactly once"
        );
    }
    let totals = sim.gossip_totals();
    println!(
        "broadcasts from 3 sources reached all 39 others once each; unicast {} B, broadcast {} B in total",
        totals.unicast, totals.broadcast
    );
}
