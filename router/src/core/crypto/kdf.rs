//! From a mesh password to a pre-shared key, and the key derivations the
//! rest of the crypto module shares.
//!
//! Every peer of a mesh must derive the *same* PSK from the same password
//! without talking to each other first, so the Argon2id salt is a fixed
//! context string rather than random: it separates weft's keys from any
//! other use of the password, but it cannot stop an attacker from
//! precomputing guesses against all weft meshes at once. Argon2id's memory
//! cost makes each guess expensive; a long random password is what makes
//! guessing hopeless. `docs/security.md` has the reasoning.

use std::fmt;

use argon2::{Algorithm, Argon2, Params, Version};
use ring::hmac;
use thiserror::Error;
use zeroize::Zeroizing;

/// Length of a [`Psk`], the Noise PSK size.
pub const PSK_LEN: usize = 32;
/// Length of a [`PskId`].
pub const PSK_ID_LEN: usize = 8;

/// The Argon2id salt: a fixed context string, the same on every peer (see
/// the module documentation). Changing it changes every mesh's key.
const PASSWORD_SALT: &[u8] = b"weft-mesh-psk-v1";
/// HMAC message naming a PSK, so the id is a PRF output unrelated to the
/// key's other uses.
const PSK_ID_LABEL: &[u8] = b"weft psk id v1";

/// Errors deriving a [`Psk`].
#[derive(Debug, Error, PartialEq, Eq)]
pub enum KdfError {
    /// An empty password would give every unconfigured mesh the same key.
    #[error("the password is empty")]
    EmptyPassword,
    /// The cost parameters are outside what Argon2 accepts.
    #[error("invalid Argon2id parameters: {0}")]
    Params(String),
}

/// Argon2id cost parameters for [`Psk::from_password_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
}

impl KdfParams {
    /// What weft uses: 64 MiB (RFC 9106's memory-constrained choice) and
    /// one pass, about 0.1 s once at startup on this project's machines,
    /// and 64 MiB of memory per guess for an attacker. All peers must use
    /// the same parameters: they are part of the key.
    pub const DEFAULT: KdfParams = KdfParams {
        memory_kib: 64 * 1024,
        iterations: 1,
    };

    /// The cheapest parameters Argon2 allows, for tests only.
    pub const INSECURE_FAST: KdfParams = KdfParams {
        memory_kib: 8,
        iterations: 1,
    };
}

/// An 8-byte name for a [`Psk`]: the first bytes of
/// HMAC-SHA256(psk, "weft psk id v1").
///
/// Sent in clear in the handshake `Hello` so a responder that accepts
/// several passwords (during rotation) knows which one the initiator uses,
/// and can refuse a wrong password before any public-key crypto. It reveals
/// only whether two peers use the same password; testing a password guess
/// against it costs a full Argon2id run, exactly like testing it against a
/// recorded handshake.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PskId(pub [u8; PSK_ID_LEN]);

impl fmt::Display for PskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PskId({self})")
    }
}

/// A 32-byte pre-shared key derived from the mesh password, zeroized when
/// dropped. `Debug` shows only its [`PskId`].
#[derive(Clone)]
pub struct Psk {
    key: Zeroizing<[u8; PSK_LEN]>,
    id: PskId,
}

impl Psk {
    /// Derives the PSK of `password` with [`KdfParams::DEFAULT`].
    pub fn from_password(password: &str) -> Result<Psk, KdfError> {
        Psk::from_password_with(password, KdfParams::DEFAULT)
    }

    /// Derives the PSK of `password` with explicit Argon2id costs.
    pub fn from_password_with(password: &str, params: KdfParams) -> Result<Psk, KdfError> {
        if password.is_empty() {
            return Err(KdfError::EmptyPassword);
        }
        let params = Params::new(params.memory_kib, params.iterations, 1, Some(PSK_LEN))
            .map_err(|e| KdfError::Params(e.to_string()))?;
        let mut key = Zeroizing::new([0u8; PSK_LEN]);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(password.as_bytes(), PASSWORD_SALT, &mut key[..])
            .map_err(|e| KdfError::Params(e.to_string()))?;
        Ok(Psk::from_bytes(key))
    }

    /// A PSK from raw key bytes (tests and fuzzing; weft derives its PSKs
    /// from passwords).
    pub fn from_bytes(key: Zeroizing<[u8; PSK_LEN]>) -> Psk {
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key[..]), PSK_ID_LABEL);
        let mut id = [0u8; PSK_ID_LEN];
        id.copy_from_slice(&tag.as_ref()[..PSK_ID_LEN]);
        Psk { key, id: PskId(id) }
    }

    /// This key's public name.
    pub fn id(&self) -> PskId {
        self.id
    }

    pub(crate) fn key(&self) -> &[u8; PSK_LEN] {
        &self.key
    }

    /// This key under another key's name: what an id collision or a
    /// tampered `Hello` looks like to the handshake.
    #[cfg(test)]
    pub(crate) fn renamed(self, id: PskId) -> Psk {
        Psk { id, ..self }
    }
}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Psk({})", self.id)
    }
}

/// HKDF-SHA256 (RFC 5869) with one 32-byte output block:
/// `PRK = HMAC(salt, ikm)`, `OKM = HMAC(PRK, info || 0x01)`.
///
/// Written out with HMAC because a single block needs no length checks and
/// so cannot fail.
pub(crate) fn hkdf32(salt: &[u8], ikm: &[u8], info: &[u8]) -> Zeroizing<[u8; 32]> {
    let prk = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, salt), ikm);
    let mut ctx = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, prk.as_ref()));
    ctx.update(info);
    ctx.update(&[1]);
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_password_same_key_and_id() {
        let a = Psk::from_password_with("correct horse", KdfParams::INSECURE_FAST).unwrap();
        let b = Psk::from_password_with("correct horse", KdfParams::INSECURE_FAST).unwrap();
        let c = Psk::from_password_with("battery staple", KdfParams::INSECURE_FAST).unwrap();
        assert_eq!(a.key(), b.key());
        assert_eq!(a.id(), b.id());
        assert_ne!(a.key(), c.key());
        assert_ne!(a.id(), c.id());
    }

    #[test]
    fn cost_parameters_are_part_of_the_key() {
        let cheap = Psk::from_password_with("pw", KdfParams::INSECURE_FAST).unwrap();
        let other = Psk::from_password_with(
            "pw",
            KdfParams {
                memory_kib: 16,
                iterations: 1,
            },
        )
        .unwrap();
        assert_ne!(cheap.id(), other.id());
    }

    #[test]
    fn empty_password_and_bad_params_are_errors() {
        assert_eq!(
            Psk::from_password_with("", KdfParams::INSECURE_FAST).unwrap_err(),
            KdfError::EmptyPassword
        );
        let bad = KdfParams {
            memory_kib: 1,
            iterations: 0,
        };
        assert!(matches!(
            Psk::from_password_with("pw", bad),
            Err(KdfError::Params(_))
        ));
    }

    /// How long the default cost takes:
    /// `cargo test --release -p weft-router --lib kdf::tests::default_cost -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn default_cost() {
        let start = std::time::Instant::now();
        Psk::from_password("a reasonably long mesh password").unwrap();
        println!("Argon2id default cost: {:?}", start.elapsed());
    }

    #[test]
    fn debug_shows_only_the_id() {
        let psk = Psk::from_bytes(Zeroizing::new([0x42; 32]));
        let shown = format!("{psk:?}");
        assert_eq!(shown, format!("Psk({})", psk.id()));
        assert!(!shown.contains("4242"));
    }

    /// Pins the derivation: a change here silently splits old and new
    /// builds into two meshes that cannot talk.
    #[test]
    fn derivation_vectors() {
        // RFC 5869 test case 3 (empty salt and info), truncated to one block.
        let okm = hkdf32(&[], &[0x0b; 22], &[]);
        assert_eq!(
            okm[..],
            [
                0x8d, 0xa4, 0xe7, 0x75, 0xa5, 0x63, 0xc1, 0x8f, 0x71, 0x5f, 0x80, 0x2a, 0x06, 0x3c,
                0x5a, 0x31, 0xb8, 0xa1, 0x1f, 0x5c, 0x5e, 0xe1, 0x87, 0x9e, 0xc3, 0x45, 0x4e, 0x5f,
                0x3c, 0x73, 0x8d, 0x2d
            ]
        );
        let psk = Psk::from_password_with("weft", KdfParams::INSECURE_FAST).unwrap();
        assert_eq!(psk.id().to_string(), "f1bceb27a74d23ed");
    }
}
