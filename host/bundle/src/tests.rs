//! Bundle, trust and store tests: every refusal with its own error and an unchanged active
//! version, a mutation fuzzer over the reader, and SIGKILL during installs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use semver::Version;

use super::format::{self, encode_unsigned, sign_unsigned_prefix};
use super::*;
use crate::manifest::{MANIFEST_FILE, ManifestError};

const NAME: &str = "digits";
const COMPONENT: &str = "plugin.wasm";
const MODEL: &str = "models/digits.onnx";

/// Writes a plugin directory with a component, a model, weights and a self-test.
fn write_plugin(root: &Path, name: &str, version: &str, component: &[u8]) -> PathBuf {
    let dir = root.join(format!("src-{name}-{version}-{}", rand::random::<u32>()));
    for sub in ["models", "weights", "tests"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    std::fs::write(
        dir.join(MANIFEST_FILE),
        format!(
            r#"# A test plugin.
name = "{name}"
version = "{version}"
description = "digit classifier"
world = "edgeplug:plugin/plugin@0.1.0"

[grants.models]
digits = "{MODEL}"

[grants]
weights = ["weights/head.safetensors"]

[limits]
deadline_ms = 500

[[self-test]]
name = "zero"
input = "tests/zero.png"
expect = "tests/zero.json"
"#
        ),
    )
    .unwrap();
    std::fs::write(dir.join(COMPONENT), component).unwrap();
    std::fs::write(dir.join(MODEL), b"onnx model bytes ".repeat(20)).unwrap();
    std::fs::write(dir.join("weights/head.safetensors"), [7u8; 300]).unwrap();
    std::fs::write(dir.join("tests/zero.png"), b"\x89PNG fake").unwrap();
    std::fs::write(dir.join("tests/zero.json"), br#"{"digit":0}"#).unwrap();
    dir
}

fn signer() -> SecretKey {
    SecretKey::from_seed([42; 32])
}

fn trust_of(keys: &[&SecretKey]) -> TrustStore {
    let mut trust = TrustStore::new();
    for key in keys {
        trust.add_key(key.public_key());
    }
    trust
}

fn limits() -> BundleLimits {
    BundleLimits {
        max_bundle_bytes: 1 << 20,
        max_member_bytes: 16 << 10,
        max_members: 16,
    }
}

/// Packs and signs a fresh plugin directory.
fn build(
    root: &Path,
    name: &str,
    version: &str,
    component: &[u8],
    key: Option<&SecretKey>,
) -> Vec<u8> {
    let dir = write_plugin(root, name, version, component);
    let packed = pack_dir(&dir, &BundleLimits::default()).unwrap();
    match key {
        Some(key) => sign_bundle(&packed.bytes, key, &BundleLimits::default()).unwrap(),
        None => packed.bytes,
    }
}

/// The members of a bundle, in file order.
fn members_of(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    format::parse(bytes, &BundleLimits::default())
        .unwrap()
        .entries
        .iter()
        .map(|e| (e.path.to_string(), e.data.to_vec()))
        .collect()
}

/// Re-encodes members and signs them: what an attacker holding a trusted key, or a buggy
/// packer, could produce.
fn rebuild(members: &[(String, Vec<u8>)], key: Option<&SecretKey>) -> Vec<u8> {
    let refs: Vec<(&str, &[u8])> = members
        .iter()
        .map(|(p, d)| (p.as_str(), d.as_slice()))
        .collect();
    let unsigned = encode_unsigned(&refs);
    match key {
        Some(key) => sign_unsigned_prefix(&unsigned, key),
        None => unsigned,
    }
}

/// File offset of a member's data.
fn offset_of(bytes: &[u8], path: &str) -> usize {
    format::parse(bytes, &BundleLimits::default())
        .unwrap()
        .entries
        .iter()
        .find(|e| e.path == path)
        .unwrap()
        .offset
}

fn flip(bytes: &[u8], offset: usize, bit: u8) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[offset] ^= 1 << bit;
    out
}

#[test]
fn pack_sign_verify_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let key = signer();
    let component = b"\0asm\x0d\0\x01\0 component".repeat(10);
    let bytes = build(tmp.path(), NAME, "1.2.3", &component, Some(&key));
    let bundle = verify(bytes.clone(), &trust_of(&[&key]), &limits()).unwrap();
    assert_eq!(bundle.name(), NAME);
    assert_eq!(bundle.version(), &Version::new(1, 2, 3));
    assert_eq!(bundle.signer(), key.key_id());
    assert_eq!(bundle.component(), &component[..]);
    assert_eq!(
        bundle.member(MODEL).unwrap(),
        &b"onnx model bytes ".repeat(20)[..]
    );
    assert_eq!(bundle.member("plugin.toml"), None);
    assert_eq!(bundle.size(), bytes.len() as u64);
    assert_eq!(bundle.bundle_sha256(), crate::manifest::Sha256::of(&bytes));
    assert_eq!(bundle.file_name(), "digits-1.2.3.epk");
    assert_eq!(
        bundle.member_paths().collect::<Vec<_>>(),
        [
            "models/digits.onnx",
            "plugin.wasm",
            "tests/zero.json",
            "tests/zero.png",
            "weights/head.safetensors"
        ]
    );
    let manifest = bundle.manifest();
    assert_eq!(manifest.limits.deadline_ms, 500);
    assert_eq!(manifest.members.len(), 5);
    assert_eq!(manifest.members[COMPONENT].size, component.len() as u64);
    assert_eq!(
        manifest.members[COMPONENT].sha256,
        crate::manifest::Sha256::of(&component)
    );
    // The author's manifest text (and comments) are kept, with the table appended.
    let text = String::from_utf8(members_of(&bytes)[0].1.clone()).unwrap();
    assert!(text.starts_with("# A test plugin.\n"), "{text}");
    assert!(text.contains("[members.\"plugin.wasm\"]"), "{text}");

    // inspect needs no trust and reports everything as matching.
    let inspection = inspect(&bytes, &limits()).unwrap();
    assert_eq!(inspection.signer, Some(key.key_id()));
    assert!(inspection.members.iter().all(|m| m.matches()));
    assert!(inspection.problem.is_none());
    assert_eq!(inspection.manifest.unwrap().name, NAME);

    // Signing again with another key replaces the signature; the file length is stable.
    let other = SecretKey::from_seed([9; 32]);
    let resigned = sign_bundle(&bytes, &other, &limits()).unwrap();
    assert_eq!(resigned.len(), bytes.len());
    assert_eq!(
        verify(resigned, &trust_of(&[&other]), &limits())
            .unwrap()
            .signer(),
        other.key_id()
    );
}

/// Opens a store at `dir` with `limits()` and installs digits 1.0.0.
fn store_with_active(dir: &Path, key: &SecretKey) -> (PluginStore, Vec<u8>) {
    let store = PluginStore::open(
        &dir.join("state"),
        StoreConfig {
            keep_versions: 3,
            limits: limits(),
        },
    )
    .unwrap();
    let good = build(dir, NAME, "1.0.0", b"\0asm good component", Some(key));
    store
        .install_bytes(good.clone(), &trust_of(&[key]), Some(NAME))
        .unwrap();
    (store, good)
}

fn assert_active_unchanged(store: &PluginStore, trust: &TrustStore, good: &[u8], case: &str) {
    let expected = Version::new(1, 0, 0);
    assert_eq!(
        store.active(NAME).unwrap(),
        Some(expected.clone()),
        "{case}"
    );
    let active = store.load_active(trust).unwrap();
    assert!(active.failed.is_empty(), "{case}: {:?}", active.failed);
    assert_eq!(active.loaded.len(), 1, "{case}");
    assert_eq!(active.loaded[0].version(), &expected, "{case}");
    assert_eq!(active.loaded[0].raw(), good, "{case}");
    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1, "{case}");
    let versions: Vec<_> = listed[0].versions.iter().map(|v| &v.version).collect();
    assert_eq!(versions, [&expected], "{case}: nothing else was written");
}

#[test]
fn every_rejection_has_its_own_error_and_leaves_the_active_version() {
    let tmp = tempfile::tempdir().unwrap();
    let key = signer();
    let stranger = SecretKey::from_seed([66; 32]);
    let revoked = SecretKey::from_seed([13; 32]);
    let mut trust = trust_of(&[&key, &revoked]);
    trust.revoke(revoked.key_id());
    let (store, good) = store_with_active(tmp.path(), &key);
    let component = b"\0asm new component".to_vec();
    let v2 = build(tmp.path(), NAME, "2.0.0", &component, Some(&key));
    let v2_members = members_of(&v2);
    let sig_offset = v2.len() - 1;
    let key_id_offset = v2.len() - format::SIG_BLOCK_LEN + 4;

    type Check = fn(&StoreError) -> bool;
    let mut cases: Vec<(&str, Vec<u8>, Check)> = Vec::new();
    macro_rules! case {
        ($label:expr, $bytes:expr, $pat:pat $(if $guard:expr)?) => {
            cases.push(($label, $bytes, |e| matches!(e, $pat $(if $guard)?)));
        };
    }
    use BundleError as B;
    use StoreError::Bundle as S;

    case!(
        "bit flipped in the manifest",
        flip(&v2, offset_of(&v2, MANIFEST_FILE) + 10, 0),
        S(B::BadSignature { .. })
    );
    case!(
        "bit flipped in the component",
        flip(&v2, offset_of(&v2, COMPONENT) + 3, 5),
        S(B::BadSignature { .. })
    );
    case!(
        "bit flipped in a model",
        flip(&v2, offset_of(&v2, MODEL), 7),
        S(B::BadSignature { .. })
    );
    case!(
        "bit flipped in the signature",
        flip(&v2, sig_offset, 2),
        S(B::BadSignature { .. })
    );
    case!(
        "bit flipped in the key id",
        flip(&v2, key_id_offset, 0),
        S(B::UnknownKey { .. })
    );
    case!(
        "bit flipped in the format version",
        flip(&v2, 8, 1),
        S(B::UnsupportedFormat { version: 3 })
    );
    case!("bit flipped in the magic", flip(&v2, 1, 1), S(B::BadMagic));
    case!(
        "truncated by one byte",
        v2[..v2.len() - 1].to_vec(),
        S(B::Truncated {
            what: "signature block",
            ..
        })
    );
    case!(
        "truncated inside a member",
        v2[..offset_of(&v2, COMPONENT) + 2].to_vec(),
        S(B::Truncated {
            what: "member data",
            ..
        })
    );
    case!(
        "signature block cut off",
        v2[..v2.len() - format::SIG_BLOCK_LEN].to_vec(),
        S(B::Unsigned)
    );
    case!(
        "trailing bytes",
        [v2.as_slice(), b"x"].concat(),
        S(B::TrailingBytes { count: 1 })
    );
    case!(
        "unsigned",
        build(tmp.path(), NAME, "2.0.0", &component, None),
        S(B::Unsigned)
    );
    case!(
        "unknown key",
        build(tmp.path(), NAME, "2.0.0", &component, Some(&stranger)),
        S(B::UnknownKey { .. })
    );
    case!(
        "revoked key",
        build(tmp.path(), NAME, "2.0.0", &component, Some(&revoked)),
        S(B::RevokedKey { .. })
    );

    let mut added = v2_members.clone();
    added.push(("extra.bin".into(), b"payload".to_vec()));
    case!(
        "member added, not re-signed",
        {
            // Splice the member in and fix the count, keeping the old signature block.
            let mut bytes = rebuild(&added, None);
            bytes.extend_from_slice(&v2[v2.len() - format::SIG_BLOCK_LEN..]);
            bytes
        },
        S(B::BadSignature { .. })
    );
    case!(
        "member added, re-signed by a trusted key",
        rebuild(&added, Some(&key)),
        S(B::ExtraMember { path, .. }) if path == "extra.bin"
    );
    let removed: Vec<_> = v2_members
        .iter()
        .filter(|(p, _)| p != MODEL)
        .cloned()
        .collect();
    case!(
        "member removed, not re-signed",
        {
            let mut bytes = rebuild(&removed, None);
            bytes.extend_from_slice(&v2[v2.len() - format::SIG_BLOCK_LEN..]);
            bytes
        },
        S(B::BadSignature { .. })
    );
    case!(
        "member removed, re-signed by a trusted key",
        rebuild(&removed, Some(&key)),
        S(B::MemberMissing { path }) if path == MODEL
    );
    let mut swapped = v2_members.clone();
    swapped.iter_mut().find(|(p, _)| p == COMPONENT).unwrap().1[4] ^= 1;
    case!(
        "component changed after packing, re-signed",
        rebuild(&swapped, Some(&key)),
        S(B::HashMismatch { path, .. }) if path == COMPONENT
    );
    let mut grown = v2_members.clone();
    grown
        .iter_mut()
        .find(|(p, _)| p == MODEL)
        .unwrap()
        .1
        .push(0);
    case!(
        "model grew after packing, re-signed",
        rebuild(&grown, Some(&key)),
        S(B::SizeMismatch { path, .. }) if path == MODEL
    );
    let mut dotdot = v2_members.clone();
    dotdot.push(("../escape".into(), b"x".to_vec()));
    case!(
        "member path with ..",
        rebuild(&dotdot, Some(&key)),
        S(B::BadPath { path }) if path == "../escape"
    );
    let mut absolute = v2_members.clone();
    absolute.push(("/etc/passwd".into(), b"x".to_vec()));
    case!(
        "absolute member path",
        rebuild(&absolute, Some(&key)),
        S(B::BadPath { .. })
    );
    let mut duplicate = v2_members.clone();
    duplicate.push(v2_members[1].clone());
    case!(
        "duplicate member",
        rebuild(&duplicate, Some(&key)),
        S(B::DuplicateMember { .. })
    );
    let mut reordered = v2_members.clone();
    reordered.swap(0, 1);
    case!(
        "manifest not first",
        rebuild(&reordered, Some(&key)),
        S(B::ManifestNotFirst { .. })
    );
    let mut bad_manifest = v2_members.clone();
    bad_manifest[0].1.extend_from_slice(b"\ncolour = 1\n");
    case!(
        "manifest with an unknown field, re-signed",
        rebuild(&bad_manifest, Some(&key)),
        S(B::ManifestInvalid(ManifestError::Parse(_)))
    );
    case!(
        "member larger than the limit",
        build(tmp.path(), NAME, "2.0.0", &[1u8; 20 << 10], Some(&key)),
        S(B::MemberTooLarge { path, size: 20480, limit: 16384 }) if path == COMPONENT
    );
    case!(
        "older version",
        build(tmp.path(), NAME, "0.9.0", &component, Some(&key)),
        StoreError::NotNewer { .. }
    );
    case!(
        "same version",
        build(tmp.path(), NAME, "1.0.0", b"other bytes", Some(&key)),
        StoreError::NotNewer { .. }
    );
    case!(
        "name differs from the target",
        build(tmp.path(), "letters", "2.0.0", &component, Some(&key)),
        StoreError::NameMismatch { .. }
    );

    let mut seen_kinds = std::collections::BTreeSet::new();
    for (label, bytes, check) in cases {
        let err = store
            .install_bytes(bytes, &trust, Some(NAME))
            .expect_err(label);
        assert!(check(&err), "{label}: wrong error {err:?}");
        let debug = format!("{err:?}");
        let kind = debug.trim_start_matches("Bundle(");
        let end = kind.find([' ', '(', '{', ')']).unwrap_or(kind.len());
        seen_kinds.insert(kind[..end].to_string());
        assert_active_unchanged(&store, &trust, &good, label);
    }
    // Distinct refusals get distinct variants (bit flips all end in BadSignature, by design).
    let expected = [
        "BadMagic",
        "BadPath",
        "BadSignature",
        "DuplicateMember",
        "ExtraMember",
        "HashMismatch",
        "ManifestInvalid",
        "ManifestNotFirst",
        "MemberMissing",
        "MemberTooLarge",
        "NameMismatch",
        "NotNewer",
        "RevokedKey",
        "SizeMismatch",
        "TrailingBytes",
        "Truncated",
        "UnknownKey",
        "Unsigned",
        "UnsupportedFormat",
    ];
    assert_eq!(
        seen_kinds.iter().map(String::as_str).collect::<Vec<_>>(),
        expected
    );

    // The untouched bundle still installs.
    let outcome = store.install_bytes(v2, &trust, Some(NAME)).unwrap().1;
    assert_eq!(outcome.version, Version::new(2, 0, 0));
    assert_eq!(outcome.previous, Some(Version::new(1, 0, 0)));
}

#[test]
fn exact_messages() {
    let id: KeyId = "00112233445566778899aabbccddeeff".parse().unwrap();
    let cases: Vec<(BundleError, &str)> = vec![
        (BundleError::Unsigned, "bundle is not signed"),
        (
            BundleError::UnknownKey { key_id: id },
            "bundle is signed by key 00112233445566778899aabbccddeeff, which is not in the trust store",
        ),
        (
            BundleError::RevokedKey { key_id: id },
            "bundle is signed by key 00112233445566778899aabbccddeeff, which is revoked",
        ),
        (
            BundleError::BadSignature { key_id: id },
            "bad signature: the bundle was modified after key 00112233445566778899aabbccddeeff signed it",
        ),
        (
            BundleError::MemberTooLarge {
                path: "plugin.wasm".into(),
                size: 10,
                limit: 5,
            },
            "member \"plugin.wasm\" is 10 bytes, over the limit of 5 bytes",
        ),
        (
            BundleError::BadPath {
                path: "../x".into(),
            },
            "member path \"../x\" is not a plain relative path (no '..', no absolute path, no backslash)",
        ),
        (
            BundleError::UnsupportedFormat { version: 2 },
            "unsupported bundle format version 2 (this host reads version 1)",
        ),
    ];
    for (err, message) in cases {
        assert_eq!(err.to_string(), message);
    }
}

#[test]
fn bounds_are_checked_from_headers() {
    let tmp = tempfile::tempdir().unwrap();
    let key = signer();
    let trust = trust_of(&[&key]);
    let bytes = build(tmp.path(), NAME, "1.0.0", b"component", Some(&key));
    let tight = |f: fn(&mut BundleLimits)| {
        let mut l = BundleLimits::default();
        f(&mut l);
        l
    };
    assert!(matches!(
        verify(bytes.clone(), &trust, &tight(|l| l.max_bundle_bytes = 100)),
        Err(BundleError::TooLarge { limit: 100, .. })
    ));
    assert!(matches!(
        verify(bytes.clone(), &trust, &tight(|l| l.max_members = 3)),
        Err(BundleError::TooManyMembers { count: 6, limit: 3 })
    ));
    // A header claiming a huge member is refused from the header alone (no allocation),
    // and one claiming more than the file holds is truncated.
    let mut huge = encode_unsigned(&[(MANIFEST_FILE, b"x")]);
    huge[12..16].copy_from_slice(&2u32.to_le_bytes());
    huge.extend_from_slice(&4u16.to_le_bytes());
    huge.extend_from_slice(b"a.md");
    huge.extend_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        verify(huge.clone(), &trust, &BundleLimits::default()),
        Err(BundleError::MemberTooLarge { size: u64::MAX, .. })
    ));
    let unbounded = BundleLimits {
        max_member_bytes: u64::MAX,
        ..BundleLimits::default()
    };
    assert!(matches!(
        verify(huge, &trust, &unbounded),
        Err(BundleError::Truncated {
            what: "member data",
            ..
        })
    ));
    let mut many = encode_unsigned(&[]);
    many[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        verify(many, &trust, &BundleLimits::default()),
        Err(BundleError::TooManyMembers { .. })
    ));
    // A file over the limit is refused before it is read.
    let path = tmp.path().join("big.epk");
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        read_bundle_file(&path, &tight(|l| l.max_bundle_bytes = 10)),
        Err(BundleError::TooLarge { size, limit: 10 }) if size == bytes.len() as u64
    ));
    assert!(verify_file(&path, &trust, &BundleLimits::default()).is_ok());
    assert!(matches!(
        verify(Vec::new(), &trust, &BundleLimits::default()),
        Err(BundleError::Truncated { what: "magic", .. })
    ));
    assert!(matches!(
        verify(
            b"PK\x03\x04 a zip file".to_vec(),
            &trust,
            &BundleLimits::default()
        ),
        Err(BundleError::BadMagic)
    ));
}

#[test]
fn pack_refuses_links_missing_files_and_bad_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_plugin(tmp.path(), NAME, "1.0.0", b"component");
    let l = BundleLimits::default();

    std::fs::remove_file(dir.join(MODEL)).unwrap();
    assert!(matches!(pack_dir(&dir, &l), Err(PackError::Io { .. })));
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("/etc/hostname", dir.join(MODEL)).unwrap();
        assert!(matches!(
            pack_dir(&dir, &l),
            Err(PackError::NotAFile { .. })
        ));
        std::fs::remove_file(dir.join(MODEL)).unwrap();
        // A linked directory on the way is refused too.
        let real = tmp.path().join("real-models");
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("digits.onnx"), b"m").unwrap();
        std::fs::remove_dir(dir.join("models")).unwrap();
        std::os::unix::fs::symlink(&real, dir.join("models")).unwrap();
        assert!(matches!(
            pack_dir(&dir, &l),
            Err(PackError::NotAFile { .. })
        ));
    }

    let dir = write_plugin(tmp.path(), NAME, "1.0.0", b"component");
    let text = std::fs::read_to_string(dir.join(MANIFEST_FILE)).unwrap();
    std::fs::write(
        dir.join(MANIFEST_FILE),
        text.replace(MODEL, "../models/digits.onnx"),
    )
    .unwrap();
    assert!(matches!(
        pack_dir(&dir, &l),
        Err(PackError::Manifest(ManifestError::BadPath(_)))
    ));
    let sha = "00".repeat(32);
    std::fs::write(
        dir.join(MANIFEST_FILE),
        format!("{text}\n[members.\"plugin.wasm\"]\nsha256 = \"{sha}\"\nsize = 1\n"),
    )
    .unwrap();
    assert!(matches!(pack_dir(&dir, &l), Err(PackError::MembersPresent)));
    std::fs::write(dir.join(MANIFEST_FILE), &text).unwrap();
    let small = BundleLimits {
        max_member_bytes: 100,
        ..l
    };
    assert!(matches!(
        pack_dir(&dir, &small),
        Err(PackError::MemberTooLarge { .. })
    ));
}

#[test]
fn store_keeps_versions_rolls_back_and_prunes() {
    let tmp = tempfile::tempdir().unwrap();
    let key = signer();
    let trust = trust_of(&[&key]);
    let store = PluginStore::open(&tmp.path().join("state"), StoreConfig::default()).unwrap();
    let v = |s: &str| Version::parse(s).unwrap();
    for (i, version) in ["1.0.0", "1.1.0", "1.2.0", "1.3.0"].iter().enumerate() {
        let bytes = build(
            tmp.path(),
            NAME,
            version,
            format!("c{i}").as_bytes(),
            Some(&key),
        );
        let (_, outcome) = store.install_bytes(bytes, &trust, None).unwrap();
        assert_eq!(&outcome.version, &v(version));
        if i == 3 {
            assert_eq!(outcome.pruned, [v("1.0.0")]);
        } else {
            assert!(outcome.pruned.is_empty());
        }
    }
    let listed = store.list().unwrap();
    assert_eq!(listed[0].active, Some(v("1.3.0")));
    let kept: Vec<_> = listed[0]
        .versions
        .iter()
        .map(|k| k.version.clone())
        .collect();
    assert_eq!(kept, [v("1.3.0"), v("1.2.0"), v("1.1.0")]);
    assert!(
        listed[0]
            .versions
            .iter()
            .all(|k| k.signer == Some(key.key_id()) && k.installed.is_some() && k.size > 0)
    );

    // A pre-release sorts below its release: not newer.
    let pre = build(tmp.path(), NAME, "1.3.0-rc.1", b"pre", Some(&key));
    assert!(matches!(
        store.install_bytes(pre, &trust, None),
        Err(StoreError::NotNewer { .. })
    ));

    assert_eq!(store.rollback(NAME, &trust).unwrap().version(), &v("1.2.0"));
    assert_eq!(store.active(NAME).unwrap(), Some(v("1.2.0")));
    assert_eq!(store.rollback(NAME, &trust).unwrap().version(), &v("1.1.0"));
    assert!(matches!(
        store.rollback(NAME, &trust),
        Err(StoreError::NoPreviousVersion { .. })
    ));
    store
        .activate(NAME, &v("1.3.0"), AllowDowngrade::No, &trust)
        .unwrap();
    assert!(matches!(
        store.activate(NAME, &v("1.1.0"), AllowDowngrade::No, &trust),
        Err(StoreError::DowngradeNotAllowed { .. })
    ));
    assert!(matches!(
        store.activate(NAME, &v("1.0.0"), AllowDowngrade::Yes, &trust),
        Err(StoreError::VersionNotKept { .. })
    ));
    store
        .activate(NAME, &v("1.1.0"), AllowDowngrade::Yes, &trust)
        .unwrap();
    // Pruning keeps the active version and the newest others, even when newer ones exist.
    let bytes = build(tmp.path(), NAME, "1.1.5", b"c5", Some(&key));
    let (_, outcome) = store.install_bytes(bytes, &trust, None).unwrap();
    assert_eq!(outcome.previous, Some(v("1.1.0")));
    assert_eq!(outcome.pruned, [v("1.1.0")]);
    let kept: Vec<_> = store.list().unwrap()[0]
        .versions
        .iter()
        .map(|k| k.version.clone())
        .collect();
    assert_eq!(kept, [v("1.3.0"), v("1.2.0"), v("1.1.5")]);

    // A target whose key was revoked since is refused; nothing switches.
    let mut revoked = trust.clone();
    revoked.revoke(key.key_id());
    assert!(matches!(
        store.activate(NAME, &v("1.3.0"), AllowDowngrade::No, &revoked),
        Err(StoreError::Bundle(BundleError::RevokedKey { .. }))
    ));
    assert_eq!(store.active(NAME).unwrap(), Some(v("1.1.5")));
    // On start, a plugin whose active version no longer verifies is reported, not loaded.
    let active = store.load_active(&revoked).unwrap();
    assert!(active.loaded.is_empty());
    assert!(matches!(
        active.failed.as_slice(),
        [(name, StoreError::Bundle(BundleError::RevokedKey { .. }))] if name == NAME
    ));
    // A stored file tampered with on disk fails verification on load.
    let path = store.dir().join("plugins/digits/1.1.5.epk");
    let mut bytes = std::fs::read(&path).unwrap();
    let len = bytes.len();
    bytes[len / 2] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    assert!(matches!(
        store.load_active(&trust).unwrap().failed.as_slice(),
        [(_, StoreError::Bundle(BundleError::BadSignature { .. }))]
    ));
    // A file renamed to another version is caught too.
    std::fs::copy(
        store.dir().join("plugins/digits/1.2.0.epk"),
        store.dir().join("plugins/digits/1.9.0.epk"),
    )
    .unwrap();
    assert!(matches!(
        store.load(NAME, &v("1.9.0"), &trust),
        Err(StoreError::Mislabeled { .. })
    ));

    store.remove(NAME).unwrap();
    assert_eq!(store.active(NAME).unwrap(), None);
    assert!(store.list().unwrap().is_empty());
    assert!(matches!(
        store.remove(NAME),
        Err(StoreError::NotInstalled(_))
    ));
    assert!(matches!(
        store.rollback(NAME, &trust),
        Err(StoreError::NotInstalled(_))
    ));
}

#[test]
fn compile_cache_round_trips_and_refuses_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let store = PluginStore::open(tmp.path(), StoreConfig::default()).unwrap();
    let key = "3f2a-wasmtime-48.0.8";
    assert_eq!(store.cache_get(key), None);
    store.cache_put(key, b"native code").unwrap();
    assert_eq!(store.cache_get(key).unwrap(), b"native code");
    store.cache_put(key, b"newer code").unwrap();
    assert_eq!(store.cache_get(key).unwrap(), b"newer code");
    let path = tmp.path().join("cache").join(key);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    assert_eq!(store.cache_get(key), None);
    for bad in ["../x", ".hidden", "", "a/b"] {
        assert!(matches!(
            store.cache_put(bad, b"x"),
            Err(StoreError::BadCacheKey(_))
        ));
        assert_eq!(store.cache_get(bad), None);
    }
}

#[test]
fn open_cleans_up_after_crashes() {
    let tmp = tempfile::tempdir().unwrap();
    let key = signer();
    let trust = trust_of(&[&key]);
    let (store, _) = store_with_active(tmp.path(), &key);
    let plugin_dir = store.dir().join("plugins").join(NAME);
    std::fs::write(plugin_dir.join(".tmp-1-abc"), b"half a bundle").unwrap();
    std::fs::write(store.dir().join("cache/.tmp-1-abc"), b"half").unwrap();
    std::fs::create_dir(store.dir().join("plugins/.removed-x-1")).unwrap();
    let dir = store.dir().to_path_buf();
    drop(store);
    let store = PluginStore::open(&dir, StoreConfig::default()).unwrap();
    assert!(!plugin_dir.join(".tmp-1-abc").exists());
    assert!(!dir.join("cache/.tmp-1-abc").exists());
    assert!(!dir.join("plugins/.removed-x-1").exists());
    assert_eq!(store.load_active(&trust).unwrap().loaded.len(), 1);
}

// ---- fuzzing the reader ----

struct FuzzFixture {
    bundle: Vec<u8>,
    trust: TrustStore,
}

fn fuzz_fixture() -> &'static FuzzFixture {
    static FIXTURE: std::sync::OnceLock<FuzzFixture> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let key = signer();
        FuzzFixture {
            bundle: build(tmp.path(), NAME, "1.0.0", b"\0asm tiny", Some(&key)),
            trust: trust_of(&[&key]),
        }
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(usize, u8),
    SetByte(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    /// Overwrite a little-endian u16/u32/u64 somewhere (hits the length fields).
    Number(usize, u64, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        2 => any::<usize>().prop_map(Mutation::Truncate),
        2 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        1 => (any::<usize>(), 1usize..64).prop_map(|(i, n)| Mutation::Remove(i, n)),
        2 => (any::<usize>(), any::<u64>(), prop::sample::select(vec![2u8, 4, 8]))
            .prop_map(|(i, v, w)| Mutation::Number(i, v, w)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let len = bytes.len().max(1);
    match m {
        Mutation::FlipBit(i, b) if !bytes.is_empty() => bytes[i % len] ^= 1 << b,
        Mutation::SetByte(i, v) if !bytes.is_empty() => bytes[i % len] = *v,
        Mutation::Truncate(i) => bytes.truncate(i % len),
        Mutation::Insert(i, v) => {
            let at = i % (bytes.len() + 1);
            bytes.splice(at..at, v.iter().copied());
        }
        Mutation::Remove(i, n) if !bytes.is_empty() => {
            let at = i % len;
            let end = (at + n).min(bytes.len());
            bytes.drain(at..end);
        }
        Mutation::Number(i, v, w) if bytes.len() >= *w as usize => {
            let w = *w as usize;
            let at = i % (bytes.len() - w + 1);
            bytes[at..at + w].copy_from_slice(&v.to_le_bytes()[..w]);
        }
        _ => {}
    }
}

/// Runs `cases` inputs through `verify` and `inspect`: no panic, and nothing but the
/// untouched bundle is accepted. Returns how many ran, and the refusals by kind.
fn fuzz<S: Strategy>(
    cases: u32,
    strategy: S,
    to_bytes: impl Fn(S::Value) -> Vec<u8>,
) -> (usize, std::collections::BTreeMap<String, usize>) {
    let fixture = fuzz_fixture();
    let executions = AtomicUsize::new(0);
    let kinds = std::sync::Mutex::new(std::collections::BTreeMap::new());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let started = std::time::Instant::now();
    let result = runner.run(&strategy, |value| {
        let bytes = to_bytes(value);
        executions.fetch_add(1, Ordering::Relaxed);
        let unchanged = bytes == fixture.bundle;
        let _ = inspect(&bytes, &BundleLimits::default());
        let result = verify(bytes, &fixture.trust, &BundleLimits::default());
        let kind = match &result {
            Ok(_) => "accepted".to_string(),
            Err(err) => {
                let debug = format!("{err:?}");
                debug[..debug.find([' ', '(', '{']).unwrap_or(debug.len())].to_string()
            }
        };
        *kinds.lock().unwrap().entry(kind).or_insert(0) += 1;
        prop_assert_eq!(result.is_ok(), unchanged, "{:?}", result.err());
        Ok(())
    });
    if let Err(err) = result {
        panic!("fuzz failure: {err}");
    }
    let executions = executions.into_inner();
    let kinds = kinds.into_inner().unwrap();
    eprintln!(
        "bundle fuzz: {executions} executions in {:.2?}; outcomes {kinds:?}",
        started.elapsed()
    );
    (executions, kinds)
}

/// Mutations (bit flips, byte sets, truncations, insertions, removals, overwritten length
/// fields) of a valid signed bundle are never accepted and never panic.
#[test]
fn fuzz_mutated_bundles_are_refused() {
    let cases = 50_000;
    let (executions, kinds) = fuzz(
        cases,
        prop::collection::vec(mutation(), 1..4),
        |mutations| {
            let mut bytes = fuzz_fixture().bundle.clone();
            for m in &mutations {
                apply(&mut bytes, m);
            }
            bytes
        },
    );
    assert!(executions >= cases as usize);
    // The mutations reach the signature check, not only the structure checks.
    assert!(
        kinds.get("BadSignature").copied().unwrap_or(0) > 1000,
        "{kinds:?}"
    );
}

/// Random byte strings, bare or behind a valid magic (and version), never panic the reader.
#[test]
fn fuzz_random_bytes_are_refused() {
    let cases = 20_000;
    let (executions, _) = fuzz(
        cases,
        (prop::collection::vec(any::<u8>(), 0..512), 0usize..3),
        |(body, prefix)| {
            let mut bytes = match prefix {
                0 => Vec::new(),
                1 => MAGIC.to_vec(),
                _ => [&MAGIC[..], &FORMAT_VERSION.to_le_bytes()].concat(),
            };
            bytes.extend_from_slice(&body);
            bytes
        },
    );
    assert!(executions >= cases as usize);
}

// ---- SIGKILL during installs ----

const CRASH_ENV: &str = "EDGEPLUG_BUNDLE_CRASH_STORE";
const CRASH_READY_ENV: &str = "EDGEPLUG_BUNDLE_CRASH_READY";
const CRASH_PLUGIN: &str = "crashy";

fn crash_store(dir: &Path) -> PluginStore {
    PluginStore::open(
        dir,
        StoreConfig {
            keep_versions: 2,
            limits: BundleLimits::default(),
        },
    )
    .unwrap()
}

/// Child side of [`sigkill_during_installs_leaves_a_verified_active_version`]: does nothing
/// unless the env var names a store; then installs newer versions (with rollbacks,
/// re-activations, pruning and cache writes in between) until killed.
#[test]
fn crash_child_installs_until_killed() {
    let Some(dir) = std::env::var_os(CRASH_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let key = signer();
    let trust = trust_of(&[&key]);
    let store = crash_store(&dir);
    if let Some(ready) = std::env::var_os(CRASH_READY_ENV) {
        std::fs::write(ready, b"ready").unwrap();
    }
    let scratch = tempfile::tempdir().unwrap();
    // Large enough that writes and fsyncs take a while.
    let mut component = vec![0u8; 512 << 10];
    for round in 0u64.. {
        let newest = store
            .list()
            .unwrap()
            .into_iter()
            .flat_map(|p| p.versions)
            .map(|k| k.version)
            .max()
            .unwrap_or(Version::new(1, 0, 0));
        let next = Version::new(1, newest.minor + 1, 0);
        component[..8].copy_from_slice(&round.to_le_bytes());
        let bytes = build(
            scratch.path(),
            CRASH_PLUGIN,
            &next.to_string(),
            &component,
            Some(&key),
        );
        store
            .install_bytes(bytes, &trust, Some(CRASH_PLUGIN))
            .unwrap();
        store
            .cache_put("component-cache", &component[..4096])
            .unwrap();
        if round % 3 == 2 {
            let back = store.rollback(CRASH_PLUGIN, &trust).unwrap();
            store
                .activate(CRASH_PLUGIN, &next, AllowDowngrade::No, &trust)
                .unwrap();
            assert!(back.version() < &next);
        }
    }
}

#[test]
fn sigkill_during_installs_leaves_a_verified_active_version() {
    use rand::Rng as _;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let key = signer();
    let trust = trust_of(&[&key]);
    {
        let store = crash_store(&dir);
        let first = build(tmp.path(), CRASH_PLUGIN, "1.0.0", b"first", Some(&key));
        store.install_bytes(first, &trust, None).unwrap();
    }
    let test_name = format!(
        "{}::crash_child_installs_until_killed",
        module_path!().split_once("::").unwrap().1
    );
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::thread_rng();
    let rounds = 30;
    let mut advanced = 0;
    let mut mid_write = 0;
    let ready = tmp.path().join("child-ready");
    let mut last = Version::new(1, 0, 0);
    for round in 0..rounds {
        let mut child = std::process::Command::new(&exe)
            .args([
                test_name.as_str(),
                "--exact",
                "--test-threads=1",
                "--nocapture",
            ])
            .env(CRASH_ENV, &dir)
            .env(CRASH_READY_ENV, &ready)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Start the clock once the child runs (a loaded machine may take a while to start it).
        let waited = std::time::Instant::now();
        while !ready.exists() {
            assert!(
                waited.elapsed() < std::time::Duration::from_secs(60),
                "round {round}: the installer did not start"
            );
            if child.try_wait().unwrap().is_some() {
                break; // reported below
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        std::thread::sleep(std::time::Duration::from_millis(rng.gen_range(5..300)));
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).ok();
            panic!("round {round}: the installer exited by itself ({status}): {stderr}");
        }
        child.kill().unwrap(); // SIGKILL on Unix
        let status = child.wait().unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt as _;
            assert_eq!(status.signal(), Some(9), "round {round}");
        }
        let _ = status;
        std::fs::remove_file(&ready).unwrap();

        let plugin_dir = dir.join("plugins").join(CRASH_PLUGIN);
        if std::fs::read_dir(&plugin_dir).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".tmp-")
        }) {
            mid_write += 1;
        }
        let store = crash_store(&dir);
        let loaded = store.load_active(&trust).unwrap();
        assert!(
            loaded.failed.is_empty(),
            "round {round}: {:?}",
            loaded.failed
        );
        assert_eq!(loaded.loaded.len(), 1, "round {round}");
        let active = loaded.loaded[0].version().clone();
        assert_eq!(store.active(CRASH_PLUGIN).unwrap(), Some(active.clone()));
        // Every kept file is complete and verifies, not only the active one.
        let info = store.list().unwrap();
        for kept in &info[0].versions {
            store
                .load(CRASH_PLUGIN, &kept.version, &trust)
                .unwrap_or_else(|e| panic!("round {round}: {} {e}", kept.version));
        }
        if let Some(cached) = store.cache_get("component-cache") {
            assert_eq!(cached.len(), 4096);
        }
        // No temp files survive open().
        for entry in std::fs::read_dir(&plugin_dir).unwrap() {
            let name = entry.unwrap().file_name();
            assert!(!name.to_string_lossy().starts_with('.'), "{name:?}");
        }
        if active != last {
            advanced += 1;
            last = active;
        }
    }
    eprintln!(
        "sigkill test: {rounds} rounds, the active version advanced in {advanced}, \
         {mid_write} kills left a half-written temp file behind"
    );
    // A kill between writing a version and switching to it (or before pruning) leaves extra
    // files; the next completed install prunes back to keep_versions.
    let store = crash_store(&dir);
    let newest = store.list().unwrap()[0]
        .versions
        .iter()
        .map(|k| k.version.clone())
        .max()
        .unwrap();
    let next = Version::new(1, newest.minor + 1, 0);
    let bytes = build(
        tmp.path(),
        CRASH_PLUGIN,
        &next.to_string(),
        b"last",
        Some(&key),
    );
    store.install_bytes(bytes, &trust, None).unwrap();
    assert_eq!(store.list().unwrap()[0].versions.len(), 2);
    assert!(
        advanced >= 3,
        "the installer made too little progress: {advanced}"
    );
}
