//! Routes changing under load: a bulk TCP transfer of 64 KB (TSO) frames
//! keeps running while the paths it takes are cut, healed and killed over
//! and over, and every router keeps answering `weft status` throughout.
//!
//! ```text
//!  h5  h6              four hosts in a square, diagonal h1–h4 cut, all
//!   \  │               encrypted; c1 and c4 send to each other through
//!    h1 ── h2  c1      h2 or h3 while the test cuts and heals h1's link
//!    │  ✂   │          to whichever relay it uses, and once kills that
//!    h3 ── h4  c4      relay with SIGKILL and relaunches it. Meanwhile
//!                      h5 and h6, peers of h1 alone, are killed and
//!                      relaunched over and over, so h1's routes and
//!                      sessions also change while the square's paths
//!                      are steady and full of traffic.
//! ```
//!
//! This is the regression test for a lock-order deadlock in the data
//! plane: the TAP thread re-took the forwarder while holding the tables'
//! read guards, the UDP thread held the forwarder waiting for a read
//! guard, and the router task queued a writer between them, freezing the
//! data plane, the control plane and the API at the first route change
//! during a large send (docs/architecture.md, "Locks").

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use weft_tests::netns::testbed::{CONVERGE, Plan, launch, nothing, testbed};
use weft_tests::netns::{Net, h, serial};

const TRAFFIC: &str = env!("CARGO_BIN_EXE_weft-traffic");

/// How long the transfer runs; the churn fills all but its last seconds.
const TRANSFER_SECS: u64 = 45;

/// A `weft status` slower than this means the router task stalled; it
/// answers in milliseconds even on a loaded machine.
const SLOW_STATUS: Duration = Duration::from_secs(5);

/// The square's peers: h2, h3, h5 and h6 dial h1, h4 dials h2 and h3.
fn peers(i: usize) -> Vec<usize> {
    match i {
        1 => vec![],
        4 => vec![2, 3],
        _ => vec![1],
    }
}

/// The hosts that only h1 knows, restarted over and over.
const FLAPPING: [usize; 2] = [5, 6];

#[test]
fn bulk_transfer_survives_routes_changing_under_it_and_status_answers_throughout() -> Result<()> {
    let _serial = serial();
    // Encrypted, so every connection also installs and removes a data
    // session, and large frames are sealed.
    let password = format!("weft-churn-{}", std::process::id());
    let flags = |_: usize| {
        ["--no-discovery", "--password", &password]
            .map(String::from)
            .to_vec()
    };
    let net = testbed(&Plan {
        hosts: 6,
        cuts: &[(1, 4)],
        peers: &peers,
        containers: &[1, 4],
        flags: &flags,
        links: &[(1, 2), (2, 4), (4, 3), (3, 1), (1, 5), (1, 6)],
        prepare: &nothing,
    })?;
    let result = (|| {
        // Both ways, so h1's TAP and UDP threads are both busy with large
        // frames whenever its routes change.
        let secs = TRANSFER_SECS.to_string();
        let transfers = [
            net.start_transfer(TRAFFIC, 1, 4, &["--secs", &secs])?,
            net.start_transfer(TRAFFIC, 4, 1, &["--secs", &secs])?,
        ];
        let started = Instant::now();
        let done = AtomicBool::new(false);
        let slowest = Mutex::new((Duration::ZERO, String::new()));
        let until = started + Duration::from_secs(TRANSFER_SECS - 8);
        let (churn, flaps, polls) = std::thread::scope(|s| {
            let poller = s.spawn(|| poll_status(&net, &done, &slowest));
            let flappers = FLAPPING.map(|i| {
                let (net, done, flags) = (&net, &done, &flags);
                s.spawn(move || flap(net, i, until, done, flags))
            });
            let churn = churn(&net, until, &flags);
            done.store(true, Ordering::Relaxed);
            let joined = |r: std::thread::Result<Result<usize>>| {
                r.unwrap_or_else(|_| Err(anyhow!("a test thread panicked")))
            };
            let flaps: Result<Vec<usize>> =
                flappers.into_iter().map(|f| joined(f.join())).collect();
            (churn, flaps, joined(poller.join()))
        });
        let changes = churn?;
        let flaps: usize = flaps?.iter().sum();
        let polls = polls?;
        let (slowest, host) = slowest.into_inner().unwrap_or_default();
        eprintln!(
            "{changes} relay changes and {flaps} restarts of h5 and h6 under load; \
             {polls} `weft status` calls, slowest {slowest:?} on {host}"
        );
        ensure!(
            slowest < SLOW_STATUS,
            "`weft status` on {host} took {slowest:?}: the router stalled under the churn"
        );
        ensure!(
            changes >= 6,
            "only {changes} route changes fitted in the transfer; the test proves little"
        );
        for t in transfers {
            let bytes = t.finish(Duration::from_secs(TRANSFER_SECS + 60))?;
            ensure!(bytes > 0, "a transfer sent nothing");
        }
        let dp = net
            .report("h1")?
            .0
            .data_plane
            .context("h1 has no data plane")?;
        ensure!(
            dp.large_frames_sent > 0,
            "h1 sent no large (TSO) frames, so the test did not exercise them: {dp:?}"
        );
        for host in ["h1", "h4"] {
            let stalls = net.report(host)?.0.watchdog_stalls;
            ensure!(
                stalls.len() == 3 && stalls.values().all(|&n| n == 0),
                "{host}'s watchdog should watch three threads and have found none stuck: {stalls:?}"
            );
        }
        Ok(())
    })();
    net.with_evidence(result)
}

/// Cuts and heals h1's link to the relay it uses for h4, alternating
/// relays, until `until`; the third change kills the relay's router
/// instead and relaunches it. Returns how many times h1's route to h4
/// moved.
fn churn(net: &Net, until: Instant, flags: &dyn Fn(usize) -> Vec<String>) -> Result<usize> {
    let mut changes = 0;
    while Instant::now() < until {
        let relay = relay(net)?;
        let other = if relay == 2 { 3 } else { 2 };
        let kill = changes == 2;
        if kill {
            eprintln!("killing relay {} under load", h(relay));
            net.kill9(&h(relay))?;
        } else {
            eprintln!("cutting h1–{} under load", h(relay));
            net.cut("h1", &h(relay))?;
        }
        net.wait_until(
            &format!("h1 reaches h4 through {} instead", h(other)),
            CONVERGE,
            || Ok(net.report("h1")?.next_hop_nick("h4") == Some(h(other).as_str())),
        )?;
        changes += 1;
        if kill {
            launch(net, relay, &peers(relay), &flags(relay))?;
        } else {
            net.heal("h1")?;
            net.heal(&h(relay))?;
            // The diagonal stays cut.
            net.cut("h1", "h4")?;
        }
        net.wait_until(
            &format!("h1 and {} carry data again", h(relay)),
            CONVERGE,
            || {
                Ok(net.report("h1")?.data_path_usable(&h(relay))
                    && net.report(&h(relay))?.data_path_usable("h1"))
            },
        )?;
    }
    Ok(changes)
}

/// Kills host `i`'s router and relaunches it until `until` (or until
/// `done`, when the churn failed), each time waiting until h1 carries
/// data to it again. Returns how many times it did.
fn flap(
    net: &Net,
    i: usize,
    until: Instant,
    done: &AtomicBool,
    flags: &dyn Fn(usize) -> Vec<String>,
) -> Result<usize> {
    let mut flaps = 0;
    while Instant::now() < until && !done.load(Ordering::Relaxed) {
        net.kill9(&h(i))?;
        launch(net, i, &peers(i), &flags(i))?;
        net.wait_until(
            &format!("h1 carries data to {} again", h(i)),
            CONVERGE,
            || Ok(net.report("h1")?.data_path_usable(&h(i))),
        )?;
        flaps += 1;
    }
    Ok(flaps)
}

/// h1's relay towards h4: 2 or 3.
fn relay(net: &Net) -> Result<usize> {
    match net.report("h1")?.next_hop_nick("h4") {
        Some("h2") => Ok(2),
        Some("h3") => Ok(3),
        other => Err(anyhow!(
            "h1 should reach h4 through h2 or h3, not {other:?}"
        )),
    }
}

/// Runs `weft status` on h1 and h4 (the transfer's ends) until `done`,
/// failing at the first that does not answer; records the slowest.
fn poll_status(net: &Net, done: &AtomicBool, slowest: &Mutex<(Duration, String)>) -> Result<usize> {
    let mut calls = 0;
    while !done.load(Ordering::Relaxed) {
        for host in ["h1", "h4"] {
            let t = Instant::now();
            net.status_text(host)
                .with_context(|| format!("`weft status` on {host} during the churn"))?;
            let took = t.elapsed();
            calls += 1;
            if let Ok(mut s) = slowest.lock()
                && took > s.0
            {
                *s = (took, host.to_string());
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(calls)
}
