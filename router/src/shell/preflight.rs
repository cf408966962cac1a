//! Checks a launch makes before it creates anything, so the common
//! reasons a router cannot start are one clear line instead of a netlink
//! error halfway through setting up the host.

use std::fs::OpenOptions;
use std::io;
use std::path::Path;

use crate::shell::describe_io_error;

/// The TUN/TAP clone device the TAP is created through.
pub const TUN_PATH: &str = "/dev/net/tun";

/// `CAP_NET_ADMIN` from `linux/capability.h`.
const CAP_NET_ADMIN: u32 = 12;

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "weft launch needs root or the CAP_NET_ADMIN capability to create the bridge and TAP device (running as uid {uid} without it); run it with sudo, or pass --no-bridge to run the mesh alone"
    )]
    NoNetAdmin { uid: u32 },
    #[error(
        "{path} does not exist, so weft cannot create its TAP device; load the tun module (`modprobe tun`), or give the container the device (`docker run --device /dev/net/tun ...`)"
    )]
    NoTun { path: String },
    #[error("cannot open {path}: {why}; weft needs it to create its TAP device")]
    TunUnusable { path: String, why: String },
    #[error("cannot read this process's capabilities from /proc/self/status: {why}")]
    Capabilities { why: String },
}

/// Fails unless this process may manage network interfaces.
pub fn check_net_admin() -> Result<(), PreflightError> {
    let status =
        std::fs::read_to_string("/proc/self/status").map_err(|e| PreflightError::Capabilities {
            why: describe_io_error(&e),
        })?;
    let caps = effective_caps(&status).ok_or_else(|| PreflightError::Capabilities {
        why: "no CapEff line".into(),
    })?;
    if caps & (1 << CAP_NET_ADMIN) != 0 {
        return Ok(());
    }
    Err(PreflightError::NoNetAdmin {
        uid: effective_uid(&status).unwrap_or(u32::MAX),
    })
}

/// The effective capability set from the text of `/proc/self/status`.
fn effective_caps(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// The effective uid (the second of the `Uid:` line's four).
fn effective_uid(status: &str) -> Option<u32> {
    let ids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    ids.split_whitespace().nth(1)?.parse().ok()
}

/// Fails unless the TUN clone device at `path` can be opened. Opening it
/// creates nothing; a device is made only by a later ioctl.
pub fn check_tun(path: &Path) -> Result<(), PreflightError> {
    let shown = path.display().to_string();
    match OpenOptions::new().read(true).write(true).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(PreflightError::NoTun { path: shown }),
        Err(e) => Err(PreflightError::TunUnusable {
            path: shown,
            why: describe_io_error(&e),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_are_read_from_the_status_text() {
        let root = "Name:\tweft\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_caps(root), Some(0x1ff_ffff_ffff));
        assert_eq!(effective_caps("CapEff:\t0000000000000000\n"), Some(0));
        assert_eq!(effective_caps("Name:\tweft\n"), None);
        assert_eq!(
            effective_uid("Uid:\t1000\t65534\t65534\t65534\n"),
            Some(65534)
        );
    }

    #[test]
    fn a_missing_tun_device_says_how_to_get_one() {
        let tmp = tempfile::tempdir().unwrap();
        let e = check_tun(&tmp.path().join("tun")).unwrap_err().to_string();
        assert!(
            e.contains("does not exist") && e.contains("modprobe tun"),
            "{e}"
        );
    }
}
