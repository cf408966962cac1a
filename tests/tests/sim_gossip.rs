//! Gossip channels as an extension point: unicast and broadcast on a
//! registered channel are relayed along routes and delivered exactly once,
//! channels send on their own from timers that fire in virtual time, and
//! they hear when peers become reachable or unreachable.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weft_router::core::gossip::{Channel, ChannelCtx, ChannelError, GossipKind, PeerEvent};
use weft_router::core::identity::PeerName;
use weft_tests::sim::{Death, PeerId, Sim, SimConfig};

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

impl Channel for Recorder {
    fn on_gossip(&mut self, _: &mut ChannelCtx, _: PeerName, _: &[u8]) -> Result<(), ChannelError> {
        Ok(())
    }

    fn on_unicast(
        &mut self,
        _: &mut ChannelCtx,
        src: PeerName,
        payload: &[u8],
    ) -> Result<(), ChannelError> {
        let msg = (self.me, How::Unicast, src, payload.to_vec());
        self.inbox.lock().unwrap().push(msg);
        Ok(())
    }

    fn on_broadcast(
        &mut self,
        _: &mut ChannelCtx,
        src: PeerName,
        payload: &[u8],
    ) -> Result<(), ChannelError> {
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
    sim.on_router_created(move |me, router, now| {
        let inbox = shared.clone();
        router
            .register_channel(now, CHANNEL, Box::new(Recorder { me, inbox }))
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

/// Ticks every [`TICK`] from the first time a peer becomes reachable; on
/// each tick, sends its number by unicast to `target` (if any) and, on the
/// first, a broadcast. Records what reaches it and every peer event.
struct Ticker {
    me: PeerId,
    target: Option<PeerName>,
    next: Option<Instant>,
    ticks: u32,
    log: Log,
}

const TICK: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    Unicast(PeerName, u32),
    Broadcast(PeerName),
    Peer(PeerName, PeerEvent),
}

/// `(receiver, virtual time, what)` for everything any ticker saw.
type Log = Arc<Mutex<Vec<(PeerId, Instant, Seen)>>>;

impl Ticker {
    fn record(&self, now: Instant, seen: Seen) {
        self.log.lock().unwrap().push((self.me, now, seen));
    }
}

impl Channel for Ticker {
    fn on_gossip(&mut self, _: &mut ChannelCtx, _: PeerName, _: &[u8]) -> Result<(), ChannelError> {
        Ok(())
    }

    fn on_unicast(
        &mut self,
        ctx: &mut ChannelCtx,
        src: PeerName,
        payload: &[u8],
    ) -> Result<(), ChannelError> {
        let tick: [u8; 4] = payload
            .try_into()
            .map_err(|_| ChannelError::Refused(format!("{} bytes, not a tick", payload.len())))?;
        self.record(ctx.now, Seen::Unicast(src, u32::from_be_bytes(tick)));
        Ok(())
    }

    fn on_broadcast(
        &mut self,
        ctx: &mut ChannelCtx,
        src: PeerName,
        _: &[u8],
    ) -> Result<(), ChannelError> {
        self.record(ctx.now, Seen::Broadcast(src));
        Ok(())
    }

    fn full_state(&self) -> Vec<Vec<u8>> {
        Vec::new()
    }

    fn on_peer(&mut self, ctx: &mut ChannelCtx, peer: PeerName, event: PeerEvent) {
        self.record(ctx.now, Seen::Peer(peer, event));
        self.next.get_or_insert(ctx.now + TICK);
    }

    fn on_timeout(&mut self, ctx: &mut ChannelCtx) {
        self.ticks += 1;
        if let Some(dst) = self.target {
            ctx.unicast(dst, self.ticks.to_be_bytes().to_vec());
            if self.ticks == 1 {
                ctx.broadcast(b"first tick".to_vec());
            }
        }
        self.next = self.next.map(|t| t + TICK);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.next
    }
}

#[test]
fn channels_send_from_timers_in_virtual_time_and_hear_peers_come_and_go() {
    let log: Log = Arc::default();
    let mut sim = Sim::new(SimConfig::new(11).discovery(false));
    let shared = log.clone();
    sim.on_router_created(move |me, router, now| {
        let ticker = Ticker {
            me,
            target: None,
            next: None,
            ticks: 0,
            log: shared.clone(),
        };
        router
            .register_channel(now, CHANNEL, Box::new(ticker))
            .unwrap();
    });
    // A line 0 - 1 - ... - 5: peer 0's unicasts to peer 5 cross 4 relays.
    let peers = sim.add_peers(6);
    for w in peers.windows(2) {
        sim.add_targets(w[1], &[w[0]]);
    }
    let (src, dst) = (peers[0], peers[5]);
    let dst_name = sim.name(dst);
    // The shell's way in: a local request to a channel of a known type.
    let set = sim.act(src, |r, now| {
        r.with_channel::<Ticker, _>(now, CHANNEL, |t, _| t.target = Some(dst_name))
    });
    assert_eq!(set, Some(()), "the ticker is registered under its type");
    let edges: Vec<(PeerId, PeerId)> = peers.windows(2).map(|w| (w[0], w[1])).collect();
    sim.converge_when(EVENTUAL_BOUND, |s| s.check_links(&edges));
    let started = sim.now();
    let minute = Duration::from_secs(60);
    sim.run_for(minute);

    let seen = log.lock().unwrap().clone();
    let ticks: Vec<(Instant, u32)> = seen
        .iter()
        .filter_map(|(me, at, s)| match s {
            Seen::Unicast(from, n) if *me == dst && *from == sim.name(src) => Some((*at, *n)),
            _ => None,
        })
        .collect();
    let numbers: Vec<u32> = ticks.iter().map(|&(_, n)| n).collect();
    let expected: Vec<u32> = (1..=numbers.len() as u32).collect();
    assert_eq!(
        numbers, expected,
        "every tick once, in order, across 4 relays"
    );
    let in_minute = ticks.iter().filter(|&&(at, _)| at > started).count();
    assert!(
        (11..=13).contains(&in_minute),
        "a {TICK:?} timer fires about 12 times in a virtual minute, not {in_minute}"
    );
    for w in ticks.windows(2) {
        let gap = w[1].0 - w[0].0;
        assert!(
            gap > TICK - Duration::from_secs(1) && gap < TICK + Duration::from_secs(1),
            "ticks arrive {TICK:?} apart, give or take latency: {gap:?}"
        );
    }
    let mut broadcast_to: Vec<PeerId> = seen
        .iter()
        .filter(|(_, _, s)| *s == Seen::Broadcast(sim.name(src)))
        .map(|&(me, _, _)| me)
        .collect();
    broadcast_to.sort_unstable();
    assert_eq!(
        broadcast_to,
        peers[1..].to_vec(),
        "the broadcast reached every other peer once"
    );
    for &p in &peers {
        let names: Vec<PeerName> = seen
            .iter()
            .filter_map(|(me, _, s)| match s {
                Seen::Peer(n, PeerEvent::Reachable) if *me == p => Some(*n),
                _ => None,
            })
            .collect();
        assert_eq!(
            names.len(),
            5,
            "peer {p} heard each other peer become reachable once: {names:?}"
        );
    }

    // Peer 3 dies: the line breaks, and each side hears the other side go.
    log.lock().unwrap().clear();
    sim.kill(peers[3], Death::Silent);
    sim.run_for(Duration::from_secs(30));
    let gone: Vec<(PeerId, PeerName)> = log
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(me, _, s)| match s {
            Seen::Peer(n, PeerEvent::Unreachable) => Some((*me, *n)),
            _ => None,
        })
        .collect();
    for &(a, b) in &[
        (0, 3),
        (0, 4),
        (0, 5),
        (2, 3),
        (4, 3),
        (5, 0),
        (5, 2),
        (4, 1),
    ] {
        assert!(
            gone.contains(&(peers[a], sim.name(peers[b]))),
            "peer {a} should have heard that peer {b} became unreachable: {gone:?}"
        );
    }
    assert!(
        !gone
            .iter()
            .any(|&(me, n)| me == peers[0] && n == sim.name(peers[1])),
        "peer 1 is still reachable from peer 0"
    );
    let late = log
        .lock()
        .unwrap()
        .iter()
        .filter(|(me, _, s)| *me == dst && matches!(s, Seen::Unicast(..)))
        .count();
    assert!(
        late <= 1,
        "no tick crosses the broken line (one may have been on its way)"
    );
}
