//! Ethernet II frames as read from and written to the TAP device.
//!
//! ```text
//! offset  size  field
//! 0       6     destination MAC
//! 6       6     source MAC
//! 12      2     EtherType (big-endian; 0x8100 for a VLAN tag, not interpreted)
//! 14      ..    payload
//! ```

use std::fmt;

/// Shortest frame we accept: a header and nothing else.
pub const HEADER_LEN: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;

/// A MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub const BROADCAST: Mac = Mac([0xff; 6]);

    /// Group addresses (broadcast included) have the low bit of the first
    /// octet set.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// IEEE 802.1D reserved range 01:80:c2:00:00:0X: STP BPDUs, LACP,
    /// pause frames. Bridges never forward these, so neither do we.
    pub fn is_link_local_reserved(&self) -> bool {
        self.0[..5] == [0x01, 0x80, 0xc2, 0x00, 0x00] && self.0[5] <= 0x0f
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A checked view of an Ethernet frame.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    bytes: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Returns `None` for a buffer shorter than an Ethernet header.
    pub fn new_checked(bytes: &'a [u8]) -> Option<Self> {
        (bytes.len() >= HEADER_LEN).then_some(Self { bytes })
    }

    pub fn dst(&self) -> Mac {
        Mac(self.six(0))
    }

    pub fn src(&self) -> Mac {
        Mac(self.six(6))
    }

    pub fn ethertype(&self) -> u16 {
        u16::from_be_bytes([self.bytes[12], self.bytes[13]])
    }

    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[HEADER_LEN..]
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    fn six(&self, at: usize) -> [u8; 6] {
        let mut m = [0u8; 6];
        m.copy_from_slice(&self.bytes[at..at + 6]);
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_header_fields() {
        let bytes = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06,
            0xaa,
        ];
        let f = Frame::new_checked(&bytes).unwrap();
        assert_eq!(f.dst(), Mac::BROADCAST);
        assert_eq!(f.src().to_string(), "02:00:00:00:00:01");
        assert_eq!(f.ethertype(), ETHERTYPE_ARP);
        assert_eq!(f.payload(), &[0xaa]);
        assert!(Frame::new_checked(&bytes[..13]).is_none());
    }

    #[test]
    fn classifies_addresses() {
        assert!(Mac::BROADCAST.is_multicast());
        assert!(Mac([0x01, 0x00, 0x5e, 0, 0, 1]).is_multicast());
        assert!(!Mac([0x02, 0, 0, 0, 0, 1]).is_multicast());
        assert!(Mac([0x01, 0x80, 0xc2, 0, 0, 0]).is_link_local_reserved());
        assert!(!Mac([0x01, 0x80, 0xc2, 0, 0, 0x10]).is_link_local_reserved());
    }
}
