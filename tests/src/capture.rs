//! Packet capture and injection for the encryption system tests, with no
//! tool beyond the kernel: an `AF_PACKET` socket opened by a thread that
//! has entered a test namespace (see [`crate::netns`]).
//!
//! - [`Capture`] records every frame that passes one interface of a
//!   namespace, in both directions, until stopped.
//! - [`inject`] sends a raw Ethernet frame out of an interface (a captured
//!   datagram sent again, possibly altered).
//! - [`UdpSink`] and [`udp_send`] receive and send UDP payloads inside a
//!   namespace, so a test can count exactly which payloads arrived.
//!
//! A thread that called `setns` stays in that namespace; every function
//! here does its work on a fresh thread, so the test's own threads never
//! move.

use std::ffi::CString;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};

/// The most frame bytes a [`Capture`] keeps; later frames are counted in
/// [`Capture::overflow`] and dropped. Captures here last seconds.
const CAPTURE_LIMIT: usize = 64 << 20;

/// Runs `f` on a new thread inside network namespace `ns` (a name from
/// `ip netns add`), returning its result.
pub fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = Path::new("/var/run/netns").join(ns);
    std::thread::spawn(move || -> Result<T> {
        enter(&path)?;
        f()
    })
    .join()
    .map_err(|_| anyhow!("a thread in namespace {ns} panicked"))?
}

fn enter(path: &Path) -> Result<()> {
    let file = File::open(path).with_context(|| path.display().to_string())?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering {}", path.display()))
}

/// One captured frame.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Whether the frame was leaving the interface (`PACKET_OUTGOING`).
    pub outgoing: bool,
    /// The Ethernet frame, from the destination MAC on.
    pub bytes: Vec<u8>,
}

/// An `AF_PACKET` socket owned by this module; closed when dropped.
struct PacketSocket {
    fd: libc::c_int,
    ifindex: libc::c_int,
}

impl PacketSocket {
    /// Opens a raw packet socket bound to `ifname` in the current
    /// thread's namespace, receiving every protocol when `receive`.
    fn open(ifname: &str, receive: bool) -> Result<PacketSocket> {
        let name = CString::new(ifname)?;
        // SAFETY: plain FFI calls with valid arguments; the fd is owned by
        // the returned value and closed in Drop.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        ensure!(
            ifindex != 0,
            "no interface {ifname}: {}",
            std::io::Error::last_os_error()
        );
        let proto = if receive {
            (libc::ETH_P_ALL as u16).to_be()
        } else {
            0
        };
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, libc::c_int::from(proto)) };
        ensure!(
            fd >= 0,
            "socket(AF_PACKET): {}",
            std::io::Error::last_os_error()
        );
        let sock = PacketSocket {
            fd,
            ifindex: ifindex as libc::c_int,
        };
        if receive {
            let mut addr = sock.sockaddr();
            addr.sll_protocol = proto;
            let rc = unsafe {
                libc::bind(
                    fd,
                    (&raw const addr).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            ensure!(
                rc == 0,
                "binding the packet socket to {ifname}: {}",
                std::io::Error::last_os_error()
            );
            sock.setsockopt(libc::SO_RCVBUF, 8 << 20)?;
            // A read timeout lets the capture thread notice it was stopped.
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 100_000,
            };
            let rc = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&raw const tv).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                )
            };
            ensure!(rc == 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
        }
        Ok(sock)
    }

    fn sockaddr(&self) -> libc::sockaddr_ll {
        // SAFETY: sockaddr_ll is plain data; all zeros is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = self.ifindex;
        addr
    }

    fn setsockopt(&self, opt: libc::c_int, value: libc::c_int) -> Result<()> {
        let rc = unsafe {
            libc::setsockopt(
                self.fd,
                libc::SOL_SOCKET,
                opt,
                (&raw const value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        ensure!(rc == 0, "setsockopt: {}", std::io::Error::last_os_error());
        Ok(())
    }

    /// Receives one frame: `Ok(None)` on the read timeout.
    fn recv(&self, buf: &mut [u8]) -> Result<Option<Frame>> {
        let mut from = self.sockaddr();
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        let n = unsafe {
            libc::recvfrom(
                self.fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
                (&raw mut from).cast(),
                &mut len,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e).context("receiving from the packet socket"),
            };
        }
        let n = (n as usize).min(buf.len());
        if from.sll_ifindex != self.ifindex {
            // Queued before bind narrowed the socket to one interface.
            return Ok(None);
        }
        Ok(Some(Frame {
            outgoing: from.sll_pkttype == libc::PACKET_OUTGOING,
            bytes: buf[..n].to_vec(),
        }))
    }

    fn send(&self, frame: &[u8]) -> Result<()> {
        ensure!(frame.len() >= 14, "a frame needs an Ethernet header");
        let mut addr = self.sockaddr();
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        let n = unsafe {
            libc::sendto(
                self.fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        ensure!(
            n == frame.len() as isize,
            "sending a {}-byte frame: {}",
            frame.len(),
            std::io::Error::last_os_error()
        );
        Ok(())
    }
}

impl Drop for PacketSocket {
    fn drop(&mut self) {
        // SAFETY: we own the fd.
        unsafe { libc::close(self.fd) };
    }
}

/// Frames captured so far, shared with the capture thread.
#[derive(Default)]
struct Captured {
    frames: Vec<Frame>,
    bytes: usize,
    overflow: u64,
}

/// A capture on one interface of a namespace; stops when dropped.
pub struct Capture {
    what: String,
    stop: Arc<AtomicBool>,
    captured: Arc<Mutex<Captured>>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Capture {
    /// Starts capturing every frame on `ifname` in namespace `ns`; returns
    /// once the socket is bound, so nothing sent afterwards is missed.
    pub fn start(ns: &str, ifname: &str) -> Result<Capture> {
        let what = format!("{ifname} in {ns}");
        let path = Path::new("/var/run/netns").join(ns);
        let stop = Arc::new(AtomicBool::new(false));
        let captured = Arc::new(Mutex::new(Captured::default()));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let thread = {
            let (stop, captured, ifname) = (stop.clone(), captured.clone(), ifname.to_owned());
            std::thread::spawn(move || -> Result<()> {
                let sock = match enter(&path).and_then(|()| PacketSocket::open(&ifname, true)) {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("{e:#}")));
                        return Err(e);
                    }
                };
                let mut buf = vec![0u8; 1 << 16];
                while !stop.load(Ordering::Relaxed) {
                    if let Some(frame) = sock.recv(&mut buf)? {
                        let mut c = captured.lock().unwrap_or_else(|p| p.into_inner());
                        if c.bytes + frame.bytes.len() > CAPTURE_LIMIT {
                            c.overflow += 1;
                        } else {
                            c.bytes += frame.bytes.len();
                            c.frames.push(frame);
                        }
                    }
                }
                Ok(())
            })
        };
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| anyhow!("the capture on {what} did not start"))?
            .with_context(|| format!("starting a capture on {what}"))?;
        Ok(Capture {
            what,
            stop,
            captured,
            thread: Some(thread),
        })
    }

    /// A copy of the frames captured so far.
    pub fn frames(&self) -> Vec<Frame> {
        self.lock().frames.clone()
    }

    /// How many frames were dropped because the capture was full.
    pub fn overflow(&self) -> u64 {
        self.lock().overflow
    }

    /// Forgets the frames captured so far.
    pub fn clear(&self) {
        let mut c = self.lock();
        c.frames.clear();
        c.bytes = 0;
    }

    /// How many captured frames contain `needle` anywhere.
    pub fn count_containing(&self, needle: &[u8]) -> usize {
        self.lock()
            .frames
            .iter()
            .filter(|f| contains(&f.bytes, needle))
            .count()
    }

    /// Where this capture runs, for messages.
    pub fn description(&self) -> &str {
        &self.what
    }

    /// Stops the capture and returns every frame it kept.
    pub fn stop(mut self) -> Result<Vec<Frame>> {
        self.halt()?;
        Ok(std::mem::take(&mut self.lock().frames))
    }

    fn halt(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join()
                .map_err(|_| anyhow!("the capture thread on {} panicked", self.what))??;
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Captured> {
        self.captured.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Err(e) = self.halt() {
            eprintln!("capture on {}: {e:#}", self.what);
        }
    }
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Sends `frame` (a complete Ethernet frame) out of `ifname` in namespace
/// `ns`.
pub fn inject(ns: &str, ifname: &str, frame: &[u8]) -> Result<()> {
    let (ifname, frame) = (ifname.to_owned(), frame.to_vec());
    in_ns(ns, move || PacketSocket::open(&ifname, false)?.send(&frame))
}

/// An IPv4 UDP datagram inside an Ethernet frame: where its parts are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Udp4 {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    /// Offset of the UDP header in the frame.
    pub udp_offset: usize,
    /// Offset of the UDP payload in the frame.
    pub payload_offset: usize,
    /// Length of the UDP payload as the UDP header states it.
    pub payload_len: usize,
}

/// Parses an untagged Ethernet frame holding one complete, unfragmented
/// IPv4 UDP datagram. Anything else (including a GSO train captured before
/// segmentation, whose lengths disagree with the frame) gives `None`.
pub fn parse_udp4(frame: &[u8]) -> Option<Udp4> {
    if frame.len() < 14 + 20 + 8 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff;
    if ip[0] >> 4 != 4 || ihl < 20 || ip[9] != 17 || frag != 0 || total > ip.len() {
        return None;
    }
    let udp = &ip[ihl..total];
    if udp.len() < 8 || usize::from(u16::from_be_bytes([udp[4], udp[5]])) != udp.len() {
        return None;
    }
    let addr = |o: usize| Ipv4Addr::new(ip[o], ip[o + 1], ip[o + 2], ip[o + 3]);
    let port = |o: usize| u16::from_be_bytes([udp[o], udp[o + 1]]);
    Some(Udp4 {
        src: SocketAddrV4::new(addr(12), port(0)),
        dst: SocketAddrV4::new(addr(16), port(2)),
        udp_offset: 14 + ihl,
        payload_offset: 14 + ihl + 8,
        payload_len: udp.len() - 8,
    })
}

/// `frame` with its UDP checksum set to zero ("none", valid over IPv4). A
/// frame captured on its way out of a veth usually carries only the
/// partial checksum the offload would have completed, so a copy sent
/// again needs this to be accepted by the receiving kernel.
pub fn without_udp_checksum(frame: &[u8], udp: &Udp4) -> Vec<u8> {
    let mut copy = frame.to_vec();
    copy[udp.udp_offset + 6] = 0;
    copy[udp.udp_offset + 7] = 0;
    copy
}

/// Receives UDP datagrams on a port inside a namespace, keeping every
/// payload, until dropped.
pub struct UdpSink {
    stop: Arc<AtomicBool>,
    got: Arc<Mutex<Vec<Vec<u8>>>>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl UdpSink {
    /// Binds `0.0.0.0:port` in namespace `ns`; returns once bound.
    pub fn start(ns: &str, port: u16) -> Result<UdpSink> {
        let path = Path::new("/var/run/netns").join(ns);
        let stop = Arc::new(AtomicBool::new(false));
        let got = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let thread = {
            let (stop, got) = (stop.clone(), got.clone());
            std::thread::spawn(move || -> Result<()> {
                let bound = enter(&path).and_then(|()| {
                    let s = UdpSocket::bind(("0.0.0.0", port))
                        .with_context(|| format!("binding UDP port {port}"))?;
                    s.set_read_timeout(Some(Duration::from_millis(100)))?;
                    Ok(s)
                });
                let sock = match bound {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("{e:#}")));
                        return Err(e);
                    }
                };
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    match sock.recv(&mut buf) {
                        Ok(n) => got
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(buf[..n].to_vec()),
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(e) => return Err(e).context("receiving"),
                    }
                }
                Ok(())
            })
        };
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| anyhow!("the UDP sink in {ns} did not start"))??;
        Ok(UdpSink {
            stop,
            got,
            thread: Some(thread),
        })
    }

    /// How many received payloads equal `payload`.
    pub fn count(&self, payload: &[u8]) -> usize {
        self.got
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|p| p.as_slice() == payload)
            .count()
    }

    /// How many datagrams arrived in all.
    pub fn total(&self) -> usize {
        self.got.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(Err(e)) => eprintln!("UDP sink: {e:#}"),
                Err(_) => eprintln!("UDP sink thread panicked"),
                Ok(Ok(())) => {}
            }
        }
    }
}

/// Sends `payload` once to `to` from an ephemeral port in namespace `ns`.
pub fn udp_send(ns: &str, to: SocketAddr, payload: &[u8]) -> Result<()> {
    let payload = payload.to_vec();
    in_ns(ns, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").context("binding")?;
        let n = sock
            .send_to(&payload, to)
            .with_context(|| format!("sending to {to}"))?;
        if n != payload.len() {
            bail!("sent {n} of {} bytes to {to}", payload.len());
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_udp_frame_and_rejects_inconsistent_lengths() {
        let mut f = vec![0u8; 14 + 20 + 8 + 4];
        f[12] = 0x08;
        f[14] = 0x45;
        f[16..18].copy_from_slice(&(20u16 + 8 + 4).to_be_bytes());
        f[23] = 17;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        f[34..36].copy_from_slice(&1000u16.to_be_bytes());
        f[36..38].copy_from_slice(&6783u16.to_be_bytes());
        f[38..40].copy_from_slice(&12u16.to_be_bytes());
        f[40..42].copy_from_slice(&[0xab, 0xcd]);
        let u = parse_udp4(&f).expect("a valid datagram");
        assert_eq!(u.src, "10.0.0.1:1000".parse().unwrap());
        assert_eq!(u.dst, "10.0.0.2:6783".parse().unwrap());
        assert_eq!((u.payload_offset, u.payload_len), (42, 4));
        let zeroed = without_udp_checksum(&f, &u);
        assert_eq!(&zeroed[40..42], &[0, 0]);
        // A UDP length that disagrees with the IP length (a GSO train).
        f[38..40].copy_from_slice(&1400u16.to_be_bytes());
        assert_eq!(parse_udp4(&f), None);
        assert!(contains(b"xxmarkerxx", b"marker"));
        assert!(!contains(b"xxmarkexx", b"marker"));
    }
}
