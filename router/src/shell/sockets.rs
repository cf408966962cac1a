//! Listening sockets and per-connection socket options.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crate::shell::describe_io_error;
use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};

/// Idle time before the kernel starts keepalive probes. Heartbeats detect a
/// dead peer much sooner; keepalive only reaps sockets whose peer vanished
/// while we had nothing to say (for example during a handshake).
const KEEPALIVE_TIME: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 3;

/// Pending-connection queue length; the kernel caps it at `somaxconn`.
const BACKLOG: i32 = 1024;

/// What a listener serves, so a bind error can name the flag to change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// The mesh (control) port peers connect to.
    Mesh,
    /// The read-only status listener.
    Status,
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("TCP port {port} is already in use; stop the other program or pick another --port")]
    MeshPortInUse { port: u16 },
    #[error(
        "UDP port {port} (the data plane uses the same number as the TCP port) is already in use; stop the other program or pick another --port"
    )]
    UdpPortInUse { port: u16 },
    #[error(
        "status address {addr} is already in use (is another weft router running?); stop the other program or pick another --status-addr"
    )]
    StatusAddrInUse { addr: SocketAddr },
    #[error(
        "cannot listen on {addr}: permission denied; ports below 1024 need root or CAP_NET_BIND_SERVICE"
    )]
    PermissionDenied { addr: SocketAddr },
    #[error("cannot listen on {addr}: this host has no such address")]
    AddrNotAvailable { addr: SocketAddr },
    #[error("cannot listen on {addr}: {}", describe_io_error(.error))]
    Other { addr: SocketAddr, error: io::Error },
}

/// Binds the data-plane UDP socket on all addresses.
pub fn bind_udp(port: u16) -> Result<std::net::UdpSocket, BindError> {
    let addr = SocketAddr::from(([0, 0, 0, 0], port));
    crate::shell::udp_io::bind(port).map_err(|error| match error.kind() {
        io::ErrorKind::AddrInUse => BindError::UdpPortInUse { port },
        io::ErrorKind::PermissionDenied => BindError::PermissionDenied { addr },
        _ => BindError::Other { addr, error },
    })
}

/// Binds a TCP listener with `SO_REUSEADDR`, so a restarted router can bind
/// at once even while connections of its previous run sit in TIME_WAIT.
///
/// Returns a std listener (non-blocking); convert it with
/// `tokio::net::TcpListener::from_std` inside a runtime.
pub fn bind(addr: SocketAddr, service: Service) -> Result<std::net::TcpListener, BindError> {
    let classify = |error: io::Error| match error.kind() {
        io::ErrorKind::AddrInUse => match service {
            Service::Mesh => BindError::MeshPortInUse { port: addr.port() },
            Service::Status => BindError::StatusAddrInUse { addr },
        },
        io::ErrorKind::PermissionDenied => BindError::PermissionDenied { addr },
        io::ErrorKind::AddrNotAvailable => BindError::AddrNotAvailable { addr },
        _ => BindError::Other { addr, error },
    };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(classify)?;
    socket.set_reuse_address(true).map_err(classify)?;
    socket.set_nonblocking(true).map_err(classify)?;
    socket.bind(&addr.into()).map_err(classify)?;
    socket.listen(BACKLOG).map_err(classify)?;
    Ok(socket.into())
}

/// Options every mesh connection gets, inbound or outbound: no Nagle delay
/// (control messages are small and latency-sensitive) and TCP keepalive.
pub fn configure_stream(stream: &tokio::net::TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_TIME)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    SockRef::from(stream).set_tcp_keepalive(&keepalive)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_mesh_port_names_the_flag_to_change() {
        let first = bind("127.0.0.1:0".parse().unwrap(), Service::Mesh).unwrap();
        let addr = first.local_addr().unwrap();
        let err = bind(addr, Service::Mesh).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "TCP port {} is already in use; stop the other program or pick another --port",
                addr.port()
            )
        );
        let err = bind(addr, Service::Status).unwrap_err();
        assert!(err.to_string().contains("--status-addr"), "{err}");
    }
}
