//! The control stream's record layer after the handshake: the byte stream
//! is cut into records of at most [`MAX_RECORD_PLAINTEXT`] bytes, each
//! sent as a u16 big-endian length and a Noise transport message
//! (ChaCha20-Poly1305 ciphertext and tag, nonce = record number).
//!
//! TCP delivers records in order, so the implicit Noise nonce doubles as
//! the replay and reordering check: any dropped, repeated or reordered
//! record fails to authenticate.

use snow::TransportState;
use thiserror::Error;

/// The Poly1305 tag of each record.
const TAG_LEN: usize = 16;
/// The u16 length prefix of each record.
pub const LENGTH_PREFIX: usize = 2;
/// Longest record body (Noise's message limit).
pub const MAX_RECORD_LEN: usize = 65535;
/// Longest plaintext in one record.
pub const MAX_RECORD_PLAINTEXT: usize = MAX_RECORD_LEN - TAG_LEN;

/// Why the control channel failed. After any error the channel refuses
/// everything: the connection must be closed.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum ChannelError {
    /// A record shorter than its tag.
    #[error("malformed encrypted record of {0} bytes")]
    Malformed(usize),
    /// A record failed to authenticate: tampering, or bytes lost or
    /// reordered in the stream.
    #[error("control channel authentication failed (tampering?)")]
    AuthFailed,
    /// The 2^64 record counter ran out.
    #[error("control channel record counter exhausted")]
    Exhausted,
    /// An earlier error ended the channel.
    #[error("control channel already failed")]
    Failed,
}

/// Encrypts and decrypts the control stream of one connection.
pub struct SecureChannel {
    transport: Box<TransportState>,
    /// Bytes of an incomplete record.
    pending: Vec<u8>,
    failed: bool,
}

impl SecureChannel {
    pub(crate) fn new(transport: TransportState) -> SecureChannel {
        SecureChannel {
            transport: Box::new(transport),
            pending: Vec::new(),
            failed: false,
        }
    }

    /// Appends the records carrying `plaintext` to `out`. An empty
    /// plaintext produces no record.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), ChannelError> {
        if self.failed {
            return Err(ChannelError::Failed);
        }
        for chunk in plaintext.chunks(MAX_RECORD_PLAINTEXT) {
            let start = out.len();
            let len = chunk.len() + TAG_LEN;
            out.resize(start + LENGTH_PREFIX + len, 0);
            // `len` fits: chunks are at most MAX_RECORD_PLAINTEXT.
            out[start..start + LENGTH_PREFIX].copy_from_slice(&(len as u16).to_be_bytes());
            if self
                .transport
                .write_message(chunk, &mut out[start + LENGTH_PREFIX..])
                .is_err()
            {
                out.truncate(start);
                self.failed = true;
                return Err(ChannelError::Exhausted);
            }
        }
        Ok(())
    }

    /// Feeds bytes read from the stream; appends the plaintext of every
    /// complete record to `out` and keeps an incomplete one for the next
    /// call.
    pub fn open(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), ChannelError> {
        if self.failed {
            return Err(ChannelError::Failed);
        }
        self.pending.extend_from_slice(input);
        let mut pos = 0;
        let result = loop {
            let rest = &self.pending[pos..];
            let Some(prefix) = rest.first_chunk::<LENGTH_PREFIX>() else {
                break Ok(());
            };
            let len = usize::from(u16::from_be_bytes(*prefix));
            if len < TAG_LEN {
                break Err(ChannelError::Malformed(len));
            }
            let Some(record) = rest.get(LENGTH_PREFIX..LENGTH_PREFIX + len) else {
                break Ok(());
            };
            let start = out.len();
            out.resize(start + len - TAG_LEN, 0);
            match self.transport.read_message(record, &mut out[start..]) {
                Ok(n) => out.truncate(start + n),
                Err(_) => {
                    out.truncate(start);
                    break Err(ChannelError::AuthFailed);
                }
            }
            pos += LENGTH_PREFIX + len;
        };
        if result.is_err() {
            self.failed = true;
            self.pending = Vec::new();
        } else {
            self.pending.drain(..pos);
        }
        result
    }

    /// Bytes of an incomplete record held for the next [`open`](Self::open).
    pub fn buffered(&self) -> usize {
        self.pending.len()
    }
}

impl std::fmt::Debug for SecureChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureChannel")
            .field("buffered", &self.pending.len())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::crypto::handshake::tests::established_pair;

    #[test]
    fn round_trip_in_any_split() {
        let (mut a, mut b) = established_pair();
        let message: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut wire = Vec::new();
        a.seal(&message, &mut wire).unwrap();
        a.seal(b"", &mut wire).unwrap();
        a.seal(b"tail", &mut wire).unwrap();
        // 200000 bytes need 4 records, "tail" one more.
        assert_eq!(wire.len(), 200_000 + 4 + 5 * (LENGTH_PREFIX + TAG_LEN));
        let mut got = Vec::new();
        for piece in wire.chunks(7777) {
            b.open(piece, &mut got).unwrap();
        }
        assert_eq!(b.buffered(), 0);
        assert_eq!(&got[..200_000], &message[..]);
        assert_eq!(&got[200_000..], b"tail");

        let mut back = Vec::new();
        b.seal(b"reply", &mut back).unwrap();
        let mut got = Vec::new();
        for byte in back.chunks(1) {
            a.open(byte, &mut got).unwrap();
        }
        assert_eq!(got, b"reply");
    }

    #[test]
    fn tampering_reordering_and_short_records_fail_for_good() {
        let (mut a, mut b) = established_pair();
        let mut wire = Vec::new();
        a.seal(b"one", &mut wire).unwrap();
        let first = wire.clone();
        a.seal(b"two", &mut wire).unwrap();
        let second = wire[first.len()..].to_vec();

        let mut out = Vec::new();
        assert_eq!(b.open(&second, &mut out), Err(ChannelError::AuthFailed));
        assert_eq!(b.open(&first, &mut out), Err(ChannelError::Failed));
        assert!(out.is_empty());

        let (mut a, mut b) = established_pair();
        let mut wire = Vec::new();
        a.seal(b"one", &mut wire).unwrap();
        wire[5] ^= 1;
        assert_eq!(b.open(&wire, &mut out), Err(ChannelError::AuthFailed));

        let (_, mut b) = established_pair();
        assert_eq!(b.open(&[0, 15], &mut out), Err(ChannelError::Malformed(15)));
        let mut sink = Vec::new();
        assert_eq!(b.seal(b"x", &mut sink), Err(ChannelError::Failed));
    }
}
