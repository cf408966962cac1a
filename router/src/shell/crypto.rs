//! The encryption settings of a running router, as files and passwords on
//! this host: they become the core's [`HandshakeConfig`] and can change
//! while the router runs (password rotation, an edited trusted-keys file).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::core::crypto::{HandshakeConfig, NoiseConfig, Psk, PskSet, StaticKeypair, TrustedKeys};

/// Why the encryption settings could not be put together. Each message
/// names the file or flag and what to do.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("cannot read {what} {path}: {error}; {fix}")]
    Read {
        what: &'static str,
        path: PathBuf,
        error: std::io::Error,
        fix: &'static str,
    },
    #[error("{what} {path} is not valid: {detail}; {fix}")]
    Parse {
        what: &'static str,
        path: PathBuf,
        detail: String,
        fix: &'static str,
    },
    #[error("{0}")]
    Other(String),
}

/// Reads a key file written by `weft keygen`.
pub fn read_key_file(path: &Path) -> Result<StaticKeypair, CryptoError> {
    let text = fs::read_to_string(path).map_err(|error| CryptoError::Read {
        what: "--key-file",
        path: path.into(),
        error,
        fix: "create one with `weft keygen FILE`",
    })?;
    StaticKeypair::from_file_text(&text).map_err(|e| CryptoError::Parse {
        what: "--key-file",
        path: path.into(),
        detail: e.to_string(),
        fix: "create a fresh one with `weft keygen FILE`",
    })
}

/// Reads a trusted-keys file: one public key per line.
pub fn read_trusted_keys(path: &Path) -> Result<TrustedKeys, CryptoError> {
    let text = fs::read_to_string(path).map_err(|error| CryptoError::Read {
        what: "--trusted-keys",
        path: path.into(),
        error,
        fix: "list the peers' public keys (from `weft keygen`), one per line",
    })?;
    TrustedKeys::parse(&text).map_err(|e| CryptoError::Parse {
        what: "--trusted-keys",
        path: path.into(),
        detail: e.to_string(),
        fix: "put one 64-hex-digit public key per line; # starts a comment",
    })
}

/// Derives the PSK set: dial with `password`, also accept `also_accept`.
pub fn psk_set(password: &str, also_accept: Option<&str>) -> Result<PskSet, CryptoError> {
    let derive = |p: &str| {
        Psk::from_password(p)
            .map_err(|e| CryptoError::Other(format!("cannot use the password: {e}")))
    };
    let send = derive(password)?;
    let also = also_accept.map(derive).transpose()?.into_iter().collect();
    Ok(PskSet::new(send, also))
}

/// Everything that decides how this router's handshakes go.
#[derive(Clone, Debug)]
pub struct CryptoSettings {
    keypair: Arc<StaticKeypair>,
    psks: Option<Arc<PskSet>>,
    trusted_path: Option<PathBuf>,
    trusted: Option<Arc<TrustedKeys>>,
    trusted_mtime: Option<SystemTime>,
}

impl CryptoSettings {
    /// `None` when neither a password nor trusted keys are given: the
    /// router runs unencrypted.
    pub fn new(
        key_file: Option<&Path>,
        psks: Option<PskSet>,
        trusted_path: Option<&Path>,
    ) -> Result<Option<Self>, CryptoError> {
        if psks.is_none() && trusted_path.is_none() {
            if key_file.is_some() {
                return Err(CryptoError::Other(
                    "--key-file alone does not authenticate anyone; add --password (or --password-file) and/or --trusted-keys".into(),
                ));
            }
            return Ok(None);
        }
        let keypair = match key_file {
            Some(path) => read_key_file(path)?,
            None => StaticKeypair::generate()
                .map_err(|e| CryptoError::Other(format!("cannot generate a key pair: {e}")))?,
        };
        let mut settings = Self {
            keypair: Arc::new(keypair),
            psks: psks.map(Arc::new),
            trusted_path: trusted_path.map(Path::to_path_buf),
            trusted: None,
            trusted_mtime: None,
        };
        if let Some(path) = trusted_path {
            settings.trusted = Some(Arc::new(read_trusted_keys(path)?));
            settings.trusted_mtime = mtime(path);
        }
        Ok(Some(settings))
    }

    /// The core's view of these settings.
    pub fn handshake_config(&self) -> HandshakeConfig {
        match NoiseConfig::new(
            self.keypair.clone(),
            self.psks.clone(),
            self.trusted.clone(),
        ) {
            Ok(n) => HandshakeConfig::Noise(n),
            // `new` refuses only "no password and no keys", which
            // `CryptoSettings::new` never builds.
            Err(_) => HandshakeConfig::Plaintext,
        }
    }

    pub fn has_password(&self) -> bool {
        self.psks.is_some()
    }

    /// Replaces the passwords (rotation).
    pub fn set_psks(&mut self, psks: PskSet) {
        self.psks = Some(Arc::new(psks));
    }

    /// Re-reads the trusted-keys file if it changed; `Ok(true)` if the
    /// settings changed. A file that became unreadable or invalid keeps the
    /// old list (and the error says so).
    pub fn reload_trusted(&mut self) -> Result<bool, CryptoError> {
        let Some(path) = self.trusted_path.clone() else {
            return Ok(false);
        };
        let now = mtime(&path);
        if now == self.trusted_mtime {
            return Ok(false);
        }
        self.trusted_mtime = now;
        let keys = read_trusted_keys(&path)?;
        self.trusted = Some(Arc::new(keys));
        Ok(true)
    }
}

fn mtime(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_and_trusted_files_are_read_or_explained() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        let pair = StaticKeypair::generate().unwrap();
        fs::write(&key, pair.to_file_text().as_bytes()).unwrap();
        assert_eq!(read_key_file(&key).unwrap().public(), pair.public());
        let e = read_key_file(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cannot read --key-file") && e.contains("weft keygen"),
            "{e}"
        );
        let trusted = dir.path().join("trusted");
        fs::write(&trusted, format!("# peers\n{}\n", pair.public())).unwrap();
        assert!(
            read_trusted_keys(&trusted)
                .unwrap()
                .contains(&pair.public())
        );
        fs::write(&trusted, "not a key\n").unwrap();
        let e = read_trusted_keys(&trusted).unwrap_err().to_string();
        assert!(e.contains("is not valid") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn no_password_and_no_keys_is_plaintext_and_a_lone_key_file_is_refused() {
        assert!(CryptoSettings::new(None, None, None).unwrap().is_none());
        let e = CryptoSettings::new(Some(Path::new("/nonexistent")), None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--key-file alone"), "{e}");
    }
}
