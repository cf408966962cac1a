//! `weft launch`: checking every argument into a [`LaunchPlan`], then
//! running the router in the foreground or as a daemon that the command
//! waits for.

use super::*;

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
    pub(super) fn child_args(&self, name: PeerName) -> Vec<OsString> {
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

/// Runs the router in this process until it is stopped.
pub(super) fn launch_foreground(plan: &LaunchPlan) -> Result<()> {
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
pub(super) fn launch_background(plan: &LaunchPlan) -> Result<()> {
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

/// The last lines written to `path` after `start`, indented.
pub(super) fn log_tail(path: &Path, start: u64) -> String {
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
