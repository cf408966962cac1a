//! System tests: every mistake a person can make with `weft` exits
//! non-zero with one line saying what is wrong and what to do, and leaves
//! no bridge, device, process or file behind. Real `weft` invocations in a
//! network namespace of the netns harness.
//!
//! "Not root" runs weft as `nobody` and as root without CAP_NET_ADMIN
//! (`setpriv`, util-linux); "no /dev/net/tun" hides the device in a mount
//! namespace (`unshare -m`). The control socket's tests run the CLI as
//! `nobody` against a running router, and from other network namespaces.
//! Needs root, iproute2 and nftables.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
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

/// A copy of the weft binary anyone may run (`nobody` may not reach the
/// build directory), in the topology's temp dir, which is made traversable.
fn weft_for_anyone(net: &Net) -> Result<String> {
    let weft_copy = net.tmp_dir().join("weft");
    fs::copy(net.weft_path(), &weft_copy).context("copying weft")?;
    fs::set_permissions(&weft_copy, fs::Permissions::from_mode(0o755))?;
    fs::set_permissions(net.tmp_dir(), fs::Permissions::from_mode(0o755))?;
    Ok(weft_copy.to_str().context("weft path")?.to_owned())
}

/// Runs `weft args` in host `name` as `nobody` (uid and gid 65534, no
/// supplementary groups).
fn as_nobody(net: &Net, name: &str, weft: &str, args: &[&str]) -> Result<Output> {
    let mut full = vec!["--reuid=65534", "--regid=65534", "--clear-groups", weft];
    full.extend_from_slice(args);
    net.exec(name, "setpriv", &full, Duration::from_secs(20))
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
    let weft = weft_for_anyone(&net)?;

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
        &["launch", "--http-addr", "127.0.0.1:6784"],
        &["--http-addr is gone", "unix socket", "--api-socket"],
    )?;
    check(
        &net,
        "solo",
        &home,
        &["launch", "--api-group", "no-such-weft-group"],
        &["--api-group no-such-weft-group: no such group", "groupadd"],
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

    // No router running: every command that needs one says so, naming
    // the socket it looked for (from WEFT_HOME, set by the harness).
    let socket = net.host("solo").home.join("weft.sock");
    let not_running = format!("no weft router is answering at {}", socket.display());
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
            &[&not_running, "weft launch", "--api-socket"],
        )?;
    }

    // Not root, and root without CAP_NET_ADMIN.
    let nobody = as_nobody(&net, "solo", &weft, &["launch", "--home", h])?;
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
    // router (defaults 6783 and 6782, its control socket) or from a
    // UDP-only socket. The second home has a socket of its own.
    let launch = |extra: &[&str]| -> Result<Output> {
        let mut args = vec!["launch", "--home", &h, "--bridge", "weftb"];
        args.extend_from_slice(extra);
        net.weft("solo", &args)
    };
    let others = ["--port", "7783", "--status-addr", "127.0.0.1:7782"];
    let first_socket = net.host("solo").home.join("weft.sock");
    let first_socket = first_socket.to_str().context("socket path")?;

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

    let mut same_socket = others.to_vec();
    same_socket.extend(["--api-socket", first_socket]);
    let out = launch(&same_socket)?;
    one_line_error(
        "same control socket",
        &out,
        &[
            &format!("another weft router is already answering at {first_socket}"),
            "weft stop --api-socket",
            "another --api-socket or --home",
        ],
    )?;
    ensure!(
        net.report("solo").is_ok(),
        "the live socket was left working"
    );

    let out = launch(&["--status-addr", "127.0.0.1:7782"])?;
    one_line_error(
        "TCP port in use",
        &out,
        &["TCP port 6783 is already in use", "--port"],
    )?;

    let out = launch(&["--port", "7783"])?;
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
    let out = launch(&["--port", "7100", "--status-addr", "127.0.0.1:7782"])?;
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
    // were about the conflicts, not the flags), even over the socket file a
    // crashed router left, and `weft reset` removes everything it made.
    let stop = net.weft("solo", &["stop"])?;
    ensure!(stop.status.success(), "stop failed: {}", stop.stderr);
    ensure!(
        !Path::new(first_socket).exists(),
        "a clean stop removes the socket file"
    );
    fs::create_dir_all(&home)?;
    let socket = home.join("weft.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).context("making a stale socket")?);
    let stale_inode = fs::metadata(&socket)?.ino();
    let ok = launch(&others)?;
    ensure!(
        ok.status.success(),
        "launch over a stale socket failed:\n{}{}",
        ok.stdout,
        ok.stderr
    );
    ensure!(
        fs::metadata(&socket)?.ino() != stale_inode,
        "the stale socket file was replaced"
    );
    let status = net.weft("solo", &["status", "--home", &h])?;
    ensure!(
        status.status.success(),
        "status through the replaced socket failed: {}",
        status.stderr
    );
    let reset = net.weft("solo", &["reset", "--home", &h, "--bridge", "weftb"])?;
    ensure!(reset.status.success(), "reset failed: {}", reset.stderr);
    eprintln!("{}", reset.stdout.trim_end());
    ensure!(
        fs::metadata(&first_home).is_ok(),
        "reset touched another router's home"
    );
    nothing_left(&net, "solo", &["weftb", "weftb-tap"], &home, &[])
}

#[test]
fn the_control_socket_is_root_only_and_reachable_from_any_namespace() -> Result<()> {
    let _serial = serial();
    check_tools(&[("setpriv", "--version", "util-linux")])?;
    let net = Net::new(&["solo", "other"])?;
    let weft = weft_for_anyone(&net)?;
    net.launch("solo", &[])?;
    let running = net.pid("solo").context("the router's pid")?;
    let home = net.host("solo").home.to_str().context("home")?.to_owned();
    let socket = net.host("solo").home.join("weft.sock");
    let meta = fs::metadata(&socket).context("the control socket")?;
    ensure!(
        meta.permissions().mode() & 0o777 == 0o660 && meta.uid() == 0,
        "socket mode {:o}, owner {}: 0660 root expected",
        meta.permissions().mode(),
        meta.uid()
    );

    // Nothing listens on the old TCP control port; the read-only status
    // listener stays.
    let tcp = net.http_get("solo", "127.0.0.1:6784", "/status");
    ensure!(
        tcp.as_ref()
            .is_err_and(|e| format!("{e:#}").contains("Connection refused")),
        "something answers on 127.0.0.1:6784: {tcp:?}"
    );
    let (code, _) = net.http_get("solo", "127.0.0.1:6782", "/report")?;
    ensure!(code == 200, "the status listener answered {code}");

    // Another network namespace, and the root one: the socket is a file,
    // so the CLI reaches the router from anywhere the file is.
    let from_other = net.exec(
        "other",
        net.weft_path(),
        &["status", "--home", &home],
        Duration::from_secs(20),
    )?;
    ensure!(
        from_other.status.success() && from_other.stdout.contains("(solo)"),
        "weft status from another namespace failed:\n{}{}",
        from_other.stdout,
        from_other.stderr
    );
    let from_root = std::process::Command::new(net.weft_path())
        .args(["report", "--home", &home])
        .env_remove("WEFT_API_SOCKET")
        .output()
        .context("weft report from the root namespace")?;
    ensure!(
        from_root.status.success()
            && String::from_utf8_lossy(&from_root.stdout).contains("\"nickname\": \"solo\""),
        "weft report from the root namespace failed: {}",
        String::from_utf8_lossy(&from_root.stderr)
    );

    // An unprivileged user cannot even connect, let alone change state;
    // the CLI says who may.
    let denied = format!("permission denied on {}", socket.display());
    // weft password reads its file first: give nobody one it can read.
    let pw = net.tmp_dir().join("pw");
    fs::write(&pw, "secret\n")?;
    fs::set_permissions(&pw, fs::Permissions::from_mode(0o644))?;
    let pw = pw.to_str().context("pw path")?;
    for args in [
        &["status", "--home", &home][..],
        &["stop", "--home", &home],
        &["connect", "--home", &home, "192.0.2.1"],
        &["password", "--home", &home, "--password-file", pw],
    ] {
        let out = as_nobody(&net, "solo", &weft, args)?;
        let what = format!("weft {} as nobody", args[0]);
        one_line_error(&what, &out, &[&denied, "root", "--api-group"])?;
    }
    ensure!(
        net.pid("solo") == Some(running) && net.report("solo").is_ok(),
        "the router must still run after nobody's attempts"
    );

    // --api-group lets a group in: nobody's own group here.
    let stop = net.weft("solo", &["stop"])?;
    ensure!(stop.status.success(), "stop failed: {}", stop.stderr);
    net.launch("solo", &["--api-group", "nogroup"])?;
    let gid = fs::metadata(&socket)?.gid();
    ensure!(gid == 65534, "socket group {gid}, nogroup (65534) expected");
    let out = as_nobody(&net, "solo", &weft, &["status", "--home", &home])?;
    ensure!(
        out.status.success() && out.stdout.contains("(solo)"),
        "weft status as a member of --api-group failed:\n{}{}",
        out.stdout,
        out.stderr
    );
    Ok(())
}
