//! Putting large frames back together from their segment datagrams.
//!
//! A TCP super-segment read from the TAP (up to 64 KB) crosses the mesh
//! whole, cut into path-MTU-sized pieces (`udp::segment`), and reaches the
//! destination's TAP in one write. Pieces of one frame travel one path and
//! almost always arrive in order, so the reassembler keeps one frame per
//! origin and accepts pieces strictly in order: a gap, a duplicate or a
//! piece of another frame abandons the frame in progress and TCP
//! retransmits, exactly as if one underlay packet had been lost. That keeps
//! the state per origin at one buffer, bounded by `udp::MAX_BLOB`, and makes
//! duplicated or forged pieces unable to make a frame look complete.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::core::identity::PeerName;
use crate::core::wire::udp::SegmentHeader;

/// A frame whose pieces stop arriving is abandoned after this long.
pub const REASSEMBLY_TIMEOUT: Duration = Duration::from_secs(2);

/// Counters for `weft status` and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReassemblyStats {
    /// Frames put back together.
    pub completed: u64,
    /// Frames abandoned: a piece was lost, reordered or duplicated.
    pub abandoned: u64,
}

#[derive(Debug)]
struct Slot {
    frame_id: u32,
    total: usize,
    buf: Vec<u8>,
    /// Complete and handed out; later pieces of this frame are strays.
    done: bool,
    last: Instant,
}

/// Reassembly state for every origin currently sending large frames.
#[derive(Debug, Default)]
pub struct Reassembler {
    slots: HashMap<PeerName, Slot>,
    pub stats: ReassemblyStats,
}

impl Reassembler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one piece from `origin`; returns the whole frame blob once its
    /// last piece is in. The header has been checked by
    /// `SegmentHeader::parse` (the piece lies inside `total`).
    ///
    /// A piece that is a whole frame (sent to an encrypted neighbour, the
    /// frame travels as one sealed message) is handed back as it is,
    /// without a copy, and leaves any frame in progress alone.
    pub fn push<'a>(
        &'a mut self,
        now: Instant,
        origin: PeerName,
        h: SegmentHeader,
        piece: &'a [u8],
    ) -> Option<&'a [u8]> {
        let total = h.total as usize;
        let offset = h.offset as usize;
        if offset == 0 && piece.len() == total {
            self.stats.completed += 1;
            return Some(piece);
        }
        let slot = self.slots.entry(origin).or_insert_with(|| Slot {
            frame_id: h.frame_id,
            total,
            buf: Vec::new(),
            done: true,
            last: now,
        });
        if offset == 0 {
            if !slot.done && !slot.buf.is_empty() {
                self.stats.abandoned += 1;
            }
            slot.frame_id = h.frame_id;
            slot.total = total;
            slot.buf.clear();
            slot.done = false;
        } else if slot.done
            || slot.frame_id != h.frame_id
            || slot.total != total
            || slot.buf.len() != offset
        {
            if !slot.done {
                self.stats.abandoned += 1;
                slot.done = true;
                slot.buf.clear();
            }
            return None;
        }
        slot.last = now;
        slot.buf.extend_from_slice(piece);
        if slot.buf.len() == slot.total {
            slot.done = true;
            self.stats.completed += 1;
            return Some(&slot.buf);
        }
        None
    }

    /// Frees the buffers of origins that went quiet, counting frames left
    /// incomplete.
    pub fn expire(&mut self, now: Instant) {
        let stats = &mut self.stats;
        self.slots.retain(|_, s| {
            let keep = now.saturating_duration_since(s.last) < REASSEMBLY_TIMEOUT;
            if !keep && !s.done {
                stats.abandoned += 1;
            }
            keep
        });
    }

    /// Origins with state, for tests.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::wire::udp::{
        HEADER_LEN, Header, Kind, SEGMENT_HEADER_LEN, SegmentHeader, segment,
    };
    use proptest::prelude::*;

    fn n(v: u64) -> PeerName {
        PeerName::from_u64(v).unwrap()
    }

    fn pieces(id: u32, blob: &[u8], limit: usize) -> Vec<Vec<u8>> {
        let header = Header {
            kind: Kind::Segment,
            hop_limit: 5,
            src: n(1),
            dst: Some(n(2)),
        };
        let mut out = Vec::new();
        let mut scratch = Vec::new();
        assert!(segment(header, id, blob, limit, &mut scratch, |d| out
            .push(d.to_vec())));
        out
    }

    fn feed(r: &mut Reassembler, now: Instant, d: &[u8]) -> Option<Vec<u8>> {
        let (h, piece) = SegmentHeader::parse(&d[HEADER_LEN..]).unwrap();
        r.push(now, n(1), h, piece).map(<[u8]>::to_vec)
    }

    fn blob(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn pieces_are_equal_sized_but_the_last_and_reassemble() {
        let b = blob(65_000);
        let ps = pieces(9, &b, 1472);
        let room = 1472 - HEADER_LEN - SEGMENT_HEADER_LEN;
        assert_eq!(ps.len(), 65_000usize.div_ceil(room));
        assert!(ps[..ps.len() - 1].iter().all(|p| p.len() == 1472));
        let now = Instant::now();
        let mut r = Reassembler::new();
        let (last, rest) = ps.split_last().unwrap();
        for p in rest {
            assert_eq!(feed(&mut r, now, p), None);
        }
        assert_eq!(feed(&mut r, now, last), Some(b));
        assert_eq!(r.stats.completed, 1);
        // A replayed last piece does not produce the frame again.
        assert_eq!(feed(&mut r, now, last), None);
    }

    #[test]
    fn a_lost_or_reordered_piece_abandons_the_frame_and_the_next_one_works() {
        let now = Instant::now();
        let mut r = Reassembler::new();
        let a = pieces(1, &blob(5000), 1000);
        let b = pieces(2, &blob(3000), 1000);
        feed(&mut r, now, &a[0]);
        feed(&mut r, now, &a[2]); // a[1] lost
        for p in &a[3..] {
            assert_eq!(feed(&mut r, now, p), None);
        }
        assert_eq!(r.stats.abandoned, 1);
        let mut got = None;
        for p in &b {
            got = feed(&mut r, now, p);
        }
        assert_eq!(got, Some(blob(3000)));
        // A frame cut short by the next frame's first piece.
        feed(&mut r, now, &a[0]);
        feed(&mut r, now, &b[0]);
        assert_eq!(r.stats.abandoned, 2);
    }

    #[test]
    fn a_whole_frame_in_one_piece_passes_through_and_spares_the_frame_in_progress() {
        let now = Instant::now();
        let mut r = Reassembler::new();
        let a = pieces(1, &blob(3000), 1000);
        let whole = pieces(2, &blob(4000), 5000);
        assert_eq!(whole.len(), 1);
        feed(&mut r, now, &a[0]);
        assert_eq!(feed(&mut r, now, &whole[0]), Some(blob(4000)));
        let mut got = None;
        for p in &a[1..] {
            got = feed(&mut r, now, p);
        }
        assert_eq!(got, Some(blob(3000)));
        assert_eq!((r.stats.completed, r.stats.abandoned), (2, 0));
    }

    #[test]
    fn quiet_origins_are_expired() {
        let now = Instant::now();
        let mut r = Reassembler::new();
        feed(&mut r, now, &pieces(1, &blob(5000), 1000)[0]);
        r.expire(now + Duration::from_secs(1));
        assert_eq!(r.len(), 1);
        r.expire(now + REASSEMBLY_TIMEOUT);
        assert!(r.is_empty());
        assert_eq!(r.stats.abandoned, 1);
    }

    proptest! {
        /// Whatever pieces arrive, in whatever order and repetition, a frame
        /// comes out only if it is exactly one of the frames sent.
        #[test]
        fn only_whole_frames_come_out(
            order in proptest::collection::vec((0usize..2, 0usize..8), 0..40),
        ) {
            let frames = [blob(6000), blob(6500).into_iter().rev().collect::<Vec<u8>>()];
            let ps = [pieces(1, &frames[0], 1000), pieces(2, &frames[1], 1000)];
            let now = Instant::now();
            let mut r = Reassembler::new();
            for (f, i) in order {
                let i = i % ps[f].len();
                if let Some(out) = feed(&mut r, now, &ps[f][i]) {
                    prop_assert!(frames.contains(&out));
                }
            }
        }
    }
}
