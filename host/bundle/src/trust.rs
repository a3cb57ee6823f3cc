//! The trust store: which keys may sign bundles this gateway runs.
//!
//! On disk it is a directory holding:
//! - `*.pub`: one trusted Ed25519 public key per file, PEM SubjectPublicKeyInfo
//!   (`-----BEGIN PUBLIC KEY-----`, as `edgeplug keygen` writes it). Other files are ignored;
//!   a `*.pub` file that does not parse is an error (a typo never silently drops a key).
//! - `revoked.txt` (optional): revoked key ids, one per line, 32 hex digits; blank lines and
//!   text after `#` are ignored. A revoked key is refused even if its `.pub` file is present.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::error::{BundleError, SignatureError, TrustError, io_err};
use crate::sign::{KeyId, PublicKey, SIGNATURE_LEN};

/// Name of the revocation list inside a trust store directory.
pub const REVOKED_FILE: &str = "revoked.txt";

/// Trusted keys and revoked key ids.
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    keys: BTreeMap<KeyId, PublicKey>,
    revoked: BTreeSet<KeyId>,
}

impl TrustStore {
    /// A store trusting nothing.
    pub fn new() -> TrustStore {
        TrustStore::default()
    }

    /// Loads a trust store directory (see the module docs).
    pub fn load(dir: &Path) -> Result<TrustStore, TrustError> {
        let mut store = TrustStore::new();
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let path = entry.map_err(io_err(dir))?.path();
            if path.extension().is_some_and(|e| e == "pub") && path.is_file() {
                paths.push(path);
            }
        }
        paths.sort();
        for path in paths {
            let key = PublicKey::load(&path).map_err(|source| TrustError::BadKey {
                path: path.display().to_string(),
                source,
            })?;
            store.add_key(key);
        }
        let revoked_path = dir.join(REVOKED_FILE);
        match std::fs::read_to_string(&revoked_path) {
            Ok(text) => {
                for (index, line) in text.lines().enumerate() {
                    let text = line.split('#').next().unwrap_or("").trim();
                    if text.is_empty() {
                        continue;
                    }
                    let id = text
                        .parse::<KeyId>()
                        .map_err(|_| TrustError::BadRevocation {
                            path: revoked_path.display().to_string(),
                            line: index + 1,
                            text: text.to_string(),
                        })?;
                    store.revoke(id);
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(io_err(&revoked_path)(err).into()),
        }
        Ok(store)
    }

    /// Trusts a key; returns its id.
    pub fn add_key(&mut self, key: PublicKey) -> KeyId {
        let id = key.id();
        self.keys.insert(id, key);
        id
    }

    /// Revokes a key id (whether or not its key is present).
    pub fn revoke(&mut self, id: KeyId) {
        self.revoked.insert(id);
    }

    /// Ids of the trusted keys, revoked ones included.
    pub fn key_ids(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.keys.keys().copied()
    }

    /// Whether `id` is on the revocation list.
    pub fn is_revoked(&self, id: &KeyId) -> bool {
        self.revoked.contains(id)
    }

    /// Checks a signature made by [`sign_detached`](crate::sign_detached) over `message` in
    /// `domain` by the key `id`: revoked first, then unknown, then the signature itself.
    pub fn verify_detached(
        &self,
        id: &KeyId,
        domain: &str,
        message: &[u8],
        signature: &[u8; SIGNATURE_LEN],
    ) -> Result<(), SignatureError> {
        if self.revoked.contains(id) {
            return Err(SignatureError::RevokedKey { key_id: *id });
        }
        let key = self
            .keys
            .get(id)
            .ok_or(SignatureError::UnknownKey { key_id: *id })?;
        if key.verify(&crate::sign::detached_message(domain, message), signature) {
            Ok(())
        } else {
            Err(SignatureError::BadSignature { key_id: *id })
        }
    }

    /// The key a bundle signed by `id` must verify against: revocation first, then presence.
    pub(crate) fn key_for(&self, id: &KeyId) -> Result<&PublicKey, BundleError> {
        if self.revoked.contains(id) {
            return Err(BundleError::RevokedKey { key_id: *id });
        }
        self.keys
            .get(id)
            .ok_or(BundleError::UnknownKey { key_id: *id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::SecretKey;

    #[test]
    fn loads_keys_and_revocations_strictly() {
        let dir = tempfile::tempdir().unwrap();
        let a = SecretKey::from_seed([1; 32]);
        let b = SecretKey::from_seed([2; 32]);
        std::fs::write(dir.path().join("a.pub"), a.public_key().to_pem()).unwrap();
        std::fs::write(dir.path().join("b.pub"), b.public_key().to_pem()).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        std::fs::write(
            dir.path().join(REVOKED_FILE),
            format!("# retired 2026-01\n\n{}  # leaked\n", b.key_id()),
        )
        .unwrap();
        let store = TrustStore::load(dir.path()).unwrap();
        assert_eq!(store.key_ids().count(), 2);
        assert!(store.key_for(&a.key_id()).is_ok());
        assert!(matches!(
            store.key_for(&b.key_id()),
            Err(BundleError::RevokedKey { .. })
        ));
        let c = SecretKey::from_seed([3; 32]);
        assert!(matches!(
            store.key_for(&c.key_id()),
            Err(BundleError::UnknownKey { .. })
        ));

        std::fs::write(dir.path().join(REVOKED_FILE), "not-a-key-id\n").unwrap();
        assert!(matches!(
            TrustStore::load(dir.path()),
            Err(TrustError::BadRevocation { line: 1, .. })
        ));
        // Detached signatures follow the same trust: revoked, unknown, then the bytes.
        let sig = crate::sign_detached(&a, "test", b"notice");
        assert!(
            store
                .verify_detached(&a.key_id(), "test", b"notice", &sig)
                .is_ok()
        );
        assert!(matches!(
            store.verify_detached(&a.key_id(), "test", b"notics", &sig),
            Err(SignatureError::BadSignature { .. })
        ));
        let sig_b = crate::sign_detached(&b, "test", b"notice");
        assert!(matches!(
            store.verify_detached(&b.key_id(), "test", b"notice", &sig_b),
            Err(SignatureError::RevokedKey { .. })
        ));
        let sig_c = crate::sign_detached(&c, "test", b"notice");
        assert!(matches!(
            store.verify_detached(&c.key_id(), "test", b"notice", &sig_c),
            Err(SignatureError::UnknownKey { .. })
        ));

        std::fs::remove_file(dir.path().join(REVOKED_FILE)).unwrap();
        std::fs::write(dir.path().join("broken.pub"), "hello").unwrap();
        assert!(matches!(
            TrustStore::load(dir.path()),
            Err(TrustError::BadKey { .. })
        ));
        assert!(matches!(
            TrustStore::load(&dir.path().join("missing")),
            Err(TrustError::Io { .. })
        ));
    }
}
