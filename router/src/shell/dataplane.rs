//! The data plane's I/O: two threads moving frames between the TAP device
//! and the UDP socket, deciding with the core's [`Forwarder`].
//!
//! ```text
//!  TAP ──recv (batch)──▶ tap thread ──Forwarder::from_tap──▶ Batcher ──sendmmsg──▶ UDP
//!                                   (64 KB TCP frames: udp::segment, sent whole)
//!  UDP ──recvmmsg─────▶ udp thread ──Forwarder::from_mesh─┬─▶ TAP (deliver; segments
//!                                                         │   through the Reassembler)
//!                                                         └─▶ sendmmsg (relay)
//!                          control datagrams (heartbeat, PMTU) ──▶ router task
//! ```
//!
//! Offloads do most of the work per byte. The TAP carries a virtio-net
//! header, so the kernel hands over TCP super-segments of up to 64 KB with
//! the checksum left to "whoever segments" (TSO); weft cuts each into
//! path-MTU-sized segment datagrams without touching the TCP headers, and
//! the destination writes it back to its TAP in one piece with the same
//! header, so the kernel there segments (or, towards a local veth, does
//! not even need to). Trains of equal-sized datagrams to one neighbour go
//! down as one UDP segmentation offload send, and UDP GRO coalesces them
//! again on receipt: one system call per 64 KB instead of one per frame.
//!
//! Plain OS threads, not tokio tasks: each blocks in one system call per
//! batch and both run in parallel on separate cores. They share the
//! forwarder (MAC table, data routes, counters) behind one mutex taken once
//! per batch, and a read-mostly map of neighbours' UDP addresses and path
//! MTUs that the router task republishes when the control plane changes.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, warn};
use tun_rs::{InterruptEvent, SyncDevice};

use crate::core::forward::{
    Batcher, Destination, DropReason, Forwarder, Sink, TapVerdict, resplit,
};
use crate::core::identity::PeerName;
use crate::core::reassembly::Reassembler;
use crate::core::router::{DataView, NeighbourPath};
use crate::core::status::DataPlaneStatus;
use crate::core::wire::udp::{
    self, DEFAULT_HOP_LIMIT, FramesIter, HEADER_LEN, Header, Kind, MAGIC, MAX_BLOB, SegmentHeader,
};
use crate::core::wire::vnet::{self, VnetHeader};
use crate::shell::udp_io::{self, RecvBatch, SendBatch, SendReport};

/// Frames read from the TAP per batch.
const TAP_BATCH: usize = 64;
/// How often stale MAC entries are swept.
const MAC_SWEEP: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Neighbours {
    by_name: HashMap<PeerName, NeighbourPath>,
    by_addr: HashMap<SocketAddr, PeerName>,
}

impl Neighbours {
    /// Largest UDP payload all of `hops` accept; 0 if one is unknown.
    fn limit(&self, hops: &[PeerName]) -> usize {
        hops.iter()
            .map(|h| self.by_name.get(h).map_or(0, |n| n.payload_limit))
            .min()
            .unwrap_or(0)
    }
}

/// Counters the threads keep outside the forwarder's lock.
#[derive(Default)]
struct Counters {
    tap_write_errors: AtomicU64,
    udp_too_big: AtomicU64,
    udp_send_failed: AtomicU64,
    unknown_sender: AtomicU64,
    large_frames_delivered: AtomicU64,
    reassembly_abandoned: AtomicU64,
}

struct Shared {
    local: PeerName,
    fwd: Mutex<Forwarder>,
    neighbours: RwLock<Neighbours>,
    udp: UdpSocket,
    tap: Option<SyncDevice>,
    control: UnboundedSender<(SocketAddr, Vec<u8>)>,
    stop: AtomicBool,
    wake: InterruptEvent,
    counters: Counters,
}

/// The running data plane.
pub struct DataPlane {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl DataPlane {
    /// Starts the threads. Without a TAP (tests, or a router that only
    /// relays) frames for us are counted and dropped, and relaying works.
    pub fn start(
        local: PeerName,
        udp: UdpSocket,
        tap: Option<SyncDevice>,
        control: UnboundedSender<(SocketAddr, Vec<u8>)>,
    ) -> io::Result<Self> {
        if let Some(tap) = &tap {
            tap.set_nonblocking(true)?;
        }
        let shared = Arc::new(Shared {
            local,
            fwd: Mutex::new(Forwarder::new(local)),
            neighbours: RwLock::new(Neighbours::default()),
            udp,
            tap,
            control,
            stop: AtomicBool::new(false),
            wake: InterruptEvent::new()?,
            counters: Counters::default(),
        });
        let mut threads = Vec::new();
        let s = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("weft-udp".into())
                .spawn(move || udp_loop(&s))?,
        );
        if shared.tap.is_some() {
            let s = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("weft-tap".into())
                    .spawn(move || tap_loop(&s))?,
            );
        }
        Ok(Self { shared, threads })
    }

    /// Installs what the control plane decided.
    pub fn update(&self, view: DataView) {
        let mut n = Neighbours::default();
        for (name, path) in view.neighbours {
            n.by_addr.insert(path.addr, name);
            n.by_name.insert(name, path);
        }
        if let Ok(mut guard) = self.shared.neighbours.write() {
            *guard = n;
        }
        if let Ok(mut fwd) = self.shared.fwd.lock() {
            fwd.set_routes(Instant::now(), view.routes);
        }
    }

    /// Sends a control datagram (heartbeat, probe, ack) for the router.
    pub fn send_control(&self, to: SocketAddr, datagram: &[u8]) {
        if let Err(e) = self.shared.udp.send_to(datagram, to) {
            debug!(%to, error = %e, "UDP control send failed");
        }
    }

    /// Counters since start, for `weft status` and metrics.
    pub fn stats(&self) -> DataPlaneStatus {
        let c = &self.shared.counters;
        let (f, macs) = match self.shared.fwd.lock() {
            Ok(f) => (f.stats.clone(), f.macs().len()),
            Err(_) => Default::default(),
        };
        DataPlaneStatus {
            macs,
            frames_from_tap: f.frames_from_tap,
            frames_to_tap: f.frames_to_tap,
            frames_sent: f.frames_sent,
            datagrams_relayed: f.datagrams_relayed,
            icmp_frag_needed: f.icmp_frag_needed,
            fragmented: f.fragmented,
            large_frames_sent: f.large_frames_sent,
            large_frames_delivered: c.large_frames_delivered.load(Ordering::Relaxed),
            reassembly_abandoned: c.reassembly_abandoned.load(Ordering::Relaxed),
            dropped: f
                .dropped
                .iter()
                .map(|(reason, n)| (reason.as_str().to_owned(), *n))
                .collect(),
            tap_write_errors: c.tap_write_errors.load(Ordering::Relaxed),
            udp_too_big: c.udp_too_big.load(Ordering::Relaxed),
            udp_send_failed: c.udp_send_failed.load(Ordering::Relaxed),
            unknown_sender: c.unknown_sender.load(Ordering::Relaxed),
        }
    }

    /// Stops and joins the threads.
    pub fn stop(self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let _ = self.shared.wake.trigger();
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Collects a batch's datagrams and ICMP replies, then sends them.
struct Out<'a> {
    shared: &'a Shared,
    neighbours: &'a Neighbours,
    batch: &'a mut SendBatch,
    report: &'a mut SendReport,
}

impl Sink for Out<'_> {
    fn datagram(&mut self, next_hops: &[PeerName], datagram: &[u8]) {
        for hop in next_hops {
            if let Some(n) = self.neighbours.by_name.get(hop) {
                self.batch
                    .push(&self.shared.udp, n.addr, datagram, self.report);
            }
        }
    }

    fn to_tap(&mut self, frame: &[u8]) {
        write_tap(self.shared, frame);
    }
}

/// Writes a complete frame to the TAP behind a virtio-net header that asks
/// nothing of the kernel.
fn write_tap(shared: &Shared, frame: &[u8]) {
    let Some(tap) = &shared.tap else { return };
    let iov = [
        libc::iovec {
            iov_base: VnetHeader::PLAIN.as_ptr() as *mut libc::c_void,
            iov_len: vnet::LEN,
        },
        libc::iovec {
            iov_base: frame.as_ptr() as *mut libc::c_void,
            iov_len: frame.len(),
        },
    ];
    // SAFETY: both iovecs point at live buffers of the stated lengths that
    // the kernel only reads; the fd is owned by `tap` for the whole call.
    let rc = unsafe { libc::writev(tap.as_raw_fd(), iov.as_ptr(), 2) };
    if rc < 0 {
        tap_write_failed(shared);
    }
}

/// Writes a reassembled blob (virtio-net header and frame) to the TAP.
fn write_tap_blob(shared: &Shared, blob: &[u8]) {
    if let Some(tap) = &shared.tap
        && tap.send(blob).is_err()
    {
        tap_write_failed(shared);
    }
}

fn tap_write_failed(shared: &Shared) {
    shared
        .counters
        .tap_write_errors
        .fetch_add(1, Ordering::Relaxed);
}

fn record(shared: &Shared, report: &mut SendReport) {
    let c = &shared.counters;
    c.udp_too_big
        .fetch_add(report.too_big as u64, Ordering::Relaxed);
    c.udp_send_failed
        .fetch_add(report.failed as u64, Ordering::Relaxed);
    *report = SendReport::default();
}

fn tap_loop(shared: &Shared) {
    let Some(tap) = &shared.tap else { return };
    let mut bufs: Vec<Vec<u8>> = (0..TAP_BATCH).map(|_| vec![0u8; MAX_BLOB]).collect();
    let mut lens = [0usize; TAP_BATCH];
    let mut batcher = Batcher::new();
    let mut send = SendBatch::default();
    let mut report = SendReport::default();
    let mut hops: Vec<PeerName> = Vec::new();
    let mut scratch: Vec<u8> = Vec::with_capacity(2048);
    let mut frame_id: u32 = 0;
    let mut last_sweep = Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        match tap.wait_readable_intr_timeout(&shared.wake, Some(Duration::from_millis(500))) {
            Ok(()) => {}
            Err(e)
                if e.kind() == io::ErrorKind::Interrupted
                    || e.kind() == io::ErrorKind::TimedOut =>
            {
                continue;
            }
            Err(e) => {
                warn!(error = %e, "TAP wait failed; data plane stops reading");
                return;
            }
        }
        let mut n = 0;
        while n < TAP_BATCH {
            match tap.recv(&mut bufs[n]) {
                Ok(len) => {
                    lens[n] = len;
                    n += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!(error = %e, "TAP read failed");
                    break;
                }
            }
        }
        if n == 0 {
            continue;
        }
        let now = Instant::now();
        let (Ok(mut fwd), Ok(neighbours)) = (shared.fwd.lock(), shared.neighbours.read()) else {
            return;
        };
        let mut out = Out {
            shared,
            neighbours: &neighbours,
            batch: &mut send,
            report: &mut report,
        };
        for i in 0..n {
            let blob = &mut bufs[i][..lens[i]];
            let Some(frame_len) = blob.len().checked_sub(vnet::LEN) else {
                continue;
            };
            let Ok(vh) = VnetHeader::parse(blob, frame_len) else {
                // The kernel produced it, so this is a weft bug, not an
                // attack; skip the frame rather than guess.
                debug!("TAP frame with an unexpected virtio-net header");
                continue;
            };
            if !vh.is_gso() {
                let frame = &mut blob[vnet::LEN..];
                if vh.flags & vnet::F_NEEDS_CSUM != 0 {
                    vnet::complete_checksum(frame, vh.csum_start, vh.csum_offset);
                }
                forward_frame(
                    shared,
                    &mut fwd,
                    &neighbours,
                    &mut batcher,
                    &mut hops,
                    &mut out,
                    now,
                    frame,
                );
                continue;
            }
            let dst = match fwd.from_tap(now, &blob[vnet::LEN..]) {
                TapVerdict::Drop(_) => continue,
                TapVerdict::Unicast { dst, next_hop } => {
                    hops.clear();
                    hops.push(next_hop);
                    Some(dst)
                }
                TapVerdict::Flood => {
                    hops.clear();
                    hops.extend_from_slice(fwd.flood_hops(shared.local));
                    None
                }
            };
            let limit = neighbours.limit(&hops);
            // Frames already batched for the same peers go first, so a TCP
            // stream's segments stay in order.
            batcher.flush(&mut out);
            let header = Header {
                kind: Kind::Segment,
                hop_limit: DEFAULT_HOP_LIMIT,
                src: shared.local,
                dst,
            };
            frame_id = frame_id.wrapping_add(1);
            let sent = udp::segment(header, frame_id, blob, limit, &mut scratch, |d| {
                out.datagram(&hops, d);
            });
            if sent {
                fwd.stats.frames_sent += 1;
                fwd.stats.large_frames_sent += 1;
            } else if !hops.is_empty() {
                fwd.stats.drop(DropReason::TooBig);
            }
        }
        batcher.flush(&mut out);
        if now.duration_since(last_sweep) >= MAC_SWEEP {
            fwd.macs_mut().expire(now);
            last_sweep = now;
        }
        drop(fwd);
        drop(neighbours);
        send.flush(&shared.udp, &mut report);
        record(shared, &mut report);
    }
}

/// Sends one ordinary (not offloaded) frame read from the TAP: batched with
/// others for the same peers, or answered with ICMP if it cannot fit.
#[allow(clippy::too_many_arguments)]
fn forward_frame(
    shared: &Shared,
    fwd: &mut Forwarder,
    neighbours: &Neighbours,
    batcher: &mut Batcher,
    hops: &mut Vec<PeerName>,
    out: &mut Out<'_>,
    now: Instant,
    frame: &[u8],
) {
    match fwd.from_tap(now, frame) {
        TapVerdict::Drop(_) => {}
        TapVerdict::Unicast { dst, next_hop } => {
            let limit = neighbours.limit(&[next_hop]);
            batcher.push(fwd, Destination::Peer(dst), &[next_hop], limit, frame, out);
        }
        TapVerdict::Flood => {
            hops.clear();
            hops.extend_from_slice(fwd.flood_hops(shared.local));
            let limit = neighbours.limit(hops);
            batcher.push(fwd, Destination::Everyone, hops, limit, frame, out);
        }
    }
}

fn udp_loop(shared: &Shared) {
    let mut batch = RecvBatch::default();
    let mut send = SendBatch::default();
    let mut report = SendReport::default();
    let mut hops: Vec<PeerName> = Vec::new();
    let mut reassembler = Reassembler::new();
    let mut last_sweep = Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        let n = match udp_io::recv_batch(&shared.udp, &mut batch) {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, "UDP receive failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let now = Instant::now();
        if now.duration_since(last_sweep) >= MAC_SWEEP {
            reassembler.expire(now);
            last_sweep = now;
        }
        if n == 0 {
            continue;
        }
        let (Ok(mut fwd), Ok(neighbours)) = (shared.fwd.lock(), shared.neighbours.read()) else {
            return;
        };
        for (addr, datagram) in batch.iter_mut() {
            let Some(addr) = addr else { continue };
            if datagram.len() < HEADER_LEN || datagram[0] != MAGIC {
                continue;
            }
            let kind = datagram[1];
            if kind != Kind::Frames as u8 && kind != Kind::Segment as u8 {
                let _ = shared.control.send((addr, datagram.to_vec()));
                continue;
            }
            let Some(&from) = neighbours.by_addr.get(&addr) else {
                shared
                    .counters
                    .unknown_sender
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let Ok(verdict) = fwd.from_mesh(from, datagram, &mut hops) else {
                continue;
            };
            if verdict.deliver {
                if kind == Kind::Frames as u8 {
                    for frame in FramesIter::new(&datagram[HEADER_LEN..]) {
                        let Ok(frame) = frame else { break };
                        if fwd.deliver_frame(now, verdict.origin, frame) {
                            write_tap(shared, frame);
                        }
                    }
                } else {
                    deliver_piece(
                        shared,
                        &mut fwd,
                        &mut reassembler,
                        now,
                        verdict.origin,
                        datagram,
                    );
                }
            }
            for hop in &hops {
                let Some(path) = neighbours.by_name.get(hop) else {
                    continue;
                };
                if datagram.len() <= path.payload_limit {
                    send.push(&shared.udp, path.addr, datagram, &mut report);
                } else {
                    let dropped = resplit(datagram, path.payload_limit, |d| {
                        send.push(&shared.udp, path.addr, d, &mut report)
                    });
                    report.too_big += dropped;
                }
            }
        }
        drop(fwd);
        drop(neighbours);
        send.flush(&shared.udp, &mut report);
        record(shared, &mut report);
        let c = &shared.counters;
        c.large_frames_delivered
            .store(reassembler.stats.completed, Ordering::Relaxed);
        c.reassembly_abandoned
            .store(reassembler.stats.abandoned, Ordering::Relaxed);
    }
}

/// Adds one piece of a large frame; writes the frame to the TAP once whole.
fn deliver_piece(
    shared: &Shared,
    fwd: &mut Forwarder,
    reassembler: &mut Reassembler,
    now: Instant,
    origin: PeerName,
    datagram: &[u8],
) {
    let Ok((h, piece)) = SegmentHeader::parse(&datagram[HEADER_LEN..]) else {
        fwd.stats.drop(DropReason::Malformed);
        return;
    };
    let Some(blob) = reassembler.push(now, origin, h, piece) else {
        return;
    };
    let frame = &blob[vnet::LEN..];
    // The header came from the network: the TAP gets only what weft itself
    // would produce.
    if VnetHeader::parse(blob, frame.len()).is_err() {
        fwd.stats.drop(DropReason::Malformed);
        return;
    }
    if fwd.deliver_frame(now, origin, frame) {
        write_tap_blob(shared, blob);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::routes::{Graph, Routes};
    use crate::core::wire::udp::{FramesBuilder, Header};

    fn n(v: u64) -> PeerName {
        PeerName::from_u64(v).unwrap()
    }

    /// Router 2 in the line 1 - 2 - 3, with "routers" 1 and 3 played by
    /// plain sockets on loopback.
    #[test]
    fn relays_frames_and_passes_control_datagrams_to_the_router() {
        let sock = udp_io::bind(0).unwrap();
        let me = SocketAddr::from(([127, 0, 0, 1], sock.local_addr().unwrap().port()));
        let one = UdpSocket::bind("127.0.0.1:0").unwrap();
        let three = UdpSocket::bind("127.0.0.1:0").unwrap();
        three
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let dp = DataPlane::start(n(2), sock, None, tx).unwrap();
        let (a, b, c) = ([n(2)], [n(1), n(3)], [n(2)]);
        let routes = Routes::compute(
            n(2),
            Graph::from_claims([(n(1), &a[..]), (n(2), &b[..]), (n(3), &c[..])]),
        );
        let path = |s: &UdpSocket| NeighbourPath {
            addr: s.local_addr().unwrap(),
            payload_limit: 1472,
            usable: true,
        };
        dp.update(DataView {
            version: 1,
            local: n(2),
            routes,
            neighbours: HashMap::from([(n(1), path(&one)), (n(3), path(&three))]),
        });

        let mut b = FramesBuilder::new(
            Header {
                kind: Kind::Frames,
                hop_limit: 9,
                src: n(1),
                dst: Some(n(3)),
            },
            1472,
        );
        let frame: Vec<u8> = (0..100u8).collect();
        assert!(b.push(&frame));
        one.send_to(b.bytes(), me).unwrap();
        let mut buf = [0u8; 2048];
        let (len, from) = three.recv_from(&mut buf).unwrap();
        assert_eq!(from.port(), me.port());
        assert_eq!(buf[2], 8, "hop limit decremented");
        let got: Vec<&[u8]> = FramesIter::new(&buf[HEADER_LEN..len])
            .map(Result::unwrap)
            .collect();
        assert_eq!(got, vec![&frame[..]]);

        // A heartbeat goes to the router task, untouched.
        let hb = crate::core::wire::udp::heartbeat(n(1), n(2), 5, true);
        one.send_to(&hb, me).unwrap();
        let (addr, d) = rx.blocking_recv().unwrap();
        assert_eq!(addr, one.local_addr().unwrap());
        assert_eq!(d, hb.to_vec());

        // Frames from a stranger are counted and dropped.
        let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
        stranger.send_to(b.bytes(), me).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while dp.stats().unknown_sender == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(dp.stats().unknown_sender, 1);
        assert_eq!(dp.stats().datagrams_relayed, 1);
        dp.stop();
    }
}
