//! The tokio I/O shell around the sans-IO [`crate::core`].
//!
//! One task owns the [`crate::core::Router`] and is the only place protocol
//! decisions happen ([`daemon`]). Everything else here moves bytes or files:
//! per-connection reader and writer tasks, dial tasks, the listener, the
//! control API ([`http_api`]) on its unix socket ([`api_socket`]) and its
//! client ([`client`]), the
//! router's home directory ([`home`]), and the host's side of the data
//! plane: the bridge and TAP device ([`host`]) and the network namespaces
//! attached to the bridge ([`attach`]).

pub mod api_socket;
pub mod attach;
pub mod client;
pub mod crypto;
pub mod daemon;
pub mod dataplane;
pub mod expose;
pub mod home;
pub mod host;
pub mod http_api;
pub mod locks;
pub mod metrics;
pub mod netlink;
pub mod preflight;
pub mod sockets;
pub mod status_page;
pub mod udp_io;
pub mod watchdog;

use std::io;

/// A short, human description of a socket error, without the
/// "(os error 111)" noise, for logs, error messages and `weft status`.
pub fn describe_io_error(e: &io::Error) -> String {
    use io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connection refused".into(),
        K::ConnectionReset => "connection reset by peer".into(),
        K::ConnectionAborted => "connection aborted".into(),
        K::BrokenPipe => "connection closed by peer while sending".into(),
        K::TimedOut => "timed out".into(),
        K::HostUnreachable => "host unreachable".into(),
        K::NetworkUnreachable => "network unreachable".into(),
        K::AddrNotAvailable => "address not available".into(),
        _ => {
            let text = e.to_string();
            match text.find(" (os error") {
                Some(i) => text[..i].to_owned(),
                None => text,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_read_like_sentences() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(describe_io_error(&refused), "connection refused");
        let raw = io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(describe_io_error(&raw), "No such file or directory");
    }
}
