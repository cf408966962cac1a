//! A sliding-window replay filter for counters of authenticated datagrams,
//! as in WireGuard (RFC 6479's bitmap idea).
//!
//! [`ReplayWindow::check`] never changes the window, so a forged datagram
//! cannot move it; [`ReplayWindow::accept`] is called only after the
//! datagram authenticated.

use thiserror::Error;

/// How many counters below the highest accepted one are still remembered.
/// WireGuard uses 8192 minus a word; UDP reordering across multiple paths
/// and queues rarely exceeds a few hundred packets.
pub const REPLAY_WINDOW: u64 = 8192;

const WORDS: usize = (REPLAY_WINDOW / 64) as usize;

/// Why a counter is refused.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum ReplayError {
    /// Further below the highest accepted counter than the window reaches.
    #[error("counter is older than the replay window")]
    TooOld,
    /// Already accepted.
    #[error("counter was already received")]
    Duplicate,
}

/// Remembers which of the last [`REPLAY_WINDOW`] counters were accepted.
/// Bit `c % REPLAY_WINDOW` stands for counter `c` while `c` is in the
/// window.
#[derive(Clone, Debug)]
pub struct ReplayWindow {
    /// The highest accepted counter, `None` before the first.
    highest: Option<u64>,
    bits: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow::new()
    }
}

impl ReplayWindow {
    /// An empty window: every counter is new.
    pub fn new() -> ReplayWindow {
        ReplayWindow {
            highest: None,
            bits: [0; WORDS],
        }
    }

    /// Whether `counter` would be accepted. Does not change the window.
    pub fn check(&self, counter: u64) -> Result<(), ReplayError> {
        let Some(highest) = self.highest else {
            return Ok(());
        };
        if counter > highest {
            return Ok(());
        }
        if highest - counter >= REPLAY_WINDOW {
            return Err(ReplayError::TooOld);
        }
        if self.bit(counter) {
            Err(ReplayError::Duplicate)
        } else {
            Ok(())
        }
    }

    /// Records `counter` as received. Call only after [`check`](Self::check)
    /// passed and the datagram authenticated; a counter that `check` would
    /// refuse is ignored.
    pub fn accept(&mut self, counter: u64) {
        if self.check(counter).is_err() {
            return;
        }
        match self.highest {
            Some(highest) if counter <= highest => {}
            Some(highest) => {
                self.clear_range(highest + 1, counter);
                self.highest = Some(counter);
            }
            None => {
                self.bits = [0; WORDS];
                self.highest = Some(counter);
            }
        }
        let (word, mask) = Self::position(counter);
        self.bits[word] |= mask;
    }

    fn bit(&self, counter: u64) -> bool {
        let (word, mask) = Self::position(counter);
        self.bits[word] & mask != 0
    }

    fn position(counter: u64) -> (usize, u64) {
        let slot = counter % REPLAY_WINDOW;
        ((slot / 64) as usize, 1 << (slot % 64))
    }

    /// Forgets counters `from..=to`, whose slots are about to stand for new
    /// counters: whole words at a time where possible.
    fn clear_range(&mut self, from: u64, to: u64) {
        if to - from >= REPLAY_WINDOW {
            self.bits = [0; WORDS];
            return;
        }
        let mut c = from;
        while c <= to {
            let (word, mask) = Self::position(c);
            if c.is_multiple_of(64) && to - c >= 63 {
                self.bits[word] = 0;
                c += 64;
            } else {
                self.bits[word] &= !mask;
                c += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn basic_sequence() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.check(5), Ok(()));
        w.accept(5);
        assert_eq!(w.check(5), Err(ReplayError::Duplicate));
        assert_eq!(w.check(4), Ok(()));
        assert_eq!(w.check(0), Ok(()));
        w.accept(5 + REPLAY_WINDOW);
        assert_eq!(w.check(5), Err(ReplayError::TooOld));
        assert_eq!(w.check(6), Ok(()));
        assert_eq!(w.check(u64::MAX), Ok(()));
        w.accept(u64::MAX);
        assert_eq!(w.check(u64::MAX), Err(ReplayError::Duplicate));
        assert_eq!(w.check(u64::MAX - 1), Ok(()));
        assert_eq!(w.check(u64::MAX - REPLAY_WINDOW), Err(ReplayError::TooOld));
    }

    #[test]
    fn a_jump_forgets_slots_reused_by_new_counters() {
        let mut w = ReplayWindow::new();
        for c in 0..200 {
            w.accept(c);
        }
        // Slot of 100 + WINDOW is the slot of 100: it must read as new.
        w.accept(100 + REPLAY_WINDOW + 50);
        assert_eq!(w.check(100 + REPLAY_WINDOW), Ok(()));
        assert_eq!(
            w.check(199),
            Err(ReplayError::Duplicate),
            "still in the window"
        );
        assert_eq!(w.check(150), Err(ReplayError::TooOld));
    }

    #[test]
    fn accept_ignores_refused_counters() {
        let mut w = ReplayWindow::new();
        w.accept(REPLAY_WINDOW * 3);
        w.accept(0);
        assert_eq!(w.check(REPLAY_WINDOW * 3 - 1), Ok(()));
    }

    proptest! {
        /// Whatever arrives, a counter is accepted at most once, and
        /// everything within the window of the highest is judged right.
        #[test]
        fn never_accepts_a_duplicate(counters in proptest::collection::vec(0u64..30_000, 1..600)) {
            let mut w = ReplayWindow::new();
            let mut seen = std::collections::HashSet::new();
            let mut highest: Option<u64> = None;
            for c in counters {
                let verdict = w.check(c);
                let expected = match highest {
                    Some(h) if c + REPLAY_WINDOW <= h => Err(ReplayError::TooOld),
                    _ if seen.contains(&c) => Err(ReplayError::Duplicate),
                    _ => Ok(()),
                };
                prop_assert_eq!(verdict, expected);
                if verdict.is_ok() {
                    w.accept(c);
                    seen.insert(c);
                    highest = highest.max(Some(c));
                }
            }
        }

        /// Any order of a window-sized burst is accepted in full, and a
        /// second copy of it in full refused.
        #[test]
        fn accepts_any_permutation_of_a_window(
            start in 0u64..1_000_000,
            order in Just((0..REPLAY_WINDOW).collect::<Vec<_>>()).prop_shuffle(),
        ) {
            let mut w = ReplayWindow::new();
            for &i in &order {
                prop_assert_eq!(w.check(start + i), Ok(()));
                w.accept(start + i);
            }
            for &i in &order {
                prop_assert_eq!(w.check(start + i), Err(ReplayError::Duplicate));
            }
            prop_assert_eq!(w.check(start + REPLAY_WINDOW), Ok(()));
        }

        /// Anything a full window below the highest is refused.
        #[test]
        fn rejects_older_than_the_window(highest in REPLAY_WINDOW..u64::MAX, back in REPLAY_WINDOW..u64::MAX) {
            let mut w = ReplayWindow::new();
            w.accept(highest);
            let old = highest.saturating_sub(back);
            if highest - old >= REPLAY_WINDOW {
                prop_assert_eq!(w.check(old), Err(ReplayError::TooOld));
            }
        }
    }
}
