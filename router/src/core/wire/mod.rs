//! Every byte weft puts on a control connection, and the checked parsers that
//! read them back. `docs/protocol.md` specifies each format byte by byte.
//!
//! Layers, outermost first:
//! 1. [`preamble`]: a fixed 10-byte magic and protocol version range, sent
//!    once by each side as soon as the TCP connection opens.
//! 2. [`framing`]: after the preamble, a stream of length-prefixed frames with
//!    an enforced maximum size.
//! 3. [`control`]: each frame is one postcard-encoded [`control::ControlMessage`]
//!    (features, heartbeats, gossip in its three delivery modes, close).
//! 4. [`topology`]: the payload of the `topology` gossip channel.
//!
//! Postcard (<https://postcard.jamesmunns.com/wire-format>) is the encoding:
//! its format is stable and documented, unlike bincode's (unmaintained, see
//! `docs/dependencies.md`).

pub mod addr;
pub mod control;
pub mod ethernet;
pub mod framing;
pub mod ipv4;
pub mod preamble;
pub mod topology;
pub mod udp;
pub mod vnet;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why bytes from the network could not be understood.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error(
        "bad magic: the remote end is not a weft router (or speaks an incompatible pre-release protocol)"
    )]
    BadMagic,
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge { len: usize, max: usize },
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("{what} has {extra} trailing bytes after a complete message")]
    TrailingBytes { what: &'static str, extra: usize },
}

/// Encodes a wire value with postcard.
///
/// Only our own in-memory values reach this, and postcard's serializer can
/// only fail for types we never use (maps with non-string keys are fine; the
/// failure modes are unsized sequences), so an error here is a programming
/// bug; we still return an empty buffer rather than panic in a daemon.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    match postcard::to_stdvec(value) {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::error!(error = %e, "BUG: failed to encode a wire message");
            Vec::new()
        }
    }
}

/// Decodes exactly one value from `bytes`, rejecting trailing garbage.
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, WireError> {
    let (value, rest) =
        postcard::take_from_bytes::<T>(bytes).map_err(|e| WireError::Malformed {
            what,
            detail: e.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes {
            what,
            extra: rest.len(),
        });
    }
    Ok(value)
}
