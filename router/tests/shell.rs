//! The real shell on loopback: routers run in-process through
//! `shell::daemon::run` on ephemeral ports (the control API on a socket in
//! a temporary directory), and the `weft` binary is run
//! for its error paths and its background launch.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use weft_router::core::RouterConfig;
use weft_router::core::identity::{Identity, PeerName, PeerUid};
use weft_router::core::status::RouterStatus;
use weft_router::shell::api_socket::ApiSocket;
use weft_router::shell::client::Client;
use weft_router::shell::daemon::{self, DaemonConfig, DaemonError};

/// A router running in this process.
struct TestRouter {
    name: PeerName,
    mesh: SocketAddr,
    client: Client,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), DaemonError>>,
    /// Holds the control socket.
    _dir: tempfile::TempDir,
}

async fn start_router(seed: u64) -> TestRouter {
    let mesh = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("weft.sock");
    let api = ApiSocket::bind(&socket, None)
        .unwrap()
        .into_tokio()
        .unwrap();
    let mesh_addr = mesh.local_addr().unwrap();
    let name = PeerName::from_u64(0x0200_0000_0000 | seed).unwrap();
    let identity = Identity {
        name,
        nickname: format!("test-{seed}"),
        uid: PeerUid(seed),
    };
    let udp = weft_router::shell::udp_io::bind(0).unwrap();
    let mut router = RouterConfig::new(identity, mesh_addr.port(), seed);
    router.udp_port = udp.local_addr().unwrap().port();
    router.heartbeat_interval = Duration::from_millis(100);
    router.heartbeat_timeout = Duration::from_millis(600);
    let config = DaemonConfig {
        router,
        targets: Vec::new(),
        home: None,
        udp: Some(udp),
        host: None,
        status: None,
        crypto: None,
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(daemon::run(config, mesh, api, shutdown.clone()));
    TestRouter {
        name,
        mesh: mesh_addr,
        client: Client::new(socket),
        shutdown,
        task,
        _dir: dir,
    }
}

/// Polls `router`'s status until `done` holds, for at most `secs` seconds.
async fn wait_for(
    router: &TestRouter,
    secs: u64,
    what: &str,
    done: impl Fn(&RouterStatus) -> bool,
) -> RouterStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let status = router.client.get_status().await.unwrap();
        if done(&status) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen within {secs}s; last status: {status:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn established_with(status: &RouterStatus, peer: PeerName) -> bool {
    let peer = peer.to_string();
    status
        .connections
        .iter()
        .any(|c| c.state == "established" && c.peer.as_deref() == Some(&peer))
}

fn reachable(status: &RouterStatus, peer: PeerName) -> bool {
    let peer = peer.to_string();
    status.peers.iter().any(|p| p.name == peer && p.reachable)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routers_connect_see_each_other_and_notice_a_stop() {
    let a = start_router(1).await;
    let b = start_router(2).await;

    let answer = b
        .client
        .post_connect(&[a.mesh.to_string()], false)
        .await
        .unwrap();
    assert_eq!(answer.added, [a.mesh.to_string()]);

    let sees =
        |other: PeerName| move |s: &RouterStatus| established_with(s, other) && reachable(s, other);
    wait_for(&a, 10, "a sees b", sees(b.name)).await;
    let status_b = wait_for(&b, 10, "b sees a", sees(a.name)).await;
    let target = &status_b.targets[0];
    assert_eq!(
        (target.origin.as_str(), target.state.as_str()),
        ("user", "connected")
    );

    b.client.post_stop().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), b.task)
        .await
        .expect("b stops within 5s")
        .unwrap()
        .unwrap();
    let err = b.client.get_status().await.unwrap_err();
    assert!(err.is_not_running(), "{err}");

    let status_a = wait_for(&a, 5, "a notices b left", |s| {
        s.connections.is_empty() && !reachable(s, b.name)
    })
    .await;
    assert_eq!(status_a.peers[0].name, a.name.to_string());

    a.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), a.task)
        .await
        .expect("a stops within 5s")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_peer_is_redialled_with_a_clear_error_until_forgotten() {
    let a = start_router(3).await;
    let b = start_router(4).await;
    a.client
        .post_connect(&[b.mesh.to_string()], false)
        .await
        .unwrap();
    wait_for(&a, 10, "a sees b", |s| established_with(s, b.name)).await;

    // Cancelling the token is what SIGTERM does.
    b.shutdown.cancel();
    b.task.await.unwrap().unwrap();
    let refused = Some("connection refused");
    wait_for(&a, 10, "a redials b and is refused", |s| {
        s.connections.is_empty() && s.targets[0].last_error.as_deref() == refused
    })
    .await;

    let forgotten = a.client.post_forget(&[b.mesh.to_string()]).await.unwrap();
    assert_eq!(forgotten.forgotten, [b.mesh.to_string()]);
    assert!(a.client.get_status().await.unwrap().targets.is_empty());
    a.shutdown.cancel();
    a.task.await.unwrap().unwrap();
}

/// A TCP relay to `upstream` that can go silent without closing anything,
/// like a peer whose host froze or whose link was cut.
async fn silent_relay(upstream: SocketAddr, silence: CancellationToken) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let silence = silence.clone();
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                tokio::select! {
                    _ = silence.cancelled() => {}
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => return,
                }
                // Hold both sockets open, saying nothing, until the test ends.
                std::future::pending::<()>().await;
                drop((inbound, outbound));
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_declared_dead_by_heartbeat_timeout() {
    let a = start_router(6).await;
    let b = start_router(7).await;
    let silence = CancellationToken::new();
    let relay = silent_relay(a.mesh, silence.clone()).await;
    b.client
        .post_connect(&[relay.to_string()], false)
        .await
        .unwrap();
    let conn_id = |s: &RouterStatus, peer: PeerName| {
        let peer = peer.to_string();
        s.connections
            .iter()
            .find(|c| c.state == "established" && c.peer.as_deref() == Some(&peer))
            .and_then(|c| c.conn_id.clone())
    };
    let sa = wait_for(&a, 10, "a sees b", |s| established_with(s, b.name)).await;
    wait_for(&b, 10, "b sees a", |s| established_with(s, a.name)).await;
    let relayed = conn_id(&sa, b.name).expect("an established connection has an id");

    silence.cancel();
    // Heartbeat timeout is 600 ms; both ends must notice on their own.
    // (Discovery may then connect them directly, as a new connection.)
    let gone = |s: &RouterStatus| {
        s.connections
            .iter()
            .all(|c| c.conn_id.as_deref() != Some(relayed.as_str()))
    };
    wait_for(&a, 5, "a drops the silent connection to b", gone).await;
    wait_for(&b, 5, "b drops the silent connection to a", gone).await;

    for r in [a, b] {
        r.shutdown.cancel();
        r.task.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_rejects_bad_requests_with_json_errors() {
    let a = start_router(5).await;
    let err = a
        .client
        .post_connect(&["192.0.2.1:1".into(), "host:port".into()], false)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid peer address \"host:port\""), "{err}");
    assert!(
        a.client.get_status().await.unwrap().targets.is_empty(),
        "nothing applied when one address is bad"
    );

    let http = http_get(a.client.socket(), "/nope").await;
    assert!(http.starts_with("HTTP/1.1 404"), "{http}");
    assert!(
        http.contains("{\"error\":\"no such endpoint: GET /nope"),
        "{http}"
    );

    let socket = a.client.socket().to_owned();
    a.shutdown.cancel();
    a.task.await.unwrap().unwrap();
    assert!(!socket.exists(), "a clean stop removes the socket file");
}

/// A raw HTTP/1.1 GET, to see exactly what the server sends.
async fn http_get(socket: &Path, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: weft\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

fn weft(args: &[&str], home: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .env("WEFT_HOME", home)
        .env_remove("WEFT_API_SOCKET")
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn cli_rejects_a_malformed_peer_before_starting_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let out = weft(&["launch", "10.0.0.1:notaport"], &home);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.starts_with("weft: invalid peer address \"10.0.0.1:notaport\""),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        !home.exists(),
        "validation happens before the home is created"
    );
}

#[test]
fn cli_status_says_when_no_router_is_running() {
    let tmp = tempfile::tempdir().unwrap();
    let out = weft(&["status"], tmp.path());
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim(),
        format!(
            "weft: no weft router is answering at {} (is it running? start it with `weft launch`, or give the --home or --api-socket it was launched with)",
            tmp.path().join("weft.sock").display()
        )
    );
    let other = tmp.path().join("elsewhere.sock");
    let out = weft(
        &["status", "--api-socket", other.to_str().unwrap()],
        tmp.path(),
    );
    assert!(
        stderr(&out).contains(&format!("answering at {} (", other.display())),
        "{}",
        stderr(&out)
    );
}

/// Kills a router left behind by a failed test.
struct KillOnDrop(std::path::PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.0.join("weft.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}

#[test]
fn cli_launches_in_the_background_reports_and_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let _guard = KillOnDrop(home.clone());
    let port = free_port().to_string();
    // The bridge and TAP device are tested in `tests/host.rs`, inside a
    // namespace of their own; here they would land in the host's.
    let launch = [
        "launch",
        "--no-bridge",
        "--port",
        &port,
        "--nickname",
        "cli-test",
        "--name",
        "7a:00:00:00:00:01",
    ];

    let out = weft(&launch, &home);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}{}", stdout, stderr(&out));
    assert!(
        stdout.starts_with("weft router 7a:00:00:00:00:01 (cli-test) running as pid "),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("logs: {}", home.join("weft.log").display())));
    assert!(home.join("weft.pid").exists());
    let socket = home.join("weft.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o660,
        "the control socket is owner and group only"
    );

    let again = weft(&launch, &home);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("another weft router is already running with home"),
        "{}",
        stderr(&again)
    );

    let out = weft(&["status"], &home);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Name: 7a:00:00:00:00:01 (cli-test)"),
        "{text}"
    );
    assert!(
        text.contains("7a:00:00:00:00:01 (cli-test)  self"),
        "{text}"
    );

    let out = weft(&["report"], &home);
    let report: RouterStatus = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report.nickname, "cli-test");

    let out = weft(&["stop"], &home);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "weft router stopped\n"
    );
    assert!(!home.join("weft.pid").exists(), "pid file removed on stop");
    assert!(!socket.exists(), "socket removed on stop");
    let log = std::fs::read_to_string(home.join("weft.log")).unwrap();
    assert!(log.contains("weft router stopped"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_heartbeats_bring_the_data_path_up_with_a_verified_pmtu() {
    let a = start_router(31).await;
    let b = start_router(32).await;
    a.client
        .post_connect(&[b.mesh.to_string()], false)
        .await
        .unwrap();
    let usable = |s: &RouterStatus| {
        s.connections.iter().any(|c| {
            c.data_path
                .as_ref()
                .is_some_and(|d| d.usable && d.pmtu_verified)
        })
    };
    let status = wait_for(&a, 10, "a usable, verified UDP path on a", usable).await;
    let dp = status.connections[0].data_path.clone().unwrap();
    assert_eq!(dp.pmtu, 1472, "loopback carries a full-size probe");
    wait_for(&b, 10, "a usable UDP path on b", usable).await;
    let counters = status
        .data_plane
        .expect("data-plane counters in the status");
    assert_eq!(counters.unknown_sender, 0);
    for r in [a, b] {
        r.shutdown.cancel();
        r.task.await.unwrap().unwrap();
    }
}
