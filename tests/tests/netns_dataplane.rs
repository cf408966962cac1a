//! System tests of the data plane: real `weft` routers in network
//! namespaces ("hosts", `h1`…`h4`, on one underlay segment), each with a
//! "container" namespace (`c1`…`c4`, overlay address `10.40.0.<n>/24`)
//! attached to its bridge with `weft attach`. Traffic is real: `ping`, and
//! the `weft-traffic` helper (`tests/src/netns/traffic.rs`) for TCP
//! transfers checked with SHA-256, UDP broadcasts and UDP probes.
//!
//! ```text
//!  c1      c2          two hosts: ping, 100 MB transfer, restart, MTU
//!  │       │
//!  h1 ──── h2
//!
//!  h1 ── h2 ── h3      three hosts, h1–h3 cut: relayed through h2
//!   └─── ✂ ────┘
//!
//!  h1 ── h2            four hosts in a square, diagonal h1–h4 cut:
//!  │  ✂   │            the relay h1 uses for h4 is killed, traffic
//!  h3 ── h4            moves to the other one
//! ```
//!
//! Needs root, iproute2, nftables and ping (`.ci/run` installs them); the
//! tests fail, saying what to install, rather than skip. Scenarios run one
//! at a time: they share two cores, and timing matters to some.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use weft_tests::netns::testbed::{
    CONVERGE, HEARTBEAT, Plan, no_flags, nothing, ping, ping_all, testbed, wait_ping,
};
use weft_tests::netns::{Net, c, check_nothing_left, h, overlay, serial, traffic::unix_ms};

/// The traffic helper, built by cargo for this test.
const TRAFFIC: &str = env!("CARGO_BIN_EXE_weft-traffic");

/// Where the broadcast and probe tests send UDP.
const UDP_PORT: u16 = 9999;

/// Two hosts, each with a container; h2 is launched with h1 as its peer.
fn pair(prepare: &dyn Fn(&Net) -> Result<()>) -> Result<Net> {
    testbed(&Plan {
        hosts: 2,
        cuts: &[],
        peers: &|i| if i == 1 { vec![] } else { vec![1] },
        containers: &[1, 2],
        flags: &no_flags,
        links: &[(1, 2)],
        prepare,
    })
}

/// The data-plane counters of host `i`'s router.
fn data_plane(net: &Net, i: usize) -> Result<weft_router::core::status::DataPlaneStatus> {
    net.report(&h(i))?
        .0
        .data_plane
        .ok_or_else(|| anyhow::anyhow!("{} reports no data plane", h(i)))
}

#[test]
fn two_hosts_ping_and_transfer_100_mb() -> Result<()> {
    let _serial = serial();
    let start = Instant::now();
    let net = pair(&nothing)?;
    let result = (|| {
        ping_all(&net, 1, 2, 3)?;
        ping_all(&net, 2, 1, 3)?;
        net.transfer(TRAFFIC, 1, 2, 100 << 20, Duration::from_secs(90))?;
        net.transfer(TRAFFIC, 2, 1, 10 << 20, Duration::from_secs(30))?;
        // The bulk went the offloaded way: TCP super-segments from the TAP,
        // carried whole and written whole (not one TAP read per frame).
        let (sent, got) = (data_plane(&net, 1)?, data_plane(&net, 2)?);
        eprintln!(
            "h1 sent {} frames, {} of them large; h2 delivered {} large frames, abandoned {}",
            sent.frames_sent,
            sent.large_frames_sent,
            got.large_frames_delivered,
            got.reassembly_abandoned
        );
        ensure!(
            sent.large_frames_sent > 0 && got.large_frames_delivered > 0,
            "no TCP super-segments crossed the mesh: the TAP offload path is not in use"
        );
        Ok(())
    })();
    eprintln!("scenario took {:?}", start.elapsed());
    net.with_evidence(result)
}

#[test]
fn three_hosts_relay_through_h2() -> Result<()> {
    let _serial = serial();
    let start = Instant::now();
    let net = testbed(&Plan {
        hosts: 3,
        cuts: &[(1, 3)],
        peers: &|i| if i == 2 { vec![] } else { vec![2] },
        containers: &[1, 2, 3],
        flags: &no_flags,
        links: &[(1, 2), (2, 3)],
        prepare: &nothing,
    })?;
    let result = (|| {
        ping_all(&net, 1, 3, 3)?;
        ping_all(&net, 3, 1, 3)?;
        let r = net.report("h1")?;
        ensure!(
            r.next_hop_nick("h3") == Some("h2") && !r.connected_to("h3"),
            "h1 should reach h3 only through h2: {:?}\n{:#?}",
            r.peer("h3"),
            r.0.connections
        );
        let text = net.status_text("h1")?;
        eprintln!("weft status on h1:\n{text}");
        let h2_name = r.peer("h2").context("h1 lost h2")?.name.clone();
        let h3_name = r.peer("h3").context("h1 lost h3")?.name.clone();
        ensure!(
            text.lines().any(|l| {
                let words: Vec<&str> = l
                    .split(|ch: char| !(ch.is_alphanumeric() || ch == ':' || ch == '-'))
                    .collect();
                (words.contains(&"h3") || l.contains(&h3_name))
                    && words.contains(&"via")
                    && (words.contains(&"h2") || l.contains(&h2_name))
            }),
            "`weft status` on h1 should show h3 reached via h2:\n{text}"
        );
        Ok(())
    })();
    eprintln!("scenario took {:?}", start.elapsed());
    net.with_evidence(result)
}

/// Counts, with nftables in namespace `name`, the ARP requests and UDP
/// datagrams to [`UDP_PORT`] that container 1 sent, as they pass `device`
/// at `hook` (`ingress` or `egress`), in counters `arp_<dir>` and
/// `udp_<dir>`. `only` narrows the match (nftables syntax; may be empty).
fn install_counters(
    net: &Net,
    name: &str,
    dir: &str,
    hook: &str,
    device: &str,
    only: &str,
) -> Result<()> {
    let src = overlay(1);
    let nft = |rule: String| -> Result<()> {
        let args: Vec<&str> = rule.split_whitespace().collect();
        net.exec_ok(name, "nft", &args, Duration::from_secs(10))?;
        Ok(())
    };
    nft("add table netdev weft_count".into())?;
    nft(format!("add counter netdev weft_count arp_{dir}"))?;
    nft(format!("add counter netdev weft_count udp_{dir}"))?;
    nft(format!(
        "add chain netdev weft_count {dir} {{ type filter hook {hook} device {device} priority 0 ; }}"
    ))?;
    nft(format!(
        "add rule netdev weft_count {dir} {only} arp operation request arp saddr ip {src} counter name arp_{dir}"
    ))?;
    nft(format!(
        "add rule netdev weft_count {dir} {only} ip saddr {src} udp dport {UDP_PORT} counter name udp_{dir}"
    ))
}

/// The packet count of nftables counter `counter` in namespace `name`.
fn counter(net: &Net, name: &str, counter: &str) -> Result<u64> {
    let out = net.exec_ok(
        name,
        "nft",
        &["-j", "list", "counters", "table", "netdev", "weft_count"],
        Duration::from_secs(10),
    )?;
    let v: Value = serde_json::from_str(&out.stdout)
        .with_context(|| format!("parsing nft output:\n{}", out.stdout))?;
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|o| o["counter"]["name"] == counter)
        .and_then(|o| o["counter"]["packets"].as_u64())
        .with_context(|| format!("no counter {counter} in {name}:\n{}", out.stdout))
}

#[test]
fn four_hosts_arp_and_broadcast_reach_every_container_once() -> Result<()> {
    const BROADCASTS: u64 = 50;
    let _serial = serial();
    let start = Instant::now();
    // Host 1 is everyone's first peer; discovery connects the rest.
    let all_pairs: Vec<(usize, usize)> = (1..=4)
        .flat_map(|x| (x + 1..=4).map(move |y| (x, y)))
        .collect();
    // Counting must start before the containers say anything, so
    // `testbed` (which pings) gets none: they are attached here.
    let mut net = testbed(&Plan {
        hosts: 4,
        cuts: &[],
        peers: &|i| if i == 1 { vec![] } else { vec![1] },
        containers: &[],
        flags: &no_flags,
        links: &all_pairs,
        prepare: &nothing,
    })?;
    let result = (|| {
        for i in 1..=4 {
            net.attach(&h(i), &c(i), &[&format!("{}/24", overlay(i))])?;
        }
        // What c1 sends, and what reaches each other container.
        install_counters(&net, &c(1), "sent", "egress", "ethwe", "")?;
        for i in 2..=4 {
            install_counters(&net, &c(i), "got", "ingress", "ethwe", "")?;
        }
        // c1 itself sees its own broadcasts on ingress (the kernel loops
        // them back locally), so echoes are caught where they would enter
        // h1's bridge: frames from c1's MAC that weft writes to its TAP.
        let link = net.exec_ok(
            &c(1),
            "ip",
            &["-j", "link", "show", "dev", "ethwe"],
            Duration::from_secs(10),
        )?;
        let mac = serde_json::from_str::<Value>(&link.stdout)?[0]["address"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("no MAC for c1's ethwe in {}", link.stdout))?;
        install_counters(
            &net,
            "h1",
            "back",
            "ingress",
            "weft-tap",
            &format!("ether saddr {mac}"),
        )?;
        // A control: c2's ARP reply to c1 must be seen there.
        for rule in [
            "add counter netdev weft_count arp_reply".to_string(),
            format!(
                "add rule netdev weft_count back arp operation reply arp daddr ip {} counter name arp_reply",
                overlay(1)
            ),
        ] {
            let args: Vec<&str> = rule.split_whitespace().collect();
            net.exec_ok("h1", "nft", &args, Duration::from_secs(10))?;
        }

        // One ARP request (c1 asking for c2), then broadcast datagrams.
        ping_all(&net, 1, 2, 1)?;
        let sent = net.exec_ok(
            &c(1),
            TRAFFIC,
            &[
                "udp-send",
                &format!("10.40.0.255:{UDP_PORT}"),
                "--count",
                &BROADCASTS.to_string(),
                "--interval-ms",
                "5",
                "--broadcast",
            ],
            Duration::from_secs(20),
        )?;
        eprintln!("c1 sent: {}", sent.stdout.trim());
        // Delivery takes milliseconds; leave time for stragglers and
        // duplicates to show up.
        std::thread::sleep(Duration::from_secs(2));

        let arp_sent = counter(&net, &c(1), "arp_sent")?;
        let udp_sent = counter(&net, &c(1), "udp_sent")?;
        eprintln!("c1 sent {arp_sent} ARP requests and {udp_sent} broadcast datagrams");
        ensure!(
            arp_sent >= 1 && udp_sent == BROADCASTS,
            "c1 should have sent at least one ARP request and {BROADCASTS} datagrams, \
             sent {arp_sent} and {udp_sent}"
        );
        let mut wrong = Vec::new();
        let mut check = |what: String, arp: u64, udp: u64, want_arp: u64, want_udp: u64| {
            eprintln!(
                "{what}: {arp} ARP requests (want {want_arp}), {udp} datagrams (want {want_udp})"
            );
            if (arp, udp) != (want_arp, want_udp) {
                wrong.push(format!(
                    "{what}: {arp} ARP requests (want {want_arp}), {udp} datagrams (want {want_udp})"
                ));
            }
        };
        for i in 2..=4 {
            let (arp, udp) = (
                counter(&net, &c(i), "arp_got")?,
                counter(&net, &c(i), "udp_got")?,
            );
            check(format!("{} received", c(i)), arp, udp, arp_sent, udp_sent);
        }
        let (arp, udp) = (
            counter(&net, "h1", "arp_back")?,
            counter(&net, "h1", "udp_back")?,
        );
        check("echoed back to h1".into(), arp, udp, 0, 0);
        let replies = counter(&net, "h1", "arp_reply")?;
        ensure!(
            replies >= 1,
            "h1's TAP should have seen c2's ARP reply to c1 come in from weft (saw {replies}), \
             else the echo counters there prove nothing"
        );
        ensure!(
            wrong.is_empty(),
            "broadcasts from c1 did not reach every other container exactly once:\n{}",
            wrong.join("\n")
        );
        Ok(())
    })();
    eprintln!("scenario took {:?}", start.elapsed());
    net.with_evidence(result)
}

/// The reply times (Unix ms) in a `udp-probe` output.
fn reply_times(out: &str) -> Vec<u64> {
    out.lines()
        .filter_map(|l| l.strip_prefix("reply "))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect()
}

#[test]
fn four_hosts_square_traffic_survives_killed_relay() -> Result<()> {
    let _serial = serial();
    let start = Instant::now();
    // Without discovery the mesh is exactly the square.
    let net = testbed(&Plan {
        hosts: 4,
        cuts: &[(1, 4)],
        peers: &|i| match i {
            1 => vec![],
            2 | 3 => vec![1],
            _ => vec![2, 3],
        },
        containers: &[1, 4],
        flags: &|_| vec!["--no-discovery".into()],
        links: &[(1, 2), (2, 4), (4, 3), (3, 1)],
        prepare: &nothing,
    })?;
    let result = (|| {
        let mut echo = net.spawn(
            &c(4),
            TRAFFIC,
            &["udp-echo", &format!("0.0.0.0:{UDP_PORT}")],
        )?;
        echo.wait_for_line("listening", Duration::from_secs(10))?;
        let probe = net.spawn(
            &c(1),
            TRAFFIC,
            &[
                "udp-probe",
                &format!("{}:{UDP_PORT}", overlay(4)),
                "--secs",
                "60",
                "--interval-ms",
                "20",
            ],
        )?;
        net.wait_until("the probe from c1 to c4 gets 25 replies", CONVERGE, || {
            Ok(reply_times(&probe.stdout()).len() >= 25)
        })?;

        let relay = net
            .report("h1")?
            .next_hop_nick("h4")
            .context("h1 has no route to h4")?
            .to_string();
        let other = if relay == "h2" { "h3" } else { "h2" };
        ensure!(
            relay == "h2" || relay == "h3",
            "h1 should reach h4 via h2 or h3, not {relay}"
        );
        eprintln!("h1 reaches h4 via {relay}; killing its router");
        let killed_at = unix_ms();
        net.kill9(&relay)?;

        // Resumed: half a second of replies after the kill.
        let resumed = net.wait_until(
            &format!("the probe gets replies again after killing {relay}"),
            Duration::from_secs(20),
            || {
                Ok(reply_times(&probe.stdout())
                    .iter()
                    .filter(|&&t| t > killed_at)
                    .count()
                    >= 25)
            },
        );
        let out = probe.stop();
        resumed.with_context(|| {
            format!(
                "probe output after the kill:\n{}",
                out.stdout
                    .lines()
                    .filter(|l| reply_times(l).first().is_none_or(|&t| t + 1000 > killed_at))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })?;
        let times = reply_times(&out.stdout);
        let before = times.iter().copied().filter(|&t| t <= killed_at).max();
        // The longest silence from a second before the kill on.
        let gap = times
            .windows(2)
            .filter(|w| w[1] + 1000 > killed_at)
            .map(|w| w[1].saturating_sub(w[0]))
            .max()
            .unwrap_or(0);
        let first_after = times.iter().copied().filter(|&t| t > killed_at).min();
        eprintln!(
            "traffic gap after killing relay {relay}: {gap} ms (last reply before the kill \
             {} ms before it, first after it {} ms after it; {} replies in all)",
            before.map_or("-".into(), |t| (killed_at - t).to_string()),
            first_after.map_or("-".into(), |t| (t - killed_at).to_string()),
            times.len()
        );
        ensure!(
            gap < 15_000,
            "traffic stopped for {gap} ms after killing relay {relay}"
        );
        let now = net.report("h1")?;
        ensure!(
            now.next_hop_nick("h4") == Some(other),
            "h1 should now reach h4 via {other}: {:?}",
            now.peer("h4")
        );
        drop(echo);
        Ok(())
    })();
    eprintln!("scenario took {:?}", start.elapsed());
    net.with_evidence(result)
}

/// The ifindex of interface `dev` in host `name`, and its master's name.
fn link_info(net: &Net, name: &str, dev: &str) -> Result<(u64, Option<String>)> {
    let out = net.exec_ok(
        name,
        "ip",
        &["-j", "link", "show", "dev", dev],
        Duration::from_secs(10),
    )?;
    let v: Value = serde_json::from_str(&out.stdout)
        .with_context(|| format!("parsing `ip -j link show dev {dev}`:\n{}", out.stdout))?;
    let link = &v[0];
    let index = link["ifindex"]
        .as_u64()
        .with_context(|| format!("no ifindex for {dev} in {name}: {}", out.stdout))?;
    Ok((index, link["master"].as_str().map(str::to_string)))
}

/// The interfaces enslaved to bridge `bridge` in host `name`.
fn bridge_ports(net: &Net, name: &str, bridge: &str) -> Result<Vec<String>> {
    let out = net.exec_ok(
        name,
        "ip",
        &["-j", "link", "show", "master", bridge],
        Duration::from_secs(10),
    )?;
    let v: Value = serde_json::from_str(&out.stdout)
        .with_context(|| format!("parsing `ip -j link show master {bridge}`"))?;
    let mut ports: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect();
    ports.sort();
    Ok(ports)
}

#[test]
fn restarted_router_adopts_its_bridge_and_traffic_returns() -> Result<()> {
    let _serial = serial();
    let start = Instant::now();
    let net = pair(&nothing)?;
    let result = (|| {
        let (bridge, _) = link_info(&net, "h1", "weft")?;
        let ports = bridge_ports(&net, "h1", "weft")?;
        eprintln!("h1: bridge weft ifindex {bridge}, ports {ports:?}");
        ensure!(
            ports.iter().any(|p| p == "weft-tap") && ports.len() == 2,
            "h1's bridge should hold weft-tap and c1's veth: {ports:?}"
        );

        // h1 was launched with no peers: only h2 redials it, so nothing is
        // done on h2 to bring the pair back.
        net.kill9("h1")?;
        let killed = Instant::now();
        let left = bridge_ports(&net, "h1", "weft")?;
        eprintln!("h1 after kill -9: bridge ports {left:?}");
        net.launch("h1", &HEARTBEAT)?;
        eprintln!("relaunched h1 {:?} after the kill", killed.elapsed());

        let (bridge_after, _) = link_info(&net, "h1", "weft")?;
        let ports_after = bridge_ports(&net, "h1", "weft")?;
        eprintln!("h1 relaunched: bridge weft ifindex {bridge_after}, ports {ports_after:?}");
        ensure!(
            bridge_after == bridge,
            "h1 should adopt its bridge (ifindex {bridge}), not make a new one ({bridge_after})"
        );
        ensure!(
            ports_after == ports,
            "after the restart h1's bridge should hold the same ports as before: \
             {ports:?} then {ports_after:?}"
        );
        let took = wait_ping(&net, 1, 2)?;
        eprintln!(
            "c1 reaches c2 {:?} after the kill ({took:?} after relaunch returned)",
            killed.elapsed()
        );
        ping_all(&net, 1, 2, 3)?;
        ping_all(&net, 2, 1, 3)
    })();
    eprintln!("scenario took {:?}", start.elapsed());
    net.with_evidence(result)
}

#[test]
fn a_stopped_router_leaves_its_bridge_so_local_containers_keep_talking() -> Result<()> {
    let _serial = serial();
    let start = Instant::now();
    let mut net = pair(&nothing)?;
    let result = (|| {
        // A second container on h1, beside c1.
        net.attach("h1", &c(3), &[&format!("{}/24", overlay(3))])?;
        let net = &net;
        wait_ping(net, 1, 3)?;
        wait_ping(net, 1, 2)?;
        let (bridge, _) = link_info(net, "h1", "weft")?;

        let out = net.weft("h1", &["stop"])?;
        ensure!(out.status.success(), "weft stop failed: {}", out.stderr);
        let ports = bridge_ports(net, "h1", "weft")?;
        eprintln!("h1 stopped: bridge weft ports {ports:?}");
        ensure!(
            ports.len() == 2 && !ports.iter().any(|p| p == "weft-tap"),
            "after stop h1's bridge should hold both containers' veths and no TAP: {ports:?}"
        );
        ping_all(net, 1, 3, 3)?;
        ensure!(
            !ping(net, 1, &overlay(2), 1)?.status.success(),
            "c1 reached c2 on another host with h1's router stopped"
        );

        net.launch("h1", &HEARTBEAT)?;
        let (bridge_after, _) = link_info(net, "h1", "weft")?;
        ensure!(
            bridge_after == bridge,
            "the relaunched router should adopt its bridge (ifindex {bridge}), not {bridge_after}"
        );
        wait_ping(net, 1, 2)?;
        ping_all(net, 3, 2, 3)?;
        ping_all(net, 1, 3, 3)
    })();
    eprintln!("scenario took {:?}", start.elapsed());
    net.with_evidence(result)
}

#[test]
fn small_underlay_mtu_is_discovered_and_bulk_tcp_still_works() -> Result<()> {
    const UNDERLAY_MTU: u32 = 1200;
    // The outer IPv4 and UDP headers.
    const MAX_PMTU: usize = UNDERLAY_MTU as usize - 28;
    let _serial = serial();
    let start = Instant::now();
    let net = pair(&|net| {
        net.set_underlay_mtu("h1", UNDERLAY_MTU)?;
        net.set_underlay_mtu("h2", UNDERLAY_MTU)
    })?;
    let result = (|| {
        for i in 1..=2 {
            let out = net.exec_ok(
                &c(i),
                "cat",
                &["/sys/class/net/ethwe/mtu"],
                Duration::from_secs(5),
            )?;
            eprintln!("{} overlay MTU {}", c(i), out.stdout.trim());
        }
        net.transfer(TRAFFIC, 1, 2, 20 << 20, Duration::from_secs(60))?;
        net.transfer(TRAFFIC, 2, 1, 20 << 20, Duration::from_secs(60))?;
        for (x, y) in [("h1", "h2"), ("h2", "h1")] {
            let r = net.report(x)?;
            let dp =
                r.0.connections
                    .iter()
                    .filter(|c| c.nickname.as_deref() == Some(y) && c.state == "established")
                    .find_map(|c| c.data_path.clone())
                    .with_context(|| format!("{x} has no data path to {y}"))?;
            eprintln!("{x} -> {y} data path: {dp:?}");
            ensure!(
                dp.pmtu <= MAX_PMTU,
                "{x}'s path MTU to {y} is {} over a {UNDERLAY_MTU}-byte underlay \
                 (at most {MAX_PMTU} fits): {dp:?}",
                dp.pmtu
            );
        }
        Ok(())
    })();
    eprintln!("scenario took {:?}", start.elapsed());
    net.with_evidence(result)
}

#[test]
fn teardown_on_panic_removes_containers_and_their_processes() -> Result<()> {
    let _serial = serial();
    let mut left: Option<(Vec<String>, Vec<u32>, PathBuf)> = None;
    let result = catch_unwind(AssertUnwindSafe(|| {
        let net = pair(&nothing).expect("building the testbed");
        let echo = net
            .spawn(
                &c(2),
                TRAFFIC,
                &["udp-echo", &format!("0.0.0.0:{UDP_PORT}")],
            )
            .expect("starting udp-echo");
        let mut pids = vec![echo.id()];
        pids.extend(["h1", "h2"].iter().map(|h| net.pid(h).expect("pid file")));
        // Forgotten, so only the namespace teardown can stop it.
        std::mem::forget(echo);
        left = Some((net.namespaces().to_vec(), pids, net.tmp_dir().to_path_buf()));
        panic!("deliberate panic with routers, containers and a helper running");
    }));
    ensure!(result.is_err(), "the closure should have panicked");
    let (namespaces, pids, tmp) = left.context("the testbed was never built")?;
    ensure!(
        namespaces.len() == 5,
        "expected switch, 2 hosts, 2 containers: {namespaces:?}"
    );

    check_nothing_left(&namespaces, &pids, &tmp)
}
