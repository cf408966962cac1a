//! A five-host weft mesh in network namespaces, to watch it work.
//!
//! ```text
//! sudo cargo run --release -p weft-tests --bin weft-demo [-- --hold]
//! ```
//!
//! Five namespaces share one underlay segment, but amber and ember cannot
//! reach each other (nftables drops their traffic). Each router is launched
//! knowing only its predecessor in the line amber–blue–coral–dusk–ember;
//! discovery then connects everyone directly except the cut pair, who reach
//! each other through a relay. A container (another namespace, attached to
//! the host's bridge with `weft attach`) on amber then pings one on ember:
//! the frames cross the mesh through the relay. The demo prints every
//! router's `weft status` and the ping, then tears everything down — also
//! on Ctrl-C or error.
//! With `--hold` it waits for Ctrl-C before tearing down, so you can look
//! around with `ip netns exec <namespace> weft status`.
//!
//! Needs root, iproute2 and nftables.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use weft_tests::netns::Net;

const HOSTS: [&str; 5] = ["amber", "blue", "coral", "dusk", "ember"];

/// The pair whose underlay path is cut.
const CUT: (&str, &str) = ("amber", "ember");

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn main() -> ExitCode {
    let hold = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--hold") => true,
        Some(other) => {
            eprintln!("usage: weft-demo [--hold]\nunknown argument {other:?}");
            return ExitCode::from(2);
        }
    };
    watch_signals();
    match run(hold) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(hold: bool) -> Result<()> {
    step("building weft and creating five network namespaces on one segment");
    let mut net = Net::new(&HOSTS)?;
    println!("   weft binary: {}", net.weft_path().display());
    for h in net.hosts() {
        println!("   {:<6} namespace {:<18} address {}", h.name, h.ns, h.addr);
    }
    check_interrupt()?;

    step(&format!(
        "cutting the underlay path between {} and {} with nftables",
        CUT.0, CUT.1
    ));
    net.cut(CUT.0, CUT.1)?;

    step("launching routers, each knowing only its predecessor in the line, all with one password");
    let password = net.tmp_dir().join("password");
    std::fs::write(&password, "weft demo password\n")?;
    let password = password.to_string_lossy().into_owned();
    let mut previous: Option<String> = None;
    for name in HOSTS {
        let mut args = vec![
            "--heartbeat-interval",
            "500ms",
            "--heartbeat-timeout",
            "2s",
            "--password-file",
            &password,
        ];
        if let Some(p) = &previous {
            args.push(p);
        }
        net.launch(name, &args)?;
        println!(
            "   {name}: weft launch {}",
            previous.as_deref().unwrap_or("(no peers)")
        );
        previous = Some(net.host(name).addr.to_string());
        check_interrupt()?;
    }

    step("waiting until every router reaches every other one");
    let start = Instant::now();
    wait(Duration::from_secs(60), || {
        for h in net.hosts() {
            let r = net.report(&h.name)?;
            let all = HOSTS.iter().all(|&n| n == h.name || r.reaches(n));
            // Discovery should connect every pair that has an underlay path.
            let direct = HOSTS
                .iter()
                .all(|&n| n == h.name || cut_pair(n, &h.name) || r.connected_to(n));
            if !(all && direct) {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", net.diagnostics()))?;
    println!("   converged in {:.1?}", start.elapsed());

    step("waiting until UDP works both ways on every connection (data paths up)");
    let start = Instant::now();
    wait(Duration::from_secs(30), || {
        for h in net.hosts() {
            let r = net.report(&h.name)?;
            let up = r.0.connections.iter().all(|c| {
                c.state != "established"
                    || c.data_path
                        .as_ref()
                        .is_some_and(|d| d.usable && d.pmtu_verified)
            });
            if !up {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", net.diagnostics()))?;
    println!(
        "   data paths up, path MTUs verified, in {:.1?}",
        start.elapsed()
    );

    for h in net.hosts() {
        step(&format!("weft status on {} (namespace {})", h.name, h.ns));
        print!("{}", net.status_text(&h.name)?);
    }

    let r = net.report(CUT.0)?;
    let via = r
        .next_hop_nick(CUT.1)
        .context("lost the route across the cut")?;
    step(&format!(
        "{} and {} cannot talk directly, so {} relays: {} -> {} -> {}",
        CUT.0, CUT.1, via, CUT.0, via, CUT.1
    ));

    let (from, to) = (
        ("apple", CUT.0, "10.40.0.1/24"),
        ("eel", CUT.1, "10.40.0.5/24"),
    );
    step(&format!(
        "attaching container {} to {} ({}) and container {} to {} ({})",
        from.0, from.1, from.2, to.0, to.1, to.2
    ));
    net.attach(from.1, from.0, &[from.2])?;
    net.attach(to.1, to.0, &[to.2])?;
    for host in [from.1, to.1] {
        let out = net.weft(host, &["ps"])?;
        println!("   weft ps on {host} (each container recorded under its id):");
        print!("{}", out.stdout);
    }
    check_interrupt()?;

    step(&format!(
        "{} pings {}: every frame crosses the mesh via {}",
        from.0, to.0, via
    ));
    let target = to.2.split('/').next().unwrap_or(to.2);
    let out = net
        .exec_ok(
            from.0,
            "ping",
            &["-c", "5", "-i", "0.2", "-W", "2", target],
            Duration::from_secs(20),
        )
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", net.diagnostics()))?;
    print!("{}", out.stdout);
    let relay = net.report(via)?;
    let dp = relay.0.data_plane.as_ref();
    println!(
        "   {} relayed {} datagrams between {} and {}: opened with one neighbour's session keys, re-sealed with the other's ({}, {} encrypted sessions)",
        via,
        dp.map_or(0, |d| d.datagrams_relayed),
        CUT.0,
        CUT.1,
        relay.0.encryption.mode,
        dp.map_or(0, |d| d.encrypted_sessions),
    );

    let stalls: u64 = net
        .hosts()
        .map(|h| net.report(&h.name))
        .collect::<Result<Vec<_>>>()?
        .iter()
        .flat_map(|r| r.0.watchdog_stalls.values())
        .sum();
    println!(
        "   the CLI reached every router through its control socket (HOME/weft.sock, mode 0660, root only); watchdog stalls on all routers: {stalls}"
    );

    if hold {
        step("holding the mesh; press Ctrl-C to tear it down");
        let h = net.hosts().next().context("no hosts")?;
        println!(
            "   look around with e.g.: ip netns exec {} {} status",
            h.ns,
            net.weft_path().display()
        );
        while !INTERRUPTED.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    step("tearing down: stopping routers, deleting namespaces");
    drop(net);
    println!("   done");
    Ok(())
}

fn cut_pair(x: &str, y: &str) -> bool {
    (x, y) == CUT || (y, x) == CUT
}

fn step(what: &str) {
    println!("\n== {what}");
}

/// Polls `pred` until it holds, the timeout passes or the user interrupts.
fn wait(timeout: Duration, mut pred: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        check_interrupt()?;
        match pred() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() >= deadline {
            match last_err {
                Some(e) => bail!("mesh did not converge within {timeout:?}; last error: {e:#}"),
                None => bail!("mesh did not converge within {timeout:?}"),
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// Turns SIGINT and SIGTERM into a flag, so the demo unwinds normally and
/// `Net`'s `Drop` removes the namespaces instead of the process dying with
/// them in place.
fn watch_signals() {
    std::thread::spawn(|| {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("weft-demo: cannot watch for Ctrl-C: {e}");
                return;
            }
        };
        rt.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                eprintln!("weft-demo: cannot watch for Ctrl-C");
                return;
            };
            loop {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                eprintln!("\nweft-demo: interrupted; cleaning up");
                INTERRUPTED.store(true, Ordering::Relaxed);
            }
        });
    });
}
