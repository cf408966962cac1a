//! System tests: every mistake a person can make with `weft` exits
//! non-zero with one line saying what is wrong and what to do, and leaves
//! no bridge, device, process or file behind. Real `weft` invocations in a
//! network namespace of the netns harness.
//!
//! "Not root" runs weft as `nobody` and as root without CAP_NET_ADMIN
//! (`setpriv`, util-linux); "no /dev/net/tun" hides the device in a mount
//! namespace (`unshare -m`). Needs root, iproute2 and nftables.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use weft_tests::netns::{Net, Output, check_tools, serial};

const TRAFFIC: &str = env!("CARGO_BIN_EXE_weft-traffic");

/// A home path under the topology's temp dir that does not exist yet.
fn fresh_home(net: &Net, name: &str) -> PathBuf {
    net.tmp_dir().join(format!("home-{name}"))
}

/// Checks `out` is a failure with exactly one stderr line, `weft: ...`,
/// containing every one of `expected`.
fn one_line_error(what: &str, out: &Output, expected: &[&str]) -> Result<()> {
    let stderr = out.stderr.trim_end();
    ensure!(
        !out.status.success(),
        "{what}: should fail but succeeded:\n{}",
        out.stdout
    );
    ensure!(
        out.status.code() == Some(1),
        "{what}: exit status {} (1 expected); stderr:\n{stderr}",
        out.status
    );
    ensure!(
        stderr.lines().count() == 1 && stderr.starts_with("weft: "),
        "{what}: stderr should be one `weft: ...` line:\n{stderr}"
    );
    for e in expected {
        ensure!(stderr.contains(e), "{what}: {e:?} missing in:\n{stderr}");
    }
    eprintln!("{what}: {stderr}");
    Ok(())
}

/// Checks host `name` has none of the interfaces `links`, runs no process
/// but `allowed` pids, and that `home` does not exist.
fn nothing_left(net: &Net, name: &str, links: &[&str], home: &Path, allowed: &[u32]) -> Result<()> {
    for &link in links {
        let out = net.exec(name, "ip", &["link", "show", link], Duration::from_secs(5))?;
        ensure!(
            !out.status.success(),
            "interface {link} was left behind in {name}:\n{}",
            out.stdout
        );
    }
    let pids = std::process::Command::new("ip")
        .args(["netns", "pids", net.ns(name)])
        .output()
        .context("ip netns pids")?;
    let left: Vec<u32> = String::from_utf8_lossy(&pids.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|p| !allowed.contains(p))
        .collect();
    ensure!(left.is_empty(), "processes left in {name}: {left:?}");
    ensure!(!home.exists(), "{} was left behind", home.display());
    Ok(())
}

/// Runs `weft args` in host `name` with home `home` and checks the error.
fn check(net: &Net, name: &str, home: &Path, args: &[&str], expected: &[&str]) -> Result<()> {
    let what = format!("weft {}", args.join(" "));
    let mut full = vec!["--home", home.to_str().context("home path")?];
    let out = if args.first() == Some(&"launch") {
        full.splice(0..0, ["launch"]);
        full.extend_from_slice(&args[1..]);
        net.weft(name, &full)?
    } else {
        net.weft(name, args)?
    };
    one_line_error(&what, &out, expected)
}

#[test]
fn bad_input_and_missing_privileges_fail_cleanly() -> Result<()> {
    let _serial = serial();
    check_tools(&[
        ("setpriv", "--version", "util-linux"),
        ("unshare", "--version", "util-linux"),
    ])?;
    let net = Net::new(&["solo"])?;
    let home = fresh_home(&net, "x");
    let h = home.to_str().context("home path")?;
    // A copy anyone may run: `nobody` may not reach the build directory.
    let weft_copy = net.tmp_dir().join("weft");
    fs::copy(net.weft_path(), &weft_copy).context("copying weft")?;
    fs::set_permissions(&weft_copy, fs::Permissions::from_mode(0o755))?;
    fs::set_permissions(net.tmp_dir(), fs::Permissions::from_mode(0o755))?;
    let weft = weft_copy.to_str().context("weft path")?.to_owned();

    check(
        &net,
        "solo",
        &home,
        &["launch", "host:port"],
        &["invalid peer address \"host:port\"", "HOST:PORT"],
    )?;
    check(
        &net,
        "solo",
        &home,
        &["launch", "--mtu", "100"],
        &["invalid --mtu 100", "576 to 65000"],
    )?;
    check(
        &net,
        "solo",
        &home,
        &["launch", "--http-addr", "localhost"],
        &["invalid --http-addr", "IP:PORT"],
    )?;
    check(
        &net,
        "solo",
        &home,
        &["launch", "--password-file", "/nonexistent/weft-password"],
        &[
            "cannot read --password-file /nonexistent/weft-password",
            "No such file",
        ],
    )?;
    check(
        &net,
        "solo",
        &home,
        &["attach", "--netns", "c1", "10.32.0.1"],
        &["invalid address \"10.32.0.1\"", "10.32.0.1/12"],
    )?;
    check(
        &net,
        "solo",
        &home,
        &["expose", "10.32.0.0/12"],
        &["network address", "host address"],
    )?;
    check(
        &net,
        "solo",
        &home,
        &["connect", "a:b:c"],
        &["invalid peer address"],
    )?;

    // No router running: every command that needs one says so.
    for args in [
        &["status"][..],
        &["status", "peers"],
        &["report"],
        &["stop"],
        &["connect", "192.0.2.1"],
        &["forget", "192.0.2.1"],
        &["ps"],
        &["expose", "10.32.0.254/12"],
        &["hide"],
        &["detach", "--netns", "c1"],
    ] {
        check(
            &net,
            "solo",
            &home,
            args,
            &[
                "no weft router is answering at 127.0.0.1:6784",
                "weft launch",
            ],
        )?;
    }

    // Not root, and root without CAP_NET_ADMIN.
    let nobody = net.exec(
        "solo",
        "setpriv",
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            &weft,
            "launch",
            "--home",
            h,
        ],
        Duration::from_secs(20),
    )?;
    one_line_error(
        "weft launch as nobody",
        &nobody,
        &["needs root or the CAP_NET_ADMIN", "uid 65534", "sudo"],
    )?;
    let no_cap = net.exec(
        "solo",
        "setpriv",
        &[
            "--bounding-set=-net_admin",
            "--inh-caps=-net_admin",
            &weft,
            "launch",
            "--home",
            h,
        ],
        Duration::from_secs(20),
    )?;
    one_line_error(
        "weft launch without CAP_NET_ADMIN",
        &no_cap,
        &["needs root or the CAP_NET_ADMIN", "uid 0", "--no-bridge"],
    )?;

    // No /dev/net/tun: an empty tmpfs over /dev/net in a private mount
    // namespace hides it from this one command only.
    let script = format!("mount -t tmpfs none /dev/net && exec {weft} launch --home {h}");
    let no_tun = net.exec(
        "solo",
        "unshare",
        &["-m", "sh", "-c", &script],
        Duration::from_secs(20),
    )?;
    one_line_error(
        "weft launch without /dev/net/tun",
        &no_tun,
        &["/dev/net/tun does not exist", "modprobe tun"],
    )?;

    nothing_left(&net, "solo", &["weft", "weft-tap"], &home, &[])
}

#[test]
fn busy_ports_and_running_routers_are_named() -> Result<()> {
    let _serial = serial();
    let net = Net::new(&["solo"])?;
    net.launch("solo", &[])?;
    let running = net.pid("solo").context("the first router's pid")?;
    let first_home = net.host("solo").home.to_str().context("home")?.to_owned();

    let home = fresh_home(&net, "b");
    let h = home.to_str().context("home path")?.to_owned();
    // Free ports for everything but what each case takes from the first
    // router (defaults 6783, 6784, 6782) or from a UDP-only socket.
    let launch = |extra: &[&str]| -> Result<Output> {
        let mut args = vec!["launch", "--home", &h, "--bridge", "weftb"];
        args.extend_from_slice(extra);
        net.weft("solo", &args)
    };
    let others = [
        "--port",
        "7783",
        "--http-addr",
        "127.0.0.1:7784",
        "--status-addr",
        "127.0.0.1:7782",
    ];

    let out = net.weft(
        "solo",
        &[
            "launch",
            "--home",
            &first_home,
            "--bridge",
            "weftb",
            "--port",
            "7783",
            "--http-addr",
            "127.0.0.1:7784",
            "--status-addr",
            "127.0.0.1:7782",
        ],
    )?;
    one_line_error(
        "same home",
        &out,
        &[
            "another weft router is already running with home",
            &format!("pid {running}"),
            "weft stop",
        ],
    )?;

    let out = launch(&["--port", "7783", "--status-addr", "127.0.0.1:7782"])?;
    one_line_error(
        "same HTTP address",
        &out,
        &[
            "another weft router",
            "solo) is already running with HTTP API address 127.0.0.1:6784",
            "--http-addr",
        ],
    )?;

    let out = launch(&[
        "--http-addr",
        "127.0.0.1:7784",
        "--status-addr",
        "127.0.0.1:7782",
    ])?;
    one_line_error(
        "TCP port in use",
        &out,
        &["TCP port 6783 is already in use", "--port"],
    )?;

    let out = launch(&["--port", "7783", "--http-addr", "127.0.0.1:7784"])?;
    one_line_error(
        "status address in use",
        &out,
        &[
            "status address 127.0.0.1:6782 is already in use",
            "--status-addr",
        ],
    )?;

    let mut udp = net.spawn("solo", TRAFFIC, &["udp-echo", "0.0.0.0:7100"])?;
    udp.wait_for_line("listening", Duration::from_secs(10))?;
    let out = launch(&[
        "--port",
        "7100",
        "--http-addr",
        "127.0.0.1:7784",
        "--status-addr",
        "127.0.0.1:7782",
    ])?;
    one_line_error(
        "UDP port in use",
        &out,
        &["UDP port 7100", "already in use", "--port"],
    )?;
    let helper = udp.id();

    // The running router keeps its own bridge and TAP device.
    nothing_left(&net, "solo", &["weftb"], &home, &[running, helper])?;
    drop(udp);

    // With the first router gone, the same launch works (the checks above
    // were about the conflicts, not the flags), and `weft reset` removes
    // everything it made.
    let stop = net.weft("solo", &["stop"])?;
    ensure!(stop.status.success(), "stop failed: {}", stop.stderr);
    let ok = launch(&others)?;
    ensure!(
        ok.status.success(),
        "launch with free ports failed:\n{}{}",
        ok.stdout,
        ok.stderr
    );
    let reset = net.weft(
        "solo",
        &[
            "reset",
            "--home",
            &h,
            "--http-addr",
            "127.0.0.1:7784",
            "--bridge",
            "weftb",
        ],
    )?;
    ensure!(reset.status.success(), "reset failed: {}", reset.stderr);
    eprintln!("{}", reset.stdout.trim_end());
    ensure!(
        fs::metadata(&first_home).is_ok(),
        "reset touched another router's home"
    );
    nothing_left(&net, "solo", &["weftb", "weftb-tap"], &home, &[])
}
