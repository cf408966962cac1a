//! Forwarding decisions for Ethernet frames: the data plane's sans-IO core.
//!
//! A frame read from the TAP is learned as local and either dropped (STP,
//! or its destination is on our own bridge), sent toward the one router
//! behind which its destination MAC lives, or flooded down our broadcast
//! tree. A datagram from the mesh is delivered to the TAP if it is for us
//! or for everyone, and forwarded along the unicast route or the origin's
//! broadcast tree if it is for someone else: relays never look inside it.
//!
//! Routes here are *data* routes: computed only over connections on which
//! UDP works in both directions.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use serde::Serialize;

use crate::core::identity::PeerName;
use crate::core::mac_table::{Learned, Location, MacTable};
use crate::core::routes::Routes;
use crate::core::wire::ethernet::{Frame, HEADER_LEN as ETH_LEN};
use crate::core::wire::ipv4;
use crate::core::wire::udp::{
    DEFAULT_HOP_LIMIT, FRAME_PREFIX, FramesBuilder, FramesIter, HEADER_LEN, Header, Kind,
    SEGMENT_HEADER_LEN, SegmentHeader,
};

/// Why a frame or datagram was not forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// Shorter than an Ethernet header.
    Runt,
    /// 802.1D link-local (STP BPDUs and friends).
    LinkLocal,
    /// The destination MAC is on our own bridge; the bridge delivered it.
    LocalDestination,
    /// No data route to the destination router.
    NoRoute,
    /// The hop limit ran out: a transient routing loop.
    HopLimit,
    /// A datagram that failed to parse.
    Malformed,
    /// Larger than the path MTU allows and neither fragmentable nor
    /// answerable with ICMP (e.g. a non-IPv4 frame).
    TooBig,
    /// A datagram claiming to come from us.
    Looped,
}

impl DropReason {
    /// The reason's name in `weft report` (`dropped` keys) and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Runt => "runt",
            DropReason::LinkLocal => "link_local",
            DropReason::LocalDestination => "local_destination",
            DropReason::NoRoute => "no_route",
            DropReason::HopLimit => "hop_limit",
            DropReason::Malformed => "malformed",
            DropReason::TooBig => "too_big",
            DropReason::Looped => "looped",
        }
    }
}

/// Counters for `weft status` and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ForwardStats {
    pub frames_from_tap: u64,
    pub frames_to_tap: u64,
    pub frames_sent: u64,
    pub datagrams_relayed: u64,
    pub icmp_frag_needed: u64,
    pub fragmented: u64,
    pub large_frames_sent: u64,
    pub dropped: BTreeMap<DropReason, u64>,
}

impl ForwardStats {
    pub fn drop(&mut self, reason: DropReason) {
        *self.dropped.entry(reason).or_default() += 1;
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &ForwardStats) {
        self.frames_from_tap += other.frames_from_tap;
        self.frames_to_tap += other.frames_to_tap;
        self.frames_sent += other.frames_sent;
        self.datagrams_relayed += other.datagrams_relayed;
        self.icmp_frag_needed += other.icmp_frag_needed;
        self.fragmented += other.fragmented;
        self.large_frames_sent += other.large_frames_sent;
        for (reason, n) in &other.dropped {
            *self.dropped.entry(*reason).or_default() += n;
        }
    }
}

/// What to do with a frame read from the TAP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TapVerdict {
    Drop(DropReason),
    /// Send to `dst` (the router behind the destination MAC) via `next_hop`.
    Unicast {
        dst: PeerName,
        next_hop: PeerName,
    },
    /// Broadcast, multicast or unknown unicast: down our broadcast tree.
    Flood,
}

/// What to do with a datagram from the mesh; the neighbours to forward it
/// to go into a caller-owned buffer, so relaying allocates nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeshVerdict {
    /// Deliver its frames to our TAP.
    pub deliver: bool,
    pub origin: PeerName,
}

#[derive(Debug)]
pub struct Forwarder {
    local: PeerName,
    routes: Routes,
    macs: MacTable,
    pub stats: ForwardStats,
}

impl Forwarder {
    pub fn new(local: PeerName) -> Self {
        Self {
            local,
            routes: Routes::default(),
            macs: MacTable::default(),
            stats: ForwardStats::default(),
        }
    }

    pub fn local(&self) -> PeerName {
        self.local
    }

    /// Installs new data routes (after a topology or UDP-liveness change).
    /// MACs behind routers that are no longer reachable are forgotten.
    pub fn set_routes(&mut self, now: Instant, routes: Routes) {
        self.routes = routes;
        let gone: Vec<PeerName> = self
            .macs
            .entries(now)
            .filter_map(|(_, l)| match l {
                Location::Peer(p) if !self.routes.reachable(p) => Some(p),
                _ => None,
            })
            .collect();
        for p in gone {
            self.macs.forget_peer(p);
        }
    }

    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    pub fn macs(&self) -> &MacTable {
        &self.macs
    }

    pub fn macs_mut(&mut self) -> &mut MacTable {
        &mut self.macs
    }

    /// Decides what to do with a frame read from the TAP.
    pub fn from_tap(&mut self, now: Instant, frame: &[u8]) -> TapVerdict {
        self.stats.frames_from_tap += 1;
        let Some(eth) = Frame::new_checked(frame) else {
            self.stats.drop(DropReason::Runt);
            return TapVerdict::Drop(DropReason::Runt);
        };
        let dst = eth.dst();
        if dst.is_link_local_reserved() {
            self.stats.drop(DropReason::LinkLocal);
            return TapVerdict::Drop(DropReason::LinkLocal);
        }
        if let Learned::Moved { from } = self.macs.learn(now, eth.src(), Location::Local) {
            tracing::debug!(mac = %eth.src(), ?from, "MAC moved to this host");
        }
        if dst.is_multicast() {
            return TapVerdict::Flood;
        }
        match self.macs.lookup(now, dst) {
            Some(Location::Local) => {
                self.stats.drop(DropReason::LocalDestination);
                TapVerdict::Drop(DropReason::LocalDestination)
            }
            Some(Location::Peer(p)) => match self.routes.next_hop(p) {
                Some(next_hop) => TapVerdict::Unicast { dst: p, next_hop },
                None => TapVerdict::Flood,
            },
            None => TapVerdict::Flood,
        }
    }

    /// Our children in `origin`'s broadcast tree.
    pub fn flood_hops(&mut self, origin: PeerName) -> &[PeerName] {
        self.routes.broadcast_next_hops(origin)
    }

    /// Examines a frames or segment datagram received from neighbour `from`. The
    /// neighbours to forward it to are written to `forward_to` (cleared
    /// first), and its hop limit is decremented in place when there are any.
    pub fn from_mesh(
        &mut self,
        from: PeerName,
        datagram: &mut [u8],
        forward_to: &mut Vec<PeerName>,
    ) -> Result<MeshVerdict, DropReason> {
        forward_to.clear();
        let header = match Header::parse(datagram) {
            Ok(h) if matches!(h.kind, Kind::Frames | Kind::Segment) => h,
            _ => {
                self.stats.drop(DropReason::Malformed);
                return Err(DropReason::Malformed);
            }
        };
        if header.src == self.local {
            self.stats.drop(DropReason::Looped);
            return Err(DropReason::Looped);
        }
        let mut verdict = MeshVerdict {
            deliver: false,
            origin: header.src,
        };
        match header.dst {
            Some(d) if d == self.local => verdict.deliver = true,
            Some(d) => match self.routes.next_hop(d) {
                Some(h) if h != from => forward_to.push(h),
                _ => {
                    self.stats.drop(DropReason::NoRoute);
                    return Err(DropReason::NoRoute);
                }
            },
            None => {
                verdict.deliver = true;
                let src = header.src;
                forward_to.extend(
                    self.routes
                        .broadcast_next_hops(src)
                        .iter()
                        .copied()
                        .filter(|&h| h != from && h != src),
                );
            }
        }
        if !forward_to.is_empty() {
            if header.hop_limit <= 1 {
                self.stats.drop(DropReason::HopLimit);
                forward_to.clear();
                if !verdict.deliver {
                    return Err(DropReason::HopLimit);
                }
            } else {
                datagram[2] = header.hop_limit - 1;
                self.stats.datagrams_relayed += 1;
            }
        }
        Ok(verdict)
    }

    /// Learns from, and validates, one frame of a datagram being delivered.
    /// Returns false if the frame must not reach the TAP.
    pub fn deliver_frame(&mut self, now: Instant, origin: PeerName, frame: &[u8]) -> bool {
        let Some(eth) = Frame::new_checked(frame) else {
            self.stats.drop(DropReason::Runt);
            return false;
        };
        if eth.dst().is_link_local_reserved() {
            self.stats.drop(DropReason::LinkLocal);
            return false;
        }
        if let Learned::Moved { from } = self.macs.learn(now, eth.src(), Location::Peer(origin)) {
            tracing::debug!(mac = %eth.src(), ?from, peer = %origin, "MAC moved behind peer");
        }
        self.stats.frames_to_tap += 1;
        true
    }
}

/// Overhead of the UDP encapsulation on top of an Ethernet frame: weft
/// header plus the per-frame length prefix.
pub const ENCAP_OVERHEAD: usize = HEADER_LEN + FRAME_PREFIX;

/// Bytes reserved per datagram for the encryption layer (AEAD tag, nonce
/// counter and key id), so turning encryption on never lowers the MTU of
/// running containers.
pub const CRYPTO_RESERVE: usize = 32;

/// Default MTU of the bridge, the TAP and attached interfaces: what fits a
/// 1500-byte underlay after the outer IPv4 and UDP headers, the weft
/// encapsulation, the inner Ethernet header and the encryption reserve.
pub const DEFAULT_OVERLAY_MTU: usize =
    1500 - crate::core::data_path::IPV4_UDP_OVERHEAD - ENCAP_OVERHEAD - ETH_LEN - CRYPTO_RESERVE;

/// Where an encapsulated datagram goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Destination {
    Peer(PeerName),
    Everyone,
}

/// Output of [`Batcher`]: datagrams to send, frames to write back to the TAP.
pub trait Sink {
    /// Send `datagram` to each neighbour in `next_hops`.
    fn datagram(&mut self, next_hops: &[PeerName], datagram: &[u8]);
    /// Write `frame` (an ICMP error) to the TAP.
    fn to_tap(&mut self, frame: &[u8]);
}

/// Packs frames bound for the same destination into datagrams up to the
/// path MTU, turning frames that cannot fit into ICMP "fragmentation
/// needed" replies (IPv4 with DF) or IPv4 fragments (without DF).
#[derive(Debug, Default)]
pub struct Batcher {
    open: HashMap<Destination, (Vec<PeerName>, FramesBuilder)>,
    /// Builders and next-hop lists of sent datagrams, reused so that the
    /// steady state allocates nothing per frame.
    spare: Vec<(Vec<PeerName>, FramesBuilder)>,
}

impl Batcher {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one frame. `next_hops` are the neighbours it goes to and
    /// `limit` the largest UDP payload all of them accept.
    pub fn push(
        &mut self,
        fwd: &mut Forwarder,
        dest: Destination,
        next_hops: &[PeerName],
        limit: usize,
        frame: &[u8],
        sink: &mut impl Sink,
    ) {
        if next_hops.is_empty() {
            return;
        }
        if ENCAP_OVERHEAD + frame.len() > limit {
            self.too_big(fwd, dest, next_hops, limit, frame, sink);
            return;
        }
        if let Some((hops, b)) = self.open.get_mut(&dest) {
            if hops.as_slice() == next_hops && b.push(frame) {
                fwd.stats.frames_sent += 1;
                return;
            }
            if let Some((hops, b)) = self.open.remove(&dest) {
                sink.datagram(&hops, b.bytes());
                self.spare.push((hops, b));
            }
        }
        let header = Header {
            kind: Kind::Frames,
            hop_limit: DEFAULT_HOP_LIMIT,
            src: fwd.local(),
            dst: match dest {
                Destination::Peer(p) => Some(p),
                Destination::Everyone => None,
            },
        };
        let (mut hops, mut b) = match self.spare.pop() {
            Some((mut hops, mut b)) => {
                hops.clear();
                b.reset(header, limit);
                (hops, b)
            }
            None => (Vec::new(), FramesBuilder::new(header, limit)),
        };
        hops.extend_from_slice(next_hops);
        if b.push(frame) {
            fwd.stats.frames_sent += 1;
        }
        self.open.insert(dest, (hops, b));
    }

    /// Sends every partly filled datagram. Call at the end of a read batch.
    pub fn flush(&mut self, sink: &mut impl Sink) {
        for (_, (hops, b)) in self.open.drain() {
            if b.frame_count() > 0 {
                sink.datagram(&hops, b.bytes());
            }
            self.spare.push((hops, b));
        }
    }

    fn too_big(
        &mut self,
        fwd: &mut Forwarder,
        dest: Destination,
        next_hops: &[PeerName],
        limit: usize,
        frame: &[u8],
        sink: &mut impl Sink,
    ) {
        let max_ip = limit.saturating_sub(ENCAP_OVERHEAD + ETH_LEN);
        if let Some(reply) = ipv4::frag_needed_reply(frame, max_ip as u16) {
            fwd.stats.icmp_frag_needed += 1;
            sink.to_tap(&reply);
            return;
        }
        let mut pieces = Vec::new();
        if max_ip >= ipv4::MIN_MTU.min(limit)
            && ipv4::fragment(frame, max_ip, |f| pieces.push(f.to_vec()))
        {
            fwd.stats.fragmented += 1;
            for p in pieces {
                self.push(fwd, dest, next_hops, limit, &p, sink);
            }
            return;
        }
        fwd.stats.drop(DropReason::TooBig);
    }
}

/// Splits a frames datagram that is too large for a relay's next hop into
/// several that fit, preserving the header. Frames that alone exceed the
/// limit are dropped (counted by the caller).
pub fn resplit(datagram: &[u8], limit: usize, mut emit: impl FnMut(&[u8])) -> usize {
    let Ok(header) = Header::parse(datagram) else {
        return 0;
    };
    if header.kind == Kind::Segment {
        return resplit_segment(header, datagram, limit, emit);
    }
    let mut b = FramesBuilder::new(header, limit);
    let mut dropped = 0;
    for frame in FramesIter::new(&datagram[HEADER_LEN..]) {
        let Ok(frame) = frame else { break };
        if !b.push(frame) {
            if b.frame_count() > 0 {
                emit(b.bytes());
                b.reset(header, limit);
            }
            if !b.push(frame) {
                dropped += 1;
            }
        }
    }
    if b.frame_count() > 0 {
        emit(b.bytes());
    }
    dropped
}

/// Cuts a segment datagram's piece into smaller pieces with the right
/// offsets. Returns 1 (dropped) if the limit cannot carry any piece.
fn resplit_segment(
    header: Header,
    datagram: &[u8],
    limit: usize,
    mut emit: impl FnMut(&[u8]),
) -> usize {
    let Ok((seg, piece)) = SegmentHeader::parse(&datagram[HEADER_LEN..]) else {
        return 1;
    };
    let room = limit.saturating_sub(HEADER_LEN + SEGMENT_HEADER_LEN);
    if room == 0 {
        return 1;
    }
    let mut out = Vec::with_capacity(limit);
    for (i, part) in piece.chunks(room).enumerate() {
        out.clear();
        out.extend_from_slice(&header.to_bytes());
        let mut h = [0u8; SEGMENT_HEADER_LEN];
        SegmentHeader {
            offset: seg.offset + (i * room) as u32,
            ..seg
        }
        .emit(&mut h);
        out.extend_from_slice(&h);
        out.extend_from_slice(part);
        emit(&out);
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::routes::Graph;

    fn n(v: u64) -> PeerName {
        PeerName::from_u64(v).unwrap()
    }

    fn line(local: u64) -> Routes {
        // 1 - 2 - 3
        let (a, b, c) = ([n(2)], [n(1), n(3)], [n(2)]);
        Routes::compute(
            n(local),
            Graph::from_claims([(n(1), &a[..]), (n(2), &b[..]), (n(3), &c[..])]),
        )
    }

    fn eth(dst: [u8; 6], src: [u8; 6], len: usize) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x08, 0x06]);
        f.resize(len, 0xab);
        f
    }

    /// An empty frames datagram from router 1 to router 3, hop limit 5.
    fn frames_to_3(limit: usize) -> FramesBuilder {
        let header = Header {
            kind: Kind::Frames,
            hop_limit: 5,
            src: n(1),
            dst: Some(n(3)),
        };
        FramesBuilder::new(header, limit)
    }

    const M1: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const M3: [u8; 6] = [2, 0, 0, 0, 0, 3];

    #[derive(Default)]
    struct Out {
        datagrams: Vec<(Vec<PeerName>, Vec<u8>)>,
        tap: Vec<Vec<u8>>,
    }

    impl Sink for Out {
        fn datagram(&mut self, next_hops: &[PeerName], datagram: &[u8]) {
            self.datagrams.push((next_hops.to_vec(), datagram.to_vec()));
        }
        fn to_tap(&mut self, frame: &[u8]) {
            self.tap.push(frame.to_vec());
        }
    }

    #[test]
    fn drop_reason_names_match_their_serde_names() {
        for r in [
            DropReason::Runt,
            DropReason::LinkLocal,
            DropReason::LocalDestination,
            DropReason::NoRoute,
            DropReason::HopLimit,
            DropReason::Malformed,
            DropReason::TooBig,
            DropReason::Looped,
        ] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }

    #[test]
    fn the_default_overlay_mtu_leaves_room_for_everything() {
        assert_eq!(DEFAULT_OVERLAY_MTU, 1408);
    }

    #[test]
    fn tap_frames_flood_until_learned_then_go_unicast() {
        let now = Instant::now();
        let mut f = Forwarder::new(n(1));
        f.set_routes(now, line(1));
        assert_eq!(f.from_tap(now, &eth(M3, M1, 60)), TapVerdict::Flood);
        // a frame from M3 arrives from router 3
        assert!(f.deliver_frame(now, n(3), &eth(M1, M3, 60)));
        assert_eq!(
            f.from_tap(now, &eth(M3, M1, 60)),
            TapVerdict::Unicast {
                dst: n(3),
                next_hop: n(2)
            }
        );
        assert_eq!(
            f.from_tap(now, &eth(M1, M1, 60)),
            TapVerdict::Drop(DropReason::LocalDestination)
        );
        assert_eq!(
            f.from_tap(now, &eth([1, 0x80, 0xc2, 0, 0, 0], M1, 60)),
            TapVerdict::Drop(DropReason::LinkLocal)
        );
        assert_eq!(
            f.from_tap(now, &eth(M3, M1, 13)),
            TapVerdict::Drop(DropReason::Runt)
        );
    }

    #[test]
    fn a_moved_mac_is_relearned_at_once() {
        let now = Instant::now();
        let mut f = Forwarder::new(n(1));
        f.set_routes(now, line(1));
        f.deliver_frame(now, n(3), &eth(M1, M3, 60));
        f.deliver_frame(now, n(2), &eth(M1, M3, 60));
        assert_eq!(
            f.from_tap(now, &eth(M3, M1, 60)),
            TapVerdict::Unicast {
                dst: n(2),
                next_hop: n(2)
            }
        );
    }

    #[test]
    fn relays_forward_without_delivering_and_decrement_the_hop_limit() {
        let mut f = Forwarder::new(n(2));
        f.set_routes(Instant::now(), line(2));
        let mut b = frames_to_3(1400);
        b.push(&eth(M3, M1, 60));
        let mut d = b.bytes().to_vec();
        let mut hops = Vec::new();
        let v = f.from_mesh(n(1), &mut d, &mut hops).unwrap();
        assert_eq!(
            v,
            MeshVerdict {
                deliver: false,
                origin: n(1)
            }
        );
        assert_eq!(hops, vec![n(3)]);
        assert_eq!(d[2], 4);
        d[2] = 1;
        assert_eq!(
            f.from_mesh(n(1), &mut d, &mut hops),
            Err(DropReason::HopLimit)
        );
        // a datagram for an unknown router has no route
        let mut u = Header {
            kind: Kind::Frames,
            hop_limit: 5,
            src: n(1),
            dst: Some(n(9)),
        }
        .to_bytes()
        .to_vec();
        assert_eq!(
            f.from_mesh(n(1), &mut u, &mut hops),
            Err(DropReason::NoRoute)
        );
    }

    #[test]
    fn broadcasts_are_delivered_and_passed_down_the_origin_tree() {
        let mut f = Forwarder::new(n(2));
        f.set_routes(Instant::now(), line(2));
        let mut d = Header {
            kind: Kind::Frames,
            hop_limit: 5,
            src: n(1),
            dst: None,
        }
        .to_bytes()
        .to_vec();
        let mut hops = Vec::new();
        let v = f.from_mesh(n(1), &mut d, &mut hops).unwrap();
        assert!(v.deliver);
        assert_eq!(hops, vec![n(3)]);
        let mut leaf = Forwarder::new(n(3));
        leaf.set_routes(Instant::now(), line(3));
        let v = leaf.from_mesh(n(2), &mut d, &mut hops).unwrap();
        assert!(v.deliver && hops.is_empty());
    }

    #[test]
    fn batches_pack_frames_per_destination_up_to_the_limit() {
        let mut f = Forwarder::new(n(1));
        let mut b = Batcher::new();
        let mut out = Out::default();
        let limit = HEADER_LEN + 3 * (2 + 100);
        for _ in 0..4 {
            b.push(
                &mut f,
                Destination::Peer(n(3)),
                &[n(2)],
                limit,
                &eth(M3, M1, 100),
                &mut out,
            );
        }
        b.push(
            &mut f,
            Destination::Everyone,
            &[n(2)],
            limit,
            &eth([0xff; 6], M1, 100),
            &mut out,
        );
        assert_eq!(out.datagrams.len(), 1, "the first datagram filled up");
        b.flush(&mut out);
        assert_eq!(out.datagrams.len(), 3);
        let frames_in = |d: &Vec<u8>| FramesIter::new(&d[HEADER_LEN..]).count();
        assert_eq!(
            out.datagrams
                .iter()
                .map(|(_, d)| frames_in(d))
                .sum::<usize>(),
            5
        );
        assert_eq!(f.stats.frames_sent, 5);
    }

    fn ipv4_frame(len: usize, df: bool) -> Vec<u8> {
        let mut f = M3.to_vec();
        f.extend_from_slice(&M1);
        f.extend_from_slice(&[0x08, 0x00]);
        let total = (len - 14) as u16;
        let mut h = vec![
            0x45,
            0,
            0,
            0,
            0,
            1,
            if df { 0x40 } else { 0 },
            0,
            64,
            17,
            0,
            0,
            10,
            0,
            0,
            1,
            10,
            0,
            0,
            3,
        ];
        h[2..4].copy_from_slice(&total.to_be_bytes());
        let c = ipv4::checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&h);
        f.resize(len, 0x5a);
        f
    }

    #[test]
    fn oversized_frames_become_icmp_or_fragments() {
        let mut f = Forwarder::new(n(1));
        let mut b = Batcher::new();
        let mut out = Out::default();
        let limit = 1000;
        b.push(
            &mut f,
            Destination::Peer(n(3)),
            &[n(2)],
            limit,
            &ipv4_frame(1414, true),
            &mut out,
        );
        assert_eq!(out.tap.len(), 1, "ICMP frag-needed back to the sender");
        let icmp = &out.tap[0][14 + 20..];
        assert_eq!(&icmp[..2], &[3, 4]);
        assert_eq!(
            usize::from(u16::from_be_bytes([icmp[6], icmp[7]])),
            limit - ENCAP_OVERHEAD - 14
        );
        b.push(
            &mut f,
            Destination::Peer(n(3)),
            &[n(2)],
            limit,
            &ipv4_frame(1414, false),
            &mut out,
        );
        b.flush(&mut out);
        assert_eq!(f.stats.fragmented, 1);
        for (_, d) in &out.datagrams {
            assert!(d.len() <= limit);
        }
        let mut non_ip = eth(M3, M1, 1414);
        non_ip[12] = 0x86;
        b.push(
            &mut f,
            Destination::Peer(n(3)),
            &[n(2)],
            limit,
            &non_ip,
            &mut out,
        );
        assert_eq!(f.stats.dropped.get(&DropReason::TooBig), Some(&1));
    }

    #[test]
    fn resplit_fits_a_smaller_next_hop() {
        let mut b = frames_to_3(1400);
        for _ in 0..4 {
            b.push(&eth(M3, M1, 300));
        }
        let mut parts = Vec::new();
        assert_eq!(resplit(b.bytes(), 700, |d| parts.push(d.to_vec())), 0);
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.len() <= 700));
        assert_eq!(
            resplit(b.bytes(), 200, |_| {}),
            4,
            "frames larger than the limit are dropped"
        );
    }

    #[test]
    fn resplit_segments_still_reassemble() {
        let header = Header {
            kind: Kind::Segment,
            hop_limit: 5,
            src: n(1),
            dst: Some(n(3)),
        };
        let blob: Vec<u8> = (0..20_000u32).map(|i| (i % 253) as u8).collect();
        let mut pieces = Vec::new();
        let mut scratch = Vec::new();
        assert!(crate::core::wire::udp::segment(
            header,
            7,
            &blob,
            1472,
            &mut scratch,
            |d| pieces.push(d.to_vec())
        ));
        let mut small = Vec::new();
        for p in &pieces {
            assert_eq!(resplit(p, 700, |d| small.push(d.to_vec())), 0);
        }
        assert!(small.len() > pieces.len());
        let mut r = crate::core::reassembly::Reassembler::new();
        let now = Instant::now();
        let mut out = None;
        for d in &small {
            assert!(d.len() <= 700);
            let (h, piece) = SegmentHeader::parse(&d[HEADER_LEN..]).unwrap();
            if let Some(b) = r.push(now, n(1), h, piece) {
                out = Some(b.to_vec());
            }
        }
        assert_eq!(out, Some(blob));
        assert_eq!(
            resplit(&pieces[0], HEADER_LEN + SEGMENT_HEADER_LEN, |_| {}),
            1
        );
    }
}
