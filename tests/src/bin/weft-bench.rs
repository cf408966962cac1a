//! Throughput and latency through the weft overlay against raw veth, on
//! the same two-host testbed in one run.
//!
//! ```text
//! cargo run --release -p weft-tests --bin weft-bench [-- --secs 5]
//! ```
//!
//! Two host namespaces share an underlay segment (veth pairs on a bridge);
//! each runs a release `weft` router and has a container namespace
//! attached to its weft bridge. "raw" is traffic between the two hosts'
//! underlay addresses, "weft" the same traffic between the containers,
//! through both routers. For each it measures single-stream and 4-stream
//! TCP throughput (counted by the receiver), the average RTT of 20 pings,
//! and, for weft, the CPU seconds both routers spent per GB carried
//! (utime + stime from `/proc/PID/stat`). It prints a table with the
//! weft/raw ratios; `docs/benchmarks.md` records results.
//!
//! The traffic helper is this binary itself (`weft-bench traffic …`, see
//! `weft_tests::netns::traffic`), so one build is all it needs. Needs root,
//! iproute2, nftables and ping. Numbers from a shared or small machine are
//! indicative: compare ratios, not absolute values.

use std::fs;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use weft_tests::netns::{Net, check_tools};

const TCP_PORT: u16 = 5201;

/// Pings per RTT measurement.
const PINGS: u32 = 20;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("traffic") {
        return weft_tests::netns::traffic::main(&args[1..]);
    }
    let secs = match args.as_slice() {
        [] => 5.0,
        [flag, v] if flag == "--secs" => match v.parse::<f64>() {
            Ok(s) if s > 0.0 => s,
            _ => {
                eprintln!("weft-bench: --secs needs a positive number, not {v:?}");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("usage: weft-bench [--secs SECONDS]");
            return ExitCode::from(2);
        }
    };
    match run(secs) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Waits until c1 reaches c2 across the overlay.
fn wait_for_ping(net: &Net, what: &str) -> Result<()> {
    net.wait_until(what, Duration::from_secs(60), || {
        Ok(net
            .exec(
                "c1",
                "ping",
                &["-c", "1", "-W", "1", "10.40.0.2"],
                Duration::from_secs(5),
            )?
            .status
            .success())
    })?;
    Ok(())
}

/// One side of the comparison: who sends, who receives, at which address.
struct Leg {
    label: &'static str,
    from: String,
    to: String,
    to_addr: String,
}

#[derive(Default)]
struct Results {
    /// Bits per second.
    tcp1: f64,
    tcp4: f64,
    /// Milliseconds.
    rtt: f64,
    /// CPU seconds of both routers per GB carried, if measured.
    cpu1: Option<f64>,
    cpu4: Option<f64>,
}

fn run(secs: f64) -> Result<()> {
    check_tools(&[("ping", "-V", "iputils-ping")])?;
    let helper = std::env::current_exe().context("finding this binary")?;
    println!("{}", machine());
    println!("building the testbed: two hosts, a container on each");
    let mut net = Net::new(&["h1", "h2"])?;
    net.launch("h1", &[])?;
    let h1 = net.host("h1").addr.to_string();
    net.launch("h2", &[&h1])?;
    net.attach("h1", "c1", &["10.40.0.1/24"])?;
    net.attach("h2", "c2", &["10.40.0.2/24"])?;
    wait_for_ping(&net, "c1 pings c2 through weft")?;
    println!("weft binary: {}", net.weft_path().display());

    let raw = Leg {
        label: "raw veth",
        from: "h1".into(),
        to: "h2".into(),
        to_addr: net.host("h2").addr.to_string(),
    };
    let weft = Leg {
        label: "weft",
        from: "c1".into(),
        to: "c2".into(),
        to_addr: "10.40.0.2".into(),
    };
    let routers: Vec<u32> = ["h1", "h2"]
        .iter()
        .map(|h| net.pid(h).with_context(|| format!("no weft pid on {h}")))
        .collect::<Result<_>>()?;
    let r = measure(&net, &helper, &raw, secs, None)?;
    let w = measure(&net, &helper, &weft, secs, Some(&routers))?;

    println!("relaunching both routers with a password (encrypted control and data)");
    let password = net.tmp_dir().join("password");
    std::fs::write(&password, "weft-bench-password\n").context("writing the password file")?;
    let password = password.to_string_lossy().into_owned();
    for h in ["h1", "h2"] {
        net.weft(h, &["stop"])?;
    }
    net.launch("h1", &["--password-file", &password])?;
    net.launch("h2", &["--password-file", &password, &h1])?;
    wait_for_ping(&net, "c1 pings c2 through encrypted weft")?;
    let routers: Vec<u32> = ["h1", "h2"]
        .iter()
        .map(|h| net.pid(h).with_context(|| format!("no weft pid on {h}")))
        .collect::<Result<_>>()?;
    let e = measure(&net, &helper, &weft, secs, Some(&routers))?;
    let sessions = net
        .report("h1")?
        .0
        .data_plane
        .map_or(0, |d| d.encrypted_sessions);
    anyhow::ensure!(
        sessions == 1,
        "h1 reports {sessions} encrypted sessions, expected 1"
    );

    println!();
    println!(
        "{:<30} {:>10} {:>10} {:>10} {:>9} {:>9}",
        "", raw.label, "weft", "encrypted", "weft/raw", "enc/weft"
    );
    let row = |name: &str, a: f64, b: f64, c: f64, unit: f64, digits: usize| {
        println!(
            "{:<30} {:>10.digits$} {:>10.digits$} {:>10.digits$} {:>9.2} {:>9.2}",
            name,
            a / unit,
            b / unit,
            c / unit,
            b / a,
            c / b
        );
    };
    row("TCP, 1 stream (Gbit/s)", r.tcp1, w.tcp1, e.tcp1, 1e9, 2);
    row("TCP, 4 streams (Gbit/s)", r.tcp4, w.tcp4, e.tcp4, 1e9, 2);
    row("ping RTT, average (ms)", r.rtt, w.rtt, e.rtt, 1.0, 3);
    for (name, v, x) in [
        ("weft CPU s per GB, 1 stream", w.cpu1, e.cpu1),
        ("weft CPU s per GB, 4 streams", w.cpu4, e.cpu4),
    ] {
        let (v, x) = (v.unwrap_or(f64::NAN), x.unwrap_or(f64::NAN));
        println!(
            "{:<30} {:>10} {:>10.2} {:>10.2} {:>9} {:>9.2}",
            name,
            "-",
            v,
            x,
            "-",
            x / v
        );
    }
    drop(net);
    Ok(())
}

fn measure(
    net: &Net,
    helper: &Path,
    leg: &Leg,
    secs: f64,
    routers: Option<&[u32]>,
) -> Result<Results> {
    let mut res = Results::default();
    for streams in [1, 4] {
        let before = routers.map(cpu_secs).transpose()?;
        let (bytes, elapsed) = tcp(net, helper, leg, streams, secs)?;
        let cpu = match (routers, before) {
            (Some(pids), Some(before)) => Some((cpu_secs(pids)? - before) / (bytes as f64 / 1e9)),
            _ => None,
        };
        let bps = bytes as f64 * 8.0 / elapsed;
        println!(
            "{:<9} TCP {streams} stream(s): {:.1} MB in {elapsed:.2} s = {:.2} Gbit/s{}",
            leg.label,
            bytes as f64 / 1e6,
            bps / 1e9,
            cpu.map_or(String::new(), |c| format!(", routers' CPU {c:.2} s/GB"))
        );
        if streams == 1 {
            (res.tcp1, res.cpu1) = (bps, cpu);
        } else {
            (res.tcp4, res.cpu4) = (bps, cpu);
        }
    }
    res.rtt = rtt(net, leg)?;
    println!("{:<9} ping RTT average {:.3} ms", leg.label, res.rtt);
    Ok(res)
}

/// Sends for `secs` over `streams` TCP connections; returns the bytes the
/// receiver counted and the seconds it counted them over.
fn tcp(net: &Net, helper: &Path, leg: &Leg, streams: u32, secs: f64) -> Result<(u64, f64)> {
    let streams = streams.to_string();
    let mut recv = net.spawn(
        &leg.to,
        helper,
        &[
            "traffic",
            "tcp-recv",
            &format!("0.0.0.0:{TCP_PORT}"),
            "--streams",
            &streams,
        ],
    )?;
    recv.wait_for_line("listening", Duration::from_secs(10))?;
    net.exec_ok(
        &leg.from,
        helper,
        &[
            "traffic",
            "tcp-blast",
            &format!("{}:{TCP_PORT}", leg.to_addr),
            "--secs",
            &secs.to_string(),
            "--streams",
            &streams,
        ],
        Duration::from_secs_f64(secs + 30.0),
    )?;
    let out = recv.finish(Duration::from_secs(10))?;
    let line = out
        .stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("no summary from the receiver:\n{}", out.stdout))?;
    let v: Value = serde_json::from_str(line)?;
    let bytes = v["bytes"].as_u64().context("no byte count")?;
    let elapsed = v["secs"].as_f64().context("no duration")?;
    ensure!(bytes > 0 && elapsed > 0.0, "nothing arrived: {line}");
    Ok((bytes, elapsed))
}

/// The average of [`PINGS`] pings' RTT, in milliseconds.
fn rtt(net: &Net, leg: &Leg) -> Result<f64> {
    let out = net.exec_ok(
        &leg.from,
        "ping",
        &[
            "-q",
            "-c",
            &PINGS.to_string(),
            "-i",
            "0.2",
            "-W",
            "2",
            &leg.to_addr,
        ],
        Duration::from_secs(30),
    )?;
    // rtt min/avg/max/mdev = 0.041/0.052/0.071/0.008 ms
    let Some(stats) = out
        .stdout
        .lines()
        .find_map(|l| l.split_once(" = ").filter(|(k, _)| k.starts_with("rtt")))
    else {
        bail!("no RTT summary in ping output:\n{}", out.stdout);
    };
    stats
        .1
        .split('/')
        .nth(1)
        .and_then(|avg| avg.trim().parse().ok())
        .with_context(|| format!("cannot parse {:?}", stats.1))
}

/// The CPU seconds (user + system) processes `pids` have used so far.
fn cpu_secs(pids: &[u32]) -> Result<f64> {
    let tick = clock_ticks();
    let mut total = 0.0;
    for pid in pids {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat; did the router exit?"))?;
        // proc(5): utime and stime are fields 14 and 15; counting from the
        // state, which follows the parenthesised command, they are 12, 13.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks: u64 = fields
            .get(11..13)
            .context("short /proc/PID/stat")?
            .iter()
            .map(|f| f.parse::<u64>())
            .sum::<Result<u64, _>>()
            .context("parsing /proc/PID/stat")?;
        total += ticks as f64 / tick;
    }
    Ok(total)
}

/// `sysconf(_SC_CLK_TCK)`, the unit of `/proc/PID/stat` times.
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU count, model and kernel, for the record.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("machine: {cpus} CPUs, {model}, Linux {kernel}")
}
