//! The data plane's UDP datagrams (`wire/udp.rs`), and the IPv4 handling
//! (`wire/ipv4.rs`) applied to every Ethernet frame they carry.
//!
//! A header that parses re-emits the bytes it came from (but the reserved
//! byte, which is written as zero); a frames body that parses is rebuilt
//! byte for byte by `FramesBuilder`; body parsers round-trip with their
//! encoders. For each carried frame, an ICMP "fragmentation needed" reply
//! must be a well-formed IPv4/ICMP packet with valid checksums, and
//! fragmentation must produce valid packets no larger than the MTU whose
//! payloads concatenate to the original's. A segment body that parses lies
//! inside its frame; fed to the reassembler on its own, it can complete a
//! frame only if it is the whole frame, and a complete frame's virtio-net
//! header is checked as the receiving router would.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::time::Instant;
use weft_router::core::wire::ethernet::{ETHERTYPE_IPV4, Frame, HEADER_LEN as ETH_LEN};
use weft_router::core::wire::ipv4::{self, MIN_MTU, Packet};

use weft_router::core::reassembly::Reassembler;
use weft_router::core::wire::udp::{
    self, FramesBuilder, FramesIter, HEADER_LEN, Header, Kind, SegmentHeader,
};
use weft_router::core::wire::vnet::{self, VnetHeader};

fuzz_target!(|data: &[u8]| {
    let Ok(h) = Header::parse(data) else {
        return;
    };
    let mut canonical = data.to_vec();
    canonical[3] = 0;
    assert_eq!(h.to_bytes()[..], canonical[..HEADER_LEN]);
    let body = &data[HEADER_LEN..];
    match h.kind {
        Kind::Heartbeat => {
            if let (Ok((id, hears)), Some(dst)) = (udp::parse_heartbeat(body), h.dst) {
                let again = udp::heartbeat(h.src, dst, id, hears);
                assert_eq!(udp::parse_heartbeat(&again[HEADER_LEN..]), Ok((id, hears)));
            }
        }
        Kind::PmtuProbe => {
            if let (Ok(id), Some(dst)) = (udp::parse_pmtu_probe(body), h.dst) {
                let again = udp::pmtu_probe(h.src, dst, id, data.len());
                assert_eq!(again.len(), data.len().max(HEADER_LEN + 4));
                assert_eq!(udp::parse_pmtu_probe(&again[HEADER_LEN..]), Ok(id));
            }
        }
        Kind::PmtuAck => {
            if let (Ok((id, size)), Some(dst)) = (udp::parse_pmtu_ack(body), h.dst) {
                let again = udp::pmtu_ack(h.src, dst, id, size);
                assert_eq!(udp::parse_pmtu_ack(&again[HEADER_LEN..]), Ok((id, size)));
            }
        }
        Kind::Segment => {
            if let Ok((seg, piece)) = SegmentHeader::parse(body) {
                assert!(seg.offset as usize + piece.len() <= seg.total as usize);
                let mut r = Reassembler::new();
                let whole = r
                    .push(Instant::now(), h.src, seg, piece)
                    .map(<[u8]>::to_vec);
                assert_eq!(
                    whole.is_some(),
                    seg.offset == 0 && piece.len() == seg.total as usize
                );
                if let Some(blob) = whole {
                    let frame_len = blob.len() - vnet::LEN;
                    if let Ok(vh) = VnetHeader::parse(&blob, frame_len) {
                        let mut frame = blob[vnet::LEN..].to_vec();
                        if vh.flags & vnet::F_NEEDS_CSUM != 0 {
                            assert!(vnet::complete_checksum(
                                &mut frame,
                                vh.csum_start,
                                vh.csum_offset
                            ));
                        }
                    }
                }
            }
        }
        Kind::Frames => {
            let mut rebuilt = FramesBuilder::new(h, data.len());
            let mut valid = true;
            for frame in FramesIter::new(body) {
                let Ok(frame) = frame else {
                    valid = false;
                    break;
                };
                assert!(rebuilt.push(frame), "a parsed frame does not fit again");
                check_ipv4(frame);
            }
            if valid {
                assert_eq!(rebuilt.bytes(), &canonical[..]);
            }
        }
    }
});

fn check_ipv4(frame: &[u8]) {
    if let Some(reply) = ipv4::frag_needed_reply(frame, 1400) {
        let eth = Frame::new_checked(&reply).expect("reply is an Ethernet frame");
        assert_eq!(eth.ethertype(), ETHERTYPE_IPV4);
        let ip = Packet::new_checked(eth.payload()).expect("reply is IPv4");
        assert_eq!(ETH_LEN + ip.total_len(), reply.len());
        assert_eq!(ip.protocol(), 1);
        let packet = &eth.payload()[..ip.total_len()];
        assert_eq!(ipv4::checksum(&packet[..20]), 0, "IP header checksum");
        assert_eq!(ipv4::checksum(&packet[20..]), 0, "ICMP checksum");
    }
    let Some(original) = Frame::new_checked(frame).and_then(|f| Packet::new_checked(f.payload()))
    else {
        return;
    };
    let header_len = usize::from(frame[ETH_LEN] & 0x0f) * 4;
    let payload = &frame[ETH_LEN + header_len..ETH_LEN + original.total_len()];
    for mtu in [MIN_MTU, 1400] {
        let mut joined = Vec::new();
        let mut count = 0;
        let done = ipv4::fragment(frame, mtu, |f| {
            count += 1;
            assert_eq!(f[..ETH_LEN], frame[..ETH_LEN]);
            let p = Packet::new_checked(&f[ETH_LEN..]).expect("fragment is IPv4");
            assert!(p.total_len() <= mtu, "fragment of {} bytes", p.total_len());
            assert_eq!(ETH_LEN + p.total_len(), f.len());
            let hl = usize::from(f[ETH_LEN] & 0x0f) * 4;
            assert_eq!(
                ipv4::checksum(&f[ETH_LEN..ETH_LEN + hl]),
                0,
                "fragment checksum"
            );
            joined.extend_from_slice(&f[ETH_LEN + hl..]);
        });
        if done {
            assert_eq!(joined, payload);
        } else {
            assert_eq!(count, 0, "a failed fragmentation emitted fragments");
        }
    }
}
