//! Helpers shared by the fuzz targets in `fuzz_targets/`, and the seed
//! corpus they start from.
//!
//! The stream targets (`connection`, `router`) read a small header from the
//! front of each input: flag bits choosing how much of a valid handshake to
//! put before the fuzzed bytes, and how to cut the stream into reads. Without
//! the handshake prefix a fuzzer spends its time rediscovering the magic and
//! a valid `Features` frame; with it, every input reaches gossip handling.
//!
//! The seeds under `seeds/<target>/` are generated from the real encoders by
//! [`seeds`]; `cargo test` in this directory checks the committed files are
//! current, and `WEFT_UPDATE_SEEDS=1 cargo test` rewrites them.

pub mod crypto;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use weft_router::core::conn_maker::ConnHandle;
use weft_router::core::crypto::handshake::{HELLO_LEN, PLAINTEXT_HELLO};
use weft_router::core::gossip::{Channel, ChannelCtx, ChannelError, GossipStats, TOPOLOGY_CHANNEL};
use weft_router::core::identity::{Identity, PeerName, PeerUid};
use weft_router::core::wire::addr::{PeerAddr, WireAddr};
use weft_router::core::wire::control::{ControlMessage, Features};
use weft_router::core::wire::framing::{FrameDecoder, encode_frame};
use weft_router::core::wire::preamble::{PREAMBLE_LEN, PROTOCOL_MAX, PROTOCOL_MIN, Preamble};
use weft_router::core::wire::topology::{
    ConnEntry, FLAG_ESTABLISHED, FLAG_OUTBOUND, PeerEntry, TopologyUpdate,
};
use weft_router::core::wire::{ipv4, udp};
use weft_router::core::{Action, Router, RouterConfig};

/// The router under test.
pub const ROUTER_NAME: u64 = 0x02_00_00_00_00_01;
/// The peer the fuzzer impersonates in handshake prefixes. Higher than
/// [`ROUTER_NAME`], so duplicate-connection resolution prefers the router's
/// own dials and both branches of that rule are reachable.
pub const PEER_NAME: u64 = 0x02_00_00_00_00_02;
/// A third peer that appears only in gossip.
pub const OTHER_NAME: u64 = 0x02_00_00_00_00_03;
pub const PEER_UID: u64 = 7;
/// The channel the `router` target registers besides `topology`.
pub const TEST_CHANNEL: &str = "test";

/// The peer's address as the router sees it, and where it listens.
pub fn peer_socket(port: u16) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 2], port))
}

pub fn name(v: u64) -> PeerName {
    PeerName::from_u64(v).expect("test names fit in 48 bits")
}

/// Cuts `stream` into consecutive reads whose sizes cycle through `sizes`
/// (a byte `b` means `b + 1` bytes). Without sizes the stream is one read.
pub fn split<'a>(sizes: &[u8], stream: &'a [u8]) -> Vec<&'a [u8]> {
    if sizes.is_empty() {
        return vec![stream];
    }
    let mut out = Vec::new();
    let mut rest = stream;
    for &s in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, tail) = rest.split_at((usize::from(s) + 1).min(rest.len()));
        out.push(piece);
        rest = tail;
    }
    out
}

/// Frames one control message exactly as a router sends it.
pub fn frame(msg: &ControlMessage) -> Vec<u8> {
    encode_frame(&msg.encode()).expect("seed messages fit a frame")
}

/// This build's preamble.
pub fn preamble() -> Vec<u8> {
    Preamble::new(PROTOCOL_MIN..=PROTOCOL_MAX).emit().to_vec()
}

/// What a plaintext peer sends before its first frame: the preamble, then
/// the cleartext `Hello` that says it does not encrypt (the same bytes
/// whichever side dialled).
pub fn handshake_prefix() -> Vec<u8> {
    let mut out = preamble();
    out.extend(PLAINTEXT_HELLO);
    out
}

/// The `Features` the fuzzing peer sends, with `uid` as its uid.
///
/// Taken from what a real `Router` with the peer's identity sends, rather
/// than written out field by field, so the harness follows the core when
/// `Features` gains a field.
pub fn peer_features(uid: u64) -> Features {
    static SENT: OnceLock<[Features; 2]> = OnceLock::new();
    let sent = SENT.get_or_init(|| [PEER_UID, PEER_UID + 1].map(features_sent_by_peer));
    let f = &sent[usize::from(uid != PEER_UID)];
    Features {
        uid: PeerUid(uid),
        ..f.clone()
    }
}

/// Handshakes a router named [`PEER_NAME`] with this build's preamble and
/// returns the `Features` it answers with.
fn features_sent_by_peer(uid: u64) -> Features {
    let identity = Identity {
        name: name(PEER_NAME),
        nickname: "fuzz-peer".into(),
        uid: PeerUid(uid),
    };
    let now = Instant::now();
    let mut peer = Router::new(RouterConfig::new(identity, 6783, uid), now);
    let conn = peer.handle_inbound(now, SocketAddr::from(([192, 0, 2, 1], 40000)));
    peer.handle_bytes(now, conn, &handshake_prefix());
    let mut sent = Vec::new();
    while let Some(a) = peer.poll_action() {
        if let Action::Send { bytes, .. } = a {
            sent.extend(bytes);
        }
    }
    match ControlMessage::decode(&sent[PREAMBLE_LEN + HELLO_LEN + 4..]) {
        Ok(ControlMessage::Features(f)) => f,
        other => panic!("a router answered a preamble with {other:?}"),
    }
}

/// A peer name of 2^48 + 0x9a00002, 49 bits: invalid, so decoding it
/// must fail.
pub fn oversized_name() -> Option<PeerName> {
    weft_router::core::wire::decode("peer name", &[0x82, 0x80, 0x80, 0xcd, 0x80, 0x80, 0x40]).ok()
}

/// How much of a valid handshake precedes the fuzzed bytes (two flag bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefix {
    /// The fuzzed bytes are the whole stream.
    None,
    /// A valid preamble, then the fuzzed bytes.
    Preamble,
    /// Preamble and the peer's `Features` frame, then the fuzzed bytes.
    Features,
    /// Preamble and `Features`, then the fuzzed bytes cut into records by
    /// [`auto_records`] (frames, and for the `router` target UDP datagrams),
    /// so mutations land in message contents rather than in length
    /// prefixes.
    AutoFramed,
}

impl Prefix {
    pub fn from_bits(bits: u8) -> Self {
        match bits & 0b11 {
            0 => Prefix::None,
            1 => Prefix::Preamble,
            2 => Prefix::Features,
            _ => Prefix::AutoFramed,
        }
    }

    pub fn bits(self) -> u8 {
        match self {
            Prefix::None => 0,
            Prefix::Preamble => 1,
            Prefix::Features => 2,
            Prefix::AutoFramed => 3,
        }
    }

    /// The stream a peer with `uid` sends: prefix, then `fuzz`.
    pub fn stream(self, uid: u64, fuzz: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if self != Prefix::None {
            out.extend(handshake_prefix());
        }
        if matches!(self, Prefix::Features | Prefix::AutoFramed) {
            out.extend(frame(&ControlMessage::Features(peer_features(uid))));
        }
        if self == Prefix::AutoFramed {
            out.extend(auto_frame(fuzz));
        } else {
            out.extend_from_slice(fuzz);
        }
        out
    }
}

/// Record length bit: the record is a UDP datagram, not a control message.
pub const RECORD_UDP: u16 = 0x8000;

/// One record of an auto-framed input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A complete frame (length prefix included) for the TCP connection.
    Frame(Vec<u8>),
    /// A datagram arriving on the UDP port from the peer's address.
    Datagram(Vec<u8>),
}

/// Reads `bytes` as records of a 2-byte big-endian length and that many
/// bytes (the last record truncated to what is left). With [`RECORD_UDP`]
/// set, the low 15 bits are the length of a UDP datagram; otherwise the
/// length of a control message payload, which is framed (empty ones are
/// skipped). The inverse, for seeds, is [`auto_unframe`].
pub fn auto_records(mut bytes: &[u8]) -> Vec<Record> {
    let mut out = Vec::new();
    while bytes.len() >= 2 {
        let field = u16::from_be_bytes([bytes[0], bytes[1]]);
        let len = usize::from(field & !RECORD_UDP).min(bytes.len() - 2);
        let body = &bytes[2..2 + len];
        if field & RECORD_UDP != 0 {
            out.push(Record::Datagram(body.to_vec()));
        } else if let Ok(f) = encode_frame(body) {
            out.push(Record::Frame(f));
        }
        bytes = &bytes[2 + len..];
    }
    out
}

/// The control-connection stream of an auto-framed input (its frames in
/// order; datagrams are dropped).
pub fn auto_frame(bytes: &[u8]) -> Vec<u8> {
    auto_records(bytes)
        .into_iter()
        .filter_map(|r| match r {
            Record::Frame(f) => Some(f),
            Record::Datagram(_) => None,
        })
        .flatten()
        .collect()
}

/// The [`auto_records`] records carrying these messages.
pub fn auto_unframe(msgs: &[ControlMessage]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        out.extend(record(0, &m.encode()));
    }
    out
}

/// The [`auto_records`] record carrying this datagram.
pub fn udp_record(datagram: &[u8]) -> Vec<u8> {
    record(RECORD_UDP, datagram)
}

fn record(flag: u16, body: &[u8]) -> Vec<u8> {
    let len = u16::try_from(body.len())
        .ok()
        .filter(|&l| l & RECORD_UDP == 0)
        .expect("seed records are small");
    let mut out = (len | flag).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// Checks that everything a router asks the shell to send is something a
/// conforming peer accepts: exactly one valid preamble, then frames that
/// decode as valid control messages (valid topology updates on the topology
/// channel), nothing after a `Close` message, and no `Send` for a connection
/// after its `Action::Close`.
#[derive(Debug, Default)]
pub struct SentStreams {
    streams: HashMap<ConnHandle, SentStream>,
}

#[derive(Debug, Default)]
struct SentStream {
    preamble: Vec<u8>,
    hello: Vec<u8>,
    decoder: FrameDecoder,
    said_close: bool,
    closed: bool,
}

impl SentStreams {
    pub fn check(&mut self, action: &Action) {
        match action {
            Action::Dial { .. } => {}
            Action::Close { conn, .. } => self.streams.entry(*conn).or_default().closed = true,
            Action::Send { conn, bytes } => {
                let s = self.streams.entry(*conn).or_default();
                assert!(!s.closed, "Send on connection {conn} after its Close");
                assert!(!bytes.is_empty(), "empty Send on connection {conn}");
                let mut bytes = &bytes[..];
                if s.preamble.len() < PREAMBLE_LEN {
                    let take = (PREAMBLE_LEN - s.preamble.len()).min(bytes.len());
                    s.preamble.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    match Preamble::parse(&s.preamble) {
                        Ok(Some(_)) => {}
                        Ok(None) => assert!(bytes.is_empty()),
                        Err(e) => panic!("router sent a bad preamble: {e}"),
                    }
                }
                if !bytes.is_empty() && s.hello.len() < HELLO_LEN {
                    let take = (HELLO_LEN - s.hello.len()).min(bytes.len());
                    s.hello.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if s.hello.len() == HELLO_LEN {
                        assert_eq!(s.hello, PLAINTEXT_HELLO, "router sent an unexpected Hello");
                    }
                }
                s.decoder.push(bytes);
                loop {
                    match s.decoder.next_frame() {
                        Ok(Some(f)) => {
                            assert!(!s.said_close, "frame sent after a Close message");
                            let msg = ControlMessage::decode(&f)
                                .unwrap_or_else(|e| panic!("router sent an invalid message: {e}"));
                            match msg {
                                ControlMessage::Close { .. } => s.said_close = true,
                                ControlMessage::Gossip { channel, payload }
                                    if channel == TOPOLOGY_CHANNEL =>
                                {
                                    if let Err(e) = TopologyUpdate::decode(&payload) {
                                        panic!("router gossiped an invalid topology update: {e}")
                                    }
                                }
                                _ => {}
                            }
                        }
                        Ok(None) => break,
                        Err(e) => panic!("router sent a bad frame: {e}"),
                    }
                }
            }
        }
    }
}

/// The `router` input the fuzzer found (then minimised): a peer
/// handshakes with the name [`oversized_name`]. The router used to accept
/// it and gossip a topology entry every conforming peer rejects; now the
/// features fail to decode and the connection is closed.
pub fn oversized_name_input() -> Vec<u8> {
    let header = RouterHeader {
        prefix: Prefix::None,
        second_conn: false,
        second_new_uid: false,
        first_outbound: false,
        chunk: 0xff,
        step: 5,
    };
    let mut input = header.emit().to_vec();
    input.extend(handshake_prefix());
    // Features { name: 2^48 + 0x9a00002, "fuzz-peer", uid 7, half 0x1234,
    // ports 6783, 6783 }, framed by hand: the encoder cannot build it.
    input.extend([
        0x00, 0x00, 0x00, 0x19, 0x00, 0x82, 0x80, 0x80, 0xcd, 0x80, 0x80, 0x40, 0x09, b'f', b'u',
        b'z', b'z', b'-', b'p', b'e', b'e', b'r', 0x07, 0xb4, 0x24, 0xff, 0x34, 0xff, 0x34,
    ]);
    input
}

impl SentStreams {
    /// Checks a datagram the router asks the shell to send on its UDP port:
    /// a valid header addressed to a peer, and a body of its kind's shape.
    /// Returns the probe id and size of a PMTU probe.
    pub fn check_udp(&mut self, datagram: &[u8]) -> Option<(u32, usize)> {
        let h = udp::Header::parse(datagram)
            .unwrap_or_else(|e| panic!("router sent a bad UDP header: {e}"));
        assert_eq!(h.src, name(ROUTER_NAME));
        assert!(h.dst.is_some(), "router's own datagrams are unicast");
        let body = &datagram[udp::HEADER_LEN..];
        match h.kind {
            udp::Kind::Heartbeat => {
                udp::parse_heartbeat(body).expect("router sent a bad UDP heartbeat");
                None
            }
            udp::Kind::PmtuProbe => {
                let id = udp::parse_pmtu_probe(body).expect("router sent a bad PMTU probe");
                Some((id, datagram.len()))
            }
            udp::Kind::PmtuAck => {
                udp::parse_pmtu_ack(body).expect("router sent a bad PMTU ack");
                None
            }
            udp::Kind::Frames | udp::Kind::Segment => {
                panic!("the control plane sent a data datagram")
            }
        }
    }
}

/// What [`run_router`] saw, for tests of the seeds.
#[derive(Debug, Default)]
pub struct RouterRun {
    /// Gossip the router received, per channel and kind.
    pub gossip: GossipStats,
    /// PMTU probes the router sent while the fuzzed input played:
    /// `(id, datagram length)`.
    pub probes: Vec<(u32, usize)>,
    /// Some data path had a verified path MTU after the fuzzed stream.
    pub pmtu_verified: bool,
}

/// A channel that accepts payloads starting with an even byte (and passes
/// them on, and answers the sender by unicast) and refuses the rest, so
/// every outcome of a `Channel` call is exercised.
#[derive(Debug, Default)]
pub struct EchoChannel {
    last: Option<Vec<u8>>,
}

impl EchoChannel {
    fn accept(&mut self, payload: &[u8]) -> Result<bool, ChannelError> {
        match payload.first() {
            Some(b) if b % 2 == 0 => {
                let new = self.last.as_deref() != Some(payload);
                self.last = Some(payload.to_vec());
                Ok(new)
            }
            _ => Err(ChannelError::Refused("odd or empty payload".into())),
        }
    }
}

impl Channel for EchoChannel {
    fn on_gossip(
        &mut self,
        ctx: &mut ChannelCtx,
        _from: PeerName,
        payload: &[u8],
    ) -> Result<(), ChannelError> {
        if self.accept(payload)? {
            ctx.gossip(payload.to_vec());
        }
        Ok(())
    }

    fn on_unicast(
        &mut self,
        ctx: &mut ChannelCtx,
        src: PeerName,
        payload: &[u8],
    ) -> Result<(), ChannelError> {
        if self.accept(payload)? {
            ctx.unicast(src, payload.to_vec());
        }
        Ok(())
    }

    fn on_broadcast(
        &mut self,
        _ctx: &mut ChannelCtx,
        _src: PeerName,
        payload: &[u8],
    ) -> Result<(), ChannelError> {
        self.accept(payload).map(|_| ())
    }

    fn full_state(&self) -> Vec<Vec<u8>> {
        self.last.iter().cloned().collect()
    }
}

/// The `router` target's input header, before the fuzzed stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouterHeader {
    pub prefix: Prefix,
    /// After the first connection's handshake, a second inbound connection
    /// from the same peer name performs one too (duplicate resolution).
    pub second_conn: bool,
    /// The second connection claims a different uid (a restarted peer).
    pub second_new_uid: bool,
    /// The first connection is one the router dialled.
    pub first_outbound: bool,
    /// Read sizes: `chunk + 1` bytes.
    pub chunk: u8,
    /// Virtual time between reads, in units of 100 ms.
    pub step: u8,
}

impl RouterHeader {
    pub const LEN: usize = 3;

    pub fn parse(data: &[u8]) -> Option<(Self, &[u8])> {
        let (h, rest) = data.split_at_checked(Self::LEN)?;
        Some((
            Self {
                prefix: Prefix::from_bits(h[0]),
                second_conn: h[0] & 0x04 != 0,
                second_new_uid: h[0] & 0x08 != 0,
                first_outbound: h[0] & 0x10 != 0,
                chunk: h[1],
                step: h[2],
            },
            rest,
        ))
    }

    pub fn emit(&self) -> [u8; Self::LEN] {
        let flags = self.prefix.bits()
            | u8::from(self.second_conn) << 2
            | u8::from(self.second_new_uid) << 3
            | u8::from(self.first_outbound) << 4;
        [flags, self.chunk, self.step]
    }
}

/// The router under test, configured the same way for every input.
fn new_router(now: Instant) -> Router {
    let identity = Identity {
        name: name(ROUTER_NAME),
        nickname: "fuzz-router".into(),
        uid: PeerUid(1),
    };
    let mut router = Router::new(RouterConfig::new(identity, 6783, 0), now);
    router
        .register_channel(now, TEST_CHANNEL, Box::new(EchoChannel::default()))
        .expect("test channel registers");
    router
}

/// Drives one router through a fuzz input; panics on any violated
/// invariant.
pub fn run_router(data: &[u8]) -> RouterRun {
    let mut run = RouterRun::default();
    let Some((h, fuzz)) = RouterHeader::parse(data) else {
        return run;
    };
    let mut now = Instant::now();
    let mut router = new_router(now);
    let mut sent = SentStreams::default();
    let mut drain = |router: &mut Router, run: &mut RouterRun| {
        while let Some(a) = router.poll_action() {
            sent.check(&a);
        }
        while let Some((_, d)) = router.poll_transmit_udp() {
            run.probes.extend(sent.check_udp(&d));
        }
    };
    // Runs the router's timers if they are due, as the shell does.
    let tick = |router: &mut Router, now: Instant| {
        let due = router.poll_timeout().is_some_and(|t| t <= now);
        if due {
            router.handle_timeout(now);
        }
    };

    let first = if h.first_outbound {
        let target = PeerAddr::from_socket(peer_socket(6783));
        router.add_targets(now, [target.clone()]);
        drain(&mut router, &mut run);
        router.handle_dial_succeeded(now, &target, peer_socket(6783))
    } else {
        router.handle_inbound(now, peer_socket(40000))
    };
    router.handle_bytes(now, first, &h.prefix.stream(PEER_UID, &[]));
    drain(&mut router, &mut run);
    let mut last = first;
    if h.second_conn {
        let uid = if h.second_new_uid {
            PEER_UID + 1
        } else {
            PEER_UID
        };
        last = router.handle_inbound(now, peer_socket(40001));
        router.handle_bytes(now, last, &h.prefix.stream(uid, &[]));
        drain(&mut router, &mut run);
    }
    // Bytes go to whichever connection survived the handshake(s).
    let conn = router
        .connections()
        .find(|c| c.remote().is_some_and(|f| f.name == name(PEER_NAME)))
        .map_or(last, |c| c.handle);

    let records = if h.prefix == Prefix::AutoFramed {
        auto_records(fuzz)
    } else {
        vec![Record::Frame(fuzz.to_vec())]
    };
    let step = Duration::from_millis(100) * u32::from(h.step);
    for r in records {
        match r {
            Record::Frame(bytes) => {
                for piece in split(&[h.chunk], &bytes) {
                    router.handle_bytes(now, conn, piece);
                    drain(&mut router, &mut run);
                    now += step;
                    tick(&mut router, now);
                    drain(&mut router, &mut run);
                }
            }
            Record::Datagram(d) => {
                router.handle_udp(now, peer_socket(6783), &d);
                drain(&mut router, &mut run);
                now += step;
                tick(&mut router, now);
                drain(&mut router, &mut run);
            }
        }
    }
    let probes_in_stream = run.probes.len();
    run.pmtu_verified = router
        .status(now)
        .connections
        .iter()
        .any(|c| c.data_path.as_ref().is_some_and(|d| d.pmtu_verified));
    // A minute of silence: heartbeats, liveness timeout, GC, redials.
    for _ in 0..60 {
        now += Duration::from_secs(1);
        tick(&mut router, now);
        drain(&mut router, &mut run);
    }
    let status = router.status(now);
    assert_eq!(status.peers.iter().filter(|p| p.is_local).count(), 1);
    router.shutdown(now);
    drain(&mut router, &mut run);
    assert_eq!(router.connections().count(), 0);
    run.gossip = router.gossip_stats().clone();
    run.probes.truncate(probes_in_stream);
    run
}

/// The `connection` target's input header: flags, then the read size.
pub const CONNECTION_HEADER_LEN: usize = 2;
/// `connection` flag: the connection is one we dialled.
pub const CONN_FLAG_OUTBOUND: u8 = 0x04;
/// `connection` flag: we speak versions 1..=3, so negotiation has a choice.
pub const CONN_FLAG_WIDE_VERSIONS: u8 = 0x08;

/// One seed file: the target it belongs to, its file name, its bytes.
pub struct Seed {
    pub target: &'static str,
    pub name: &'static str,
    pub bytes: Vec<u8>,
}

/// A topology entry for `peer` listing established connections to `conns`.
fn entry(peer: u64, uid: u64, version: u64, conns: &[(u64, Option<WireAddr>, u8)]) -> PeerEntry {
    PeerEntry {
        name: name(peer),
        nickname: format!("p{}", peer & 0xff),
        uid: PeerUid(uid),
        version,
        connections: conns
            .iter()
            .map(|&(p, addr, flags)| ConnEntry {
                peer: name(p),
                addr,
                flags,
            })
            .collect(),
    }
}

fn topology_gossip(update: &TopologyUpdate) -> ControlMessage {
    ControlMessage::Gossip {
        channel: TOPOLOGY_CHANNEL.into(),
        payload: update.encode(),
    }
}

/// The mesh the fuzzing peer describes: it is connected to the router and
/// to a third peer, which is connected back (so both become reachable).
fn sample_topology() -> TopologyUpdate {
    let est = FLAG_ESTABLISHED;
    let v4 = Some(WireAddr::V4([192, 0, 2, 3], 6783));
    let v6 = Some(WireAddr::V6(
        [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        7000,
    ));
    TopologyUpdate {
        peers: vec![
            entry(
                PEER_NAME,
                PEER_UID,
                5,
                &[
                    (ROUTER_NAME, None, est),
                    (OTHER_NAME, v4, est | FLAG_OUTBOUND),
                ],
            ),
            entry(OTHER_NAME, 9, 2, &[(PEER_NAME, v6, est)]),
        ],
    }
}

/// Messages a neighbour sends once established, covering every variant but
/// `Close` and every delivery mode the router handles.
fn session_messages() -> Vec<ControlMessage> {
    vec![
        ControlMessage::Heartbeat,
        topology_gossip(&sample_topology()),
        ControlMessage::Gossip {
            channel: TEST_CHANNEL.into(),
            payload: vec![0x02, 0xaa],
        },
        ControlMessage::GossipUnicast {
            channel: TEST_CHANNEL.into(),
            src: name(OTHER_NAME),
            dst: name(ROUTER_NAME),
            hop_limit: 64,
            payload: vec![0x04],
        },
        ControlMessage::GossipUnicast {
            channel: TEST_CHANNEL.into(),
            src: name(ROUTER_NAME),
            dst: name(OTHER_NAME),
            hop_limit: 1,
            payload: vec![0x06],
        },
        ControlMessage::GossipBroadcast {
            channel: TEST_CHANNEL.into(),
            src: name(OTHER_NAME),
            payload: vec![0x08],
        },
        // Our own name with another uid: the router must outrank it.
        topology_gossip(&TopologyUpdate {
            peers: vec![entry(ROUTER_NAME, 99, 40, &[])],
        }),
    ]
}

/// Sent apart from [`session_messages`]: a connection drops whatever
/// arrived in the same read before a `Close` (reported as a core bug), so
/// seeds that must reach gossip handling end without one.
fn close_message() -> ControlMessage {
    ControlMessage::Close {
        reason: "fuzz seed done".into(),
    }
}

/// Every seed, generated from the real encoders.
pub fn seeds() -> Vec<Seed> {
    let seed = |target, name, bytes| Seed {
        target,
        name,
        bytes,
    };
    let session = session_messages();
    let framed_session: Vec<u8> = session.iter().flat_map(frame).collect();
    let framed_close = frame(&close_message());
    let features = ControlMessage::Features(peer_features(PEER_UID));
    let mut out = vec![
        seed("preamble", "valid", preamble()),
        seed(
            "preamble",
            "wide-range",
            Preamble::new(1..=3).emit().to_vec(),
        ),
        seed("preamble", "http", b"GET / HTTP/1.1\r\n".to_vec()),
        seed("preamble", "partial", b"weft\r\n".to_vec()),
    ];

    let mut frames = vec![3, 0, 6, 200];
    frames.extend(frame(&features));
    frames.extend(&framed_session);
    frames.extend(&framed_close);
    out.push(seed("frame_decoder", "session", frames));
    out.push(seed(
        "frame_decoder",
        "oversized",
        vec![1, 3, 0x00, 0x10, 0x00, 0x01, 0xaa],
    ));

    out.push(seed("control_message", "features", features.encode()));
    let names = [
        "heartbeat",
        "topology",
        "gossip",
        "unicast-to-us",
        "unicast-relay",
        "broadcast",
        "self-entry",
    ];
    for (name, msg) in names.iter().zip(&session) {
        out.push(seed("control_message", name, msg.encode()));
    }
    out.push(seed("control_message", "close", close_message().encode()));

    out.push(seed("topology_update", "mesh", sample_topology().encode()));
    out.push(seed(
        "topology_update",
        "empty",
        TopologyUpdate { peers: vec![] }.encode(),
    ));

    let handshake = |flags: u8, chunk: u8| {
        let mut v = vec![flags, chunk];
        v.extend(handshake_prefix());
        v.extend(frame(&features));
        v.extend(&framed_session);
        v.extend(&framed_close);
        v
    };
    out.push(seed("connection", "raw-handshake", handshake(0, 0xff)));
    out.push(seed(
        "connection",
        "bytewise-outbound",
        handshake(CONN_FLAG_OUTBOUND, 0),
    ));
    let mut after_features = vec![Prefix::Features.bits() | CONN_FLAG_WIDE_VERSIONS, 31];
    after_features.extend(&framed_session);
    out.push(seed("connection", "after-features", after_features));
    let mut auto = vec![Prefix::AutoFramed.bits(), 0xff];
    auto.extend(auto_unframe(&session));
    out.push(seed("connection", "auto-framed", auto));

    let header = |prefix, second_conn, second_new_uid, first_outbound| RouterHeader {
        prefix,
        second_conn,
        second_new_uid,
        first_outbound,
        chunk: 0xff,
        step: 5,
    };
    let mut raw = header(Prefix::None, false, false, false).emit().to_vec();
    raw.extend(handshake_prefix());
    raw.extend(frame(&features));
    raw.extend(&framed_session);
    raw.extend(&framed_close);
    out.push(seed("router", "raw", raw));
    let mut framed = header(Prefix::Features, false, false, true).emit().to_vec();
    framed.extend(&framed_session);
    out.push(seed("router", "outbound-session", framed));
    let mut auto = header(Prefix::AutoFramed, true, false, false)
        .emit()
        .to_vec();
    auto.extend(auto_unframe(&session));
    out.push(seed("router", "duplicate-auto-framed", auto));
    let mut restarted = header(Prefix::AutoFramed, true, true, true).emit().to_vec();
    restarted.extend(auto_unframe(&session[..2]));
    out.push(seed("router", "restarted-peer", restarted));
    out.push(seed("router", "oversized-name", oversized_name_input()));
    out.push(seed("router", "udp-data-path", udp_data_path_input()));

    let (src, dst) = (name(PEER_NAME), name(ROUTER_NAME));
    out.push(seed(
        "udp_datagram",
        "heartbeat",
        udp::heartbeat(src, dst, 0x1234, true).to_vec(),
    ));
    out.push(seed(
        "udp_datagram",
        "pmtu-probe",
        udp::pmtu_probe(src, dst, 7, 64),
    ));
    out.push(seed(
        "udp_datagram",
        "pmtu-ack",
        udp::pmtu_ack(src, dst, 7, 1400).to_vec(),
    ));
    let header = udp::Header {
        kind: udp::Kind::Frames,
        hop_limit: udp::DEFAULT_HOP_LIMIT,
        src,
        dst: None,
    };
    let mut frames = udp::FramesBuilder::new(header, 2048);
    // One frame to answer with "fragmentation needed", one to fragment.
    assert!(frames.push(&ipv4_frame(100, true)));
    assert!(frames.push(&ipv4_frame(700, false)));
    out.push(seed("udp_datagram", "frames", frames.bytes().to_vec()));
    // A whole large frame in one piece: a virtio-net header asking for the
    // checksum at 34+6 to be completed, then the frame.
    let mut blob = vec![1, 0, 0, 0, 0, 0, 34, 0, 6, 0];
    blob.extend(ipv4_frame(200, true));
    let segment = udp::Header {
        kind: udp::Kind::Segment,
        dst: Some(dst),
        ..header
    };
    let mut pieces = Vec::new();
    assert!(udp::segment(
        segment,
        1,
        &blob,
        2048,
        &mut Vec::new(),
        |d| { pieces.push(d.to_vec()) }
    ));
    out.push(seed("udp_datagram", "segment", pieces.remove(0)));
    out.extend(crypto::seeds());
    out
}

/// A `router` input that brings the UDP data path up and verifies its path
/// MTU: topology, the peer's UDP heartbeat (with the real connection id),
/// a few control heartbeats while the router starts probing, then the ack
/// for the router's first probe.
fn udp_data_path_input() -> Vec<u8> {
    let header = RouterHeader {
        prefix: Prefix::AutoFramed,
        second_conn: false,
        second_new_uid: false,
        first_outbound: false,
        chunk: 0xff,
        step: 1,
    };
    let (peer, router) = (name(PEER_NAME), name(ROUTER_NAME));
    let mut input = header.emit().to_vec();
    input.extend(auto_unframe(&session_messages()[..2]));
    input.extend(udp_record(&udp::heartbeat(peer, router, conn_id(), true)));
    // Let virtual time pass, 100 ms a message, until the router probes;
    // then answer the probe still outstanding.
    for _ in 0..30 {
        if let Some(&(id, size)) = run_router(&input).probes.last() {
            let size = u16::try_from(size).expect("probes fit a datagram");
            input.extend(udp_record(&udp::pmtu_ack(peer, router, id, size)));
            break;
        }
        input.extend(auto_unframe(&[ControlMessage::Heartbeat]));
    }
    input
}

/// The id of the router's first connection once the peer's `Features`
/// arrived (both halves come from seeded RNGs, so it is always the same).
fn conn_id() -> u64 {
    let now = Instant::now();
    let mut router = new_router(now);
    let conn = router.handle_inbound(now, peer_socket(40000));
    router.handle_bytes(now, conn, &Prefix::Features.stream(PEER_UID, &[]));
    router
        .connection(conn)
        .and_then(|c| c.id())
        .expect("the handshake completes")
        .0
}

/// An Ethernet frame carrying an IPv4 (UDP) packet with `payload_len`
/// payload bytes and a valid header checksum.
fn ipv4_frame(payload_len: usize, dont_fragment: bool) -> Vec<u8> {
    let mut frame = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    let mut h = [0u8; 20];
    h[0] = 0x45;
    let total = u16::try_from(20 + payload_len).expect("seed packets are small");
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    if dont_fragment {
        h[6] = 0x40;
    }
    h[8] = 64;
    h[9] = 17;
    h[12..16].copy_from_slice(&[10, 32, 0, 1]);
    h[16..20].copy_from_slice(&[10, 32, 0, 2]);
    let c = ipv4::checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    frame.extend_from_slice(&h);
    frame.extend((0..payload_len).map(|i| i as u8));
    frame
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use weft_router::core::gossip::GossipKind;
    use weft_router::core::wire::framing::MAX_FRAME_LEN;

    #[test]
    fn split_cycles_sizes_and_covers_the_stream() {
        let s: Vec<u8> = (0..10).collect();
        let pieces = split(&[0, 2], &s);
        assert_eq!(
            pieces,
            vec![&s[0..1], &s[1..4], &s[4..5], &s[5..8], &s[8..9], &s[9..10]]
        );
        assert_eq!(split(&[], &s), vec![&s[..]]);
    }

    #[test]
    fn auto_framing_inverts_auto_unframe() {
        let msgs = session_messages();
        let expected: Vec<u8> = msgs.iter().flat_map(frame).collect();
        assert_eq!(auto_frame(&auto_unframe(&msgs)), expected);
        // zero-length records are skipped, a short last record is truncated
        assert_eq!(auto_frame(&[0, 0, 0, 9, 0xaa]), [0, 0, 0, 1, 0xaa]);
    }

    #[test]
    fn the_udp_seed_verifies_the_path_mtu() {
        let run = run_router(&udp_data_path_input());
        assert!(!run.probes.is_empty(), "the router never probed");
        assert!(run.pmtu_verified, "the ack was not accepted");
    }

    #[test]
    fn records_split_frames_from_datagrams() {
        let mut input = auto_unframe(&[ControlMessage::Heartbeat]);
        input.extend(udp_record(&[0xfe, 2]));
        assert_eq!(
            auto_records(&input),
            vec![
                Record::Frame(vec![0, 0, 0, 1, 1]),
                Record::Datagram(vec![0xfe, 2])
            ]
        );
    }

    #[test]
    fn router_header_round_trips() {
        for flags in 0..32u8 {
            let input = [flags, 1, 2, 9];
            let (h, rest) = RouterHeader::parse(&input).unwrap();
            assert_eq!(h.emit(), [flags, 1, 2]);
            assert_eq!(rest, [9]);
        }
    }

    #[test]
    fn every_router_seed_runs_clean_and_reaches_gossip() {
        for s in seeds().iter().filter(|s| s.target == "router") {
            let stats = run_router(&s.bytes).gossip;
            let got = |channel: &str, kind| {
                stats
                    .received
                    .get(&(channel.to_owned(), kind))
                    .map_or(0, |c| c.messages)
            };
            if s.name == "oversized-name" || s.name == "udp-data-path" {
                continue;
            }
            assert!(got(TOPOLOGY_CHANNEL, GossipKind::Delta) > 0, "{}", s.name);
            if s.name != "restarted-peer" {
                assert!(got(TEST_CHANNEL, GossipKind::Unicast) >= 2, "{}", s.name);
                assert!(got(TEST_CHANNEL, GossipKind::Broadcast) > 0, "{}", s.name);
            }
        }
    }

    /// Regression for the first bug this fuzzer found: a 49-bit peer name
    /// in `Features` must not decode, and the router must not gossip it.
    #[test]
    fn an_oversized_peer_name_is_rejected() {
        assert!(oversized_name().is_none());
        run_router(&oversized_name_input());
    }

    #[test]
    fn seed_messages_are_valid() {
        for m in session_messages() {
            let len = m.encode().len();
            assert!(len > 0 && len <= MAX_FRAME_LEN);
            assert_eq!(ControlMessage::decode(&m.encode()), Ok(m));
        }
    }

    /// The committed seed files are exactly what [`seeds`] generates.
    /// Regenerate with `WEFT_UPDATE_SEEDS=1 cargo test`.
    #[test]
    fn committed_seeds_are_current() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds");
        let update = std::env::var_os("WEFT_UPDATE_SEEDS").is_some();
        let seeds = seeds();
        if update {
            let _ = std::fs::remove_dir_all(&root);
        }
        for s in &seeds {
            let path = root.join(s.target).join(s.name);
            if update {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &s.bytes).unwrap();
            } else {
                let on_disk = std::fs::read(&path).unwrap_or_else(|e| {
                    panic!(
                        "{}: {e}; run WEFT_UPDATE_SEEDS=1 cargo test",
                        path.display()
                    )
                });
                assert_eq!(
                    on_disk,
                    s.bytes,
                    "{} is stale: the encoders changed; run WEFT_UPDATE_SEEDS=1 cargo test in router/fuzz",
                    path.display()
                );
            }
        }
        let on_disk = std::fs::read_dir(&root)
            .unwrap()
            .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
            .count();
        assert_eq!(on_disk, seeds.len(), "stray files under {}", root.display());
    }
}
