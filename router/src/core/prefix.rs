//! IP prefixes: an address with a prefix length, IPv4 or IPv6.
//!
//! One type serves every use in weft: trusted subnets, the addresses
//! `weft attach` gives a container and `weft expose` gives the host, and
//! the ranges and addresses IPAM and DNS deal in. It is `ipnet`'s
//! [`IpNet`], which keeps the host part (`10.32.0.1/12` is an address in a
//! /12, not the /12 itself) and prints and serialises as that text; the
//! parsers here add the checks and the errors a person can act on.

use std::net::IpAddr;

pub use ipnet::IpNet;

/// Why a text is not the prefix it was meant to be.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// Not usable as an interface's address.
    #[error("invalid address {text:?}: {why}")]
    BadHost { text: String, why: String },
    #[error("{text:?} is not a subnet; write it like 10.0.0.0/8 or fd00::/8")]
    BadSubnet { text: String },
    #[error("{text:?}: the prefix length must be at most {max}")]
    PrefixTooLong { text: String, max: u8 },
}

/// Parses a subnet such as `10.0.0.0/8` (host bits may be set: only the
/// prefix counts for [`IpNet::contains`]).
pub fn parse_subnet(s: &str) -> Result<IpNet, PrefixError> {
    let bad = || PrefixError::BadSubnet { text: s.to_owned() };
    let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    IpNet::new(addr, prefix).map_err(|_| PrefixError::PrefixTooLong {
        text: s.to_owned(),
        max: if addr.is_ipv4() { 32 } else { 128 },
    })
}

/// Parses a host address for an interface, such as `10.32.0.1/12`: the
/// network and broadcast addresses of an IPv4 subnet, and unspecified,
/// loopback and multicast addresses, are refused.
pub fn parse_host(s: &str) -> Result<IpNet, PrefixError> {
    let bad = |why: String| PrefixError::BadHost {
        text: s.to_owned(),
        why,
    };
    let syntax = |why: String| {
        bad(format!(
            "{why}; use CIDR notation like 10.32.0.1/12 or fd00::1/64"
        ))
    };
    let (addr, prefix) = s
        .split_once('/')
        .ok_or_else(|| syntax("the prefix length is missing".into()))?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| syntax(format!("{addr:?} is not an IP address")))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= max).ok_or_else(|| {
        syntax(format!(
            "the prefix length must be a number from 0 to {max}"
        ))
    })?;
    if addr.is_unspecified() || addr.is_loopback() || addr.is_multicast() {
        return Err(bad(format!(
            "{addr} is not a host address (unspecified, loopback or multicast)"
        )));
    }
    let net = IpNet::new(addr, prefix).map_err(|e| syntax(e.to_string()))?;
    if addr.is_ipv4() && prefix <= 30 {
        if addr == net.network() {
            return Err(bad(format!(
                "{addr} is the network address of {addr}/{prefix}; give a host address in it"
            )));
        }
        if addr == net.broadcast() {
            return Err(bad(format!(
                "{addr} is the broadcast address of its /{prefix} subnet; give a host address in it"
            )));
        }
    }
    Ok(net)
}

/// Parses every host address, or reports the first bad one.
pub fn parse_hosts<S: AsRef<str>>(texts: &[S]) -> Result<Vec<IpNet>, PrefixError> {
    texts.iter().map(|t| parse_host(t.as_ref())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn subnets_parse_and_contain() {
        let s = parse_subnet("10.1.0.0/16").unwrap();
        assert!(s.contains(&ip("10.1.200.3")));
        assert!(!s.contains(&ip("10.2.0.1")));
        assert!(!s.contains(&ip("::1")));
        let all = parse_subnet("0.0.0.0/0").unwrap();
        assert!(all.contains(&ip("192.0.2.1")));
        let v6 = parse_subnet("fd00::/8").unwrap();
        assert!(v6.contains(&ip("fd12::1")));
        assert_eq!(
            parse_subnet("10.0.0.0/33").unwrap_err().to_string(),
            "\"10.0.0.0/33\": the prefix length must be at most 32"
        );
        for text in ["10.0.0.0", "ten/8", "10.0.0.0/x", "10.0.0.0/"] {
            assert_eq!(
                parse_subnet(text).unwrap_err().to_string(),
                format!("{text:?} is not a subnet; write it like 10.0.0.0/8 or fd00::/8")
            );
        }
    }

    #[test]
    fn host_addresses_parse_and_print_back() {
        for text in [
            "10.32.0.1/12",
            "192.0.2.7/32",
            "10.0.0.0/31",
            "fd00::1/64",
            "2001:db8::7/128",
        ] {
            let net = parse_host(text).unwrap();
            assert_eq!(net.to_string(), text);
            assert_eq!(serde_json::to_string(&net).unwrap(), format!("\"{text}\""));
        }
        let net = parse_host("10.32.0.1/12").unwrap();
        assert_eq!(net.addr(), ip("10.32.0.1"));
        assert_eq!(net.prefix_len(), 12);
    }

    #[test]
    fn bad_host_addresses_are_explained() {
        for (text, why) in [
            ("10.32.0.1", "prefix length is missing"),
            ("10.32.0.1/33", "from 0 to 32"),
            ("fd00::1/129", "from 0 to 128"),
            ("10.32.0.1/x", "from 0 to 32"),
            ("ten/8", "\"ten\" is not an IP address"),
            ("10.32.0.0/12", "network address"),
            ("10.47.255.255/12", "broadcast address"),
            ("0.0.0.0/0", "not a host address"),
            ("127.0.0.1/8", "not a host address"),
            ("ff02::1/64", "not a host address"),
        ] {
            let e = parse_host(text).unwrap_err().to_string();
            assert!(e.starts_with(&format!("invalid address {text:?}: ")), "{e}");
            assert!(e.contains(why), "{text}: {e}");
        }
        assert_eq!(
            parse_host("10.32.0.1").unwrap_err().to_string(),
            "invalid address \"10.32.0.1\": the prefix length is missing; use CIDR notation like 10.32.0.1/12 or fd00::1/64"
        );
        assert_eq!(
            parse_hosts(&["10.32.0.1/12", "10.32.0.0/12"])
                .unwrap_err()
                .to_string(),
            "invalid address \"10.32.0.0/12\": 10.32.0.0 is the network address of 10.32.0.0/12; give a host address in it"
        );
    }
}
