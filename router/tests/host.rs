//! The host side of the data plane for real: bridge, TAP device and veth
//! attachments, made through netlink by `shell::host` and `shell::attach`.
//!
//! These tests need root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and fail, not
//! skip, without it: CI runs them as root. Each one works in a private
//! network namespace that a thread enters with `unshare(CLONE_NEWNET)` and
//! that disappears with the thread, so nothing touches the host's
//! interfaces; the container side is a named namespace (`ip netns add`)
//! removed by a guard, even when the test panics.

use std::future::Future;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures_util::TryStreamExt;
use nix::sched::{CloneFlags, unshare};
use rtnetlink::packet_core::Nla;
use rtnetlink::packet_route::link::{
    BridgeStpState, InfoBridge, InfoData, LinkAttribute, LinkInfo, LinkMessage,
};
use rtnetlink::{LinkBridge, LinkUnspec, LinkVeth};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use weft_router::core::RouterConfig;
use weft_router::core::identity::{Identity, PeerName, PeerUid};
use weft_router::core::prefix::IpNet;
use weft_router::shell::api_socket::ApiSocket;
use weft_router::shell::attach::{self, AttachError, Attachments, Netns};
use weft_router::shell::client::Client;
use weft_router::shell::daemon::{self, DaemonConfig};
use weft_router::shell::host::{self, HostConfig, HostError};
use weft_router::shell::http_api::{AttachRequest, DetachRequest};
use weft_router::shell::netlink::{self, LinkState};

const MTU: u32 = 1408;

/// Fails the test, with what to do, unless it runs as root.
fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the host networking tests create bridges, TAP devices and network namespaces: \
         run them as root (CI does), e.g. `sudo -E cargo test -p weft-router --test host`"
    );
}

/// Runs `test` on a thread in a fresh network namespace with `lo` up.
fn in_private_netns<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    require_root();
    let thread = std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            set_up("lo").await;
            test().await;
        });
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

/// A named network namespace (a stand-in container), deleted on drop.
struct TestNetns {
    name: String,
    sleeper: Option<Child>,
}

impl TestNetns {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "weft-t{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let out = ip(&["netns", "add", &name]);
        assert!(out.status.success(), "ip netns add {name}: {out:?}");
        Self {
            name,
            sleeper: None,
        }
    }

    fn netns(&self) -> Netns {
        Netns::Name(self.name.clone())
    }

    /// A process living in the namespace, to name it by pid.
    fn pid(&mut self) -> u32 {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, "sleep", "120"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        self.sleeper = Some(child);
        // `ip netns exec` enters the namespace before it execs sleep.
        let ours = std::fs::metadata(format!("/var/run/netns/{}", self.name)).unwrap();
        for _ in 0..100 {
            if let Ok(theirs) = std::fs::metadata(format!("/proc/{pid}/ns/net")) {
                use std::os::unix::fs::MetadataExt;
                if theirs.ino() == ours.ino() {
                    return pid;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("pid {pid} never entered {}", self.name);
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        if let Some(mut child) = self.sleeper.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = ip(&["netns", "del", &self.name]);
    }
}

fn ip(args: &[&str]) -> Output {
    Command::new("ip").args(args).output().expect("run ip")
}

async fn netlink() -> rtnetlink::Handle {
    let (conn, handle, _) = rtnetlink::new_connection().unwrap();
    tokio::spawn(conn);
    handle
}

async fn set_up(name: &str) {
    netlink()
        .await
        .link()
        .set(LinkUnspec::new_with_name(name).up().build())
        .execute()
        .await
        .unwrap_or_else(|e| panic!("bring {name} up: {e}"));
}

async fn state(name: &str) -> Option<LinkState> {
    netlink::link_state(name).await.unwrap()
}

async fn raw_link(name: &str) -> LinkMessage {
    netlink()
        .await
        .link()
        .get()
        .match_name(name)
        .execute()
        .try_next()
        .await
        .unwrap()
        .unwrap()
}

/// The bridge's STP state and forward delay, read back from the kernel.
async fn bridge_options(name: &str) -> (BridgeStpState, u32) {
    let link = raw_link(name).await;
    let infos = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => Some(infos),
            _ => None,
        })
        .expect("link info");
    let bridge = infos
        .iter()
        .find_map(|i| match i {
            LinkInfo::Data(InfoData::Bridge(bridge)) => Some(bridge),
            _ => None,
        })
        .expect("bridge data");
    let stp = bridge.iter().find_map(|b| match b {
        InfoBridge::StpState(s) => Some(*s),
        _ => None,
    });
    let delay = bridge.iter().find_map(|b| match b {
        InfoBridge::ForwardDelay(d) => Some(*d),
        _ => None,
    });
    (stp.expect("STP state"), delay.expect("forward delay"))
}

/// The TUN/TAP options the kernel reports (`IFLA_TUN_*`): type, packet
/// information, virtio header, multi-queue.
async fn tun_options(name: &str) -> (u8, u8, u8, u8) {
    // linux/if_link.h; the values are single bytes.
    const TYPE: u16 = 3;
    const PI: u16 = 4;
    const VNET_HDR: u16 = 5;
    const MULTI_QUEUE: u16 = 7;
    let link = raw_link(name).await;
    let mut options = std::collections::HashMap::new();
    for attribute in &link.attributes {
        let LinkAttribute::LinkInfo(infos) = attribute else {
            continue;
        };
        for info in infos {
            let LinkInfo::Data(InfoData::Tun(tun)) = info else {
                continue;
            };
            for option in tun {
                let mut value = vec![0; option.value_len()];
                option.emit_value(&mut value);
                options.insert(option.kind(), value);
            }
        }
    }
    let byte = |kind| {
        options
            .get(&kind)
            .and_then(|v| v.first().copied())
            .expect("TUN option")
    };
    (byte(TYPE), byte(PI), byte(VNET_HDR), byte(MULTI_QUEUE))
}

async fn rx_packets(name: &str) -> u64 {
    raw_link(name)
        .await
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Stats64(stats) => Some(stats.rx_packets),
            _ => None,
        })
        .expect("link statistics")
}

/// Interfaces of kind `kind` in this thread's namespace.
async fn links_of_kind(kind: &str) -> Vec<String> {
    let links: Vec<LinkMessage> = netlink()
        .await
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .unwrap();
    links
        .iter()
        .filter(|l| {
            l.attributes.iter().any(|a| {
                matches!(a, LinkAttribute::LinkInfo(infos)
                    if infos.iter().any(|i| matches!(i, LinkInfo::Kind(k) if k.to_string() == kind)))
            })
        })
        .filter_map(|l| {
            l.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            })
        })
        .collect()
}

async fn assert_host_net(bridge: &str, tap: &str, net: &host::HostNet) {
    let br = state(bridge).await.expect("the bridge exists");
    assert_eq!(br.kind.as_deref(), Some("bridge"));
    assert!(br.up, "the bridge is up");
    assert_eq!(br.mtu, Some(MTU));
    assert_eq!(br.index, net.bridge_index);
    assert_eq!(
        bridge_options(bridge).await,
        (BridgeStpState::Disabled, 0),
        "STP off, ports forward at once"
    );
    let t = state(tap).await.expect("the TAP device exists");
    assert_eq!(t.kind.as_deref(), Some("tun"));
    assert!(t.up, "the TAP device is up");
    assert_eq!(t.mtu, Some(MTU));
    assert_eq!(t.controller, Some(br.index), "the TAP is enslaved");
    assert_eq!(t.index, net.tap_index);
    assert_eq!(t.mac, Some(net.tap_mac));
    assert_eq!(
        tun_options(tap).await,
        (libc::IFF_TAP as u8, 0, 1, 1),
        "TAP mode, no packet information, a virtio header (offloads), multi-queue"
    );
    assert_eq!(netlink::mac_address(tap).await.unwrap(), Some(net.tap_mac));
}

#[test]
fn setup_creates_then_adopts_and_teardown_removes_everything() {
    in_private_netns(|| async {
        let first = host::setup("weft", MTU).await.unwrap();
        assert!(first.created_bridge);
        assert!(first.tap.is_some());
        assert_host_net("weft", "weft-tap", &first).await;

        // As after a crash: the bridge is still there, and so is the TAP
        // (the old descriptor is still open). Both are taken over.
        let mut second = host::setup("weft", MTU).await.unwrap();
        assert!(!second.created_bridge, "the bridge is adopted");
        assert_eq!(second.bridge_index, first.bridge_index);
        assert_ne!(second.tap_index, first.tap_index, "the TAP is new");
        assert_host_net("weft", "weft-tap", &second).await;
        drop(first);

        // The data plane's device works: a frame written to it, behind a
        // virtio-net header that asks nothing, enters the kernel as
        // received on the TAP.
        let tap = second.take_tap().unwrap();
        let before = rx_packets("weft-tap").await;
        let mut frame = [0u8; 10 + 60];
        frame[10..16].copy_from_slice(&[0xff; 6]);
        frame[16..22].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        frame[22..24].copy_from_slice(&0x88b5u16.to_be_bytes());
        assert_eq!(tap.send(&frame).unwrap(), frame.len());
        assert_eq!(rx_packets("weft-tap").await, before + 1);

        host::remove_all("weft", &[]).await.unwrap();
        assert!(state("weft").await.is_none(), "the bridge is gone");
        assert!(state("weft-tap").await.is_none(), "the TAP is gone");
        host::remove_all("weft", &[]).await.unwrap();
        second.undo().await.unwrap();
    });
}

/// The data plane reads the TAP from a thread blocked in `recv`; stopping
/// the router deletes the device, which must wake that thread with an
/// error rather than leave it blocked for ever. The bridge stays.
#[test]
fn release_wakes_a_thread_blocked_reading_the_tap_and_keeps_the_bridge() {
    in_private_netns(|| async {
        let mut net = host::setup("weft", MTU).await.unwrap();
        let tap = net.take_tap().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            // Whatever the kernel sends first (IPv6 router solicitations
            // and the like) is read past.
            let result = loop {
                match tap.recv(&mut buf) {
                    Ok(_) => continue,
                    Err(e) => break e,
                }
            };
            let _ = tx.send(result.raw_os_error());
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        net.release().await.unwrap();
        let errno = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the reader wakes up when the TAP is deleted");
        reader.join().unwrap();
        assert!(errno.is_some(), "an OS error");
        assert!(state("weft-tap").await.is_none());
        assert!(
            state("weft").await.is_some(),
            "a stopping router leaves the bridge to its containers"
        );
    });
}

#[test]
fn a_bridge_left_with_stp_on_is_adopted_and_fixed() {
    in_private_netns(|| async {
        netlink()
            .await
            .link()
            .add(
                LinkBridge::new("weft")
                    .stp_state(BridgeStpState::KernelStp)
                    .forward_delay(1500)
                    .build(),
            )
            .execute()
            .await
            .unwrap();
        assert_eq!(
            bridge_options("weft").await,
            (BridgeStpState::KernelStp, 1500)
        );
        let net = host::setup("weft", MTU).await.unwrap();
        assert!(!net.created_bridge);
        assert_host_net("weft", "weft-tap", &net).await;
        // Undoing a failed start leaves an adopted bridge (containers may
        // hold on to it) and removes one the start created.
        net.undo().await.unwrap();
        assert!(state("weft").await.is_some(), "the adopted bridge stays");
        assert!(state("weft-tap").await.is_none());
        host::remove_all("weft", &[]).await.unwrap();
        let net = host::setup("weft", MTU).await.unwrap();
        assert!(net.created_bridge);
        net.undo().await.unwrap();
        assert!(state("weft").await.is_none(), "the created bridge is gone");
    });
}

#[test]
fn another_kind_of_interface_under_the_bridge_name_is_refused() {
    in_private_netns(|| async {
        let nl = netlink().await;
        nl.link()
            .add(LinkVeth::new("weft", "weft-peer").build())
            .execute()
            .await
            .unwrap();
        let e = host::setup("weft", MTU).await.unwrap_err();
        assert!(matches!(e, HostError::NotABridge { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "a network interface named weft already exists and is a veth interface, not a bridge; remove it (`ip link delete weft`) or pick another --bridge"
        );
        assert!(state("weft-tap").await.is_none(), "nothing was created");

        // And a non-TAP under the TAP's name: the bridge made for the
        // occasion is removed again.
        nl.link()
            .add(LinkVeth::new("br-other-tap", "br-other-peer").build())
            .execute()
            .await
            .unwrap();
        let e = host::setup("br-other", MTU).await.unwrap_err();
        assert!(matches!(e, HostError::NotATap { .. }), "{e:?}");
        assert!(
            state("br-other").await.is_none(),
            "the new bridge is undone"
        );
        assert_eq!(state("weft").await.unwrap().kind.as_deref(), Some("veth"));
    });
}

#[test]
fn attach_ps_detach_and_restore_after_a_restart() {
    let mut c1 = TestNetns::new();
    let c1_name = c1.name.clone();
    let pid = c1.pid();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("attachments.json");
    in_private_netns(move || async move {
        let net = host::setup("weft", MTU).await.unwrap();
        let attachments = Attachments::load("weft", MTU, Some(file.clone())).unwrap();
        let netns = Netns::Name(c1_name.clone());
        let cidrs: Vec<IpNet> = attach::parse_cidrs(&["10.32.0.1/12", "fd00::1/64"]).unwrap();

        let info = attachments
            .attach(&netns, None, "ethwe", &cidrs)
            .await
            .unwrap();
        assert_eq!(info.ifname, "ethwe");
        assert_eq!(info.state, "up");
        assert_eq!(info.addresses, ["10.32.0.1/12", "fd00::1/64"]);
        assert!(info.host_ifname.starts_with("vw") && info.host_ifname.len() == 10);

        // Inside the namespace: up, with the MTU and the addresses.
        let inside = attach::link_state_in(&netns, "ethwe")
            .await
            .unwrap()
            .unwrap();
        assert!(inside.up);
        assert_eq!(inside.mtu, Some(MTU));
        assert_eq!(inside.kind.as_deref(), Some("veth"));
        for cidr in &cidrs {
            assert!(
                inside.addresses.contains(cidr),
                "{cidr} in {:?}",
                inside.addresses
            );
        }
        assert_eq!(inside.mac.map(|m| m.to_string()), info.mac);
        let lo = attach::link_state_in(&netns, "lo").await.unwrap().unwrap();
        assert!(lo.up, "lo is up too");
        // On the host: the other end, on the bridge.
        let host_end = state(&info.host_ifname).await.unwrap();
        assert!(host_end.up);
        assert_eq!(host_end.mtu, Some(MTU));
        assert_eq!(host_end.controller, Some(net.bridge_index));

        let ps = attachments.list().await.unwrap();
        assert_eq!(ps, std::slice::from_ref(&info));

        // The same namespace and interface again, or a name taken inside.
        let e = attachments
            .attach(&netns, None, "ethwe", &cidrs)
            .await
            .unwrap_err();
        assert!(matches!(e, AttachError::AlreadyAttached { .. }), "{e}");
        let e = attachments
            .attach(&netns, None, "lo", &cidrs)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "network namespace {c1_name} already has an interface named lo; pick another --ifname"
            )
        );

        // A restart: the bridge goes, the veth stays; the next router
        // reads the file and puts the veth back on the new bridge.
        net.undo().await.unwrap();
        assert_eq!(state(&info.host_ifname).await.unwrap().controller, None);
        let net = host::setup("weft", MTU).await.unwrap();
        let attachments = Attachments::load("weft", MTU, Some(file.clone())).unwrap();
        assert_eq!(attachments.restore().await.unwrap(), 1);
        let host_end = state(&info.host_ifname).await.unwrap();
        assert_eq!(host_end.controller, Some(net.bridge_index));
        assert_eq!(
            attachments.list().await.unwrap(),
            std::slice::from_ref(&info)
        );

        // Detach by pid what was attached by name: the same namespace.
        let record = attachments.detach(&Netns::Pid(pid), "ethwe").await.unwrap();
        assert_eq!(record.host_ifname, info.host_ifname);
        assert!(state(&info.host_ifname).await.is_none());
        assert!(
            attach::link_state_in(&netns, "ethwe")
                .await
                .unwrap()
                .is_none()
        );
        assert!(attachments.list().await.unwrap().is_empty());
        let saved: Vec<serde_json::Value> =
            serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert!(saved.is_empty(), "the file forgets it too");
        let e = attachments.detach(&netns, "ethwe").await.unwrap_err();
        assert!(matches!(e, AttachError::NotAttached { .. }), "{e}");

        // Attached by pid, listed with it.
        let info = attachments
            .attach(&Netns::Pid(pid), None, "eth1", &cidrs[..1])
            .await
            .unwrap();
        assert_eq!(info.netns, Netns::Pid(pid));
        assert_eq!(attachments.list().await.unwrap(), [info]);
        net.undo().await.unwrap();
    });
    drop(c1);
}

#[test]
fn a_failed_attach_leaves_nothing_behind() {
    let c1 = TestNetns::new();
    let c1_name = c1.name.clone();
    in_private_netns(move || async move {
        let net = host::setup("weft", MTU).await.unwrap();
        let attachments = Attachments::load("weft", MTU, None).unwrap();
        let netns = Netns::Name(c1_name.clone());
        // The kernel refuses the second copy of the address, after the
        // veth exists: the attach must be undone.
        let twice = attach::parse_cidrs(&["10.32.0.1/12", "10.32.0.1/12"]).unwrap();
        let e = attachments
            .attach(&netns, None, "ethwe", &twice)
            .await
            .unwrap_err();
        assert!(
            e.to_string().starts_with(&format!(
                "cannot add address 10.32.0.1/12 to ethwe in network namespace {c1_name}: "
            )),
            "{e}"
        );
        assert!(links_of_kind("veth").await.is_empty(), "no host end left");
        assert!(
            attach::link_state_in(&netns, "ethwe")
                .await
                .unwrap()
                .is_none()
        );
        assert!(attachments.list().await.unwrap().is_empty());

        let missing = Netns::Name(format!("{c1_name}-missing"));
        let e = attachments
            .attach(&missing, None, "ethwe", &twice[..1])
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "network namespace {c1_name}-missing not found: create it with `ip netns add {c1_name}-missing`"
            )
        );
        let e = attachments
            .attach(&Netns::Pid(u32::MAX / 2), None, "ethwe", &twice[..1])
            .await
            .unwrap_err();
        assert!(matches!(e, AttachError::NoProcess { .. }), "{e}");
        assert!(links_of_kind("veth").await.is_empty());
        net.undo().await.unwrap();
    });
    drop(c1);
}

/// The daemon end to end over its HTTP API: host setup before ready,
/// attach / ps / detach answered by the host handle, teardown on stop.
#[test]
fn the_daemon_sets_up_serves_attachments_and_tears_down() {
    let c1 = TestNetns::new();
    let c1_name = c1.name.clone();
    in_private_netns(move || async move {
        let mesh = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("weft.sock");
        let api = ApiSocket::bind(&socket, None)
            .unwrap()
            .into_tokio()
            .unwrap();
        let client = Client::new(socket);
        let identity = Identity {
            name: PeerName::from_u64(0x0200_0000_0001).unwrap(),
            nickname: "host-test".into(),
            uid: PeerUid(1),
        };
        // With the data plane: it takes the TAP, and must let go of it
        // before the TAP is deleted on stop.
        let udp = weft_router::shell::udp_io::bind(0).unwrap();
        let mut router = RouterConfig::new(identity, mesh.local_addr().unwrap().port(), 1);
        router.udp_port = udp.local_addr().unwrap().port();
        let config = DaemonConfig {
            router,
            targets: Vec::new(),
            home: None,
            udp: Some(udp),
            host: Some(HostConfig {
                bridge: "br-weft".into(),
                mtu: 1400,
            }),
            status: None,
            crypto: None,
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(daemon::run(config, mesh, api, shutdown.clone()));
        client.get_status().await.unwrap();
        let tap = state("br-weft-tap")
            .await
            .expect("ready means the TAP exists");
        assert_eq!(tap.mtu, Some(1400));
        assert_eq!(tap.controller, Some(state("br-weft").await.unwrap().index));

        let request = |cidrs: &[&str]| AttachRequest {
            netns: Some(c1_name.clone()),
            cidrs: cidrs.iter().map(ToString::to_string).collect(),
            ..AttachRequest::default()
        };
        let e = client
            .post_attach(&request(&["10.32.0.1"]))
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("invalid address \"10.32.0.1\": the prefix length is missing"),
            "{e}"
        );
        assert!(
            links_of_kind("veth").await.is_empty(),
            "checked before creating"
        );
        let e = client
            .post_attach(&AttachRequest {
                pid: Some(1),
                ..request(&["10.32.0.1/12"])
            })
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("exactly one of --netns NAME, --pid PID or --netns-path PATH"),
            "{e}"
        );

        let info = client
            .post_attach(&request(&["10.32.0.1/12"]))
            .await
            .unwrap();
        assert_eq!(info.addresses, ["10.32.0.1/12"]);
        let inside = attach::link_state_in(&Netns::Name(c1_name.clone()), "ethwe")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(inside.mtu, Some(1400));
        assert_eq!(
            client.get_ps().await.unwrap().attachments,
            std::slice::from_ref(&info)
        );
        let detached = client
            .post_detach(&DetachRequest {
                netns: Some(c1_name.clone()),
                ..DetachRequest::default()
            })
            .await
            .unwrap();
        assert_eq!(detached.host_ifname, info.host_ifname);
        assert!(client.get_ps().await.unwrap().attachments.is_empty());

        shutdown.cancel();
        task.await.unwrap().unwrap();
        assert!(state("br-weft").await.is_some(), "stop leaves the bridge");
        assert!(state("br-weft-tap").await.is_none(), "and removes the TAP");
    });
    drop(c1);
}

/// The `weft` CLI as a person uses it, the router in a namespace of its
/// own: launch, attach, ps, stop (the container stays on the bridge),
/// launch again (which adopts it), detach, stop.
#[test]
fn cli_attach_survives_a_router_restart() {
    require_root();
    let router = TestNetns::new();
    let c1 = TestNetns::new();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let _kill = KillOnDrop(home.clone());
    assert!(
        ip(&["-n", &router.name, "link", "set", "lo", "up"])
            .status
            .success()
    );
    let weft = |args: &[&str]| -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &router.name, env!("CARGO_BIN_EXE_weft")])
            .args(args)
            .env("WEFT_HOME", &home)
            .env_remove("WEFT_API_SOCKET")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let in_router = |name: &str| {
        runtime
            .block_on(attach::link_state_in(&router.netns(), name))
            .unwrap()
    };

    let launch = ["launch", "--nickname", "cli-host", "--no-discovery"];
    let (ok, out) = weft(&launch);
    assert!(ok, "{out}");
    let (ok, out) = weft(&["attach", "--netns", &c1.name, "10.32.0.1/12"]);
    assert!(ok, "{out}");
    assert!(
        out.starts_with(&format!(
            "attached {} (network namespace {}): ethwe ",
            c1.name, c1.name
        )),
        "{out}"
    );
    let (ok, out) = weft(&["ps"]);
    assert!(ok, "{out}");
    let row = out.lines().nth(1).expect("one attachment");
    assert!(
        row.contains(&c1.name) && row.contains("10.32.0.1/12") && row.ends_with("up"),
        "{out}"
    );
    assert!(home.join("attachments.json").exists());

    let bridge = in_router("weft").expect("the router made its bridge");
    let host_end = row.split_whitespace().nth(5).unwrap();
    let (ok, out) = weft(&["stop"]);
    assert!(ok, "{out}");
    assert!(in_router("weft-tap").is_none(), "stop removes the TAP");
    assert_eq!(
        in_router(host_end).expect("the veth survived").controller,
        Some(bridge.index),
        "stop leaves the container plugged into the bridge"
    );

    let (ok, out) = weft(&launch);
    assert!(ok, "{out}");
    assert_eq!(
        in_router("weft").expect("the bridge is there").index,
        bridge.index,
        "the restarted router adopted the bridge"
    );
    assert_eq!(
        in_router(host_end).expect("the veth survived").controller,
        Some(bridge.index),
        "the container is still on the bridge"
    );

    let (ok, out) = weft(&["detach", "--netns", &c1.name]);
    assert!(ok, "{out}");
    assert_eq!(
        out,
        format!("detached network namespace {}: ethwe\n", c1.name)
    );
    let (ok, out) = weft(&["detach", "--netns", &c1.name]);
    assert!(!ok);
    assert!(out.contains("has no weft interface ethwe"), "{out}");
    let (ok, out) = weft(&["attach", "--netns", "no-such-ns-for-weft", "10.32.0.1/12"]);
    assert!(!ok);
    assert_eq!(out.trim_end().lines().count(), 1, "one line: {out}");
    assert!(
        out.contains("network namespace no-such-ns-for-weft not found: create it with `ip netns add no-such-ns-for-weft`"),
        "{out}"
    );
    let (ok, out) = weft(&["stop"]);
    assert!(ok, "{out}");
}

/// Kills a router left behind by a failed test.
struct KillOnDrop(std::path::PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(Path::new(&self.0).join("weft.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}

#[test]
fn attach_by_path_records_one_container_id_per_namespace() {
    let mut c1 = TestNetns::new();
    let c2 = TestNetns::new();
    let (c1_name, c2_name) = (c1.name.clone(), c2.name.clone());
    let pid = c1.pid();
    in_private_netns(move || async move {
        let net = host::setup("weft", MTU).await.unwrap();
        let attachments = Attachments::load("weft", MTU, None).unwrap();
        let cidrs = attach::parse_cidrs(&["10.32.0.1/12"]).unwrap();
        // By path, as a runtime hands it over: the id defaults to the
        // path's last part.
        let by_path = Netns::Path(format!("/var/run/netns/{c1_name}").into());
        let info = attachments
            .attach(&by_path, None, "ethwe", &cidrs)
            .await
            .unwrap();
        assert_eq!(info.id, c1_name);
        assert_eq!(info.netns, by_path);
        assert_eq!(info.state, "up");
        let inside = attach::link_state_in(&by_path, "ethwe").await.unwrap();
        assert!(inside.is_some_and(|l| l.up), "the veth is inside, up");

        // The same namespace through /proc/PID/ns/net, a second interface:
        // the same container, so the same id, and no other.
        let by_proc = Netns::Path(format!("/proc/{pid}/ns/net").into());
        let eth1 = attachments
            .attach(&by_proc, Some(&c1_name), "eth1", &cidrs)
            .await
            .unwrap();
        assert_eq!(eth1.id, c1_name);
        let e = attachments
            .attach(&by_proc, Some("web-1"), "eth2", &cidrs)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "the network namespace at /proc/{pid}/ns/net is attached already as container {c1_name}; attach it with --id {c1_name}"
            )
        );
        // Another namespace may not take the id.
        let e = attachments
            .attach(
                &Netns::Name(c2_name.clone()),
                Some(&c1_name),
                "ethwe",
                &cidrs,
            )
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "container id {c1_name} is already used by the attachment of the network namespace at /var/run/netns/{c1_name}; give this one another --id"
            )
        );
        assert_eq!(e.http_status(), 409);
        let c2_info = attachments
            .attach(
                &Netns::Name(c2_name.clone()),
                Some("web-2"),
                "ethwe",
                &cidrs,
            )
            .await
            .unwrap();
        assert_eq!(c2_info.id, "web-2");
        let ids: Vec<String> = attachments
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.id)
            .collect();
        assert_eq!(ids, [c1_name.clone(), c1_name.clone(), "web-2".into()]);

        // A path where no namespace is, and one that is not a namespace.
        let e = attachments
            .attach(
                &Netns::Path("/var/run/netns/weft-no-such".into()),
                None,
                "ethwe",
                &cidrs,
            )
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "no network namespace at /var/run/netns/weft-no-such (has the container stopped?)"
        );
        assert_eq!(e.http_status(), 404);
        let e = attachments
            .attach(
                &Netns::Path("/etc/hostname".into()),
                Some("x"),
                "ethwe",
                &cidrs,
            )
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("is /etc/hostname a network namespace?"),
            "{e}"
        );
        // Detach by path.
        attachments.detach(&by_proc, "eth1").await.unwrap();
        attachments.detach(&by_path, "ethwe").await.unwrap();
        net.undo().await.unwrap();
    });
    drop((c1, c2));
}
