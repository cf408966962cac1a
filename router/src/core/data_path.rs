//! The UDP data path to one neighbour: is it usable, and how big may a
//! datagram be?
//!
//! **Liveness.** Each side sends a small UDP heartbeat every interval,
//! saying whether it has heard the other's recently. The path is usable for
//! data only when we hear the peer *and* the peer says it hears us: TCP may
//! be fine while UDP is blocked by a firewall, and routes must then avoid
//! the connection.
//!
//! **Path MTU.** Probes of a chosen size go out with DF set; the peer acks
//! each one it receives. The search tries the ceiling first (most paths
//! carry a full 1500-byte packet), then bisects between the largest size
//! acknowledged and the smallest lost twice. Until a size is verified the
//! path uses the IPv4 minimum. A verified size is re-checked every
//! minute and the search re-run every ten, so a path that shrinks or grows
//! is followed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::core::identity::PeerName;
use crate::core::wire::udp;

/// Largest UDP payload every IPv4 path must carry: 576 - 20 (IP) - 8 (UDP).
pub const MIN_UDP_PAYLOAD: usize = 548;
/// IPv4 + UDP header bytes under each datagram.
pub const IPV4_UDP_OVERHEAD: usize = 28;
/// IPv6 + UDP header bytes under each datagram.
pub const IPV6_UDP_OVERHEAD: usize = 48;
/// Stop bisecting when the bounds are this close.
const PMTU_GRANULARITY: usize = 8;
/// Losses of the same probe size before it counts as too big.
const PROBE_ATTEMPTS: u32 = 2;
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How often a verified size is re-checked.
const RECHECK_INTERVAL: Duration = Duration::from_secs(60);
/// How often the search is re-run upward from the verified size.
const RESEARCH_INTERVAL: Duration = Duration::from_secs(600);

#[derive(Clone, Debug)]
pub struct DataPathConfig {
    pub heartbeat_interval: Duration,
    /// No heartbeat for this long and the path is unusable.
    pub timeout: Duration,
    /// Largest UDP payload to try (underlay interface MTU minus IP/UDP).
    pub max_payload: usize,
}

impl Default for DataPathConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(500),
            timeout: Duration::from_secs(3),
            max_payload: 1500 - IPV4_UDP_OVERHEAD,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Probe {
    id: u32,
    size: usize,
    sent_at: Instant,
    attempts: u32,
}

/// Path MTU search state.
#[derive(Clone, Debug)]
struct Pmtu {
    max: usize,
    /// Largest payload acknowledged (or the safe minimum).
    confirmed: usize,
    verified: bool,
    /// Smallest payload known to be lost; `max + 1` if none.
    ceiling: usize,
    probe: Option<Probe>,
    /// The current probe timed out once and must be sent again.
    resend: bool,
    next_id: u32,
    /// When the next probe round may start (after a finished search).
    idle_until: Option<Instant>,
    last_research: Instant,
}

impl Pmtu {
    fn new(now: Instant, max: usize) -> Self {
        let max = max.max(MIN_UDP_PAYLOAD);
        Self {
            max,
            confirmed: MIN_UDP_PAYLOAD,
            verified: false,
            ceiling: max + 1,
            probe: None,
            resend: false,
            next_id: 1,
            idle_until: None,
            last_research: now,
        }
    }

    /// The size to try next, if the search is not finished.
    fn next_size(&self) -> Option<usize> {
        if !self.verified && self.ceiling > self.max {
            // First round: try the ceiling straight away.
            return Some(self.max);
        }
        if self.ceiling <= self.confirmed + PMTU_GRANULARITY {
            return None;
        }
        Some((self.confirmed + self.ceiling) / 2)
    }

    fn on_ack(&mut self, now: Instant, id: u32, size: usize) -> bool {
        match self.probe {
            Some(p) if p.id == id && p.size == size => {
                let changed = !self.verified || size > self.confirmed;
                self.confirmed = self.confirmed.max(size);
                self.verified = true;
                self.probe = None;
                if self.ceiling <= self.confirmed {
                    self.ceiling = self.max + 1;
                }
                if self.next_size().is_none() {
                    self.idle_until = Some(now + RECHECK_INTERVAL);
                }
                changed
            }
            _ => false,
        }
    }

    /// Returns true if the usable size changed.
    fn on_timeout(&mut self, now: Instant) -> bool {
        let Some(mut p) = self.probe else {
            return false;
        };
        if now < p.sent_at + PROBE_TIMEOUT {
            return false;
        }
        p.attempts += 1;
        if p.attempts < PROBE_ATTEMPTS {
            p.sent_at = now;
            p.id = self.take_id();
            self.probe = Some(p);
            self.resend = true;
            return false;
        }
        self.probe = None;
        let mut changed = false;
        if self.verified && p.size <= self.confirmed {
            // A size that used to work no longer does: the path shrank.
            self.confirmed = MIN_UDP_PAYLOAD;
            self.verified = false;
            changed = true;
        }
        self.ceiling = self.ceiling.min(p.size.max(MIN_UDP_PAYLOAD));
        if self.next_size().is_none() {
            self.idle_until = Some(now + RECHECK_INTERVAL);
        }
        changed
    }

    fn take_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    /// A probe to send now, if one is due.
    fn poll_probe(&mut self, now: Instant) -> Option<Probe> {
        if let Some(p) = self.probe {
            if !std::mem::take(&mut self.resend) {
                return None;
            }
            let p = Probe { sent_at: now, ..p };
            self.probe = Some(p);
            return Some(p);
        }
        let size = match self.idle_until {
            Some(t) if now < t => return None,
            Some(_) => {
                self.idle_until = None;
                if now.saturating_duration_since(self.last_research) >= RESEARCH_INTERVAL {
                    self.last_research = now;
                    self.ceiling = self.max + 1;
                    self.next_size().unwrap_or(self.confirmed)
                } else {
                    // Re-check that the verified size still gets through.
                    self.confirmed
                }
            }
            None => self.next_size()?,
        };
        let p = Probe {
            id: self.take_id(),
            size,
            sent_at: now,
            attempts: 0,
        };
        self.probe = Some(p);
        Some(p)
    }

    fn deadline(&self) -> Option<Instant> {
        match self.probe {
            Some(p) => Some(p.sent_at + PROBE_TIMEOUT),
            None => self.idle_until,
        }
    }
}

/// UDP liveness and path MTU for one neighbour.
#[derive(Clone, Debug)]
pub struct DataPath {
    pub peer: PeerName,
    /// Where the neighbour receives UDP.
    pub addr: SocketAddr,
    conn_id: u64,
    config: DataPathConfig,
    last_rx: Option<Instant>,
    peer_hears_us_at: Option<Instant>,
    next_heartbeat: Instant,
    pmtu: Pmtu,
    /// Usability as last reported, so a change by mere passage of time
    /// (heartbeats stopped) is noticed.
    reported_usable: bool,
}

impl DataPath {
    pub fn new(
        now: Instant,
        peer: PeerName,
        addr: SocketAddr,
        conn_id: u64,
        config: DataPathConfig,
    ) -> Self {
        let overhead = if addr.is_ipv4() {
            0
        } else {
            IPV6_UDP_OVERHEAD - IPV4_UDP_OVERHEAD
        };
        let pmtu = Pmtu::new(now, config.max_payload.saturating_sub(overhead));
        Self {
            peer,
            addr,
            conn_id,
            config,
            last_rx: None,
            peer_hears_us_at: None,
            next_heartbeat: now,
            pmtu,
            reported_usable: false,
        }
    }

    /// Whether UDP works both ways right now.
    pub fn usable(&self, now: Instant) -> bool {
        let fresh = |t: Option<Instant>| {
            t.is_some_and(|t| now.saturating_duration_since(t) < self.config.timeout)
        };
        fresh(self.last_rx) && fresh(self.peer_hears_us_at)
    }

    /// Usability as of the last event or timer: what routes currently
    /// reflect.
    pub fn reported_usable(&self) -> bool {
        self.reported_usable
    }

    /// Largest UDP payload to send to this neighbour.
    pub fn payload_limit(&self) -> usize {
        self.pmtu.confirmed
    }

    /// Whether [`DataPath::payload_limit`] was verified by a probe.
    pub fn pmtu_verified(&self) -> bool {
        self.pmtu.verified
    }

    /// A heartbeat arrived. Returns true if usability may have changed.
    pub fn on_heartbeat(&mut self, now: Instant, conn_id: u64, hears_you: bool) -> bool {
        if conn_id != self.conn_id {
            return false;
        }
        self.last_rx = Some(now);
        if hears_you {
            self.peer_hears_us_at = Some(now);
        }
        self.refresh(now)
    }

    /// Re-evaluates usability; true if it differs from what was last reported.
    fn refresh(&mut self, now: Instant) -> bool {
        let usable = self.usable(now);
        let changed = usable != self.reported_usable;
        self.reported_usable = usable;
        changed
    }

    /// An ack for one of our probes. Returns true if the limit changed.
    pub fn on_probe_ack(&mut self, now: Instant, id: u32, size: u16) -> bool {
        self.last_rx = Some(now);
        self.pmtu.on_ack(now, id, usize::from(size))
    }

    /// Runs timers; returns true if usability or the limit changed.
    pub fn on_timeout(&mut self, now: Instant) -> bool {
        let pmtu_changed = self.pmtu.on_timeout(now);
        let usable_changed = self.refresh(now);
        pmtu_changed || usable_changed
    }

    /// Datagrams due now (heartbeat, probe), encoded.
    pub fn poll_transmit(&mut self, now: Instant, local: PeerName) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        if now >= self.next_heartbeat {
            let hears = self
                .last_rx
                .is_some_and(|t| now.saturating_duration_since(t) < self.config.timeout);
            out.push(udp::heartbeat(local, self.peer, self.conn_id, hears).to_vec());
            self.next_heartbeat = now + self.config.heartbeat_interval;
        }
        // Probing starts once the peer is known to hear us at all.
        if self.usable(now)
            && let Some(p) = self.pmtu.poll_probe(now)
        {
            out.push(udp::pmtu_probe(local, self.peer, p.id, p.size));
        }
        out
    }

    /// When [`DataPath::poll_transmit`] or [`DataPath::on_timeout`] next has work.
    pub fn next_deadline(&self) -> Instant {
        let mut t = self.next_heartbeat;
        // While usable, wake when it would expire; once unusable, only a
        // heartbeat can change that, so no expiry deadline (a past one
        // would spin the caller's timer).
        let expiry = self.reported_usable.then(|| {
            let oldest = match (self.last_rx, self.peer_hears_us_at) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).unwrap_or(self.next_heartbeat),
            };
            oldest + self.config.timeout
        });
        for d in [self.pmtu.deadline(), expiry].into_iter().flatten() {
            t = t.min(d);
        }
        t
    }
}

/// Builds the ack for a probe received from `peer`: the probe's id and the
/// size of the UDP payload that arrived.
pub fn ack_for_probe(local: PeerName, peer: PeerName, id: u32, received_len: usize) -> Vec<u8> {
    udp::pmtu_ack(
        local,
        peer,
        id,
        received_len.min(usize::from(u16::MAX)) as u16,
    )
    .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::wire::udp::{HEADER_LEN, Header, Kind, parse_pmtu_probe};

    fn n(v: u64) -> PeerName {
        PeerName::from_u64(v).unwrap()
    }

    /// Drives one side against a simulated peer and path that drops
    /// datagrams larger than `path_limit`.
    fn converge(path_limit: usize, max: usize) -> (DataPath, Instant) {
        let t0 = Instant::now();
        let cfg = DataPathConfig {
            max_payload: max,
            ..Default::default()
        };
        let mut dp = DataPath::new(t0, n(2), "192.0.2.2:6783".parse().unwrap(), 7, cfg);
        let mut now = t0;
        for _ in 0..400 {
            dp.on_timeout(now);
            for d in dp.poll_transmit(now, n(1)) {
                let h = Header::parse(&d).unwrap();
                match h.kind {
                    Kind::Heartbeat => {
                        dp.on_heartbeat(now, 7, true);
                    }
                    Kind::PmtuProbe if d.len() <= path_limit => {
                        let id = parse_pmtu_probe(&d[HEADER_LEN..]).unwrap();
                        dp.on_probe_ack(now, id, d.len() as u16);
                    }
                    _ => {}
                }
            }
            now += Duration::from_millis(100);
        }
        (dp, now)
    }

    #[test]
    fn a_full_size_path_is_verified_at_once() {
        let (dp, _) = converge(1472, 1472);
        assert!(dp.pmtu_verified());
        assert_eq!(dp.payload_limit(), 1472);
    }

    #[test]
    fn a_smaller_path_is_found_by_bisection() {
        let (dp, _) = converge(1200, 1472);
        assert!(dp.pmtu_verified());
        let limit = dp.payload_limit();
        assert!(limit <= 1200 && limit > 1200 - PMTU_GRANULARITY, "{limit}");
    }

    #[test]
    fn a_path_below_the_minimum_keeps_the_minimum_unverified() {
        let (dp, _) = converge(500, 1472);
        assert!(!dp.pmtu_verified());
        assert_eq!(dp.payload_limit(), MIN_UDP_PAYLOAD);
    }

    #[test]
    fn usable_needs_both_directions_and_expires() {
        let t0 = Instant::now();
        let mut dp = DataPath::new(
            t0,
            n(2),
            "192.0.2.2:6783".parse().unwrap(),
            7,
            DataPathConfig::default(),
        );
        assert!(!dp.usable(t0));
        dp.on_heartbeat(t0, 7, false);
        assert!(!dp.usable(t0), "we hear them, they do not hear us");
        assert!(dp.on_heartbeat(t0, 7, true));
        assert!(dp.usable(t0));
        assert!(
            !dp.on_heartbeat(t0, 8, true),
            "another connection's heartbeat is ignored"
        );
        assert!(!dp.usable(t0 + Duration::from_secs(3)));
        let hb = dp.poll_transmit(t0, n(1));
        assert_eq!(
            crate::core::wire::udp::parse_heartbeat(&hb[0][HEADER_LEN..]),
            Ok((7, true))
        );
    }

    #[test]
    fn a_shrinking_path_is_noticed_on_recheck() {
        let (mut dp, mut now) = converge(1472, 1472);
        assert_eq!(dp.payload_limit(), 1472);
        // The path shrinks to 1000: keep heartbeats flowing, drop big probes.
        for _ in 0..2000 {
            dp.on_timeout(now);
            for d in dp.poll_transmit(now, n(1)) {
                let h = Header::parse(&d).unwrap();
                if h.kind == Kind::Heartbeat {
                    dp.on_heartbeat(now, 7, true);
                } else if d.len() <= 1000 {
                    let id = parse_pmtu_probe(&d[HEADER_LEN..]).unwrap();
                    dp.on_probe_ack(now, id, d.len() as u16);
                }
            }
            now += Duration::from_millis(100);
        }
        let limit = dp.payload_limit();
        assert!(
            dp.pmtu_verified() && limit <= 1000 && limit > 1000 - PMTU_GRANULARITY,
            "{limit}"
        );
    }
}
