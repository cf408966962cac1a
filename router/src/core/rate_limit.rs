//! Bounding inbound handshakes per source address.
//!
//! An encrypted handshake costs the responder several X25519 operations, so
//! a flood of connection attempts is a cheap way to burn a router's CPU. A
//! token bucket per source IP (refilled at a steady rate, up to a burst)
//! refuses excess connections before any byte is read; together with the
//! cap on pending handshakes and the cleartext `Hello` check that runs
//! before any cryptography, a flood cannot starve established sessions.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// New inbound connections per second each source IP may open, sustained.
pub const HANDSHAKES_PER_SEC: f64 = 5.0;
/// How many it may open at once before the rate applies (a router
/// restarting into a full mesh from behind one NAT address needs a few).
pub const HANDSHAKE_BURST: f64 = 20.0;
/// Buckets kept before full ones are forgotten (they carry no state).
const MAX_TRACKED: usize = 4096;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets keyed by source IP.
#[derive(Debug)]
pub struct HandshakeLimiter {
    rate: f64,
    burst: f64,
    buckets: HashMap<IpAddr, Bucket>,
}

impl Default for HandshakeLimiter {
    fn default() -> Self {
        Self::new(HANDSHAKES_PER_SEC, HANDSHAKE_BURST)
    }
}

impl HandshakeLimiter {
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            buckets: HashMap::new(),
        }
    }

    /// Whether a connection from `ip` may start a handshake now.
    pub fn allow(&mut self, now: Instant, ip: IpAddr) -> bool {
        if self.buckets.len() >= MAX_TRACKED && !self.buckets.contains_key(&ip) {
            let (rate, burst) = (self.rate, self.burst);
            self.buckets
                .retain(|_, b| refill(*b, now, rate, burst).tokens < burst);
        }
        let (rate, burst) = (self.rate, self.burst);
        let b = self.buckets.entry(ip).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        *b = refill(*b, now, rate, burst);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn refill(b: Bucket, now: Instant, rate: f64, burst: f64) -> Bucket {
    let secs = now.saturating_duration_since(b.last).as_secs_f64();
    Bucket {
        tokens: (b.tokens + secs * rate).min(burst),
        last: now.max(b.last),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate_per_address() {
        let mut l = HandshakeLimiter::new(5.0, 20.0);
        let t = Instant::now();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        assert_eq!((0..30).filter(|_| l.allow(t, a)).count(), 20);
        assert!(l.allow(t, b), "another address has its own bucket");
        assert!(!l.allow(t + Duration::from_millis(100), a));
        assert!(l.allow(t + Duration::from_millis(200), a));
        let later = t + Duration::from_secs(60);
        assert_eq!((0..30).filter(|_| l.allow(later, a)).count(), 20);
    }

    #[test]
    fn the_table_stays_bounded_under_spoofed_sources() {
        let mut l = HandshakeLimiter::default();
        let t = Instant::now();
        for i in 0..(MAX_TRACKED as u32 * 3) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            l.allow(t + Duration::from_secs(u64::from(i / 1000) * 10), ip);
        }
        assert!(l.buckets.len() <= MAX_TRACKED + 1000, "{}", l.buckets.len());
    }
}
