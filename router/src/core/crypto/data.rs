//! Encrypted UDP datagrams of the data plane: one [`DataSession`] per
//! connection (hop by hop), keyed by the handshake's [`DataKeys`].
//!
//! Datagram layout (`docs/security.md`, "Data datagrams"):
//!
//! ```text
//!  0      1  magic 0xfd (plaintext weft datagrams start with 0xfe)
//!  1      1  key epoch (u8, wrapping)
//!  2      2  reserved, 0
//!  4      4  receiver index (u32 BE), chosen by the receiver
//!  8      8  counter (u64 BE)
//! 16    len  ChaCha20-Poly1305 ciphertext of the inner weft datagram
//! 16+len 16  Poly1305 tag
//! ```
//!
//! Datagrams too large for the path go as sealed messages in fragments
//! instead ([`seal_message`](DataSession::seal_message), `fragments.rs`),
//! drawing on the same counter.
//!
//! The nonce is 4 zero bytes then the counter as u64 little-endian (the
//! Noise and WireGuard convention); the additional data is bytes 0..16, so
//! every header byte is authenticated.
//!
//! Rekeying is sender-driven and needs no messages: after
//! [`DataLimits::rekey_after_time`] or [`DataLimits::rekey_after_packets`]
//! the sender derives `key' = HKDF(key, "weft data rekey v1")`, bumps the
//! epoch and restarts its counter. The receiver derives the same chain on
//! demand, switches when a datagram authenticates under a newer epoch, and
//! keeps the previous epoch for [`DataLimits::old_epoch_overlap`] so
//! datagrams still in flight are not lost.

use std::mem::MaybeUninit;
use std::time::{Duration, Instant};

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use thiserror::Error;
use zeroize::{Zeroize, Zeroizing};

use super::fragments::{MAX_MESSAGE_PLAINTEXT, MessagePrefix};
use super::kdf::hkdf32;
use super::replay::{ReplayError, ReplayWindow};

/// First byte of every encrypted data datagram.
pub const MAGIC: u8 = 0xfd;
/// Bytes before the ciphertext.
pub const HEADER_LEN: usize = 16;
/// The Poly1305 tag after the ciphertext.
pub const TAG_LEN: usize = 16;
/// Bytes encryption adds to a datagram; weft's MTU budget reserves
/// `CRYPTO_RESERVE = 32` for exactly this.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// How many epochs ahead of the current one a receiver tries. More than one
/// so that a direction whose every datagram of an epoch was lost (a quiet
/// sender that rekeyed by time twice) does not stall for good; small so a
/// forger cannot make the receiver derive many keys.
pub const MAX_EPOCH_SKIP: u8 = 4;

const REKEY_LABEL: &[u8] = b"weft data rekey v1";

/// Header field offsets; sealed-message fragments share the first 16
/// bytes' layout (`fragments.rs`).
pub(super) mod field {
    use std::ops::Range;
    pub const MAGIC: usize = 0;
    pub const EPOCH: usize = 1;
    pub const RESERVED: Range<usize> = 2..4;
    pub const INDEX: Range<usize> = 4..8;
    pub const COUNTER: Range<usize> = 8..16;
}

/// When a sender moves to the next key, and how long a receiver keeps the
/// previous one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataLimits {
    /// Rekey after this long in one epoch (WireGuard's `REKEY_AFTER_TIME`).
    pub rekey_after_time: Duration,
    /// Rekey after this many datagrams or sealed messages in one epoch.
    pub rekey_after_packets: u64,
    /// Keep the previous epoch's key and replay window this long after a
    /// newer epoch authenticated, for reordered datagrams.
    pub old_epoch_overlap: Duration,
}

impl Default for DataLimits {
    /// 120 s or 2^30 datagrams, whichever comes first, and a 10 s overlap.
    /// ChaCha20-Poly1305 itself is safe far beyond 2^30 messages per key;
    /// the limits bound how much one leaked key exposes.
    fn default() -> Self {
        DataLimits {
            rekey_after_time: Duration::from_secs(120),
            rekey_after_packets: 1 << 30,
            old_epoch_overlap: Duration::from_secs(10),
        }
    }
}

/// Why an incoming datagram was dropped. [`as_str`](Self::as_str) names
/// each for drop counters.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum DataError {
    /// Shorter than header plus tag.
    #[error("datagram too short to be encrypted")]
    Truncated,
    /// First byte is not [`MAGIC`].
    #[error("not an encrypted weft datagram")]
    BadMagic,
    /// Receiver index is not this session's.
    #[error("unknown receiver index")]
    UnknownIndex,
    /// An epoch neither current, recent nor a few ahead.
    #[error("unknown key epoch")]
    UnknownEpoch,
    /// The tag did not verify: forged, corrupted or under another key.
    #[error("authentication failed")]
    AuthFailed,
    /// Counter already seen, or too old to tell.
    #[error("replayed datagram: {0}")]
    Replay(ReplayError),
    /// A fragment of a sealed message whose lengths do not add up.
    #[error("malformed fragment of a sealed message")]
    BadFragment,
}

impl DataError {
    /// A snake_case name for counting drops by reason.
    pub fn as_str(&self) -> &'static str {
        match self {
            DataError::Truncated => "truncated",
            DataError::BadMagic => "bad_magic",
            DataError::UnknownIndex => "unknown_index",
            DataError::UnknownEpoch => "unknown_epoch",
            DataError::AuthFailed => "auth_failed",
            DataError::Replay(ReplayError::Duplicate) => "replay_duplicate",
            DataError::Replay(ReplayError::TooOld) => "replay_too_old",
            DataError::BadFragment => "bad_fragment",
        }
    }
}

/// Why a datagram could not be sealed.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum SealError {
    /// The buffer has no room for header and tag around the plaintext.
    #[error("buffer of {len} bytes cannot hold {plaintext} plaintext bytes plus {OVERHEAD}")]
    BufferTooSmall {
        /// The buffer's length.
        len: usize,
        /// The plaintext length asked for.
        plaintext: usize,
    },
    /// A message is empty or larger than any frame weft carries.
    #[error("a sealed message of {plaintext} bytes is outside 1..={MAX_MESSAGE_PLAINTEXT}")]
    MessageSize {
        /// The plaintext length asked for.
        plaintext: usize,
    },
}

/// The two data-plane keys a handshake yields, one per direction,
/// independent of the control channel's keys. Zeroized when dropped.
pub struct DataKeys {
    send: Zeroizing<[u8; 32]>,
    recv: Zeroizing<[u8; 32]>,
}

impl DataKeys {
    /// Keys for this side: `send` encrypts what it sends, `recv` what it
    /// receives (the peer has them swapped).
    pub fn new(send: Zeroizing<[u8; 32]>, recv: Zeroizing<[u8; 32]>) -> DataKeys {
        DataKeys { send, recv }
    }
}

impl std::fmt::Debug for DataKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKeys(..)")
    }
}

/// Rekey and epoch counters of a session, for status and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataStats {
    /// The epoch datagrams are sent under.
    pub send_epoch: u8,
    /// The newest epoch received.
    pub recv_epoch: u8,
    /// Sender-side rekeys so far.
    pub send_rekeys: u64,
    /// Receiver-side epoch switches so far.
    pub recv_rekeys: u64,
}

/// The nonce and key for one message, taken from a session to seal
/// ([`DataSession::message_key`]) or open
/// ([`DataSession::message_open_key`]) it without holding the session;
/// the key copy is wiped when dropped.
pub struct MessageKey {
    prefix: MessagePrefix,
    key: Zeroizing<[u8; 32]>,
}

impl MessageKey {
    /// Seals `head` then `body` (encrypted in place), whose lengths must be
    /// the ones the key was taken for.
    pub fn seal(self, head: &[u8], body: &mut [u8]) -> Result<SealedMessage, SealError> {
        let plaintext = head.len() + body.len();
        if plaintext + TAG_LEN != self.prefix.len as usize || head.len() > MAX_MESSAGE_HEAD {
            return Err(SealError::MessageSize { plaintext });
        }
        let mut sealed = SealedMessage {
            prefix: self.prefix,
            head: [0; MAX_MESSAGE_HEAD + 1],
            head_len: head.len(),
            tag: [0; TAG_LEN],
        };
        let aad = self.prefix.to_bytes();
        large::seal(
            &self.key,
            self.prefix.counter,
            &aad,
            head,
            &mut sealed.head,
            body,
            &mut sealed.tag,
        )
        .map_err(|_| SealError::MessageSize { plaintext })?;
        Ok(sealed)
    }

    /// Authenticates and decrypts a whole message (ciphertext then tag) in
    /// place and returns the plaintext's length. On error the buffer holds
    /// garbage, never to be released.
    pub fn open(self, message: &mut [u8]) -> Result<usize, DataError> {
        if message.len() != self.prefix.len as usize {
            return Err(DataError::BadFragment);
        }
        let aad = self.prefix.to_bytes();
        large::open(&self.key, self.prefix.counter, &aad, message)
            .map_err(|()| DataError::AuthFailed)
    }
}

impl std::fmt::Debug for MessageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageKey")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The longest head [`DataSession::seal_message_parts`] takes.
pub const MAX_MESSAGE_HEAD: usize = 32;

/// What sealing a message in parts yields besides the body encrypted in
/// place: the prefix, the encrypted head and the tag.
pub struct SealedMessage {
    pub prefix: MessagePrefix,
    /// One byte more than the longest head: OpenSSL asks for a block of
    /// slack when it encrypts out of place.
    head: [u8; MAX_MESSAGE_HEAD + 1],
    head_len: usize,
    tag: [u8; TAG_LEN],
}

impl SealedMessage {
    /// The encrypted head, first on the wire.
    pub fn head(&self) -> &[u8] {
        &self.head[..self.head_len]
    }

    /// The tag, last on the wire.
    pub fn tag(&self) -> &[u8] {
        &self.tag
    }
}

/// Returns the receiver index of an encrypted datagram, so the I/O layer
/// can find its session, or `None` if it cannot be one.
pub fn peek_receiver_index(datagram: &[u8]) -> Option<u32> {
    if datagram.len() < OVERHEAD || datagram[field::MAGIC] != MAGIC {
        return None;
    }
    Some(u32::from_be_bytes(read_array(datagram, field::INDEX)))
}

fn read_array<const N: usize>(bytes: &[u8], range: std::ops::Range<usize>) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[range]);
    out
}

/// The encrypted data plane of one connection.
pub struct DataSession {
    local_index: u32,
    remote_index: u32,
    limits: DataLimits,
    send: SendState,
    recv: RecvState,
    stats: DataStats,
}

struct SendState {
    key: Box<EpochKey>,
    epoch: u8,
    /// The next counter to use.
    counter: u64,
    since: Instant,
}

struct RecvState {
    current: Box<RecvEpoch>,
    epoch: u8,
    /// Keys of epochs `epoch + 1 ..`, derived on demand, at most
    /// [`MAX_EPOCH_SKIP`]. Boxed although in a `Vec`: draining shifts the
    /// elements by copying, which would leave key bytes behind.
    #[allow(clippy::vec_box)]
    ahead: Vec<Box<EpochKey>>,
    /// The epoch before `epoch`, until the deadline.
    previous: Option<(Box<RecvEpoch>, Instant)>,
}

struct RecvEpoch {
    key: Box<EpochKey>,
    window: ReplayWindow,
}

/// Which key an incoming datagram's epoch selects.
#[derive(Clone, Copy)]
enum Slot {
    Current,
    Previous,
    Ahead(usize),
}

impl DataSession {
    /// A session that sends to the peer's `remote_index` and receives on
    /// `local_index`, both epochs starting at 0 at `now`.
    pub fn new(
        local_index: u32,
        remote_index: u32,
        keys: DataKeys,
        now: Instant,
        limits: DataLimits,
    ) -> DataSession {
        let DataKeys { send, recv } = keys;
        DataSession {
            local_index,
            remote_index,
            limits,
            send: SendState {
                key: EpochKey::new(send),
                epoch: 0,
                counter: 0,
                since: now,
            },
            recv: RecvState {
                current: Box::new(RecvEpoch {
                    key: EpochKey::new(recv),
                    window: ReplayWindow::new(),
                }),
                epoch: 0,
                ahead: Vec::with_capacity(usize::from(MAX_EPOCH_SKIP)),
                previous: None,
            },
            stats: DataStats::default(),
        }
    }

    /// The index the peer puts in datagrams for this session.
    pub fn local_index(&self) -> u32 {
        self.local_index
    }

    /// Epochs and rekey counts.
    pub fn stats(&self) -> DataStats {
        self.stats
    }

    /// Encrypts in place. `buf` holds [`HEADER_LEN`] bytes of headroom,
    /// then `plaintext_len` bytes of plaintext, then at least [`TAG_LEN`]
    /// bytes of room; header and tag are written around the plaintext.
    /// Returns the datagram's length, `plaintext_len + OVERHEAD`.
    pub fn seal(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        plaintext_len: usize,
    ) -> Result<usize, SealError> {
        let total = plaintext_len
            .checked_add(OVERHEAD)
            .filter(|&t| t <= buf.len())
            .ok_or(SealError::BufferTooSmall {
                len: buf.len(),
                plaintext: plaintext_len,
            })?;
        let (epoch, counter) = self.next_nonce(now);
        buf[field::MAGIC] = MAGIC;
        buf[field::EPOCH] = epoch;
        buf[field::RESERVED].fill(0);
        buf[field::INDEX].copy_from_slice(&self.remote_index.to_be_bytes());
        buf[field::COUNTER].copy_from_slice(&counter.to_be_bytes());
        let (header, rest) = buf.split_at_mut(HEADER_LEN);
        let (body, tail) = rest.split_at_mut(plaintext_len);
        // Fails only for inputs longer than ChaCha20's 256 GiB limit.
        let tag = self
            .send
            .key
            .aead()
            .seal_in_place_separate_tag(nonce(counter), Aad::from(&header[..]), body)
            .map_err(|_| SealError::BufferTooSmall {
                len: total,
                plaintext: plaintext_len,
            })?;
        tail[..TAG_LEN].copy_from_slice(tag.as_ref());
        Ok(total)
    }

    /// The epoch and counter of the next datagram or message, rekeying
    /// first when the limits say so.
    fn next_nonce(&mut self, now: Instant) -> (u8, u64) {
        self.expire_previous(now);
        let s = &mut self.send;
        if s.counter >= self.limits.rekey_after_packets
            || now.saturating_duration_since(s.since) >= self.limits.rekey_after_time
        {
            s.key = s.key.next();
            s.epoch = s.epoch.wrapping_add(1);
            s.counter = 0;
            s.since = now;
            self.stats.send_rekeys += 1;
            self.stats.send_epoch = s.epoch;
        }
        // The check above rekeys at `rekey_after_packets <= u64::MAX`, so
        // the counter never wraps and a nonce is never reused: that check
        // is the hard stop.
        let counter = s.counter;
        s.counter += 1;
        (s.epoch, counter)
    }

    /// Seals `message` (a plaintext datagram too large for the path) in
    /// place as one AEAD message: the ciphertext replaces the plaintext and
    /// the tag is appended. Returns the fragment header prefix that
    /// [`fragments`](super::fragments::fragments) puts in front of every
    /// piece; it is also the additional data. Messages and datagrams share
    /// one counter, so one replay window covers both.
    pub fn seal_message(
        &mut self,
        now: Instant,
        message: &mut Vec<u8>,
    ) -> Result<MessagePrefix, SealError> {
        let sealed = self.seal_message_parts(now, &[], message)?;
        message.extend_from_slice(sealed.tag());
        Ok(sealed.prefix)
    }

    /// Seals the message `head` then `body` without copying the body: the
    /// body is encrypted in place, the short head (at most
    /// [`MAX_MESSAGE_HEAD`] bytes: a datagram header in front of a frame
    /// that stays in its read buffer) into the returned value, with the
    /// tag. The message on the wire is encrypted head, body, tag.
    pub fn seal_message_parts(
        &mut self,
        now: Instant,
        head: &[u8],
        body: &mut [u8],
    ) -> Result<SealedMessage, SealError> {
        self.message_key(now, head.len(), body.len())?
            .seal(head, body)
    }

    /// Takes the nonce and a copy of the key for one message of
    /// `head_len + body_len` plaintext bytes, so that the caller can
    /// encrypt it ([`MessageKey::seal`]) without holding the session: the
    /// thread opening datagrams from the same neighbour is not kept
    /// waiting for 64 KB of encryption.
    pub fn message_key(
        &mut self,
        now: Instant,
        head_len: usize,
        body_len: usize,
    ) -> Result<MessageKey, SealError> {
        let plaintext = head_len + body_len;
        if plaintext == 0 || plaintext > MAX_MESSAGE_PLAINTEXT || head_len > MAX_MESSAGE_HEAD {
            return Err(SealError::MessageSize { plaintext });
        }
        let (epoch, counter) = self.next_nonce(now);
        Ok(MessageKey {
            prefix: MessagePrefix {
                epoch,
                index: self.remote_index,
                counter,
                len: (plaintext + TAG_LEN) as u32,
            },
            key: Zeroizing::new(*self.send.key.raw),
        })
    }

    /// Authenticates and decrypts a reassembled message in place (the
    /// ciphertext and tag that `prefix` describes) and returns the
    /// plaintext's length; it starts at `message[0]`. Replay checks and
    /// epochs work as in [`open`](Self::open). The three steps are public
    /// so that a caller can decrypt without holding the session.
    pub fn open_message(
        &mut self,
        now: Instant,
        prefix: &MessagePrefix,
        message: &mut [u8],
    ) -> Result<usize, DataError> {
        let len = self
            .message_open_key(now, prefix, message.len())?
            .open(message)?;
        self.accept_message(now, prefix)?;
        Ok(len)
    }

    /// Checks a reassembled message of `len` bytes against `prefix` and
    /// the session (index, epoch, replay window, without moving it) and
    /// takes a copy of its key for [`MessageKey::open`].
    pub fn message_open_key(
        &mut self,
        now: Instant,
        prefix: &MessagePrefix,
        len: usize,
    ) -> Result<MessageKey, DataError> {
        if prefix.index != self.local_index {
            return Err(DataError::UnknownIndex);
        }
        if len != prefix.len as usize || len <= TAG_LEN {
            return Err(DataError::BadFragment);
        }
        let (_, key) = self.select(now, prefix.epoch, prefix.counter)?;
        Ok(MessageKey {
            prefix: *prefix,
            key: Zeroizing::new(*key.raw),
        })
    }

    /// Records a message that [`MessageKey::open`] authenticated: checks
    /// the replay window again (a copy may have been accepted meanwhile),
    /// then moves it and, for a newer epoch, switches keys.
    pub fn accept_message(
        &mut self,
        now: Instant,
        prefix: &MessagePrefix,
    ) -> Result<(), DataError> {
        let (slot, _) = self.select(now, prefix.epoch, prefix.counter)?;
        self.accept(now, slot, prefix.epoch, prefix.counter);
        Ok(())
    }

    /// Authenticates and decrypts `datagram` in place and returns the inner
    /// plaintext. The replay window is consulted before decrypting and
    /// updated only after the datagram authenticated, so a forgery changes
    /// nothing. On error the buffer's contents are unspecified.
    pub fn open<'a>(
        &mut self,
        now: Instant,
        datagram: &'a mut [u8],
    ) -> Result<&'a [u8], DataError> {
        if datagram.len() < OVERHEAD {
            return Err(DataError::Truncated);
        }
        if datagram[field::MAGIC] != MAGIC {
            return Err(DataError::BadMagic);
        }
        if u32::from_be_bytes(read_array(datagram, field::INDEX)) != self.local_index {
            return Err(DataError::UnknownIndex);
        }
        let epoch = datagram[field::EPOCH];
        let counter = u64::from_be_bytes(read_array(datagram, field::COUNTER));
        let (header, body) = datagram.split_at_mut(HEADER_LEN);
        let len = self.open_with(now, epoch, counter, |key| {
            key.aead()
                .open_in_place(nonce(counter), Aad::from(&header[..]), body)
                .map(|p| p.len())
                .map_err(|_| ())
        })?;
        Ok(&datagram[HEADER_LEN..HEADER_LEN + len])
    }

    /// Checks the replay window for `counter` under `epoch`, lets `decrypt`
    /// authenticate and decrypt with the epoch's key (it returns the
    /// plaintext's length), and only then moves the window and, for a newer
    /// epoch, switches keys.
    fn open_with(
        &mut self,
        now: Instant,
        epoch: u8,
        counter: u64,
        decrypt: impl FnOnce(&EpochKey) -> Result<usize, ()>,
    ) -> Result<usize, DataError> {
        let (slot, key) = self.select(now, epoch, counter)?;
        let plaintext = decrypt(key).map_err(|()| DataError::AuthFailed)?;
        self.accept(now, slot, epoch, counter);
        Ok(plaintext)
    }

    /// The key `epoch` selects, once the replay window of that epoch says
    /// `counter` is new; keys of epochs ahead are derived on demand.
    fn select(
        &mut self,
        now: Instant,
        epoch: u8,
        counter: u64,
    ) -> Result<(Slot, &EpochKey), DataError> {
        self.expire_previous(now);
        let r = &mut self.recv;
        let slot = match epoch.wrapping_sub(r.epoch) {
            0 => Slot::Current,
            d if d <= MAX_EPOCH_SKIP => Slot::Ahead(usize::from(d - 1)),
            0xff if r.previous.is_some() => Slot::Previous,
            _ => return Err(DataError::UnknownEpoch),
        };
        let key = match slot {
            Slot::Current => {
                r.current.window.check(counter).map_err(DataError::Replay)?;
                &r.current.key
            }
            Slot::Previous => {
                let (prev, _) = r.previous.as_ref().ok_or(DataError::UnknownEpoch)?;
                prev.window.check(counter).map_err(DataError::Replay)?;
                &prev.key
            }
            Slot::Ahead(i) => {
                while r.ahead.len() <= i {
                    let next = r.ahead.last().unwrap_or(&r.current.key).next();
                    r.ahead.push(next);
                }
                &r.ahead[i]
            }
        };
        Ok((slot, key))
    }

    /// Records an authenticated `counter` under `epoch` in `slot`, switching
    /// to a newer epoch's key.
    fn accept(&mut self, now: Instant, slot: Slot, epoch: u8, counter: u64) {
        let r = &mut self.recv;
        match slot {
            Slot::Current => r.current.window.accept(counter),
            Slot::Previous => {
                if let Some((prev, _)) = r.previous.as_mut() {
                    prev.window.accept(counter);
                }
            }
            Slot::Ahead(i) => {
                let mut window = ReplayWindow::new();
                window.accept(counter);
                if let Some(key) = r.ahead.drain(..=i).next_back() {
                    let old =
                        std::mem::replace(&mut r.current, Box::new(RecvEpoch { key, window }));
                    // An epoch skipped entirely had no datagrams in flight
                    // worth waiting for; only a direct predecessor overlaps.
                    r.previous = (i == 0).then(|| (old, now + self.limits.old_epoch_overlap));
                    r.epoch = epoch;
                    self.stats.recv_epoch = epoch;
                    self.stats.recv_rekeys += 1;
                }
            }
        }
    }

    /// Drops the previous receive epoch once its overlap is over.
    fn expire_previous(&mut self, now: Instant) {
        if self
            .recv
            .previous
            .as_ref()
            .is_some_and(|(_, deadline)| now >= *deadline)
        {
            self.recv.previous = None;
        }
    }
}

impl std::fmt::Debug for DataSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataSession")
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// ChaCha20-Poly1305 over whole sealed messages (up to 64 KB), through
/// OpenSSL: its AVX-512 code measured 3.5 GB/s at 64 KB on the benchmark
/// machine against ring's 2.5 GB/s. Single datagrams stay with ring, whose
/// per-call cost is lower (1.9 against 1.3 GB/s at 1.4 KB); both are the
/// same RFC 8439 construction with the same nonce layout, which the tests
/// cross-check (`docs/dependencies.md`).
mod large {
    use openssl::cipher::Cipher;
    use openssl::cipher_ctx::CipherCtx;

    use super::{NONCE_LEN, TAG_LEN};

    fn nonce(counter: u64) -> [u8; NONCE_LEN] {
        let mut n = [0u8; NONCE_LEN];
        n[4..].copy_from_slice(&counter.to_le_bytes());
        n
    }

    /// A context keyed to encrypt or decrypt one message, its additional
    /// data already fed.
    fn keyed(encrypt: bool, key: &[u8; 32], counter: u64, aad: &[u8]) -> Result<CipherCtx, ()> {
        let mut ctx = CipherCtx::new().map_err(drop)?;
        let (cipher, nonce) = (Some(Cipher::chacha20_poly1305()), nonce(counter));
        if encrypt {
            ctx.encrypt_init(cipher, Some(key), Some(&nonce))
        } else {
            ctx.decrypt_init(cipher, Some(key), Some(&nonce))
        }
        .map_err(drop)?;
        ctx.cipher_update(aad, None).map_err(drop)?;
        Ok(ctx)
    }

    /// Encrypts `head` into `head_out` (which has a byte of slack) and
    /// `body` in place, and writes the tag. OpenSSL fails only when it
    /// cannot allocate a context.
    pub fn seal(
        key: &[u8; 32],
        counter: u64,
        aad: &[u8],
        head: &[u8],
        head_out: &mut [u8],
        body: &mut [u8],
        tag: &mut [u8; TAG_LEN],
    ) -> Result<(), ()> {
        let len = body.len();
        let mut ctx = keyed(true, key, counter, aad)?;
        if !head.is_empty() {
            let out = head_out.get_mut(..head.len() + 1).ok_or(())?;
            ctx.cipher_update(head, Some(out)).map_err(drop)?;
        }
        ctx.cipher_update_inplace(body, len).map_err(drop)?;
        ctx.cipher_final(&mut []).map_err(drop)?;
        ctx.tag(tag).map_err(drop)?;
        Ok(())
    }

    /// Decrypts `body` (ciphertext then tag) in place and returns the
    /// plaintext's length, or an error if the tag does not verify. On error
    /// the buffer holds garbage, never released.
    pub fn open(key: &[u8; 32], counter: u64, aad: &[u8], body: &mut [u8]) -> Result<usize, ()> {
        let len = body.len().checked_sub(TAG_LEN).ok_or(())?;
        let (ciphertext, tag) = body.split_at_mut(len);
        let mut ctx = keyed(false, key, counter, aad)?;
        ctx.cipher_update_inplace(ciphertext, len).map_err(drop)?;
        ctx.set_tag(tag).map_err(drop)?;
        ctx.cipher_final(&mut []).map_err(drop)?;
        Ok(len)
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

/// One epoch's key: the raw bytes (for deriving the next epoch) and ring's
/// expanded key, both wiped when dropped.
///
/// ring does not zeroize its keys. `LessSafeKey` owns no heap memory and
/// has no `Drop`, so its bytes are all there is; they live in a
/// `MaybeUninit` (valid for any byte pattern, so overwriting them with
/// zeros is sound and no value of an invalid type ever exists), and the
/// whole `EpochKey` is boxed so moving a session never leaves copies
/// behind. What remains outside our control: the temporary copies ring and
/// `Box::new` make on the stack while the key is built.
struct EpochKey {
    raw: Zeroizing<[u8; 32]>,
    aead: MaybeUninit<LessSafeKey>,
}

impl EpochKey {
    fn new(raw: Zeroizing<[u8; 32]>) -> Box<EpochKey> {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &raw[..])
            .expect("a 32-byte key is what ChaCha20-Poly1305 takes");
        Box::new(EpochKey {
            raw,
            aead: MaybeUninit::new(LessSafeKey::new(unbound)),
        })
    }

    fn aead(&self) -> &LessSafeKey {
        // SAFETY: `aead` is initialised in `new` and only overwritten in
        // `drop`, after which it is never read.
        unsafe { self.aead.assume_init_ref() }
    }

    /// The next epoch's key: `HKDF(salt = "", ikm = key, info = label)`.
    fn next(&self) -> Box<EpochKey> {
        EpochKey::new(hkdf32(&[], &self.raw[..], REKEY_LABEL))
    }
}

impl Drop for EpochKey {
    fn drop(&mut self) {
        self.aead.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A_INDEX: u32 = 0x0a0a_0a0a;
    const B_INDEX: u32 = 0x0b0b_0b0b;

    fn keys(send: u8, recv: u8) -> DataKeys {
        DataKeys::new(Zeroizing::new([send; 32]), Zeroizing::new([recv; 32]))
    }

    fn pair(now: Instant, limits: DataLimits) -> (DataSession, DataSession) {
        (
            DataSession::new(A_INDEX, B_INDEX, keys(1, 2), now, limits),
            DataSession::new(B_INDEX, A_INDEX, keys(2, 1), now, limits),
        )
    }

    fn seal(s: &mut DataSession, now: Instant, plaintext: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; plaintext.len() + OVERHEAD];
        buf[HEADER_LEN..HEADER_LEN + plaintext.len()].copy_from_slice(plaintext);
        let n = s.seal(now, &mut buf, plaintext.len()).unwrap();
        buf.truncate(n);
        buf
    }

    fn open(s: &mut DataSession, now: Instant, datagram: &[u8]) -> Result<Vec<u8>, DataError> {
        let mut buf = datagram.to_vec();
        s.open(now, &mut buf).map(<[u8]>::to_vec)
    }

    #[test]
    fn round_trip_and_header_bytes() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now, DataLimits::default());
        let d = seal(&mut a, now, b"\xfe hello");
        assert_eq!(d.len(), 7 + OVERHEAD);
        assert_eq!(
            d[..HEADER_LEN],
            [
                0xfd, 0, 0, 0, 0x0b, 0x0b, 0x0b, 0x0b, 0, 0, 0, 0, 0, 0, 0, 0
            ]
        );
        assert_eq!(peek_receiver_index(&d), Some(B_INDEX));
        assert_eq!(open(&mut b, now, &d).unwrap(), b"\xfe hello");
        let d = seal(&mut a, now, b"");
        assert_eq!(d[8..16], [0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(open(&mut b, now, &d).unwrap(), b"");
        let back = seal(&mut b, now, b"reply");
        assert_eq!(open(&mut a, now, &back).unwrap(), b"reply");
    }

    /// Pins the cipher, nonce layout and AAD: an independent
    /// ChaCha20-Poly1305 (RFC 8439) of the same inputs gave this tag.
    #[test]
    fn known_answer() {
        let now = Instant::now();
        let mut a = DataSession::new(1, 2, keys(0x11, 0x22), now, DataLimits::default());
        let d = seal(&mut a, now, b"weft");
        let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &[0x11; 32]).unwrap());
        let mut body = b"weft".to_vec();
        let mut nonce_bytes = [0u8; 12];
        nonce_bytes[4..].copy_from_slice(&0u64.to_le_bytes());
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(&d[..16]),
                &mut body,
            )
            .unwrap();
        assert_eq!(d[16..20], body[..]);
        assert_eq!(d[20..], *tag.as_ref());
    }

    #[test]
    fn replays_are_refused() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now, DataLimits::default());
        let d = seal(&mut a, now, b"once");
        assert!(open(&mut b, now, &d).is_ok());
        assert_eq!(
            open(&mut b, now, &d),
            Err(DataError::Replay(ReplayError::Duplicate))
        );
        let mut late = Vec::new();
        for i in 0..9000 {
            let d = seal(&mut a, now, b"x");
            if i == 0 {
                late = d.clone();
            }
            if i > 0 {
                open(&mut b, now, &d).unwrap();
            }
        }
        let err = open(&mut b, now, &late).unwrap_err();
        assert_eq!(err, DataError::Replay(ReplayError::TooOld));
        assert_eq!(err.as_str(), "replay_too_old");
    }

    #[test]
    fn any_flipped_bit_is_refused_and_changes_nothing() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now, DataLimits::default());
        let d = seal(&mut a, now, b"payload bytes");
        for i in 0..d.len() {
            for bit in 0..8 {
                let mut bad = d.clone();
                bad[i] ^= 1 << bit;
                let err = open(&mut b, now, &bad).unwrap_err();
                let expected = match i {
                    0 => DataError::BadMagic,
                    4..8 => DataError::UnknownIndex,
                    1 if (1u8 << bit) <= MAX_EPOCH_SKIP => DataError::AuthFailed,
                    1 => DataError::UnknownEpoch,
                    _ => DataError::AuthFailed,
                };
                assert_eq!(err, expected, "byte {i} bit {bit}");
            }
        }
        assert_eq!(b.stats(), DataStats::default(), "a forgery moved nothing");
        assert_eq!(open(&mut b, now, &d).unwrap(), b"payload bytes");
    }

    #[test]
    fn short_and_foreign_datagrams() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now, DataLimits::default());
        let d = seal(&mut a, now, b"abc");
        for len in 0..OVERHEAD {
            assert_eq!(open(&mut b, now, &d[..len]), Err(DataError::Truncated));
            assert_eq!(peek_receiver_index(&d[..len]), None);
        }
        assert_eq!(
            open(&mut b, now, &d[..d.len() - 1]),
            Err(DataError::AuthFailed)
        );
        let mut plain = d.clone();
        plain[0] = 0xfe;
        assert_eq!(peek_receiver_index(&plain), None);
        assert_eq!(open(&mut a, now, &d), Err(DataError::UnknownIndex));
    }

    #[test]
    fn reordering_within_the_window_is_accepted() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now, DataLimits::default());
        let ds: Vec<_> = (0..100u8).map(|i| seal(&mut a, now, &[i])).collect();
        for i in (0..100).rev() {
            assert_eq!(open(&mut b, now, &ds[i]).unwrap(), [i as u8]);
        }
    }

    #[test]
    fn rekey_by_packets_across_epochs_with_stragglers() {
        let t0 = Instant::now();
        let limits = DataLimits {
            rekey_after_packets: 1000,
            ..DataLimits::default()
        };
        let (mut a, mut b) = pair(t0, limits);
        let mut straggler = None;
        for i in 0..5500u32 {
            let d = seal(&mut a, t0, &i.to_be_bytes());
            assert_eq!(u32::from(d[1]), i / 1000, "epoch of datagram {i}");
            if i % 1000 == 990 {
                // Held back: arrives after the next epoch took over.
                straggler = Some(d);
                continue;
            }
            assert_eq!(open(&mut b, t0, &d).unwrap(), i.to_be_bytes());
            if i % 1000 == 5 && i > 1000 {
                let s = straggler.take().unwrap();
                assert_eq!(open(&mut b, t0, &s).unwrap(), (i - 15).to_be_bytes());
                assert_eq!(
                    open(&mut b, t0, &s),
                    Err(DataError::Replay(ReplayError::Duplicate))
                );
            }
        }
        let stats = b.stats();
        assert_eq!((stats.recv_epoch, stats.recv_rekeys), (5, 5));
        assert_eq!((a.stats().send_epoch, a.stats().send_rekeys), (5, 5));
    }

    #[test]
    fn rekey_by_time_and_the_overlap_ends() {
        let t0 = Instant::now();
        let limits = DataLimits::default();
        let (mut a, mut b) = pair(t0, limits);
        let mut t = t0;
        for epoch in 0..4u8 {
            let held = seal(&mut a, t, b"late");
            assert_eq!(held[1], epoch);
            let d = seal(&mut a, t, b"now");
            assert_eq!(open(&mut b, t, &d).unwrap(), b"now");
            t += limits.rekey_after_time;
            let next = seal(&mut a, t, b"next");
            assert_eq!(next[1], epoch + 1);
            assert_eq!(open(&mut b, t, &next).unwrap(), b"next");
            // In flight across the switch: still accepted during the overlap.
            assert_eq!(
                open(&mut b, t + Duration::from_secs(1), &held).unwrap(),
                b"late"
            );
            assert_eq!(
                open(&mut b, t, &d),
                Err(DataError::Replay(ReplayError::Duplicate))
            );
            // Once the overlap is over the old epoch is gone.
            let after = t + limits.old_epoch_overlap;
            assert_eq!(open(&mut b, after, &d), Err(DataError::UnknownEpoch));
        }
        assert_eq!(b.stats().recv_rekeys, 4);
    }

    #[test]
    fn a_skipped_epoch_is_followed() {
        let t0 = Instant::now();
        let limits = DataLimits {
            rekey_after_packets: 1,
            ..DataLimits::default()
        };
        let (mut a, mut b) = pair(t0, limits);
        let mut last = Vec::new();
        for _ in 0..=MAX_EPOCH_SKIP {
            last = seal(&mut a, t0, b"x");
        }
        assert_eq!(last[1], MAX_EPOCH_SKIP);
        assert_eq!(open(&mut b, t0, &last).unwrap(), b"x");
        assert_eq!(b.stats().recv_epoch, MAX_EPOCH_SKIP);
        let after = seal(&mut a, t0, b"y");
        assert_eq!(open(&mut b, t0, &after).unwrap(), b"y");
    }

    #[test]
    fn a_forged_next_epoch_moves_nothing() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now, DataLimits::default());
        let d = seal(&mut a, now, b"real");
        for epoch in 1..=MAX_EPOCH_SKIP {
            let mut forged = d.clone();
            forged[1] = epoch;
            assert_eq!(open(&mut b, now, &forged), Err(DataError::AuthFailed));
        }
        assert_eq!(b.stats(), DataStats::default());
        assert_eq!(open(&mut b, now, &d).unwrap(), b"real");
    }

    #[test]
    fn the_counter_never_wraps() {
        let now = Instant::now();
        let limits = DataLimits {
            rekey_after_packets: u64::MAX,
            ..DataLimits::default()
        };
        let (mut a, mut b) = pair(now, limits);
        a.send.counter = u64::MAX;
        let mut buf = [0u8; OVERHEAD];
        assert_eq!(a.seal(now, &mut buf, 0), Ok(OVERHEAD));
        assert_eq!(
            (buf[1], &buf[8..16]),
            (1, &[0u8; 8][..]),
            "next epoch, counter 0"
        );
        assert_eq!(b.open(now, &mut buf).unwrap(), b"");
        assert_eq!(
            a.seal(now, &mut buf, 1),
            Err(SealError::BufferTooSmall {
                len: OVERHEAD,
                plaintext: 1
            })
        );
    }

    /// Throughput of seal + open at 1400 bytes:
    /// `cargo test --release -p weft-router --lib data::tests::throughput -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn throughput() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now, DataLimits::default());
        let mut buf = vec![0x5a; 1400 + OVERHEAD];
        let n = 200_000;
        let start = std::time::Instant::now();
        for _ in 0..n {
            let len = a.seal(now, &mut buf, 1400).unwrap();
            let p = b.open(now, &mut buf[..len]).unwrap();
            assert_eq!(p.len(), 1400);
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "seal+open 1400 B: {:.0} MB/s ({:.0} kpps)",
            (n as f64 * 1400.0) / secs / 1e6,
            n as f64 / secs / 1e3
        );
    }
}
