//! The control stream's record layer after the handshake: the byte stream
//! is cut into records of at most [`MAX_RECORD_PLAINTEXT`] bytes, each
//! sent as a u16 big-endian length and a Noise transport message
//! (ChaCha20-Poly1305 ciphertext and tag, nonce = record number).
//!
//! TCP delivers records in order, so the implicit Noise nonce doubles as
//! the replay and reordering check: any dropped, repeated or reordered
//! record fails to authenticate.
//!
//! Each direction moves to a new key (Noise's one-way `REKEY()`, spec
//! section 11.3) after a time or a number of records, like the data
//! sessions, so a key taken from a long-lived connection's memory does not
//! open what the connection carried before. The sender signals it in band
//! with a record of empty plaintext, which nothing else produces, then
//! rekeys; the receiver rekeys after that record authenticates. TCP's
//! ordering keeps both sides in step without a round trip.

use std::time::{Duration, Instant};

use snow::TransportState;
use thiserror::Error;

use super::data::DataLimits;

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
    /// The peer refused this node's key after the handshake (a zero
    /// length and a reason code, `handshake::KEY_REFUSAL`).
    #[error("the peer refused the handshake (reason code {0})")]
    Refused(u8),
}

/// Encrypts and decrypts the control stream of one connection.
pub struct SecureChannel {
    transport: Box<TransportState>,
    /// Bytes of an incomplete record.
    pending: Vec<u8>,
    failed: bool,
    rekey_after_time: Duration,
    rekey_after_records: u64,
    /// When the current sending key sealed its first record.
    send_key_since: Option<Instant>,
    /// Records sealed with the current sending key.
    send_key_records: u64,
    rekeys: ChannelRekeys,
}

/// How often each direction of a channel has moved to a new key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelRekeys {
    pub sent: u64,
    pub received: u64,
}

impl SecureChannel {
    /// A channel that rekeys on the data sessions' default schedule.
    pub(crate) fn new(transport: TransportState) -> SecureChannel {
        let limits = DataLimits::default();
        SecureChannel {
            transport: Box::new(transport),
            pending: Vec::new(),
            failed: false,
            rekey_after_time: limits.rekey_after_time,
            rekey_after_records: limits.rekey_after_packets,
            send_key_since: None,
            send_key_records: 0,
            rekeys: ChannelRekeys::default(),
        }
    }

    /// Rekeys the sending direction after `limits.rekey_after_time` or
    /// after `limits.rekey_after_packets` records, whichever comes first.
    pub fn set_rekey_limits(&mut self, limits: &DataLimits) {
        self.rekey_after_time = limits.rekey_after_time;
        self.rekey_after_records = limits.rekey_after_packets.max(1);
    }

    /// How often each direction has rekeyed.
    pub fn rekeys(&self) -> ChannelRekeys {
        self.rekeys
    }

    /// Appends the records carrying `plaintext` to `out`, preceded by a
    /// rekey record when the sending key is due for replacement. An empty
    /// plaintext produces no record.
    pub fn seal(
        &mut self,
        now: Instant,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), ChannelError> {
        if self.failed {
            return Err(ChannelError::Failed);
        }
        for chunk in plaintext.chunks(MAX_RECORD_PLAINTEXT) {
            let since = *self.send_key_since.get_or_insert(now);
            if self.send_key_records >= self.rekey_after_records
                || now.saturating_duration_since(since) >= self.rekey_after_time
            {
                self.write_record(&[], out)?;
                self.transport.rekey_outgoing();
                self.rekeys.sent += 1;
                self.send_key_since = Some(now);
                self.send_key_records = 0;
            }
            self.write_record(chunk, out)?;
            self.send_key_records += 1;
        }
        Ok(())
    }

    /// Appends one record; `chunk` is at most [`MAX_RECORD_PLAINTEXT`].
    fn write_record(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), ChannelError> {
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
            if len == 0 {
                match rest.get(LENGTH_PREFIX) {
                    Some(&code) => break Err(ChannelError::Refused(code)),
                    None => break Ok(()),
                }
            }
            if len < TAG_LEN {
                break Err(ChannelError::Malformed(len));
            }
            let Some(record) = rest.get(LENGTH_PREFIX..LENGTH_PREFIX + len) else {
                break Ok(());
            };
            let start = out.len();
            out.resize(start + len - TAG_LEN, 0);
            match self.transport.read_message(record, &mut out[start..]) {
                Ok(0) => {
                    // The peer's rekey record: its next record uses the
                    // next key.
                    out.truncate(start);
                    self.transport.rekey_incoming();
                    self.rekeys.received += 1;
                }
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

    fn now() -> Instant {
        // One fixed instant: these tests rekey by record count.
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *START.get_or_init(Instant::now)
    }

    #[test]
    fn round_trip_in_any_split() {
        let (mut a, mut b) = established_pair();
        let message: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut wire = Vec::new();
        a.seal(now(), &message, &mut wire).unwrap();
        a.seal(now(), b"", &mut wire).unwrap();
        a.seal(now(), b"tail", &mut wire).unwrap();
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
        b.seal(now(), b"reply", &mut back).unwrap();
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
        a.seal(now(), b"one", &mut wire).unwrap();
        let first = wire.clone();
        a.seal(now(), b"two", &mut wire).unwrap();
        let second = wire[first.len()..].to_vec();

        let mut out = Vec::new();
        assert_eq!(b.open(&second, &mut out), Err(ChannelError::AuthFailed));
        assert_eq!(b.open(&first, &mut out), Err(ChannelError::Failed));
        assert!(out.is_empty());

        let (mut a, mut b) = established_pair();
        let mut wire = Vec::new();
        a.seal(now(), b"one", &mut wire).unwrap();
        wire[5] ^= 1;
        assert_eq!(b.open(&wire, &mut out), Err(ChannelError::AuthFailed));

        let (_, mut b) = established_pair();
        assert_eq!(b.open(&[0, 15], &mut out), Err(ChannelError::Malformed(15)));
        let mut sink = Vec::new();
        assert_eq!(b.seal(now(), b"x", &mut sink), Err(ChannelError::Failed));
    }

    #[test]
    fn both_directions_rekey_in_step_by_records_and_by_time() {
        let (mut a, mut b) = established_pair();
        let limits = DataLimits {
            rekey_after_packets: 3,
            ..DataLimits::default()
        };
        a.set_rekey_limits(&limits);
        b.set_rekey_limits(&limits);
        let t0 = now();
        let mut wire = Vec::new();
        for i in 0..10u8 {
            a.seal(t0, &[i; 5], &mut wire).unwrap();
        }
        // Records 3, 6 and 9 each need a new key first: three empty
        // rekey records (tag only) precede them.
        assert_eq!(a.rekeys().sent, 3);
        assert_eq!(
            wire.len(),
            10 * (LENGTH_PREFIX + 5 + TAG_LEN) + 3 * (LENGTH_PREFIX + TAG_LEN)
        );
        let mut got = Vec::new();
        for piece in wire.chunks(3) {
            b.open(piece, &mut got).unwrap();
        }
        assert_eq!(got, (0..10u8).flat_map(|i| [i; 5]).collect::<Vec<_>>());
        assert_eq!(b.rekeys().received, 3);

        // The time limit, counted from the key's first record: a
        // heartbeat two minutes on rekeys first.
        let mut wire = Vec::new();
        let later = t0 + limits.rekey_after_time;
        b.seal(t0, b"ping", &mut wire).unwrap();
        b.seal(later - Duration::from_millis(1), b"pong", &mut wire)
            .unwrap();
        assert_eq!(b.rekeys().sent, 0);
        b.seal(later, b"!", &mut wire).unwrap();
        assert_eq!(b.rekeys().sent, 1);
        let mut got = Vec::new();
        a.open(&wire, &mut got).unwrap();
        assert_eq!(got, b"pingpong!");
        assert_eq!(a.rekeys().received, 1);
    }

    #[test]
    fn a_receiver_that_misses_the_rekey_record_fails() {
        // The old key must not open records after the rekey, and a record
        // under the new key is useless to one who dropped the marker.
        let (mut a, mut b) = established_pair();
        a.set_rekey_limits(&DataLimits {
            rekey_after_packets: 1,
            ..DataLimits::default()
        });
        let mut first = Vec::new();
        a.seal(now(), b"one", &mut first).unwrap();
        let mut second = Vec::new();
        a.seal(now(), b"two", &mut second).unwrap();
        let marker = LENGTH_PREFIX + TAG_LEN;
        let mut got = Vec::new();
        b.open(&first, &mut got).unwrap();
        assert_eq!(
            b.open(&second[marker..], &mut got),
            Err(ChannelError::AuthFailed)
        );
        assert_eq!(got, b"one");
    }
}
