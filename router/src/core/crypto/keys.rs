//! Per-node x25519 static keys: generation, the key file `weft keygen`
//! writes, and the `--trusted-keys` list.
//!
//! The key file is text, one `name: value` field per line, keys in
//! lowercase hex (64 digits); `#` starts a comment line:
//!
//! ```text
//! # weft node key (x25519). Keep this file private.
//! private-key: 0123…ef
//! public-key: 89ab…01
//! ```
//!
//! The public key is redundant (it follows from the private key) but lets a
//! person copy it into other nodes' trusted-keys files; parsing checks that
//! the two match. A trusted-keys file holds one public key per line, with
//! blank lines, `#` comment lines and `# …` after a key allowed.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use curve25519_dalek::MontgomeryPoint;
use thiserror::Error;
use zeroize::Zeroizing;

use super::handshake::noise_params;

/// Length of an x25519 key, private or public.
pub const KEY_LEN: usize = 32;

const PRIVATE_FIELD: &str = "private-key";
const PUBLIC_FIELD: &str = "public-key";

/// Why a key could not be read from text.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum KeyParseError {
    /// Not 64 characters.
    #[error("a key is 64 hex digits, this has {0} characters")]
    Length(usize),
    /// A character other than `0-9a-fA-F`.
    #[error("a key is hex digits only (0-9, a-f)")]
    NotHex,
}

/// A problem in a key file or trusted-keys file, naming the line (from 1).
/// The caller adds the file name.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum KeyFileError {
    /// A line that is neither `name: value`, a comment nor blank.
    #[error("line {line}: expected `private-key: <hex>` or `public-key: <hex>`")]
    Syntax {
        /// Line number, from 1.
        line: usize,
    },
    /// A field this format does not have.
    #[error("line {line}: unknown field `{name}`")]
    UnknownField {
        /// Line number, from 1.
        line: usize,
        /// The field name as written.
        name: String,
    },
    /// A field given twice.
    #[error("line {line}: `{name}` appears twice")]
    DuplicateField {
        /// Line number, from 1.
        line: usize,
        /// The field name.
        name: &'static str,
    },
    /// A key that is not 64 hex digits.
    #[error("line {line}: {error}")]
    BadKey {
        /// Line number, from 1.
        line: usize,
        /// What is wrong with it.
        error: KeyParseError,
    },
    /// No `private-key:` line.
    #[error("no `private-key:` line; generate a key file with `weft keygen`")]
    MissingPrivateKey,
    /// The `public-key:` line is not the private key's public key.
    #[error(
        "the public key does not belong to the private key; regenerate the file with `weft keygen`"
    )]
    Mismatch,
}

/// The operating system's random number generator failed.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("the system random number generator failed")]
pub struct RandomError;

/// An x25519 public key. Displays and parses as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; KEY_LEN]);

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = KeyParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut key = [0u8; KEY_LEN];
        decode_hex(s, &mut key)?;
        Ok(PublicKey(key))
    }
}

/// Decodes exactly `out.len() * 2` hex digits into `out`.
fn decode_hex(s: &str, out: &mut [u8]) -> Result<(), KeyParseError> {
    let digits = s.as_bytes();
    if digits.len() != out.len() * 2 {
        return Err(KeyParseError::Length(s.chars().count()));
    }
    for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *o = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
    }
    Ok(())
}

fn hex_digit(c: u8) -> Result<u8, KeyParseError> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(KeyParseError::NotHex),
    }
}

/// A node's static key pair. The private half is zeroized when dropped and
/// never printed: `Debug` shows the public key only.
#[derive(Clone)]
pub struct StaticKeypair {
    private: Zeroizing<[u8; KEY_LEN]>,
    public: PublicKey,
}

impl StaticKeypair {
    /// A fresh key pair from the operating system's randomness.
    pub fn generate() -> Result<StaticKeypair, RandomError> {
        let builder = snow::Builder::new(noise_params(false));
        let pair = builder.generate_keypair().map_err(|_| RandomError)?;
        let mut private = Zeroizing::new([0u8; KEY_LEN]);
        let mut public = [0u8; KEY_LEN];
        // snow's x25519 keys are always 32 bytes; anything else is a
        // broken RNG or resolver, reported as such.
        if pair.private.len() != KEY_LEN || pair.public.len() != KEY_LEN {
            return Err(RandomError);
        }
        private.copy_from_slice(&pair.private);
        public.copy_from_slice(&pair.public);
        let mut pair = pair;
        zeroize::Zeroize::zeroize(&mut pair.private);
        Ok(StaticKeypair {
            private,
            public: PublicKey(public),
        })
    }

    /// The key pair of a private key.
    pub fn from_private(private: Zeroizing<[u8; KEY_LEN]>) -> StaticKeypair {
        let public = PublicKey(MontgomeryPoint::mul_base_clamped(*private).to_bytes());
        StaticKeypair { private, public }
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    pub(crate) fn private(&self) -> &[u8; KEY_LEN] {
        &self.private
    }

    /// The key file text (see the module documentation).
    pub fn to_file_text(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(String::with_capacity(200));
        text.push_str(
            "# weft node key (x25519). Keep this file private: it is this node's identity.\n",
        );
        text.push_str(PRIVATE_FIELD);
        text.push_str(": ");
        for b in self.private.iter() {
            text.push(char::from(HEX[usize::from(b >> 4)]));
            text.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        text.push('\n');
        text.push_str(&format!("{PUBLIC_FIELD}: {}\n", self.public));
        text
    }

    /// Parses a key file's text.
    pub fn from_file_text(text: &str) -> Result<StaticKeypair, KeyFileError> {
        let mut private: Option<Zeroizing<[u8; KEY_LEN]>> = None;
        let mut public: Option<PublicKey> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let content = raw.trim();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let Some((name, value)) = content.split_once(':') else {
                return Err(KeyFileError::Syntax { line });
            };
            let (name, value) = (name.trim(), value.trim());
            let bad_key = |error| KeyFileError::BadKey { line, error };
            match name {
                PRIVATE_FIELD => {
                    if private.is_some() {
                        return Err(KeyFileError::DuplicateField {
                            line,
                            name: PRIVATE_FIELD,
                        });
                    }
                    let mut key = Zeroizing::new([0u8; KEY_LEN]);
                    decode_hex(value, &mut key[..]).map_err(bad_key)?;
                    private = Some(key);
                }
                PUBLIC_FIELD => {
                    if public.is_some() {
                        return Err(KeyFileError::DuplicateField {
                            line,
                            name: PUBLIC_FIELD,
                        });
                    }
                    public = Some(value.parse().map_err(bad_key)?);
                }
                other => {
                    return Err(KeyFileError::UnknownField {
                        line,
                        name: other.chars().take(64).collect(),
                    });
                }
            }
        }
        let pair = StaticKeypair::from_private(private.ok_or(KeyFileError::MissingPrivateKey)?);
        match public {
            Some(p) if p != pair.public => Err(KeyFileError::Mismatch),
            _ => Ok(pair),
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl fmt::Debug for StaticKeypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StaticKeypair(public {})", self.public)
    }
}

/// The public keys a node accepts handshakes from (`--trusted-keys`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedKeys {
    keys: HashSet<PublicKey>,
}

impl TrustedKeys {
    /// Parses a trusted-keys file: one key per line, blank lines and `#`
    /// comments allowed (also after a key). Duplicates are harmless.
    pub fn parse(text: &str) -> Result<TrustedKeys, KeyFileError> {
        let mut keys = HashSet::new();
        for (i, raw) in text.lines().enumerate() {
            let content = raw.split_once('#').map_or(raw, |(k, _)| k).trim();
            if content.is_empty() {
                continue;
            }
            let key = content
                .parse()
                .map_err(|error| KeyFileError::BadKey { line: i + 1, error })?;
            keys.insert(key);
        }
        Ok(TrustedKeys { keys })
    }

    /// Whether `key` is trusted.
    pub fn contains(&self, key: &PublicKey) -> bool {
        self.keys.contains(key)
    }

    /// How many keys are trusted.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl FromIterator<PublicKey> for TrustedKeys {
    fn from_iter<I: IntoIterator<Item = PublicKey>>(iter: I) -> Self {
        TrustedKeys {
            keys: iter.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_round_trips_and_public_key_is_derived() {
        let pair = StaticKeypair::generate().unwrap();
        let text = pair.to_file_text();
        let back = StaticKeypair::from_file_text(&text).unwrap();
        assert_eq!(back.public(), pair.public());
        assert_eq!(back.private(), pair.private());
        assert!(
            !format!("{pair:?}").contains(&text[text.find("private-key: ").unwrap() + 13..][..64])
        );
    }

    /// RFC 7748 section 6.1: Alice's private and public key.
    #[test]
    fn rfc7748_key_pair_parses() {
        let text = "# a comment\n\n  private-key: 77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a\r\n\
                    public-key:8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a\n";
        let pair = StaticKeypair::from_file_text(text).unwrap();
        assert_eq!(
            pair.public().to_string(),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }

    #[test]
    fn key_file_errors_name_the_line() {
        let private = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
        let cases: [(String, KeyFileError); 7] = [
            (String::new(), KeyFileError::MissingPrivateKey),
            ("#\nnonsense\n".into(), KeyFileError::Syntax { line: 2 }),
            (
                "colour: blue".into(),
                KeyFileError::UnknownField {
                    line: 1,
                    name: "colour".into(),
                },
            ),
            (
                format!("private-key: {private}\nprivate-key: {private}"),
                KeyFileError::DuplicateField {
                    line: 2,
                    name: "private-key",
                },
            ),
            (
                "private-key: abc".into(),
                KeyFileError::BadKey {
                    line: 1,
                    error: KeyParseError::Length(3),
                },
            ),
            (
                format!("private-key: {}", "zz".repeat(32)),
                KeyFileError::BadKey {
                    line: 1,
                    error: KeyParseError::NotHex,
                },
            ),
            (
                format!("private-key: {private}\npublic-key: {}", "00".repeat(32)),
                KeyFileError::Mismatch,
            ),
        ];
        for (text, want) in cases {
            assert_eq!(
                StaticKeypair::from_file_text(&text).unwrap_err(),
                want,
                "{text:?}"
            );
        }
        assert_eq!(
            KeyFileError::BadKey {
                line: 4,
                error: KeyParseError::NotHex
            }
            .to_string(),
            "line 4: a key is hex digits only (0-9, a-f)"
        );
    }

    #[test]
    fn trusted_keys_file() {
        let a = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
        let b = "DE9EDB7D7B7DC1B4D35B61C2ECE435373F8343C85B78674DADFC7E146F882B4F";
        let text = format!("# mesh nodes\n\n{a}  # node-1\n  {b}\n{a}\n");
        let keys = TrustedKeys::parse(&text).unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys.contains(&a.parse().unwrap()));
        assert!(keys.contains(&b.to_lowercase().parse().unwrap()));
        assert!(!keys.contains(&PublicKey([0; 32])));
        assert_eq!(
            TrustedKeys::parse(&format!("{a}\n\n{a}x\n")).unwrap_err(),
            KeyFileError::BadKey {
                line: 3,
                error: KeyParseError::Length(65)
            }
        );
        assert!(TrustedKeys::parse("# none yet\n").unwrap().is_empty());
    }

    #[test]
    fn public_key_display_parse_round_trip() {
        let key = PublicKey([0xab; 32]);
        assert_eq!(key.to_string().parse::<PublicKey>(), Ok(key));
        assert_eq!(
            "é".repeat(32).parse::<PublicKey>(),
            Err(KeyParseError::NotHex)
        );
    }
}
