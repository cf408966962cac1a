//! Length-prefixed frames on the control connection.
//!
//! ```text
//! offset  size  field
//! 0       4     payload length N, unsigned big-endian, 0 < N <= MAX_FRAME_LEN
//! 4       N     payload (one postcard-encoded ControlMessage)
//! ```
//!
//! The length is checked before any payload is buffered, so a peer claiming a
//! 4 GiB frame costs us four bytes of memory, not four gigabytes.

use super::WireError;

/// Largest frame payload accepted or sent. Full topology state is split into
/// chunks well below this (see `topology::FULL_STATE_CHUNK`).
pub const MAX_FRAME_LEN: usize = 1 << 20;

pub const LENGTH_PREFIX: usize = 4;

/// Prefixes `payload` with its length. Callers keep payloads under
/// [`MAX_FRAME_LEN`]; a larger one is a local bug and is reported as such.
pub fn encode_frame(payload: &[u8]) -> Result<Vec<u8>, WireError> {
    if payload.is_empty() || payload.len() > MAX_FRAME_LEN {
        return Err(WireError::FrameTooLarge {
            len: payload.len(),
            max: MAX_FRAME_LEN,
        });
    }
    let mut out = Vec::with_capacity(LENGTH_PREFIX + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// Reassembles frames from a byte stream delivered in arbitrary pieces.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out as frames; compacted lazily.
    start: usize,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete frame's payload, `Ok(None)` if more bytes are
    /// needed, or an error if the stream is unusable (the caller must then
    /// close the connection: framing cannot resynchronise).
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        let avail = &self.buf[self.start..];
        if avail.len() < LENGTH_PREFIX {
            self.compact();
            return Ok(None);
        }
        let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
        if len == 0 || len > MAX_FRAME_LEN {
            return Err(WireError::FrameTooLarge {
                len,
                max: MAX_FRAME_LEN,
            });
        }
        if avail.len() < LENGTH_PREFIX + len {
            self.compact();
            return Ok(None);
        }
        let frame = avail[LENGTH_PREFIX..LENGTH_PREFIX + len].to_vec();
        self.start += LENGTH_PREFIX + len;
        Ok(Some(frame))
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frame_layout_is_big_endian_length_then_payload() {
        assert_eq!(
            encode_frame(&[0xaa, 0xbb]).unwrap(),
            [0, 0, 0, 2, 0xaa, 0xbb]
        );
    }

    #[test]
    fn zero_and_oversized_lengths_are_rejected() {
        let mut d = FrameDecoder::new();
        d.push(&[0, 0, 0, 0]);
        assert!(d.next_frame().is_err());
        let mut d = FrameDecoder::new();
        d.push(&[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            d.next_frame(),
            Err(WireError::FrameTooLarge {
                len: 0xffff_ffff,
                max: MAX_FRAME_LEN
            })
        );
        assert!(encode_frame(&vec![0; MAX_FRAME_LEN + 1]).is_err());
        assert!(encode_frame(&[]).is_err());
    }

    proptest! {
        #[test]
        fn frames_survive_any_split(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 1..8),
            cuts in proptest::collection::vec(1usize..50, 0..40),
        ) {
            let stream: Vec<u8> = payloads.iter().flat_map(|p| encode_frame(p).unwrap()).collect();
            let mut d = FrameDecoder::new();
            let mut out = Vec::new();
            let mut pos = 0;
            for cut in cuts.iter().copied().chain(std::iter::repeat(64)) {
                if pos >= stream.len() { break; }
                let end = (pos + cut).min(stream.len());
                d.push(&stream[pos..end]);
                pos = end;
                while let Some(f) = d.next_frame().unwrap() { out.push(f); }
            }
            prop_assert_eq!(out, payloads);
            prop_assert_eq!(d.buffered(), 0);
        }
    }
}
