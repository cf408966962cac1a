//! The traffic helper the system tests and the benchmark run inside
//! network namespaces (`ip netns exec NS weft-traffic …`), so they need no
//! tool beyond iproute2, nftables and ping.
//!
//! Every command prints one JSON object on its last stdout line (and
//! `listening` first, for servers, once their socket is bound):
//!
//! ```text
//! tcp-recv  LISTEN [--streams K] [--hash]   accept K connections, read each to EOF
//! tcp-send  TO --bytes N --seed S            send N pseudo-random bytes from seed S
//! tcp-send  TO --secs T --seed S             … or send them for T seconds
//! tcp-blast TO --secs T [--streams K]        send as fast as possible for T seconds
//! udp-send  TO --count N [--interval-ms I] [--broadcast]
//! udp-echo  LISTEN                           echo every datagram back, until killed
//! udp-probe TO --secs T [--interval-ms I]    one numbered datagram every I ms;
//!                                            prints `reply SEQ UNIX_MS` per echo
//! ```
//!
//! `tcp-send` and `tcp-recv --hash` print the SHA-256 of the bytes they
//! sent or received, so a test compares the two ends of a transfer.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use serde_json::json;

/// Bytes per `read`/`write` call: large enough that syscalls are not the
/// bottleneck of a bulk transfer.
const CHUNK: usize = 128 * 1024;

/// Runs the helper with `args` (without the program name); returns the
/// process exit code.
pub fn main(args: &[String]) -> std::process::ExitCode {
    match dispatch(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-traffic: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch(args: &[String]) -> Result<()> {
    let (cmd, rest) = args
        .split_first()
        .context("usage: weft-traffic COMMAND ARGS (see tests/src/netns/traffic.rs)")?;
    let mut a = Args::new(rest);
    match cmd.as_str() {
        "tcp-recv" => {
            let listen = a.addr()?;
            let streams = a.opt("--streams")?.unwrap_or(1);
            let hash = a.flag("--hash");
            a.done()?;
            tcp_recv(listen, streams, hash)
        }
        "tcp-send" => {
            let to = a.addr()?;
            let amount = match (a.opt("--bytes")?, a.opt::<f64>("--secs")?) {
                (Some(bytes), None) => Amount::Bytes(bytes),
                (None, Some(secs)) => Amount::For(Duration::from_secs_f64(secs)),
                _ => bail!("tcp-send needs exactly one of --bytes N and --secs T"),
            };
            let seed = a.required("--seed")?;
            a.done()?;
            tcp_send(to, amount, seed)
        }
        "tcp-blast" => {
            let to = a.addr()?;
            let secs: f64 = a.required("--secs")?;
            let streams = a.opt("--streams")?.unwrap_or(1);
            a.done()?;
            tcp_blast(to, Duration::from_secs_f64(secs), streams)
        }
        "udp-send" => {
            let to = a.addr()?;
            let count = a.required("--count")?;
            let interval = a.opt("--interval-ms")?.unwrap_or(5);
            let broadcast = a.flag("--broadcast");
            a.done()?;
            udp_send(to, count, Duration::from_millis(interval), broadcast)
        }
        "udp-echo" => {
            let listen = a.addr()?;
            a.done()?;
            udp_echo(listen)
        }
        "udp-probe" => {
            let to = a.addr()?;
            let secs: f64 = a.required("--secs")?;
            let interval = a.opt("--interval-ms")?.unwrap_or(20);
            a.done()?;
            udp_probe(
                to,
                Duration::from_secs_f64(secs),
                Duration::from_millis(interval),
            )
        }
        other => bail!("unknown command {other:?}"),
    }
}

/// Accepts `streams` connections and reads each to EOF; reports the total
/// byte count, the seconds from the first accept to the last EOF, and with
/// `hash` (one stream only) the SHA-256 of what arrived.
fn tcp_recv(listen: SocketAddr, streams: usize, hash: bool) -> Result<()> {
    ensure!(streams >= 1, "--streams must be at least 1");
    ensure!(!hash || streams == 1, "--hash needs --streams 1");
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    println!("listening");
    let mut workers = Vec::new();
    let mut start = None;
    for _ in 0..streams {
        let (mut conn, _) = listener.accept().context("accepting")?;
        start.get_or_insert_with(Instant::now);
        workers.push(thread::spawn(move || -> Result<(u64, Option<String>)> {
            let mut buf = vec![0u8; CHUNK];
            let mut sha = hash.then(Sha256::new);
            let mut total = 0u64;
            loop {
                let n = conn.read(&mut buf).context("reading")?;
                if n == 0 {
                    break;
                }
                total += n as u64;
                if let Some(sha) = &mut sha {
                    sha.update(&buf[..n]);
                }
            }
            Ok((total, sha.map(|s| hex(&s.finish()))))
        }));
    }
    let mut total = 0;
    let mut digest = None;
    for w in workers {
        let (n, d) = w.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
        total += n;
        digest = digest.or(d);
    }
    let secs = start.map_or(0.0, |s| s.elapsed().as_secs_f64());
    println!(
        "{}",
        json!({ "bytes": total, "secs": secs, "sha256": digest })
    );
    Ok(())
}

/// Sends `bytes` bytes from a `StdRng` seeded with `seed`, then closes.
/// How much `tcp-send` sends.
enum Amount {
    Bytes(u64),
    /// As much as it can for this long (a transfer that spans a test's
    /// whole scenario, however fast the machine).
    For(Duration),
}

fn tcp_send(to: SocketAddr, amount: Amount, seed: u64) -> Result<()> {
    let mut conn = TcpStream::connect(to).with_context(|| format!("connecting to {to}"))?;
    let start = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut bytes = 0u64;
    loop {
        let n = match amount {
            Amount::Bytes(total) => (total - bytes).min(CHUNK as u64) as usize,
            Amount::For(d) if start.elapsed() < d => CHUNK,
            Amount::For(_) => 0,
        };
        if n == 0 {
            break;
        }
        rng.fill_bytes(&mut buf[..n]);
        sha.update(&buf[..n]);
        conn.write_all(&buf[..n])
            .with_context(|| format!("sending to {to} ({bytes} bytes sent)"))?;
        bytes += n as u64;
    }
    conn.shutdown(std::net::Shutdown::Write)
        .context("closing")?;
    // Wait for the receiver to close, so the transfer is complete when we
    // exit.
    let mut sink = [0u8; 64];
    while conn
        .read(&mut sink)
        .context("waiting for the receiver to close")?
        > 0
    {}
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({ "bytes": bytes, "secs": secs, "sha256": hex(&sha.finish()) })
    );
    Ok(())
}

/// Sends from `streams` connections for `duration`; reports bytes written
/// (the receiver's count is the one to trust for throughput).
fn tcp_blast(to: SocketAddr, duration: Duration, streams: usize) -> Result<()> {
    ensure!(streams >= 1, "--streams must be at least 1");
    let conns = (0..streams)
        .map(|_| TcpStream::connect(to).with_context(|| format!("connecting to {to}")))
        .collect::<Result<Vec<_>>>()?;
    let deadline = Instant::now() + duration;
    let workers: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            thread::spawn(move || -> Result<u64> {
                let buf = vec![0x5au8; CHUNK];
                let mut total = 0u64;
                while Instant::now() < deadline {
                    conn.write_all(&buf).context("sending")?;
                    total += CHUNK as u64;
                }
                conn.shutdown(std::net::Shutdown::Write)
                    .context("closing")?;
                let mut sink = [0u8; 64];
                while conn.read(&mut sink).context("waiting for close")? > 0 {}
                Ok(total)
            })
        })
        .collect();
    let mut total = 0;
    for w in workers {
        total += w.join().map_err(|_| anyhow::anyhow!("sender panicked"))??;
    }
    println!("{}", json!({ "bytes": total }));
    Ok(())
}

/// Sends `count` 64-byte datagrams, `interval` apart.
fn udp_send(to: SocketAddr, count: u64, interval: Duration, broadcast: bool) -> Result<()> {
    let sock = UdpSocket::bind("0.0.0.0:0").context("binding")?;
    sock.set_broadcast(broadcast).context("SO_BROADCAST")?;
    for seq in 0..count {
        let mut msg = [0u8; 64];
        msg[..8].copy_from_slice(&seq.to_be_bytes());
        sock.send_to(&msg, to)
            .with_context(|| format!("sending datagram {seq} to {to}"))?;
        thread::sleep(interval);
    }
    println!("{}", json!({ "sent": count }));
    Ok(())
}

/// Echoes every datagram to its sender until killed.
fn udp_echo(listen: SocketAddr) -> Result<()> {
    let sock = UdpSocket::bind(listen).with_context(|| format!("binding {listen}"))?;
    println!("listening");
    io::stdout().flush()?;
    let mut buf = [0u8; 2048];
    loop {
        let (n, from) = sock.recv_from(&mut buf).context("receiving")?;
        // A full socket buffer on the way back is loss, like any other.
        let _ = sock.send_to(&buf[..n], from);
    }
}

/// Sends a numbered datagram every `interval` for `duration` and prints a
/// line with the wall-clock time of every echo, so a test can line replies
/// up with events (a killed router) in another process.
fn udp_probe(to: SocketAddr, duration: Duration, interval: Duration) -> Result<()> {
    let sock = Arc::new(UdpSocket::bind("0.0.0.0:0").context("binding")?);
    sock.connect(to)
        .with_context(|| format!("connecting to {to}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (sock, stop) = (sock.clone(), stop.clone());
        thread::spawn(move || {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Unreachable errors (ICMP from a dead path) are expected.
                let _ = sock.send(&sent.to_be_bytes());
                sent += 1;
                thread::sleep(interval);
            }
            sent
        })
    };
    let deadline = Instant::now() + duration;
    let mut replies = 0u64;
    let mut buf = [0u8; 64];
    let mut out = io::stdout().lock();
    while Instant::now() < deadline {
        match sock.recv(&mut buf) {
            Ok(8) => {
                let seq = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes"));
                replies += 1;
                writeln!(out, "reply {seq} {}", unix_ms())?;
                out.flush()?;
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::ConnectionRefused
                        | io::ErrorKind::HostUnreachable
                        | io::ErrorKind::NetworkUnreachable
                ) => {}
            Err(e) => return Err(e).context("receiving"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let sent = sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))?;
    writeln!(out, "{}", json!({ "sent": sent, "replies": replies }))?;
    Ok(())
}

/// Milliseconds since the Unix epoch: comparable across processes and
/// namespaces, unlike `Instant`.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The helper's argument list: one positional address, then `--flag
/// [value]` pairs.
struct Args<'a> {
    rest: Vec<&'a str>,
}

impl<'a> Args<'a> {
    fn new(args: &'a [String]) -> Self {
        Self {
            rest: args.iter().map(String::as_str).collect(),
        }
    }

    fn addr(&mut self) -> Result<SocketAddr> {
        ensure!(
            !self.rest.is_empty() && !self.rest[0].starts_with("--"),
            "missing address (IP:PORT)"
        );
        let a = self.rest.remove(0);
        a.parse()
            .with_context(|| format!("{a:?} is not an IP:PORT address"))
    }

    fn flag(&mut self, name: &str) -> bool {
        let found = self.rest.iter().position(|a| *a == name);
        found.map(|i| self.rest.remove(i)).is_some()
    }

    fn opt<T: std::str::FromStr>(&mut self, name: &str) -> Result<Option<T>>
    where
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        let Some(i) = self.rest.iter().position(|a| *a == name) else {
            return Ok(None);
        };
        ensure!(i + 1 < self.rest.len(), "{name} needs a value");
        let v = self.rest.remove(i + 1);
        self.rest.remove(i);
        v.parse()
            .map(Some)
            .with_context(|| format!("bad value {v:?} for {name}"))
    }

    fn required<T: std::str::FromStr>(&mut self, name: &str) -> Result<T>
    where
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        self.opt(name)?
            .with_context(|| format!("{name} is required"))
    }

    fn done(self) -> Result<()> {
        ensure!(
            self.rest.is_empty(),
            "unexpected arguments: {:?}",
            self.rest
        );
        Ok(())
    }
}

/// SHA-256 (FIPS 180-4), so the tests need no hashing crate: checking a
/// transfer end to end is the only use.
pub struct Sha256 {
    state: [u32; 8],
    block: [u8; 64],
    filled: usize,
    length: u64,
}

/// FIPS 180-4 §4.2.2: the first 32 bits of the fractional parts of the
/// cube roots of the first 64 primes.
const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

/// FIPS 180-4 §5.3.3: the initial hash value.
const H0: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl Sha256 {
    pub fn new() -> Self {
        Self {
            state: H0,
            block: [0; 64],
            filled: 0,
            length: 0,
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.length += data.len() as u64;
        if self.filled > 0 {
            let take = data.len().min(64 - self.filled);
            self.block[self.filled..self.filled + take].copy_from_slice(&data[..take]);
            self.filled += take;
            data = &data[take..];
            if self.filled < 64 {
                return;
            }
            let block = self.block;
            self.compress(&block);
            self.filled = 0;
        }
        let mut blocks = data.chunks_exact(64);
        for b in &mut blocks {
            self.compress(b.try_into().expect("64 bytes"));
        }
        let tail = blocks.remainder();
        self.block[..tail.len()].copy_from_slice(tail);
        self.filled = tail.len();
    }

    pub fn finish(mut self) -> [u8; 32] {
        let bits = self.length.wrapping_mul(8);
        self.update(&[0x80]);
        while self.filled != 56 {
            self.update(&[0]);
        }
        self.update(&bits.to_be_bytes());
        let mut out = [0u8; 32];
        for (o, s) in out.chunks_exact_mut(4).zip(self.state) {
            o.copy_from_slice(&s.to_be_bytes());
        }
        out
    }

    fn compress(&mut self, block: &[u8; 64]) {
        let mut w = [0u32; 64];
        for (i, c) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes(c.try_into().expect("4 bytes"));
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = self.state;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = h
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            h = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (s, v) in self.state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
            *s = s.wrapping_add(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(data: &[u8]) -> String {
        let mut s = Sha256::new();
        s.update(data);
        hex(&s.finish())
    }

    #[test]
    fn sha256_matches_fips_180_examples() {
        assert_eq!(
            sha(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            sha(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
    }

    #[test]
    fn sha256_is_independent_of_how_input_is_split() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let whole = sha(&data);
        for split in [1, 3, 63, 64, 65, 127, 500] {
            let mut s = Sha256::new();
            for chunk in data.chunks(split) {
                s.update(chunk);
            }
            assert_eq!(hex(&s.finish()), whole, "split {split}");
        }
    }
}
