//! Addresses: the underlay address of a peer as it travels in gossip, and the
//! `PEER[:PORT]` targets a user types.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Default TCP (control) port, the same as weave's so firewall rules carry over.
pub const DEFAULT_PORT: u16 = 6783;

/// An underlay socket address on the wire.
///
/// Spelled out instead of using serde's `SocketAddr` impl so the layout is
/// ours to document: variant 0 is IPv4 (4 bytes), 1 is IPv6 (16 bytes), then
/// the port as a postcard varint.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum WireAddr {
    V4([u8; 4], u16),
    V6([u8; 16], u16),
}

impl From<SocketAddr> for WireAddr {
    fn from(addr: SocketAddr) -> Self {
        match addr.ip() {
            IpAddr::V4(ip) => WireAddr::V4(ip.octets(), addr.port()),
            IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
                Some(v4) => WireAddr::V4(v4.octets(), addr.port()),
                None => WireAddr::V6(ip.octets(), addr.port()),
            },
        }
    }
}

impl From<WireAddr> for SocketAddr {
    fn from(addr: WireAddr) -> Self {
        match addr {
            WireAddr::V4(ip, port) => SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port),
            WireAddr::V6(ip, port) => SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port),
        }
    }
}

impl fmt::Display for WireAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        SocketAddr::from(*self).fmt(f)
    }
}

impl fmt::Debug for WireAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A connection target as a user writes it: `HOST`, `HOST:PORT`, `IPV6` or
/// `[IPV6]:PORT`. The host may be a DNS name; the I/O shell resolves it at
/// every dial so a moved host is followed.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PeerAddr {
    pub host: String,
    pub port: u16,
}

impl PeerAddr {
    pub fn from_socket(addr: SocketAddr) -> Self {
        let addr = SocketAddr::from(WireAddr::from(addr));
        Self {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }

    /// The socket address, if the host is an IP literal.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        let ip: IpAddr = self.host.parse().ok()?;
        Some(SocketAddr::new(ip, self.port))
    }

    /// Parses `s`, using `default_port` when none is given.
    pub fn parse_with_port(s: &str, default_port: u16) -> Result<Self, AddrError> {
        let bad = |why: &'static str| AddrError::Malformed {
            input: s.to_owned(),
            why,
        };
        let s = s.trim();
        if s.is_empty() {
            return Err(bad("it is empty"));
        }
        if let Ok(addr) = s.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return Err(bad("port 0 cannot be dialled"));
            }
            return Ok(Self::from_socket(addr));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Self::from_socket(SocketAddr::new(ip, default_port)));
        }
        if s.starts_with('[') {
            return Err(bad(
                "an IPv6 address in brackets must be valid and followed by :PORT",
            ));
        }
        let (host, port) = match s.rsplit_once(':') {
            Some((host, port)) => {
                let port: u16 = port
                    .parse()
                    .map_err(|_| bad("the port must be a number from 1 to 65535"))?;
                if port == 0 {
                    return Err(bad("port 0 cannot be dialled"));
                }
                (host, port)
            }
            None => (s, default_port),
        };
        let valid_label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                && !l.starts_with('-')
        };
        if host.len() > 253 || !host.split('.').all(valid_label) {
            return Err(bad("the host must be an IP address or a DNS name"));
        }
        Ok(Self {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl FromStr for PeerAddr {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_with_port(s, DEFAULT_PORT)
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddrError {
    #[error(
        "invalid peer address {input:?}: {why}; write HOST, HOST:PORT or [IPV6]:PORT, e.g. 192.0.2.7:6783"
    )]
    Malformed { input: String, why: &'static str },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_users_write() {
        let p = |s: &str| s.parse::<PeerAddr>().map(|a| a.to_string());
        assert_eq!(p("192.0.2.7"), Ok("192.0.2.7:6783".into()));
        assert_eq!(p("192.0.2.7:7000"), Ok("192.0.2.7:7000".into()));
        assert_eq!(p("2001:db8::1"), Ok("[2001:db8::1]:6783".into()));
        assert_eq!(p("[2001:db8::1]:7000"), Ok("[2001:db8::1]:7000".into()));
        assert_eq!(p("Host-B.example"), Ok("host-b.example:6783".into()));
        assert_eq!(p("host-b:99"), Ok("host-b:99".into()));
        assert_eq!(p("[::ffff:192.0.2.7]:1"), Ok("192.0.2.7:1".into()));
    }

    #[test]
    fn rejects_malformed_addresses() {
        for bad in [
            "",
            "host:",
            "host:0",
            "host:70000",
            "host:port",
            "[::1",
            "[zz]:1",
            "a b",
            "-bad",
            "a..b",
            "1.2.3.4:0",
        ] {
            assert!(
                bad.parse::<PeerAddr>().is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn wire_addr_round_trips_and_unmaps_v4() {
        let a: SocketAddr = "[::ffff:192.0.2.1]:6783".parse().unwrap();
        assert_eq!(WireAddr::from(a), WireAddr::V4([192, 0, 2, 1], 6783));
        let b: SocketAddr = "[2001:db8::1]:5".parse().unwrap();
        assert_eq!(SocketAddr::from(WireAddr::from(b)), b);
    }

    #[test]
    fn wire_addr_bytes_are_as_documented() {
        let bytes = crate::core::wire::encode(&WireAddr::V4([192, 0, 2, 1], 6783));
        // variant 0, four address bytes, port 6783 as varint (0xff 0x34)
        assert_eq!(bytes, [0x00, 192, 0, 2, 1, 0xff, 0x34]);
    }
}
