//! System tests of what an operator sees: `weft status` and its views,
//! `--dot`, the status listener (report, metrics, the topology page in
//! headless Chromium), `connect --replace` with `launch --resume`, and
//! `expose`/`hide`, on three real routers in network namespaces.
//!
//! ```text
//!   alpha ───── bravo ───── charlie    (alpha and charlie dial bravo;
//!     └───────────────────────┘         discovery joins them directly)
//! ```
//!
//! Needs root, iproute2 and nftables; the browser test also needs
//! Chromium (Debian's `chromium`, which `.ci/run` installs) and says
//! loudly that it skipped if the binary is missing.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use weft_router::core::status::RouterStatus;
use weft_tests::netns::{Net, serial};

const HEARTBEAT: [&str; 4] = ["--heartbeat-interval", "200ms", "--heartbeat-timeout", "1s"];

const CONVERGE: Duration = Duration::from_secs(30);

const STATUS_ADDR: &str = "127.0.0.1:6782";

/// Three routers, all connected to each other once discovery has run.
fn mesh() -> Result<Net> {
    let net = Net::new(&["alpha", "bravo", "charlie"])?;
    net.launch("bravo", &HEARTBEAT)?;
    let bravo = net.host("bravo").addr.to_string();
    let mut args = HEARTBEAT.to_vec();
    args.push(&bravo);
    net.launch("alpha", &args)?;
    net.launch("charlie", &args)?;
    net.wait_until(
        "every router has two established connections",
        CONVERGE,
        || {
            for h in ["alpha", "bravo", "charlie"] {
                let r = net.report(h)?;
                let others: Vec<&str> = ["alpha", "bravo", "charlie"]
                    .into_iter()
                    .filter(|o| *o != h)
                    .collect();
                if !others.iter().all(|o| r.connected_to(o) && r.reaches(o)) {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )?;
    Ok(net)
}

fn weft_ok(net: &Net, host: &str, args: &[&str]) -> Result<String> {
    let out = net.weft(host, args)?;
    ensure!(
        out.status.success(),
        "`weft {}` on {host} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        out.stdout,
        out.stderr
    );
    Ok(out.stdout)
}

#[test]
fn status_views_dot_report_and_metrics() -> Result<()> {
    let _serial = serial();
    let net = mesh()?;

    let summary = weft_ok(&net, "alpha", &["status"])?;
    eprintln!("weft status on alpha:\n{summary}");
    for line in [
        "Encryption: disabled",
        "Connections: 2 (2 established)",
        "Peers: 3 (3 reachable)",
    ] {
        ensure!(summary.contains(line), "{line:?} missing:\n{summary}");
    }
    let peers = weft_ok(&net, "alpha", &["status", "peers"])?;
    ensure!(peers.lines().count() == 3, "three peers expected:\n{peers}");
    for nick in ["alpha", "bravo", "charlie"] {
        ensure!(
            peers.contains(&format!("({nick})")),
            "{nick} missing:\n{peers}"
        );
    }
    let connections = weft_ok(&net, "alpha", &["status", "connections"])?;
    ensure!(
        connections
            .lines()
            .filter(|l| l.contains("established"))
            .count()
            == 2,
        "two established connections expected:\n{connections}"
    );
    let targets = weft_ok(&net, "alpha", &["status", "targets"])?;
    ensure!(
        targets.contains(&net.host("bravo").addr.to_string()),
        "bravo is alpha's target:\n{targets}"
    );
    let dot = weft_ok(&net, "alpha", &["status", "--dot"])?;
    ensure!(
        dot.starts_with("graph weft {") && dot.matches(" -- ").count() == 3,
        "a triangle expected:\n{dot}"
    );

    let (code, report) = net.http_get("alpha", STATUS_ADDR, "/report")?;
    ensure!(code == 200, "GET /report answered {code}");
    let report: RouterStatus = serde_json::from_str(&report).context("parsing /report")?;
    ensure!(report.peers.len() == 3, "three peers in /report");
    ensure!(report.encryption.mode == "disabled");
    ensure!(
        report
            .gossip
            .iter()
            .any(|g| g.channel == "topology" && g.sent_bytes > 0),
        "gossip bytes are counted: {:?}",
        report.gossip
    );

    let (code, metrics) = net.http_get("alpha", STATUS_ADDR, "/metrics")?;
    ensure!(code == 200, "GET /metrics answered {code}");
    for line in [
        "weft_connections{state=\"established\"} 2",
        "weft_peers{reachable=\"true\"} 2",
        "weft_encryption_replay_drops_total 0",
    ] {
        ensure!(
            metrics.lines().any(|l| l == line),
            "{line} missing:\n{metrics}"
        );
    }
    ensure!(
        metrics.contains("weft_path_mtu_bytes{") && metrics.contains("weft_gossip_bytes_total{"),
        "per-connection MTU and gossip bytes expected:\n{metrics}"
    );
    let (code, text) = net.http_get("alpha", STATUS_ADDR, "/status")?;
    ensure!(
        code == 200 && text.contains("Peers: 3"),
        "GET /status: {code}\n{text}"
    );
    let (code, _) = net.http_get("alpha", STATUS_ADDR, "/nope")?;
    ensure!(code == 404, "an unknown page is 404, got {code}");
    Ok(())
}

/// Headless Chromium, or `None` (with a loud message) if it is missing.
fn chromium() -> Option<&'static str> {
    for name in ["chromium", "chromium-browser"] {
        let found = Command::new(name)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if found {
            return Some(name);
        }
    }
    eprintln!(
        "\n!!!!! SKIPPED the topology page browser test: no `chromium` binary; install it with `apt-get install -y chromium` (.ci/run does) !!!!!\n"
    );
    None
}

#[test]
fn topology_page_renders_every_peer_in_chromium() -> Result<()> {
    let _serial = serial();
    let Some(browser) = chromium() else {
        return Ok(());
    };
    let net = mesh()?;
    let profile = net.tmp_dir().join("chromium-profile");
    let profile_arg = format!("--user-data-dir={}", profile.display());
    let url = format!("http://{STATUS_ADDR}/");
    // The page fetches /report and draws it after loading; virtual time
    // lets the fetch and the first refresh finish before the DOM is dumped.
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        &profile_arg,
        "--virtual-time-budget=5000",
        "--dump-dom",
        &url,
    ];
    let mut dom = String::new();
    net.wait_until(
        "the page shows three peers",
        Duration::from_secs(90),
        || {
            let out = net.exec("alpha", browser, &args, Duration::from_secs(60))?;
            dom = out.stdout;
            Ok(dom.contains("data-peers=\"3\""))
        },
    )
    .with_context(|| format!("last DOM:\n{dom}"))?;
    for nick in ["alpha", "bravo", "charlie"] {
        ensure!(
            dom.contains(&format!("data-nickname=\"{nick}\"")),
            "no node for {nick} in the rendered page:\n{dom}"
        );
    }
    ensure!(
        dom.matches("class=\"edge\"").count() == 3,
        "three edges expected:\n{dom}"
    );
    ensure!(
        dom.contains("data-state=\"established\"") && dom.contains("data-route=\"true\""),
        "established edges and the route from alpha are drawn:\n{dom}"
    );
    Ok(())
}

#[test]
fn replace_resume_expose_and_hide() -> Result<()> {
    let _serial = serial();
    let net = mesh()?;
    let bravo = format!("{}:6783", net.host("bravo").addr);
    let charlie = format!("{}:6783", net.host("charlie").addr);

    let out = weft_ok(&net, "alpha", &["connect", "--replace", &charlie])?;
    ensure!(
        out.contains(&format!("forgot {bravo}"))
            && out.contains(&format!("connecting to {charlie}")),
        "connect --replace output:\n{out}"
    );
    let saved = std::fs::read_to_string(net.host("alpha").home.join("targets.json"))?;
    ensure!(
        saved.contains(&charlie) && !saved.contains(&bravo),
        "targets.json after --replace:\n{saved}"
    );

    let out = weft_ok(&net, "alpha", &["expose", "10.40.0.254/24"])?;
    ensure!(out.contains("10.40.0.254/24"), "expose output: {out}");
    let addr = bridge_addresses(&net)?;
    ensure!(addr.contains("10.40.0.254/24"), "bridge addresses: {addr}");

    // A relaunch with --resume dials the persisted targets, not bravo,
    // and restores the exposed address on the new bridge.
    weft_ok(&net, "alpha", &["stop"])?;
    net.launch("alpha", &["--resume"])?;
    let r = net.report("alpha")?;
    let users: Vec<&str> =
        r.0.targets
            .iter()
            .filter(|t| t.origin == "user")
            .map(|t| t.address.as_str())
            .collect();
    ensure!(
        users == [charlie.as_str()],
        "user targets after --resume: {users:?}"
    );
    ensure!(
        r.0.exposed == ["10.40.0.254/24"],
        "exposed: {:?}",
        r.0.exposed
    );
    let addr = bridge_addresses(&net)?;
    ensure!(addr.contains("10.40.0.254/24"), "restored: {addr}");

    let out = weft_ok(&net, "alpha", &["hide"])?;
    ensure!(out.contains("hid 10.40.0.254/24"), "hide output: {out}");
    let addr = bridge_addresses(&net)?;
    ensure!(!addr.contains("10.40.0.254"), "hidden: {addr}");
    ensure!(net.report("alpha")?.0.exposed.is_empty());
    Ok(())
}

/// `ip -br addr show weft` in alpha.
fn bridge_addresses(net: &Net) -> Result<String> {
    let out = net.exec_ok(
        "alpha",
        "ip",
        &["-br", "addr", "show", "weft"],
        Duration::from_secs(5),
    )?;
    Ok(out.stdout)
}
