//! The UDP encapsulation between routers.
//!
//! Every datagram starts with a 16-byte header:
//!
//! ```text
//! offset  size  field
//! 0       1     magic 0xfe (never a valid first byte of the control preamble)
//! 1       1     kind: 1 frames, 2 heartbeat, 3 PMTU probe, 4 PMTU ack,
//!               5 segment
//! 2       1     hop limit: decremented by each relay, dropped at 0
//! 3       1     reserved, 0
//! 4       6     source: the router where the datagram's content originated
//! 10      6     destination: the router it is for; 00:00:00:00:00:00 means
//!               "every router", forwarded down the source's broadcast tree
//! 16      ..    body (by kind)
//! ```
//!
//! Bodies:
//! - **frames**: one or more `{ u16 BE length N (14..=65535), N bytes of
//!   Ethernet frame }`, packed up to the path MTU. At least one.
//! - **heartbeat**: `u64 BE connection id`, `u8 flags` (bit 0: "I have
//!   heard your heartbeats recently").
//! - **PMTU probe**: `u32 BE probe id`, then padding to the probed size.
//! - **PMTU ack**: `u32 BE probe id`, `u16 BE size of the probe received`.
//! - **segment**: one piece of a large frame (a TCP super-segment from the
//!   TAP's segmentation offload, up to 64 KB) that is carried whole and
//!   handed to the destination's TAP in one write: `u32 BE frame id` (per
//!   source, increasing), `u32 BE total length T` of the frame blob
//!   (10-byte virtio-net header, then the Ethernet frame; 25..=65,600),
//!   `u32 BE offset` of this piece in the blob, then the piece bytes (at
//!   least 1). Pieces go in order; see [`SegmentHeader`].

use crate::core::identity::PeerName;

use super::WireError;
use super::ethernet::HEADER_LEN as ETH_HEADER_LEN;

pub const MAGIC: u8 = 0xfe;
pub const HEADER_LEN: usize = 16;
/// Hop limit on frames a router originates; a mesh path longer than this is
/// a routing loop, not a topology.
pub const DEFAULT_HOP_LIMIT: u8 = 32;
/// Per-frame overhead inside a frames datagram.
pub const FRAME_PREFIX: usize = 2;
/// The all-routers destination.
pub const BROADCAST: [u8; 6] = [0; 6];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Frames = 1,
    Heartbeat = 2,
    PmtuProbe = 3,
    PmtuAck = 4,
    Segment = 5,
}

/// The parsed fixed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub hop_limit: u8,
    pub src: PeerName,
    /// `None` for broadcast.
    pub dst: Option<PeerName>,
}

fn name_bytes(n: PeerName) -> [u8; 6] {
    n.to_bytes()
}

fn name_from(b: &[u8]) -> PeerName {
    let mut six = [0u8; 6];
    six.copy_from_slice(&b[..6]);
    PeerName::from_bytes(six)
}

impl Header {
    pub fn emit(&self, out: &mut [u8; HEADER_LEN]) {
        out[0] = MAGIC;
        out[1] = self.kind as u8;
        out[2] = self.hop_limit;
        out[3] = 0;
        out[4..10].copy_from_slice(&name_bytes(self.src));
        out[10..16].copy_from_slice(&self.dst.map(name_bytes).unwrap_or(BROADCAST));
    }

    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        self.emit(&mut out);
        out
    }

    /// Parses the header; the body is `&bytes[HEADER_LEN..]`.
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        let malformed = |detail: String| WireError::Malformed {
            what: "UDP datagram",
            detail,
        };
        if bytes.len() < HEADER_LEN {
            return Err(malformed(format!(
                "{} bytes is shorter than the header",
                bytes.len()
            )));
        }
        if bytes[0] != MAGIC {
            return Err(WireError::BadMagic);
        }
        let kind = match bytes[1] {
            1 => Kind::Frames,
            2 => Kind::Heartbeat,
            3 => Kind::PmtuProbe,
            4 => Kind::PmtuAck,
            5 => Kind::Segment,
            k => return Err(malformed(format!("unknown kind {k}"))),
        };
        let dst = (bytes[10..16] != BROADCAST).then(|| name_from(&bytes[10..16]));
        Ok(Self {
            kind,
            hop_limit: bytes[2],
            src: name_from(&bytes[4..10]),
            dst,
        })
    }
}

/// Iterates over the frames in a frames body, validating as it goes.
pub struct FramesIter<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> FramesIter<'a> {
    pub fn new(body: &'a [u8]) -> Self {
        Self {
            rest: body,
            failed: false,
        }
    }
}

impl<'a> Iterator for FramesIter<'a> {
    type Item = Result<&'a [u8], WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let err = |detail: String| {
            Some(Err(WireError::Malformed {
                what: "frames body",
                detail,
            }))
        };
        if self.rest.len() < FRAME_PREFIX {
            self.failed = true;
            return err("truncated frame length".into());
        }
        let len = usize::from(u16::from_be_bytes([self.rest[0], self.rest[1]]));
        if len < ETH_HEADER_LEN {
            self.failed = true;
            return err(format!(
                "frame of {len} bytes is shorter than an Ethernet header"
            ));
        }
        if self.rest.len() < FRAME_PREFIX + len {
            self.failed = true;
            return err(format!(
                "frame claims {len} bytes, {} remain",
                self.rest.len() - FRAME_PREFIX
            ));
        }
        let frame = &self.rest[FRAME_PREFIX..FRAME_PREFIX + len];
        self.rest = &self.rest[FRAME_PREFIX + len..];
        Some(Ok(frame))
    }
}

/// Builds a frames datagram in a caller-owned buffer, frame by frame, up to
/// a size limit. No allocation once the buffer has grown to the limit.
#[derive(Debug)]
pub struct FramesBuilder {
    buf: Vec<u8>,
    limit: usize,
    frames: usize,
}

impl FramesBuilder {
    /// `limit` is the largest datagram payload (UDP payload) allowed.
    pub fn new(header: Header, limit: usize) -> Self {
        let mut buf = Vec::with_capacity(limit.max(HEADER_LEN));
        buf.extend_from_slice(&header.to_bytes());
        Self {
            buf,
            limit,
            frames: 0,
        }
    }

    /// Starts over with a new header, keeping the allocation.
    pub fn reset(&mut self, header: Header, limit: usize) {
        self.buf.clear();
        self.buf.extend_from_slice(&header.to_bytes());
        self.limit = limit;
        self.frames = 0;
    }

    /// Whether `frame_len` more bytes of frame would still fit.
    pub fn fits(&self, frame_len: usize) -> bool {
        self.buf.len() + FRAME_PREFIX + frame_len <= self.limit
    }

    /// Appends a frame; returns false (and appends nothing) if it does not
    /// fit or is not a plausible Ethernet frame.
    pub fn push(&mut self, frame: &[u8]) -> bool {
        if frame.len() < ETH_HEADER_LEN
            || frame.len() > usize::from(u16::MAX)
            || !self.fits(frame.len())
        {
            return false;
        }
        self.buf
            .extend_from_slice(&(frame.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(frame);
        self.frames += 1;
        true
    }

    pub fn frame_count(&self) -> usize {
        self.frames
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// Bytes of the segment body's own header.
pub const SEGMENT_HEADER_LEN: usize = 12;
/// Largest frame blob a segment may describe: a 64 KB IP packet in an
/// Ethernet frame behind a virtio-net header, rounded up.
pub const MAX_BLOB: usize = 65_600;
/// Smallest: a virtio-net header and an Ethernet header and a byte.
pub const MIN_BLOB: usize = super::vnet::LEN + ETH_HEADER_LEN + 1;

/// The header of a segment body: where this piece sits in its frame blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub frame_id: u32,
    pub total: u32,
    pub offset: u32,
}

impl SegmentHeader {
    pub fn emit(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&self.frame_id.to_be_bytes());
        out[4..8].copy_from_slice(&self.total.to_be_bytes());
        out[8..12].copy_from_slice(&self.offset.to_be_bytes());
    }

    /// Parses a segment body; returns the header and the piece bytes.
    pub fn parse(body: &[u8]) -> Result<(Self, &[u8]), WireError> {
        let malformed = |detail: String| WireError::Malformed {
            what: "segment",
            detail,
        };
        if body.len() <= SEGMENT_HEADER_LEN {
            return Err(malformed(format!(
                "body of {} bytes holds no piece",
                body.len()
            )));
        }
        let u32_at =
            |i: usize| u32::from_be_bytes([body[i], body[i + 1], body[i + 2], body[i + 3]]);
        let h = Self {
            frame_id: u32_at(0),
            total: u32_at(4),
            offset: u32_at(8),
        };
        let piece = &body[SEGMENT_HEADER_LEN..];
        let total = h.total as usize;
        if !(MIN_BLOB..=MAX_BLOB).contains(&total) {
            return Err(malformed(format!(
                "frame of {total} bytes is outside {MIN_BLOB}..={MAX_BLOB}"
            )));
        }
        if h.offset as usize + piece.len() > total {
            return Err(malformed(format!(
                "piece of {} bytes at offset {} overruns a {total}-byte frame",
                piece.len(),
                h.offset
            )));
        }
        Ok((h, piece))
    }
}

/// Cuts `blob` into segment datagrams of at most `limit` bytes each, all
/// of the same size but the last (so a sender can hand them to UDP
/// segmentation offload as one train). `emit` gets each datagram.
/// Returns false, emitting nothing, if `limit` cannot carry a piece or the
/// blob's size is out of range.
pub fn segment(
    header: Header,
    frame_id: u32,
    blob: &[u8],
    limit: usize,
    scratch: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]),
) -> bool {
    let room = limit.saturating_sub(HEADER_LEN + SEGMENT_HEADER_LEN);
    if room == 0 || !(MIN_BLOB..=MAX_BLOB).contains(&blob.len()) {
        return false;
    }
    let header = header.to_bytes();
    for (i, piece) in blob.chunks(room).enumerate() {
        scratch.clear();
        scratch.extend_from_slice(&header);
        let mut seg = [0u8; SEGMENT_HEADER_LEN];
        SegmentHeader {
            frame_id,
            total: blob.len() as u32,
            offset: (i * room) as u32,
        }
        .emit(&mut seg);
        scratch.extend_from_slice(&seg);
        scratch.extend_from_slice(piece);
        emit(scratch);
    }
    true
}

/// The header of a control datagram between direct neighbours (hop limit 1).
fn neighbour_header(kind: Kind, src: PeerName, dst: PeerName) -> [u8; HEADER_LEN] {
    Header {
        kind,
        hop_limit: 1,
        src,
        dst: Some(dst),
    }
    .to_bytes()
}

/// Encodes a heartbeat datagram.
pub fn heartbeat(
    src: PeerName,
    dst: PeerName,
    conn_id: u64,
    hears_you: bool,
) -> [u8; HEADER_LEN + 9] {
    let mut out = [0u8; HEADER_LEN + 9];
    out[..HEADER_LEN].copy_from_slice(&neighbour_header(Kind::Heartbeat, src, dst));
    out[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&conn_id.to_be_bytes());
    out[HEADER_LEN + 8] = u8::from(hears_you);
    out
}

/// Parses a heartbeat body: `(connection id, hears_you)`.
pub fn parse_heartbeat(body: &[u8]) -> Result<(u64, bool), WireError> {
    if body.len() != 9 {
        return Err(WireError::Malformed {
            what: "heartbeat",
            detail: format!("body of {} bytes, expected 9", body.len()),
        });
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&body[..8]);
    Ok((u64::from_be_bytes(id), body[8] & 1 != 0))
}

/// Encodes a PMTU probe whose UDP payload is exactly `size` bytes.
pub fn pmtu_probe(src: PeerName, dst: PeerName, id: u32, size: usize) -> Vec<u8> {
    let mut out = vec![0u8; size.max(HEADER_LEN + 4)];
    out[..HEADER_LEN].copy_from_slice(&neighbour_header(Kind::PmtuProbe, src, dst));
    out[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&id.to_be_bytes());
    out
}

/// Parses a probe body: the probe id.
pub fn parse_pmtu_probe(body: &[u8]) -> Result<u32, WireError> {
    let id: [u8; 4] = body
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| WireError::Malformed {
            what: "PMTU probe",
            detail: "body shorter than 4 bytes".into(),
        })?;
    Ok(u32::from_be_bytes(id))
}

/// Encodes the ack for a probe of `size` bytes.
pub fn pmtu_ack(src: PeerName, dst: PeerName, id: u32, size: u16) -> [u8; HEADER_LEN + 6] {
    let mut out = [0u8; HEADER_LEN + 6];
    out[..HEADER_LEN].copy_from_slice(&neighbour_header(Kind::PmtuAck, src, dst));
    out[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&id.to_be_bytes());
    out[HEADER_LEN + 4..].copy_from_slice(&size.to_be_bytes());
    out
}

/// Parses an ack body: `(probe id, size)`.
pub fn parse_pmtu_ack(body: &[u8]) -> Result<(u32, u16), WireError> {
    if body.len() != 6 {
        return Err(WireError::Malformed {
            what: "PMTU ack",
            detail: format!("body of {} bytes, expected 6", body.len()),
        });
    }
    Ok((
        u32::from_be_bytes([body[0], body[1], body[2], body[3]]),
        u16::from_be_bytes([body[4], body[5]]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(v: u64) -> PeerName {
        PeerName::from_u64(v).unwrap()
    }

    fn eth(len: usize, fill: u8) -> Vec<u8> {
        vec![fill; len]
    }

    #[test]
    fn segment_bytes_are_as_documented() {
        let header = Header {
            kind: Kind::Segment,
            hop_limit: 32,
            src: n(1),
            dst: Some(n(2)),
        };
        let blob: Vec<u8> = (0..30u8).collect();
        let mut got = Vec::new();
        let mut scratch = Vec::new();
        assert!(segment(
            header,
            0x0102_0304,
            &blob,
            16 + 12 + 20,
            &mut scratch,
            |d| got.push(d.to_vec())
        ));
        assert_eq!(got.len(), 2);
        assert_eq!(got[0][1], 5);
        assert_eq!(
            &got[0][HEADER_LEN..HEADER_LEN + 12],
            &[1, 2, 3, 4, 0, 0, 0, 30, 0, 0, 0, 0]
        );
        assert_eq!(&got[0][HEADER_LEN + 12..], &blob[..20]);
        assert_eq!(
            &got[1][HEADER_LEN..HEADER_LEN + 12],
            &[1, 2, 3, 4, 0, 0, 0, 30, 0, 0, 0, 20]
        );
        assert_eq!(&got[1][HEADER_LEN + 12..], &blob[20..]);
        let (h, piece) = SegmentHeader::parse(&got[1][HEADER_LEN..]).unwrap();
        assert_eq!((h.frame_id, h.total, h.offset), (0x0102_0304, 30, 20));
        assert_eq!(piece, &blob[20..]);
        // A piece past the end, an empty piece, a runt or giant total.
        assert!(
            SegmentHeader::parse(&[0, 0, 0, 1, 0, 0, 0, 30, 0, 0, 0, 25, 1, 2, 3, 4, 5, 6])
                .is_err()
        );
        assert!(SegmentHeader::parse(&[0, 0, 0, 1, 0, 0, 0, 30, 0, 0, 0, 0]).is_err());
        assert!(SegmentHeader::parse(&[0, 0, 0, 1, 0, 0, 0, 24, 0, 0, 0, 0, 1]).is_err());
        assert!(SegmentHeader::parse(&[0, 0, 0, 1, 0, 1, 0, 0x50, 0, 0, 0, 0, 1]).is_err());
        // No room for a piece.
        assert!(!segment(header, 1, &blob, 28, &mut scratch, |_| {}));
    }

    #[test]
    fn header_bytes_are_as_documented() {
        let h = Header {
            kind: Kind::Frames,
            hop_limit: 32,
            src: n(0x0201_0203_0405),
            dst: None,
        };
        assert_eq!(
            h.to_bytes(),
            [
                0xfe, 0x01, 0x20, 0x00, 0x02, 0x01, 0x02, 0x03, 0x04, 0x05, 0, 0, 0, 0, 0, 0
            ]
        );
        assert_eq!(Header::parse(&h.to_bytes()), Ok(h));
        let u = Header {
            dst: Some(n(7)),
            ..h
        };
        assert_eq!(Header::parse(&u.to_bytes()).unwrap().dst, Some(n(7)));
    }

    #[test]
    fn frames_pack_up_to_the_limit_and_parse_back() {
        let h = Header {
            kind: Kind::Frames,
            hop_limit: 32,
            src: n(1),
            dst: Some(n(2)),
        };
        let mut b = FramesBuilder::new(h, HEADER_LEN + 2 * (2 + 100));
        assert!(b.push(&eth(100, 1)));
        assert!(b.push(&eth(100, 2)));
        assert!(!b.push(&eth(14, 3)), "over the limit");
        assert!(!b.push(&eth(13, 3)), "shorter than an Ethernet header");
        let bytes = b.bytes();
        assert_eq!(&bytes[HEADER_LEN..HEADER_LEN + 3], &[0x00, 0x64, 0x01]);
        let frames: Vec<&[u8]> = FramesIter::new(&bytes[HEADER_LEN..])
            .map(Result::unwrap)
            .collect();
        assert_eq!(frames, vec![&eth(100, 1)[..], &eth(100, 2)[..]]);
    }

    #[test]
    fn truncated_and_bogus_bodies_are_errors() {
        assert!(FramesIter::new(&[0x00]).next().unwrap().is_err());
        assert!(
            FramesIter::new(&[0x00, 0x05, 1, 2, 3, 4, 5])
                .next()
                .unwrap()
                .is_err()
        );
        assert!(
            FramesIter::new(&[0x00, 0x20, 1, 2])
                .next()
                .unwrap()
                .is_err()
        );
        assert!(Header::parse(&[0xfe; 15]).is_err());
        let mut bad = Header {
            kind: Kind::Frames,
            hop_limit: 1,
            src: n(1),
            dst: None,
        }
        .to_bytes();
        bad[1] = 9;
        assert!(Header::parse(&bad).is_err());
        bad[0] = 0;
        assert_eq!(Header::parse(&bad), Err(WireError::BadMagic));
    }

    #[test]
    fn control_datagrams_round_trip() {
        let hb = heartbeat(n(1), n(2), 0x0102_0304_0506_0708, true);
        let h = Header::parse(&hb).unwrap();
        assert_eq!((h.kind, h.src, h.dst), (Kind::Heartbeat, n(1), Some(n(2))));
        assert_eq!(
            parse_heartbeat(&hb[HEADER_LEN..]),
            Ok((0x0102_0304_0506_0708, true))
        );
        let probe = pmtu_probe(n(1), n(2), 9, 1400);
        assert_eq!(probe.len(), 1400);
        assert_eq!(parse_pmtu_probe(&probe[HEADER_LEN..]), Ok(9));
        let ack = pmtu_ack(n(2), n(1), 9, 1400);
        assert_eq!(parse_pmtu_ack(&ack[HEADER_LEN..]), Ok((9, 1400)));
        assert!(parse_heartbeat(&[0; 8]).is_err());
        assert!(parse_pmtu_ack(&[0; 5]).is_err());
        assert!(parse_pmtu_probe(&[0; 3]).is_err());
    }

    proptest! {
        #[test]
        fn parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(h) = Header::parse(&bytes) {
                let body = &bytes[HEADER_LEN..];
                match h.kind {
                    Kind::Frames => { for f in FramesIter::new(body).flatten() { prop_assert!(f.len() >= 14); } }
                    Kind::Heartbeat => { let _ = parse_heartbeat(body); }
                    Kind::PmtuProbe => { let _ = parse_pmtu_probe(body); }
                    Kind::PmtuAck => { let _ = parse_pmtu_ack(body); }
                    Kind::Segment => {
                        if let Ok((s, piece)) = SegmentHeader::parse(body) {
                            prop_assert!(s.offset as usize + piece.len() <= s.total as usize);
                        }
                    }
                }
            }
        }
    }
}
