//! System tests: three real `weft` routers in network namespaces on one
//! underlay segment, with the alpha–charlie path cut by nftables where a
//! scenario needs a relay.
//!
//! ```text
//!   alpha ───── bravo ───── charlie
//!     └──────── ✂ ────────────┘      (cut in alpha and charlie)
//! ```
//!
//! Needs root, iproute2 and nftables (`.ci/run` installs them). Scenarios
//! run one at a time: they share the host's `ip netns` state and two cores.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use weft_tests::netns::{Net, Report, check_nothing_left, serial};

/// Faster failure detection than the defaults (1 s / 4 s) keeps the tests
/// short, with margin for a loaded CI machine.
const HEARTBEAT: [&str; 4] = ["--heartbeat-interval", "200ms", "--heartbeat-timeout", "1s"];

/// Gossip over a LAN settles in well under a second; this allows for a
/// loaded CI machine.
const CONVERGE: Duration = Duration::from_secs(20);

/// An unreachable peer is kept for 15 s (the core's `gc_grace`) before it
/// is forgotten.
const GC: Duration = Duration::from_secs(35);

/// Builds alpha, bravo, charlie; cuts alpha–charlie if asked; launches
/// bravo with no peers and alpha and charlie with bravo as their target.
fn line(cut: bool, extra: &[&str]) -> Result<Net> {
    let net = Net::new(&["alpha", "bravo", "charlie"])?;
    if cut {
        net.cut("alpha", "charlie")?;
    }
    let mut args: Vec<&str> = HEARTBEAT.to_vec();
    args.extend_from_slice(extra);
    net.launch("bravo", &args)?;
    let bravo = net.host("bravo").addr.to_string();
    args.push(&bravo);
    net.launch("alpha", &args)?;
    net.launch("charlie", &args)?;
    Ok(net)
}

/// Whether `r` knows `nick` as reachable through `via`.
fn routes_via(r: &Report, nick: &str, via: &str) -> bool {
    r.next_hop_nick(nick) == Some(via)
}

/// Whether `r` has any target (user or discovered) at `addr`.
fn has_target_at(r: &Report, addr: &str) -> bool {
    r.0.targets.iter().any(|t| target_host(&t.address) == addr)
}

/// The host part of a target address `ip:port`.
fn target_host(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(host, _)| host)
}

#[test]
fn gossip_routes_through_relay_and_forgets_dead_peers() -> Result<()> {
    let _serial = serial();
    let start = Instant::now();
    let net = line(true, &["--no-discovery"])?;
    let alpha_addr = net.host("alpha").addr.to_string();
    let charlie_addr = net.host("charlie").addr.to_string();

    let took = net.wait_until(
        "alpha and charlie reach each other via bravo",
        CONVERGE,
        || {
            Ok(routes_via(&net.report("charlie")?, "alpha", "bravo")
                && routes_via(&net.report("alpha")?, "charlie", "bravo"))
        },
    )?;
    eprintln!("converged in {took:?}");

    let c = net.report("charlie")?;
    let a = net.report("alpha")?;
    ensure!(!c.0.discovery && !a.0.discovery, "discovery should be off");
    let alpha_seen = c.peer("alpha").context("charlie lost alpha")?;
    ensure!(
        alpha_seen.hops == Some(2),
        "charlie should see alpha 2 hops away: {alpha_seen:?}"
    );
    ensure!(
        !c.any_connection_to("alpha") && !a.any_connection_to("charlie"),
        "alpha and charlie must not be directly connected:\n{:#?}\n{:#?}",
        c.0.connections,
        a.0.connections
    );
    ensure!(
        !has_target_at(&c, &alpha_addr) && !has_target_at(&a, &charlie_addr),
        "without discovery alpha and charlie must not target each other:\n{:#?}\n{:#?}",
        c.0.targets,
        a.0.targets
    );

    let text = net.status_text("charlie")?;
    eprintln!("weft status on charlie:\n{text}");
    let bravo_name = c.peer("bravo").context("charlie lost bravo")?.name.clone();
    ensure!(
        text.lines().any(|l| {
            let words: Vec<&str> = l
                .split(|ch: char| !(ch.is_alphanumeric() || ch == ':' || ch == '-'))
                .collect();
            (l.contains("alpha") || l.contains(&alpha_seen.name))
                && words.contains(&"reachable")
                && words.contains(&"via")
                && (words.contains(&"bravo") || l.contains(&bravo_name))
        }),
        "`weft status` on charlie should show alpha as reachable via bravo:\n{text}"
    );

    // Kill the relay outright: no goodbye, the kernel just closes its
    // sockets. Each side must drop the route to the other, then forget it.
    net.kill9("bravo")?;
    let killed = Instant::now();
    net.wait_until(
        "alpha and charlie see each other unreachable",
        CONVERGE,
        || {
            let c = net.report("charlie")?;
            let a = net.report("alpha")?;
            Ok(c.peer("alpha").is_none_or(|p| !p.reachable)
                && a.peer("charlie").is_none_or(|p| !p.reachable))
        },
    )?;
    eprintln!("routes lost {:?} after kill -9", killed.elapsed());
    net.wait_until("alpha and charlie forget each other and bravo", GC, || {
        let c = net.report("charlie")?;
        let a = net.report("alpha")?;
        Ok(c.peer("alpha").is_none()
            && c.peer("bravo").is_none()
            && a.peer("charlie").is_none()
            && a.peer("bravo").is_none())
    })?;
    eprintln!("peers forgotten {:?} after kill -9", killed.elapsed());
    eprintln!("scenario took {:?}", start.elapsed());
    Ok(())
}

#[test]
fn discovery_across_a_cut_keeps_failing_while_relay_routes() -> Result<()> {
    let _serial = serial();
    let start = Instant::now();
    let net = line(true, &[])?;
    let alpha_addr = net.host("alpha").addr.to_string();

    let took = net.wait_until(
        "charlie's discovered target alpha has failed and alpha is reachable via bravo",
        Duration::from_secs(40),
        || {
            let c = net.report("charlie")?;
            let failing = c.0.targets.iter().any(|t| {
                target_host(&t.address) == alpha_addr
                    && t.origin == "discovered"
                    && t.failures > 0
                    && (t.state == "retrying" || t.state == "connecting")
            });
            Ok(failing && routes_via(&c, "alpha", "bravo"))
        },
    )?;
    eprintln!("discovered target failing after {took:?}");

    let c = net.report("charlie")?;
    let a = net.report("alpha")?;
    ensure!(c.0.discovery && a.0.discovery, "discovery should be on");
    let target =
        c.0.targets
            .iter()
            .find(|t| target_host(&t.address) == alpha_addr)
            .context("target vanished")?;
    eprintln!("charlie's target for alpha: {target:?}");
    ensure!(
        routes_via(&a, "charlie", "bravo"),
        "alpha should reach charlie via bravo: {:?}",
        a.peer("charlie")
    );
    ensure!(
        !c.connected_to("alpha") && !a.connected_to("charlie"),
        "the cut must keep alpha and charlie from connecting directly"
    );
    eprintln!("scenario took {:?}", start.elapsed());
    Ok(())
}

#[test]
fn discovery_connects_peers_directly() -> Result<()> {
    let _serial = serial();
    let start = Instant::now();
    let net = line(false, &[])?;

    let took = net.wait_until(
        "alpha and charlie connect directly after discovering each other",
        CONVERGE,
        || {
            let c = net.report("charlie")?;
            let a = net.report("alpha")?;
            Ok(c.connected_to("alpha")
                && a.connected_to("charlie")
                && c.peer("alpha").is_some_and(|p| p.hops == Some(1))
                && routes_via(&c, "alpha", "alpha"))
        },
    )?;
    eprintln!("direct connection after {took:?}");

    eprintln!("scenario took {:?}", start.elapsed());
    Ok(())
}

#[test]
fn teardown_on_panic_stops_routers_and_removes_namespaces() -> Result<()> {
    let _serial = serial();
    let mut left: Option<(Vec<String>, u32, PathBuf)> = None;
    let result = catch_unwind(AssertUnwindSafe(|| {
        let net = Net::new(&["solo"]).expect("building the topology");
        net.launch("solo", &[]).expect("launching");
        left = Some((
            net.namespaces().to_vec(),
            net.pid("solo").expect("pid file"),
            net.tmp_dir().to_path_buf(),
        ));
        panic!("deliberate panic with a router running");
    }));
    ensure!(result.is_err(), "the closure should have panicked");
    let (namespaces, pid, tmp) = left.context("the topology was never built")?;

    check_nothing_left(&namespaces, &[pid], &tmp)
}
