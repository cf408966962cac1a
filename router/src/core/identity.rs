//! Who a peer is: a stable name, a human nickname, and a per-incarnation UID.
//!
//! The name is what the mesh routes on and survives restarts (the shell
//! persists it in the router's home directory). The UID is drawn afresh each
//! time the router starts, so peers can tell a restarted router from the
//! ghost of its previous life that may still linger in gossip.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest nickname accepted, in bytes. Nicknames are for humans; a bound
/// keeps a hostile peer from bloating everyone's topology.
pub const MAX_NICKNAME_LEN: usize = 64;

/// A peer's stable 48-bit name, written like a MAC address (`7a:1f:00:9c:3e:01`).
///
/// Weave uses the same shape, which operators already recognise in logs.
///
/// Deserialising checks the 48-bit bound, so no message from the network
/// can carry a name that `Display` and the wire's six-byte fields cannot
/// represent.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PeerName(u64);

impl<'de> Deserialize<'de> for PeerName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = u64::deserialize(d)?;
        PeerName::from_u64(value).map_err(serde::de::Error::custom)
    }
}

impl PeerName {
    const MASK: u64 = 0xffff_ffff_ffff;

    /// A name from its 48-bit numeric value; higher bits are an error.
    pub fn from_u64(value: u64) -> Result<Self, IdentityError> {
        if value & !Self::MASK != 0 {
            return Err(IdentityError::NameOutOfRange(value));
        }
        Ok(Self(value))
    }

    /// A fresh random name with the locally-administered bit set and the
    /// multicast bit clear, so it can never be mistaken for a vendor MAC.
    pub fn random(rng: &mut impl rand::Rng) -> Self {
        let raw: u64 = rng.random::<u64>() & Self::MASK;
        Self((raw | 0x0200_0000_0000) & !0x0100_0000_0000)
    }

    /// A name from its six bytes on the wire (big-endian); always valid.
    pub fn from_bytes(b: [u8; 6]) -> Self {
        Self(b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
    }

    /// The six bytes written on the wire (big-endian).
    pub fn to_bytes(self) -> [u8; 6] {
        let b = self.0.to_be_bytes();
        [b[2], b[3], b[4], b[5], b[6], b[7]]
    }

    /// The numeric value (48 bits).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0.to_be_bytes();
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[2], b[3], b[4], b[5], b[6], b[7]
        )
    }
}

impl fmt::Debug for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for PeerName {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || IdentityError::BadName(s.to_owned());
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut value = 0u64;
        for part in parts {
            if part.is_empty() || part.len() > 2 {
                return Err(bad());
            }
            let byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
            value = (value << 8) | u64::from(byte);
        }
        Ok(Self(value))
    }
}

/// A random identifier of one incarnation of a peer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PeerUid(pub u64);

impl fmt::Display for PeerUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for PeerUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Identifies one TCP control connection. Each side proposes a random half
/// in its features; the connection's id is their XOR, so both sides log the
/// same number.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Everything that identifies the local router in this incarnation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub name: PeerName,
    pub nickname: String,
    pub uid: PeerUid,
}

/// Checks a nickname: non-empty, at most [`MAX_NICKNAME_LEN`] bytes, printable.
pub fn validate_nickname(nickname: &str) -> Result<(), IdentityError> {
    if nickname.is_empty()
        || nickname.len() > MAX_NICKNAME_LEN
        || nickname
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(IdentityError::BadNickname(nickname.to_owned()));
    }
    Ok(())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error(
        "invalid peer name {0:?}: expected six hex bytes separated by colons, like 7a:1f:00:9c:3e:01"
    )]
    BadName(String),
    #[error("peer name value {0:#x} does not fit in 48 bits")]
    NameOutOfRange(u64),
    #[error(
        "invalid nickname {0:?}: use 1 to 64 bytes without spaces or control characters (for example the host name)"
    )]
    BadNickname(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn name_round_trips_through_text() {
        let name: PeerName = "7a:1f:00:9c:3e:01".parse().unwrap();
        assert_eq!(name.as_u64(), 0x7a1f_009c_3e01);
        assert_eq!(name.to_string(), "7a:1f:00:9c:3e:01");
    }

    #[test]
    fn malformed_names_are_rejected() {
        for bad in [
            "",
            "7a:1f:00:9c:3e",
            "7a:1f:00:9c:3e:01:02",
            "7a:1f:00:9c:3e:zz",
            "7a::00:9c:3e:01",
            "123:1f:00:9c:3e:01",
        ] {
            assert!(bad.parse::<PeerName>().is_err(), "{bad:?} should not parse");
        }
        assert!(PeerName::from_u64(1 << 48).is_err());
    }

    #[test]
    fn random_names_are_local_unicast() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..100 {
            let n = PeerName::random(&mut rng).as_u64();
            assert_eq!(n >> 40 & 0x02, 0x02, "locally administered bit");
            assert_eq!(n >> 40 & 0x01, 0x00, "multicast bit");
        }
    }

    #[test]
    fn names_beyond_48_bits_do_not_deserialize() {
        let ok: PeerName =
            postcard::from_bytes(&postcard::to_stdvec(&0xffff_ffff_ffffu64).unwrap()).unwrap();
        assert_eq!(ok.as_u64(), 0xffff_ffff_ffff);
        let too_big = postcard::to_stdvec(&(1u64 << 48)).unwrap();
        assert!(postcard::from_bytes::<PeerName>(&too_big).is_err());
    }

    #[test]
    fn nicknames_are_bounded() {
        assert!(validate_nickname("host-1").is_ok());
        assert!(validate_nickname("").is_err());
        assert!(validate_nickname("a b").is_err());
        assert!(validate_nickname(&"x".repeat(65)).is_err());
    }
}
