//! Which MAC address lives where: on our own bridge, or behind a peer.
//!
//! Learned from the source address of every frame: frames read from the TAP
//! teach "local", frames arriving from the mesh teach "behind the router
//! that originated them". Entries age out, and a MAC seen somewhere new is
//! relearned at once, so a container that moves hosts is followed on its
//! first frame.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::core::identity::PeerName;
use crate::core::wire::ethernet::Mac;

/// Default age after which an unrefreshed entry is forgotten (Linux
/// bridges use 300 s).
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);
/// Bound on entries, so a flood of random source MACs cannot exhaust memory;
/// past it, unknown MACs are simply flooded like before learning.
pub const DEFAULT_MAX_ENTRIES: usize = 65_536;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    Local,
    Peer(PeerName),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learned {
    New,
    Refreshed,
    Moved {
        from: Location,
    },
    /// The table is full; nothing recorded.
    Full,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    location: Location,
    last_seen: Instant,
}

#[derive(Debug)]
pub struct MacTable {
    entries: HashMap<Mac, Entry>,
    max_age: Duration,
    max_entries: usize,
}

impl Default for MacTable {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_AGE, DEFAULT_MAX_ENTRIES)
    }
}

impl MacTable {
    pub fn new(max_age: Duration, max_entries: usize) -> Self {
        Self {
            entries: HashMap::new(),
            max_age,
            max_entries,
        }
    }

    /// Records that `mac` was seen at `location`. Group addresses are never
    /// learned: they are not a place.
    pub fn learn(&mut self, now: Instant, mac: Mac, location: Location) -> Learned {
        if mac.is_multicast() {
            return Learned::Refreshed;
        }
        let full = self.entries.len() >= self.max_entries;
        match self.entries.get_mut(&mac) {
            Some(e) => {
                let prev = e.location;
                let expired = now.saturating_duration_since(e.last_seen) >= self.max_age;
                e.location = location;
                e.last_seen = now;
                if prev == location {
                    Learned::Refreshed
                } else if expired {
                    Learned::New
                } else {
                    Learned::Moved { from: prev }
                }
            }
            None if full => Learned::Full,
            None => {
                self.entries.insert(
                    mac,
                    Entry {
                        location,
                        last_seen: now,
                    },
                );
                Learned::New
            }
        }
    }

    /// Where `mac` is, if known and fresh.
    pub fn lookup(&self, now: Instant, mac: Mac) -> Option<Location> {
        self.entries
            .get(&mac)
            .filter(|e| now.saturating_duration_since(e.last_seen) < self.max_age)
            .map(|e| e.location)
    }

    /// Drops stale entries; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.entries.len();
        let max_age = self.max_age;
        self.entries
            .retain(|_, e| now.saturating_duration_since(e.last_seen) < max_age);
        before - self.entries.len()
    }

    /// Forgets every MAC behind `peer` (it left the mesh).
    pub fn forget_peer(&mut self, peer: PeerName) {
        self.entries
            .retain(|_, e| e.location != Location::Peer(peer));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// All fresh entries, for `weft status`.
    pub fn entries(&self, now: Instant) -> impl Iterator<Item = (Mac, Location)> + '_ {
        self.entries
            .iter()
            .filter(move |(_, e)| now.saturating_duration_since(e.last_seen) < self.max_age)
            .map(|(m, e)| (*m, e.location))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Mac = Mac([2, 0, 0, 0, 0, 1]);

    fn peer(v: u64) -> Location {
        Location::Peer(PeerName::from_u64(v).unwrap())
    }

    #[test]
    fn learns_refreshes_moves_and_ages_out() {
        let t0 = Instant::now();
        let mut t = MacTable::new(Duration::from_secs(10), 10);
        assert_eq!(t.learn(t0, A, Location::Local), Learned::New);
        assert_eq!(t.learn(t0, A, Location::Local), Learned::Refreshed);
        assert_eq!(
            t.learn(t0, A, peer(1)),
            Learned::Moved {
                from: Location::Local
            }
        );
        assert_eq!(t.lookup(t0 + Duration::from_secs(9), A), Some(peer(1)));
        assert_eq!(t.lookup(t0 + Duration::from_secs(10), A), None);
        assert_eq!(t.expire(t0 + Duration::from_secs(10)), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn never_learns_group_addresses_and_stays_bounded() {
        let t0 = Instant::now();
        let mut t = MacTable::new(Duration::from_secs(10), 2);
        t.learn(t0, Mac::BROADCAST, Location::Local);
        assert!(t.is_empty());
        t.learn(t0, Mac([2, 0, 0, 0, 0, 1]), Location::Local);
        t.learn(t0, Mac([2, 0, 0, 0, 0, 2]), Location::Local);
        assert_eq!(
            t.learn(t0, Mac([2, 0, 0, 0, 0, 3]), Location::Local),
            Learned::Full
        );
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn forgetting_a_peer_drops_its_macs_only() {
        let t0 = Instant::now();
        let mut t = MacTable::default();
        t.learn(t0, Mac([2, 0, 0, 0, 0, 1]), peer(1));
        t.learn(t0, Mac([2, 0, 0, 0, 0, 2]), peer(2));
        t.forget_peer(PeerName::from_u64(1).unwrap());
        assert_eq!(
            t.entries(t0).collect::<Vec<_>>(),
            vec![(Mac([2, 0, 0, 0, 0, 2]), peer(2))]
        );
    }
}
