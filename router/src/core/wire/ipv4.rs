//! Just enough IPv4 for the overlay's MTU handling (RFC 791, RFC 792,
//! RFC 1191): recognise a packet with Don't Fragment set, answer it with an
//! ICMP "fragmentation needed" so the sender's TCP lowers its MSS, and split
//! a packet without DF into fragments instead of dropping it.
//!
//! ```text
//! offset  size  field (IPv4 header, RFC 791 §3.1)
//! 0       1     version (4) << 4 | IHL (header length in 32-bit words, >= 5)
//! 2       2     total length
//! 4       2     identification
//! 6       2     flags (0x4000 DF, 0x2000 MF) | fragment offset (8-byte units)
//! 8       1     TTL
//! 9       1     protocol
//! 10      2     header checksum
//! 12      4     source address
//! 16      4     destination address
//! 20      ..    options (IHL*4 - 20 bytes), then payload
//! ```

use super::ethernet::{ETHERTYPE_IPV4, Frame, HEADER_LEN as ETH_LEN};

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;
const PROTO_ICMP: u8 = 1;
/// RFC 791: every host must accept 576-byte datagrams; we never advertise
/// or fragment below this.
pub const MIN_MTU: usize = 576;

/// A checked view of an IPv4 packet.
#[derive(Clone, Copy, Debug)]
pub struct Packet<'a> {
    bytes: &'a [u8],
    header_len: usize,
    total_len: usize,
}

impl<'a> Packet<'a> {
    /// Validates version, header length and total length against the
    /// buffer. Trailing bytes (Ethernet padding) are ignored.
    pub fn new_checked(bytes: &'a [u8]) -> Option<Self> {
        if bytes.len() < 20 || bytes[0] >> 4 != 4 {
            return None;
        }
        let header_len = usize::from(bytes[0] & 0x0f) * 4;
        let total_len = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
        if header_len < 20 || total_len < header_len || total_len > bytes.len() {
            return None;
        }
        Some(Self {
            bytes,
            header_len,
            total_len,
        })
    }

    fn flags_offset(&self) -> u16 {
        u16::from_be_bytes([self.bytes[6], self.bytes[7]])
    }

    pub fn dont_fragment(&self) -> bool {
        self.flags_offset() & FLAG_DF != 0
    }

    pub fn total_len(&self) -> usize {
        self.total_len
    }

    pub fn protocol(&self) -> u8 {
        self.bytes[9]
    }
}

/// RFC 1071 Internet checksum.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn set_header_checksum(header: &mut [u8]) {
    header[10] = 0;
    header[11] = 0;
    let c = checksum(header);
    header[10..12].copy_from_slice(&c.to_be_bytes());
}

/// For an Ethernet frame carrying IPv4 with DF set, builds the ICMP
/// "fragmentation needed" (type 3 code 4) frame to write back into the TAP,
/// advertising `mtu` as the next-hop MTU. `None` if the frame is not such a
/// packet, or is itself ICMP (never answer ICMP errors with ICMP).
pub fn frag_needed_reply(frame: &[u8], mtu: u16) -> Option<Vec<u8>> {
    let eth = Frame::new_checked(frame)?;
    if eth.ethertype() != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = Packet::new_checked(eth.payload())?;
    if !ip.dont_fragment() || ip.protocol() == PROTO_ICMP {
        return None;
    }
    // RFC 792: the original header plus the first 64 bits of its data.
    let quoted = &ip.bytes[..(ip.header_len + 8).min(ip.total_len)];
    let icmp_len = 8 + quoted.len();
    let total = 20 + icmp_len;
    let mut out = Vec::with_capacity(ETH_LEN + total);
    out.extend_from_slice(&eth.src().0);
    out.extend_from_slice(&eth.dst().0);
    out.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let mut ip_header = [0u8; 20];
    ip_header[0] = 0x45;
    ip_header[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip_header[8] = 64;
    ip_header[9] = PROTO_ICMP;
    ip_header[12..16].copy_from_slice(&ip.bytes[16..20]);
    ip_header[16..20].copy_from_slice(&ip.bytes[12..16]);
    set_header_checksum(&mut ip_header);
    out.extend_from_slice(&ip_header);
    let icmp_start = out.len();
    out.extend_from_slice(&[3, 4, 0, 0, 0, 0]);
    out.extend_from_slice(&mtu.to_be_bytes());
    out.extend_from_slice(quoted);
    let c = checksum(&out[icmp_start..]);
    out[icmp_start + 2..icmp_start + 4].copy_from_slice(&c.to_be_bytes());
    Some(out)
}

/// Splits an Ethernet frame carrying an IPv4 packet without DF into frames
/// whose IP packets are at most `mtu` bytes, calling `emit` for each.
/// Returns false, emitting nothing, if the frame is not such a packet or
/// `mtu` is too small to make progress.
pub fn fragment(frame: &[u8], mtu: usize, mut emit: impl FnMut(&[u8])) -> bool {
    let Some(eth) = Frame::new_checked(frame) else {
        return false;
    };
    if eth.ethertype() != ETHERTYPE_IPV4 {
        return false;
    }
    let Some(ip) = Packet::new_checked(eth.payload()) else {
        return false;
    };
    if ip.dont_fragment() {
        return false;
    }
    let header = &ip.bytes[..ip.header_len];
    let payload = &ip.bytes[ip.header_len..ip.total_len];
    // Later fragments carry only options with the "copied" bit (RFC 791).
    let later_header = header_for_later_fragments(header);
    let orig = ip.flags_offset();
    let base_offset = usize::from(orig & OFFSET_MASK) * 8;
    let orig_mf = orig & FLAG_MF != 0;
    let mut buf = Vec::with_capacity(ETH_LEN + mtu);
    let mut pos = 0;
    while pos < payload.len() {
        let hdr: &[u8] = if pos == 0 { header } else { &later_header };
        let room = mtu.saturating_sub(hdr.len()) / 8 * 8;
        if room == 0 {
            return false;
        }
        let end = (pos + room).min(payload.len());
        let last = end == payload.len();
        buf.clear();
        buf.extend_from_slice(&frame[..ETH_LEN]);
        let h_start = buf.len();
        buf.extend_from_slice(hdr);
        buf.extend_from_slice(&payload[pos..end]);
        let total = (hdr.len() + end - pos) as u16;
        let offset = ((base_offset + pos) / 8) as u16 & OFFSET_MASK;
        let flags = if !last || orig_mf { FLAG_MF } else { 0 };
        let h = &mut buf[h_start..h_start + hdr.len()];
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h[6..8].copy_from_slice(&(flags | offset).to_be_bytes());
        set_header_checksum(h);
        emit(&buf);
        pos = end;
    }
    true
}

fn header_for_later_fragments(header: &[u8]) -> Vec<u8> {
    let mut out = header[..20].to_vec();
    let mut opts = &header[20..];
    while let Some(&kind) = opts.first() {
        let len = match kind {
            0 => break,
            1 => 1,
            _ => match opts.get(1) {
                Some(&l) if usize::from(l) >= 2 && usize::from(l) <= opts.len() => usize::from(l),
                _ => break,
            },
        };
        if kind & 0x80 != 0 {
            out.extend_from_slice(&opts[..len]);
        }
        opts = &opts[len..];
    }
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    out[0] = 0x40 | (out.len() / 4) as u8;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet frame with an IPv4/UDP-ish packet of `payload_len` bytes.
    fn frame(payload_len: usize, df: bool) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
        let total = 20 + payload_len;
        let mut h = [0u8; 20];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        h[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        if df {
            h[6] = 0x40;
        }
        h[8] = 64;
        h[9] = 17;
        h[12..16].copy_from_slice(&[10, 0, 0, 1]);
        h[16..20].copy_from_slice(&[10, 0, 0, 2]);
        set_header_checksum(&mut h);
        f.extend_from_slice(&h);
        f.extend((0..payload_len).map(|i| i as u8));
        f
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 §3 example bytes sum to 0xddf2 -> checksum 0x220d
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
    }

    #[test]
    fn frag_needed_quotes_the_packet_and_swaps_addresses() {
        let f = frame(1400, true);
        let reply = frag_needed_reply(&f, 1300).unwrap();
        assert_eq!(&reply[..6], &f[6..12], "back to the sender's MAC");
        let ip = &reply[14..];
        assert_eq!(checksum(&ip[..20]), 0, "valid IP header checksum");
        assert_eq!(&ip[12..16], &[10, 0, 0, 2]);
        assert_eq!(&ip[16..20], &[10, 0, 0, 1]);
        let icmp = &ip[20..];
        assert_eq!(&icmp[..2], &[3, 4]);
        assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1300);
        assert_eq!(checksum(icmp), 0, "valid ICMP checksum");
        assert_eq!(&icmp[8..], &f[14..14 + 28], "original header + 8 bytes");
        assert!(
            frag_needed_reply(&frame(1400, false), 1300).is_none(),
            "no DF, no ICMP"
        );
    }

    #[test]
    fn fragments_reassemble_to_the_original() {
        let f = frame(3000, false);
        let mut frags = Vec::new();
        assert!(fragment(&f, 1400, |x| frags.push(x.to_vec())));
        assert_eq!(frags.len(), 3);
        let mut payload = Vec::new();
        for (i, fr) in frags.iter().enumerate() {
            let ip = Packet::new_checked(&fr[14..]).unwrap();
            assert!(ip.total_len() <= 1400);
            assert_eq!(checksum(&fr[14..34]), 0);
            let fo = ip.flags_offset();
            assert_eq!(fo & FLAG_MF != 0, i < 2);
            assert_eq!(usize::from(fo & OFFSET_MASK) * 8, payload.len());
            assert_eq!(&fr[18..20], &[0x12, 0x34], "same identification");
            payload.extend_from_slice(&fr[34..14 + ip.total_len()]);
        }
        assert_eq!(payload, f[34..].to_vec());
        assert!(
            !fragment(&frame(3000, true), 1400, |_| {}),
            "DF packets are not fragmented"
        );
        assert!(!fragment(&f, 20, |_| {}), "no room for data");
    }

    #[test]
    fn malformed_packets_are_ignored() {
        let mut f = frame(100, true);
        f[16] = 0xff; // total length beyond the buffer
        assert!(frag_needed_reply(&f, 1300).is_none());
        assert!(!fragment(&f, 60, |_| {}));
        assert!(frag_needed_reply(&f[..20], 1300).is_none());
    }
}
