//! A harness for system tests: real `weft` processes in Linux network
//! namespaces.
//!
//! [`Net::new`] builds one underlay segment: a "switch" namespace holding a
//! bridge, and one namespace per host joined to it by a veth pair, each with
//! an address in `10.201.<n>.0/24`. All traffic stays between namespaces
//! this harness created; nothing is sent from the root namespace. Links are
//! cut with nftables inside the hosts, routers are driven with the real
//! `weft` CLI run inside their namespace, and [`Net`]'s `Drop` stops the
//! routers, deletes the namespaces and the temporary directory — also when a
//! test panics.
//!
//! For the data plane, [`Net::attach`] adds a "container": one more
//! namespace, joined to a host's `weft` bridge by `weft attach` run in that
//! host. Commands run inside any of these namespaces with [`Net::exec`], or
//! in the background with [`Net::spawn`]; [`traffic`] is the helper they
//! usually run. Teardown kills whatever is left in every namespace before
//! deleting it, so bridges, TAPs, veths and nftables rules go with them.
//!
//! Everything here needs root, `ip` (iproute2) and `nft` (nftables);
//! [`Net::new`] fails with a message saying so rather than skipping.

pub mod testbed;
pub mod traffic;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use traffic::unix_ms;
use weft_router::core::status::{PeerStatus, RouterStatus};

/// Every namespace this process creates starts with `wt<pid>x`, so a later
/// run can tell leftovers of a dead run (see [`remove_stale`]).
const NS_PREFIX: &str = "wt";

/// How long one `ip`, `nft` or `weft` command may take before it is killed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// How often [`wait_until`] re-evaluates its predicate.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Distinguishes topologies made by one process, in names and subnets.
static TOPOLOGY_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Counts command output files in a topology's temp dir.
static COMMAND_COUNTER: AtomicU32 = AtomicU32::new(0);

/// One host: a network namespace with one underlay interface, `eth0`.
#[derive(Clone, Debug)]
pub struct Host {
    /// The short name the test uses; also the router's nickname.
    pub name: String,
    /// The network namespace.
    pub ns: String,
    /// The address of `eth0`.
    pub addr: Ipv4Addr,
    /// The router's `--home`: pid file, log and state.
    pub home: PathBuf,
}

/// A "container": a namespace whose `ethwe` interface is a veth from a
/// host's weft bridge, made by `weft attach`.
#[derive(Clone, Debug)]
pub struct Container {
    /// The short name the test uses.
    pub name: String,
    /// The network namespace.
    pub ns: String,
    /// The host whose bridge it is attached to.
    pub host: String,
    /// Its overlay address (the first of the CIDRs it was attached with).
    pub addr: Ipv4Addr,
}

/// A test topology; dropping it tears everything down.
pub struct Net {
    /// Starts every namespace name of this topology.
    prefix: String,
    switch_ns: String,
    hosts: BTreeMap<String, Host>,
    containers: BTreeMap<String, Container>,
    /// Namespaces created so far, for teardown even if setup fails halfway.
    namespaces: Vec<String>,
    tmp: PathBuf,
    weft: PathBuf,
}

impl Net {
    /// Creates one namespace per name in `hosts`, all on one bridged
    /// segment. Host names must be short (at most 8 characters of
    /// `[a-z0-9]`) since they appear in interface names.
    pub fn new(hosts: &[&str]) -> Result<Net> {
        check_prerequisites()?;
        let weft = weft_binary()?.to_path_buf();
        remove_stale();

        let n = TOPOLOGY_COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{NS_PREFIX}{}x{n}", std::process::id());
        let tmp = std::env::temp_dir().join(format!("weft-test-{}-{n}", std::process::id()));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
        }
        fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;

        let mut net = Net {
            prefix: prefix.clone(),
            switch_ns: format!("{prefix}-sw"),
            hosts: BTreeMap::new(),
            containers: BTreeMap::new(),
            namespaces: Vec::new(),
            tmp,
            weft,
        };
        // The subnet only has to be unique for readable logs: each topology
        // lives in its own namespaces.
        let subnet = (n % 250) as u8;
        net.setup(&prefix, subnet, hosts)?;
        Ok(net)
    }

    fn setup(&mut self, prefix: &str, subnet: u8, hosts: &[&str]) -> Result<()> {
        ensure!(hosts.len() <= 250, "at most 250 hosts fit in the /24");
        let sw = self.switch_ns.clone();
        self.add_namespace(&sw)?;
        ip(&format!("-n {sw} link add br0 type bridge"))?;
        ip(&format!("-n {sw} link set br0 up"))?;
        for (i, &name) in hosts.iter().enumerate() {
            check_short_name(name)?;
            ensure!(!self.hosts.contains_key(name), "host {name} given twice");
            let ns = format!("{prefix}-{name}");
            self.add_namespace(&ns)?;
            let addr = Ipv4Addr::new(10, 201, subnet, i as u8 + 1);
            ip(&format!(
                "-n {sw} link add p-{name} type veth peer name eth0 netns {ns}"
            ))?;
            ip(&format!("-n {sw} link set p-{name} master br0"))?;
            ip(&format!("-n {sw} link set p-{name} up"))?;
            ip(&format!("-n {ns} addr add {addr}/24 dev eth0"))?;
            ip(&format!("-n {ns} link set eth0 up"))?;
            let home = self.tmp.join(name);
            fs::create_dir_all(&home).with_context(|| format!("creating {}", home.display()))?;
            self.hosts.insert(
                name.to_string(),
                Host {
                    name: name.to_string(),
                    ns,
                    addr,
                    home,
                },
            );
        }
        Ok(())
    }

    fn add_namespace(&mut self, ns: &str) -> Result<()> {
        ip(&format!("netns add {ns}"))?;
        self.namespaces.push(ns.to_string());
        ip(&format!("-n {ns} link set lo up"))
    }

    /// Adds container `name` to host `host`: creates its namespace, then
    /// runs `weft attach --netns NS CIDR...` in the host, which needs the
    /// host's router running. Container names follow the host-name rules
    /// and must differ from every host's.
    pub fn attach(&mut self, host: &str, name: &str, cidrs: &[&str]) -> Result<()> {
        check_short_name(name)?;
        ensure!(
            !self.hosts.contains_key(name) && !self.containers.contains_key(name),
            "name {name} is already used in this topology"
        );
        let first = cidrs.first().context("attach needs at least one CIDR")?;
        let addr: Ipv4Addr = first
            .split_once('/')
            .map_or(*first, |(a, _)| a)
            .parse()
            .with_context(|| format!("{first:?} is not an IPv4 CIDR"))?;
        let ns = format!("{}-{name}", self.prefix);
        self.add_namespace(&ns)?;
        // The container's short name is its id, as a runtime would give
        // its own.
        let mut args = vec!["attach", "--netns", &ns, "--id", name];
        args.extend_from_slice(cidrs);
        let out = self.weft(host, &args)?;
        ensure!(
            out.status.success(),
            "`weft {}` on host {host} failed ({}):\n{}{}\nlog:\n{}",
            args.join(" "),
            out.status,
            out.stdout,
            out.stderr,
            self.log_tail(host, 40)
        );
        self.containers.insert(
            name.to_string(),
            Container {
                name: name.to_string(),
                ns,
                host: host.to_string(),
                addr,
            },
        );
        Ok(())
    }

    /// The container called `name`; panics if there is none (a bug in the
    /// test).
    pub fn container(&self, name: &str) -> &Container {
        self.containers
            .get(name)
            .unwrap_or_else(|| panic!("no container {name} in this topology"))
    }

    /// All containers, ordered by name.
    pub fn containers(&self) -> impl Iterator<Item = &Container> {
        self.containers.values()
    }

    /// The namespace of host or container `name`.
    pub fn ns(&self, name: &str) -> &str {
        match (self.hosts.get(name), self.containers.get(name)) {
            (Some(h), _) => &h.ns,
            (_, Some(c)) => &c.ns,
            _ => panic!("no host or container {name} in this topology"),
        }
    }

    /// Runs `program args` in the namespace of host or container `name`
    /// and waits for it, killing it after `timeout`.
    pub fn exec<S: AsRef<OsStr>>(
        &self,
        name: &str,
        program: impl AsRef<OsStr>,
        args: &[S],
        timeout: Duration,
    ) -> Result<Output> {
        run(self.ns_command(name, program, args), &self.tmp, timeout)
    }

    /// Like [`Net::exec`] but fails, with the output, unless the command
    /// exits successfully.
    pub fn exec_ok<S: AsRef<OsStr>>(
        &self,
        name: &str,
        program: impl AsRef<OsStr>,
        args: &[S],
        timeout: Duration,
    ) -> Result<Output> {
        let cmd = self.ns_command(name, program, args);
        let desc = describe(&cmd);
        let out = run(cmd, &self.tmp, timeout)?;
        ensure!(
            out.status.success(),
            "{desc} in {name} failed ({}):\n{}{}",
            out.status,
            out.stdout,
            out.stderr
        );
        Ok(out)
    }

    /// Starts `program args` in the namespace of host or container `name`
    /// without waiting; the returned handle kills it when dropped.
    pub fn spawn<S: AsRef<OsStr>>(
        &self,
        name: &str,
        program: impl AsRef<OsStr>,
        args: &[S],
    ) -> Result<Background> {
        Background::start(self.ns_command(name, program, args), &self.tmp)
    }

    fn ns_command<S: AsRef<OsStr>>(
        &self,
        name: &str,
        program: impl AsRef<OsStr>,
        args: &[S],
    ) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.ns(name)])
            .arg(program)
            .args(args);
        cmd
    }

    /// Sets the MTU of host `name`'s underlay link, both ends.
    pub fn set_underlay_mtu(&self, name: &str, mtu: u32) -> Result<()> {
        let ns = &self.host(name).ns;
        ip(&format!("-n {ns} link set eth0 mtu {mtu}"))?;
        ip(&format!(
            "-n {} link set p-{name} mtu {mtu}",
            self.switch_ns
        ))
    }

    /// The host called `name`; panics if there is none (a bug in the test).
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .get(name)
            .unwrap_or_else(|| panic!("no host {name} in this topology"))
    }

    /// All hosts, ordered by name.
    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        self.hosts.values()
    }

    /// Every namespace of this topology, the switch's included.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// The temporary directory holding the routers' homes.
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    /// `GET path` over HTTP/1.0 from inside host or container `name`'s
    /// namespace to `addr` (such as the status listener on 127.0.0.1):
    /// returns the status code and the body. A thread enters the
    /// namespace for the request, so no tool is needed.
    pub fn http_get(&self, name: &str, addr: &str, path: &str) -> Result<(u16, String)> {
        let ns_path = Path::new("/var/run/netns").join(self.ns(name));
        let addr = addr.to_owned();
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        let response = std::thread::spawn(move || -> Result<String> {
            use std::io::{Read, Write};
            let ns = File::open(&ns_path).with_context(|| ns_path.display().to_string())?;
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering {}", ns_path.display()))?;
            let mut stream = std::net::TcpStream::connect(&addr)
                .with_context(|| format!("connecting to {addr}"))?;
            stream.set_read_timeout(Some(COMMAND_TIMEOUT))?;
            stream.write_all(request.as_bytes())?;
            let mut text = String::new();
            stream.read_to_string(&mut text)?;
            Ok(text)
        })
        .join()
        .map_err(|_| anyhow!("the HTTP thread panicked"))??;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow!("no HTTP header in {response:?}"))?;
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow!("no HTTP status in {head:?}"))?;
        Ok((code, body.to_owned()))
    }

    /// The path of the `weft` binary the routers run.
    pub fn weft_path(&self) -> &Path {
        &self.weft
    }

    /// Cuts the underlay path between hosts `x` and `y` in both directions:
    /// each drops every IP packet to or from the other.
    pub fn cut(&self, x: &str, y: &str) -> Result<()> {
        let (hx, hy) = (self.host(x), self.host(y));
        self.drop_peer(hx, hy.addr)?;
        self.drop_peer(hy, hx.addr)
    }

    fn drop_peer(&self, host: &Host, other: Ipv4Addr) -> Result<()> {
        let nft = |rule: &str| ip(&format!("netns exec {} nft {rule}", host.ns));
        // `add` is idempotent for tables and chains, so cutting a host from
        // several others just adds rules. nft joins its arguments, so the
        // braces need no quoting.
        nft("add table inet weft_test")?;
        nft("add chain inet weft_test in { type filter hook input priority 0 ; }")?;
        nft("add chain inet weft_test out { type filter hook output priority 0 ; }")?;
        nft(&format!("add rule inet weft_test in ip saddr {other} drop"))?;
        nft(&format!(
            "add rule inet weft_test out ip daddr {other} drop"
        ))
    }

    /// Heals every cut made on host `name` (a path needs healing on both
    /// of its hosts).
    pub fn heal(&self, name: &str) -> Result<()> {
        let ns = &self.host(name).ns;
        ip(&format!("netns exec {ns} nft delete table inet weft_test"))
    }

    /// Starts a router on host `name` with `weft launch`, nickname = the
    /// host name, home in the topology's temp dir; `args` are added (flags
    /// and peers). Returns once `weft launch` reports the router ready.
    pub fn launch(&self, name: &str, args: &[&str]) -> Result<()> {
        let h = self.host(name);
        let home = h.home.to_string_lossy();
        let level = std::env::var("WEFT_TEST_LOG").unwrap_or_else(|_| "info".into());
        let mut full = vec![
            "launch",
            "--home",
            &home,
            "--nickname",
            &h.name,
            "--log-level",
            &level,
        ];
        full.extend_from_slice(args);
        let out = self.weft(name, &full)?;
        ensure!(
            out.status.success(),
            "`weft launch` on host {name} failed ({}):\n{}{}\nlog:\n{}",
            out.status,
            out.stdout,
            out.stderr,
            self.log_tail(name, 40)
        );
        Ok(())
    }

    /// Runs the `weft` CLI with `args` inside host `name`'s namespace, with
    /// `WEFT_HOME` set to the host's home.
    pub fn weft(&self, name: &str, args: &[&str]) -> Result<Output> {
        run(
            self.weft_command(self.host(name), args),
            &self.tmp,
            COMMAND_TIMEOUT,
        )
    }

    fn weft_command(&self, h: &Host, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &h.ns])
            .arg(&self.weft)
            .args(args)
            .env("WEFT_HOME", &h.home);
        cmd
    }

    /// `weft report` on host `name`, parsed.
    pub fn report(&self, name: &str) -> Result<Report> {
        let out = self.weft(name, &["report"])?;
        ensure!(
            out.status.success(),
            "`weft report` on host {name} failed ({}): {}{}",
            out.status,
            out.stdout,
            out.stderr
        );
        let status: RouterStatus = serde_json::from_str(&out.stdout)
            .with_context(|| format!("parsing `weft report` of host {name}:\n{}", out.stdout))?;
        Ok(Report(status))
    }

    /// `weft status` on host `name`: the human-readable text.
    pub fn status_text(&self, name: &str) -> Result<String> {
        let out = self.weft(name, &["status"])?;
        ensure!(
            out.status.success(),
            "`weft status` on host {name} failed ({}): {}{}",
            out.status,
            out.stdout,
            out.stderr
        );
        Ok(out.stdout)
    }

    /// The router's pid from its pid file, if there is one.
    pub fn pid(&self, name: &str) -> Option<u32> {
        read_pid(&self.host(name).home)
    }

    /// Kills host `name`'s router with SIGKILL and waits until it is gone.
    pub fn kill9(&self, name: &str) -> Result<()> {
        let pid = self
            .pid(name)
            .ok_or_else(|| anyhow!("host {name} has no weft.pid; was its router launched?"))?;
        kill9_and_wait(pid)
    }

    /// The last `lines` lines of host `name`'s router log.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let path = self.host(name).home.join("weft.log");
        match fs::read_to_string(&path) {
            Ok(text) => {
                let all: Vec<&str> = text.lines().collect();
                all[all.len().saturating_sub(lines)..].join("\n")
            }
            Err(e) => format!("({}: {e})", path.display()),
        }
    }

    /// Every host's `weft status` and log tail, for failure messages.
    pub fn diagnostics(&self) -> String {
        let mut s = String::new();
        for h in self.hosts.values() {
            let status = match self.status_text(&h.name) {
                Ok(t) => t,
                Err(e) => format!("(weft status failed: {e:#})"),
            };
            s.push_str(&format!(
                "===== host {} ({}, {}) =====\n--- weft status ---\n{}\n--- log tail ---\n{}\n",
                h.name,
                h.ns,
                h.addr,
                status.trim_end(),
                self.log_tail(&h.name, 30)
            ));
            if !self.containers.is_empty() {
                s.push_str(&format!(
                    "--- data paths ---\n{}\n--- links ---\n{}\n",
                    self.data_paths(&h.name),
                    self.command_text(&h.name, "ip", &["-d", "-br", "link"])
                ));
            }
        }
        for c in self.containers.values() {
            s.push_str(&format!(
                "===== container {} ({}, on {}) =====\n{}\n{}\n",
                c.name,
                c.ns,
                c.host,
                self.command_text(&c.name, "ip", &["-br", "addr"]),
                self.command_text(&c.name, "ip", &["neigh"])
            ));
        }
        s
    }

    /// Passes `result` through; if it is an error, first prints the
    /// diagnostics and every host's `weft report`, while the testbed still
    /// stands.
    pub fn with_evidence(&self, result: Result<()>) -> Result<()> {
        if let Err(e) = &result {
            eprintln!(
                "scenario failed: {e:#}\nstate before teardown:\n{}",
                self.diagnostics()
            );
            for host in self.hosts() {
                match self.weft(&host.name, &["report"]) {
                    Ok(o) => eprintln!("--- weft report on {} ---\n{}", host.name, o.stdout),
                    Err(e) => eprintln!("--- weft report on {} failed: {e:#}", host.name),
                }
            }
        }
        result
    }

    /// Sends `bytes` pseudo-random bytes over TCP from container `from` to
    /// container `to` of a numbered testbed with the `traffic` helper
    /// (`weft-traffic`), and fails unless the receiver got exactly those bytes
    /// (same length, same SHA-256).
    pub fn transfer(
        &self,
        traffic: &str,
        from: usize,
        to: usize,
        bytes: u64,
        timeout: Duration,
    ) -> Result<()> {
        self.start_transfer(traffic, from, to, &["--bytes", &bytes.to_string()])?
            .finish(timeout)
            .and_then(|got| {
                ensure!(
                    got == bytes,
                    "{} sent {bytes} bytes but {} received {got}",
                    c(from),
                    c(to)
                );
                Ok(())
            })
    }

    /// Starts a TCP transfer of pseudo-random bytes from container `from`
    /// to container `to` in the background; `amount` is `--bytes N` or
    /// `--secs T` for the `traffic` helper's `tcp-send`. The receiver
    /// listens on a port of its own per sender, so transfers in both
    /// directions can run at once.
    pub fn start_transfer(
        &self,
        traffic: &str,
        from: usize,
        to: usize,
        amount: &[&str],
    ) -> Result<Transfer> {
        let port = TRANSFER_PORT + u16::try_from(from).context("container number")?;
        let mut recv = self.spawn(
            &c(to),
            traffic,
            &["tcp-recv", &format!("0.0.0.0:{port}"), "--hash"],
        )?;
        recv.wait_for_line("listening", Duration::from_secs(10))?;
        let seed = unix_ms().to_string();
        let target = format!("{}:{port}", overlay(to));
        let mut args = vec!["tcp-send", &target, "--seed", &seed];
        args.extend_from_slice(amount);
        let send = self.spawn(&c(from), traffic, &args)?;
        Ok(Transfer {
            recv,
            send,
            from,
            to,
        })
    }

    /// Each connection's data path in host `name`'s `weft report`, one line
    /// each.
    fn data_paths(&self, name: &str) -> String {
        match self.report(name) {
            Ok(r) => {
                r.0.connections
                    .iter()
                    .map(|c| {
                        format!(
                            "{} {} {}: {:?}",
                            c.nickname.as_deref().unwrap_or("?"),
                            c.address,
                            c.state,
                            c.data_path
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            }
            Err(e) => format!("(weft report failed: {e:#})"),
        }
    }

    /// What a diagnostic command printed, or why it failed.
    fn command_text(&self, name: &str, program: &str, args: &[&str]) -> String {
        match self.exec(name, program, args, Duration::from_secs(5)) {
            Ok(o) => format!("{}{}", o.stdout, o.stderr).trim_end().to_string(),
            Err(e) => format!("({program} failed: {e:#})"),
        }
    }

    /// Polls `pred` every 200 ms until it returns true or `timeout` passes;
    /// on timeout the error names `what`, the last error `pred` returned and
    /// every host's status and log.
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl FnMut() -> Result<bool>,
    ) -> Result<Duration> {
        wait_until(what, timeout, pred).map_err(|e| anyhow!("{e:#}\n{}", self.diagnostics()))
    }

    fn teardown(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "weft netns harness: test failed; state before teardown:\n{}",
                self.diagnostics()
            );
        }
        for h in self.hosts.values() {
            let Some(pid) = read_pid(&h.home) else {
                continue;
            };
            if !alive(pid) {
                continue;
            }
            let stop = self.weft_command(h, &["stop"]);
            if let Err(e) = run(stop, &self.tmp, Duration::from_secs(5)) {
                eprintln!("weft netns harness: `weft stop` on {}: {e:#}", h.name);
            }
            let deadline = Instant::now() + Duration::from_secs(3);
            while alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if alive(pid) {
                eprintln!(
                    "weft netns harness: router on {} (pid {pid}) ignored `weft stop`; killing it",
                    h.name
                );
                if let Err(e) = kill9_and_wait(pid) {
                    eprintln!("weft netns harness: {e:#}");
                }
            }
        }
        for ns in self.namespaces.drain(..).rev() {
            remove_namespace(&ns);
        }
        if std::env::var_os("WEFT_TEST_KEEP").is_some() {
            eprintln!(
                "weft netns harness: keeping {} (WEFT_TEST_KEEP)",
                self.tmp.display()
            );
        } else if let Err(e) = fs::remove_dir_all(&self.tmp) {
            eprintln!("weft netns harness: removing {}: {e}", self.tmp.display());
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// A parsed `weft report`, with lookups by nickname (the harness sets each
/// router's nickname to its host name).
#[derive(Clone, Debug)]
pub struct Report(pub RouterStatus);

impl Report {
    /// The peer whose nickname is `nick`, if this router knows it.
    pub fn peer(&self, nick: &str) -> Option<&PeerStatus> {
        self.0.peers.iter().find(|p| p.nickname == nick)
    }

    /// The nickname of the peer with name `name`.
    pub fn nickname_of(&self, name: &str) -> Option<&str> {
        self.0
            .peers
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.nickname.as_str())
    }

    /// The nickname of the next hop towards `nick`, if it is reachable.
    pub fn next_hop_nick(&self, nick: &str) -> Option<&str> {
        let p = self.peer(nick).filter(|p| p.reachable)?;
        self.nickname_of(p.next_hop.as_deref()?)
    }

    /// Whether `nick` is a reachable peer.
    pub fn reaches(&self, nick: &str) -> bool {
        self.peer(nick).is_some_and(|p| p.reachable)
    }

    /// Whether this router has an established connection to `nick`.
    pub fn connected_to(&self, nick: &str) -> bool {
        self.0
            .connections
            .iter()
            .any(|c| c.nickname.as_deref() == Some(nick) && c.state == "established")
    }

    /// Whether this router has an established connection to `nick` whose
    /// UDP data path is usable.
    pub fn data_path_usable(&self, nick: &str) -> bool {
        self.0.connections.iter().any(|c| {
            c.nickname.as_deref() == Some(nick)
                && c.state == "established"
                && c.data_path.as_ref().is_some_and(|d| d.usable)
        })
    }

    /// Whether this router has any connection, in any state, to `nick`.
    pub fn any_connection_to(&self, nick: &str) -> bool {
        self.0
            .connections
            .iter()
            .any(|c| c.nickname.as_deref() == Some(nick))
    }
}

/// What a command printed and how it ended.
#[derive(Clone, Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` with stdout and stderr going to files in `dir`, killing it
/// after `timeout`. Files rather than pipes because `weft launch` leaves a
/// daemon behind that could inherit a pipe and keep it open forever.
pub fn run(cmd: Command, dir: &Path, timeout: Duration) -> Result<Output> {
    let (mut child, desc, out_path, err_path) = start(cmd, dir)?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{desc} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = fs::read_to_string(&err_path).unwrap_or_default();
    let _ = fs::remove_file(&out_path);
    let _ = fs::remove_file(&err_path);
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Spawns `cmd` with stdin from /dev/null and stdout and stderr going to
/// fresh files in `dir`; returns the child, a description and the paths.
fn start(mut cmd: Command, dir: &Path) -> Result<(Child, String, PathBuf, PathBuf)> {
    let n = COMMAND_COUNTER.fetch_add(1, Ordering::Relaxed);
    let out_path = dir.join(format!(".cmd{n}.out"));
    let err_path = dir.join(format!(".cmd{n}.err"));
    let desc = describe(&cmd);
    cmd.stdin(Stdio::null())
        .stdout(File::create(&out_path).with_context(|| out_path.display().to_string())?)
        .stderr(File::create(&err_path).with_context(|| err_path.display().to_string())?);
    let child = cmd.spawn().with_context(|| format!("starting {desc}"))?;
    Ok((child, desc, out_path, err_path))
}

/// `cmd` as a shell-like line, for messages.
fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A TCP transfer running between two containers (see
/// [`Net::start_transfer`]). Dropping it kills both ends.
pub struct Transfer {
    recv: Background,
    send: Background,
    from: usize,
    to: usize,
}

impl Transfer {
    /// Waits up to `timeout` for the sender to finish, then for the
    /// receiver, and fails unless the receiver got exactly what was sent
    /// (same length, same SHA-256). Returns the byte count.
    pub fn finish(self, timeout: Duration) -> Result<u64> {
        let Transfer {
            recv,
            send,
            from,
            to,
        } = self;
        let (from, to) = (c(from), c(to));
        let sent = match send.finish(timeout) {
            Ok(o) if o.status.success() => o,
            Ok(o) => bail!(
                "sending {from} -> {to} failed ({}): {}{}\nreceiver so far: {}{}",
                o.status,
                o.stdout,
                o.stderr,
                recv.stdout(),
                recv.stderr()
            ),
            Err(e) => bail!(
                "sending {from} -> {to}: {e:#}\nreceiver so far: {}{}",
                recv.stdout(),
                recv.stderr()
            ),
        };
        let got = recv.finish(Duration::from_secs(10))?;
        ensure!(
            got.status.success(),
            "receiver failed ({}): {}{}",
            got.status,
            got.stdout,
            got.stderr
        );
        let (sent, got) = (json_summary(&sent.stdout)?, json_summary(&got.stdout)?);
        let secs = sent["secs"].as_f64().unwrap_or(0.0);
        let bytes = sent["bytes"].as_u64().unwrap_or(0);
        eprintln!(
            "{from} -> {to}: {} bytes in {secs:.2} s ({:.1} MB/s); sent sha256 {}, received sha256 {}",
            got["bytes"],
            bytes as f64 / secs.max(1e-9) / 1e6,
            sent["sha256"],
            got["sha256"]
        );
        ensure!(
            got["bytes"].as_u64() == Some(bytes),
            "{from} sent {bytes} bytes but {to} received {}",
            got["bytes"]
        );
        ensure!(
            sent["sha256"] == got["sha256"] && sent["sha256"].is_string(),
            "data corrupted between {from} and {to}: sent sha256 {}, received {}",
            sent["sha256"],
            got["sha256"]
        );
        Ok(bytes)
    }
}

/// A command running in the background (see [`Net::spawn`]). Dropping it
/// kills the command.
pub struct Background {
    child: Child,
    desc: String,
    out_path: PathBuf,
    err_path: PathBuf,
}

impl Background {
    fn start(cmd: Command, dir: &Path) -> Result<Background> {
        let (child, desc, out_path, err_path) = start(cmd, dir)?;
        Ok(Background {
            child,
            desc,
            out_path,
            err_path,
        })
    }

    /// What the command printed on stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.out_path).unwrap_or_default()
    }

    /// What the command printed on stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.err_path).unwrap_or_default()
    }

    /// Waits until the command prints a stdout line equal to `line` (a
    /// server saying it is listening); fails if it exits first.
    pub fn wait_for_line(&mut self, line: &str, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if self.stdout().lines().any(|l| l == line) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before printing {line:?}:\n{}{}",
                    self.desc,
                    self.stdout(),
                    self.stderr()
                );
            }
            ensure!(
                start.elapsed() < timeout,
                "{} did not print {line:?} within {timeout:?}:\n{}{}",
                self.desc,
                self.stdout(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the command to exit by itself; kills it and fails after
    /// `timeout`.
    pub fn finish(mut self, timeout: Duration) -> Result<Output> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "{} did not finish within {timeout:?}:\n{}{}",
                    self.desc,
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(Output {
            status,
            stdout: self.stdout(),
            stderr: self.stderr(),
        })
    }

    /// Kills the command and returns what it printed.
    pub fn stop(mut self) -> Output {
        let _ = self.child.kill();
        let status = self.child.wait();
        Output {
            status: status.unwrap_or_else(|_| ExitStatus::default()),
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }

    /// The process id of the command.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The command line, for messages.
    pub fn description(&self) -> &str {
        &self.desc
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // `ip netns exec` execs the program, so this is the program itself.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.out_path);
        let _ = fs::remove_file(&self.err_path);
    }
}

/// Polls `pred` every 200 ms until it returns true or `timeout` passes.
/// Errors from `pred` count as "not yet" (a router may still be starting)
/// but the last one is reported on timeout. Returns how long it took.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut pred: impl FnMut() -> Result<bool>,
) -> Result<Duration> {
    let start = Instant::now();
    let mut last_err = None;
    loop {
        match pred() {
            Ok(true) => return Ok(start.elapsed()),
            Ok(false) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() >= timeout {
            return Err(match last_err {
                Some(e) => {
                    anyhow!("timed out after {timeout:?} waiting until {what}; last error: {e:#}")
                }
                None => anyhow!("timed out after {timeout:?} waiting until {what}"),
            });
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Host and container names: short, since they appear in interface and
/// namespace names.
fn check_short_name(name: &str) -> Result<()> {
    ensure!(
        !name.is_empty()
            && name.len() <= 8
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
        "name {name:?} must be 1-8 characters of [a-z0-9]"
    );
    Ok(())
}

/// Where [`Net::transfer`] receives in a container.
pub const TRANSFER_PORT: u16 = 5001;

static SERIAL: Mutex<()> = Mutex::new(());

/// Runs a test binary's system tests one at a time: each starts several
/// routers and moves real traffic, and side by side they would compete for
/// the machine's cores and miss their deadlines. Hold the guard for the
/// whole test; a test that panicked does not block the others.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The last stdout line of a helper, parsed as its JSON summary.
fn json_summary(out: &str) -> Result<serde_json::Value> {
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("no JSON summary in:\n{out}"))?;
    serde_json::from_str(line).with_context(|| format!("parsing {line:?}"))
}

/// Host `i` of a numbered testbed (`h1`, `h2`, ...).
pub fn h(i: usize) -> String {
    format!("h{i}")
}

/// The container on host `i` (`c1`, `c2`, ...).
pub fn c(i: usize) -> String {
    format!("c{i}")
}

/// Container `i`'s overlay address in the numbered testbeds.
pub fn overlay(i: usize) -> String {
    format!("10.40.0.{i}")
}

/// Fails, naming the package to install, unless every `(tool, argument,
/// package)` runs successfully with that argument.
pub fn check_tools(tools: &[(&str, &str, &str)]) -> Result<()> {
    for &(tool, arg, package) in tools {
        let ok = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ensure!(
            ok,
            "weft system tests need `{tool}`; install it with `apt-get install -y {package}`"
        );
    }
    Ok(())
}

/// Fails, saying what to do, unless we are root and `ip` and `nft` work.
pub fn check_prerequisites() -> Result<()> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .ok_or_else(|| anyhow!("no Uid line in /proc/self/status"))?;
    ensure!(
        euid == "0",
        "weft system tests create network namespaces and must run as root \
         (effective uid is {euid}); run them with sudo or as root"
    );
    check_tools(&[("ip", "-V", "iproute2"), ("nft", "--version", "nftables")])
}

/// Builds the `weft` binary once per process and returns its path.
///
/// `WEFT_BIN` overrides it. Otherwise this runs cargo in the workspace and
/// takes the path from its JSON messages, so it follows `CARGO_TARGET_DIR`
/// and any cargo config. Under `cargo test` (debug assertions on) it builds
/// the targets `cargo test --workspace` builds, with the `test` profile.
/// That resolves features exactly as `cargo test --workspace` does, so
/// after such a run there is nothing left to compile. (`-p weft-router
/// --bin weft` would rebuild the router with other features.) Otherwise
/// (the demo, `--release`) it builds the release binary alone.
pub fn weft_binary() -> Result<&'static Path> {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| build_weft().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map(|p| p.as_path())
        .map_err(|e| anyhow!("{e}"))
}

fn build_weft() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("WEFT_BIN") {
        let bin = PathBuf::from(bin);
        ensure!(bin.is_file(), "WEFT_BIN={} is not a file", bin.display());
        return Ok(bin);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("tests crate has no parent directory"))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let args: &[&str] = if cfg!(debug_assertions) {
        &[
            "--profile",
            "test",
            "--workspace",
            "--lib",
            "--bins",
            "--tests",
            "--examples",
        ]
    } else {
        &["--release", "-p", "weft-router", "--bin", "weft"]
    };
    let desc = format!("`cargo build {}`", args.join(" "));
    let out = Command::new(cargo)
        .current_dir(workspace)
        .args(["build", "--quiet", "--message-format=json"])
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {desc}"))?;
    ensure!(out.status.success(), "{desc} failed ({})", out.status);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| {
            m["reason"] == "compiler-artifact"
                && m["target"]["name"] == "weft"
                && m["target"]["kind"][0] == "bin"
                // Not the unit-test harness built from main.rs.
                && m["profile"]["test"] == false
        })
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| anyhow!("{desc} did not report a `weft` executable"))
}

/// Runs `ip` with `cmdline` split on whitespace (every name this harness
/// makes is free of it).
fn ip(cmdline: &str) -> Result<()> {
    let out = Command::new("ip")
        .args(cmdline.split_whitespace())
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running `ip {cmdline}`"))?;
    ensure!(
        out.status.success(),
        "`ip {cmdline}` failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Kills every process left in `ns` (only ever processes this harness
/// started: the namespace is ours), then deletes it.
fn remove_namespace(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            eprintln!("weft netns harness: killing leftover pid {pid} in {ns}");
            let _ = kill9_and_wait(pid);
        }
    }
    if let Err(e) = ip(&format!("netns del {ns}")) {
        eprintln!("weft netns harness: {e:#}");
    }
}

/// Deletes namespaces left by earlier test processes that died without
/// tearing down (SIGKILL, a crash): `wt<pid>x…` where `<pid>` is gone.
fn remove_stale() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
            return;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(ns) = line.split_whitespace().next() else {
                continue;
            };
            let owner = ns
                .strip_prefix(NS_PREFIX)
                .and_then(|rest| rest.split_once('x'))
                .and_then(|(pid, _)| pid.parse::<u32>().ok());
            if let Some(pid) = owner
                && pid != std::process::id()
                && !alive(pid)
            {
                eprintln!("weft netns harness: removing stale namespace {ns}");
                remove_namespace(ns);
            }
        }
    });
}

fn read_pid(home: &Path) -> Option<u32> {
    fs::read_to_string(home.join("weft.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether `pid` exists and is not a zombie.
/// Checks that a torn-down topology left nothing behind: none of
/// `namespaces` is listed by `ip netns`, no thread of `pids` runs, and
/// `tmp` is gone. For the cleanup-on-panic tests.
pub fn check_nothing_left(namespaces: &[String], pids: &[u32], tmp: &Path) -> Result<()> {
    let listed = Command::new("ip").args(["netns", "list"]).output()?;
    let listed = String::from_utf8_lossy(&listed.stdout);
    for ns in namespaces {
        ensure!(
            !listed
                .lines()
                .any(|l| l.split_whitespace().next() == Some(ns.as_str())),
            "namespace {ns} survived the panic"
        );
    }
    for &pid in pids {
        ensure!(!alive(pid), "pid {pid} survived the panic");
    }
    ensure!(!tmp.exists(), "{} survived the panic", tmp.display());
    Ok(())
}

/// Whether any thread of `pid` is still running. After SIGKILL the
/// thread-group leader can be a zombie while other threads (weft's data
/// plane) are still exiting and holding the process's files, its home lock
/// among them, so every thread is checked.
fn alive(pid: u32) -> bool {
    let running = |stat_path: &Path| match fs::read_to_string(stat_path) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    };
    match fs::read_dir(format!("/proc/{pid}/task")) {
        Ok(tasks) => tasks.flatten().any(|t| running(&t.path().join("stat"))),
        Err(_) => running(Path::new(&format!("/proc/{pid}/stat"))),
    }
}

fn kill9_and_wait(pid: u32) -> Result<()> {
    if alive(pid) {
        let status = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .context("running kill")?;
        ensure!(status.success() || !alive(pid), "kill -9 {pid} failed");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) {
        ensure!(
            Instant::now() < deadline,
            "pid {pid} still alive 5 s after SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
