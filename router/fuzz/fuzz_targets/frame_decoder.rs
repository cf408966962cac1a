//! `FrameDecoder` fed arbitrary bytes in arbitrary reads.
//!
//! Input: byte 0 is the number `n` (mod 8) of read-size bytes that follow
//! (each `b` means a read of `b + 1` bytes, cycled; none means one read);
//! the rest is the stream. However the stream is cut, the decoder must
//! return the same frames and the same error as when given it whole, every
//! frame must hold 1..=MAX_FRAME_LEN bytes, and every byte pushed must be
//! either in a returned frame (plus its length prefix) or still buffered.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_router::core::wire::framing::{FrameDecoder, LENGTH_PREFIX, MAX_FRAME_LEN};
use weft_router_fuzz::split;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (sizes, stream) = rest.split_at(usize::from(n % 8).min(rest.len()));

    let (whole_frames, whole_err) = decode(&[stream]);
    let (frames, err) = decode(&split(sizes, stream));
    assert_eq!(frames, whole_frames);
    assert_eq!(err, whole_err);
});

/// Pushes each read and drains frames after it, stopping at the first error
/// as a connection would.
fn decode(reads: &[&[u8]]) -> (Vec<Vec<u8>>, Option<String>) {
    let mut d = FrameDecoder::new();
    let mut frames = Vec::new();
    let (mut pushed, mut consumed) = (0, 0);
    for read in reads {
        d.push(read);
        pushed += read.len();
        loop {
            match d.next_frame() {
                Ok(Some(f)) => {
                    assert!(
                        (1..=MAX_FRAME_LEN).contains(&f.len()),
                        "frame of {} bytes",
                        f.len()
                    );
                    consumed += LENGTH_PREFIX + f.len();
                    frames.push(f);
                }
                Ok(None) => break,
                Err(e) => return (frames, Some(e.to_string())),
            }
        }
        assert_eq!(pushed, consumed + d.buffered());
    }
    (frames, None)
}
