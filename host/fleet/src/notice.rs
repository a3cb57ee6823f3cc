//! The signed notice: "plugin P is version V, the OCI manifest with digest D in repository R".
//!
//! On the wire it is one JSON object (at most [`MAX_NOTICE_BYTES`], unknown keys refused):
//!
//! ```json
//! {"format":1,"plugin":"digits","version":"0.2.0","repository":"edgeplug/digits",
//!  "digest":"sha256:…","size":123456,"sequence":1767225600000,"group":"factory-a",
//!  "gateway":"gw-7","issued_at":1767225600,"key_id":"…","signature":"…"}
//! ```
//!
//! The signature (Ed25519, through `edgeplug_bundle::sign_detached` in the domain
//! [`NOTICE_DOMAIN`]) covers the **canonical bytes**, not the JSON: one `key value` line per
//! field in a fixed order (see [`Notice::canonical_bytes`]). Every value is checked to hold no
//! space or line break first, so two different notices never have the same canonical bytes,
//! whatever a JSON encoder does with key order or escapes.
//!
//! The notice names its target (`group`, and `gateway` for a pin), so a notice for one group
//! or gateway cannot be replayed onto another's topic; `sequence` grows with each notice on a
//! topic, so an old notice cannot be replayed onto its own; `key_id` is signed too, so the
//! signer cannot be swapped. The manifest digest names the bytes: a registry serving anything
//! else is caught by the digest before the bundle's own signature is even read.
//!
//! **Formats.** Format 1 is a release: "go to this version", refused by a gateway running a
//! newer one (anti-downgrade). Format 2 adds `"kind"`, and its only new kind is `rollback`:
//! "go back to this version", which a staged rollout publishes on a gateway's pin when a gate
//! fails. A rollback overrides anti-downgrade because it says so *inside the signature* (the
//! canonical bytes start `format 2` / `kind rollback`), so a release notice cannot be turned
//! into one; the topic's monotonic sequence still applies, so a rollback replayed after a
//! newer notice is refused like any replay. A release is still written as format 1, so
//! gateways that predate format 2 keep reading releases (and refuse rollbacks, whose format
//! they do not know, rather than misread them); format 1 notices parse as releases.
//!
//! Format 2's second kind is `canary`: "run this version as a canary next to the active one"
//! (the gateway's in-process canary: a share of requests or a shadow copy of each, under a
//! gate that reverts it, see `edgeplug_gateway::registry::canary`). Its `canary` field is the
//! canary's spec in the syntax of the admin API's query string (`canary=10&max_error_rate=1%
//! &promote_after=10m`, no spaces), signed as the line `canary SPEC` after the kind.

use edgeplug_bundle::{KeyId, SIGNATURE_LEN, SecretKey, SignatureError, TrustStore};
use semver::Version;
use serde::{Deserialize, Serialize};

use crate::topics;

/// The signature domain of notices: no other signature made by the same key verifies here.
pub const NOTICE_DOMAIN: &str = "edgeplug-fleet-notice";
/// The newest notice format this build reads and writes (see the module docs).
pub const FORMAT: u32 = 2;
/// The format of releases, which gateways before format 2 read too.
pub const FORMAT_RELEASE: u32 = 1;
/// Largest notice accepted from the broker, in bytes.
pub const MAX_NOTICE_BYTES: usize = 4096;

/// What a notice asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NoticeKind {
    /// Go to this version; an older one than the active version changes nothing.
    #[default]
    Release,
    /// Go back to this version, even though it is older than the active one (signed as such).
    Rollback,
    /// Run this version as a canary next to the active one, as the notice's `canary` spec
    /// says; the gate decides whether it stays.
    Canary,
}

impl NoticeKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            NoticeKind::Release => "release",
            NoticeKind::Rollback => "rollback",
            NoticeKind::Canary => "canary",
        }
    }

    /// The wire format a notice of this kind is written in.
    pub fn format(&self) -> u32 {
        match self {
            NoticeKind::Release => FORMAT_RELEASE,
            NoticeKind::Rollback | NoticeKind::Canary => FORMAT,
        }
    }
}

/// What a notice says (everything but the signature).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// A release or a rollback.
    pub kind: NoticeKind,
    /// The plugin's name (as in its `plugin.toml`): 1-64 of `a-z 0-9 -`.
    pub plugin: String,
    pub version: Version,
    /// The repository inside the registry, e.g. `edgeplug/digits`; the registry host is the
    /// gateway's to choose (its `[fleet] registry`, possibly a mirror).
    pub repository: String,
    /// The OCI manifest's digest, `sha256:` and 64 lower-case hex digits.
    pub digest: String,
    /// Bytes of the bundle (the artifact's one layer).
    pub size: u64,
    /// Grows with every notice on the same topic; a gateway refuses one not above the last it
    /// accepted there.
    pub sequence: u64,
    pub group: String,
    /// `Some(id)`: a pin for that gateway only; `None`: the whole group.
    pub gateway: Option<String>,
    /// Seconds since the Unix epoch, when it was signed. Informative: a gateway's clock is
    /// not trusted to order notices (the sequence does).
    pub issued_at: u64,
    /// A canary notice's spec (`canary=10&max_error_rate=1%`); `None` for other kinds.
    pub canary: Option<String>,
}

/// A notice with its signer and signature. Only [`SignedNotice::verify`] says whether to
/// believe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedNotice {
    pub notice: Notice,
    pub key_id: KeyId,
    signature: [u8; SIGNATURE_LEN],
}

/// Why a notice was refused.
#[derive(Debug, thiserror::Error)]
pub enum NoticeError {
    #[error("notice is {0} bytes, over the limit of {MAX_NOTICE_BYTES}")]
    TooLarge(usize),
    #[error("notice is not valid JSON of the notice format: {0}")]
    Malformed(String),
    #[error("notice format {0} is not supported (this build reads formats 1 to {FORMAT})")]
    UnsupportedFormat(u32),
    #[error("notice field {field}: {reason}")]
    BadField { field: &'static str, reason: String },
    #[error("notice signature refused: {0}")]
    Signature(#[from] SignatureError),
    #[error("the notice is for {expected}, but arrived on {topic}")]
    WrongTopic { topic: String, expected: String },
}

impl NoticeError {
    /// A short, stable code for the status topic and logs.
    pub fn code(&self) -> &'static str {
        match self {
            NoticeError::Signature(SignatureError::UnknownKey { .. }) => "untrusted-signer",
            NoticeError::Signature(SignatureError::RevokedKey { .. }) => "revoked-signer",
            NoticeError::Signature(SignatureError::BadSignature { .. }) => "bad-signature",
            NoticeError::WrongTopic { .. } => "wrong-topic",
            _ => "malformed-notice",
        }
    }
}

fn bad(field: &'static str, reason: impl Into<String>) -> NoticeError {
    NoticeError::BadField {
        field,
        reason: reason.into(),
    }
}

/// A plugin name as `plugin.toml` allows it.
fn is_plugin_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// An OCI repository path: lower-case components of `a-z 0-9 . _ -` joined by `/`.
pub fn is_repository(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 255
        && path.split('/').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
                && c.as_bytes()[0].is_ascii_alphanumeric()
        })
}

/// `sha256:` and 64 lower-case hex digits.
pub fn is_sha256_digest(digest: &str) -> bool {
    digest
        .strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

impl Notice {
    /// Checks every field's syntax (not the signature).
    pub fn validate(&self) -> Result<(), NoticeError> {
        if !is_plugin_name(&self.plugin) {
            return Err(bad("plugin", "must be 1-64 characters of a-z, 0-9 and '-'"));
        }
        let version = self.version.to_string();
        if version.len() > 128 {
            return Err(bad("version", "longer than 128 characters"));
        }
        if !is_repository(&self.repository) {
            return Err(bad(
                "repository",
                "must be '/'-separated lower-case components of a-z, 0-9, '.', '_', '-'",
            ));
        }
        if !is_sha256_digest(&self.digest) {
            return Err(bad(
                "digest",
                "must be 'sha256:' and 64 lower-case hex digits",
            ));
        }
        if self.size == 0 {
            return Err(bad("size", "must be at least 1"));
        }
        crate::check_fleet_name("group", &self.group).map_err(|e| bad("group", e.to_string()))?;
        if let Some(id) = &self.gateway {
            crate::check_fleet_name("gateway", id).map_err(|e| bad("gateway", e.to_string()))?;
        }
        match (&self.kind, &self.canary) {
            (NoticeKind::Canary, Some(spec)) => {
                if spec.len() > 512 || spec.contains(|c: char| c.is_whitespace() || c.is_control())
                {
                    return Err(bad("canary", "at most 512 characters, without spaces"));
                }
                edgeplug_gateway::registry::parse_canary_spec(spec)
                    .map_err(|e| bad("canary", e))?;
            }
            (NoticeKind::Canary, None) => {
                return Err(bad("canary", "a canary notice gives its canary spec"));
            }
            (_, Some(_)) => return Err(bad("canary", "only canary notices have a spec")),
            (_, None) => {}
        }
        Ok(())
    }

    /// The topic this notice belongs on.
    pub fn topic(&self) -> String {
        match &self.gateway {
            Some(id) => topics::pin_plugin(&self.group, id, &self.plugin),
            None => topics::group_plugin(&self.group, &self.plugin),
        }
    }

    /// The bytes the signature covers: one `key value\n` line per field, in this order, with
    /// the signer's key id last. Call only on a validated notice (no value holds a space or a
    /// line break: names, digests and repositories are checked, and a semver version has
    /// neither).
    ///
    /// A release's bytes are exactly format 1's (signatures made before format 2 still
    /// verify); a rollback's start `format 2` and `kind rollback`, so no format 1 signature
    /// can pass for a rollback.
    pub fn canonical_bytes(&self, key_id: &KeyId) -> Vec<u8> {
        let head = match (self.kind, &self.canary) {
            (NoticeKind::Release, _) => format!("format {FORMAT_RELEASE}\n"),
            (NoticeKind::Canary, Some(spec)) => {
                format!("format {FORMAT}\nkind canary\ncanary {spec}\n")
            }
            (kind, _) => format!("format {}\nkind {}\n", kind.format(), kind.as_str()),
        };
        format!(
            "{head}plugin {}\nversion {}\nrepository {}\ndigest {}\nsize {}\n\
             sequence {}\ngroup {}\ngateway {}\nissued_at {}\nkey_id {key_id}\n",
            self.plugin,
            self.version,
            self.repository,
            self.digest,
            self.size,
            self.sequence,
            self.group,
            self.gateway.as_deref().unwrap_or("-"),
            self.issued_at,
        )
        .into_bytes()
    }

    /// Signs the notice with `key`.
    pub fn sign(self, key: &SecretKey) -> Result<SignedNotice, NoticeError> {
        self.validate()?;
        let key_id = key.key_id();
        let signature =
            edgeplug_bundle::sign_detached(key, NOTICE_DOMAIN, &self.canonical_bytes(&key_id));
        Ok(SignedNotice {
            notice: self,
            key_id,
            signature,
        })
    }
}

/// The JSON form, field for field.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    format: u32,
    /// Format 2 only: `rollback` or `canary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    /// Kind `canary` only: the canary's spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    canary: Option<String>,
    plugin: String,
    version: String,
    repository: String,
    digest: String,
    size: u64,
    sequence: u64,
    group: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gateway: Option<String>,
    issued_at: u64,
    key_id: String,
    signature: String,
}

impl SignedNotice {
    /// The wire form (JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        let n = &self.notice;
        serde_json::to_vec(&Wire {
            format: n.kind.format(),
            kind: match n.kind {
                NoticeKind::Release => None,
                kind => Some(kind.as_str().to_string()),
            },
            canary: n.canary.clone(),
            plugin: n.plugin.clone(),
            version: n.version.to_string(),
            repository: n.repository.clone(),
            digest: n.digest.clone(),
            size: n.size,
            sequence: n.sequence,
            group: n.group.clone(),
            gateway: n.gateway.clone(),
            issued_at: n.issued_at,
            key_id: self.key_id.to_string(),
            signature: hex::encode(self.signature),
        })
        .expect("a notice always serializes")
    }

    /// Parses the wire form strictly (size, keys, every field's syntax). The signature is not
    /// checked here: see [`SignedNotice::verify`].
    pub fn parse(bytes: &[u8]) -> Result<SignedNotice, NoticeError> {
        if bytes.len() > MAX_NOTICE_BYTES {
            return Err(NoticeError::TooLarge(bytes.len()));
        }
        let wire: Wire =
            serde_json::from_slice(bytes).map_err(|e| NoticeError::Malformed(e.to_string()))?;
        let kind = match (wire.format, wire.kind.as_deref()) {
            (FORMAT_RELEASE, None) => NoticeKind::Release,
            (FORMAT_RELEASE, Some(_)) => {
                return Err(bad("kind", "format 1 notices have no kind"));
            }
            (FORMAT, Some("rollback")) => NoticeKind::Rollback,
            (FORMAT, Some("canary")) => NoticeKind::Canary,
            (FORMAT, Some(other)) => {
                // A release is written as format 1; anything else is unknown.
                return Err(bad("kind", format!("{other:?} is not a kind of format 2")));
            }
            (FORMAT, None) => return Err(bad("kind", "format 2 notices name their kind")),
            (format, _) => return Err(NoticeError::UnsupportedFormat(format)),
        };
        let version = Version::parse(&wire.version).map_err(|e| {
            bad(
                "version",
                format!("{:?} is not a semantic version: {e}", wire.version),
            )
        })?;
        let key_id = wire
            .key_id
            .parse::<KeyId>()
            .map_err(|_| bad("key_id", "must be 32 hex digits"))?;
        let mut signature = [0u8; SIGNATURE_LEN];
        hex::decode_to_slice(&wire.signature, &mut signature)
            .map_err(|_| bad("signature", "must be 128 hex digits"))?;
        let notice = Notice {
            kind,
            plugin: wire.plugin,
            version,
            repository: wire.repository,
            digest: wire.digest,
            size: wire.size,
            sequence: wire.sequence,
            group: wire.group,
            gateway: wire.gateway,
            issued_at: wire.issued_at,
            canary: wire.canary,
        };
        notice.validate()?;
        Ok(SignedNotice {
            notice,
            key_id,
            signature,
        })
    }

    /// Whether a key of `trust` signed exactly this notice.
    pub fn verify(&self, trust: &TrustStore) -> Result<(), NoticeError> {
        trust.verify_detached(
            &self.key_id,
            NOTICE_DOMAIN,
            &self.notice.canonical_bytes(&self.key_id),
            &self.signature,
        )?;
        Ok(())
    }

    /// Checks that the notice belongs on `topic` (its group, its gateway, its plugin).
    pub fn check_topic(&self, topic: &str) -> Result<(), NoticeError> {
        let expected = self.notice.topic();
        if expected == topic {
            Ok(())
        } else {
            Err(NoticeError::WrongTopic {
                topic: topic.to_string(),
                expected,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn notice() -> Notice {
        Notice {
            kind: NoticeKind::Release,
            plugin: "digits".into(),
            version: Version::new(0, 2, 0),
            repository: "edgeplug/digits".into(),
            digest: format!("sha256:{}", "ab".repeat(32)),
            size: 1234,
            sequence: 7,
            group: "g1".into(),
            gateway: None,
            issued_at: 1_700_000_000,
            canary: None,
        }
    }

    fn trusting(key: &SecretKey) -> TrustStore {
        let mut trust = TrustStore::new();
        trust.add_key(key.public_key());
        trust
    }

    #[test]
    fn a_signed_notice_round_trips_and_verifies() {
        let key = SecretKey::generate();
        let signed = notice().sign(&key).unwrap();
        let parsed = SignedNotice::parse(&signed.to_bytes()).unwrap();
        assert_eq!(parsed, signed);
        parsed.verify(&trusting(&key)).unwrap();
        parsed
            .check_topic("edgeplug/fleet/g1/plugins/digits")
            .unwrap();
        assert_eq!(
            parsed
                .check_topic("edgeplug/fleet/g2/plugins/digits")
                .unwrap_err()
                .code(),
            "wrong-topic"
        );
    }

    #[test]
    fn any_changed_field_breaks_the_signature() {
        let key = SecretKey::generate();
        let trust = trusting(&key);
        let signed = notice().sign(&key).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&signed.to_bytes()).unwrap();
        let changes: [(&str, serde_json::Value); 9] = [
            ("plugin", "digitz".into()),
            ("version", "0.2.1".into()),
            ("repository", "edgeplug/other".into()),
            ("digest", format!("sha256:{}", "cd".repeat(32)).into()),
            ("size", 1235.into()),
            ("sequence", 8.into()),
            ("group", "g2".into()),
            ("gateway", "gw-1".into()),
            ("issued_at", 1_700_000_001u64.into()),
        ];
        for (field, value) in changes {
            let mut changed = json.clone();
            changed[field] = value;
            let parsed = SignedNotice::parse(&serde_json::to_vec(&changed).unwrap()).unwrap();
            let err = parsed.verify(&trust).unwrap_err();
            assert_eq!(err.code(), "bad-signature", "changing {field}");
        }
    }

    #[test]
    fn an_untrusted_or_revoked_signer_is_refused() {
        let key = SecretKey::generate();
        let other = SecretKey::generate();
        let signed = notice().sign(&other).unwrap();
        assert_eq!(
            signed.verify(&trusting(&key)).unwrap_err().code(),
            "untrusted-signer"
        );
        let mut trust = trusting(&other);
        trust.revoke(other.key_id());
        assert_eq!(signed.verify(&trust).unwrap_err().code(), "revoked-signer");
    }

    #[test]
    fn malformed_notices_are_refused_with_a_reason() {
        let key = SecretKey::generate();
        let good: serde_json::Value =
            serde_json::from_slice(&notice().sign(&key).unwrap().to_bytes()).unwrap();
        let cases: [(&str, serde_json::Value); 7] = [
            ("digest", "latest".into()),
            ("digest", format!("sha512:{}", "ab".repeat(32)).into()),
            ("plugin", "Digits".into()),
            ("repository", "edgeplug//digits".into()),
            ("group", "a/b".into()),
            ("gateway", "+".into()),
            ("version", "two".into()),
        ];
        for (field, value) in cases {
            let mut bad = good.clone();
            bad[field] = value;
            let err = SignedNotice::parse(&serde_json::to_vec(&bad).unwrap()).unwrap_err();
            assert!(
                matches!(err, NoticeError::BadField { .. }),
                "{field}: {err}"
            );
        }
        let mut extra = good.clone();
        extra["tag"] = "latest".into();
        assert!(matches!(
            SignedNotice::parse(&serde_json::to_vec(&extra).unwrap()),
            Err(NoticeError::Malformed(_))
        ));
        let mut future = good.clone();
        future["format"] = 3.into();
        assert!(matches!(
            SignedNotice::parse(&serde_json::to_vec(&future).unwrap()),
            Err(NoticeError::UnsupportedFormat(3))
        ));
        assert!(matches!(
            SignedNotice::parse(&vec![b' '; MAX_NOTICE_BYTES + 1]),
            Err(NoticeError::TooLarge(_))
        ));
        assert!(matches!(
            SignedNotice::parse(b"offline"),
            Err(NoticeError::Malformed(_))
        ));
    }
}

#[cfg(test)]
mod rollback_tests {
    use super::*;

    /// The tests' notice, pinned to one gateway as a rollout's are.
    fn release() -> Notice {
        Notice {
            gateway: Some("gw-1".into()),
            ..super::tests::notice()
        }
    }

    #[test]
    fn a_release_is_still_format_1_byte_for_byte() {
        let key = SecretKey::generate();
        let signed = release().sign(&key).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&signed.to_bytes()).unwrap();
        assert_eq!(json["format"], 1);
        assert!(json.get("kind").is_none(), "{json}");
        // The canonical bytes of format 1, as gateways before format 2 sign and check them.
        let canonical = String::from_utf8(release().canonical_bytes(&key.key_id())).unwrap();
        assert!(
            canonical.starts_with("format 1\nplugin digits\n"),
            "{canonical}"
        );
    }

    #[test]
    fn a_rollback_round_trips_and_cannot_be_made_from_a_release() {
        let key = SecretKey::generate();
        let mut trust = TrustStore::new();
        trust.add_key(key.public_key());
        let rollback = Notice {
            kind: NoticeKind::Rollback,
            ..release()
        }
        .sign(&key)
        .unwrap();
        let bytes = rollback.to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["format"], 2);
        assert_eq!(json["kind"], "rollback");
        let parsed = SignedNotice::parse(&bytes).unwrap();
        assert_eq!(parsed.notice.kind, NoticeKind::Rollback);
        parsed.verify(&trust).unwrap();

        // A validly signed release relabelled as a rollback: the signature does not cover it.
        let release = release().sign(&key).unwrap();
        let mut relabelled: serde_json::Value =
            serde_json::from_slice(&release.to_bytes()).unwrap();
        relabelled["format"] = 2.into();
        relabelled["kind"] = "rollback".into();
        let forged = SignedNotice::parse(&serde_json::to_vec(&relabelled).unwrap()).unwrap();
        assert_eq!(forged.verify(&trust).unwrap_err().code(), "bad-signature");
        // And the other way round.
        let mut demoted = json.clone();
        demoted["format"] = 1.into();
        demoted.as_object_mut().unwrap().remove("kind");
        let forged = SignedNotice::parse(&serde_json::to_vec(&demoted).unwrap()).unwrap();
        assert_eq!(forged.verify(&trust).unwrap_err().code(), "bad-signature");

        // Kinds that do not fit their format are refused.
        for (format, kind) in [
            (1, Some("rollback")),
            (2, None),
            (2, Some("release")),
            (2, Some("x")),
        ] {
            let mut bad = json.clone();
            bad["format"] = format.into();
            match kind {
                Some(k) => bad["kind"] = k.into(),
                None => {
                    bad.as_object_mut().unwrap().remove("kind");
                }
            }
            assert!(
                matches!(
                    SignedNotice::parse(&serde_json::to_vec(&bad).unwrap()),
                    Err(NoticeError::BadField { field: "kind", .. })
                ),
                "format {format} kind {kind:?}"
            );
        }
    }

    #[test]
    fn a_canary_notice_signs_its_spec() {
        let key = SecretKey::generate();
        let mut trust = TrustStore::new();
        trust.add_key(key.public_key());
        let canary = Notice {
            kind: NoticeKind::Canary,
            canary: Some("canary=10&max_error_rate=1%".into()),
            ..release()
        };
        let canonical = String::from_utf8(canary.canonical_bytes(&key.key_id())).unwrap();
        assert!(
            canonical.starts_with("format 2\nkind canary\ncanary canary=10&max_error_rate=1%\n"),
            "{canonical}"
        );
        let bytes = canary.sign(&key).unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["kind"], "canary");
        let parsed = SignedNotice::parse(&bytes).unwrap();
        assert_eq!(
            parsed.notice.canary.as_deref(),
            Some("canary=10&max_error_rate=1%")
        );
        parsed.verify(&trust).unwrap();

        // A wider share, a looser gate or a plain release made of it: not what was signed.
        for (field, value) in [
            (
                "canary",
                serde_json::Value::from("canary=90&max_error_rate=1%"),
            ),
            ("canary", "canary=10&max_error_rate=50%".into()),
        ] {
            let mut forged = json.clone();
            forged[field] = value;
            let forged = SignedNotice::parse(&serde_json::to_vec(&forged).unwrap()).unwrap();
            assert_eq!(forged.verify(&trust).unwrap_err().code(), "bad-signature");
        }
        let mut released = json.clone();
        released["format"] = 1.into();
        let map = released.as_object_mut().unwrap();
        map.remove("kind");
        map.remove("canary");
        let forged = SignedNotice::parse(&serde_json::to_vec(&released).unwrap()).unwrap();
        assert_eq!(forged.verify(&trust).unwrap_err().code(), "bad-signature");

        // A spec the gateway would refuse, a missing one, one on another kind, or one with
        // a space (the canonical bytes would be ambiguous) is refused before any signature.
        for (kind, spec) in [
            (NoticeKind::Canary, Some("canary=150")),
            (NoticeKind::Canary, None),
            (NoticeKind::Release, Some("canary=10")),
            (NoticeKind::Canary, Some("canary=10 &min_requests=5")),
        ] {
            let notice = Notice {
                kind,
                canary: spec.map(String::from),
                ..release()
            };
            assert!(
                matches!(
                    notice.sign(&key),
                    Err(NoticeError::BadField {
                        field: "canary",
                        ..
                    })
                ),
                "{kind:?} {spec:?}"
            );
        }
    }
}
