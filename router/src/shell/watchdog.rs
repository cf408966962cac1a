//! A liveness check for the router's long-lived threads: the data plane's
//! TAP and UDP threads and the router task.
//!
//! Each marks itself busy while it works on something (a batch of frames,
//! an event) and idle when it goes back to waiting. A thread of its own
//! looks once a second: one that has been busy with the same piece of work
//! for longer than the limit is stuck (a deadlock, a blocking call that
//! never returns, a loop that does not end), and the watchdog says so
//! loudly, with the thread's name, once per stall, and counts it. When the
//! thread moves on, it says that too. A thread that waits for work is not
//! stuck, however long it waits.
//!
//! The check itself takes no lock the watched threads take, so it keeps
//! working when they are frozen.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{error, info};

/// How long one piece of work may take before the thread counts as stuck.
/// Far above any real batch or event, which take micro- to milliseconds.
pub const STALL_AFTER: Duration = Duration::from_secs(5);

/// One watched thread's state.
#[derive(Debug)]
pub struct Beat {
    name: &'static str,
    epoch: Instant,
    /// When the current piece of work started (ms since `epoch`, plus one);
    /// zero while the thread waits for work.
    busy_since: AtomicU64,
    stalls: AtomicU64,
}

impl Beat {
    /// Marks the thread busy until the returned guard is dropped.
    pub fn busy(&self) -> Busy<'_> {
        self.busy_since
            .store(self.ms(Instant::now()), Ordering::Relaxed);
        Busy(self)
    }

    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64 + 1
    }
}

/// A thread at work; see [`Beat::busy`].
pub struct Busy<'a>(&'a Beat);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.busy_since.store(0, Ordering::Relaxed);
    }
}

struct Inner {
    epoch: Instant,
    stall_after: Duration,
    /// Registered beats; the watchdog thread holds this only to copy it.
    beats: Mutex<Vec<Arc<Beat>>>,
    stop: AtomicBool,
}

/// The watchdog thread and the beats it watches. Dropping it stops the
/// thread.
pub struct Watchdog {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Starts the watchdog with the default limit.
    pub fn start() -> std::io::Result<Self> {
        Self::with_limit(STALL_AFTER, Duration::from_secs(1))
    }

    /// Starts a watchdog that calls a thread stuck after `stall_after`,
    /// looking every `every`.
    pub fn with_limit(stall_after: Duration, every: Duration) -> std::io::Result<Self> {
        let inner = Arc::new(Inner {
            epoch: Instant::now(),
            stall_after,
            beats: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let watched = inner.clone();
        let thread = std::thread::Builder::new()
            .name("weft-watchdog".into())
            .spawn(move || watch(&watched, every))?;
        Ok(Self {
            inner,
            thread: Some(thread),
        })
    }

    /// A new beat for the thread `name`, watched from now on.
    pub fn register(&self, name: &'static str) -> Arc<Beat> {
        let beat = Arc::new(Beat {
            name,
            epoch: self.inner.epoch,
            busy_since: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
        });
        if let Ok(mut beats) = self.inner.beats.lock() {
            beats.push(beat.clone());
        }
        beat
    }

    /// Stalls seen since start, by thread.
    pub fn stalls(&self) -> BTreeMap<String, u64> {
        let beats = self
            .inner
            .beats
            .lock()
            .map(|b| b.clone())
            .unwrap_or_default();
        beats
            .iter()
            .map(|b| (b.name.to_owned(), b.stalls.load(Ordering::Relaxed)))
            .collect()
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

fn watch(inner: &Inner, every: Duration) {
    // The busy period each beat was last reported stuck in.
    let mut reported: Vec<u64> = Vec::new();
    while !inner.stop.load(Ordering::Relaxed) {
        std::thread::park_timeout(every);
        let beats = inner.beats.lock().map(|b| b.clone()).unwrap_or_default();
        reported.resize(beats.len(), 0);
        let now = Instant::now();
        for (beat, reported) in beats.iter().zip(reported.iter_mut()) {
            let since = beat.busy_since.load(Ordering::Relaxed);
            if since == 0 || since != *reported {
                if *reported != 0 {
                    info!(thread = beat.name, "thread is making progress again");
                    *reported = 0;
                }
                if since == 0 {
                    continue;
                }
            }
            let busy_for = Duration::from_millis(beat.ms(now).saturating_sub(since));
            if *reported == 0 && busy_for >= inner.stall_after {
                beat.stalls.fetch_add(1, Ordering::Relaxed);
                *reported = since;
                error!(
                    thread = beat.name,
                    busy_for = ?busy_for,
                    "thread has made no progress on one piece of work for {busy_for:?}: \
                     the router may be stuck; keep it running and take a backtrace \
                     (gdb -p PID -batch -ex 'thread apply all bt'), then report it"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_thread_stuck_on_one_piece_of_work_is_reported_once() {
        let dog =
            Watchdog::with_limit(Duration::from_millis(100), Duration::from_millis(10)).unwrap();
        let stuck = dog.register("stuck");
        let _waiting = dog.register("waiting");
        let busy = stuck.busy();
        wait_for("a stall", || dog.stalls()["stuck"] == 1);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(dog.stalls()["stuck"], 1, "one stall, reported once");
        drop(busy);
        std::thread::sleep(Duration::from_millis(20));
        // A new piece of work that takes as long is a new stall.
        let _busy = stuck.busy();
        wait_for("a second stall", || dog.stalls()["stuck"] == 2);
        assert_eq!(dog.stalls()["waiting"], 0, "waiting for work is no stall");
    }

    #[test]
    fn quick_work_is_no_stall() {
        let dog =
            Watchdog::with_limit(Duration::from_millis(200), Duration::from_millis(10)).unwrap();
        let beat = dog.register("quick");
        let until = Instant::now() + Duration::from_millis(600);
        while Instant::now() < until {
            let _busy = beat.busy();
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(dog.stalls()["quick"], 0);
    }
}
