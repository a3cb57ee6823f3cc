//! Keys, key ids, signing and signature checks: the only module that touches Ed25519.
//!
//! Key files are PEM, readable by OpenSSL (`openssl pkey -in KEY -noout -text`):
//! - a private key is PKCS#8 (`-----BEGIN PRIVATE KEY-----`), written with mode 0600;
//! - a public key is SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`), the `*.pub` files
//!   of a trust store.
//!
//! A key id is the lower-case hex of the first 16 bytes of the sha-256 of the raw 32-byte
//! Ed25519 public key (32 hex digits). Bundles carry it next to their signature; trust
//! stores and revocation lists name keys by it.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use sha2::Digest as _;

use crate::error::{KeyError, io_err};

/// Bytes of a key id.
pub const KEY_ID_LEN: usize = 16;
/// Bytes of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// Fingerprint of a public key: the first 16 bytes of sha-256 of its 32 raw bytes.
/// Shown and parsed as 32 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub(crate) [u8; KEY_ID_LEN]);

impl KeyId {
    /// The raw 16 bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_ID_LEN] {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl std::str::FromStr for KeyId {
    type Err = hex::FromHexError;

    /// 32 hex digits, either case.
    fn from_str(s: &str) -> Result<KeyId, hex::FromHexError> {
        let mut out = [0u8; KEY_ID_LEN];
        hex::decode_to_slice(s, &mut out)?;
        Ok(KeyId(out))
    }
}

/// A trusted (or to-be-trusted) Ed25519 public key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id())
    }
}

impl PublicKey {
    /// The key's id.
    pub fn id(&self) -> KeyId {
        let digest = sha2::Sha256::digest(self.0.as_bytes());
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        KeyId(id)
    }

    /// Parses a PEM SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`).
    pub fn from_pem(text: &str) -> Option<PublicKey> {
        VerifyingKey::from_public_key_pem(text).ok().map(PublicKey)
    }

    /// The PEM SubjectPublicKeyInfo text, `\n` line endings.
    pub fn to_pem(&self) -> String {
        self.0
            .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .expect("an Ed25519 public key always encodes")
    }

    /// Reads a `*.pub` file.
    pub fn load(path: &Path) -> Result<PublicKey, KeyError> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        PublicKey::from_pem(&text).ok_or_else(|| KeyError::BadFormat {
            path: path.display().to_string(),
            expected: "public (SubjectPublicKeyInfo)",
        })
    }

    /// Strict Ed25519 verification (rejects small-order keys and non-canonical signatures).
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8; SIGNATURE_LEN]) -> bool {
        let signature = Signature::from_bytes(signature);
        self.0.verify_strict(message, &signature).is_ok()
    }
}

/// An Ed25519 signing key. Its bytes are wiped on drop; `Debug` shows only the key id.
pub struct SecretKey(SigningKey);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.public_key().id())
    }
}

impl SecretKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> SecretKey {
        SecretKey(SigningKey::generate(&mut rand::rngs::OsRng))
    }

    /// A key from a fixed seed: for tests only.
    #[cfg(test)]
    pub(crate) fn from_seed(seed: [u8; 32]) -> SecretKey {
        SecretKey(SigningKey::from_bytes(&seed))
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// The id of the matching public key.
    pub fn key_id(&self) -> KeyId {
        self.public_key().id()
    }

    /// Reads a PEM PKCS#8 private key file. Warns when others may read it.
    pub fn load(path: &Path) -> Result<SecretKey, KeyError> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let meta = std::fs::metadata(path).map_err(io_err(path))?;
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "private key file is readable by others; chmod 600 it");
            }
        }
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        SigningKey::from_pkcs8_pem(&text)
            .map(SecretKey)
            .map_err(|_| KeyError::BadFormat {
                path: path.display().to_string(),
                expected: "private (PKCS#8)",
            })
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        use ed25519_dalek::Signer as _;
        self.0.sign(message).to_bytes()
    }
}

/// Opens the message of every detached signature, so that no detached signature can ever be
/// taken for a bundle's (a bundle's signed bytes open with [`crate::MAGIC`]) nor one domain's
/// for another's.
const DETACHED_PREFIX: &[u8] = b"edgeplug detached signature v1\0";

/// The bytes a detached signature covers: the prefix, the domain, a NUL, the message.
pub(crate) fn detached_message(domain: &str, message: &[u8]) -> Vec<u8> {
    assert!(
        !domain.is_empty() && !domain.contains('\0'),
        "a signature domain is a fixed, non-empty name without NUL"
    );
    let mut signed = Vec::with_capacity(DETACHED_PREFIX.len() + domain.len() + 1 + message.len());
    signed.extend_from_slice(DETACHED_PREFIX);
    signed.extend_from_slice(domain.as_bytes());
    signed.push(0);
    signed.extend_from_slice(message);
    signed
}

/// Signs arbitrary bytes (a fleet notice, say) with `key`, separated by `domain` (a fixed name
/// such as `"edgeplug-fleet-notice"`) from bundles and from every other domain. Check it with
/// [`TrustStore::verify_detached`](crate::TrustStore::verify_detached) and the same domain.
pub fn sign_detached(key: &SecretKey, domain: &str, message: &[u8]) -> [u8; SIGNATURE_LEN] {
    key.sign(&detached_message(domain, message))
}

/// Files written by [`generate_keypair`].
#[derive(Debug, Clone)]
pub struct GeneratedKey {
    /// `DIR/NAME.key`, PEM PKCS#8, mode 0600.
    pub private_path: PathBuf,
    /// `DIR/NAME.pub`, PEM SubjectPublicKeyInfo; copy it into a gateway's trust store.
    pub public_path: PathBuf,
    pub key_id: KeyId,
}

/// Creates `DIR/NAME.key` (created with mode 0600, never chmod-ed afterwards) and
/// `DIR/NAME.pub`. Creates `DIR` (mode 0700) if missing. Refuses to overwrite either file.
pub fn generate_keypair(dir: &Path, name: &str) -> Result<GeneratedKey, KeyError> {
    check_key_name(name)?;
    create_dir_private(dir)?;
    let private_path = dir.join(format!("{name}.key"));
    let public_path = dir.join(format!("{name}.pub"));
    for path in [&private_path, &public_path] {
        if std::fs::symlink_metadata(path).is_ok() {
            return Err(KeyError::Exists {
                path: path.display().to_string(),
            });
        }
    }
    let key = SecretKey::generate();
    // PKCS#8 v1 (seed only, RFC 8410): OpenSSL does not read the v2 form with the public
    // key that `SigningKey::to_pkcs8_pem` writes.
    let mut pkcs8 = ed25519_dalek::pkcs8::KeypairBytes::from(&key.0);
    pkcs8.public_key = None;
    let pem = pkcs8
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .expect("an Ed25519 private key always encodes");
    write_new(&private_path, pem.as_bytes(), 0o600)?;
    if let Err(err) = write_new(&public_path, key.public_key().to_pem().as_bytes(), 0o644) {
        let _ = std::fs::remove_file(&private_path);
        return Err(err);
    }
    Ok(GeneratedKey {
        private_path,
        public_path,
        key_id: key.key_id(),
    })
}

/// Loads `DIR/NAME.key`, generating the pair first if neither file exists (the README's
/// development key). Returns the key and whether it was just generated.
pub fn load_or_generate(dir: &Path, name: &str) -> Result<(SecretKey, bool), KeyError> {
    check_key_name(name)?;
    let private_path = dir.join(format!("{name}.key"));
    if std::fs::symlink_metadata(&private_path).is_ok() {
        return Ok((SecretKey::load(&private_path)?, false));
    }
    let generated = generate_keypair(dir, name)?;
    Ok((SecretKey::load(&generated.private_path)?, true))
}

fn check_key_name(name: &str) -> Result<(), KeyError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(KeyError::BadName(name.to_string()))
    }
}

fn create_dir_private(dir: &Path) -> Result<(), KeyError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    Ok(builder.create(dir).map_err(io_err(dir))?)
}

/// Creates a new file with `mode` from the start (`O_CREAT | O_EXCL`), writes and syncs it.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            KeyError::Exists {
                path: path.display().to_string(),
            }
        } else {
            KeyError::Io {
                path: path.display().to_string(),
                source,
            }
        }
    })?;
    file.write_all(bytes).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))?;
    if let Some(parent) = path.parent() {
        crate::fsutil::sync_dir(parent).map_err(io_err(parent))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_stable_fingerprints() {
        let key = SecretKey::from_seed([7; 32]);
        let id = key.key_id();
        let expected = hex::encode(&sha2::Sha256::digest(key.public_key().0.as_bytes())[..16]);
        assert_eq!(id.to_string(), expected);
        assert_eq!(id.to_string().parse::<KeyId>().unwrap(), id);
        assert_ne!(SecretKey::from_seed([8; 32]).key_id(), id);
    }

    #[test]
    fn sign_and_verify_strictly() {
        let key = SecretKey::from_seed([1; 32]);
        let sig = key.sign(b"hello");
        assert!(key.public_key().verify(b"hello", &sig));
        assert!(!key.public_key().verify(b"hellp", &sig));
        let mut bad = sig;
        bad[10] ^= 1;
        assert!(!key.public_key().verify(b"hello", &bad));
    }

    #[test]
    fn detached_signatures_are_bound_to_their_domain() {
        let key = SecretKey::from_seed([4; 32]);
        let sig = sign_detached(&key, "test-domain", b"message");
        let public = key.public_key();
        assert!(public.verify(&detached_message("test-domain", b"message"), &sig));
        assert!(!public.verify(&detached_message("other-domain", b"message"), &sig));
        assert!(!public.verify(&detached_message("test-domain", b"messagf"), &sig));
        // Neither the bare message nor its signature under plain `sign` is interchangeable.
        assert!(!public.verify(b"message", &sig));
        assert_ne!(key.sign(b"message"), sig);
    }

    #[test]
    fn keygen_writes_0600_private_key_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("keys");
        let generated = generate_keypair(&out, "dev").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&generated.private_path)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let private_text = std::fs::read_to_string(&generated.private_path).unwrap();
        assert!(private_text.starts_with("-----BEGIN PRIVATE KEY-----"));
        let public = PublicKey::load(&generated.public_path).unwrap();
        assert_eq!(public.id(), generated.key_id);
        let secret = SecretKey::load(&generated.private_path).unwrap();
        assert_eq!(secret.key_id(), generated.key_id);
        assert!(matches!(
            generate_keypair(&out, "dev"),
            Err(KeyError::Exists { .. })
        ));
        // The existing key is untouched.
        assert_eq!(
            std::fs::read_to_string(&generated.private_path).unwrap(),
            private_text
        );
        let (again, generated_now) = load_or_generate(&out, "dev").unwrap();
        assert!(!generated_now);
        assert_eq!(again.key_id(), generated.key_id);
        assert!(matches!(
            generate_keypair(&out, "../x"),
            Err(KeyError::BadName(_))
        ));
        assert!(matches!(
            PublicKey::load(&generated.private_path),
            Err(KeyError::BadFormat { .. })
        ));
    }
}
