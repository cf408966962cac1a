//! Encryption for weft's control connections and data plane, sans-IO.
//!
//! `docs/security.md` is the design: why these choices, every wire format
//! byte by byte, and the threat model. In short:
//!
//! - [`kdf`]: a mesh password becomes a 32-byte pre-shared key ([`Psk`])
//!   with Argon2id, plus a short [`PskId`] that names it in clear.
//! - [`keys`]: per-node x25519 static keys, their key file, and the
//!   `--trusted-keys` list.
//! - [`handshake`]: a cleartext [`Hello`](handshake) exchange that settles
//!   plaintext versus encryption and which password, then
//!   `Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s` (or `Noise_XX_…` without a
//!   password) over the TCP control stream.
//! - [`channel`]: the record layer of the control stream after the
//!   handshake.
//! - [`data`] and [`replay`]: per-connection UDP sessions with their own
//!   keys, a sliding replay window and sender-driven rekeying.
//! - [`fragments`]: datagrams too large for the path sealed once as a
//!   message and carried in fragments, and their reassembly.
//!
//! Nothing here reads the clock or touches a socket; time is an argument.

pub mod channel;
pub mod data;
pub mod fragments;
pub mod handshake;
pub mod kdf;
pub mod keys;
pub mod replay;

pub use channel::{ChannelError, ChannelRekeys, SecureChannel};
pub use data::{DataError, DataKeys, DataLimits, DataSession, DataStats, SealError};
pub use handshake::{
    Established, Handshake, HandshakeConfig, HandshakeError, HandshakeOutcome, HandshakeProgress,
    NoiseConfig, PskSet, Role, refusal_error,
};
pub use kdf::{KdfError, KdfParams, Psk, PskId};
pub use keys::{KeyFileError, PublicKey, StaticKeypair, TrustedKeys};
pub use replay::{ReplayError, ReplayWindow};

/// A Noise configuration with `password` (cheap KDF) and a fresh key, for
/// the core's tests.
#[cfg(test)]
pub(crate) fn test_config(password: &str) -> HandshakeConfig {
    let psk = Psk::from_password_with(password, KdfParams::INSECURE_FAST)
        .expect("the test KDF parameters are valid");
    HandshakeConfig::Noise(
        NoiseConfig::new(
            std::sync::Arc::new(StaticKeypair::generate().expect("the OS has randomness")),
            Some(std::sync::Arc::new(PskSet::new(psk, Vec::new()))),
            None,
        )
        .expect("a password authenticates"),
    )
}
