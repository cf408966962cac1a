//! Sealed messages: a plaintext datagram too large for the path to an
//! encrypted neighbour (a TCP super-segment of up to 64 KB, carried whole)
//! is sealed once, as one ChaCha20-Poly1305 message, and cut into
//! fragments that each fit the path.
//!
//! Why not seal each path-sized piece on its own, as plaintext segments
//! are cut: one AEAD call over 64 KB runs at about 2.5 GB/s on the
//! benchmark machine against 1.9 GB/s for 1.4 KB calls, and encryption is
//! most of what an encrypted data path costs (`docs/benchmarks.md`).
//!
//! Fragment layout (`docs/security.md`, "Sealed messages"):
//!
//! ```text
//!  0  1  magic 0xfc (single sealed datagrams start with 0xfd)
//!  1  1  key epoch
//!  2  2  reserved, 0
//!  4  4  receiver index (u32 BE), chosen by the receiver
//!  8  8  counter (u64 BE), shared with single sealed datagrams
//! 16  4  message length: ciphertext plus tag (u32 BE)
//! 20  4  offset of this fragment's bytes in the message (u32 BE)
//! 24  n  message bytes offset..offset+n
//! ```
//!
//! Bytes 0..20, the [`MessagePrefix`], are the same in every fragment of a
//! message and are its additional data; the nonce is built from the
//! counter exactly as for single datagrams.
//!
//! Reassembly comes before authentication, so it is built to give a forger
//! nothing: the caller only pushes fragments whose receiver index names a
//! live session; at most [`SLOTS_PER_INDEX`] messages per index are in
//! progress, each bounded by [`MAX_MESSAGE`]; fragments are taken strictly
//! in order. A complete message is opened in one call (decrypting fragment
//! by fragment as they arrive measured 30% slower than a copy and one
//! call). A forged fragment can at worst make one message be abandoned, as
//! losing one of its datagrams would, and cost one failed authentication;
//! it can never change what a message opens to.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::data::{DataError, TAG_LEN};
use crate::core::wire::udp;

/// First byte of every fragment of a sealed message.
pub const FRAGMENT_MAGIC: u8 = 0xfc;
/// Length of the [`MessagePrefix`], the additional data.
pub const PREFIX_LEN: usize = 20;
/// Bytes before a fragment's share of the message.
pub const FRAGMENT_HEADER_LEN: usize = PREFIX_LEN + 4;
/// The largest plaintext sealed as a message: a segment datagram carrying
/// the largest frame blob whole.
pub const MAX_MESSAGE_PLAINTEXT: usize = udp::HEADER_LEN + udp::SEGMENT_HEADER_LEN + udp::MAX_BLOB;
/// The largest message (ciphertext and tag) a receiver reassembles.
pub const MAX_MESSAGE: usize = MAX_MESSAGE_PLAINTEXT + TAG_LEN;
/// Messages in progress per receiver index. More than one because a
/// router's own frames and the frames it relays reach a neighbour from two
/// threads, whose fragments may interleave.
pub const SLOTS_PER_INDEX: usize = 4;
/// A message whose fragments stop arriving is abandoned after this long.
pub const ASSEMBLY_TIMEOUT: Duration = Duration::from_secs(2);

/// Field offsets: the first 16 bytes are laid out as a single sealed
/// datagram's header.
mod field {
    pub use super::super::data::field::{COUNTER, EPOCH, INDEX, MAGIC, RESERVED};
    use std::ops::Range;
    pub const LEN: Range<usize> = 16..20;
    pub const OFFSET: Range<usize> = 20..24;
}

/// What every fragment of one message repeats: the key and nonce it was
/// sealed with, and its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MessagePrefix {
    /// The sender's key epoch.
    pub epoch: u8,
    /// The receiver's index for the session.
    pub index: u32,
    /// The nonce counter.
    pub counter: u64,
    /// Ciphertext plus tag, in bytes.
    pub len: u32,
}

impl MessagePrefix {
    /// The prefix bytes, which are also the message's additional data.
    pub fn to_bytes(&self) -> [u8; PREFIX_LEN] {
        let mut b = [0u8; PREFIX_LEN];
        b[field::MAGIC] = FRAGMENT_MAGIC;
        b[field::EPOCH] = self.epoch;
        b[field::INDEX].copy_from_slice(&self.index.to_be_bytes());
        b[field::COUNTER].copy_from_slice(&self.counter.to_be_bytes());
        b[field::LEN].copy_from_slice(&self.len.to_be_bytes());
        b
    }
}

/// One parsed fragment, borrowing its bytes from the datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment<'a> {
    /// The message it belongs to.
    pub prefix: MessagePrefix,
    /// Where its bytes go in the message.
    pub offset: u32,
    /// Its bytes.
    pub body: &'a [u8],
}

impl<'a> Fragment<'a> {
    /// Parses a fragment datagram. The lengths are checked: a fragment that
    /// parses lies inside a message of at most [`MAX_MESSAGE`] bytes.
    pub fn parse(datagram: &'a [u8]) -> Result<Fragment<'a>, DataError> {
        if datagram.len() <= FRAGMENT_HEADER_LEN {
            return Err(DataError::Truncated);
        }
        if datagram[field::MAGIC] != FRAGMENT_MAGIC {
            return Err(DataError::BadMagic);
        }
        if datagram[field::RESERVED] != [0, 0] {
            return Err(DataError::BadFragment);
        }
        let prefix = MessagePrefix {
            epoch: datagram[field::EPOCH],
            index: u32::from_be_bytes(array(datagram, field::INDEX)),
            counter: u64::from_be_bytes(array(datagram, field::COUNTER)),
            len: u32::from_be_bytes(array(datagram, field::LEN)),
        };
        let offset = u32::from_be_bytes(array(datagram, field::OFFSET));
        let body = &datagram[FRAGMENT_HEADER_LEN..];
        let len = prefix.len as usize;
        let fits = (offset as usize)
            .checked_add(body.len())
            .is_some_and(|end| end <= len);
        if len <= TAG_LEN || len > MAX_MESSAGE || !fits {
            return Err(DataError::BadFragment);
        }
        Ok(Fragment {
            prefix,
            offset,
            body,
        })
    }
}

fn array<const N: usize>(bytes: &[u8], range: std::ops::Range<usize>) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[range]);
    out
}

/// The most pieces a message may be given in (encrypted head, body, tag).
pub const MAX_PARTS: usize = 4;

/// Cuts a sealed message, the concatenation of `parts`, into fragments of
/// at most `max_datagram` bytes, all of one size but the last (so a train
/// of them goes out as one UDP segmentation offload send), and hands each
/// fragment's header and bytes (one slice per part it covers) to `emit`.
/// Returns false, emitting nothing, if `max_datagram` cannot hold a header
/// and one byte, the parts do not add up to the prefix's length, or there
/// are more than [`MAX_PARTS`].
pub fn fragments(
    prefix: &MessagePrefix,
    parts: &[&[u8]],
    max_datagram: usize,
    mut emit: impl FnMut(&[u8; FRAGMENT_HEADER_LEN], &[&[u8]]),
) -> bool {
    let room = max_datagram.saturating_sub(FRAGMENT_HEADER_LEN);
    let total: usize = parts.iter().map(|p| p.len()).sum();
    if room == 0 || total != prefix.len as usize || total > MAX_MESSAGE || parts.len() > MAX_PARTS {
        return false;
    }
    let mut header = [0u8; FRAGMENT_HEADER_LEN];
    header[..PREFIX_LEN].copy_from_slice(&prefix.to_bytes());
    // A cursor over the parts: part `part`, byte `at`.
    let (mut part, mut at) = (0, 0);
    let mut offset = 0;
    while offset < total {
        let n = room.min(total - offset);
        let mut pieces: [&[u8]; MAX_PARTS] = [&[]; MAX_PARTS];
        let mut count = 0;
        let mut need = n;
        while need > 0 {
            let p = parts[part];
            let take = need.min(p.len() - at);
            if take > 0 {
                pieces[count] = &p[at..at + take];
                count += 1;
            }
            at += take;
            need -= take;
            if at == p.len() {
                part += 1;
                at = 0;
            }
        }
        // `offset < total <= MAX_MESSAGE`, well inside u32.
        header[field::OFFSET].copy_from_slice(&(offset as u32).to_be_bytes());
        emit(&header, &pieces[..count]);
        offset += n;
    }
    true
}

/// Counters for status and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DefragStats {
    /// Messages whose every byte arrived (authenticated or not).
    pub completed: u64,
    /// Messages abandoned: a fragment was lost, reordered or duplicated.
    pub abandoned: u64,
}

#[derive(Debug)]
struct Assembly {
    prefix: MessagePrefix,
    buf: Vec<u8>,
    /// Collecting; false once complete or abandoned (the buffer is kept
    /// for the next message).
    live: bool,
    last: Instant,
}

/// Puts sealed messages back together, per receiver index.
#[derive(Debug, Default)]
pub struct Defragmenter {
    by_index: HashMap<u32, Vec<Assembly>>,
    pub stats: DefragStats,
}

impl Defragmenter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a fragment whose receiver index the caller has checked names a
    /// live session; returns the whole message (ciphertext and tag, still
    /// to be opened) once its last byte is in.
    pub fn push(&mut self, now: Instant, f: &Fragment<'_>) -> Option<&mut [u8]> {
        let slots = self.by_index.entry(f.prefix.index).or_default();
        let found = slots.iter().position(|a| a.live && a.prefix == f.prefix);
        let i = if f.offset == 0 {
            // A repeated first fragment restarts its message; a new one
            // takes an idle slot, a new slot, or the stalest one.
            let i = match found {
                Some(i) => Some(i),
                None => slots.iter().position(|a| !a.live),
            };
            let i = match i {
                Some(i) => i,
                None if slots.len() < SLOTS_PER_INDEX => {
                    slots.push(Assembly {
                        prefix: f.prefix,
                        buf: Vec::new(),
                        live: false,
                        last: now,
                    });
                    slots.len() - 1
                }
                None => slots
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, a)| a.last)
                    .map_or(0, |(i, _)| i),
            };
            let a = &mut slots[i];
            if a.live {
                self.stats.abandoned += 1;
            }
            a.prefix = f.prefix;
            a.buf.clear();
            a.live = true;
            i
        } else {
            let i = found?;
            if slots[i].buf.len() != f.offset as usize {
                let a = &mut slots[i];
                a.live = false;
                a.buf.clear();
                self.stats.abandoned += 1;
                return None;
            }
            i
        };
        let a = &mut slots[i];
        a.last = now;
        a.buf.extend_from_slice(f.body);
        if a.buf.len() == a.prefix.len as usize {
            a.live = false;
            self.stats.completed += 1;
            return Some(&mut a.buf[..]);
        }
        None
    }

    /// Frees the buffers of indexes that went quiet, counting messages left
    /// incomplete.
    pub fn expire(&mut self, now: Instant) {
        let stats = &mut self.stats;
        self.by_index.retain(|_, slots| {
            slots.retain(|a| {
                let keep = now.saturating_duration_since(a.last) < ASSEMBLY_TIMEOUT;
                if !keep && a.live {
                    stats.abandoned += 1;
                }
                keep
            });
            !slots.is_empty()
        });
    }

    /// Receiver indexes with state, for tests.
    pub fn len(&self) -> usize {
        self.by_index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_index.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::crypto::data::{DataKeys, DataLimits, DataSession, MAX_MESSAGE_HEAD};
    use crate::core::crypto::replay::ReplayError;
    use zeroize::Zeroizing;

    const A: u32 = 0x0a0a_0a0a;
    const B: u32 = 0x0b0b_0b0b;

    fn pair(now: Instant) -> (DataSession, DataSession) {
        let keys = |s: u8, r: u8| DataKeys::new(Zeroizing::new([s; 32]), Zeroizing::new([r; 32]));
        (
            DataSession::new(A, B, keys(1, 2), now, DataLimits::default()),
            DataSession::new(B, A, keys(2, 1), now, DataLimits::default()),
        )
    }

    /// Seals `plaintext` and returns its fragment datagrams.
    fn seal(s: &mut DataSession, now: Instant, plaintext: &[u8], max: usize) -> Vec<Vec<u8>> {
        let mut m = plaintext.to_vec();
        let prefix = s.seal_message(now, &mut m).unwrap();
        let mut out = Vec::new();
        assert!(fragments(&prefix, &[&m], max, |h, b| {
            out.push([&[&h[..]], b].concat().concat());
        }));
        out
    }

    /// Feeds datagrams to `d` and opens what completes with `s`.
    fn receive(
        d: &mut Defragmenter,
        s: &mut DataSession,
        now: Instant,
        datagrams: &[Vec<u8>],
    ) -> Vec<Result<Vec<u8>, DataError>> {
        let mut out = Vec::new();
        for dg in datagrams {
            let f = Fragment::parse(dg).unwrap();
            if let Some(m) = d.push(now, &f) {
                out.push(
                    s.open_message(now, &f.prefix, m)
                        .map(|len| m[..len].to_vec()),
                );
            }
        }
        out
    }

    fn text(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn header_bytes() {
        let p = MessagePrefix {
            epoch: 3,
            index: 0x0102_0304,
            counter: 0x1122_3344_5566_7788,
            len: 0x0001_0010,
        };
        let mut got = Vec::new();
        let message = vec![0xee; 0x0001_0010];
        assert!(fragments(&p, &[&message], 40_024, |h, b| {
            got.push((h.to_vec(), b.concat().len()));
        }));
        #[rustfmt::skip]
        let first: [u8; 24] = [
            0xfc, 3, 0, 0,  1, 2, 3, 4,
            0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88,
            0, 1, 0, 0x10,  0, 0, 0, 0,
        ];
        assert_eq!(got[0], (first.to_vec(), 40_000));
        assert_eq!(got[1].0[20..], [0, 0, 0x9c, 0x40], "offset 40000");
        assert_eq!(got[1].1, 0x0001_0010 - 40_000);
        assert_eq!(got.len(), 2);
        let dg = [&got[1].0[..], &message[..got[1].1]].concat();
        let f = Fragment::parse(&dg).unwrap();
        assert_eq!((f.prefix, f.offset, f.body.len()), (p, 40_000, got[1].1));
    }

    #[test]
    fn a_large_message_round_trips_in_equal_fragments() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        let plain = text(MAX_MESSAGE_PLAINTEXT);
        let dgs = seal(&mut a, now, &plain, 1472);
        let sizes: Vec<usize> = dgs.iter().map(Vec::len).collect();
        assert!(sizes[..sizes.len() - 1].iter().all(|&s| s == 1472));
        assert_eq!(
            sizes.iter().map(|s| s - FRAGMENT_HEADER_LEN).sum::<usize>(),
            plain.len() + TAG_LEN
        );
        let mut d = Defragmenter::new();
        assert_eq!(receive(&mut d, &mut b, now, &dgs), vec![Ok(plain.clone())]);
        assert_eq!(d.stats.completed, 1);
        // The same message again is a replay, even reassembled.
        let again = receive(&mut d, &mut b, now, &dgs);
        assert_eq!(again, vec![Err(DataError::Replay(ReplayError::Duplicate))]);
    }

    /// Messages are sealed by OpenSSL, single datagrams by ring: an
    /// independent RFC 8439 implementation (ring) must open what the
    /// message path sealed, with the prefix as additional data and the
    /// same nonce layout.
    #[test]
    fn a_sealed_message_opens_with_ring() {
        use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
        let now = Instant::now();
        let (mut a, _) = pair(now);
        for _ in 0..3 {
            let mut single = vec![0u8; 1 + data_overhead()];
            a.seal(now, &mut single, 1).unwrap();
        }
        let plain = text(20_000);
        let mut m = plain.clone();
        let prefix = a.seal_message(now, &mut m).unwrap();
        assert_eq!((prefix.counter, prefix.len), (3, 20_016));
        let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &[1; 32]).unwrap());
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&3u64.to_le_bytes());
        let opened = key
            .open_in_place(
                Nonce::assume_unique_for_key(n),
                Aad::from(prefix.to_bytes()),
                &mut m,
            )
            .unwrap();
        assert_eq!(opened, &plain[..]);
    }

    /// A frame sealed in place behind a separately encrypted head, cut
    /// across the part boundaries, opens to head then frame.
    #[test]
    fn a_message_sealed_in_parts_opens_whole() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        let head = [0xfe; 28];
        let frame = text(10_000);
        let mut body = frame.clone();
        let sealed = a.seal_message_parts(now, &head, &mut body).unwrap();
        assert_ne!(body, frame, "encrypted in place");
        let mut dgs = Vec::new();
        // 30-byte fragments: the head and the tag each straddle two.
        assert!(fragments(
            &sealed.prefix,
            &[sealed.head(), &body, sealed.tag()],
            FRAGMENT_HEADER_LEN + 30,
            |h, b| {
                assert!(b.len() <= 2 && b.iter().all(|p| !p.is_empty()));
                dgs.push([&[&h[..]], b].concat().concat());
            }
        ));
        let mut d = Defragmenter::new();
        let whole = [&head[..], &frame].concat();
        assert_eq!(receive(&mut d, &mut b, now, &dgs), vec![Ok(whole)]);
        let mut long = [0u8; MAX_MESSAGE_HEAD + 1];
        assert!(a.seal_message_parts(now, &long.clone(), &mut long).is_err());
    }

    #[test]
    fn messages_and_datagrams_share_the_counter_and_window() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        let dgs = seal(&mut a, now, &text(3000), 1400);
        assert_eq!(dgs[0][8..16], 0u64.to_be_bytes());
        let mut single = vec![0u8; 3 + data_overhead()];
        single[16..19].copy_from_slice(b"abc");
        a.seal(now, &mut single, 3).unwrap();
        assert_eq!(single[8..16], 1u64.to_be_bytes());
        assert_eq!(b.open(now, &mut single).unwrap(), b"abc");
        let mut d = Defragmenter::new();
        assert_eq!(receive(&mut d, &mut b, now, &dgs), vec![Ok(text(3000))]);
    }

    fn data_overhead() -> usize {
        crate::core::crypto::data::OVERHEAD
    }

    #[test]
    fn a_lost_or_reordered_fragment_abandons_only_its_message() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        let mut d = Defragmenter::new();
        let m1 = seal(&mut a, now, &text(5000), 1000);
        let m2 = seal(&mut a, now, &text(6000), 1000);
        let mut lossy = m1.clone();
        lossy.remove(2);
        assert!(receive(&mut d, &mut b, now, &lossy).is_empty());
        assert_eq!(d.stats.abandoned, 1);
        let mut swapped = m2.clone();
        swapped.swap(1, 2);
        assert!(receive(&mut d, &mut b, now, &swapped).is_empty());
        assert_eq!(d.stats.abandoned, 2);
        let m3 = seal(&mut a, now, &text(7000), 1000);
        assert_eq!(receive(&mut d, &mut b, now, &m3), vec![Ok(text(7000))]);
    }

    #[test]
    fn interleaved_messages_from_two_threads_both_complete() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        let mut d = Defragmenter::new();
        let m1 = seal(&mut a, now, &text(5000), 1000);
        let m2 = seal(&mut a, now, &text(4000), 1000);
        let mut mixed = Vec::new();
        for i in 0..m1.len().max(m2.len()) {
            mixed.extend(m1.get(i).cloned());
            mixed.extend(m2.get(i).cloned());
        }
        assert_eq!(
            receive(&mut d, &mut b, now, &mixed),
            vec![Ok(text(4000)), Ok(text(5000))]
        );
    }

    #[test]
    fn a_tampered_fragment_fails_authentication_and_moves_nothing() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        let dgs = seal(&mut a, now, &text(3000), 1000);
        for (at, bit) in [(24, 0), (500, 3), (FRAGMENT_HEADER_LEN + 1, 7)] {
            for k in 0..dgs.len() {
                let mut bad = dgs.clone();
                let at = at.min(bad[k].len() - 1);
                bad[k][at] ^= 1 << bit;
                let mut d = Defragmenter::new();
                assert_eq!(
                    receive(&mut d, &mut b, now, &bad),
                    vec![Err(DataError::AuthFailed)],
                    "fragment {k} byte {at}"
                );
            }
        }
        // Header fields: the epoch and counter pick another key or nonce;
        // the length no longer matches the bytes.
        let mut bad = dgs.clone();
        for dg in &mut bad {
            dg[15] ^= 1;
        }
        let mut d = Defragmenter::new();
        assert_eq!(
            receive(&mut d, &mut b, now, &bad),
            vec![Err(DataError::AuthFailed)]
        );
        let mut d = Defragmenter::new();
        assert_eq!(receive(&mut d, &mut b, now, &dgs), vec![Ok(text(3000))]);
    }

    #[test]
    fn malformed_fragments_are_refused_by_the_parser() {
        let p = MessagePrefix {
            epoch: 0,
            index: B,
            counter: 0,
            len: 100,
        };
        let mut h = [0u8; FRAGMENT_HEADER_LEN];
        h[..PREFIX_LEN].copy_from_slice(&p.to_bytes());
        let dg = |h: &[u8], body: usize| [h, &vec![0u8; body][..]].concat();
        assert!(Fragment::parse(&dg(&h, 100)).is_ok());
        assert_eq!(Fragment::parse(&h), Err(DataError::Truncated));
        assert_eq!(
            Fragment::parse(&dg(&h, 101)),
            Err(DataError::BadFragment),
            "past the end"
        );
        let mut off = h;
        off[20..24].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(Fragment::parse(&dg(&off, 1)), Err(DataError::BadFragment));
        for len in [0u32, TAG_LEN as u32, MAX_MESSAGE as u32 + 1, u32::MAX] {
            let mut l = h;
            l[16..20].copy_from_slice(&len.to_be_bytes());
            assert_eq!(Fragment::parse(&dg(&l, 1)), Err(DataError::BadFragment));
        }
        let mut r = h;
        r[2] = 1;
        assert_eq!(Fragment::parse(&dg(&r, 1)), Err(DataError::BadFragment));
        let mut m = h;
        m[0] = 0xfd;
        assert_eq!(Fragment::parse(&dg(&m, 1)), Err(DataError::BadMagic));
    }

    #[test]
    fn state_is_bounded_and_expires() {
        let now = Instant::now();
        let (mut a, _) = pair(now);
        let mut d = Defragmenter::new();
        for _ in 0..100 {
            let dgs = seal(&mut a, now, &text(3000), 1000);
            let f = Fragment::parse(&dgs[0]).unwrap();
            assert!(d.push(now, &f).is_none());
        }
        assert_eq!(d.by_index[&B].len(), SLOTS_PER_INDEX);
        assert_eq!(d.stats.abandoned, 100 - SLOTS_PER_INDEX as u64);
        d.expire(now + ASSEMBLY_TIMEOUT);
        assert!(d.is_empty());
        assert_eq!(d.stats.abandoned, 100);
    }

    #[test]
    fn sizes_outside_the_limits_are_not_sealed() {
        let now = Instant::now();
        let (mut a, _) = pair(now);
        let mut empty = Vec::new();
        assert!(a.seal_message(now, &mut empty).is_err());
        let mut big = vec![0u8; MAX_MESSAGE_PLAINTEXT + 1];
        assert!(a.seal_message(now, &mut big).is_err());
        let mut m = text(100);
        let p = a.seal_message(now, &mut m).unwrap();
        assert!(!fragments(&p, &[&m], FRAGMENT_HEADER_LEN, |_, _| {}));
        assert!(fragments(&p, &[&m], FRAGMENT_HEADER_LEN + 1, |_, _| {}));
        assert!(
            !fragments(&p, &[&m[..1]], 100, |_, _| {}),
            "short of the length"
        );
    }

    /// Throughput of sealing and opening 64 KB messages (OpenSSL), for
    /// comparison with `data::tests::throughput` (single 1400-byte
    /// datagrams, ring):
    /// `cargo test --release -p weft-router --lib fragments::tests::throughput -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn throughput() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        let mut body = vec![0x5a; 65_536];
        let n = 20_000;
        let (mut sealing, mut opening) = (0.0, 0.0);
        for _ in 0..n {
            let t = std::time::Instant::now();
            let sealed = a.seal_message_parts(now, &[], &mut body).unwrap();
            sealing += t.elapsed().as_secs_f64();
            let mut message = [&body[..], sealed.tag()].concat();
            let t = std::time::Instant::now();
            let len = b.open_message(now, &sealed.prefix, &mut message).unwrap();
            opening += t.elapsed().as_secs_f64();
            assert_eq!(len, 65_536);
            body.copy_from_slice(&message[..len]);
        }
        let gbps = |secs: f64| n as f64 * 65_536.0 / secs / 1e9;
        println!(
            "64 KB messages: seal {:.2} GB/s, open {:.2} GB/s",
            gbps(sealing),
            gbps(opening)
        );
    }
}
