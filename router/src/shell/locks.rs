//! The shell's rule for blocking locks, and the type that checks it.
//!
//! Two ranks, always taken in this order (docs/architecture.md, "Locks"):
//!
//! 1. [`Rank::Forwarder`]: the data plane's forwarder (MAC table and
//!    counters). Only the data threads take it; they may hold it across
//!    system calls (a `sendmmsg`, a TAP write) and take leaf locks under
//!    it.
//! 2. [`Rank::Leaf`]: every other blocking lock of the data plane (one
//!    session's keys, the published counters, the crypto drop counts).
//!    Whoever holds one does bounded work in memory: it takes no other
//!    lock, makes no system call and logs nothing before letting go.
//!
//! So no cycle can form: a thread waiting for a leaf waits for bounded
//! work, and a thread waiting for the forwarder waits for a data thread
//! that can only be waiting for a leaf. The router task, the HTTP handlers
//! and anything else on the tokio runtime take leaves only, which is what
//! keeps a send in progress from stalling the control plane.
//!
//! Debug builds (every test run) check the rule on each acquisition and
//! at each system call the data threads make, and panic at the first
//! violation with what was held; release builds pay nothing.

use std::ops::{Deref, DerefMut};
use std::sync::{Mutex, MutexGuard};

/// Where a lock stands in the order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rank {
    Forwarder = 0,
    Leaf = 1,
}

/// A mutex with a place in the lock order.
#[derive(Debug, Default)]
pub struct Ranked<T, const RANK: u8> {
    inner: Mutex<T>,
}

/// The forwarder's lock: data threads only.
pub type ForwarderLock<T> = Ranked<T, { Rank::Forwarder as u8 }>;
/// A leaf lock: held for bounded work in memory.
pub type Leaf<T> = Ranked<T, { Rank::Leaf as u8 }>;

impl<T, const RANK: u8> Ranked<T, RANK> {
    pub fn new(value: T) -> Self {
        Self {
            inner: Mutex::new(value),
        }
    }

    /// Takes the lock; `None` if a thread panicked while holding it (the
    /// caller stops using the state rather than trusting it).
    pub fn lock(&self) -> Option<RankedGuard<'_, T>> {
        check::acquire(RANK);
        match self.inner.lock() {
            Ok(guard) => Some(RankedGuard { guard, rank: RANK }),
            Err(_) => {
                check::release(RANK);
                None
            }
        }
    }
}

/// A held [`Ranked`] lock.
pub struct RankedGuard<'a, T> {
    guard: MutexGuard<'a, T>,
    rank: u8,
}

impl<T> Deref for RankedGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for RankedGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

impl<T> Drop for RankedGuard<'_, T> {
    fn drop(&mut self) {
        check::release(self.rank);
    }
}

/// Marks the calling thread as a data thread, the only kind that may take
/// the forwarder's lock.
pub fn enter_data_thread() {
    check::enter_data_thread();
}

/// Called before a system call: no leaf may be held across one.
pub fn before_syscall(what: &'static str) {
    check::before_syscall(what);
}

#[cfg(debug_assertions)]
mod check {
    use std::cell::Cell;

    use super::Rank;

    thread_local! {
        /// Bit `r` is set while this thread holds a lock of rank `r`.
        static HELD: Cell<u8> = const { Cell::new(0) };
        static DATA_THREAD: Cell<bool> = const { Cell::new(false) };
    }

    fn name(rank: u8) -> &'static str {
        if rank == Rank::Forwarder as u8 {
            "the forwarder"
        } else {
            "a leaf lock"
        }
    }

    fn thread() -> String {
        std::thread::current()
            .name()
            .unwrap_or("an unnamed thread")
            .to_owned()
    }

    pub fn acquire(rank: u8) {
        let held = HELD.get();
        // Anything of this rank or later already held breaks the order.
        if held >> rank != 0 {
            let holding = (0..8)
                .filter(|r| held & (1 << r) != 0)
                .map(name)
                .collect::<Vec<_>>()
                .join(" and ");
            panic!(
                "lock order violated on {}: taking {} while holding {holding} \
                 (docs/architecture.md, \"Locks\")",
                thread(),
                name(rank)
            );
        }
        if rank == Rank::Forwarder as u8 && !DATA_THREAD.get() {
            panic!(
                "{} took the forwarder's lock, which only data threads may take \
                 (docs/architecture.md, \"Locks\")",
                thread()
            );
        }
        HELD.set(held | 1 << rank);
    }

    pub fn release(rank: u8) {
        HELD.set(HELD.get() & !(1 << rank));
    }

    pub fn enter_data_thread() {
        DATA_THREAD.set(true);
    }

    pub fn before_syscall(what: &'static str) {
        if HELD.get() & (1 << Rank::Leaf as u8) != 0 {
            panic!(
                "{} is about to {what} while holding a leaf lock \
                 (docs/architecture.md, \"Locks\")",
                thread()
            );
        }
    }
}

#[cfg(not(debug_assertions))]
mod check {
    pub fn acquire(_: u8) {}
    pub fn release(_: u8) {}
    pub fn enter_data_thread() {}
    pub fn before_syscall(_: &'static str) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panic_text(f: impl FnOnce() + Send + 'static) -> String {
        let e = std::thread::Builder::new()
            .name("lock-test".into())
            .spawn(f)
            .unwrap()
            .join()
            .expect_err("should have panicked");
        e.downcast_ref::<String>().cloned().unwrap_or_default()
    }

    #[test]
    fn data_threads_take_the_forwarder_then_leaves() {
        std::thread::spawn(|| {
            enter_data_thread();
            let fwd: ForwarderLock<u32> = Ranked::new(1);
            let leaf: Leaf<u32> = Ranked::new(2);
            let f = fwd.lock().unwrap();
            let l = leaf.lock().unwrap();
            assert_eq!(*f + *l, 3);
            drop(l);
            before_syscall("send");
            drop(f);
            // Released guards let the order start over.
            let l = leaf.lock().unwrap();
            drop(l);
            assert!(fwd.lock().is_some());
        })
        .join()
        .unwrap();
    }

    #[test]
    #[cfg(debug_assertions)]
    fn taking_the_forwarder_under_a_leaf_panics() {
        let text = panic_text(|| {
            enter_data_thread();
            let fwd: ForwarderLock<()> = Ranked::new(());
            let leaf: Leaf<()> = Ranked::new(());
            let _l = leaf.lock();
            let _f = fwd.lock();
        });
        assert!(
            text.contains("taking the forwarder while holding a leaf lock"),
            "{text}"
        );
    }

    #[test]
    #[cfg(debug_assertions)]
    fn two_leaves_at_once_panic() {
        let text = panic_text(|| {
            let a: Leaf<()> = Ranked::new(());
            let b: Leaf<()> = Ranked::new(());
            let _a = a.lock();
            let _b = b.lock();
        });
        assert!(
            text.contains("taking a leaf lock while holding a leaf lock"),
            "{text}"
        );
    }

    #[test]
    #[cfg(debug_assertions)]
    fn only_data_threads_take_the_forwarder() {
        let text = panic_text(|| {
            let fwd: ForwarderLock<()> = Ranked::new(());
            let _f = fwd.lock();
        });
        assert!(
            text.contains("lock-test took the forwarder's lock, which only data threads may take"),
            "{text}"
        );
    }

    #[test]
    #[cfg(debug_assertions)]
    fn no_system_call_under_a_leaf() {
        let text = panic_text(|| {
            let leaf: Leaf<()> = Ranked::new(());
            let _l = leaf.lock();
            before_syscall("write to the TAP");
        });
        assert!(
            text.contains("lock-test is about to write to the TAP while holding a leaf lock"),
            "{text}"
        );
    }
}
