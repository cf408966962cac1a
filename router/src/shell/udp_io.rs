//! The UDP socket of the data plane, read and written in batches.
//!
//! One `recvmmsg` or `sendmmsg` moves up to [`BATCH`] datagrams per system
//! call, which is most of what separates a userspace tunnel that keeps up
//! with a 10G link from one that does not. The socket sets Don't Fragment
//! and ignores the kernel's cached path MTU (`IP_PMTUDISC_PROBE`): the core
//! discovers and verifies the path MTU itself with probes, so oversized
//! sends fail loudly instead of being fragmented behind our back.
//!
//! The unsafe code here is the FFI for those calls; each block states why
//! it is sound. Buffers are caller-owned and reused: no allocation per
//! datagram.

use std::io;
use std::mem::{self, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

/// Reads per batched receive call.
pub const BATCH: usize = 32;
/// Datagrams queued per send flush: two 64 KB frames' worth of segments.
pub const SEND_BATCH: usize = 96;
/// Receive buffer per datagram: the largest UDP payload.
pub const MAX_DATAGRAM: usize = 65_535;

/// Binds the data-plane UDP socket on all addresses.
pub fn bind(port: u16) -> io::Result<UdpSocket> {
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    sock.set_reuse_address(true)?;
    // Bursts of a fast TCP stream outrun a single reader thread briefly;
    // larger buffers absorb them instead of dropping.
    let _ = sock.set_recv_buffer_size(4 << 20);
    let _ = sock.set_send_buffer_size(4 << 20);
    sock.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
    let probe: libc::c_int = libc::IP_PMTUDISC_PROBE;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a valid,
    // live c_int; the fd is owned by `sock` for the whole call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&probe as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // The reader wakes up periodically to notice shutdown.
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let sock: UdpSocket = sock.into();
    enable_gro(&sock);
    Ok(sock)
}

fn to_storage(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    let sa: socket2::SockAddr = (*addr).into();
    // SAFETY: sockaddr_storage is plain old data; an all-zero value is valid.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = sa.len() as usize;
    // SAFETY: `sa.as_ptr()` points at `len` valid bytes of a sockaddr, and
    // `len` never exceeds the size of sockaddr_storage.
    unsafe {
        std::ptr::copy_nonoverlapping(
            sa.as_ptr().cast::<u8>(),
            (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
            len.min(mem::size_of::<libc::sockaddr_storage>()),
        );
    }
    (storage, sa.len())
}

fn from_storage(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which
            // is smaller than sockaddr_storage and has compatible alignment.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                0,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Most datagrams one UDP segmentation offload send may carry
/// (`UDP_MAX_SEGMENTS` is 64 on older kernels, 128 on newer).
const MAX_GSO_SEGMENTS: usize = 64;
/// Most bytes one such send may carry: the largest UDP payload.
const MAX_GSO_BYTES: usize = 65_000;

/// Control-message space for one `int` or `u16` option, 8-byte aligned as
/// `CMSG_SPACE` requires.
type CmsgBuf = [u64; 4];

/// Asks the kernel to coalesce same-flow datagrams into one read (UDP GRO,
/// Linux 5.0); each read then says the segment size. Harmless if refused.
pub fn enable_gro(sock: &UdpSocket) -> bool {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads a live c_int of the stated size; the fd is
    // owned by `sock` for the whole call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
            (&on as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

/// Reusable buffers for [`recv_batch`].
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    lens: [usize; BATCH],
    /// Segment size of a coalesced (GRO) read; 0 for a single datagram.
    segs: [usize; BATCH],
    addrs: [Option<SocketAddr>; BATCH],
    cmsgs: [CmsgBuf; BATCH],
    count: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self {
            bufs: (0..BATCH).map(|_| vec![0u8; MAX_DATAGRAM]).collect(),
            lens: [0; BATCH],
            segs: [0; BATCH],
            addrs: [None; BATCH],
            cmsgs: [[0; 4]; BATCH],
            count: 0,
        }
    }
}

impl RecvBatch {
    /// The datagrams received by the last [`recv_batch`], coalesced reads
    /// split back into datagrams, mutable so a relay can rewrite the hop
    /// limit in place.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (Option<SocketAddr>, &mut [u8])> {
        let n = self.count;
        self.bufs
            .iter_mut()
            .zip(self.lens.iter())
            .zip(self.segs.iter())
            .zip(self.addrs.iter())
            .take(n)
            .flat_map(|(((b, &len), &seg), &a)| {
                let seg = if seg == 0 { len.max(1) } else { seg };
                b[..len].chunks_mut(seg).map(move |d| (a, d))
            })
    }
}

/// The segment size from a `UDP_GRO` control message, if there is one.
fn gro_segment_size(hdr: &libc::msghdr) -> usize {
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled
    // in, within `msg_controllen`, which the kernel set.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                return usize::try_from(v).unwrap_or(0);
            }
            c = libc::CMSG_NXTHDR(hdr, c);
        }
    }
    0
}

/// Receives up to [`BATCH`] reads, blocking for the first (up to the
/// socket's read timeout). Returns how many reads arrived; 0 on timeout.
pub fn recv_batch(sock: &UdpSocket, batch: &mut RecvBatch) -> io::Result<usize> {
    // SAFETY: all-zero is a valid value for these plain C structs.
    let mut storages: [libc::sockaddr_storage; BATCH] = unsafe { mem::zeroed() };
    let mut iovs: [MaybeUninit<libc::iovec>; BATCH] = [const { MaybeUninit::uninit() }; BATCH];
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
    for i in 0..BATCH {
        iovs[i].write(libc::iovec {
            iov_base: batch.bufs[i].as_mut_ptr().cast(),
            iov_len: batch.bufs[i].len(),
        });
        hdrs[i].msg_hdr.msg_name = (&mut storages[i] as *mut libc::sockaddr_storage).cast();
        hdrs[i].msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        hdrs[i].msg_hdr.msg_iov = iovs[i].as_mut_ptr();
        hdrs[i].msg_hdr.msg_iovlen = 1;
        hdrs[i].msg_hdr.msg_control = batch.cmsgs[i].as_mut_ptr().cast();
        hdrs[i].msg_hdr.msg_controllen = mem::size_of::<CmsgBuf>() as _;
    }
    // SAFETY: every header points at a live iovec over a live buffer of the
    // stated length, a live sockaddr_storage and a live control buffer of
    // the stated sizes; all of them outlive the call. MSG_WAITFORONE blocks
    // only for the first.
    let n = unsafe {
        libc::recvmmsg(
            sock.as_raw_fd(),
            hdrs.as_mut_ptr(),
            BATCH as libc::c_uint,
            libc::MSG_WAITFORONE,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        batch.count = 0;
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted => {
                Ok(0)
            }
            _ => Err(e),
        };
    }
    let n = n as usize;
    for i in 0..n {
        batch.lens[i] = hdrs[i].msg_len as usize;
        batch.segs[i] = gro_segment_size(&hdrs[i].msg_hdr);
        batch.addrs[i] = from_storage(&storages[i]);
    }
    batch.count = n;
    Ok(n)
}

/// Datagrams queued for one [`SendBatch::flush`].
pub struct SendBatch {
    bufs: Vec<Vec<u8>>,
    addrs: Vec<SocketAddr>,
    len: usize,
    /// UDP segmentation offload: runs of equal-sized datagrams to one
    /// address go down as one send. Turned off for good if the kernel or
    /// the route refuses it.
    gso: bool,
}

impl Default for SendBatch {
    fn default() -> Self {
        Self {
            bufs: (0..SEND_BATCH).map(|_| Vec::with_capacity(2048)).collect(),
            addrs: Vec::with_capacity(SEND_BATCH),
            len: 0,
            gso: true,
        }
    }
}

/// What a flush achieved, for counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendReport {
    pub sent: usize,
    /// Bytes of the datagrams sent.
    pub bytes: u64,
    /// Rejected by the kernel as larger than the interface MTU allows.
    pub too_big: usize,
    /// Dropped for any other error (no route, buffer full).
    pub failed: usize,
}

/// One `sendmmsg` message: datagrams `start..start + count`, sent with
/// segment size `seg` when there are several.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    start: usize,
    count: usize,
    seg: usize,
}

/// Groups queued datagrams into runs a single GSO send can carry: same
/// address, all `seg` bytes long but the last, which may be shorter.
fn runs(bufs: &[Vec<u8>], addrs: &[SocketAddr], gso: bool, out: &mut Vec<Run>) {
    out.clear();
    let mut i = 0;
    while i < addrs.len() {
        let seg = bufs[i].len();
        let mut count = 1;
        let mut bytes = seg;
        while gso
            && i + count < addrs.len()
            && count < MAX_GSO_SEGMENTS
            && addrs[i + count] == addrs[i]
            && bufs[i + count - 1].len() == seg
            && bufs[i + count].len() <= seg
            && bytes + bufs[i + count].len() <= MAX_GSO_BYTES
        {
            bytes += bufs[i + count].len();
            count += 1;
        }
        out.push(Run {
            start: i,
            count,
            seg,
        });
        i += count;
    }
}

impl SendBatch {
    pub fn is_full(&self) -> bool {
        self.len == SEND_BATCH
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues a copy of `datagram`; flushes first if the batch is full.
    pub fn push(
        &mut self,
        sock: &UdpSocket,
        to: SocketAddr,
        datagram: &[u8],
        report: &mut SendReport,
    ) {
        if self.is_full() {
            self.flush(sock, report);
        }
        let buf = &mut self.bufs[self.len];
        buf.clear();
        buf.extend_from_slice(datagram);
        self.addrs.push(to);
        self.len += 1;
    }

    /// Queues a datagram that `fill` writes into the batch's own buffer (so
    /// sealing needs no extra copy); nothing is queued if `fill` returns
    /// false.
    pub fn push_with(
        &mut self,
        sock: &UdpSocket,
        to: SocketAddr,
        report: &mut SendReport,
        fill: impl FnOnce(&mut Vec<u8>) -> bool,
    ) {
        if self.is_full() {
            self.flush(sock, report);
        }
        let buf = &mut self.bufs[self.len];
        buf.clear();
        if fill(buf) {
            self.addrs.push(to);
            self.len += 1;
        }
    }

    /// Sends everything queued with as few system calls as possible.
    pub fn flush(&mut self, sock: &UdpSocket, report: &mut SendReport) {
        crate::shell::locks::before_syscall("send datagrams");
        let mut plan = Vec::with_capacity(self.len);
        runs(&self.bufs[..self.len], &self.addrs, self.gso, &mut plan);
        // One address per run: a 64 KB train is one run of ~46 datagrams.
        let names: Vec<(libc::sockaddr_storage, libc::socklen_t)> = plan
            .iter()
            .map(|run| to_storage(&self.addrs[run.start]))
            .collect();
        let mut iovs: Vec<libc::iovec> = self.bufs[..self.len]
            .iter()
            .map(|b| libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect();
        let mut cmsgs: Vec<CmsgBuf> = vec![[0; 4]; plan.len()];
        // SAFETY: all-zero is a valid mmsghdr.
        let mut hdrs: Vec<libc::mmsghdr> =
            (0..plan.len()).map(|_| unsafe { mem::zeroed() }).collect();
        for (k, run) in plan.iter().enumerate() {
            let h = &mut hdrs[k].msg_hdr;
            h.msg_name = (&names[k].0 as *const libc::sockaddr_storage) as *mut libc::c_void;
            h.msg_namelen = names[k].1;
            h.msg_iov = &mut iovs[run.start];
            h.msg_iovlen = run.count as _;
            if run.count > 1 {
                set_segment_size(h, &mut cmsgs[k], run.seg as u16);
            }
        }
        let mut next = 0;
        while next < plan.len() {
            // SAFETY: each header points at a live sockaddr of the stated
            // length, `count` live iovecs over live buffers and, for runs,
            // a live control buffer; the kernel only reads them, and all
            // outlive the call.
            let rc = unsafe {
                libc::sendmmsg(
                    sock.as_raw_fd(),
                    hdrs[next..].as_mut_ptr(),
                    (plan.len() - next) as libc::c_uint,
                    0,
                )
            };
            if rc > 0 {
                let done = rc as usize;
                for r in &plan[next..next + done] {
                    report.sent += r.count;
                    report.bytes += self.bufs[r.start..r.start + r.count]
                        .iter()
                        .map(|b| b.len() as u64)
                        .sum::<u64>();
                }
                next += done;
                continue;
            }
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            let run = plan[next];
            next += 1;
            if run.count > 1 {
                // The kernel or the route refused segmentation offload
                // (EIO: no checksum offload on the route; EINVAL: a segment
                // above the route MTU). Send the run one by one, which
                // also reports oversized datagrams precisely.
                if e.raw_os_error() == Some(libc::EIO) {
                    self.gso = false;
                }
                for i in run.start..run.start + run.count {
                    match sock.send_to(&self.bufs[i], self.addrs[i]) {
                        Ok(n) => {
                            report.sent += 1;
                            report.bytes += n as u64;
                        }
                        Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => report.too_big += 1,
                        Err(_) => report.failed += 1,
                    }
                }
            } else if e.raw_os_error() == Some(libc::EMSGSIZE) {
                report.too_big += 1;
            } else {
                report.failed += 1;
            }
        }
        self.len = 0;
        self.addrs.clear();
    }
}

/// Attaches a `UDP_SEGMENT` control message to `h`.
fn set_segment_size(h: &mut libc::msghdr, buf: &mut CmsgBuf, seg: u16) {
    h.msg_control = buf.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE of a u16 (24 bytes) fits the 32-byte buffer; the
    // macros compute pointers inside it, and the write is unaligned-safe.
    unsafe {
        h.msg_controllen = libc::CMSG_SPACE(mem::size_of::<u16>() as u32) as _;
        let c = libc::CMSG_FIRSTHDR(h);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(mem::size_of::<u16>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_over_loopback() {
        let a = bind(0).unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = b.local_addr().unwrap();
        let from_port = a.local_addr().unwrap().port();
        let mut out = SendBatch::default();
        let mut report = SendReport::default();
        for i in 0..40u8 {
            out.push(&a, to, &[i; 100], &mut report);
        }
        out.flush(&a, &mut report);
        assert_eq!(
            report,
            SendReport {
                sent: 40,
                bytes: 4000,
                too_big: 0,
                failed: 0
            }
        );

        // b -> a, received in batches
        for i in 0..40u8 {
            b.send_to(&[i; 10], ("127.0.0.1", from_port)).unwrap();
        }
        let mut batch = RecvBatch::default();
        let mut got = Vec::new();
        while got.len() < 40 {
            let n = recv_batch(&a, &mut batch).unwrap();
            assert!(n > 0, "timed out after {} datagrams", got.len());
            for (addr, d) in batch.iter_mut() {
                assert_eq!(addr, Some(to));
                got.push(d[0]);
                assert_eq!(d.len(), 10);
            }
        }
        assert_eq!(got, (0..40).collect::<Vec<u8>>());
    }

    #[test]
    fn trains_go_out_as_one_offloaded_send_and_come_back_split() {
        let a = bind(0).unwrap();
        let b = bind(0).unwrap();
        let to = SocketAddr::from(([127, 0, 0, 1], b.local_addr().unwrap().port()));
        let mut out = SendBatch::default();
        let mut report = SendReport::default();
        // Two trains (30 of 1000 bytes then a 500-byte tail) and a stray.
        let mut sent = Vec::new();
        for i in 0..31u8 {
            let len = if i == 30 { 500 } else { 1000 };
            let d = vec![i; len];
            out.push(&a, to, &d, &mut report);
            sent.push(d);
        }
        let mut plan = Vec::new();
        runs(&out.bufs[..out.len], &out.addrs, true, &mut plan);
        assert_eq!(
            plan,
            vec![Run {
                start: 0,
                count: 31,
                seg: 1000
            }]
        );
        out.flush(&a, &mut report);
        assert_eq!(report.sent, 31);
        let mut batch = RecvBatch::default();
        let mut got = Vec::new();
        while got.len() < sent.len() {
            let n = recv_batch(&b, &mut batch).unwrap();
            assert!(n > 0, "timed out after {} datagrams", got.len());
            for (_, d) in batch.iter_mut() {
                got.push(d.to_vec());
            }
        }
        assert_eq!(got, sent);
    }

    #[test]
    fn runs_split_on_address_size_and_limits() {
        let x = SocketAddr::from(([127, 0, 0, 1], 1));
        let y = SocketAddr::from(([127, 0, 0, 1], 2));
        let bufs: Vec<Vec<u8>> = [100, 100, 50, 100, 100, 200, 100]
            .iter()
            .map(|&l| vec![0; l])
            .collect();
        let addrs = [x, x, x, x, y, y, y];
        let mut plan = Vec::new();
        runs(&bufs, &addrs, true, &mut plan);
        let got: Vec<(usize, usize)> = plan.iter().map(|r| (r.start, r.count)).collect();
        // 100,100,50 | 100 (next address) | 100 | 200,100
        assert_eq!(got, vec![(0, 3), (3, 1), (4, 1), (5, 2)]);
        runs(&bufs, &addrs, false, &mut plan);
        assert_eq!(plan.len(), 7);
    }

    #[test]
    fn an_oversized_datagram_is_reported_and_the_rest_still_go() {
        let a = bind(0).unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let to = b.local_addr().unwrap();
        let mut out = SendBatch::default();
        let mut report = SendReport::default();
        // 65,508 bytes cannot fit in any IPv4 UDP datagram: EMSGSIZE.
        out.push(&a, to, &vec![0u8; 65_508], &mut report);
        out.push(&a, to, b"after", &mut report);
        out.flush(&a, &mut report);
        assert_eq!(
            report,
            SendReport {
                sent: 1,
                bytes: 5,
                too_big: 1,
                failed: 0
            }
        );
        let mut buf = [0u8; 16];
        let (n, _) = b.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"after");
    }
}
