//! The router daemon: one task owns the [`Router`] and turns its actions
//! into socket operations; everything else reports to it over one queue.
//!
//! ```text
//!  accept task ─┐                      ┌─> writer task per connection
//!  dial tasks  ─┤                      │
//!  reader tasks ┼─> events ─> router task
//!  control API ─┤     (mpsc)   (owns Router, sleeps until poll_timeout)
//!  status page ─┘
//! ```
//!
//! [`run`] takes already-bound listeners and a shutdown token, so tests run
//! real routers on ephemeral ports (and sockets in temporary
//! directories) in one process.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::core::connection::ConnState;
use crate::core::identity::PeerName;
use crate::core::router::SessionEvent;
use crate::core::wire::addr::PeerAddr;
use crate::core::{Action, ConnHandle, Router, RouterConfig};
use crate::shell::api_socket::ApiListener;
use crate::shell::attach::{AttachError, Attachments};
use crate::shell::crypto::CryptoSettings;
use crate::shell::dataplane::DataPlane;
use crate::shell::describe_io_error;
use crate::shell::expose::{ExposeError, Exposed};
use crate::shell::home::{self, Home};
use crate::shell::host::{self, HostConfig, HostError, HostNet};
use crate::shell::http_api::{self, ApiHandle, ApiRequest, HostHandles, Surface};
use crate::shell::sockets::configure_stream;
use crate::shell::watchdog::{Beat, Watchdog};

/// Time allowed to resolve and connect to one target.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes queued for one connection beyond which the peer is deemed too
/// slow and dropped; gossip must not grow memory without bound.
const MAX_QUEUED_BYTES: usize = 16 * 1024 * 1024;

const READ_BUFFER: usize = 64 * 1024;

/// Events waiting for the router task; readers wait when it is full, which
/// pushes back on peers through TCP flow control.
const EVENT_QUEUE: usize = 1024;

/// Time a closing connection gets to flush its last messages.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);

/// Time connections get to flush their goodbyes when the router stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// How often the trusted-keys file is checked for changes.
const TRUSTED_KEYS_POLL: Duration = Duration::from_secs(2);

/// What the daemon needs besides its listeners.
#[derive(Debug)]
pub struct DaemonConfig {
    pub router: RouterConfig,
    /// Targets to connect to from the start (the command line's peers).
    pub targets: Vec<PeerAddr>,
    /// The locked home directory, if any: user targets are persisted there,
    /// and it is released (pid file removed) before the control API stops
    /// answering, so `weft stop` returning means the home is free again.
    pub home: Option<Home>,
    /// The bound data-plane UDP socket (same port number as the mesh
    /// listener); `None` runs the control plane alone.
    pub udp: Option<std::net::UdpSocket>,
    /// The bridge and TAP device to set up before reporting ready, and
    /// remove on stop; `None` runs the mesh alone (tests, `--no-bridge`).
    pub host: Option<HostConfig>,
    /// The read-only status listener (`--status-addr`): report, metrics
    /// and the topology page; `None` serves none.
    pub status: Option<TcpListener>,
    /// Encryption: keys, passwords, trusted keys; `None` runs plaintext.
    /// `router.crypto` is set from it.
    pub crypto: Option<CryptoSettings>,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot read the address of the {what} listener: {}", describe_io_error(.error))]
    ListenerAddr {
        what: &'static str,
        error: std::io::Error,
    },
    #[error("cannot start the data plane: {}", describe_io_error(.0))]
    DataPlane(std::io::Error),
    #[error("cannot start the watchdog thread: {}", describe_io_error(.0))]
    Watchdog(std::io::Error),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error(transparent)]
    Expose(#[from] ExposeError),
}

/// Everything reported to the router task.
#[derive(Debug)]
pub(crate) enum Event {
    Inbound {
        stream: TcpStream,
        remote: SocketAddr,
    },
    DialSucceeded {
        target: PeerAddr,
        stream: TcpStream,
        remote: SocketAddr,
    },
    DialFailed {
        target: PeerAddr,
        error: String,
    },
    Bytes(ConnHandle, Vec<u8>),
    Closed(ConnHandle, String),
    Api(ApiRequest),
    /// A control datagram (heartbeat, PMTU probe or ack) from the UDP port.
    Udp(SocketAddr, Vec<u8>),
}

/// Runs a router until `shutdown` is cancelled or `POST /stop` arrives,
/// then closes every connection (telling peers why) and returns.
pub async fn run(
    config: DaemonConfig,
    listener: TcpListener,
    api_listener: ApiListener,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    // First, so that failing to start it leaves nothing to undo.
    let watchdog = Watchdog::start().map_err(DaemonError::Watchdog)?;
    let mesh_addr = listener
        .local_addr()
        .map_err(|error| DaemonError::ListenerAddr {
            what: "mesh",
            error,
        })?;
    let api_socket = api_listener.path().to_owned();
    let (mut host_net, host_handles) = match &config.host {
        Some(host) => {
            let (net, handles) = start_host(host, config.home.as_ref()).await?;
            (Some(net), Some(handles))
        }
        None => (None, None),
    };
    let exposed = host_handles.as_ref().map(|h| h.exposed.clone());
    let stop = shutdown.child_token();
    // The API outlives the router task by a little, see DaemonConfig::home.
    let api_stop = CancellationToken::new();
    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);

    let api = ApiHandle::new(events_tx.clone(), host_handles);
    let status_server = config.status.map(|listener| {
        tokio::spawn(http_api::serve(
            listener,
            api.clone(),
            Surface::Status,
            api_stop.clone(),
        ))
    });
    let http = tokio::spawn(http_api::serve(
        api_listener,
        api,
        Surface::Control,
        api_stop.clone(),
    ));
    let accept = tokio::spawn(accept_loop(listener, events_tx.clone(), stop.clone()));

    let now = tokio::time::Instant::now().into_std();
    let mut router_config = config.router;
    if let Some(c) = &config.crypto {
        router_config.crypto = c.handshake_config();
    }
    let router = Router::new(router_config, now);
    let router_beat = watchdog.register("router task");
    let data_plane = match config.udp {
        Some(udp) => {
            let (control_tx, control_rx) = mpsc::unbounded_channel();
            let tap = host_net.as_mut().and_then(HostNet::take_tap);
            let beats = [watchdog.register("weft-udp"), watchdog.register("weft-tap")];
            let dp = match DataPlane::start(router.identity().name, udp, tap, control_tx, beats) {
                Ok(dp) => dp,
                Err(e) => {
                    // Nothing half-done: stop the listeners and remove the
                    // bridge and TAP this run created before failing.
                    stop.cancel();
                    api_stop.cancel();
                    if let Some(net) = host_net
                        && let Err(te) = net.undo().await
                    {
                        warn!(error = %te, "could not remove the bridge and TAP device");
                    }
                    return Err(DaemonError::DataPlane(e));
                }
            };
            tokio::spawn(forward_udp_control(
                control_rx,
                events_tx.clone(),
                stop.clone(),
            ));
            Some(dp)
        }
        None => None,
    };
    let id = router.identity();
    info!(
        peer = %id.name, nickname = %id.nickname, mesh = %mesh_addr, api = %api_socket.display(),
        "weft router started"
    );
    let targets_file = config.home.as_ref().map(Home::targets_path);
    let mut task = RouterTask::new(router, events_tx, stop.clone(), targets_file);
    task.watchdog = Some((watchdog, router_beat));
    task.crypto = config.crypto;
    task.data_plane = data_plane;
    task.exposed = exposed;
    task.router.add_targets(now, config.targets);
    task.persist_targets();
    task.drain_actions(now);
    task.run(events_rx).await;

    let _ = accept.await;
    if let Some(dp) = task.data_plane.take() {
        let _ = tokio::task::spawn_blocking(move || dp.stop()).await;
    }
    if let Some(net) = host_net
        && let Err(e) = net.release().await
    {
        warn!(error = %e, "could not remove the TAP device");
    }
    drop(config.home);
    api_stop.cancel();
    let _ = http.await;
    if let Some(server) = status_server {
        let _ = server.await;
    }
    info!("weft router stopped");
    Ok(())
}

/// Hands control datagrams from the data plane's UDP thread to the router
/// task. They are few (a heartbeat per neighbour per half second), so an
/// unbounded hop is fine; the bounded event queue applies back-pressure.
async fn forward_udp_control(
    mut rx: mpsc::UnboundedReceiver<(SocketAddr, Vec<u8>)>,
    events: mpsc::Sender<Event>,
    stop: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return,
            next = rx.recv() => next,
        };
        let Some((from, datagram)) = next else { return };
        if events.send(Event::Udp(from, datagram)).await.is_err() {
            return;
        }
    }
}

/// Sets up the bridge and TAP device, then puts the containers attached
/// and the host addresses exposed before a restart back on the bridge.
async fn start_host(
    config: &HostConfig,
    home: Option<&Home>,
) -> Result<(HostNet, HostHandles), DaemonError> {
    let attachments =
        Attachments::load(&config.bridge, config.mtu, home.map(Home::attachments_path))?;
    let exposed = Exposed::load(&config.bridge, home.map(Home::exposed_path))?;
    let net = host::setup(&config.bridge, config.mtu).await?;
    // A container left off the bridge is cut off, but the others still
    // need a router: a failure here does not stop the start.
    match attachments.restore().await {
        Ok(0) => {}
        Ok(n) => info!(attachments = n, bridge = %config.bridge, "attachments restored"),
        Err(e) => warn!(error = %e, "could not restore the attachments"),
    }
    match exposed.restore().await {
        Ok(0) => {}
        Ok(n) => info!(addresses = n, bridge = %config.bridge, "exposed addresses restored"),
        Err(e) => warn!(error = %e, "could not restore the exposed addresses"),
    }
    let handles = HostHandles {
        attachments: Arc::new(attachments),
        exposed: Arc::new(exposed),
    };
    Ok((net, handles))
}

async fn accept_loop(listener: TcpListener, events: mpsc::Sender<Event>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, remote)) => {
                if events
                    .send(Event::Inbound { stream, remote })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                warn!(error = %e, "accepting a mesh connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The shell's side of one connection.
struct ConnIo {
    writer: mpsc::UnboundedSender<Vec<u8>>,
    /// Bytes handed to the writer and not yet written.
    queued: Arc<AtomicUsize>,
    /// Graceful close: the reader stops, the writer flushes then shuts down.
    closing: CancellationToken,
    /// Hard stop of both tasks.
    abort: CancellationToken,
}

struct RouterTask {
    router: Router,
    conns: HashMap<ConnHandle, ConnIo>,
    events_tx: mpsc::Sender<Event>,
    conn_tasks: TaskTracker,
    /// Parent of every connection's `abort`.
    abort_all: CancellationToken,
    stop: CancellationToken,
    targets_file: Option<PathBuf>,
    data_plane: Option<DataPlane>,
    /// The data view version last seen (and handed to the data plane).
    data_version: u64,
    /// Each peer's next hop in the last data view, to log route changes.
    next_hops: HashMap<PeerName, PeerName>,
    /// Connections not yet seen established; one closed while still here
    /// failed its handshake.
    handshaking: HashSet<ConnHandle>,
    /// Handshake failures by reason ([`CloseReason::label`]).
    handshake_failures: BTreeMap<String, u64>,
    /// The host's addresses on the bridge, for the status.
    exposed: Option<Arc<Exposed>>,
    /// Encryption settings, for rotation and trusted-keys reloads.
    crypto: Option<CryptoSettings>,
    /// The liveness check, and this task's beat in it.
    watchdog: Option<(Watchdog, Arc<Beat>)>,
}

impl RouterTask {
    fn new(
        router: Router,
        events_tx: mpsc::Sender<Event>,
        stop: CancellationToken,
        targets_file: Option<PathBuf>,
    ) -> Self {
        Self {
            router,
            conns: HashMap::new(),
            events_tx,
            conn_tasks: TaskTracker::new(),
            abort_all: CancellationToken::new(),
            stop,
            targets_file,
            data_plane: None,
            data_version: 0,
            next_hops: HashMap::new(),
            handshaking: HashSet::new(),
            handshake_failures: BTreeMap::new(),
            exposed: None,
            crypto: None,
            watchdog: None,
        }
    }

    async fn run(&mut self, mut events: mpsc::Receiver<Event>) {
        let mut reload = tokio::time::interval(TRUSTED_KEYS_POLL);
        let beat = self.watchdog.as_ref().map(|(_, b)| b.clone());
        loop {
            let deadline = self.router.poll_timeout();
            let timer = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                event = events.recv() => {
                    // The task holds a sender itself, so the queue never closes.
                    let Some(event) = event else { break };
                    let _busy = beat.as_deref().map(Beat::busy);
                    let now = tokio::time::Instant::now().into_std();
                    self.handle_event(now, event);
                    self.drain_actions(now);
                }
                _ = timer => {
                    let _busy = beat.as_deref().map(Beat::busy);
                    let now = tokio::time::Instant::now().into_std();
                    self.router.handle_timeout(now);
                    self.drain_actions(now);
                }
                _ = reload.tick() => {
                    let _busy = beat.as_deref().map(Beat::busy);
                    self.reload_trusted_keys();
                }
            }
        }
        info!("weft router stopping: closing all connections");
        let now = tokio::time::Instant::now().into_std();
        self.router.shutdown(now);
        self.drain_actions(now);
        // Nobody reads events any more; dropping the queue fails pending
        // sends, so no task waits on it.
        drop(events);
        self.conn_tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.conn_tasks.wait())
            .await
            .is_err()
        {
            debug!("connections did not flush in time; dropping them");
            self.abort_all.cancel();
            self.conn_tasks.wait().await;
        }
    }

    fn handle_event(&mut self, now: Instant, event: Event) {
        match event {
            Event::Inbound { stream, remote } => {
                let conn = self.router.handle_inbound(now, remote);
                self.start_conn(conn, stream);
            }
            Event::DialSucceeded {
                target,
                stream,
                remote,
            } => {
                let conn = self.router.handle_dial_succeeded(now, &target, remote);
                self.start_conn(conn, stream);
            }
            Event::DialFailed { target, error } => {
                self.router.handle_dial_failed(now, &target, &error);
            }
            Event::Bytes(conn, bytes) => {
                if self.conns.contains_key(&conn) {
                    self.router.handle_bytes(now, conn, &bytes);
                }
            }
            Event::Closed(conn, error) => {
                if let Some(io) = self.conns.remove(&conn) {
                    io.abort.cancel();
                    self.router.handle_closed(now, conn, &error);
                }
            }
            Event::Api(request) => self.handle_api(now, request),
            Event::Udp(from, datagram) => self.router.handle_udp(now, from, &datagram),
        }
    }

    /// Picks up an edited trusted-keys file: a removed key can no longer
    /// complete a handshake.
    fn reload_trusted_keys(&mut self) {
        let Some(c) = self.crypto.as_mut() else {
            return;
        };
        match c.reload_trusted() {
            Ok(false) => {}
            Ok(true) => {
                self.router.set_crypto(c.handshake_config());
                info!("trusted keys reloaded: new handshakes use the new list");
            }
            Err(e) => warn!(error = %e, "keeping the previous trusted keys"),
        }
    }

    fn handle_api(&mut self, now: Instant, request: ApiRequest) {
        match request {
            ApiRequest::Status(reply) => {
                let _ = reply.send(self.status(now));
            }
            ApiRequest::Connect {
                targets,
                replace,
                reply,
            } => {
                let mut forgotten = Vec::new();
                if replace {
                    let others: Vec<PeerAddr> = self
                        .router
                        .user_targets()
                        .into_iter()
                        .filter(|t| !targets.contains(t))
                        .collect();
                    forgotten = self.router.forget_targets(&others);
                    info!(targets = ?forgotten, "targets replaced");
                }
                info!(targets = ?targets, "connect requested");
                self.router.add_targets(now, targets);
                self.persist_targets();
                let _ = reply.send(forgotten);
            }
            ApiRequest::Forget(targets, reply) => {
                let forgotten = self.router.forget_targets(&targets);
                info!(targets = ?forgotten, "targets forgotten");
                self.persist_targets();
                let _ = reply.send(forgotten);
            }
            ApiRequest::Password(psks, reply) => {
                let answer = match self.crypto.as_mut() {
                    Some(c) if c.has_password() => {
                        c.set_psks(*psks);
                        self.router.set_crypto(c.handshake_config());
                        info!("mesh password changed: new handshakes use it");
                        Ok(())
                    }
                    _ => Err("this router runs without a password, so there is none to rotate; relaunch it with --password-file (all routers of a mesh need the same password)".to_owned()),
                };
                let _ = reply.send(answer);
            }
            ApiRequest::Stop(reply) => {
                info!("stop requested through the control API");
                let _ = reply.send(());
                self.stop.cancel();
            }
        }
    }

    /// The router's status with what only the shell knows filled in.
    fn status(&self, now: Instant) -> crate::core::status::RouterStatus {
        let mut status = self.router.status(now);
        status.data_plane = self.data_plane.as_ref().map(DataPlane::stats);
        if let Some((dog, _)) = &self.watchdog {
            status.watchdog_stalls = dog.stalls();
        }
        if let Some(dp) = &status.data_plane {
            status.encryption.rekeys = dp.rekeys;
            status.encryption.replay_drops = dp
                .crypto_dropped
                .iter()
                .filter(|(k, _)| k.starts_with("replay"))
                .map(|(_, v)| v)
                .sum();
        }
        status.handshake_failures = self.handshake_failures.clone();
        status.exposed = self
            .exposed
            .as_ref()
            .map(|e| e.list().iter().map(ToString::to_string).collect())
            .unwrap_or_default();
        status
    }

    fn drain_actions(&mut self, now: Instant) {
        while let Some(action) = self.router.poll_action() {
            match action {
                Action::Dial { target } => self.spawn_dial(target),
                Action::Send { conn, bytes } => self.send(now, conn, bytes),
                Action::Close { conn, label, .. } => {
                    if self.handshaking.remove(&conn)
                        && let Some(why) = label
                    {
                        *self.handshake_failures.entry(why.into()).or_default() += 1;
                    }
                    if let Some(io) = self.conns.remove(&conn) {
                        io.closing.cancel();
                    }
                }
            }
        }
        let router = &self.router;
        self.handshaking.retain(|&conn| {
            router
                .connection(conn)
                .is_some_and(|c| !matches!(c.state, ConnState::Established { .. }))
        });
        while let Some(event) = self.router.poll_session() {
            let Some(dp) = &self.data_plane else { continue };
            match event {
                SessionEvent::Install {
                    peer,
                    addr,
                    session,
                } => dp.install_session(peer, addr, *session),
                SessionEvent::Remove { peer, local_index } => dp.remove_session(peer, local_index),
            }
        }
        while let Some((to, datagram)) = self.router.poll_transmit_udp() {
            if let Some(dp) = &self.data_plane {
                dp.send_control(to, &datagram);
            }
        }
        if self.router.data_version() != self.data_version {
            self.data_version = self.router.data_version();
            let view = self.router.data_view();
            self.log_route_changes(&view.routes);
            if let Some(dp) = &self.data_plane {
                dp.update(view);
            }
        }
    }

    /// One line per peer whose data route changed: direct, through a
    /// relay, or gone.
    fn log_route_changes(&mut self, routes: &crate::core::routes::Routes) {
        let now: HashMap<PeerName, PeerName> = routes.unicast().collect();
        for (&peer, &hop) in &now {
            if self.next_hops.get(&peer) == Some(&hop) {
                continue;
            }
            if hop == peer {
                info!(peer = %peer, "data route: direct");
            } else {
                info!(peer = %peer, via = %hop, "data route: relayed via {hop}");
            }
        }
        for peer in self.next_hops.keys().filter(|p| !now.contains_key(p)) {
            info!(peer = %peer, "data route: none (peer unreachable for data)");
        }
        self.next_hops = now;
    }

    fn send(&mut self, now: Instant, conn: ConnHandle, bytes: Vec<u8>) {
        let Some(io) = self.conns.get(&conn) else {
            return;
        };
        let len = bytes.len();
        if io.queued.load(Ordering::Relaxed) + len > MAX_QUEUED_BYTES {
            warn!(
                conn,
                limit_bytes = MAX_QUEUED_BYTES,
                "dropping connection: send queue overflow"
            );
            if let Some(io) = self.conns.remove(&conn) {
                io.abort.cancel();
            }
            self.router
                .handle_closed(now, conn, "send queue overflow: peer too slow");
            return;
        }
        io.queued.fetch_add(len, Ordering::Relaxed);
        // A send fails only when the writer already died; its Closed event
        // is on the way.
        let _ = io.writer.send(bytes);
    }

    fn start_conn(&mut self, conn: ConnHandle, stream: TcpStream) {
        if let Err(e) = configure_stream(&stream) {
            debug!(conn, error = %e, "could not set socket options");
        }
        let (reader, writer) = stream.into_split();
        let (tx, rx) = mpsc::unbounded_channel();
        let io = ConnIo {
            writer: tx,
            queued: Arc::new(AtomicUsize::new(0)),
            closing: CancellationToken::new(),
            abort: self.abort_all.child_token(),
        };
        self.handshaking.insert(conn);
        self.conn_tasks.spawn(read_loop(
            conn,
            reader,
            self.events_tx.clone(),
            io.closing.clone(),
            io.abort.clone(),
        ));
        self.conn_tasks.spawn(write_loop(
            conn,
            writer,
            rx,
            io.queued.clone(),
            self.events_tx.clone(),
            io.closing.clone(),
            io.abort.clone(),
        ));
        self.conns.insert(conn, io);
    }

    fn spawn_dial(&self, target: PeerAddr) {
        let events = self.events_tx.clone();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let event = tokio::select! {
                _ = stop.cancelled() => return,
                event = dial(target) => event,
            };
            let _ = events.send(event).await;
        });
    }

    fn persist_targets(&self) {
        let Some(path) = &self.targets_file else {
            return;
        };
        if let Err(e) = home::save_targets(path, &self.router.user_targets()) {
            warn!(error = %e, "could not save targets");
        }
    }
}

/// Resolves `target` afresh (a moved host is followed) and connects to the
/// first address that answers.
async fn dial(target: PeerAddr) -> Event {
    let attempt = async {
        let addrs = tokio::net::lookup_host((target.host.as_str(), target.port))
            .await
            .map_err(|e| format!("cannot resolve {}: {}", target.host, describe_io_error(&e)))?;
        let mut last_error = format!("{} resolved to no addresses", target.host);
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => return Ok((stream, addr)),
                Err(e) => last_error = describe_io_error(&e),
            }
        }
        Err(last_error)
    };
    match tokio::time::timeout(DIAL_TIMEOUT, attempt).await {
        Ok(Ok((stream, remote))) => Event::DialSucceeded {
            target,
            stream,
            remote,
        },
        Ok(Err(error)) => Event::DialFailed { target, error },
        Err(_) => Event::DialFailed {
            target,
            error: format!("timed out after {}s", DIAL_TIMEOUT.as_secs()),
        },
    }
}

async fn read_loop(
    conn: ConnHandle,
    mut reader: OwnedReadHalf,
    events: mpsc::Sender<Event>,
    closing: CancellationToken,
    abort: CancellationToken,
) {
    let mut buf = vec![0u8; READ_BUFFER];
    loop {
        let read = tokio::select! {
            biased;
            _ = closing.cancelled() => return,
            _ = abort.cancelled() => return,
            read = reader.read(&mut buf) => read,
        };
        let event = match read {
            Ok(0) => Event::Closed(conn, "closed by peer".into()),
            Ok(n) => Event::Bytes(conn, buf[..n].to_vec()),
            Err(e) => Event::Closed(conn, describe_io_error(&e)),
        };
        let last = matches!(event, Event::Closed(..));
        if events.send(event).await.is_err() || last {
            return;
        }
    }
}

async fn write_loop(
    conn: ConnHandle,
    mut writer: OwnedWriteHalf,
    mut queue: mpsc::UnboundedReceiver<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    events: mpsc::Sender<Event>,
    closing: CancellationToken,
    abort: CancellationToken,
) {
    // Once closing, whatever is still queued gets CLOSE_FLUSH to go out.
    let deadline = async {
        closing.cancelled().await;
        tokio::time::sleep(CLOSE_FLUSH).await;
    };
    tokio::pin!(deadline);
    loop {
        let next = tokio::select! {
            biased;
            _ = abort.cancelled() => return,
            _ = &mut deadline => return,
            next = queue.recv() => next,
        };
        // The router task drops the sender on close: flush done, say FIN.
        let Some(bytes) = next else {
            let _ = tokio::time::timeout(CLOSE_FLUSH, writer.shutdown()).await;
            return;
        };
        let written = tokio::select! {
            biased;
            _ = abort.cancelled() => return,
            _ = &mut deadline => return,
            written = writer.write_all(&bytes) => written,
        };
        queued.fetch_sub(bytes.len(), Ordering::Relaxed);
        if let Err(e) = written {
            let _ = events
                .send(Event::Closed(conn, describe_io_error(&e)))
                .await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::identity::{Identity, PeerName, PeerUid};

    fn router(seed: u64) -> Router {
        let identity = Identity {
            name: PeerName::from_u64(0x0200_0000_0000 | seed).unwrap(),
            nickname: "test".into(),
            uid: PeerUid(seed),
        };
        let now = tokio::time::Instant::now().into_std();
        Router::new(RouterConfig::new(identity, 6783, seed), now)
    }

    /// A connected pair: ours (handed to the task) and a peer that never reads.
    async fn socket_pair() -> (TcpStream, TcpStream, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (theirs, remote) = listener.accept().await.unwrap();
        (ours, theirs, remote)
    }

    #[tokio::test]
    async fn a_peer_that_stops_reading_is_dropped_at_the_queue_limit() {
        let (tx, _rx) = mpsc::channel(EVENT_QUEUE);
        let mut task = RouterTask::new(router(1), tx, CancellationToken::new(), None);
        let (ours, _theirs, remote) = socket_pair().await;
        let now = tokio::time::Instant::now().into_std();
        let conn = task.router.handle_inbound(now, remote);
        task.start_conn(conn, ours);
        task.drain_actions(now);

        // The test runtime is single-threaded and nothing here awaits, so
        // the writer task has not taken anything off the queue yet.
        task.send(now, conn, vec![0; MAX_QUEUED_BYTES / 2 + 1]);
        assert!(task.conns.contains_key(&conn));
        task.send(now, conn, vec![0; MAX_QUEUED_BYTES / 2 + 1]);
        assert!(!task.conns.contains_key(&conn), "dropped on overflow");
        assert!(
            task.router.connection(conn).is_none(),
            "the core was told the connection is gone"
        );
        task.conn_tasks.close();
        tokio::time::timeout(Duration::from_secs(5), task.conn_tasks.wait())
            .await
            .expect("the aborted connection's tasks end");
    }

    #[tokio::test]
    async fn close_flushes_queued_bytes_before_the_fin() {
        let (tx, _rx) = mpsc::channel(EVENT_QUEUE);
        let mut task = RouterTask::new(router(2), tx, CancellationToken::new(), None);
        let (ours, mut theirs, remote) = socket_pair().await;
        let now = tokio::time::Instant::now().into_std();
        let conn = task.router.handle_inbound(now, remote);
        task.start_conn(conn, ours);
        task.drain_actions(now);
        task.router.shutdown(now);
        task.drain_actions(now);
        assert!(task.conns.is_empty());

        let mut received = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), theirs.read_to_end(&mut received))
            .await
            .expect("the socket is shut down")
            .unwrap();
        assert!(!received.is_empty(), "the preamble went out before the FIN");
    }
}
