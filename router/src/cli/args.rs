//! The `weft` command line's schema: every subcommand and flag, with
//! the help text users see.

use super::*;

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
    pub(super) fn home(&self) -> Result<PathBuf> {
        std::path::absolute(&self.home)
            .with_context(|| format!("cannot resolve --home {}", self.home.display()))
    }

    pub(super) fn client(&self) -> Result<Client> {
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
    pub(super) fn validate(&self) -> Result<()> {
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
