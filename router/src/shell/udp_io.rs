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

/// Datagrams per batched system call.
pub const BATCH: usize = 32;
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
    Ok(sock.into())
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

/// Reusable buffers for [`recv_batch`].
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    lens: [usize; BATCH],
    addrs: [Option<SocketAddr>; BATCH],
    count: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self {
            bufs: (0..BATCH).map(|_| vec![0u8; MAX_DATAGRAM]).collect(),
            lens: [0; BATCH],
            addrs: [None; BATCH],
            count: 0,
        }
    }
}

impl RecvBatch {
    /// The datagrams received by the last [`recv_batch`], mutable so a relay
    /// can rewrite the hop limit in place.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (Option<SocketAddr>, &mut [u8])> {
        let n = self.count;
        self.bufs
            .iter_mut()
            .zip(self.lens.iter())
            .zip(self.addrs.iter())
            .take(n)
            .map(|((b, &len), &a)| (a, &mut b[..len]))
    }
}

/// Receives up to [`BATCH`] datagrams, blocking for the first (up to the
/// socket's read timeout). Returns how many arrived; 0 on timeout.
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
    }
    // SAFETY: every header points at a live iovec over a live buffer of the
    // stated length and at a live sockaddr_storage of the stated size; all
    // of them outlive the call. MSG_WAITFORONE blocks only for the first.
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
}

impl Default for SendBatch {
    fn default() -> Self {
        Self {
            bufs: (0..BATCH).map(|_| Vec::with_capacity(2048)).collect(),
            addrs: Vec::with_capacity(BATCH),
            len: 0,
        }
    }
}

/// What a flush achieved, for counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendReport {
    pub sent: usize,
    /// Rejected by the kernel as larger than the interface MTU allows.
    pub too_big: usize,
    /// Dropped for any other error (no route, buffer full).
    pub failed: usize,
}

impl SendBatch {
    pub fn is_full(&self) -> bool {
        self.len == BATCH
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

    /// Sends everything queued with as few `sendmmsg` calls as possible.
    pub fn flush(&mut self, sock: &UdpSocket, report: &mut SendReport) {
        let mut start = 0;
        while start < self.len {
            let n = self.len - start;
            let names: Vec<(libc::sockaddr_storage, libc::socklen_t)> =
                self.addrs[start..self.len].iter().map(to_storage).collect();
            let mut iovs: Vec<libc::iovec> = self.bufs[start..self.len]
                .iter()
                .map(|b| libc::iovec {
                    iov_base: b.as_ptr() as *mut libc::c_void,
                    iov_len: b.len(),
                })
                .collect();
            // SAFETY: all-zero is a valid mmsghdr.
            let mut hdrs: Vec<libc::mmsghdr> = (0..n).map(|_| unsafe { mem::zeroed() }).collect();
            for i in 0..n {
                hdrs[i].msg_hdr.msg_name =
                    (&names[i].0 as *const libc::sockaddr_storage) as *mut libc::c_void;
                hdrs[i].msg_hdr.msg_namelen = names[i].1;
                hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
                hdrs[i].msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: each header points at a live sockaddr of the stated
            // length and a live iovec over a live buffer; the kernel only
            // reads them, and all outlive the call.
            let rc = unsafe {
                libc::sendmmsg(sock.as_raw_fd(), hdrs.as_mut_ptr(), n as libc::c_uint, 0)
            };
            if rc > 0 {
                report.sent += rc as usize;
                start += rc as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // The first message failed: count it and move past it.
            if e.raw_os_error() == Some(libc::EMSGSIZE) {
                report.too_big += 1;
            } else {
                report.failed += 1;
            }
            start += 1;
        }
        self.len = 0;
        self.addrs.clear();
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
                too_big: 1,
                failed: 0
            }
        );
        let mut buf = [0u8; 16];
        let (n, _) = b.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"after");
    }
}
