//! The host side of the data plane: the Linux bridge containers attach to
//! and the TAP device through which the router reads and writes their
//! Ethernet frames.
//!
//! ```text
//!  container netns        host netns
//!  ┌────────┐         ┌──────────────────────────┐
//!  │ ethwe ─┼─ veth ──┼─ vw… ─┐                  │
//!  └────────┘         │       ├─ bridge `weft`   │
//!                     │ weft-tap ┘  (STP off,    │
//!                     │   │         fwd delay 0) │
//!                     └───┼──────────────────────┘
//!                         └─ SyncDevice: the router's data plane
//! ```
//!
//! Everything is done over rtnetlink, never with `ip` subprocesses: errors
//! come back as errno values we can explain, and nothing depends on which
//! iproute2 the host has. The TAP is opened with `tun-rs` in TAP mode with
//! `IFF_NO_PI` (frames carry no packet-information prefix) and
//! `IFF_MULTI_QUEUE` (the data plane may open more queues with
//! [`tun_rs::SyncDevice::try_clone`]). It is not persistent: it disappears
//! when the last descriptor closes, so a crashed router leaves only the
//! bridge behind, which the next [`setup`] adopts.

use std::fmt;
use std::io;

use rtnetlink::packet_route::link::{BridgeStpState, InfoKind};
use rtnetlink::{LinkBridge, LinkMessageBuilder, LinkUnspec};
use tracing::{debug, info, warn};
use tun_rs::{DeviceBuilder, Layer, SyncDevice};

use crate::core::forward::DEFAULT_OVERLAY_MTU;
use crate::core::wire::ethernet::Mac;
use crate::shell::describe_io_error;
use crate::shell::netlink::{Netlink, NetlinkError, link_kind, link_mac, permission_hint};

/// Lets the kernel hand the TAP's reader TCP super-segments with partial
/// checksums (TSO) instead of segmenting and checksumming every frame
/// itself: the data plane carries them whole (see `core::reassembly`).
/// UDP segmentation offload is left off on purpose: a peer on a kernel
/// older than 6.2 could not write such a frame to its TAP.
fn set_tap_offloads(tap: &SyncDevice) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let flags = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;
    // SAFETY: TUNSETOFFLOAD takes its argument by value; the fd is a live
    // TUN/TAP descriptor owned by `tap` for the whole call.
    let rc = unsafe {
        libc::ioctl(
            tap.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            libc::c_ulong::from(flags),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Bridge name unless `--bridge` says otherwise.
pub const DEFAULT_BRIDGE: &str = "weft";

/// The TAP device of the default bridge.
pub const DEFAULT_TAP: &str = "weft-tap";

/// The TAP device of the router whose bridge is `bridge`: [`DEFAULT_TAP`]
/// for the default bridge, else the bridge's name (cut to 11 bytes) and
/// `-tap`. A TAP named after another bridge is never taken over, so a
/// second router on another bridge, or `weft reset --bridge` for it, leaves
/// the first router's TAP alone.
pub fn tap_name(bridge: &str) -> String {
    if bridge == DEFAULT_BRIDGE {
        return DEFAULT_TAP.into();
    }
    let mut cut = bridge.len().min(MAX_IFNAME_LEN - "-tap".len());
    while !bridge.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}-tap", &bridge[..cut])
}

/// MTU of the bridge, the TAP and every attached interface unless `--mtu`
/// says otherwise; see [`DEFAULT_OVERLAY_MTU`] for how it is derived.
// The core's value is an MTU (1408 today), so the cast cannot truncate.
pub const DEFAULT_MTU: u32 = DEFAULT_OVERLAY_MTU as u32;

/// MTUs `--mtu` accepts: IPv4's minimum reassembly size up to what leaves
/// room for encapsulation inside a 64 KiB datagram.
pub const MTU_RANGE: std::ops::RangeInclusive<u32> = 576..=65000;

/// Longest interface name Linux accepts (`IFNAMSIZ` less the NUL).
pub const MAX_IFNAME_LEN: usize = 15;

/// Which bridge the daemon sets up (its TAP device is [`tap_name`] of
/// it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostConfig {
    pub bridge: String,
    pub mtu: u32,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            bridge: DEFAULT_BRIDGE.into(),
            mtu: DEFAULT_MTU,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(
        "a network interface named {name} already exists and is {}, not a bridge; remove it (`ip link delete {name}`) or pick another --bridge",
        article(.kind)
    )]
    NotABridge { name: String, kind: String },
    #[error(
        "a network interface named {name} already exists and is {}, not a TAP device; remove it (`ip link delete {name}`)",
        article(.kind)
    )]
    NotATap { name: String, kind: String },
    #[error("cannot create TAP device {name}: {}{}", describe_io_error(.error), permission_hint(.error))]
    Tap { name: String, error: io::Error },
    #[error(transparent)]
    Ifname(#[from] IfnameError),
    #[error(
        "invalid MTU {mtu}: pick one from {} to {} (the default is {DEFAULT_MTU})",
        MTU_RANGE.start(),
        MTU_RANGE.end()
    )]
    Mtu { mtu: u32 },
}

/// A name Linux would refuse for a network interface.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid interface name {name:?}: {why}")]
pub struct IfnameError {
    pub name: String,
    pub why: &'static str,
}

/// Checks `name` the way the kernel's `dev_valid_name` does, so a bad name
/// is reported before anything is created.
pub fn check_ifname(name: &str) -> Result<(), IfnameError> {
    let why = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_IFNAME_LEN {
        "it is longer than 15 bytes"
    } else if name == "." || name == ".." {
        "it is reserved"
    } else if name.contains(['/', ':']) || name.chars().any(char::is_whitespace) {
        "it must not contain '/', ':' or spaces"
    } else {
        return Ok(());
    };
    Err(IfnameError {
        name: name.into(),
        why,
    })
}

/// Checks an MTU against [`MTU_RANGE`].
pub fn check_mtu(mtu: u32) -> Result<(), HostError> {
    if MTU_RANGE.contains(&mtu) {
        Ok(())
    } else {
        Err(HostError::Mtu { mtu })
    }
}

/// The bridge and TAP device as set up by [`setup`].
pub struct HostNet {
    pub bridge: String,
    pub tap_name: String,
    pub mtu: u32,
    /// Whether [`setup`] created the bridge (else it adopted one left from
    /// an earlier run).
    pub created_bridge: bool,
    pub bridge_index: u32,
    pub tap_index: u32,
    /// The TAP device's MAC address, as the kernel reports it.
    pub tap_mac: Mac,
    /// The open TAP device, until the data plane takes it with
    /// [`HostNet::take_tap`]. The device lives as long as a descriptor of
    /// it is open, or until [`HostNet::release`] deletes it, which wakes a thread
    /// blocked reading it with an error (`EFAULT`).
    pub tap: Option<SyncDevice>,
}

impl fmt::Debug for HostNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostNet")
            .field("bridge", &self.bridge)
            .field("tap_name", &self.tap_name)
            .field("mtu", &self.mtu)
            .field("created_bridge", &self.created_bridge)
            .field("tap_mac", &self.tap_mac)
            .field("tap_open", &self.tap.is_some())
            .finish()
    }
}

impl HostNet {
    /// Hands the TAP device to its reader and writer.
    pub fn take_tap(&mut self) -> Option<SyncDevice> {
        self.tap.take()
    }

    /// Undoes a start that failed half-way: removes the TAP device, and
    /// the bridge if this run created it (an adopted one may hold
    /// containers).
    pub async fn undo(self) -> Result<(), HostError> {
        let created = self.created_bridge;
        let bridge = self.bridge.clone();
        self.release().await?;
        if created {
            Netlink::open()?.delete_link(&bridge).await?;
            info!(bridge, "bridge removed");
        }
        Ok(())
    }

    /// A router that stops removes its TAP device and leaves the bridge:
    /// containers stay plugged in and keep reaching each other on this
    /// host, and the next launch adopts the bridge. `weft reset` removes
    /// it.
    pub async fn release(mut self) -> Result<(), HostError> {
        // Closing our descriptor removes a non-persistent TAP by itself;
        // deleting it also covers one the data plane still holds open.
        drop(self.tap.take());
        Netlink::open()?.delete_link(&self.tap_name).await?;
        info!(
            bridge = %self.bridge,
            tap = %self.tap_name,
            "TAP device removed; the bridge stays with its containers (weft reset removes it)"
        );
        Ok(())
    }
}

/// Creates (or adopts) the bridge and creates its TAP device
/// ([`tap_name`]), enslaved to the bridge, both with MTU `mtu` and up.
///
/// A bridge named `bridge` left from a crashed run is adopted and
/// reconfigured; a TAP device of the bridge's TAP name is deleted and
/// created afresh. Another kind of interface under either name is an error that
/// names it. If a step fails, what this call created is removed again.
pub async fn setup(bridge: &str, mtu: u32) -> Result<HostNet, HostError> {
    check_ifname(bridge)?;
    let tap_ifname = tap_name(bridge);
    check_mtu(mtu)?;
    let nl = Netlink::open()?;

    let (bridge_index, created_bridge) = match nl.link_by_name(bridge).await? {
        Some(link) => match link_kind(&link) {
            Some(InfoKind::Bridge) => {
                info!(bridge, "adopting the existing bridge");
                (link.header.index, false)
            }
            kind => {
                return Err(HostError::NotABridge {
                    name: bridge.into(),
                    kind: describe_kind(kind),
                });
            }
        },
        None => {
            nl.handle
                .link()
                .add(LinkBridge::new(bridge).build())
                .execute()
                .await
                .map_err(|error| NetlinkError::Request {
                    action: format!("create bridge {bridge}"),
                    error,
                })?;
            let index = nl.index_of(bridge).await?;
            info!(bridge, "bridge created");
            (index, true)
        }
    };

    let result = setup_tap(&nl, bridge, bridge_index, &tap_ifname, mtu).await;
    let (tap, tap_index, tap_mac) = match result {
        Ok(tap) => tap,
        Err(e) => {
            if created_bridge && let Err(undo) = nl.delete_link(bridge).await {
                warn!(bridge, error = %undo, "cannot remove the bridge after a failed setup");
            }
            return Err(e);
        }
    };
    info!(bridge, tap = %tap_ifname, %tap_mac, mtu, "host network ready");
    Ok(HostNet {
        bridge: bridge.into(),
        tap_name: tap_ifname,
        mtu,
        created_bridge,
        bridge_index,
        tap_index,
        tap_mac,
        tap: Some(tap),
    })
}

/// Configures the bridge, then creates the TAP device and enslaves it.
async fn setup_tap(
    nl: &Netlink,
    bridge: &str,
    bridge_index: u32,
    tap_name: &str,
    mtu: u32,
) -> Result<(SyncDevice, u32, Mac), HostError> {
    // STP must be off before the forward delay can go below the 2 s the
    // kernel insists on while STP runs; with both, a new port forwards at
    // once instead of listening and learning for 30 s.
    for (what, message) in [
        (
            "turn STP off on",
            LinkMessageBuilder::<LinkBridge>::new(bridge)
                .index(bridge_index)
                .stp_state(BridgeStpState::Disabled)
                .build(),
        ),
        (
            "set the forward delay of",
            LinkMessageBuilder::<LinkBridge>::new(bridge)
                .index(bridge_index)
                .forward_delay(0)
                .build(),
        ),
    ] {
        nl.handle
            .link()
            .change(message)
            .execute()
            .await
            .map_err(|error| NetlinkError::Request {
                action: format!("{what} bridge {bridge}"),
                error,
            })?;
    }
    nl.set_link(
        LinkUnspec::new_with_index(bridge_index).mtu(mtu).up(),
        format!("set MTU {mtu} on bridge {bridge} and bring it up"),
    )
    .await?;

    match nl.link_by_name(tap_name).await? {
        Some(link) if link_kind(&link) == Some(&InfoKind::Tun) => {
            warn!(tap = tap_name, "removing a stale TAP device");
            nl.delete_link(tap_name).await?;
        }
        Some(link) => {
            return Err(HostError::NotATap {
                name: tap_name.into(),
                kind: describe_kind(link_kind(&link)),
            });
        }
        None => {}
    }
    let tap = DeviceBuilder::new()
        .name(tap_name)
        .layer(Layer::L2)
        .packet_information(false)
        .multi_queue(true)
        .offload(true)
        .enable(false)
        .build_sync()
        .map_err(|error| HostError::Tap {
            name: tap_name.into(),
            error,
        })?;
    set_tap_offloads(&tap).map_err(|error| HostError::Tap {
        name: tap_name.into(),
        error,
    })?;
    // From here on, dropping `tap` on an error removes the device again.
    let tap_index = nl.index_of(tap_name).await?;
    nl.set_link(
        LinkUnspec::new_with_index(tap_index)
            .mtu(mtu)
            .controller(bridge_index)
            .up(),
        format!("attach TAP device {tap_name} to bridge {bridge}"),
    )
    .await?;
    let link = nl
        .link_by_name(tap_name)
        .await?
        .ok_or_else(|| HostError::Tap {
            name: tap_name.into(),
            error: io::Error::other("it vanished right after creation"),
        })?;
    let mac = link_mac(&link).unwrap_or(Mac([0; 6]));
    debug!(tap = tap_name, index = tap_index, %mac, "TAP device created");
    Ok((tap, tap_index, mac))
}

/// `weft reset`: removes the bridge's TAP device, the bridge and the given host ends
/// of attached veths (which takes their container ends too); what is
/// already gone is skipped.
pub async fn remove_all(bridge: &str, veths: &[String]) -> Result<(), HostError> {
    let nl = Netlink::open()?;
    for veth in veths {
        nl.delete_link(veth).await?;
    }
    nl.delete_link(&tap_name(bridge)).await?;
    Ok(nl.delete_link(bridge).await?)
}

fn describe_kind(kind: Option<&InfoKind>) -> String {
    match kind {
        Some(InfoKind::Tun) => "TUN/TAP device".into(),
        Some(kind) => format!("{kind} interface"),
        None => "physical or loopback interface".into(),
    }
}

fn article(noun: &str) -> String {
    let vowel = noun.starts_with(['a', 'e', 'i', 'o', 'u', 'A', 'E', 'I', 'O', 'U']);
    format!("{} {noun}", if vowel { "an" } else { "a" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_bridge_has_its_own_tap_name_that_the_kernel_accepts() {
        assert_eq!(tap_name("weft"), "weft-tap");
        assert_eq!(tap_name("br-test"), "br-test-tap");
        assert_eq!(tap_name("weftb"), "weftb-tap");
        let long = "a-fifteen-bytes";
        assert_eq!(tap_name(long), "a-fifteen-b-tap");
        assert_ne!(tap_name("weft2"), tap_name("weft"));
        for bridge in ["weft", "br-test", long, "brücke-über-x"] {
            check_ifname(&tap_name(bridge)).unwrap();
        }
    }

    #[test]
    fn interface_names_are_checked_like_the_kernel_does() {
        for ok in [
            "weft",
            "weft-tap",
            "ethwe",
            "vw0123abcd",
            "a".repeat(15).as_str(),
        ] {
            check_ifname(ok).unwrap();
        }
        for (bad, why) in [
            ("", "empty"),
            ("a-name-too-long-x", "longer than 15"),
            ("..", "reserved"),
            ("a/b", "'/'"),
            ("a:b", "'/'"),
            ("a b", "'/'"),
        ] {
            let e = check_ifname(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn mtu_bounds_are_inclusive() {
        check_mtu(576).unwrap();
        check_mtu(65000).unwrap();
        check_mtu(DEFAULT_MTU).unwrap();
        let e = check_mtu(575).unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid MTU 575: pick one from 576 to 65000 (the default is 1408)"
        );
        check_mtu(65001).unwrap_err();
    }

    #[test]
    fn errors_name_the_interface_and_the_fix() {
        let e = HostError::NotABridge {
            name: "weft".into(),
            kind: describe_kind(Some(&InfoKind::Veth)),
        };
        assert_eq!(
            e.to_string(),
            "a network interface named weft already exists and is a veth interface, not a bridge; remove it (`ip link delete weft`) or pick another --bridge"
        );
        let e = NetlinkError::Request {
            action: "create bridge weft".into(),
            error: rtnetlink::Error::NetlinkError({
                let mut m = rtnetlink::packet_core::ErrorMessage::default();
                m.code = std::num::NonZeroI32::new(-libc::EPERM);
                m
            }),
        };
        assert_eq!(
            e.to_string(),
            "cannot create bridge weft: Operation not permitted (weft needs root, or CAP_NET_ADMIN, to manage network interfaces)"
        );
    }
}
