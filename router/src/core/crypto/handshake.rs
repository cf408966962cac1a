//! The sans-IO handshake on a control connection, right after weft's
//! preamble: a cleartext `Hello` from each side settles plaintext versus
//! encryption and which password, then three Noise XX messages.
//!
//! ```text
//! initiator (dialled)                      responder (accepted)
//!   Hello_I, [len, XX msg 1: e]     ->
//!                                   <-     Hello_R, [len, XX msg 2: e, ee, s, es + index]
//!   [len, XX msg 3: s, se, psk + index] ->
//! ```
//!
//! `Hello` is 12 bytes (`docs/security.md` has every byte):
//!
//! ```text
//! 0  1  version, 1
//! 1  1  mode: 0 plaintext, 1 noise
//! 2  1  flags: bit 0 = a password is configured (initiator: the psk id is set)
//! 3  1  verdict (responder): 0 proceed, 1 password mismatch; initiator: 0
//! 4  8  psk id of the initiator's password, zeros otherwise
//! ```
//!
//! The responder waits for `Hello_I` before it answers, so it can pick the
//! password the initiator uses among those it accepts and say "password
//! mismatch" in its `Hello_R` instead of leaving the initiator to guess.
//! The initiator pipelines XX message 1 after its `Hello`, so encryption
//! costs no round trip over plain XX. `Hello_I` is the Noise prologue:
//! changing it in flight breaks the handshake. Each Noise message is a u16
//! big-endian length and at most [`MAX_NOISE_MESSAGE`] bytes; the payloads
//! of messages 2 and 3 carry the sender's data-plane receiver index.

use std::sync::Arc;

use snow::params::NoiseParams;
use thiserror::Error;
use zeroize::{Zeroize, Zeroizing};

use super::channel::SecureChannel;
use super::data::DataKeys;
use super::kdf::{Psk, PskId, hkdf32};
use super::keys::{KEY_LEN, PublicKey, StaticKeypair, TrustedKeys};

/// The Noise protocol with a password.
pub const NOISE_PSK: &str = "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s";
/// The Noise protocol with per-node keys only.
pub const NOISE_NO_PSK: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
/// Length of a `Hello`.
pub const HELLO_LEN: usize = 12;
/// The only `Hello` version so far.
pub const HELLO_VERSION: u8 = 1;
/// Upper bound on one Noise handshake message. XX messages here are at
/// most 100 bytes; the bound keeps an unauthenticated peer from making us
/// buffer 64 KiB.
pub const MAX_NOISE_MESSAGE: usize = 1024;

const MODE_PLAINTEXT: u8 = 0;
const MODE_NOISE: u8 = 1;
const FLAG_PSK: u8 = 0b1;
const VERDICT_PROCEED: u8 = 0;
const VERDICT_PASSWORD_MISMATCH: u8 = 1;
/// A refusal's reason: "your static key is not in my trusted keys".
pub const REFUSAL_UNTRUSTED_KEY: u8 = 1;
/// What a side sends, in place of its next Noise message or first
/// record, when it refuses the peer's static key: a zero length (never
/// valid for either) and the reason.
pub const KEY_REFUSAL: [u8; REFUSAL_LEN] = [0, 0, REFUSAL_UNTRUSTED_KEY];
/// Length of a refusal.
pub const REFUSAL_LEN: usize = 3;
/// Length of the receiver index in the payloads of messages 2 and 3.
const INDEX_LEN: usize = 4;
const DATA_I2R_LABEL: &[u8] = b"weft data i2r v1";
const DATA_R2I_LABEL: &[u8] = b"weft data r2i v1";

pub(crate) fn noise_params(psk: bool) -> NoiseParams {
    let name = if psk { NOISE_PSK } else { NOISE_NO_PSK };
    name.parse().expect("the protocol names above are valid")
}

/// Which end of the TCP connection this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Dialled the connection.
    Initiator,
    /// Accepted it.
    Responder,
}

/// The passwords a node uses: `send` when it dials, and every one it
/// accepts from a dialler (`send` included). Accepting an old and a new
/// password together is how a mesh rotates its password without a flag day.
#[derive(Clone, Debug)]
pub struct PskSet {
    send: Psk,
    also_accept: Vec<Psk>,
}

impl PskSet {
    /// Sends with `send`, accepts it and `also_accept`.
    pub fn new(send: Psk, also_accept: Vec<Psk>) -> PskSet {
        PskSet { send, also_accept }
    }

    fn find(&self, id: PskId) -> Option<&Psk> {
        std::iter::once(&self.send)
            .chain(&self.also_accept)
            .find(|p| p.id() == id)
    }
}

/// Encryption is configured but nothing authenticates the peer.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("encryption needs a password, trusted keys or both")]
pub struct NoAuthentication;

/// How this node encrypts: its static key, and how it authenticates peers
/// (a password, a list of trusted keys, or both).
#[derive(Clone, Debug)]
pub struct NoiseConfig {
    keypair: Arc<StaticKeypair>,
    psks: Option<Arc<PskSet>>,
    trusted: Option<Arc<TrustedKeys>>,
}

impl NoiseConfig {
    /// Refuses a configuration with neither password nor trusted keys:
    /// that would encrypt for anyone who connects.
    pub fn new(
        keypair: Arc<StaticKeypair>,
        psks: Option<Arc<PskSet>>,
        trusted: Option<Arc<TrustedKeys>>,
    ) -> Result<NoiseConfig, NoAuthentication> {
        if psks.is_none() && trusted.is_none() {
            return Err(NoAuthentication);
        }
        Ok(NoiseConfig {
            keypair,
            psks,
            trusted,
        })
    }

    /// Whether peers are authenticated by a password.
    pub fn has_password(&self) -> bool {
        self.psks.is_some()
    }

    /// Whether peers are authenticated by a trusted-keys list.
    pub fn has_trusted_keys(&self) -> bool {
        self.trusted.is_some()
    }

    /// This node's public key.
    pub fn public_key(&self) -> PublicKey {
        self.keypair.public()
    }
}

/// What a node does on a new control connection.
#[derive(Clone, Debug)]
pub enum HandshakeConfig {
    /// No encryption; refuses peers that require it.
    Plaintext,
    /// Noise; never falls back to plaintext.
    Noise(NoiseConfig),
}

/// Why a handshake failed. `Display` is the reason a person reads.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum HandshakeError {
    /// The passwords differ (the responder accepts none with the
    /// initiator's psk id).
    #[error("authentication failed: password mismatch")]
    PasswordMismatch,
    /// This node is plaintext, the peer encrypts.
    #[error("peer requires encryption")]
    PeerRequiresEncryption,
    /// This node encrypts, the peer is plaintext.
    #[error("peer does not use encryption (it has no password or keys)")]
    PeerNotEncrypted,
    /// This node has a password, the peer has none.
    #[error("authentication failed: peer has no password")]
    PeerHasNoPassword,
    /// The peer has a password, this node has none.
    #[error("authentication failed: peer requires a password")]
    PeerRequiresPassword,
    /// The peer's static key is not in the trusted-keys list.
    #[error("authentication failed: key {0} is not in trusted keys")]
    UntrustedKey(PublicKey),
    /// The peer refused this node's static key (ours, in the message).
    #[error(
        "authentication failed: the peer does not list this node's key {0} \
         in its trusted keys (add the key there, or start this node with a listed --key-file)"
    )]
    KeyRefused(PublicKey),
    /// A Noise message failed to decrypt.
    #[error("authentication failed: password mismatch or tampering")]
    DecryptFailed,
    /// A different `Hello` version.
    #[error("peer uses handshake version {0}, this node {HELLO_VERSION}")]
    UnsupportedVersion(u8),
    /// The peer refused for a reason this version does not know.
    #[error("peer rejected the handshake (reason code {0})")]
    Rejected(u8),
    /// Bytes that do not follow the format.
    #[error("malformed handshake: {0}")]
    Malformed(&'static str),
    /// `handle_bytes` before `start` or after the end.
    #[error("handshake used out of order: {0}")]
    OutOfOrder(&'static str),
    /// The Noise library refused an operation it should not.
    #[error("handshake crypto error: {0}")]
    Crypto(String),
}

impl HandshakeError {
    /// A snake_case name for counting failures by reason (metrics and
    /// `weft report`).
    pub fn label(&self) -> &'static str {
        match self {
            // A Noise message that fails to decrypt is, between honest
            // peers, a password mismatch (the PSK is in the key schedule).
            HandshakeError::PasswordMismatch | HandshakeError::DecryptFailed => "password_mismatch",
            HandshakeError::PeerRequiresEncryption => "peer_requires_encryption",
            HandshakeError::PeerNotEncrypted => "peer_not_encrypted",
            HandshakeError::PeerHasNoPassword => "peer_has_no_password",
            HandshakeError::PeerRequiresPassword => "peer_requires_password",
            HandshakeError::UntrustedKey(_) => "untrusted_key",
            HandshakeError::KeyRefused(_) => "key_refused",
            HandshakeError::UnsupportedVersion(_) => "version_mismatch",
            HandshakeError::Rejected(_) => "rejected",
            HandshakeError::Malformed(_) | HandshakeError::OutOfOrder(_) => "protocol_error",
            HandshakeError::Crypto(_) => "crypto_error",
        }
    }
}

/// A finished encrypted handshake.
#[derive(Debug)]
pub struct Established {
    /// The control stream's record layer from here on.
    pub channel: SecureChannel,
    /// Keys for the data-plane session.
    pub data_keys: DataKeys,
    /// The peer's authenticated static key.
    pub remote_static: PublicKey,
    /// The receiver index the peer chose: put it in datagrams to it.
    pub remote_index: u32,
    /// The password used, `None` without one.
    pub psk_id: Option<PskId>,
}

/// How a handshake ended.
#[derive(Debug)]
pub enum HandshakeOutcome {
    /// Both sides are plaintext: the stream continues unencrypted.
    Plaintext,
    /// Encrypted and authenticated.
    Established(Box<Established>),
}

/// What to do after feeding bytes.
#[derive(Debug)]
pub enum HandshakeProgress {
    /// Write `send` (may be empty) and feed more bytes.
    Continue {
        /// Bytes for the peer.
        send: Vec<u8>,
    },
    /// Write `send` (may be empty), then carry on with `outcome`;
    /// `leftover` are bytes after the handshake that belong to the stream
    /// that follows (records, or plaintext frames).
    Done {
        /// Bytes for the peer.
        send: Vec<u8>,
        /// The result.
        outcome: HandshakeOutcome,
        /// Stream bytes after the last handshake byte.
        leftover: Vec<u8>,
    },
}

enum State {
    New,
    AwaitHello(Option<Box<snow::HandshakeState>>),
    Noise {
        hs: Box<snow::HandshakeState>,
        psk_id: Option<PskId>,
    },
    Finished,
}

/// One side of the handshake on one connection.
pub struct Handshake {
    role: Role,
    config: HandshakeConfig,
    local_index: u32,
    state: State,
    /// Unconsumed input, bounded by one Hello or Noise message plus the
    /// last read.
    input: Vec<u8>,
    farewell: Vec<u8>,
}

impl Handshake {
    /// A handshake for `role` with `config`; `local_index` is the
    /// data-plane receiver index this node chose for the connection
    /// (unused in plaintext).
    pub fn new(role: Role, config: HandshakeConfig, local_index: u32) -> Handshake {
        Handshake {
            role,
            config,
            local_index,
            state: State::New,
            input: Vec::new(),
            farewell: Vec::new(),
        }
    }

    /// Starts the handshake: returns the bytes to write first (the
    /// initiator's `Hello` and XX message 1; nothing for the responder,
    /// which answers the initiator's `Hello`).
    pub fn start(&mut self) -> Result<Vec<u8>, HandshakeError> {
        if !matches!(self.state, State::New) {
            return Err(HandshakeError::OutOfOrder("started twice"));
        }
        if self.role == Role::Responder {
            self.state = State::AwaitHello(None);
            return Ok(Vec::new());
        }
        let hello = match &self.config {
            HandshakeConfig::Plaintext => Hello::plaintext(),
            HandshakeConfig::Noise(n) => Hello {
                mode: MODE_NOISE,
                psk: n.psks.as_ref().map(|p| p.send.id()),
                verdict: VERDICT_PROCEED,
            },
        };
        let hello_bytes = hello.emit();
        let mut out = hello_bytes.to_vec();
        let hs = match &self.config {
            HandshakeConfig::Plaintext => None,
            HandshakeConfig::Noise(n) => {
                let psk = n.psks.as_ref().map(|p| &p.send);
                let mut hs = build(n, psk, &hello_bytes, Role::Initiator)?;
                write_message(&mut hs, &[], &mut out)?;
                Some(hs)
            }
        };
        self.state = State::AwaitHello(hs);
        Ok(out)
    }

    /// Feeds bytes read from the peer.
    pub fn handle_bytes(&mut self, input: &[u8]) -> Result<HandshakeProgress, HandshakeError> {
        if matches!(self.state, State::New | State::Finished) {
            return Err(HandshakeError::OutOfOrder("not running"));
        }
        self.input.extend_from_slice(input);
        let mut send = Vec::new();
        match self.advance(&mut send) {
            Ok(None) => Ok(HandshakeProgress::Continue { send }),
            Ok(Some(outcome)) => {
                self.state = State::Finished;
                Ok(HandshakeProgress::Done {
                    send,
                    outcome,
                    leftover: std::mem::take(&mut self.input),
                })
            }
            Err(e) => {
                self.state = State::Finished;
                self.input = Vec::new();
                Err(e)
            }
        }
    }

    /// After `handle_bytes` failed: bytes worth writing before closing,
    /// so the peer learns why (the responder's refusing `Hello`). Often
    /// empty.
    pub fn take_farewell(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.farewell)
    }

    /// Runs the state machine over the buffered input as far as it goes.
    fn advance(&mut self, send: &mut Vec<u8>) -> Result<Option<HandshakeOutcome>, HandshakeError> {
        loop {
            match std::mem::replace(&mut self.state, State::Finished) {
                State::AwaitHello(hs) => {
                    let Some(bytes) = self.take(HELLO_LEN) else {
                        self.state = State::AwaitHello(hs);
                        return Ok(None);
                    };
                    let hello = Hello::parse(&bytes)?;
                    let next = match self.role {
                        Role::Initiator => self.initiator_hello(hello, hs)?,
                        Role::Responder => self.responder_hello(hello, &bytes, send)?,
                    };
                    match next {
                        Some(state) => self.state = state,
                        None => return Ok(Some(HandshakeOutcome::Plaintext)),
                    }
                }
                State::Noise { mut hs, psk_id } => {
                    let Some(message) = self.take_noise_message()? else {
                        self.state = State::Noise { hs, psk_id };
                        return Ok(None);
                    };
                    let mut payload = [0u8; MAX_NOISE_MESSAGE];
                    let n = hs
                        .read_message(&message, &mut payload)
                        .map_err(|_| HandshakeError::DecryptFailed)?;
                    let Some(config) = self.noise_config() else {
                        return Err(HandshakeError::OutOfOrder("noise without config"));
                    };
                    if let Some(remote) = remote_static(&hs)
                        && let Some(trusted) = &config.trusted
                        && !trusted.contains(&remote)
                    {
                        // Say why before closing, so the peer's operator
                        // need not guess from a bare disconnect.
                        self.farewell = KEY_REFUSAL.to_vec();
                        return Err(HandshakeError::UntrustedKey(remote));
                    }
                    let index = self.local_index.to_be_bytes();
                    match (self.role, hs.is_handshake_finished()) {
                        // Responder read message 1: answer with message 2.
                        (Role::Responder, false) => {
                            write_message(&mut hs, &index, send)?;
                            self.state = State::Noise { hs, psk_id };
                        }
                        // Initiator read message 2: send message 3, done.
                        (Role::Initiator, false) => {
                            let remote_index = parse_index(&payload[..n])?;
                            write_message(&mut hs, &index, send)?;
                            return finish(hs, Role::Initiator, remote_index, psk_id).map(Some);
                        }
                        // Responder read message 3: done.
                        (Role::Responder, true) => {
                            let remote_index = parse_index(&payload[..n])?;
                            return finish(hs, Role::Responder, remote_index, psk_id).map(Some);
                        }
                        (Role::Initiator, true) => {
                            return Err(HandshakeError::OutOfOrder("initiator read message 3"));
                        }
                    }
                }
                State::New | State::Finished => {
                    return Err(HandshakeError::OutOfOrder("not running"));
                }
            }
        }
    }

    /// The initiator decides on the responder's `Hello`; `None` means the
    /// connection is plaintext.
    fn initiator_hello(
        &self,
        hello: Hello,
        hs: Option<Box<snow::HandshakeState>>,
    ) -> Result<Option<State>, HandshakeError> {
        match hello.verdict {
            VERDICT_PROCEED => {}
            VERDICT_PASSWORD_MISMATCH => return Err(HandshakeError::PasswordMismatch),
            other => return Err(HandshakeError::Rejected(other)),
        }
        match (&self.config, hello.mode, hs) {
            (HandshakeConfig::Plaintext, MODE_PLAINTEXT, _) => Ok(None),
            (HandshakeConfig::Plaintext, _, _) => Err(HandshakeError::PeerRequiresEncryption),
            (HandshakeConfig::Noise(_), MODE_PLAINTEXT, _) => Err(HandshakeError::PeerNotEncrypted),
            (HandshakeConfig::Noise(n), _, Some(hs)) => {
                check_psk_presence(n.psks.is_some(), hello.psk.is_some())?;
                let psk_id = n.psks.as_ref().map(|p| p.send.id());
                Ok(Some(State::Noise { hs, psk_id }))
            }
            (HandshakeConfig::Noise(_), _, None) => {
                Err(HandshakeError::OutOfOrder("noise initiator without state"))
            }
        }
    }

    /// The responder decides on the initiator's `Hello` and answers with
    /// its own; `None` means the connection is plaintext.
    fn responder_hello(
        &mut self,
        hello: Hello,
        hello_bytes: &[u8],
        send: &mut Vec<u8>,
    ) -> Result<Option<State>, HandshakeError> {
        let config = match &self.config {
            HandshakeConfig::Plaintext => {
                let reply = Hello::plaintext().emit();
                if hello.mode == MODE_PLAINTEXT {
                    send.extend_from_slice(&reply);
                    return Ok(None);
                }
                self.farewell = reply.to_vec();
                return Err(HandshakeError::PeerRequiresEncryption);
            }
            HandshakeConfig::Noise(n) => n.clone(),
        };
        let mut reply = Hello {
            mode: MODE_NOISE,
            psk: config.psks.as_ref().map(|_| PskId([0; 8])),
            verdict: VERDICT_PROCEED,
        };
        let decided = if hello.mode == MODE_PLAINTEXT {
            Err(HandshakeError::PeerNotEncrypted)
        } else {
            check_psk_presence(config.psks.is_some(), hello.psk.is_some()).and_then(|()| {
                match (&config.psks, hello.psk) {
                    (Some(set), Some(id)) => match set.find(id) {
                        Some(psk) => Ok(Some(psk)),
                        None => {
                            reply.verdict = VERDICT_PASSWORD_MISMATCH;
                            Err(HandshakeError::PasswordMismatch)
                        }
                    },
                    _ => Ok(None),
                }
            })
        };
        let reply = reply.emit();
        let psk = match decided {
            Ok(psk) => psk,
            Err(e) => {
                self.farewell = reply.to_vec();
                return Err(e);
            }
        };
        send.extend_from_slice(&reply);
        let hs = build(&config, psk, hello_bytes, Role::Responder)?;
        Ok(Some(State::Noise {
            hs,
            psk_id: psk.map(Psk::id),
        }))
    }

    fn noise_config(&self) -> Option<&NoiseConfig> {
        match &self.config {
            HandshakeConfig::Noise(n) => Some(n),
            HandshakeConfig::Plaintext => None,
        }
    }

    /// Removes and returns the first `n` buffered bytes, if there are that
    /// many.
    fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        if self.input.len() < n {
            return None;
        }
        let rest = self.input.split_off(n);
        Some(std::mem::replace(&mut self.input, rest))
    }

    /// The next length-prefixed Noise message, if complete.
    fn take_noise_message(&mut self) -> Result<Option<Vec<u8>>, HandshakeError> {
        let Some(prefix) = self.input.first_chunk::<2>() else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes(*prefix));
        if len == 0 {
            // A refusal: only a responder that sent message 2 (and with it
            // its key) can be refused at this point.
            let Some(&code) = self.input.get(2) else {
                return Ok(None);
            };
            return Err(match (self.role, self.noise_config()) {
                (Role::Responder, Some(config)) => refusal_error(code, config.public_key()),
                _ => HandshakeError::Malformed("refusal before message 2"),
            });
        }
        if len > MAX_NOISE_MESSAGE {
            return Err(HandshakeError::Malformed(
                "noise message length out of range",
            ));
        }
        if self.input.len() < 2 + len {
            return Ok(None);
        }
        self.input.drain(..2);
        Ok(self.take(len))
    }
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("role", &self.role)
            .field("buffered", &self.input.len())
            .finish_non_exhaustive()
    }
}

/// The `Hello` of a node without encryption, as the initiator sends it
/// (for tests and fuzz seeds that play a plaintext peer).
pub const PLAINTEXT_HELLO: [u8; HELLO_LEN] = [
    HELLO_VERSION,
    MODE_PLAINTEXT,
    0,
    VERDICT_PROCEED,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
];

/// The cleartext first message of each side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Hello {
    mode: u8,
    /// Initiator: its psk id. Responder: `Some` (of zeros) if it has a
    /// password.
    psk: Option<PskId>,
    verdict: u8,
}

impl Hello {
    fn plaintext() -> Hello {
        Hello {
            mode: MODE_PLAINTEXT,
            psk: None,
            verdict: VERDICT_PROCEED,
        }
    }

    fn parse(b: &[u8]) -> Result<Hello, HandshakeError> {
        let Some(b) = b.first_chunk::<HELLO_LEN>() else {
            return Err(HandshakeError::Malformed("short hello"));
        };
        if b[0] != HELLO_VERSION {
            return Err(HandshakeError::UnsupportedVersion(b[0]));
        }
        if b[1] > MODE_NOISE {
            return Err(HandshakeError::Malformed("unknown mode"));
        }
        if b[2] & !FLAG_PSK != 0 {
            return Err(HandshakeError::Malformed("unknown flags"));
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&b[4..12]);
        Ok(Hello {
            mode: b[1],
            psk: (b[2] & FLAG_PSK != 0).then_some(PskId(id)),
            verdict: b[3],
        })
    }

    fn emit(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[0] = HELLO_VERSION;
        b[1] = self.mode;
        b[3] = self.verdict;
        if let Some(id) = self.psk {
            b[2] = FLAG_PSK;
            b[4..].copy_from_slice(&id.0);
        }
        b
    }
}

/// What the peer's refusal with `code` means for a node whose key is
/// `ours`.
pub fn refusal_error(code: u8, ours: PublicKey) -> HandshakeError {
    match code {
        REFUSAL_UNTRUSTED_KEY => HandshakeError::KeyRefused(ours),
        other => HandshakeError::Rejected(other),
    }
}

fn check_psk_presence(local: bool, remote: bool) -> Result<(), HandshakeError> {
    match (local, remote) {
        (true, false) => Err(HandshakeError::PeerHasNoPassword),
        (false, true) => Err(HandshakeError::PeerRequiresPassword),
        _ => Ok(()),
    }
}

fn crypto_error(e: snow::Error) -> HandshakeError {
    HandshakeError::Crypto(e.to_string())
}

fn build(
    config: &NoiseConfig,
    psk: Option<&Psk>,
    prologue: &[u8],
    role: Role,
) -> Result<Box<snow::HandshakeState>, HandshakeError> {
    let mut builder = snow::Builder::new(noise_params(psk.is_some()))
        .local_private_key(config.keypair.private())
        .and_then(|b| b.prologue(prologue))
        .map_err(crypto_error)?;
    if let Some(psk) = psk {
        builder = builder.psk(3, psk.key()).map_err(crypto_error)?;
    }
    let hs = match role {
        Role::Initiator => builder.build_initiator(),
        Role::Responder => builder.build_responder(),
    };
    hs.map(Box::new).map_err(crypto_error)
}

/// Appends one length-prefixed Noise message with `payload` to `out`.
fn write_message(
    hs: &mut snow::HandshakeState,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), HandshakeError> {
    let mut message = [0u8; MAX_NOISE_MESSAGE];
    let n = hs
        .write_message(payload, &mut message)
        .map_err(crypto_error)?;
    // n <= MAX_NOISE_MESSAGE, which fits a u16.
    out.extend_from_slice(&(n as u16).to_be_bytes());
    out.extend_from_slice(&message[..n]);
    Ok(())
}

fn remote_static(hs: &snow::HandshakeState) -> Option<PublicKey> {
    let key: [u8; KEY_LEN] = hs.get_remote_static()?.try_into().ok()?;
    Some(PublicKey(key))
}

/// The receiver index at the front of a message 2 or 3 payload; bytes
/// after it are reserved for later versions and ignored.
fn parse_index(payload: &[u8]) -> Result<u32, HandshakeError> {
    let index = payload
        .first_chunk::<INDEX_LEN>()
        .ok_or(HandshakeError::Malformed("payload without receiver index"))?;
    Ok(u32::from_be_bytes(*index))
}

/// Splits the finished handshake into the control channel and the data
/// keys. The data keys are HKDF outputs of both transport keys, salted with
/// the handshake hash and labelled per direction, so no key is shared
/// between the TCP channel and UDP, nor between the directions.
fn finish(
    mut hs: Box<snow::HandshakeState>,
    role: Role,
    remote_index: u32,
    psk_id: Option<PskId>,
) -> Result<HandshakeOutcome, HandshakeError> {
    let remote = remote_static(&hs).ok_or(HandshakeError::Malformed("no remote static key"))?;
    let (mut k1, mut k2) = hs.dangerously_get_raw_split();
    let mut ikm = Zeroizing::new([0u8; 64]);
    ikm[..32].copy_from_slice(&k1);
    ikm[32..].copy_from_slice(&k2);
    k1.zeroize();
    k2.zeroize();
    let hash = hs.get_handshake_hash().to_vec();
    let i2r = hkdf32(&hash, &ikm[..], DATA_I2R_LABEL);
    let r2i = hkdf32(&hash, &ikm[..], DATA_R2I_LABEL);
    let data_keys = match role {
        Role::Initiator => DataKeys::new(i2r, r2i),
        Role::Responder => DataKeys::new(r2i, i2r),
    };
    let transport = hs.into_transport_mode().map_err(crypto_error)?;
    Ok(HandshakeOutcome::Established(Box::new(Established {
        channel: SecureChannel::new(transport),
        data_keys,
        remote_static: remote,
        remote_index,
        psk_id,
    })))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::core::crypto::data::{DataLimits, DataSession, OVERHEAD};
    use std::time::Instant;

    fn psk(byte: u8) -> Psk {
        Psk::from_bytes(Zeroizing::new([byte; 32]))
    }

    pub(crate) fn keypair(byte: u8) -> Arc<StaticKeypair> {
        Arc::new(StaticKeypair::from_private(Zeroizing::new([byte; 32])))
    }

    fn with_password(key: u8, send: u8, also: &[u8]) -> HandshakeConfig {
        let set = PskSet::new(psk(send), also.iter().map(|&b| psk(b)).collect());
        HandshakeConfig::Noise(NoiseConfig::new(keypair(key), Some(Arc::new(set)), None).unwrap())
    }

    /// Keys only: our key pair `key`, trusting the key pairs `trusted`.
    pub(crate) fn with_keys(key: u8, trusted: &[u8]) -> HandshakeConfig {
        let trusted = trusted.iter().map(|&b| keypair(b).public()).collect();
        HandshakeConfig::Noise(
            NoiseConfig::new(keypair(key), None, Some(Arc::new(trusted))).unwrap(),
        )
    }

    /// What one side ended with.
    #[derive(Debug)]
    enum End {
        Done(HandshakeOutcome, Vec<u8>),
        Failed(HandshakeError),
        /// Still waiting for the peer.
        Pending,
    }

    /// Runs both sides to the end, delivering `chunk` bytes at a time, and
    /// appends `after` to the initiator's last flight.
    fn run(i: HandshakeConfig, r: HandshakeConfig, chunk: usize, after: &[u8]) -> (End, End) {
        let mut ini = Handshake::new(Role::Initiator, i, 11);
        let mut res = Handshake::new(Role::Responder, r, 22);
        let mut to_r = ini.start().unwrap();
        let mut to_i = res.start().unwrap();
        let (mut ie, mut re) = (None, None);
        for _ in 0..10 {
            if re.is_none() && !to_r.is_empty() {
                let bytes = std::mem::take(&mut to_r);
                for piece in bytes.chunks(chunk) {
                    if re.is_some() {
                        break;
                    }
                    match res.handle_bytes(piece) {
                        Ok(HandshakeProgress::Continue { send }) => to_i.extend(send),
                        Ok(HandshakeProgress::Done {
                            send,
                            outcome,
                            leftover,
                        }) => {
                            to_i.extend(send);
                            re = Some(End::Done(outcome, leftover));
                        }
                        Err(e) => {
                            to_i.extend(res.take_farewell());
                            re = Some(End::Failed(e));
                        }
                    }
                }
            }
            if ie.is_none() && !to_i.is_empty() {
                let bytes = std::mem::take(&mut to_i);
                for piece in bytes.chunks(chunk) {
                    if ie.is_some() {
                        break;
                    }
                    match ini.handle_bytes(piece) {
                        Ok(HandshakeProgress::Continue { send }) => to_r.extend(send),
                        Ok(HandshakeProgress::Done {
                            send,
                            outcome,
                            leftover,
                        }) => {
                            to_r.extend(send);
                            to_r.extend(after);
                            ie = Some(End::Done(outcome, leftover));
                        }
                        Err(e) => {
                            to_r.extend(ini.take_farewell());
                            ie = Some(End::Failed(e));
                        }
                    }
                }
            }
        }
        (ie.unwrap_or(End::Pending), re.unwrap_or(End::Pending))
    }

    fn established(end: End) -> Established {
        match end {
            End::Done(HandshakeOutcome::Established(e), _) => *e,
            other => panic!("not established: {other:?}"),
        }
    }

    fn failed(end: End) -> String {
        match end {
            End::Failed(e) => e.to_string(),
            other => panic!("did not fail: {other:?}"),
        }
    }

    /// Two ends of an encrypted control channel, for the channel tests.
    pub(crate) fn established_pair() -> (SecureChannel, SecureChannel) {
        let (i, r) = run(
            with_password(1, 9, &[]),
            with_password(2, 9, &[]),
            1000,
            b"",
        );
        (established(i).channel, established(r).channel)
    }

    #[test]
    fn password_handshake_in_every_chunking() {
        for chunk in [1, 2, 3, 12, 13, 50, 1000] {
            let mut record = Vec::new();
            let (i, r) = run(
                with_password(1, 9, &[]),
                with_password(2, 9, &[]),
                chunk,
                b"",
            );
            let (mut i, r) = (established(i), established(r));
            assert_eq!(i.remote_static, keypair(2).public());
            assert_eq!(r.remote_static, keypair(1).public());
            assert_eq!((i.remote_index, r.remote_index), (22, 11));
            assert_eq!(i.psk_id, Some(psk(9).id()));
            assert_eq!(r.psk_id, Some(psk(9).id()));
            i.channel.seal(Instant::now(), b"hi", &mut record).unwrap();
            let mut got = Vec::new();
            let mut rc = r.channel;
            rc.open(&record, &mut got).unwrap();
            assert_eq!(got, b"hi");
        }
    }

    #[test]
    fn records_right_after_message_3_are_leftover() {
        // The initiator's first record travels with message 3.
        let (mut i_probe, _) = established_pair();
        let mut record = Vec::new();
        i_probe.seal(Instant::now(), b"x", &mut record).unwrap();
        let (_, r) = run(
            with_password(1, 9, &[]),
            with_password(2, 9, &[]),
            1000,
            &record,
        );
        match r {
            End::Done(HandshakeOutcome::Established(_), leftover) => assert_eq!(leftover, record),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn data_keys_pair_up_and_differ_from_the_channel() {
        let (i, r) = run(with_keys(1, &[2]), with_keys(2, &[1]), 1000, b"");
        let (i, r) = (established(i), established(r));
        assert_eq!(i.psk_id, None);
        let now = Instant::now();
        let limits = DataLimits::default();
        let mut a = DataSession::new(11, i.remote_index, i.data_keys, now, limits);
        let mut b = DataSession::new(22, r.remote_index, r.data_keys, now, limits);
        let mut buf = vec![7u8; 10 + OVERHEAD];
        let n = a.seal(now, &mut buf, 10).unwrap();
        assert_eq!(b.open(now, &mut buf[..n]).unwrap(), [7; 10]);
        let n = b.seal(now, &mut buf, 10).unwrap();
        assert_eq!(a.open(now, &mut buf[..n]).unwrap(), [7; 10]);
    }

    #[test]
    fn the_plaintext_hello_constant_is_what_a_plaintext_node_sends() {
        assert_eq!(PLAINTEXT_HELLO, Hello::plaintext().emit());
    }

    #[test]
    fn plaintext_both_sides() {
        let (i, r) = run(
            HandshakeConfig::Plaintext,
            HandshakeConfig::Plaintext,
            5,
            b"",
        );
        assert!(matches!(i, End::Done(HandshakeOutcome::Plaintext, _)));
        assert!(matches!(r, End::Done(HandshakeOutcome::Plaintext, _)));
    }

    #[test]
    fn plaintext_against_encryption_fails_on_both_sides() {
        let (i, r) = run(
            HandshakeConfig::Plaintext,
            with_password(2, 9, &[]),
            1000,
            b"",
        );
        assert_eq!(failed(i), "peer requires encryption");
        assert_eq!(
            failed(r),
            "peer does not use encryption (it has no password or keys)"
        );
        let (i, r) = run(with_keys(1, &[2]), HandshakeConfig::Plaintext, 1000, b"");
        assert_eq!(
            failed(i),
            "peer does not use encryption (it has no password or keys)"
        );
        assert_eq!(failed(r), "peer requires encryption");
    }

    #[test]
    fn password_mismatch_and_rotation() {
        let (i, r) = run(
            with_password(1, 8, &[]),
            with_password(2, 9, &[]),
            1000,
            b"",
        );
        assert_eq!(failed(i), "authentication failed: password mismatch");
        assert_eq!(failed(r), "authentication failed: password mismatch");
        // The responder accepts the old password 8 while sending the new 9.
        let (i, r) = run(
            with_password(1, 8, &[]),
            with_password(2, 9, &[8]),
            1000,
            b"",
        );
        assert_eq!(established(i).psk_id, Some(psk(8).id()));
        assert_eq!(established(r).psk_id, Some(psk(8).id()));
    }

    #[test]
    fn password_on_one_side_only() {
        let (i, r) = run(with_password(1, 9, &[]), with_keys(2, &[1]), 1000, b"");
        assert_eq!(failed(i), "authentication failed: peer has no password");
        assert_eq!(failed(r), "authentication failed: peer requires a password");
    }

    #[test]
    fn untrusted_keys_are_refused_when_they_become_known() {
        let (i, r) = run(with_keys(1, &[3]), with_keys(2, &[1]), 1000, b"");
        let expected = format!(
            "authentication failed: key {} is not in trusted keys",
            keypair(2).public()
        );
        assert_eq!(failed(i), expected);
        // The initiator refused instead of sending message 3, and the
        // responder says whose key.
        assert_eq!(
            failed(r),
            format!(
                "authentication failed: the peer does not list this node's key {} in its \
                 trusted keys (add the key there, or start this node with a listed --key-file)",
                keypair(2).public()
            )
        );
    }

    #[test]
    fn refusal_bytes_and_where_they_are_accepted() {
        assert_eq!(KEY_REFUSAL, [0, 0, 1]);
        let ours = keypair(2).public();
        assert_eq!(refusal_error(1, ours), HandshakeError::KeyRefused(ours));
        assert_eq!(refusal_error(9, ours), HandshakeError::Rejected(9));
        // An initiator is refused only once the responder knows its key,
        // which is after the handshake: before, a refusal is malformed.
        let mut ini = Handshake::new(Role::Initiator, with_keys(1, &[2]), 11);
        ini.start().unwrap();
        let mut hello_r = Hello {
            mode: MODE_NOISE,
            psk: None,
            verdict: VERDICT_PROCEED,
        }
        .emit()
        .to_vec();
        hello_r.extend(KEY_REFUSAL);
        assert_eq!(
            ini.handle_bytes(&hello_r).err(),
            Some(HandshakeError::Malformed("refusal before message 2"))
        );
    }

    #[test]
    fn responder_refuses_an_untrusted_initiator() {
        let (i, r) = run(with_keys(1, &[2]), with_keys(2, &[3]), 1000, b"");
        assert!(matches!(i, End::Done(HandshakeOutcome::Established(_), _)));
        assert_eq!(
            failed(r),
            format!(
                "authentication failed: key {} is not in trusted keys",
                keypair(1).public()
            )
        );
    }

    #[test]
    fn a_colliding_psk_id_with_another_key_fails_to_decrypt() {
        // Same id, different key: simulates tampering or an id collision.
        let forged = psk(7).renamed(psk(9).id());
        let set = PskSet::new(forged, vec![]);
        let cfg = HandshakeConfig::Noise(
            NoiseConfig::new(keypair(1), Some(Arc::new(set)), None).unwrap(),
        );
        let (_, r) = run(cfg, with_password(2, 9, &[]), 1000, b"");
        assert_eq!(
            failed(r),
            "authentication failed: password mismatch or tampering"
        );
    }

    #[test]
    fn hello_bytes() {
        let hello = Hello {
            mode: MODE_NOISE,
            psk: Some(PskId([1, 2, 3, 4, 5, 6, 7, 8])),
            verdict: 0,
        };
        assert_eq!(hello.emit(), [1, 1, 1, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(Hello::parse(&hello.emit()), Ok(hello));
        assert_eq!(
            Hello::plaintext().emit(),
            [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            Hello::parse(&[2; 12]),
            Err(HandshakeError::UnsupportedVersion(2))
        );
        assert_eq!(
            Hello::parse(&[1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(HandshakeError::Malformed("unknown mode"))
        );
        assert_eq!(
            Hello::parse(&[1, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(HandshakeError::Malformed("unknown flags"))
        );
    }

    #[test]
    fn oversized_and_garbage_messages_are_errors() {
        let mut res = Handshake::new(Role::Responder, with_password(2, 9, &[]), 1);
        assert!(res.start().unwrap().is_empty());
        let mut hello = Hello {
            mode: MODE_NOISE,
            psk: Some(psk(9).id()),
            verdict: 0,
        }
        .emit()
        .to_vec();
        hello.extend([0x04, 0x01]);
        assert_eq!(
            res.handle_bytes(&hello).unwrap_err(),
            HandshakeError::Malformed("noise message length out of range")
        );
        assert!(res.handle_bytes(b"more").is_err());

        let mut res = Handshake::new(Role::Responder, with_password(2, 9, &[]), 1);
        res.start().unwrap();
        hello.truncate(HELLO_LEN);
        hello.extend([0, 5, 1, 2, 3, 4, 5]);
        assert_eq!(
            res.handle_bytes(&hello).unwrap_err(),
            HandshakeError::DecryptFailed
        );

        let mut never_started = Handshake::new(Role::Initiator, HandshakeConfig::Plaintext, 0);
        assert!(matches!(
            never_started.handle_bytes(b"x"),
            Err(HandshakeError::OutOfOrder(_))
        ));
    }

    #[test]
    fn config_without_authentication_is_refused() {
        assert_eq!(
            NoiseConfig::new(keypair(1), None, None).unwrap_err(),
            NoAuthentication
        );
    }
}
