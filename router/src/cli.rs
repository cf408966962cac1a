//! The `weft` command line: argument parsing, validation, and the commands
//! (launch, status, report, stop, reset, connect, forget, attach, detach,
//! ps, expose, hide, version, completions).
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

#[derive(Debug, Parser)]
#[command(name = "weft", version, about = "weft: a userspace mesh router")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a router (in the background unless --foreground).
    Launch(Box<LaunchArgs>),
    /// Show the router's state for a person (or, with --dot, for Graphviz).
    Status(StatusArgs),
    /// Print the router's state as JSON (field names: docs/api.md).
    Report(ApiArgs),
    /// Stop the router.
    Stop(ApiArgs),
    /// Stop the router and remove its persisted state and host setup.
    Reset(ResetArgs),
    /// Connect to more peers (and keep them connected).
    Connect(ConnectArgs),
    /// Stop keeping these peers connected.
    Forget(PeersArgs),
    /// Plug a network namespace (a container) into the bridge.
    Attach(AttachArgs),
    /// Unplug a network namespace from the bridge.
    Detach(DetachArgs),
    /// List the attached network namespaces.
    Ps(ApiArgs),
    /// Give the host itself an address on the overlay (on the bridge).
    Expose(ExposeArgs),
    /// Take the host's overlay addresses away again.
    Hide(ExposeArgs),
    /// Write a new static key pair for --key-file and print its public key
    /// (the line other routers list in their --trusted-keys).
    Keygen(KeygenArgs),
    /// Change the mesh password of a running router without a restart (see
    /// docs/security.md for the three-step rotation).
    Password(PasswordArgs),
    /// Print the version.
    Version,
    /// Print a shell completion script, e.g. `weft completions bash >
    /// /etc/bash_completion.d/weft`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Show only this list.
    #[arg(value_enum)]
    pub view: Option<View>,
    /// Print the topology as a Graphviz graph (`weft status --dot | dot
    /// -Tsvg > mesh.svg`).
    #[arg(long, conflicts_with = "view")]
    pub dot: bool,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the key pair (created with mode 0600; never
    /// overwritten).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct PasswordArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// File holding the password to dial peers with from now on (first
    /// line); it is accepted from peers too.
    #[arg(long, value_name = "FILE")]
    pub password_file: PathBuf,
    /// File holding a second password to accept from peers (the old or
    /// the next one, during a rotation).
    #[arg(long, value_name = "FILE")]
    pub also_accept_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub peers: PeersArgs,
    /// Forget every other peer given before (with `weft launch` or
    /// `weft connect`): these become the only ones.
    #[arg(long)]
    pub replace: bool,
}

#[derive(Debug, Args)]
pub struct ResetArgs {
    /// The router to reset: its home is the state directory removed.
    #[command(flatten)]
    pub api: ApiArgs,
    /// The bridge the router used (`weft launch --bridge`).
    #[arg(long, default_value = DEFAULT_BRIDGE, value_name = "NAME")]
    pub bridge: String,
}

#[derive(Debug, Args)]
pub struct ExposeArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Addresses for the host on the bridge, like 10.32.0.254/12. expose
    /// without one re-applies the ones exposed before; hide without one
    /// removes all.
    #[arg(value_name = "CIDR")]
    pub cidrs: Vec<String>,
}

/// Which router to talk to: found the way `weft launch` placed its
/// control socket.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// The router's state directory (`weft launch --home`); a non-default
    /// one puts the control socket at HOME/weft.sock.
    #[arg(long, env = "WEFT_HOME", default_value = DEFAULT_HOME, value_name = "DIR")]
    pub home: PathBuf,
    /// The router's control socket, if launched with --api-socket (default
    /// /run/weft/weft.sock for the default home).
    #[arg(long, env = "WEFT_API_SOCKET", value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
}

impl ApiArgs {
    fn home(&self) -> Result<PathBuf> {
        std::path::absolute(&self.home)
            .with_context(|| format!("cannot resolve --home {}", self.home.display()))
    }

    fn client(&self) -> Result<Client> {
        Ok(Client::new(api_socket::socket_path(
            &self.home()?,
            self.api_socket.as_deref(),
        )))
    }
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
    /// A network namespace file, as container runtimes give it:
    /// /proc/PID/ns/net, /run/netns/NAME, /var/run/netns/cni-...
    #[arg(long, value_name = "PATH")]
    pub netns_path: Option<PathBuf>,
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
        Netns::from_parts(
            self.ns.netns.clone(),
            self.ns.pid,
            self.ns.netns_path.clone(),
        )?;
        host::check_ifname(&self.ifname).map_err(|e| anyhow!("invalid --ifname: {e}"))
    }
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub target: NetnsArgs,
    /// The container's id, which later features key its addresses and
    /// names by. Default: the namespace's name, pid-PID, or the last part
    /// of --netns-path.
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
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
    /// Unix socket of the control API (what the CLI talks to). Default:
    /// /run/weft/weft.sock for the default home, HOME/weft.sock otherwise.
    #[arg(long, env = "WEFT_API_SOCKET", value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// Group whose members may use the control socket besides root.
    /// Default: `weft` if the group exists, else nobody but root.
    #[arg(long, value_name = "GROUP")]
    pub api_group: Option<String>,
    /// Removed: the control API no longer listens on TCP (kept so that an
    /// old command line gets an explanation, not "unexpected argument").
    #[arg(long, hide = true, value_name = "IP:PORT")]
    pub http_addr: Option<String>,
    /// Address of the read-only status listener: the topology page at /,
    /// the JSON report, /metrics for Prometheus.
    #[arg(long, env = "WEFT_STATUS_ADDR", default_value = DEFAULT_STATUS_ADDR, value_name = "IP:PORT")]
    pub status_addr: String,
    /// Reconnect to the peers persisted by the last run (launch and
    /// `weft connect`) instead of peers given here.
    #[arg(long, conflicts_with = "peers")]
    pub resume: bool,
    /// File holding the password that encrypts the mesh (its first line).
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// The mesh password itself. Prefer WEFT_PASSWORD or --password-file:
    /// a command line is visible to every user of the host.
    #[arg(
        long,
        env = "WEFT_PASSWORD",
        hide_env_values = true,
        conflicts_with = "password_file",
        value_name = "PASSWORD"
    )]
    pub password: Option<String>,
    /// During a password rotation: also accept peers that use the password
    /// in this file.
    #[arg(long, value_name = "FILE")]
    pub also_accept_password_file: Option<PathBuf>,
    /// Static key pair from `weft keygen` (default: a new one per launch).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Admit only peers whose public key is listed here, one per line
    /// (re-read when it changes). Works with or without a password.
    #[arg(long, value_name = "FILE")]
    pub trusted_keys: Option<PathBuf>,
    /// Underlay subnets whose links need no data encryption, like
    /// 10.0.0.0/8,fd00::/8: data to a peer goes unencrypted when each side
    /// sees the other's address in its trusted subnets. Control
    /// connections stay encrypted.
    #[arg(long, value_delimiter = ',', value_name = "CIDR,...")]
    pub trusted_subnets: Vec<String>,
    /// Rekey data sessions after this many datagrams or sealed messages
    /// (default 2^30; they also rekey every 2 minutes). For tests.
    #[arg(long, hide = true, value_name = "N")]
    pub rekey_after_packets: Option<u64>,
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
    /// exists, and left in place when the router stops (`weft reset`
    /// removes it). The TAP device is named after it: weft-tap for weft,
    /// NAME-tap otherwise.
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
    /// The control socket, resolved from `--api-socket` and the home.
    pub api_socket: PathBuf,
    /// Who besides root may use it; `None`: root only.
    pub api_group: Option<SocketGroup>,
    pub status_addr: SocketAddr,
    /// Take the peers from the home's persisted targets.
    pub resume: bool,
    /// Where the password came from, to hand the same file to the
    /// background router.
    pub password_file: Option<PathBuf>,
    /// The mesh password (`--password`, `WEFT_PASSWORD` or the file).
    pub password: Option<String>,
    pub also_accept_password_file: Option<PathBuf>,
    /// The second accepted password, read from that file.
    pub also_accept: Option<String>,
    pub key_file: Option<PathBuf>,
    pub trusted_keys: Option<PathBuf>,
    pub rekey_after_packets: Option<u64>,
    pub trusted_subnets: Vec<IpNet>,
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
        if self.http_addr.is_some() {
            bail!(
                "--http-addr is gone: the control API listens only on a unix socket now (--api-socket, default {DEFAULT_API_SOCKET}; see docs/api.md)"
            );
        }
        let status_addr = parse_addr("--status-addr", &self.status_addr, DEFAULT_STATUS_ADDR)?;
        let api_group = SocketGroup::resolve(self.api_group.as_deref())?;
        let password = match (&self.password, &self.password_file) {
            (Some(p), _) if p.is_empty() => bail!(
                "--password (or WEFT_PASSWORD) is empty; give the mesh password, or leave it out to run unencrypted"
            ),
            (Some(p), _) => Some(p.clone()),
            (None, Some(file)) => Some(read_password_file(file)?),
            (None, None) => None,
        };
        let also_accept = self
            .also_accept_password_file
            .as_deref()
            .map(read_password_file)
            .transpose()?;
        if also_accept.is_some() && password.is_none() {
            bail!(
                "--also-accept-password-file needs a password of its own (--password-file or WEFT_PASSWORD)"
            );
        }
        if let Some(path) = &self.key_file {
            crate::shell::crypto::read_key_file(path)?;
            if password.is_none() && self.trusted_keys.is_none() {
                bail!(
                    "--key-file alone does not authenticate anyone; add --password-file and/or --trusted-keys"
                );
            }
        }
        if let Some(path) = &self.trusted_keys {
            crate::shell::crypto::read_trusted_keys(path)?;
        }
        let trusted_subnets = self
            .trusted_subnets
            .iter()
            .map(|s| prefix::parse_subnet(s).map_err(|e| anyhow!("invalid --trusted-subnets: {e}")))
            .collect::<Result<Vec<_>>>()?;
        if !trusted_subnets.is_empty() && password.is_none() && self.trusted_keys.is_none() {
            bail!(
                "--trusted-subnets only matters with encryption; add --password-file (or --trusted-keys), or leave it out"
            );
        }
        if self.rekey_after_packets == Some(0) {
            bail!("--rekey-after-packets must be at least 1");
        }
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
                mtu: self.mtu,
            })
        };
        let home = std::path::absolute(&self.home)
            .with_context(|| format!("cannot resolve --home {}", self.home.display()))?;
        let api_socket = match &self.api_socket {
            Some(path) => std::path::absolute(path)
                .with_context(|| format!("cannot resolve --api-socket {}", path.display()))?,
            None => api_socket::socket_path(&home, None),
        };
        Ok(LaunchPlan {
            name,
            nickname,
            port: self.port,
            discovery: !self.no_discovery,
            home,
            api_socket,
            api_group,
            status_addr,
            resume: self.resume,
            password_file: self.password_file.clone(),
            password,
            also_accept_password_file: self.also_accept_password_file.clone(),
            also_accept,
            key_file: self.key_file.clone(),
            trusted_keys: self.trusted_keys.clone(),
            rekey_after_packets: self.rekey_after_packets,
            trusted_subnets,
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
            "--api-socket".into(),
            self.api_socket.clone().into(),
            "--status-addr".into(),
            self.status_addr.to_string().into(),
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
        if let Some(group) = self.api_group.as_ref().filter(|g| g.explicit()) {
            args.extend(["--api-group".into(), group.name.clone().into()]);
        }
        if let Some(file) = &self.password_file {
            args.extend(["--password-file".into(), file.clone().into()]);
        }
        for (flag, file) in [
            (
                "--also-accept-password-file",
                &self.also_accept_password_file,
            ),
            ("--key-file", &self.key_file),
            ("--trusted-keys", &self.trusted_keys),
        ] {
            if let Some(file) = file {
                args.extend([flag.into(), file.clone().into()]);
            }
        }
        if let Some(n) = self.rekey_after_packets {
            args.extend(["--rekey-after-packets".into(), n.to_string().into()]);
        }
        if !self.trusted_subnets.is_empty() {
            let list: Vec<String> = self.trusted_subnets.iter().map(IpNet::to_string).collect();
            args.extend(["--trusted-subnets".into(), list.join(",").into()]);
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
        if let Some(n) = self.rekey_after_packets {
            config.data_limits.rekey_after_packets = n;
        }
        config.trusted_subnets = self.trusted_subnets.clone();
        config
    }

    /// Keys and passwords, derived (Argon2id) and read once at start.
    fn crypto(&self) -> Result<Option<CryptoSettings>> {
        let psks = self
            .password
            .as_deref()
            .map(|p| crate::shell::crypto::psk_set(p, self.also_accept.as_deref()))
            .transpose()?;
        Ok(CryptoSettings::new(
            self.key_file.as_deref(),
            psks,
            self.trusted_keys.as_deref(),
        )?)
    }

    fn mesh_addr(&self) -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], self.port))
    }
}

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

/// Runs the router in this process until it is stopped.
fn launch_foreground(plan: &LaunchPlan) -> Result<()> {
    init_logging(&plan.log_level);
    let sockets = check_and_bind(plan)?;
    let mut home = Home::open(&plan.home)?;
    let name = home.peer_name(plan.name)?;
    home.write_pid()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let mesh = tokio::net::TcpListener::from_std(sockets.mesh)
            .context("cannot use the mesh listener")?;
        let api = sockets
            .api
            .into_tokio()
            .context("cannot use the control API socket")?;
        let status = tokio::net::TcpListener::from_std(sockets.status)
            .context("cannot use the status listener")?;
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        let config = DaemonConfig {
            router: plan.router_config(name),
            crypto: plan.crypto()?,
            targets: plan.peers.clone(),
            home: Some(home),
            udp: Some(sockets.udp),
            host: plan.host.clone(),
            status: Some(status),
        };
        daemon::run(config, mesh, api, shutdown).await?;
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
    drop(check_and_bind(plan)?);
    let name = {
        let home = Home::open(&plan.home)?;
        home.peer_name(plan.name)?
    };

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
    // A password given inline reaches the router through its environment,
    // never its command line (which every user of the host can read).
    if let (Some(p), None) = (&plan.password, &plan.password_file) {
        command.env("WEFT_PASSWORD", p);
    }
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

    let client = Client::new(plan.api_socket.clone());
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
                    plan.api_socket.display(),
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

/// The listening sockets of a launch.
struct Bound {
    mesh: std::net::TcpListener,
    udp: std::net::UdpSocket,
    api: ApiSocket,
    status: std::net::TcpListener,
}

/// Everything a launch can check before it creates anything: privileges
/// and `/dev/net/tun` (with a bridge), that no router holds the home or
/// answers on the control socket, and that every port is free. The error
/// says what to do; nothing is left behind, not even the home directory
/// (once the ports are free, the socket's directory, such as /run/weft or
/// the home, is created).
fn check_and_bind(plan: &LaunchPlan) -> Result<Bound> {
    if plan.host.is_some() {
        preflight::check_net_admin()?;
        preflight::check_tun(Path::new(preflight::TUN_PATH))?;
    }
    Home::check_free(&plan.home)?;
    let mesh = sockets::bind(plan.mesh_addr(), Service::Mesh)?;
    let udp = sockets::bind_udp(plan.port)?;
    let status = sockets::bind(plan.status_addr, Service::Status)?;
    // Last, as it may create its directory; one inside the home is the
    // home, made private as Home::open would make it.
    if plan.api_socket.parent() == Some(plan.home.as_path()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&plan.home)
            .with_context(|| format!("cannot create home directory {}", plan.home.display()))?;
    }
    let api = ApiSocket::bind(&plan.api_socket, plan.api_group.as_ref())?;
    Ok(Bound {
        mesh,
        udp,
        status,
        api,
    })
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
                client.socket().display(),
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

fn parse_addr(flag: &str, s: &str, example: &str) -> Result<SocketAddr> {
    s.parse()
        .map_err(|_| anyhow!("invalid {flag} {s:?}: expected IP:PORT, such as {example}"))
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
