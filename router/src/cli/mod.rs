//! The `weft` command line: the commands (launch, status, report, stop,
//! reset, connect, forget, attach, detach, ps, expose, hide, password,
//! keygen, version, completions). The argument schema is in [`args`],
//! checking and running a launch in [`launch`].
//!
//! Every value a user types is validated before anything starts, and every
//! error is one line naming the problem and what to do about it.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, CommandFactory, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::core::RouterConfig;
use crate::core::identity::{Identity, PeerName, PeerUid, validate_nickname};
use crate::core::prefix::{self, IpNet};
use crate::core::router::{DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_HEARTBEAT_TIMEOUT};
use crate::core::wire::addr::{DEFAULT_PORT, PeerAddr};
use crate::core::wire::preamble::{PROTOCOL_MAX, PROTOCOL_MIN};
use crate::format::{View, format_dot, format_ps, format_status, format_view};
use crate::shell::api_socket::{self, ApiSocket, DEFAULT_API_SOCKET, SocketGroup};
use crate::shell::attach::{AttachmentRecord, DEFAULT_IFNAME, Netns, check_id, parse_cidrs};
use crate::shell::client::{Client, ClientError};
use crate::shell::crypto::CryptoSettings;
use crate::shell::daemon::{self, DaemonConfig};
use crate::shell::home::{self, DEFAULT_HOME, Home};
use crate::shell::host::{self, DEFAULT_BRIDGE, DEFAULT_MTU, HostConfig, MTU_RANGE};
use crate::shell::http_api::{AttachRequest, DetachRequest};
use crate::shell::preflight;
use crate::shell::sockets::{self, Service};

/// Where the read-only status listener (report, metrics, topology page)
/// listens unless told otherwise.
pub const DEFAULT_STATUS_ADDR: &str = "127.0.0.1:6782";

/// Nickname used when the host name is not a valid one.
const FALLBACK_NICKNAME: &str = "weft";

/// How long `weft launch` and `weft stop` wait for the router.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Log lines shown when a daemonised router dies during startup.
const LOG_TAIL_LINES: usize = 10;

const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

mod args;
mod launch;

pub use args::*;
pub use launch::LaunchPlan;
#[cfg(test)]
use launch::log_tail;
use launch::{launch_background, launch_foreground};

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Launch(args) => {
            let mut plan = args.validate()?;
            if plan.resume {
                plan.peers = home::load_targets(&home::targets_path(&plan.home))?;
                plan.resume = false;
            }
            if plan.foreground {
                launch_foreground(&plan)
            } else {
                launch_background(&plan)
            }
        }
        Command::Status(args) => {
            let client = args.api.client()?;
            let status = block_on(client.get_status())??;
            let text = match args.view {
                _ if args.dot => format_dot(&status),
                Some(view) => format_view(&status, view),
                None => format_status(&status),
            };
            print!("{text}");
            Ok(())
        }
        Command::Report(api) => {
            let client = api.client()?;
            let status = block_on(client.get_status())??;
            println!("{}", serde_json::to_string_pretty(&status)?);
            Ok(())
        }
        Command::Stop(api) => {
            let client = api.client()?;
            block_on(stop(client))??;
            println!("weft router stopped");
            Ok(())
        }
        Command::Reset(args) => reset(&args),
        Command::Connect(ConnectArgs {
            peers: args,
            replace,
        }) => {
            let client = args.api.client()?;
            validate_peers(&args.peers)?;
            let answer = block_on(client.post_connect(&args.peers, replace))??;
            for addr in answer.forgotten {
                println!("forgot {addr}");
            }
            for added in answer.added {
                println!("connecting to {added}");
            }
            Ok(())
        }
        Command::Forget(args) => {
            let client = args.api.client()?;
            validate_peers(&args.peers)?;
            let answer = block_on(client.post_forget(&args.peers))??;
            for addr in answer.forgotten {
                println!("forgot {addr}");
            }
            for addr in answer.not_targets {
                println!("{addr} was not a target");
            }
            Ok(())
        }
        Command::Attach(args) => {
            let client = args.api.client()?;
            args.target.validate()?;
            if let Some(id) = &args.id {
                check_id(id)?;
            }
            parse_cidrs(&args.cidrs)?;
            let request = AttachRequest {
                netns: args.target.ns.netns,
                pid: args.target.ns.pid,
                netns_path: args.target.ns.netns_path,
                id: args.id,
                ifname: Some(args.target.ifname),
                cidrs: args.cidrs,
            };
            let info = block_on(client.post_attach(&request))??;
            println!(
                "attached {} ({}): {} {} {} (host end {})",
                info.id,
                info.netns,
                info.ifname,
                info.mac.as_deref().unwrap_or("-"),
                info.addresses.join(" "),
                info.host_ifname
            );
            Ok(())
        }
        Command::Detach(args) => {
            let client = args.api.client()?;
            args.target.validate()?;
            let request = DetachRequest {
                netns: args.target.ns.netns,
                pid: args.target.ns.pid,
                netns_path: args.target.ns.netns_path,
                ifname: Some(args.target.ifname),
            };
            let detached = block_on(client.post_detach(&request))??;
            println!("detached {}: {}", detached.netns, detached.ifname);
            Ok(())
        }
        Command::Ps(api) => {
            let client = api.client()?;
            let ps = block_on(client.get_ps())??;
            print!("{}", format_ps(&ps.attachments));
            Ok(())
        }
        Command::Expose(args) => {
            let client = args.api.client()?;
            parse_cidrs(&args.cidrs)?;
            let answer = block_on(client.post_expose(&args.cidrs))??;
            println!("host exposed as {}", answer.exposed.join(" "));
            Ok(())
        }
        Command::Hide(args) => {
            let client = args.api.client()?;
            parse_cidrs(&args.cidrs)?;
            let answer = block_on(client.post_hide(&args.cidrs))??;
            if answer.hidden.is_empty() {
                println!("nothing was exposed");
            } else {
                println!("hid {}", answer.hidden.join(" "));
            }
            Ok(())
        }
        Command::Keygen(args) => keygen(&args.file),
        Command::Password(args) => {
            let client = args.api.client()?;
            let password = read_password_file(&args.password_file)?;
            let also = args
                .also_accept_file
                .as_deref()
                .map(read_password_file)
                .transpose()?;
            block_on(client.post_password(&password, also.as_deref()))??;
            println!(
                "password changed: new handshakes use {}{}",
                args.password_file.display(),
                match &args.also_accept_file {
                    Some(f) => format!(" and also accept {}", f.display()),
                    None => String::new(),
                }
            );
            Ok(())
        }
        Command::Version => {
            println!("{}", version_line());
            Ok(())
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "weft", &mut std::io::stdout());
            Ok(())
        }
    }
}

/// `weft reset`: stops the router if one answers, then removes the bridge,
/// the TAP device, the attached containers' veths and every file the
/// router kept. A router that holds the home but answers elsewhere is
/// left alone, with an error.
fn reset(args: &ResetArgs) -> Result<()> {
    host::check_ifname(&args.bridge).map_err(|e| anyhow!("invalid --bridge: {e}"))?;
    let home = args.api.home()?;
    let client = args.api.client()?;
    match block_on(stop(client))? {
        Ok(()) => println!("weft router stopped"),
        Err(e)
            if e.downcast_ref::<ClientError>()
                .is_some_and(ClientError::is_not_running) => {}
        Err(e) => return Err(e),
    }
    Home::check_free(&home)?;
    let attachments = home.join(home::ATTACHMENTS_FILE);
    let records: Vec<AttachmentRecord> = match std::fs::read(&attachments) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let host_ifnames: Vec<String> = records.into_iter().map(|r| r.host_ifname).collect();
    block_on(host::remove_all(&args.bridge, &host_ifnames))??;
    let removed = home::reset(&home)?;
    println!(
        "weft reset: removed bridge {} and {} file{} from {}",
        args.bridge,
        removed.len(),
        if removed.len() == 1 { "" } else { "s" },
        home.display()
    );
    Ok(())
}

/// `weft keygen FILE`: a new static key pair, private to its owner.
fn keygen(file: &Path) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let pair = crate::core::crypto::StaticKeypair::generate()
        .map_err(|e| anyhow!("cannot generate a key pair: {e}"))?;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                anyhow!(
                    "{} already exists; weft keygen never overwrites a key (remove it first, or pick another file)",
                    file.display()
                )
            } else {
                anyhow!("cannot create key file {}: {e}", file.display())
            }
        })?;
    out.write_all(pair.to_file_text().as_bytes())
        .with_context(|| format!("cannot write key file {}", file.display()))?;
    println!("{}", pair.public());
    Ok(())
}

fn version_line() -> String {
    format!(
        "weft {} (protocol {PROTOCOL_MIN}..{PROTOCOL_MAX})",
        env!("CARGO_PKG_VERSION")
    )
}

/// Reads the mesh password: the file's first line, which must not be
/// empty.
fn read_password_file(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        anyhow!(
            "cannot read --password-file {}: {}; give a readable file holding the password",
            path.display(),
            crate::shell::describe_io_error(&e)
        )
    })?;
    let password = text.lines().next().unwrap_or("").to_owned();
    if password.is_empty() {
        bail!(
            "--password-file {} is empty; put the password on its first line",
            path.display()
        );
    }
    Ok(password)
}

fn block_on<F: Future>(future: F) -> Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok(runtime.block_on(future))
}

fn validate_peers(peers: &[String]) -> Result<()> {
    for p in peers {
        PeerAddr::from_str(p)?;
    }
    Ok(())
}

/// Asks the router to stop and waits until its API goes away.
async fn stop(client: Client) -> Result<()> {
    client.post_stop().await?;
    let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
    loop {
        match client.get_status().await {
            Err(e) if e.is_not_running() => return Ok(()),
            _ if tokio::time::Instant::now() >= deadline => bail!(
                "the weft router at {} was asked to stop but still answers after {}s; check its log",
                client.socket().display(),
                STOP_TIMEOUT.as_secs()
            ),
            _ => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::status::RouterStatus;
    use crate::shell::attach::AttachmentInfo;

    fn launch(args: &[&str]) -> LaunchArgs {
        let mut argv = vec!["weft", "launch"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Launch(args) => *args,
            other => panic!("parsed as {other:?}"),
        }
    }

    fn error(args: &[&str]) -> String {
        launch(args).validate().unwrap_err().to_string()
    }

    #[test]
    fn a_full_launch_line_validates() {
        let plan = launch(&[
            "--name",
            "7a:1f:00:9c:3e:01",
            "--nickname",
            "host-a",
            "--port",
            "7000",
            "--no-discovery",
            "--home",
            "/tmp/weft-x",
            "--api-socket",
            "/tmp/weft-x.sock",
            "--api-group",
            "root",
            "--heartbeat-interval",
            "200ms",
            "--heartbeat-timeout",
            "1s",
            "--log-level",
            "debug",
            "--bridge",
            "br0",
            "--mtu",
            "1376",
            "192.0.2.7",
            "host-b:7000",
        ])
        .validate()
        .unwrap();
        assert_eq!(plan.name, Some("7a:1f:00:9c:3e:01".parse().unwrap()));
        assert_eq!(plan.nickname, "host-a");
        assert_eq!(plan.port, 7000);
        assert!(!plan.discovery);
        assert_eq!(plan.home, PathBuf::from("/tmp/weft-x"));
        assert_eq!(plan.api_socket, PathBuf::from("/tmp/weft-x.sock"));
        assert_eq!(
            plan.api_group.as_ref().map(|g| g.name.as_str()),
            Some("root")
        );
        assert_eq!(plan.heartbeat_interval, Duration::from_millis(200));
        assert_eq!(plan.heartbeat_timeout, Duration::from_secs(1));
        let host = plan.host.as_ref().unwrap();
        assert_eq!((host.bridge.as_str(), host.mtu), ("br0", 1376));
        let peers: Vec<String> = plan.peers.iter().map(ToString::to_string).collect();
        assert_eq!(peers, ["192.0.2.7:6783", "host-b:7000"]);
    }

    #[test]
    fn defaults_are_sensible() {
        let plan = launch(&["--home", "/tmp/weft-y"]).validate().unwrap();
        assert_eq!(plan.port, DEFAULT_PORT);
        assert!(plan.discovery);
        assert_eq!(plan.api_socket, PathBuf::from("/tmp/weft-y/weft.sock"));
        let default = launch(&[]).validate().unwrap();
        assert_eq!(default.api_socket, PathBuf::from(DEFAULT_API_SOCKET));
        assert!(validate_nickname(&plan.nickname).is_ok());
        assert!(plan.heartbeat_timeout > plan.heartbeat_interval);
        assert!(plan.name.is_none());
        assert_eq!(plan.host, Some(HostConfig::default()));
    }

    #[test]
    fn host_network_options_are_checked() {
        let plan = launch(&["--bridge", "br-test", "--mtu", "9000"])
            .validate()
            .unwrap();
        assert_eq!(
            plan.host,
            Some(HostConfig {
                bridge: "br-test".into(),
                mtu: 9000
            })
        );
        assert_eq!(launch(&["--no-bridge"]).validate().unwrap().host, None);
        assert_eq!(
            error(&["--mtu", "575"]),
            "invalid --mtu 575: pick one from 576 to 65000 (the default is 1408)"
        );
        assert!(error(&["--mtu", "65001"]).contains("--mtu 65001"));
        let e = error(&["--bridge", "a-very-long-bridge"]);
        assert_eq!(
            e,
            "invalid --bridge: invalid interface name \"a-very-long-bridge\": it is longer than 15 bytes"
        );
        let conflict = Cli::try_parse_from(["weft", "launch", "--no-bridge", "--bridge", "x"]);
        assert!(conflict.is_err(), "--no-bridge with --bridge is refused");
    }

    fn attach_args(args: &[&str]) -> Result<AttachArgs, clap::Error> {
        let mut argv = vec!["weft", "attach"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv)?.command {
            Command::Attach(args) => Ok(args),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn attach_takes_one_namespace_and_addresses() {
        let args = attach_args(&["--netns", "c1", "10.32.0.1/12", "fd00::1/64"]).unwrap();
        assert_eq!(args.target.ns.netns.as_deref(), Some("c1"));
        assert_eq!(args.target.ifname, "ethwe");
        assert_eq!(args.cidrs, ["10.32.0.1/12", "fd00::1/64"]);
        args.target.validate().unwrap();
        let args = attach_args(&["--pid", "42", "--ifname", "eth1", "10.32.0.1/12"]).unwrap();
        assert_eq!(args.target.ns.pid, Some(42));
        assert_eq!(args.target.ifname, "eth1");
        assert!(
            attach_args(&["10.32.0.1/12"]).is_err(),
            "a namespace is required"
        );
        assert!(attach_args(&["--netns", "c1", "--pid", "4", "10.32.0.1/12"]).is_err());
        assert!(
            attach_args(&["--netns", "c1"]).is_err(),
            "an address is required"
        );
        let args = attach_args(&["--netns", "c1", "--ifname", "x/y", "10.32.0.1/12"]).unwrap();
        let e = args.target.validate().unwrap_err().to_string();
        assert!(e.starts_with("invalid --ifname: "), "{e}");
        let e = parse_cidrs(&["10.32.0.1"]).unwrap_err().to_string();
        assert!(e.contains("prefix length is missing"), "{e}");
    }

    #[test]
    fn ps_lists_one_attachment_a_line() {
        assert_eq!(format_ps(&[]), "no namespace is attached\n");
        let attachments = [
            AttachmentInfo {
                id: "c1".into(),
                netns: Netns::Name("c1".into()),
                ifname: "ethwe".into(),
                host_ifname: "vw0123abcd".into(),
                mac: Some("02:00:00:00:00:01".into()),
                addresses: vec!["10.32.0.1/12".into(), "fd00::1/64".into()],
                state: "up".into(),
            },
            AttachmentInfo {
                id: "5f2a".into(),
                netns: Netns::Pid(4242),
                ifname: "ethwe".into(),
                host_ifname: "vw89abcdef".into(),
                mac: None,
                addresses: vec![],
                state: "down".into(),
            },
        ];
        let expected =
            "  ID    NAMESPACE  INTERFACE  MAC                ADDRESSES                HOST END    STATE
  c1    c1         ethwe      02:00:00:00:00:01  10.32.0.1/12,fd00::1/64  vw0123abcd  up
  5f2a  pid 4242   ethwe      -                  -                        vw89abcdef  down
";
        assert_eq!(format_ps(&attachments), expected);
    }

    #[test]
    fn every_bad_value_is_named_with_a_fix() {
        let e = error(&["host:port"]);
        assert!(e.starts_with("invalid peer address \"host:port\""), "{e}");
        assert!(e.contains("HOST:PORT"), "{e}");
        let e = error(&["--name", "nope"]);
        assert!(
            e.contains("invalid peer name") && e.contains("7a:1f:00:9c:3e:01"),
            "{e}"
        );
        let e = error(&["--nickname", "a b"]);
        assert!(e.contains("invalid nickname"), "{e}");
        let e = error(&["--port", "0"]);
        assert!(e.contains("--port 0"), "{e}");
        let e = error(&["--http-addr", "127.0.0.1:6784"]);
        assert!(
            e.contains("--http-addr is gone") && e.contains("--api-socket"),
            "{e}"
        );
        let e = error(&["--api-group", "no-such-group-for-weft"]);
        assert!(
            e.contains("--api-group") && e.contains("no such group"),
            "{e}"
        );
        let e = error(&["--heartbeat-interval", "soon"]);
        assert!(
            e.contains("--heartbeat-interval") && e.contains("500ms"),
            "{e}"
        );
        let e = error(&["--heartbeat-timeout", "0s"]);
        assert!(e.contains("longer than zero"), "{e}");
        let e = error(&["--heartbeat-interval", "5s", "--heartbeat-timeout", "2s"]);
        assert!(
            e.contains("must be longer than --heartbeat-interval"),
            "{e}"
        );
        let e = error(&["--log-level", "loud"]);
        assert!(e.contains("--log-level") && e.contains("debug"), "{e}");
    }

    #[test]
    fn the_background_child_gets_the_same_launch_in_the_foreground() {
        for host in [&["--bridge", "br0", "--mtu", "9000"][..], &["--no-bridge"]] {
            let mut args = vec![
                "--home",
                "/tmp/h",
                "--no-discovery",
                "--heartbeat-interval",
                "250ms",
            ];
            args.extend_from_slice(host);
            args.push("[2001:db8::1]:7000");
            let plan = launch(&args).validate().unwrap();
            let name: PeerName = "7a:1f:00:9c:3e:01".parse().unwrap();
            let argv: Vec<OsString> = std::iter::once(OsString::from("weft"))
                .chain(plan.child_args(name))
                .collect();
            let Command::Launch(child) = Cli::try_parse_from(argv).unwrap().command else {
                panic!("child args are not a launch");
            };
            let child = child.validate().unwrap();
            assert!(child.foreground);
            assert_eq!(child.name, Some(name));
            assert_eq!(
                LaunchPlan {
                    foreground: false,
                    name: None,
                    ..child
                },
                plan
            );
        }
    }

    #[test]
    fn a_failed_start_shows_only_what_this_launch_logged() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("weft.log");
        std::fs::write(&log, "old run\n").unwrap();
        let start = std::fs::metadata(&log).unwrap().len();
        let mut text = String::from("old run\n");
        for i in 0..15 {
            text.push_str(&format!("line {i}\n\n"));
        }
        std::fs::write(&log, text).unwrap();
        let tail = log_tail(&log, start);
        let expected: Vec<String> = (5..15).map(|i| format!("  line {i}")).collect();
        assert_eq!(tail, expected.join("\n"));
        let end = std::fs::metadata(&log).unwrap().len();
        assert_eq!(log_tail(&log, end), "  (the log is empty)");
    }

    fn sample_status() -> RouterStatus {
        serde_json::from_value(serde_json::json!({
            "name": "7a:1f:00:9c:3e:01", "nickname": "host-a", "uid": "00000000000000aa",
            "version": "0.1.0", "protocol_min": 1, "protocol_max": 1, "listen_port": 6783,
            "discovery": true, "topology_version": 7,
            "encryption": {"mode": "noise (password)", "replay_drops": 0, "rekeys": 2},
            "handshake_failures": {"password_mismatch": 3},
            "connections": [
                {"peer": "7a:1f:00:9c:3e:02", "nickname": "host-b", "address": "10.9.0.2:6783",
                 "direction": "outbound", "state": "established", "conn_id": "01ab",
                 "protocol_version": 1, "age_secs": 5, "encryption": "noise",
                 "data_path": {"udp_address": "10.9.0.2:6783", "usable": true, "pmtu": 1472,
                               "pmtu_verified": true}},
                {"peer": null, "nickname": null, "address": "10.9.0.9:40000",
                 "direction": "inbound", "state": "handshaking", "conn_id": null,
                 "protocol_version": null, "age_secs": 0}
            ],
            "targets": [
                {"address": "10.9.0.2:6783", "origin": "user", "state": "connected",
                 "failures": 0, "last_error": null, "retry_in_secs": null},
                {"address": "10.9.0.8:6783", "origin": "user", "state": "retrying",
                 "failures": 2, "last_error": "connection refused", "retry_in_secs": 3}
            ],
            "peers": [
                {"name": "7a:1f:00:9c:3e:01", "nickname": "host-a", "uid": "aa", "version": 7,
                 "reachable": true, "is_local": true, "next_hop": null, "hops": null, "connections": []},
                {"name": "7a:1f:00:9c:3e:02", "nickname": "host-b", "uid": "bb", "version": 3,
                 "reachable": true, "is_local": false, "next_hop": "7a:1f:00:9c:3e:02", "hops": 1,
                 "connections": []},
                {"name": "7a:1f:00:9c:3e:03", "nickname": "host-c", "uid": "cc", "version": 2,
                 "reachable": true, "is_local": false, "next_hop": "7a:1f:00:9c:3e:02", "hops": 2,
                 "connections": []},
                {"name": "7a:1f:00:9c:3e:04", "nickname": "host-d", "uid": "dd", "version": 9,
                 "reachable": false, "is_local": false, "next_hop": null, "hops": null,
                 "connections": []}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn status_reads_like_weave_status() {
        let text = format_status(&sample_status());
        let expected = "        Version: 0.1.0 (protocol 1..1)
           Name: 7a:1f:00:9c:3e:01 (host-a)
     Encryption: noise (password)
    Listen port: 6783
    Topology v.: 7
 Peer discovery: enabled
        Targets: 2
    Connections: 3 (1 established, 1 pending, 1 retrying)
          Peers: 4 (3 reachable)
Handshake fails: 3 password mismatch

Connections:
  ->  10.9.0.2:6783   7a:1f:00:9c:3e:02 (host-b)  established  encrypted  udp ok, pmtu 1472  conn 01ab
  <-  10.9.0.9:40000  -                           handshaking

Targets:
  10.9.0.2:6783  user  connected
  10.9.0.8:6783  user  retrying   2 failures, last error: connection refused, next try in 3s

Peers:
  7a:1f:00:9c:3e:01 (host-a)  self
  7a:1f:00:9c:3e:02 (host-b)  reachable    direct
  7a:1f:00:9c:3e:03 (host-c)  reachable    via 7a:1f:00:9c:3e:02 (host-b), 2 hops
  7a:1f:00:9c:3e:04 (host-d)  unreachable
";
        assert_eq!(text, expected);
    }

    #[test]
    fn status_sub_views_list_one_kind_each() {
        let st = sample_status();
        let peers = format_view(&st, View::Peers);
        assert_eq!(peers.lines().count(), 4, "{peers}");
        assert!(peers.contains("via 7a:1f:00:9c:3e:02 (host-b), 2 hops"));
        let targets = format_view(&st, View::Targets);
        assert_eq!(targets.lines().count(), 2, "{targets}");
        let connections = format_view(&st, View::Connections);
        assert_eq!(connections.lines().count(), 2, "{connections}");
        let mut empty = st.clone();
        empty.targets.clear();
        assert_eq!(format_view(&empty, View::Targets), "");
    }

    #[test]
    fn connections_count_failed_targets_after_three_failures() {
        let mut st = sample_status();
        st.targets[1].failures = 3;
        let counts = st.connection_counts();
        assert_eq!((counts.established, counts.pending), (1, 1));
        assert_eq!((counts.retrying, counts.failed), (0, 1));
        assert!(format_status(&st).contains("Connections: 3 (1 established, 1 pending, 1 failed)"));
    }

    #[test]
    fn dot_has_every_peer_and_each_connection_once() {
        let mut st = sample_status();
        let link = |peer: &str, established| crate::core::status::PeerConnectionStatus {
            peer: peer.into(),
            address: None,
            outbound: true,
            established,
        };
        st.peers[0].connections = vec![link("7a:1f:00:9c:3e:02", true)];
        st.peers[1].connections = vec![
            link("7a:1f:00:9c:3e:01", true),
            link("7a:1f:00:9c:3e:03", false),
        ];
        let dot = format_dot(&st);
        assert!(
            dot.starts_with("graph weft {\n") && dot.ends_with("}\n"),
            "{dot}"
        );
        for peer in ["host-a", "host-b", "host-c", "host-d"] {
            assert!(
                dot.contains(&format!("[label=\"{peer}\\n")),
                "{peer}: {dot}"
            );
        }
        assert!(dot.contains(
            "\"7a:1f:00:9c:3e:01\" -- \"7a:1f:00:9c:3e:02\" [color=\"#2e7d32\", penwidth=3];"
        ));
        assert!(dot.contains(
            "\"7a:1f:00:9c:3e:02\" -- \"7a:1f:00:9c:3e:03\" [color=\"#ef6c00\", style=dashed];"
        ));
        assert_eq!(dot.matches(" -- ").count(), 2, "{dot}");
    }

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        let mut argv = vec!["weft"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(|c| c.command)
    }

    #[test]
    fn every_command_has_help_and_completions_generate() {
        Cli::command().debug_assert();
        for shell in ["bash", "zsh", "fish"] {
            assert!(matches!(
                parse(&["completions", shell]),
                Ok(Command::Completions { .. })
            ));
        }
        let mut out = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "weft",
            &mut out,
        );
        let script = String::from_utf8(out).unwrap();
        for command in ["launch", "expose", "reset", "completions"] {
            assert!(script.contains(command), "{command} missing");
        }
    }

    #[test]
    fn status_connect_and_launch_flags_parse() {
        assert!(matches!(
            parse(&["status", "peers"]),
            Ok(Command::Status(StatusArgs {
                view: Some(View::Peers),
                dot: false,
                ..
            }))
        ));
        assert!(matches!(
            parse(&["status", "--dot"]),
            Ok(Command::Status(StatusArgs {
                view: None,
                dot: true,
                ..
            }))
        ));
        assert!(parse(&["status", "peers", "--dot"]).is_err());
        assert!(parse(&["status", "routes"]).is_err());
        assert!(matches!(
            parse(&["connect", "--replace", "192.0.2.1"]),
            Ok(Command::Connect(ConnectArgs { replace: true, .. }))
        ));
        assert!(
            parse(&["launch", "--resume", "192.0.2.1"]).is_err(),
            "--resume takes the peers from the last run"
        );
        let plan = launch(&["--resume", "--status-addr", "127.0.0.1:7782"])
            .validate()
            .unwrap();
        assert!(plan.resume);
        assert_eq!(plan.status_addr, "127.0.0.1:7782".parse().unwrap());
        let e = error(&["--status-addr", "nowhere"]);
        assert!(e.contains("invalid --status-addr"), "{e}");
    }

    #[test]
    fn the_password_file_is_read_or_explained() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("pw");
        std::fs::write(&file, "s3cret\nignored\n").unwrap();
        let plan = launch(&["--password-file", file.to_str().unwrap()])
            .validate()
            .unwrap();
        assert_eq!(plan.password.as_deref(), Some("s3cret"));
        let missing = tmp.path().join("absent");
        let e = error(&["--password-file", missing.to_str().unwrap()]);
        assert_eq!(
            e,
            format!(
                "cannot read --password-file {}: No such file or directory; give a readable file holding the password",
                missing.display()
            )
        );
        std::fs::write(&file, "\n").unwrap();
        let e = error(&["--password-file", file.to_str().unwrap()]);
        assert!(e.contains("is empty"), "{e}");
    }
}
