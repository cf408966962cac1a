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
//! batch and both run in parallel on separate cores. What the control
//! plane decides (data routes, neighbours' UDP addresses and path MTUs,
//! encrypted sessions) reaches them as [`Tables`], immutable once
//! published: the router task swaps in a new set and never waits, and each
//! thread picks up the current set at the start of a batch. The one
//! mutable thing both threads need, the forwarder (MAC table, counters),
//! is a mutex only they take, once per batch; counters reach the router
//! task through a leaf lock after each batch. [`crate::shell::locks`] has
//! the rule and checks it.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, info, warn};
use tun_rs::{InterruptEvent, SyncDevice};

use crate::core::crypto::data::{self as sealed, peek_receiver_index};
use crate::core::crypto::fragments::{self, Defragmenter, FRAGMENT_MAGIC, Fragment};
use crate::core::crypto::{DataError, DataSession};
use crate::core::forward::{
    Batcher, Destination, DropReason, ENCAP_OVERHEAD, ForwardStats, Forwarder, Sink, TapVerdict,
    resplit,
};
use crate::core::identity::PeerName;
use crate::core::reassembly::Reassembler;
use crate::core::router::{DataView, NeighbourPath};
use crate::core::routes::Routes;
use crate::core::status::DataPlaneStatus;
use crate::core::wire::udp::{
    self, DEFAULT_HOP_LIMIT, FramesIter, HEADER_LEN, Header, Kind, MAGIC, MAX_BLOB, MIN_BLOB,
    SEGMENT_HEADER_LEN, SegmentHeader,
};
use crate::core::wire::vnet::{self, VnetHeader};
use crate::shell::locks::{self, ForwarderLock, Leaf, RankedGuard};
use crate::shell::udp_io::{self, RecvBatch, SendBatch, SendReport};
use crate::shell::watchdog::Beat;

/// Frames read from the TAP per batch.
const TAP_BATCH: usize = 64;
/// How often stale MAC entries are swept.
const MAC_SWEEP: Duration = Duration::from_secs(10);

#[derive(Clone, Default)]
struct Neighbours {
    by_name: HashMap<PeerName, NeighbourPath>,
    by_addr: HashMap<SocketAddr, PeerName>,
}

/// A neighbour's data session, shared by the thread that seals datagrams
/// to it and the one that opens datagrams from it. A leaf lock: held to
/// seal or open one datagram, or to take a nonce.
type SharedSession = Arc<Leaf<DataSession>>;

/// Encryption state: the session per neighbour, found by peer (sealing
/// frames), by the receiver index in a datagram (opening), and by UDP
/// address (sealing the router's control datagrams).
#[derive(Clone, Default)]
struct Sessions {
    by_peer: HashMap<PeerName, SharedSession>,
    by_index: HashMap<u32, (PeerName, SharedSession)>,
    by_addr: HashMap<SocketAddr, SharedSession>,
}

/// What the control plane decided, as the data threads see it: replaced
/// whole by the router task, never changed in place.
#[derive(Clone, Default)]
struct Tables {
    /// Bumped whenever `routes` change.
    routes_version: u64,
    routes: Arc<Routes>,
    neighbours: Neighbours,
    sessions: Sessions,
}

/// The forwarder and the version of the routes it has.
struct Forwarding {
    fwd: Forwarder,
    routes_version: u64,
}

/// What the data threads publish for `weft status` after each batch.
#[derive(Default)]
struct Published {
    stats: ForwardStats,
    macs: usize,
}

/// Seals `datagram` for a neighbour into `buf`; false if it cannot be.
fn seal_into(session: &SharedSession, now: Instant, datagram: &[u8], buf: &mut Vec<u8>) -> bool {
    let Some(mut s) = session.lock() else {
        return false;
    };
    // PMTU probes measure the size on the wire: give up padding so that
    // the sealed probe is exactly as large as the router asked.
    let len = if datagram.len() > HEADER_LEN + 4 + sealed::OVERHEAD
        && datagram[0] == MAGIC
        && datagram[1] == Kind::PmtuProbe as u8
    {
        datagram.len() - sealed::OVERHEAD
    } else {
        datagram.len()
    };
    buf.clear();
    buf.extend_from_slice(&[0; sealed::HEADER_LEN]);
    buf.extend_from_slice(&datagram[..len]);
    buf.extend_from_slice(&[0; sealed::TAG_LEN]);
    let rekeys = s.stats().send_rekeys;
    let Ok(total) = s.seal(now, buf, len) else {
        return false;
    };
    buf.truncate(total);
    let rekeyed =
        (s.stats().send_rekeys != rekeys).then(|| (s.local_index(), s.stats().send_epoch));
    // Logging writes to a file or stderr: not under a leaf lock.
    drop(s);
    if let Some((session, epoch)) = rekeyed {
        info!(session, epoch, "data session rekeyed");
    }
    true
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
    /// Plaintext datagrams from a neighbour we share a session with: an
    /// attacker spoofing its address, or a misconfiguration.
    plaintext_refused: AtomicU64,
    /// Encrypted datagrams that failed to open, by reason.
    crypto_dropped: Leaf<BTreeMap<&'static str, u64>>,
    /// Rekeys of sessions already removed, so the total never goes back.
    past_rekeys: AtomicU64,
    /// Control datagrams the router task could not send at once (the
    /// socket's buffer was full); it never waits for the data threads.
    control_send_dropped: AtomicU64,
    bytes_from_tap: AtomicU64,
    bytes_to_tap: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    bytes_relayed: AtomicU64,
}

impl Counters {
    fn crypto_drop(&self, e: DataError) {
        if let Some(mut m) = self.crypto_dropped.lock() {
            *m.entry(e.as_str()).or_default() += 1;
        }
    }
}

struct Shared {
    local: PeerName,
    tables: ArcSwap<Tables>,
    fwd: ForwarderLock<Forwarding>,
    published: Leaf<Published>,
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
    /// Starts the threads, each marking its batches on its beat from
    /// `beats` (UDP thread first, then TAP thread). Without a TAP (tests,
    /// or a router that only relays) frames for us are counted and
    /// dropped, and relaying works.
    pub fn start(
        local: PeerName,
        udp: UdpSocket,
        tap: Option<SyncDevice>,
        control: UnboundedSender<(SocketAddr, Vec<u8>)>,
        beats: [Arc<Beat>; 2],
    ) -> io::Result<Self> {
        if let Some(tap) = &tap {
            tap.set_nonblocking(true)?;
        }
        let shared = Arc::new(Shared {
            local,
            tables: ArcSwap::from_pointee(Tables::default()),
            fwd: ForwarderLock::new(Forwarding {
                fwd: Forwarder::new(local),
                routes_version: 0,
            }),
            published: Leaf::default(),
            udp,
            tap,
            control,
            stop: AtomicBool::new(false),
            wake: InterruptEvent::new()?,
            counters: Counters::default(),
        });
        let mut threads = Vec::new();
        let [udp_beat, tap_beat] = beats;
        let s = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("weft-udp".into())
                .spawn(move || udp_loop(&s, &udp_beat))?,
        );
        if shared.tap.is_some() {
            let s = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("weft-tap".into())
                    .spawn(move || tap_loop(&s, &tap_beat))?,
            );
        }
        Ok(Self { shared, threads })
    }

    /// Publishes a change of the tables for the data threads; never waits
    /// for them.
    fn publish(&self, mut change: impl FnMut(&mut Tables)) {
        self.shared.tables.rcu(|current| {
            let mut next = Tables::clone(current);
            change(&mut next);
            next
        });
    }

    /// Installs what the control plane decided.
    pub fn update(&self, view: DataView) {
        let mut n = Neighbours::default();
        for (name, path) in view.neighbours {
            n.by_addr.insert(path.addr, name);
            n.by_name.insert(name, path);
        }
        let routes = Arc::new(view.routes);
        self.publish(|t| {
            t.routes_version += 1;
            t.routes = routes.clone();
            t.neighbours = n.clone();
        });
    }

    /// From now on, seal datagrams to `peer` and open datagrams for the
    /// session's index with `session`.
    pub fn install_session(&self, peer: PeerName, addr: SocketAddr, session: DataSession) {
        let index = session.local_index();
        info!(%peer, %addr, session = index, "encrypted data session up");
        let session = Arc::new(Leaf::new(session));
        let mut replaced = None;
        self.publish(|t| {
            let s = &mut t.sessions;
            replaced = s.by_peer.insert(peer, session.clone());
            if let Some(old) = &replaced {
                forget(s, old);
            }
            s.by_index.insert(index, (peer, session.clone()));
            s.by_addr.insert(addr, session.clone());
        });
        self.count_past_rekeys(replaced);
    }

    /// Drops the session with index `local_index` if it is `peer`'s current
    /// one (a replaced connection's late removal must not drop its
    /// successor's session).
    pub fn remove_session(&self, peer: PeerName, local_index: u32) {
        let mut removed = None;
        self.publish(|t| {
            let s = &mut t.sessions;
            let current = match (s.by_peer.get(&peer), s.by_index.get(&local_index)) {
                (Some(c), Some((p, x))) => *p == peer && Arc::ptr_eq(c, x),
                _ => false,
            };
            removed = if current {
                s.by_peer.remove(&peer)
            } else {
                None
            };
            if let Some(old) = &removed {
                forget(s, old);
            }
        });
        self.count_past_rekeys(removed);
    }

    /// Keeps the rekeys of a session that is gone in the total.
    fn count_past_rekeys(&self, gone: Option<SharedSession>) {
        if let Some(rekeys) = gone.and_then(|g| g.lock().map(|g| g.stats().send_rekeys)) {
            self.shared
                .counters
                .past_rekeys
                .fetch_add(rekeys, Ordering::Relaxed);
        }
    }

    /// Sends a control datagram (heartbeat, probe, ack) for the router,
    /// sealed if we share a session with its destination. Never waits: if
    /// the socket's buffer is full (the data threads are sending as fast
    /// as the path takes), the datagram is dropped and counted, as the
    /// network could have dropped it.
    pub fn send_control(&self, to: SocketAddr, datagram: &[u8]) {
        let session = self.shared.tables.load().sessions.by_addr.get(&to).cloned();
        let mut buf = Vec::new();
        let bytes = match &session {
            Some(s) => {
                if !seal_into(s, Instant::now(), datagram, &mut buf) {
                    return;
                }
                &buf[..]
            }
            None => datagram,
        };
        locks::before_syscall("send a control datagram");
        let sent = socket2::SockRef::from(&self.shared.udp).send_to_with_flags(
            bytes,
            &to.into(),
            libc::MSG_DONTWAIT,
        );
        if let Err(e) = sent {
            if e.kind() == io::ErrorKind::WouldBlock {
                self.shared
                    .counters
                    .control_send_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
            debug!(%to, error = %e, "UDP control send failed");
        }
    }

    /// Counters since start, for `weft status` and metrics. Takes leaf
    /// locks only: it answers while a data thread is in the middle of a
    /// send.
    pub fn stats(&self) -> DataPlaneStatus {
        let c = &self.shared.counters;
        let tables = self.shared.tables.load_full();
        let live: u64 = tables
            .sessions
            .by_peer
            .values()
            .filter_map(|x| x.lock().map(|x| x.stats().send_rekeys))
            .sum();
        let (sessions, rekeys) = (
            tables.sessions.by_peer.len(),
            c.past_rekeys.load(Ordering::Relaxed) + live,
        );
        let crypto_dropped: BTreeMap<String, u64> = c
            .crypto_dropped
            .lock()
            .map(|m| m.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect())
            .unwrap_or_default();
        let (f, macs) = match self.shared.published.lock() {
            Some(p) => (p.stats.clone(), p.macs),
            None => Default::default(),
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
            control_send_dropped: c.control_send_dropped.load(Ordering::Relaxed),
            unknown_sender: c.unknown_sender.load(Ordering::Relaxed),
            encrypted_sessions: sessions,
            rekeys,
            crypto_dropped,
            plaintext_refused: c.plaintext_refused.load(Ordering::Relaxed),
            bytes_from_tap: c.bytes_from_tap.load(Ordering::Relaxed),
            bytes_to_tap: c.bytes_to_tap.load(Ordering::Relaxed),
            bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
            bytes_received: c.bytes_received.load(Ordering::Relaxed),
            bytes_relayed: c.bytes_relayed.load(Ordering::Relaxed),
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

/// Unlinks a session from the index and address maps.
fn forget(s: &mut Sessions, old: &SharedSession) {
    s.by_index.retain(|_, (_, x)| !Arc::ptr_eq(x, old));
    s.by_addr.retain(|_, x| !Arc::ptr_eq(x, old));
}

/// The body of a message to seal: one that may be encrypted where it lies,
/// or one to copy first (it is still needed, or it is not ours to change).
enum Body<'b> {
    Overwrite(&'b mut [u8]),
    Copy(&'b [u8]),
}

/// Collects a batch's datagrams and ICMP replies, then sends them.
struct Out<'a> {
    shared: &'a Shared,
    neighbours: &'a Neighbours,
    sessions: &'a Sessions,
    now: Instant,
    batch: &'a mut SendBatch,
    report: &'a mut SendReport,
    /// Where a message to an encrypted neighbour is built and sealed.
    message: &'a mut Vec<u8>,
}

impl Out<'_> {
    /// Queues `datagram` for neighbour `hop`, sealed if we share a session:
    /// on its own if it fits the path, else as a sealed message in
    /// fragments. Without a session it must fit the path.
    fn send_to(&mut self, hop: PeerName, addr: SocketAddr, datagram: &[u8]) {
        match self.sessions.by_peer.get(&hop) {
            Some(s) if datagram.len() + sealed::OVERHEAD > self.path_limit(hop) => {
                self.send_message(s, addr, hop, &[], Body::Copy(datagram));
            }
            Some(s) => {
                let now = self.now;
                self.batch
                    .push_with(&self.shared.udp, addr, self.report, |buf| {
                        seal_into(s, now, datagram, buf)
                    });
            }
            None => self
                .batch
                .push(&self.shared.udp, addr, datagram, self.report),
        }
    }

    /// Seals `head` then `body` as one message to an encrypted neighbour
    /// and queues its fragments, each as large as the path takes. The body
    /// is encrypted where it lies if it may be overwritten, else in a copy.
    fn send_message(
        &mut self,
        session: &SharedSession,
        addr: SocketAddr,
        hop: PeerName,
        head: &[u8],
        body: Body<'_>,
    ) -> bool {
        let max_datagram = self.path_limit(hop);
        let Out {
            shared,
            now,
            batch,
            report,
            message,
            ..
        } = self;
        let body: &mut [u8] = match body {
            Body::Overwrite(b) => b,
            Body::Copy(b) => {
                message.clear();
                message.extend_from_slice(b);
                message
            }
        };
        // Only the nonce is taken under the session's lock.
        let key = match session.lock() {
            Some(mut s) => s.message_key(*now, head.len(), body.len()),
            None => return false,
        };
        let sealed = key.and_then(|k| k.seal(head, body));
        let Ok(sealed) = sealed else {
            report.too_big += 1;
            return false;
        };
        let parts = [sealed.head(), &body[..], sealed.tag()];
        let fits = fragments::fragments(&sealed.prefix, &parts, max_datagram, |header, pieces| {
            batch.push_with(&shared.udp, addr, report, |buf| {
                buf.extend_from_slice(header);
                for p in pieces {
                    buf.extend_from_slice(p);
                }
                true
            });
        });
        if !fits {
            report.too_big += 1;
        }
        fits
    }

    /// The largest UDP payload the path to `hop` carries; 0 if unknown.
    fn path_limit(&self, hop: PeerName) -> usize {
        self.neighbours
            .by_name
            .get(&hop)
            .map_or(0, |n| n.payload_limit)
    }

    /// Whether every one of `hops` has a verified path MTU.
    fn verified(&self, hops: &[PeerName]) -> bool {
        hops.iter()
            .all(|h| self.neighbours.by_name.get(h).is_some_and(|n| n.verified))
    }

    /// Largest plaintext datagram all of `hops` accept: the path MTU less
    /// the sealing overhead where there is a session; 0 if one is unknown.
    fn limit(&self, hops: &[PeerName]) -> usize {
        hops.iter()
            .map(|h| {
                let raw = self.path_limit(*h);
                if self.sessions.by_peer.contains_key(h) {
                    raw.saturating_sub(sealed::OVERHEAD)
                } else {
                    raw
                }
            })
            .min()
            .unwrap_or(0)
    }
}

impl Sink for Out<'_> {
    fn datagram(&mut self, next_hops: &[PeerName], datagram: &[u8]) {
        for &hop in next_hops {
            if let Some(n) = self.neighbours.by_name.get(&hop) {
                self.send_to(hop, n.addr, datagram);
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
    locks::before_syscall("write to the TAP");
    // SAFETY: both iovecs point at live buffers of the stated lengths that
    // the kernel only reads; the fd is owned by `tap` for the whole call.
    let rc = unsafe { libc::writev(tap.as_raw_fd(), iov.as_ptr(), 2) };
    if rc < 0 {
        tap_write_failed(shared);
    } else {
        shared
            .counters
            .bytes_to_tap
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
    }
}

/// Writes a reassembled blob (virtio-net header and frame) to the TAP.
fn write_tap_blob(shared: &Shared, blob: &[u8]) {
    let Some(tap) = &shared.tap else { return };
    locks::before_syscall("write to the TAP");
    match tap.send(blob) {
        Ok(_) => {
            let frame = blob.len().saturating_sub(vnet::LEN) as u64;
            shared
                .counters
                .bytes_to_tap
                .fetch_add(frame, Ordering::Relaxed);
        }
        Err(_) => tap_write_failed(shared),
    }
}

fn tap_write_failed(shared: &Shared) {
    shared
        .counters
        .tap_write_errors
        .fetch_add(1, Ordering::Relaxed);
}

/// What a data-plane thread keeps from batch to batch for sending: the
/// datagrams queued, what sending them came to, and where messages are
/// sealed.
struct Sender {
    batch: SendBatch,
    report: SendReport,
    message: Vec<u8>,
}

impl Sender {
    fn new() -> Self {
        Sender {
            batch: SendBatch::default(),
            report: SendReport::default(),
            message: Vec::with_capacity(fragments::MAX_MESSAGE),
        }
    }

    /// Queues one batch's datagrams with the tables current for it.
    fn out<'a>(&'a mut self, shared: &'a Shared, tables: &'a Tables, now: Instant) -> Out<'a> {
        Out {
            shared,
            neighbours: &tables.neighbours,
            sessions: &tables.sessions,
            now,
            batch: &mut self.batch,
            report: &mut self.report,
            message: &mut self.message,
        }
    }

    /// Sends what is queued and publishes what it came to.
    fn flush(&mut self, shared: &Shared) {
        self.batch.flush(&shared.udp, &mut self.report);
        let c = &shared.counters;
        let report = std::mem::take(&mut self.report);
        c.udp_too_big
            .fetch_add(report.too_big as u64, Ordering::Relaxed);
        c.udp_send_failed
            .fetch_add(report.failed as u64, Ordering::Relaxed);
        c.bytes_sent.fetch_add(report.bytes, Ordering::Relaxed);
    }
}

impl Forwarding {
    /// Installs the routes of `tables` if they are newer than the ones the
    /// forwarder has (the other thread may have installed newer ones
    /// already).
    fn catch_up(&mut self, now: Instant, tables: &Tables) {
        if tables.routes_version > self.routes_version {
            self.fwd.set_routes(now, Routes::clone(&tables.routes));
            self.routes_version = tables.routes_version;
        }
    }

    /// Moves the batch's counters into what `weft status` reads.
    fn publish(&mut self, published: &Leaf<Published>) {
        let batch = std::mem::take(&mut self.fwd.stats);
        if let Some(mut p) = published.lock() {
            p.stats.add(&batch);
            p.macs = self.fwd.macs().len();
        }
    }
}

/// The tables current at the start of a batch, and the forwarder locked
/// with their routes; `None` once a panic elsewhere poisoned the
/// forwarder (the thread then stops).
fn begin_batch(
    shared: &Shared,
    now: Instant,
) -> Option<(Arc<Tables>, RankedGuard<'_, Forwarding>)> {
    let tables = shared.tables.load_full();
    let mut fwd = shared.fwd.lock()?;
    fwd.catch_up(now, &tables);
    Some((tables, fwd))
}

/// Ends a batch: publishes the forwarder's counters, lets go of it, then
/// sends what the batch queued.
fn end_batch(shared: &Shared, mut fwd: RankedGuard<'_, Forwarding>, sender: &mut Sender) {
    fwd.publish(&shared.published);
    drop(fwd);
    sender.flush(shared);
}

fn tap_loop(shared: &Shared, beat: &Beat) {
    let Some(tap) = &shared.tap else { return };
    locks::enter_data_thread();
    let mut bufs: Vec<Vec<u8>> = (0..TAP_BATCH).map(|_| vec![0u8; MAX_BLOB]).collect();
    let mut lens = [0usize; TAP_BATCH];
    let mut batcher = Batcher::new();
    let mut sender = Sender::new();
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
        let _busy = beat.busy();
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
        let read: usize = lens[..n].iter().map(|l| l.saturating_sub(vnet::LEN)).sum();
        shared
            .counters
            .bytes_from_tap
            .fetch_add(read as u64, Ordering::Relaxed);
        let now = Instant::now();
        let Some((tables, mut fwd)) = begin_batch(shared, now) else {
            return;
        };
        let mut out = sender.out(shared, &tables, now);
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
            if !vh.is_gso() && vh.flags & vnet::F_NEEDS_CSUM != 0 {
                vnet::complete_checksum(&mut blob[vnet::LEN..], vh.csum_start, vh.csum_offset);
            }
            let Some((dst, limit)) = route(
                shared,
                &mut fwd.fwd,
                &mut hops,
                &out,
                now,
                &blob[vnet::LEN..],
            ) else {
                continue;
            };
            if !vh.is_gso() {
                // Until a path's MTU is verified it runs at the IPv4
                // minimum; answering bigger frames with ICMP then would make
                // the container's kernel remember a tiny path MTU for ten
                // minutes. Carry them whole instead, like TSO frames.
                let unverified_too_big = ENCAP_OVERHEAD + blob.len() - vnet::LEN > limit
                    && !hops.is_empty()
                    && !out.verified(&hops);
                if !unverified_too_big {
                    let dest = dst.map_or(Destination::Everyone, Destination::Peer);
                    let frame = &blob[vnet::LEN..];
                    batcher.push(&mut fwd.fwd, dest, &hops, limit, frame, &mut out);
                    continue;
                }
                blob[..vnet::LEN].copy_from_slice(&VnetHeader::PLAIN);
            }
            // Frames already batched for the same peers go first, so a TCP
            // stream's segments stay in order.
            batcher.flush(&mut out);
            frame_id = frame_id.wrapping_add(1);
            // Cutting or sealing 64 KB takes a while: the UDP thread may
            // have the forwarder meanwhile. Nothing else is held, so taking
            // it back cannot close a cycle (see crate::shell::locks).
            drop(fwd);
            let sent = send_whole(
                shared.local,
                &hops,
                &mut out,
                dst,
                frame_id,
                blob,
                &mut scratch,
            );
            let Some(f) = shared.fwd.lock() else { return };
            fwd = f;
            let stats = &mut fwd.fwd.stats;
            if sent {
                stats.frames_sent += 1;
                stats.large_frames_sent += 1;
            } else if !hops.is_empty() {
                stats.drop(DropReason::TooBig);
            }
        }
        batcher.flush(&mut out);
        if now.duration_since(last_sweep) >= MAC_SWEEP {
            fwd.fwd.macs_mut().expire(now);
            last_sweep = now;
        }
        end_batch(shared, fwd, &mut sender);
    }
}

/// Where a frame read from the TAP goes: its destination router (`None`
/// for everyone; next hops in `hops`) and the largest datagram for them.
/// `None` if it is dropped (learned nonetheless).
fn route(
    shared: &Shared,
    fwd: &mut Forwarder,
    hops: &mut Vec<PeerName>,
    out: &Out<'_>,
    now: Instant,
    frame: &[u8],
) -> Option<(Option<PeerName>, usize)> {
    let dst = match fwd.from_tap(now, frame) {
        TapVerdict::Drop(_) => return None,
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
    Some((dst, out.limit(hops)))
}

/// Sends a frame blob (virtio-net header and frame) whole: to an encrypted
/// neighbour as one segment datagram sealed as a message, to others as
/// segment datagrams that fit the path. False if it went nowhere.
fn send_whole(
    local: PeerName,
    hops: &[PeerName],
    out: &mut Out<'_>,
    dst: Option<PeerName>,
    frame_id: u32,
    blob: &mut [u8],
    scratch: &mut Vec<u8>,
) -> bool {
    let header = Header {
        kind: Kind::Segment,
        hop_limit: DEFAULT_HOP_LIMIT,
        src: local,
        dst,
    };
    let mut sent = false;
    let mut plain: Vec<PeerName> = Vec::new();
    if (MIN_BLOB..=MAX_BLOB).contains(&blob.len()) {
        let mut whole = [0u8; HEADER_LEN + SEGMENT_HEADER_LEN];
        whole[..HEADER_LEN].copy_from_slice(&header.to_bytes());
        SegmentHeader {
            frame_id,
            total: blob.len() as u32,
            offset: 0,
        }
        .emit(&mut whole[HEADER_LEN..]);
        // The common case, one encrypted next hop, seals the frame where
        // the TAP read put it: nothing else needs it afterwards.
        let only_hop = hops.len() == 1;
        for &hop in hops {
            let path = out.neighbours.by_name.get(&hop).map(|n| n.addr);
            match (out.sessions.by_peer.get(&hop), path) {
                (Some(s), Some(addr)) => {
                    let body = if only_hop {
                        Body::Overwrite(&mut *blob)
                    } else {
                        Body::Copy(blob)
                    };
                    sent |= out.send_message(s, addr, hop, &whole, body);
                }
                (Some(_), None) => {}
                (None, _) => plain.push(hop),
            }
        }
    }
    if !plain.is_empty() {
        let limit = out.limit(&plain);
        sent |= udp::segment(header, frame_id, blob, limit, scratch, |d| {
            out.datagram(&plain, d);
        });
    }
    sent
}

fn udp_loop(shared: &Shared, beat: &Beat) {
    locks::enter_data_thread();
    let mut batch = RecvBatch::default();
    let mut sender = Sender::new();
    let mut hops: Vec<PeerName> = Vec::new();
    let mut reassembler = Reassembler::new();
    let mut defragmenter = Defragmenter::new();
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
        let _busy = beat.busy();
        let now = Instant::now();
        if now.duration_since(last_sweep) >= MAC_SWEEP {
            reassembler.expire(now);
            defragmenter.expire(now);
            last_sweep = now;
        }
        if n == 0 {
            continue;
        }
        let Some((tables, mut fwd)) = begin_batch(shared, now) else {
            return;
        };
        let (neighbours, sessions) = (&tables.neighbours, &tables.sessions);
        let mut out = sender.out(shared, &tables, now);
        // Byte counts of this batch, published once after it.
        let (mut received, mut relayed) = (0u64, 0u64);
        for (addr, raw) in batch.iter_mut() {
            let Some(addr) = addr else { continue };
            received += raw.len() as u64;
            // Open sealed datagrams in place; `sender` is the neighbour the
            // session authenticates, whatever the source address says.
            let (datagram, sender) = match raw.first() {
                Some(&sealed::MAGIC) => match open(shared, sessions, now, raw) {
                    Some((len, peer)) => (
                        &mut raw[sealed::HEADER_LEN..sealed::HEADER_LEN + len],
                        Some(peer),
                    ),
                    None => continue,
                },
                Some(&FRAGMENT_MAGIC) => {
                    match open_fragment(shared, sessions, &mut defragmenter, now, raw) {
                        Some((plain, peer)) => (plain, Some(peer)),
                        None => continue,
                    }
                }
                Some(&MAGIC) => {
                    if sessions.by_addr.contains_key(&addr) {
                        shared
                            .counters
                            .plaintext_refused
                            .fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    (raw, None)
                }
                _ => continue,
            };
            if datagram.len() < HEADER_LEN || datagram[0] != MAGIC {
                continue;
            }
            let kind = datagram[1];
            if kind != Kind::Frames as u8 && kind != Kind::Segment as u8 {
                let mut inner = datagram.to_vec();
                if sender.is_some() && kind == Kind::PmtuProbe as u8 {
                    // The router measures probes by their size on the
                    // wire; give back what sealing took (see seal_into).
                    inner.resize(inner.len() + sealed::OVERHEAD, 0);
                }
                let _ = shared.control.send((addr, inner));
                continue;
            }
            let Some(from) = sender.or_else(|| neighbours.by_addr.get(&addr).copied()) else {
                shared
                    .counters
                    .unknown_sender
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let fwd = &mut fwd.fwd;
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
                    deliver_piece(shared, fwd, &mut reassembler, now, verdict.origin, datagram);
                }
            }
            for &hop in &hops {
                let Some(path) = neighbours.by_name.get(&hop) else {
                    continue;
                };
                relayed += datagram.len() as u64;
                let limit = out.limit(&[hop]);
                if datagram.len() <= limit || sessions.by_peer.contains_key(&hop) {
                    out.send_to(hop, path.addr, datagram);
                } else {
                    let mut parts = Vec::new();
                    let dropped = resplit(datagram, limit, |d| parts.push(d.to_vec()));
                    for d in parts {
                        out.send_to(hop, path.addr, &d);
                    }
                    out.report.too_big += dropped;
                }
            }
        }
        end_batch(shared, fwd, &mut sender);
        let c = &shared.counters;
        c.bytes_received.fetch_add(received, Ordering::Relaxed);
        c.bytes_relayed.fetch_add(relayed, Ordering::Relaxed);
        c.large_frames_delivered
            .store(reassembler.stats.completed, Ordering::Relaxed);
        c.reassembly_abandoned.store(
            reassembler.stats.abandoned + defragmenter.stats.abandoned,
            Ordering::Relaxed,
        );
    }
}

/// Opens a sealed datagram in place with the session its receiver index
/// names; returns the plaintext's length (it starts at
/// `sealed::HEADER_LEN`) and the neighbour it came from. Failures are
/// counted by reason.
fn open(
    shared: &Shared,
    sessions: &Sessions,
    now: Instant,
    datagram: &mut [u8],
) -> Option<(usize, PeerName)> {
    let Some(index) = peek_receiver_index(datagram) else {
        shared.counters.crypto_drop(DataError::Truncated);
        return None;
    };
    let Some((peer, session)) = sessions.by_index.get(&index) else {
        shared.counters.crypto_drop(DataError::UnknownIndex);
        return None;
    };
    // The session is let go before the drop is counted: one leaf at a time.
    let opened = session.lock()?.open(now, datagram).map(|plain| plain.len());
    match opened {
        Ok(len) => Some((len, *peer)),
        Err(e) => {
            shared.counters.crypto_drop(e);
            None
        }
    }
}

/// Adds a fragment of a sealed message from the session its receiver
/// index names; once the message is whole, opens it in place and returns
/// the plaintext datagram and the neighbour it came from. Failures are
/// counted by reason.
fn open_fragment<'d>(
    shared: &Shared,
    sessions: &Sessions,
    defragmenter: &'d mut Defragmenter,
    now: Instant,
    datagram: &[u8],
) -> Option<(&'d mut [u8], PeerName)> {
    let fragment = match Fragment::parse(datagram) {
        Ok(f) => f,
        Err(e) => {
            shared.counters.crypto_drop(e);
            return None;
        }
    };
    // Only a live session's index gets reassembly state.
    let Some((peer, session)) = sessions.by_index.get(&fragment.prefix.index) else {
        shared.counters.crypto_drop(DataError::UnknownIndex);
        return None;
    };
    let message = defragmenter.push(now, &fragment)?;
    let prefix = fragment.prefix;
    // The session is held for the checks, not for decrypting 64 KB: the
    // TAP thread seals to the same neighbour meanwhile.
    let key = session
        .lock()?
        .message_open_key(now, &prefix, message.len());
    let opened = match key.and_then(|k| k.open(message)) {
        Ok(len) => session.lock()?.accept_message(now, &prefix).map(|()| len),
        Err(e) => Err(e),
    };
    match opened {
        Ok(len) => Some((&mut message[..len], *peer)),
        Err(e) => {
            shared.counters.crypto_drop(e);
            None
        }
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
        let dog = crate::shell::watchdog::Watchdog::start().unwrap();
        let beats = [dog.register("weft-udp"), dog.register("weft-tap")];
        let dp = DataPlane::start(n(2), sock, None, tx, beats).unwrap();
        let (a, b, c) = ([n(2)], [n(1), n(3)], [n(2)]);
        let routes = Routes::compute(
            n(2),
            Graph::from_claims([(n(1), &a[..]), (n(2), &b[..]), (n(3), &c[..])]),
        );
        let path = |s: &UdpSocket| NeighbourPath {
            addr: s.local_addr().unwrap(),
            payload_limit: 1472,
            usable: true,
            verified: true,
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
        let stats = dp.stats();
        assert_eq!(stats.unknown_sender, 1);
        assert_eq!(stats.datagrams_relayed, 1);
        assert_eq!(dog.stalls()["weft-udp"], 0);
        dp.stop();
    }
}
