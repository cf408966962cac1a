//! Which addresses to dial, and when.
//!
//! Targets come from the user (`weft launch PEER...`, `weft connect`) or from
//! discovery (addresses of peers we hear about through gossip but are not
//! connected to). Failed attempts back off exponentially with jitter, up to a
//! cap, so a mesh restarting after a datacenter outage does not stampede.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::core::identity::PeerName;
use crate::core::wire::addr::PeerAddr;

/// Handle the core gives each connection; the I/O shell keys its sockets by it.
pub type ConnHandle = u64;

#[derive(Clone, Debug, PartialEq)]
pub struct BackoffConfig {
    /// Delay after the first failure.
    pub initial: Duration,
    /// Longest delay between attempts.
    pub max: Duration,
    /// Each delay is multiplied by a random factor in `1 ± jitter`.
    pub jitter: f64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
            jitter: 0.25,
        }
    }
}

impl BackoffConfig {
    /// Delay before attempt number `failures + 1`, jittered.
    pub fn delay(&self, failures: u32, rng: &mut impl Rng) -> Duration {
        let exp = failures.saturating_sub(1).min(20);
        let base = self.initial.saturating_mul(1u32 << exp).min(self.max);
        let factor = if self.jitter > 0.0 {
            rng.random_range(1.0 - self.jitter..=1.0 + self.jitter)
        } else {
            1.0
        };
        base.mul_f64(factor)
            .min(self.max.mul_f64(1.0 + self.jitter))
    }
}

/// Where a target came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetOrigin {
    User,
    /// Learned from gossip as an address of this peer.
    Discovered(PeerName),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetState {
    /// Waiting until `next_attempt`.
    Waiting,
    Connecting,
    Connected(ConnHandle),
    /// The address turned out to be this router; never dialled again.
    IsSelf,
}

#[derive(Clone, Debug)]
pub struct Target {
    pub origin: TargetOrigin,
    pub state: TargetState,
    /// Consecutive failures since the last success.
    pub failures: u32,
    pub last_error: Option<String>,
    pub next_attempt: Instant,
    connected_at: Option<Instant>,
}

/// A connection that lasted at least this long resets the backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct ConnectionMaker {
    targets: BTreeMap<PeerAddr, Target>,
    backoff: BackoffConfig,
}

impl ConnectionMaker {
    pub fn new(backoff: BackoffConfig) -> Self {
        Self {
            targets: BTreeMap::new(),
            backoff,
        }
    }

    pub fn targets(&self) -> impl Iterator<Item = (&PeerAddr, &Target)> {
        self.targets.iter()
    }

    pub fn get(&self, addr: &PeerAddr) -> Option<&Target> {
        self.targets.get(addr)
    }

    /// Adds a target to dial now. A user target replaces a discovered one
    /// for the same address (it then survives the peer leaving the mesh).
    pub fn add(&mut self, now: Instant, addr: PeerAddr, origin: TargetOrigin) {
        match self.targets.get_mut(&addr) {
            Some(t) => {
                if origin == TargetOrigin::User {
                    t.origin = origin;
                }
            }
            None => {
                self.targets.insert(
                    addr,
                    Target {
                        origin,
                        state: TargetState::Waiting,
                        failures: 0,
                        last_error: None,
                        next_attempt: now,
                        connected_at: None,
                    },
                );
            }
        }
    }

    /// Stops dialling `addr`. An existing connection is left alone.
    pub fn forget(&mut self, addr: &PeerAddr) -> bool {
        self.targets.remove(addr).is_some()
    }

    /// Replaces the set of discovered targets. Ones being dialled or
    /// connected stay until that attempt or connection ends.
    pub fn set_discovered(&mut self, now: Instant, found: BTreeMap<PeerAddr, PeerName>) {
        self.targets.retain(|addr, t| match t.origin {
            TargetOrigin::User => true,
            TargetOrigin::Discovered(_) => {
                found.contains_key(addr)
                    || matches!(
                        t.state,
                        TargetState::Connecting | TargetState::Connected(_) | TargetState::IsSelf
                    )
            }
        });
        for (addr, peer) in found {
            self.add(now, addr, TargetOrigin::Discovered(peer));
        }
    }

    /// Targets whose time has come; they are marked as connecting. (The
    /// router first marks targets an existing connection already serves.)
    pub fn due(&mut self, now: Instant) -> Vec<PeerAddr> {
        let mut out = Vec::new();
        for (addr, t) in self.targets.iter_mut() {
            if t.state == TargetState::Waiting && t.next_attempt <= now {
                t.state = TargetState::Connecting;
                out.push(addr.clone());
            }
        }
        out
    }

    pub fn connected(&mut self, now: Instant, addr: &PeerAddr, conn: ConnHandle) {
        if let Some(t) = self.targets.get_mut(addr) {
            t.state = TargetState::Connected(conn);
            t.connected_at = Some(now);
        }
    }

    /// A dial, or the handshake that followed it, failed.
    pub fn failed(&mut self, now: Instant, addr: &PeerAddr, error: String, rng: &mut impl Rng) {
        if let Some(t) = self.targets.get_mut(addr) {
            if t.state == TargetState::IsSelf {
                return;
            }
            t.failures = t.failures.saturating_add(1);
            t.last_error = Some(error);
            t.state = TargetState::Waiting;
            t.next_attempt = now + self.backoff.delay(t.failures, rng);
        }
    }

    /// The connection serving a target ended.
    pub fn disconnected(
        &mut self,
        now: Instant,
        conn: ConnHandle,
        reason: &str,
        rng: &mut impl Rng,
    ) {
        for t in self.targets.values_mut() {
            if t.state != TargetState::Connected(conn) {
                continue;
            }
            let lasted = t
                .connected_at
                .map(|at| now.saturating_duration_since(at))
                .unwrap_or_default();
            if lasted >= STABLE_CONNECTION {
                t.failures = 0;
            }
            t.failures = t.failures.saturating_add(1);
            t.last_error = Some(reason.to_owned());
            t.state = TargetState::Waiting;
            t.connected_at = None;
            t.next_attempt = now + self.backoff.delay(t.failures, rng);
        }
    }

    pub fn mark_self(&mut self, addr: &PeerAddr) {
        if let Some(t) = self.targets.get_mut(addr) {
            t.state = TargetState::IsSelf;
            t.last_error = Some("this address is the local router".into());
        }
    }

    /// Earliest time a waiting target becomes due.
    pub fn next_wakeup(&self) -> Option<Instant> {
        self.targets
            .values()
            .filter(|t| t.state == TargetState::Waiting)
            .map(|t| t.next_attempt)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn addr(s: &str) -> PeerAddr {
        s.parse().unwrap()
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let cfg = BackoffConfig::default();
        let mut rng = StdRng::seed_from_u64(1);
        for failures in 1..12 {
            let nominal = Duration::from_secs(1 << (failures - 1)).min(cfg.max);
            let d = cfg.delay(failures, &mut rng);
            assert!(
                d >= nominal.mul_f64(0.75) && d <= nominal.mul_f64(1.25),
                "{failures}: {d:?}"
            );
        }
        let delays: std::collections::HashSet<Duration> =
            (0..20).map(|_| cfg.delay(3, &mut rng)).collect();
        assert!(delays.len() > 10, "jitter must spread retries");
    }

    #[test]
    fn failed_targets_wait_and_connected_ones_are_not_redialled() {
        let t0 = Instant::now();
        let mut rng = StdRng::seed_from_u64(1);
        let mut m = ConnectionMaker::new(BackoffConfig {
            jitter: 0.0,
            ..Default::default()
        });
        m.add(t0, addr("192.0.2.1"), TargetOrigin::User);
        assert_eq!(m.due(t0), vec![addr("192.0.2.1")]);
        assert!(m.due(t0).is_empty(), "already connecting");
        m.failed(t0, &addr("192.0.2.1"), "refused".into(), &mut rng);
        assert!(m.due(t0 + Duration::from_millis(999)).is_empty());
        assert_eq!(m.due(t0 + Duration::from_secs(1)).len(), 1);
        m.failed(t0, &addr("192.0.2.1"), "refused".into(), &mut rng);
        assert_eq!(m.next_wakeup(), Some(t0 + Duration::from_secs(2)));
        m.connected(t0, &addr("192.0.2.1"), 7);
        assert!(m.due(t0 + Duration::from_secs(99)).is_empty());
        m.disconnected(
            t0 + Duration::from_secs(60),
            7,
            "heartbeat timeout",
            &mut rng,
        );
        let t = m.get(&addr("192.0.2.1")).unwrap();
        assert_eq!(t.failures, 1, "a long-lived connection resets the backoff");
        assert_eq!(t.next_attempt, t0 + Duration::from_secs(61));
    }

    #[test]
    fn discovered_targets_follow_gossip_but_user_targets_stay() {
        let t0 = Instant::now();
        let p = PeerName::from_u64(9).unwrap();
        let mut m = ConnectionMaker::new(BackoffConfig::default());
        m.add(t0, addr("192.0.2.1"), TargetOrigin::User);
        m.set_discovered(
            t0,
            BTreeMap::from([(addr("192.0.2.2"), p), (addr("192.0.2.1"), p)]),
        );
        assert_eq!(m.targets().count(), 2);
        assert_eq!(
            m.get(&addr("192.0.2.1")).unwrap().origin,
            TargetOrigin::User
        );
        m.set_discovered(t0, BTreeMap::new());
        assert_eq!(
            m.targets().map(|(a, _)| a.clone()).collect::<Vec<_>>(),
            vec![addr("192.0.2.1")]
        );
        assert!(m.forget(&addr("192.0.2.1")));
        assert_eq!(m.targets().count(), 0);
    }

    #[test]
    fn self_targets_are_never_dialled_again() {
        let t0 = Instant::now();
        let mut rng = StdRng::seed_from_u64(1);
        let mut m = ConnectionMaker::new(BackoffConfig::default());
        m.add(t0, addr("192.0.2.1"), TargetOrigin::User);
        m.due(t0);
        m.mark_self(&addr("192.0.2.1"));
        m.failed(t0, &addr("192.0.2.1"), "closed".into(), &mut rng);
        assert!(m.due(t0 + Duration::from_secs(3600)).is_empty());
        assert_eq!(m.next_wakeup(), None);
    }
}
