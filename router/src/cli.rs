//! The `weft` command line: argument parsing, validation, and the commands
//! (launch, status, report, stop, connect, forget, attach, detach, ps,
//! version).
//!
//! Every value a user types is validated before anything starts, and every
//! error is one line naming the problem and what to do about it.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::core::RouterConfig;
use crate::core::identity::{Identity, PeerName, PeerUid, validate_nickname};
use crate::core::router::{DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_HEARTBEAT_TIMEOUT};
use crate::core::status::RouterStatus;
use crate::core::wire::addr::{DEFAULT_PORT, PeerAddr};
use crate::core::wire::preamble::{PROTOCOL_MAX, PROTOCOL_MIN};
use crate::shell::attach::{AttachmentInfo, DEFAULT_IFNAME, Netns, parse_cidrs};
use crate::shell::client::Client;
use crate::shell::daemon::{self, DaemonConfig};
use crate::shell::home::{self, DEFAULT_HOME, Home};
use crate::shell::host::{self, DEFAULT_BRIDGE, DEFAULT_MTU, DEFAULT_TAP, HostConfig, MTU_RANGE};
use crate::shell::http_api::{AttachRequest, DetachRequest};
use crate::shell::sockets::{self, Service};

/// Where the HTTP API listens unless told otherwise: loopback only, since
/// the API is unauthenticated.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:6784";

/// Nickname used when the host name is not a valid one.
const FALLBACK_NICKNAME: &str = "weft";

/// How long `weft launch` and `weft stop` wait for the router.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Log lines shown when a daemonised router dies during startup.
const LOG_TAIL_LINES: usize = 10;

const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

#[derive(Debug, Parser)]
#[command(name = "weft", version, about = "weft: a userspace mesh router")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a router (in the background unless --foreground).
    Launch(LaunchArgs),
    /// Show the router's state for a person.
    Status(ApiArgs),
    /// Print the router's state as JSON.
    Report(ApiArgs),
    /// Stop the router.
    Stop(ApiArgs),
    /// Connect to more peers (and keep them connected).
    Connect(PeersArgs),
    /// Stop keeping these peers connected.
    Forget(PeersArgs),
    /// Plug a network namespace (a container) into the bridge.
    Attach(AttachArgs),
    /// Unplug a network namespace from the bridge.
    Detach(DetachArgs),
    /// List the attached network namespaces.
    Ps(ApiArgs),
    /// Print the version.
    Version,
}

#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Address of the router's HTTP API.
    #[arg(long, env = "WEFT_HTTP_ADDR", default_value = DEFAULT_HTTP_ADDR, value_name = "IP:PORT")]
    pub http_addr: String,
}

#[derive(Debug, Args)]
pub struct PeersArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Peers as HOST, HOST:PORT or [IPV6]:PORT.
    #[arg(required = true, value_name = "PEER[:PORT]")]
    pub peers: Vec<String>,
}

/// Which namespace: exactly one of the two.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct NetnsRef {
    /// A network namespace made with `ip netns add NAME`.
    #[arg(long, value_name = "NAME")]
    pub netns: Option<String>,
    /// The network namespace of process PID (a container's).
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
}

/// Which namespace, and which interface in it.
#[derive(Debug, Args)]
pub struct NetnsArgs {
    #[command(flatten)]
    pub ns: NetnsRef,
    /// Interface name inside the namespace.
    #[arg(long, default_value = DEFAULT_IFNAME, value_name = "NAME")]
    pub ifname: String,
}

impl NetnsArgs {
    /// Checks the names here, so mistakes are reported without a round
    /// trip to the router.
    fn validate(&self) -> Result<()> {
        Netns::from_parts(self.ns.netns.clone(), self.ns.pid)?;
        host::check_ifname(&self.ifname).map_err(|e| anyhow!("invalid --ifname: {e}"))
    }
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub target: NetnsArgs,
    /// Addresses for the interface, like 10.32.0.1/12 or fd00::1/64.
    #[arg(required = true, value_name = "CIDR")]
    pub cidrs: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DetachArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub target: NetnsArgs,
}

#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// Peer name (six hex bytes, like 7a:1f:00:9c:3e:01); persisted in the
    /// home directory. Default: the persisted one, or a new random name.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Human-readable name shown to other peers. Default: the host name.
    #[arg(long, value_name = "NICKNAME")]
    pub nickname: Option<String>,
    /// TCP port to accept peer connections on.
    #[arg(long, default_value_t = DEFAULT_PORT, value_name = "PORT")]
    pub port: u16,
    /// Only connect to peers given explicitly, not to those learnt from
    /// gossip.
    #[arg(long)]
    pub no_discovery: bool,
    /// State directory: peer name, lock, pid file, log, targets.
    #[arg(long, env = "WEFT_HOME", default_value = DEFAULT_HOME, value_name = "DIR")]
    pub home: PathBuf,
    /// Address of the HTTP API to serve.
    #[arg(long, env = "WEFT_HTTP_ADDR", default_value = DEFAULT_HTTP_ADDR, value_name = "IP:PORT")]
    pub http_addr: String,
    /// Run in this process, logging to stderr, instead of in the background.
    #[arg(long)]
    pub foreground: bool,
    /// One of off, error, warn, info, debug, trace.
    #[arg(long, default_value = "info", value_name = "LEVEL")]
    pub log_level: String,
    /// How often an idle connection sends a heartbeat (e.g. 1s, 500ms).
    #[arg(long, value_name = "DURATION")]
    pub heartbeat_interval: Option<String>,
    /// Silence after which a connection is declared dead (e.g. 4s).
    #[arg(long, value_name = "DURATION")]
    pub heartbeat_timeout: Option<String>,
    /// Linux bridge that containers attach to; created, or adopted if it
    /// exists, and removed when the router stops.
    #[arg(long, default_value = DEFAULT_BRIDGE, value_name = "NAME")]
    pub bridge: String,
    /// MTU of the bridge, the TAP device and attached interfaces.
    #[arg(long, default_value_t = DEFAULT_MTU, value_name = "BYTES")]
    pub mtu: u32,
    /// Run the mesh only: no bridge or TAP device (and no root needed);
    /// nothing can attach.
    #[arg(long, conflicts_with_all = ["bridge", "mtu"])]
    pub no_bridge: bool,
    /// Peers to connect to, as HOST, HOST:PORT or [IPV6]:PORT.
    #[arg(value_name = "PEER[:PORT]")]
    pub peers: Vec<String>,
}

/// A launch whose every argument has been checked.
#[derive(Clone, Debug, PartialEq)]
pub struct LaunchPlan {
    pub name: Option<PeerName>,
    pub nickname: String,
    pub port: u16,
    pub discovery: bool,
    pub home: PathBuf,
    pub http_addr: SocketAddr,
    pub foreground: bool,
    pub log_level: String,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    /// `None` with `--no-bridge`.
    pub host: Option<HostConfig>,
    pub peers: Vec<PeerAddr>,
}

impl LaunchArgs {
    /// Checks every argument; nothing is started or written.
    pub fn validate(&self) -> Result<LaunchPlan> {
        let peers = self
            .peers
            .iter()
            .map(|p| PeerAddr::from_str(p))
            .collect::<Result<Vec<_>, _>>()?;
        let name = self.name.as_deref().map(PeerName::from_str).transpose()?;
        let nickname = match &self.nickname {
            Some(n) => {
                validate_nickname(n)?;
                n.clone()
            }
            None => default_nickname(),
        };
        if self.port == 0 {
            bail!("invalid --port 0: pick a port from 1 to 65535 (the default is {DEFAULT_PORT})");
        }
        let http_addr = parse_http_addr(&self.http_addr)?;
        if !LOG_LEVELS.contains(&self.log_level.as_str()) {
            bail!(
                "invalid --log-level {:?}: use one of {}",
                self.log_level,
                LOG_LEVELS.join(", ")
            );
        }
        let heartbeat_interval = parse_duration(
            "--heartbeat-interval",
            self.heartbeat_interval.as_deref(),
            DEFAULT_HEARTBEAT_INTERVAL,
        )?;
        let heartbeat_timeout = parse_duration(
            "--heartbeat-timeout",
            self.heartbeat_timeout.as_deref(),
            DEFAULT_HEARTBEAT_TIMEOUT,
        )?;
        if heartbeat_timeout <= heartbeat_interval {
            bail!(
                "--heartbeat-timeout ({}) must be longer than --heartbeat-interval ({}); a few intervals is typical",
                humantime::format_duration(heartbeat_timeout),
                humantime::format_duration(heartbeat_interval)
            );
        }
        let host = if self.no_bridge {
            None
        } else {
            host::check_ifname(&self.bridge).map_err(|e| anyhow!("invalid --bridge: {e}"))?;
            if !MTU_RANGE.contains(&self.mtu) {
                bail!(
                    "invalid --mtu {}: pick one from {} to {} (the default is {DEFAULT_MTU})",
                    self.mtu,
                    MTU_RANGE.start(),
                    MTU_RANGE.end()
                );
            }
            Some(HostConfig {
                bridge: self.bridge.clone(),
                tap: DEFAULT_TAP.into(),
                mtu: self.mtu,
            })
        };
        let home = std::path::absolute(&self.home)
            .with_context(|| format!("cannot resolve --home {}", self.home.display()))?;
        Ok(LaunchPlan {
            name,
            nickname,
            port: self.port,
            discovery: !self.no_discovery,
            home,
            http_addr,
            foreground: self.foreground,
            log_level: self.log_level.clone(),
            heartbeat_interval,
            heartbeat_timeout,
            host,
            peers,
        })
    }
}

impl LaunchPlan {
    /// Arguments for the background process: the same launch, in the
    /// foreground, with the name already settled.
    fn child_args(&self, name: PeerName) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "launch".into(),
            "--foreground".into(),
            "--home".into(),
            self.home.clone().into(),
            "--name".into(),
            name.to_string().into(),
            "--nickname".into(),
            self.nickname.clone().into(),
            "--port".into(),
            self.port.to_string().into(),
            "--http-addr".into(),
            self.http_addr.to_string().into(),
            "--log-level".into(),
            self.log_level.clone().into(),
            "--heartbeat-interval".into(),
            humantime::format_duration(self.heartbeat_interval)
                .to_string()
                .into(),
            "--heartbeat-timeout".into(),
            humantime::format_duration(self.heartbeat_timeout)
                .to_string()
                .into(),
        ];
        if !self.discovery {
            args.push("--no-discovery".into());
        }
        match &self.host {
            Some(host) => args.extend([
                "--bridge".into(),
                host.bridge.clone().into(),
                "--mtu".into(),
                host.mtu.to_string().into(),
            ]),
            None => args.push("--no-bridge".into()),
        }
        args.push("--".into());
        args.extend(self.peers.iter().map(|p| p.to_string().into()));
        args
    }

    fn router_config(&self, name: PeerName) -> RouterConfig {
        let identity = Identity {
            name,
            nickname: self.nickname.clone(),
            uid: PeerUid(rand::random()),
        };
        let mut config = RouterConfig::new(identity, self.port, rand::random());
        config.discovery = self.discovery;
        config.heartbeat_interval = self.heartbeat_interval;
        config.heartbeat_timeout = self.heartbeat_timeout;
        config
    }

    fn mesh_addr(&self) -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], self.port))
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Launch(args) => {
            let plan = args.validate()?;
            if plan.foreground {
                launch_foreground(&plan)
            } else {
                launch_background(&plan)
            }
        }
        Command::Status(api) => {
            let client = Client::new(parse_http_addr(&api.http_addr)?);
            let status = block_on(client.get_status())??;
            print!("{}", format_status(&status));
            Ok(())
        }
        Command::Report(api) => {
            let client = Client::new(parse_http_addr(&api.http_addr)?);
            let status = block_on(client.get_status())??;
            println!("{}", serde_json::to_string_pretty(&status)?);
            Ok(())
        }
        Command::Stop(api) => {
            let client = Client::new(parse_http_addr(&api.http_addr)?);
            block_on(stop(client))??;
            println!("weft router stopped");
            Ok(())
        }
        Command::Connect(args) => {
            let client = Client::new(parse_http_addr(&args.api.http_addr)?);
            validate_peers(&args.peers)?;
            let answer = block_on(client.post_connect(&args.peers))??;
            for added in answer.added {
                println!("connecting to {added}");
            }
            Ok(())
        }
        Command::Forget(args) => {
            let client = Client::new(parse_http_addr(&args.api.http_addr)?);
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
            let client = Client::new(parse_http_addr(&args.api.http_addr)?);
            args.target.validate()?;
            parse_cidrs(&args.cidrs)?;
            let request = AttachRequest {
                netns: args.target.ns.netns,
                pid: args.target.ns.pid,
                ifname: Some(args.target.ifname),
                cidrs: args.cidrs,
            };
            let info = block_on(client.post_attach(&request))??;
            println!(
                "attached {}: {} {} {} (host end {})",
                info.netns,
                info.ifname,
                info.mac.as_deref().unwrap_or("-"),
                info.addresses.join(" "),
                info.host_ifname
            );
            Ok(())
        }
        Command::Detach(args) => {
            let client = Client::new(parse_http_addr(&args.api.http_addr)?);
            args.target.validate()?;
            let request = DetachRequest {
                netns: args.target.ns.netns,
                pid: args.target.ns.pid,
                ifname: Some(args.target.ifname),
            };
            let detached = block_on(client.post_detach(&request))??;
            println!("detached {}: {}", detached.netns, detached.ifname);
            Ok(())
        }
        Command::Ps(api) => {
            let client = Client::new(parse_http_addr(&api.http_addr)?);
            let ps = block_on(client.get_ps())??;
            print!("{}", format_ps(&ps.attachments));
            Ok(())
        }
        Command::Version => {
            println!("{}", version_line());
            Ok(())
        }
    }
}

fn version_line() -> String {
    format!(
        "weft {} (protocol {PROTOCOL_MIN}..{PROTOCOL_MAX})",
        env!("CARGO_PKG_VERSION")
    )
}

/// Runs the router in this process until it is stopped.
fn launch_foreground(plan: &LaunchPlan) -> Result<()> {
    init_logging(&plan.log_level);
    let mut home = Home::open(&plan.home)?;
    let name = home.peer_name(plan.name)?;
    let mesh = sockets::bind(plan.mesh_addr(), Service::Mesh)?;
    let udp = sockets::bind_udp(plan.port)?;
    let http = sockets::bind(plan.http_addr, Service::Api)?;
    home.write_pid()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let mesh =
            tokio::net::TcpListener::from_std(mesh).context("cannot use the mesh listener")?;
        let http =
            tokio::net::TcpListener::from_std(http).context("cannot use the HTTP API listener")?;
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        let config = DaemonConfig {
            router: plan.router_config(name),
            targets: plan.peers.clone(),
            home: Some(home),
            udp: Some(udp),
            host: plan.host.clone(),
        };
        daemon::run(config, mesh, http, shutdown).await?;
        Ok(())
    })
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            error!(error = %e, "cannot listen for SIGTERM; stop the router with `weft stop`");
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("interrupted; stopping"),
        _ = term.recv() => info!("SIGTERM received; stopping"),
    }
    shutdown.cancel();
}

fn init_logging(level: &str) {
    let stderr = std::io::stderr();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(level))
        .with_ansi(stderr.is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// Starts the router as a detached copy of this program and waits until
/// its API answers.
fn launch_background(plan: &LaunchPlan) -> Result<()> {
    // Check what can be checked here, so the common mistakes are reported
    // directly rather than through the child's log.
    let name = {
        let home = Home::open(&plan.home)?;
        home.peer_name(plan.name)?
    };
    drop(sockets::bind(plan.mesh_addr(), Service::Mesh)?);
    drop(sockets::bind_udp(plan.port)?);
    drop(sockets::bind(plan.http_addr, Service::Api)?);

    let log_path = home::log_path(&plan.home);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open log file {}", log_path.display()))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let log_err = log
        .try_clone()
        .with_context(|| format!("cannot open log file {}", log_path.display()))?;
    let exe = std::env::current_exe().context("cannot find the weft executable to start")?;
    let mut command = Process::new(&exe);
    command
        .args(plan.child_args(name))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    // SAFETY: setsid() is async-signal-safe and touches no memory of the
    // parent; it detaches the router from our terminal and process group so
    // it survives the shell that launched it.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    let pid = child.id();

    let client = Client::new(plan.http_addr);
    let started = block_on(async {
        let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = child
                .try_wait()
                .context("cannot watch the router process")?
            {
                let tail = log_tail(&log_path, log_start);
                bail!(
                    "the weft router exited during startup ({status}); the end of {}:\n{tail}",
                    log_path.display()
                );
            }
            // Another router may answer at this address; only ours counts.
            if let Ok(status) = client.get_status().await
                && status.name == name.to_string()
            {
                return Ok(status);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "the weft router (pid {pid}) did not answer at {} within {}s; it may still be starting, see {}",
                    plan.http_addr,
                    STARTUP_TIMEOUT.as_secs(),
                    log_path.display()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    })??;
    println!(
        "weft router {} ({}) running as pid {pid}; logs: {}",
        started.name,
        started.nickname,
        log_path.display()
    );
    Ok(())
}

/// The last lines written to `path` after `start`, indented.
fn log_tail(path: &Path, start: u64) -> String {
    let mut text = String::new();
    let read = File::open(path).and_then(|mut f| {
        f.seek(SeekFrom::Start(start))?;
        f.read_to_string(&mut text)
    });
    if let Err(e) = read {
        return format!("  (cannot read the log: {e})");
    }
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return "  (the log is empty)".into();
    }
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..]
        .iter()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
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
                client.addr(),
                STOP_TIMEOUT.as_secs()
            ),
            _ => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
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

fn parse_http_addr(s: &str) -> Result<SocketAddr> {
    s.parse().map_err(|_| {
        anyhow!("invalid --http-addr {s:?}: expected IP:PORT, such as {DEFAULT_HTTP_ADDR}")
    })
}

fn parse_duration(flag: &str, value: Option<&str>, default: Duration) -> Result<Duration> {
    let Some(value) = value else {
        return Ok(default);
    };
    let d = humantime::parse_duration(value)
        .map_err(|e| anyhow!("invalid {flag} {value:?} ({e}): use a duration like 500ms or 2s"))?;
    if d.is_zero() {
        bail!("invalid {flag} {value:?}: it must be longer than zero");
    }
    Ok(d)
}

/// The host name if it is a valid nickname, else a fixed one.
fn default_nickname() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| validate_nickname(h).is_ok())
        .unwrap_or_else(|| FALLBACK_NICKNAME.to_owned())
}

/// `weft status`: the router's state for a person.
pub fn format_status(st: &RouterStatus) -> String {
    let label = |name: &str, nickname: Option<&str>| match nickname {
        Some(n) => format!("{name} ({n})"),
        None => name.to_owned(),
    };
    let nickname_of = |name: &str| {
        st.peers
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.nickname.as_str())
    };
    let established = st
        .connections
        .iter()
        .filter(|c| c.state == "established")
        .count();
    let reachable = st
        .peers
        .iter()
        .filter(|p| p.reachable || p.is_local)
        .count();

    let mut out = String::new();
    let mut field = |key: &str, value: String| {
        let _ = writeln!(out, "{key:>15}: {value}");
    };
    field(
        "Version",
        format!(
            "{} (protocol {}..{})",
            st.version, st.protocol_min, st.protocol_max
        ),
    );
    field("Name", label(&st.name, Some(&st.nickname)));
    field("Listen port", st.listen_port.to_string());
    field("Topology v.", st.topology_version.to_string());
    field(
        "Peer discovery",
        if st.discovery { "enabled" } else { "disabled" }.into(),
    );
    field("Targets", st.targets.len().to_string());
    field(
        "Connections",
        format!(
            "{} ({established} established, {} handshaking)",
            st.connections.len(),
            st.connections.len() - established
        ),
    );
    field(
        "Peers",
        format!("{} ({reachable} reachable)", st.peers.len()),
    );

    if !st.connections.is_empty() {
        out.push_str("\nConnections:\n");
        let rows = st
            .connections
            .iter()
            .map(|c| {
                let arrow = if c.direction == "outbound" {
                    "->"
                } else {
                    "<-"
                };
                let peer = match &c.peer {
                    Some(p) => label(p, c.nickname.as_deref()),
                    None => "-".into(),
                };
                let id = c
                    .conn_id
                    .as_ref()
                    .map(|id| format!("conn {id}"))
                    .unwrap_or_default();
                let data = match &c.data_path {
                    Some(d) if d.usable && d.pmtu_verified => format!("udp ok, pmtu {}", d.pmtu),
                    Some(d) if d.usable => format!("udp ok, pmtu {} (unverified)", d.pmtu),
                    Some(_) => "udp down: data avoids this link".into(),
                    None => String::new(),
                };
                vec![
                    arrow.into(),
                    c.address.clone(),
                    peer,
                    c.state.clone(),
                    data,
                    id,
                ]
            })
            .collect();
        out.push_str(&table(rows));
    }
    if !st.targets.is_empty() {
        out.push_str("\nTargets:\n");
        let rows = st
            .targets
            .iter()
            .map(|t| {
                let mut detail = Vec::new();
                if t.failures > 0 {
                    detail.push(format!(
                        "{} failure{}",
                        t.failures,
                        if t.failures == 1 { "" } else { "s" }
                    ));
                }
                if let Some(e) = &t.last_error {
                    detail.push(format!("last error: {e}"));
                }
                if let Some(s) = t.retry_in_secs {
                    detail.push(format!("next try in {s}s"));
                }
                vec![
                    t.address.clone(),
                    t.origin.clone(),
                    t.state.clone(),
                    detail.join(", "),
                ]
            })
            .collect();
        out.push_str(&table(rows));
    }
    if !st.peers.is_empty() {
        out.push_str("\nPeers:\n");
        let rows = st
            .peers
            .iter()
            .map(|p| {
                let me = label(&p.name, Some(&p.nickname));
                let (state, route) = if p.is_local {
                    ("self", String::new())
                } else if !p.reachable {
                    ("unreachable", String::new())
                } else {
                    let route = match (&p.next_hop, p.hops) {
                        (Some(hop), Some(hops)) if *hop != p.name => {
                            format!("via {}, {hops} hops", label(hop, nickname_of(hop)))
                        }
                        (Some(hop), None) if *hop != p.name => {
                            format!("via {}", label(hop, nickname_of(hop)))
                        }
                        _ => "direct".into(),
                    };
                    ("reachable", route)
                };
                vec![me, state.into(), route]
            })
            .collect();
        out.push_str(&table(rows));
    }
    out
}

/// `weft ps`: one line per attachment under a header.
pub fn format_ps(attachments: &[AttachmentInfo]) -> String {
    if attachments.is_empty() {
        return "no namespace is attached\n".into();
    }
    let mut rows = vec![vec![
        "NAMESPACE".to_owned(),
        "INTERFACE".into(),
        "MAC".into(),
        "ADDRESSES".into(),
        "HOST END".into(),
        "STATE".into(),
    ]];
    rows.extend(attachments.iter().map(|a| {
        let addresses = if a.addresses.is_empty() {
            "-".into()
        } else {
            a.addresses.join(",")
        };
        vec![
            a.netns.label(),
            a.ifname.clone(),
            a.mac.clone().unwrap_or_else(|| "-".into()),
            addresses,
            a.host_ifname.clone(),
            a.state.clone(),
        ]
    }));
    table(rows)
}

/// Left-aligned columns two spaces apart, indented two spaces.
fn table(rows: Vec<Vec<String>>) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::from(" ");
        for (cell, width) in row.iter().zip(&widths) {
            let _ = write!(line, " {cell:<width$} ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(args: &[&str]) -> LaunchArgs {
        let mut argv = vec!["weft", "launch"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Launch(args) => args,
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
            "--http-addr",
            "127.0.0.1:7001",
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
        assert_eq!(plan.http_addr, "127.0.0.1:7001".parse().unwrap());
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
        assert_eq!(plan.http_addr.to_string(), DEFAULT_HTTP_ADDR);
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
                tap: DEFAULT_TAP.into(),
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
                netns: Netns::Name("c1".into()),
                ifname: "ethwe".into(),
                host_ifname: "vw0123abcd".into(),
                mac: Some("02:00:00:00:00:01".into()),
                addresses: vec!["10.32.0.1/12".into(), "fd00::1/64".into()],
                state: "up".into(),
            },
            AttachmentInfo {
                netns: Netns::Pid(4242),
                ifname: "ethwe".into(),
                host_ifname: "vw89abcdef".into(),
                mac: None,
                addresses: vec![],
                state: "down".into(),
            },
        ];
        let expected =
            "  NAMESPACE  INTERFACE  MAC                ADDRESSES                HOST END    STATE
  c1         ethwe      02:00:00:00:00:01  10.32.0.1/12,fd00::1/64  vw0123abcd  up
  pid 4242   ethwe      -                  -                        vw89abcdef  down
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
        let e = error(&["--http-addr", "localhost"]);
        assert!(e.contains("--http-addr") && e.contains("IP:PORT"), "{e}");
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
            "connections": [
                {"peer": "7a:1f:00:9c:3e:02", "nickname": "host-b", "address": "10.9.0.2:6783",
                 "direction": "outbound", "state": "established", "conn_id": "01ab",
                 "protocol_version": 1, "age_secs": 5,
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
    Listen port: 6783
    Topology v.: 7
 Peer discovery: enabled
        Targets: 2
    Connections: 2 (1 established, 1 handshaking)
          Peers: 4 (3 reachable)

Connections:
  ->  10.9.0.2:6783   7a:1f:00:9c:3e:02 (host-b)  established  udp ok, pmtu 1472  conn 01ab
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
}
