//! The virtio-net header that prefixes every packet on a TAP device opened
//! with `IFF_VNET_HDR`, and the checksum completion it asks for.
//!
//! With the header the kernel can hand weft a TCP "super-segment" of up to
//! 64 KB (TSO) instead of 45 MTU-sized frames, and take one back, so the
//! per-frame cost of a userspace router is paid once per 64 KB. The layout
//! is the legacy (non-mergeable) `struct virtio_net_hdr` of
//! `include/uapi/linux/virtio_net.h`, in native byte order (the TAP uses the
//! host's endianness unless `TUNSETVNETLE/BE` says otherwise; every platform
//! weft runs on is little-endian, and the fields are stored little-endian
//! here so the same bytes mean the same thing on the wire between routers):
//!
//! ```text
//! offset  size  field
//! 0       1     flags: bit 0 NEEDS_CSUM, bit 1 DATA_VALID
//! 1       1     gso_type: 0 none, 1 TCPv4, 4 TCPv6, 5 UDP_L4;
//!               bit 7 ECN
//! 2       2     hdr_len: bytes of headers before the payload (Ethernet+IP+TCP)
//! 4       2     gso_size: payload bytes per segment
//! 6       2     csum_start: where checksumming starts, from the frame start
//! 8       2     csum_offset: where the checksum goes, from csum_start
//! ```
//!
//! A peer relays these headers to another router's TAP, so they are input
//! from the network: [`VnetHeader::parse`] accepts only the combinations
//! weft itself produces and the kernel documents.

use super::WireError;

/// Bytes of the header on the TAP and inside a segmented frame.
pub const LEN: usize = 10;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start + csum_offset`
/// holds only the pseudo-header sum; the rest is still to be added.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksum was already verified.
pub const F_DATA_VALID: u8 = 2;
/// `VIRTIO_NET_HDR_GSO_ECN`, or-ed into the GSO type.
pub const GSO_ECN: u8 = 0x80;

/// What kind of super-segment the frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum GsoType {
    None = 0,
    TcpV4 = 1,
    UdpL4 = 5,
    TcpV6 = 4,
}

/// A parsed virtio-net header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VnetHeader {
    pub flags: u8,
    pub gso_type: GsoType,
    pub ecn: bool,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHeader {
    /// A header that asks nothing of the kernel: a plain, complete frame.
    pub const PLAIN: [u8; LEN] = [0; LEN];

    /// Parses and checks the header that precedes a frame of `frame_len`
    /// bytes.
    pub fn parse(bytes: &[u8], frame_len: usize) -> Result<Self, WireError> {
        let malformed = |detail: String| WireError::Malformed {
            what: "virtio-net header",
            detail,
        };
        if bytes.len() < LEN {
            return Err(malformed(format!("{} bytes, need {LEN}", bytes.len())));
        }
        let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
        let flags = bytes[0];
        if flags & !(F_NEEDS_CSUM | F_DATA_VALID) != 0 {
            return Err(malformed(format!("unknown flags {flags:#04x}")));
        }
        let gso_type = match bytes[1] & !GSO_ECN {
            0 => GsoType::None,
            1 => GsoType::TcpV4,
            4 => GsoType::TcpV6,
            5 => GsoType::UdpL4,
            t => return Err(malformed(format!("unknown GSO type {t}"))),
        };
        let h = Self {
            flags,
            gso_type,
            ecn: bytes[1] & GSO_ECN != 0,
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        };
        if h.flags & F_NEEDS_CSUM != 0
            && usize::from(h.csum_start) + usize::from(h.csum_offset) + 2 > frame_len
        {
            return Err(malformed(format!(
                "checksum at {}+{} lies outside a {frame_len}-byte frame",
                h.csum_start, h.csum_offset
            )));
        }
        if h.gso_type != GsoType::None {
            if h.gso_size == 0 {
                return Err(malformed("GSO frame with segment size 0".into()));
            }
            if h.flags & F_NEEDS_CSUM == 0 {
                // The kernel rejects GSO without a partial checksum too.
                return Err(malformed("GSO frame without NEEDS_CSUM".into()));
            }
        }
        Ok(h)
    }

    /// Whether the frame is a super-segment the kernel will split.
    pub fn is_gso(&self) -> bool {
        self.gso_type != GsoType::None
    }
}

/// Completes a partial checksum in place, as the kernel would for
/// `NEEDS_CSUM`: the ones'-complement sum of `frame[csum_start..]` (whose
/// checksum field already holds the pseudo-header sum) is stored at
/// `csum_start + csum_offset`. Returns false if the offsets do not fit.
pub fn complete_checksum(frame: &mut [u8], csum_start: u16, csum_offset: u16) -> bool {
    let start = usize::from(csum_start);
    let at = start + usize::from(csum_offset);
    if at + 2 > frame.len() {
        return false;
    }
    let sum = match super::ipv4::checksum(&frame[start..]) {
        // UDP reserves 0 for "no checksum"; 0xffff is the same value in
        // ones'-complement arithmetic and valid for TCP too (RFC 768).
        0 => 0xffff,
        s => s,
    };
    frame[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_tso_header() {
        // NEEDS_CSUM, TCPv4, hdr_len 66, gso_size 1356, csum 34+16
        let b = [1, 1, 66, 0, 0x4c, 0x05, 34, 0, 16, 0];
        let h = VnetHeader::parse(&b, 9000).unwrap();
        assert_eq!(
            h,
            VnetHeader {
                flags: F_NEEDS_CSUM,
                gso_type: GsoType::TcpV4,
                ecn: false,
                hdr_len: 66,
                gso_size: 1356,
                csum_start: 34,
                csum_offset: 16,
            }
        );
        assert!(h.is_gso());
        assert!(!VnetHeader::parse(&VnetHeader::PLAIN, 60).unwrap().is_gso());
    }

    #[test]
    fn rejects_what_weft_never_sends() {
        let bad: [[u8; LEN]; 5] = [
            [4, 0, 0, 0, 0, 0, 0, 0, 0, 0],     // unknown flag
            [1, 3, 0, 0, 100, 0, 0, 0, 0, 0],   // GSO type 3 (UDP UFO)
            [1, 1, 0, 0, 0, 0, 34, 0, 16, 0],   // gso_size 0
            [0, 1, 0, 0, 100, 0, 0, 0, 0, 0],   // GSO without NEEDS_CSUM
            [1, 0, 0, 0, 0, 0, 0xff, 0, 16, 0], // checksum beyond the frame
        ];
        for b in bad {
            assert!(VnetHeader::parse(&b, 100).is_err(), "{b:?}");
        }
        assert!(VnetHeader::parse(&[0; 9], 100).is_err());
    }

    #[test]
    fn completes_a_udp_checksum() {
        // IPv4 UDP 10.0.0.1:1 -> 10.0.0.2:2, payload "hi". The partial sum
        // the kernel leaves is the pseudo-header sum, not complemented.
        let mut f = vec![0u8; 14];
        f.extend_from_slice(&[
            0x45, 0, 0, 30, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ]);
        f.extend_from_slice(&[0, 1, 0, 2, 0, 10, 0, 0, b'h', b'i']);
        let pseudo: u32 = 0x0a00 + 0x0001 + 0x0a00 + 0x0002 + 17 + 10;
        let folded = ((pseudo & 0xffff) + (pseudo >> 16)) as u16;
        f[40..42].copy_from_slice(&folded.to_be_bytes());
        assert!(complete_checksum(&mut f, 34, 6));
        // A correct UDP checksum makes the sum over pseudo-header, header
        // and data come out as 0xffff, i.e. its complement as 0.
        let mut check = Vec::new();
        check.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2, 0, 17, 0, 10]);
        check.extend_from_slice(&f[34..]);
        assert_eq!(super::super::ipv4::checksum(&check), 0);
        assert!(!complete_checksum(&mut f, 40, 10));
    }
}
