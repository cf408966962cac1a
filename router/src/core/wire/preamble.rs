//! The connection preamble: magic bytes and the protocol version range.
//!
//! ```text
//! offset  size  field
//! 0       8     magic "weft\r\n\x1a\n"
//! 8       1     lowest protocol version the sender speaks
//! 9       1     highest protocol version the sender speaks
//! ```
//!
//! The magic borrows PNG's trick: CR-LF and ^Z catch a transport that
//! mangles line endings, and a fixed prefix lets us reject a stray HTTP
//! client or port scanner after 8 bytes, before allocating anything.

use std::ops::RangeInclusive;

use super::WireError;

pub const MAGIC: [u8; 8] = *b"weft\r\n\x1a\n";
pub const PREAMBLE_LEN: usize = 10;

/// Protocol versions this build speaks (docs/protocol.md, "Versioning").
///
/// Version 2 is the layout on the wire since encrypted control channels
/// rekey in band and a refused key is answered with a key refusal; builds
/// from before that also said 1, so 1 is no longer spoken: such a router
/// is refused at the preamble, naming both ranges, instead of losing its
/// connections at the first rekey.
pub const PROTOCOL_MIN: u8 = 2;
pub const PROTOCOL_MAX: u8 = 2;

/// A parsed preamble.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preamble {
    pub min_version: u8,
    pub max_version: u8,
}

impl Preamble {
    pub fn new(versions: RangeInclusive<u8>) -> Self {
        Self {
            min_version: *versions.start(),
            max_version: *versions.end(),
        }
    }

    pub fn emit(&self) -> [u8; PREAMBLE_LEN] {
        let mut out = [0u8; PREAMBLE_LEN];
        out[..8].copy_from_slice(&MAGIC);
        out[8] = self.min_version;
        out[9] = self.max_version;
        out
    }

    /// Parses a preamble from the start of `bytes`.
    ///
    /// Returns `Ok(None)` while fewer than [`PREAMBLE_LEN`] bytes have arrived
    /// but everything so far matches the magic, so garbage is rejected as
    /// early as its first wrong byte.
    pub fn parse(bytes: &[u8]) -> Result<Option<Self>, WireError> {
        let seen = bytes.len().min(MAGIC.len());
        if bytes[..seen] != MAGIC[..seen] {
            return Err(WireError::BadMagic);
        }
        if bytes.len() < PREAMBLE_LEN {
            return Ok(None);
        }
        let (min_version, max_version) = (bytes[8], bytes[9]);
        if min_version > max_version {
            return Err(WireError::Malformed {
                what: "preamble",
                detail: format!("version range {min_version}..={max_version} is empty"),
            });
        }
        Ok(Some(Self {
            min_version,
            max_version,
        }))
    }

    /// The highest version both sides speak, if any.
    pub fn negotiate(&self, theirs: &Preamble) -> Option<u8> {
        let high = self.max_version.min(theirs.max_version);
        let low = self.min_version.max(theirs.min_version);
        (high >= low).then_some(high)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emits_the_documented_bytes() {
        let bytes = Preamble::new(1..=3).emit();
        assert_eq!(
            bytes,
            [b'w', b'e', b'f', b't', 0x0d, 0x0a, 0x1a, 0x0a, 0x01, 0x03]
        );
        assert_eq!(
            Preamble::new(PROTOCOL_MIN..=PROTOCOL_MAX).emit(),
            [b'w', b'e', b'f', b't', 0x0d, 0x0a, 0x1a, 0x0a, 0x02, 0x02],
            "this build's preamble, as docs/protocol.md shows it"
        );
    }

    #[test]
    fn parses_incrementally_and_rejects_garbage_early() {
        let bytes = Preamble::new(1..=2).emit();
        for cut in 0..PREAMBLE_LEN {
            assert_eq!(Preamble::parse(&bytes[..cut]), Ok(None));
        }
        assert_eq!(Preamble::parse(&bytes), Ok(Some(Preamble::new(1..=2))));
        assert_eq!(Preamble::parse(b"GET / HTTP/1.1"), Err(WireError::BadMagic));
        assert_eq!(Preamble::parse(b"G"), Err(WireError::BadMagic));
    }

    #[test]
    fn rejects_an_empty_version_range() {
        let mut bytes = Preamble::new(1..=1).emit();
        bytes[8] = 2;
        assert!(matches!(
            Preamble::parse(&bytes),
            Err(WireError::Malformed { .. })
        ));
    }

    #[test]
    fn negotiates_the_highest_common_version() {
        let a = Preamble::new(1..=3);
        assert_eq!(a.negotiate(&Preamble::new(2..=5)), Some(3));
        assert_eq!(a.negotiate(&Preamble::new(3..=3)), Some(3));
        assert_eq!(a.negotiate(&Preamble::new(4..=5)), None);
        assert_eq!(Preamble::new(2..=2).negotiate(&Preamble::new(1..=1)), None);
    }
}
