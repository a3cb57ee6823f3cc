//! A bundle as an OCI artifact, after the CNCF Wasm OCI layout: one manifest, one config
//! blob, one layer holding the `.epk` byte for byte.
//!
//! ```text
//! manifest   application/vnd.oci.image.manifest.v1+json
//!            artifactType application/vnd.edgeplug.bundle.v1
//!            annotations  org.opencontainers.image.version = the plugin's version
//!                         org.opencontainers.image.title   = the plugin's name
//! config     application/vnd.wasm.config.v0+json   {"architecture":"wasm","os":"wasip2",...}
//! layer      application/vnd.edgeplug.bundle.v1+epk  the signed bundle, unchanged
//! ```
//!
//! Pulls go **by digest** only. The manifest's bytes must hash to the digest the signed notice
//! names; the layer is streamed with a size cap and must hash to the manifest's layer digest
//! (oci-client checks it while streaming, and [`Registry::pull_bundle`] checks again over the bytes it
//! returns). Then the bundle's own signature is checked by the install, as for any push.

use std::path::PathBuf;

use anyhow::Context as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::Digest as _;

/// The artifact type of an edgeplug bundle.
pub const ARTIFACT_TYPE: &str = "application/vnd.edgeplug.bundle.v1";
/// The media type of its one layer, the `.epk` file.
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.edgeplug.bundle.v1+epk";
/// The config media type of the CNCF Wasm OCI artifact layout.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// The annotation carrying the version.
pub const VERSION_ANNOTATION: &str = "org.opencontainers.image.version";
/// The annotation carrying the plugin's name.
pub const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";
/// Largest manifest accepted, bytes (ours are under 1 KiB).
const MAX_MANIFEST_BYTES: usize = 64 << 10;

/// Which registry, and how to reach it.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// `HOST[:PORT]`.
    pub host: String,
    /// Plain HTTP instead of HTTPS (for this host only).
    pub plain_http: bool,
    pub username: Option<String>,
    pub password: Option<String>,
    /// PEM CA certificates to trust instead of the system's roots.
    pub ca_file: Option<PathBuf>,
}

impl RegistryOptions {
    /// A registry reached without credentials.
    pub fn new(host: &str, plain_http: bool) -> RegistryOptions {
        RegistryOptions {
            host: host.to_string(),
            plain_http,
            username: None,
            password: None,
            ca_file: None,
        }
    }
}

/// What a push stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// `HOST[:PORT]`.
    pub registry: String,
    pub repository: String,
    /// The manifest's digest, `sha256:…`: what a notice names.
    pub digest: String,
    /// The layer's (the bundle's) digest.
    pub layer_digest: String,
    /// The bundle's size in bytes.
    pub size: u64,
}

/// Why a pull failed. Only [`PullError::Registry`] may go away by itself (the network, the
/// registry's availability); the others mean the registry holds or serves other bytes than the
/// signed notice names.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("the registry could not be read: {0}")]
    Registry(String),
    #[error("the registry served other bytes than digest {expected} names (they hash to {actual})")]
    DigestMismatch { expected: String, actual: String },
    #[error("the artifact is not an edgeplug bundle: {0}")]
    NotABundle(String),
    #[error("the bundle is {size} bytes, but {expected} were announced")]
    SizeMismatch { size: u64, expected: u64 },
    #[error("the bundle is {size} bytes, over this gateway's limit of {limit}")]
    TooLarge { size: u64, limit: u64 },
}

impl PullError {
    /// A short, stable code for the status topic and logs.
    pub fn code(&self) -> &'static str {
        match self {
            PullError::Registry(_) => "registry-unavailable",
            PullError::DigestMismatch { .. } => "digest-mismatch",
            PullError::NotABundle(_) => "not-a-bundle",
            PullError::SizeMismatch { .. } => "size-mismatch",
            PullError::TooLarge { .. } => "too-large",
        }
    }
}

/// reqwest (inside oci-client) takes the process's default rustls crypto provider; edgeplug
/// uses ring everywhere (the gateway's TLS, the push client), so install ring as that default
/// once. Without a default, building the client would panic.
fn ensure_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A connection to one registry.
pub struct Registry {
    client: Client,
    auth: RegistryAuth,
    host: String,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("host", &self.host)
            .finish()
    }
}

impl Registry {
    pub fn new(options: &RegistryOptions) -> anyhow::Result<Registry> {
        ensure_crypto_provider();
        let mut config = ClientConfig {
            protocol: if options.plain_http {
                ClientProtocol::HttpsExcept(vec![options.host.clone()])
            } else {
                ClientProtocol::Https
            },
            // Our artifacts are single manifests; an index is refused, never resolved.
            platform_resolver: None,
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            ..ClientConfig::default()
        };
        if let Some(ca) = &options.ca_file {
            let pem = std::fs::read(ca)
                .with_context(|| format!("cannot read CA file {}", ca.display()))?;
            config.tls_certs_only = vec![oci_client::client::Certificate {
                encoding: oci_client::client::CertificateEncoding::Pem,
                data: pem,
            }];
        }
        let client = Client::try_from(config)
            .map_err(|e| anyhow::anyhow!("cannot set up the registry client: {e}"))?;
        let auth = match &options.username {
            Some(user) => {
                RegistryAuth::Basic(user.clone(), options.password.clone().unwrap_or_default())
            }
            None => RegistryAuth::Anonymous,
        };
        Ok(Registry {
            client,
            auth,
            host: options.host.clone(),
        })
    }

    fn reference_by_tag(&self, repository: &str, tag: &str) -> Reference {
        Reference::with_tag(self.host.clone(), repository.to_string(), tag.to_string())
    }

    fn reference_by_digest(&self, repository: &str, digest: &str) -> Reference {
        Reference::with_digest(
            self.host.clone(),
            repository.to_string(),
            digest.to_string(),
        )
    }

    /// Pushes `bundle` (the `.epk` bytes) as an artifact in `repository`, tagged with the
    /// version for people browsing the registry (gateways never read tags).
    pub async fn push_bundle(
        &self,
        repository: &str,
        name: &str,
        version: &semver::Version,
        bundle: &[u8],
    ) -> anyhow::Result<Pushed> {
        anyhow::ensure!(
            crate::notice::is_repository(repository),
            "repository {repository:?} must be '/'-separated lower-case components of a-z, 0-9, '.', '_', '-'"
        );
        let layer_digest = sha256_digest(bundle);
        // The config of the CNCF Wasm OCI layout, deterministic (no creation time) so that the
        // same bundle always makes the same manifest digest.
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "wasm",
            "os": "wasip2",
            "layerDigests": [layer_digest],
        }))?;
        let config_digest = sha256_digest(&config);
        let manifest = OciImageManifest {
            schema_version: 2,
            media_type: Some(OCI_IMAGE_MEDIA_TYPE.to_string()),
            config: OciDescriptor {
                media_type: CONFIG_MEDIA_TYPE.to_string(),
                digest: config_digest.clone(),
                size: config.len() as i64,
                ..OciDescriptor::default()
            },
            layers: vec![OciDescriptor {
                media_type: LAYER_MEDIA_TYPE.to_string(),
                digest: layer_digest.clone(),
                size: bundle.len() as i64,
                annotations: Some(
                    [(
                        "org.opencontainers.image.title".to_string(),
                        format!("{name}-{version}.epk"),
                    )]
                    .into(),
                ),
                ..OciDescriptor::default()
            }],
            subject: None,
            artifact_type: Some(ARTIFACT_TYPE.to_string()),
            annotations: Some(
                [
                    (VERSION_ANNOTATION.to_string(), version.to_string()),
                    (TITLE_ANNOTATION.to_string(), name.to_string()),
                ]
                .into(),
            ),
        };
        let manifest_bytes = serde_json::to_vec(&manifest)?;
        let digest = sha256_digest(&manifest_bytes);
        let tag = tag_for(version);
        let reference = self.reference_by_tag(repository, &tag);
        self.client
            .store_auth_if_needed(&self.host, &self.auth)
            .await;
        self.client
            .push_blob(&reference, bundle.to_vec(), &layer_digest)
            .await
            .map_err(|e| {
                anyhow::anyhow!("cannot push the bundle to {}/{repository}: {e}", self.host)
            })?;
        self.client
            .push_blob(&reference, config, &config_digest)
            .await
            .map_err(|e| {
                anyhow::anyhow!("cannot push the config to {}/{repository}: {e}", self.host)
            })?;
        // Pushed as the exact bytes hashed above, so the digest we announce is the digest the
        // registry stores (it checks it too).
        self.client
            .push_manifest_raw(
                &reference,
                manifest_bytes,
                OCI_IMAGE_MEDIA_TYPE
                    .parse()
                    .expect("a media type is a valid header value"),
            )
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot push the manifest to {}/{repository}: {e}",
                    self.host
                )
            })?;
        Ok(Pushed {
            registry: self.host.clone(),
            repository: repository.to_string(),
            digest,
            layer_digest,
            size: bundle.len() as u64,
        })
    }

    /// Pulls the bundle of the artifact `digest` in `repository`: checks the manifest's bytes
    /// against `digest`, its artifact type and single layer, the layer's size against
    /// `expected_size` and `limit` before downloading it, and the layer's bytes against its
    /// digest while and after downloading.
    pub async fn pull_bundle(
        &self,
        repository: &str,
        digest: &str,
        expected_size: u64,
        limit: u64,
    ) -> Result<Vec<u8>, PullError> {
        if expected_size > limit {
            return Err(PullError::TooLarge {
                size: expected_size,
                limit,
            });
        }
        let reference = self.reference_by_digest(repository, digest);
        let (manifest_bytes, _) = self
            .client
            .pull_manifest_raw(&reference, &self.auth, &[OCI_IMAGE_MEDIA_TYPE])
            .await
            .map_err(|e| classify(e, digest))?;
        let actual = sha256_digest(&manifest_bytes);
        if actual != digest {
            return Err(PullError::DigestMismatch {
                expected: digest.to_string(),
                actual,
            });
        }
        if manifest_bytes.len() > MAX_MANIFEST_BYTES {
            return Err(PullError::NotABundle(format!(
                "a manifest of {} bytes",
                manifest_bytes.len()
            )));
        }
        let manifest: OciImageManifest = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| PullError::NotABundle(format!("the manifest does not parse: {e}")))?;
        if manifest.artifact_type.as_deref() != Some(ARTIFACT_TYPE) {
            return Err(PullError::NotABundle(format!(
                "artifact type {:?}",
                manifest.artifact_type
            )));
        }
        let [layer] = manifest.layers.as_slice() else {
            return Err(PullError::NotABundle(format!(
                "{} layers instead of one",
                manifest.layers.len()
            )));
        };
        if layer.media_type != LAYER_MEDIA_TYPE {
            return Err(PullError::NotABundle(format!(
                "layer media type {:?}",
                layer.media_type
            )));
        }
        if !crate::notice::is_sha256_digest(&layer.digest) {
            return Err(PullError::NotABundle(format!(
                "layer digest {:?}",
                layer.digest
            )));
        }
        let size = u64::try_from(layer.size).unwrap_or(u64::MAX);
        if size != expected_size {
            return Err(PullError::SizeMismatch {
                size,
                expected: expected_size,
            });
        }
        let mut stream = self
            .client
            .pull_blob_stream(&reference, layer)
            .await
            .map_err(|e| classify(e, &layer.digest))?;
        let mut bytes = Vec::with_capacity(size as usize);
        use futures_util::StreamExt as _;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| classify_io(e, &layer.digest))?;
            if (bytes.len() + chunk.len()) as u64 > size {
                return Err(PullError::SizeMismatch {
                    size: (bytes.len() + chunk.len()) as u64,
                    expected: size,
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        let actual = sha256_digest(&bytes);
        if actual != layer.digest {
            return Err(PullError::DigestMismatch {
                expected: layer.digest.clone(),
                actual,
            });
        }
        if bytes.len() as u64 != size {
            return Err(PullError::SizeMismatch {
                size: bytes.len() as u64,
                expected: size,
            });
        }
        Ok(bytes)
    }
}

/// A tag for people: the version, with the characters tags may not hold (`+`) replaced.
fn tag_for(version: &semver::Version) -> String {
    version
        .to_string()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `sha256:` and the lower-case hex digest of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

fn classify(e: oci_client::errors::OciDistributionError, digest: &str) -> PullError {
    use oci_client::errors::{DigestError, OciDistributionError};
    match e {
        OciDistributionError::DigestError(DigestError::VerificationError { expected, actual }) => {
            PullError::DigestMismatch { expected, actual }
        }
        other => PullError::Registry(format!("{digest}: {other}")),
    }
}

fn classify_io(e: std::io::Error, digest: &str) -> PullError {
    use oci_client::errors::DigestError;
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<DigestError>())
    {
        Some(DigestError::VerificationError { expected, actual }) => PullError::DigestMismatch {
            expected: expected.clone(),
            actual: actual.clone(),
        },
        _ => PullError::Registry(format!("{digest}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_valid_oci_tags() {
        assert_eq!(tag_for(&semver::Version::parse("1.2.3").unwrap()), "1.2.3");
        assert_eq!(
            tag_for(&semver::Version::parse("1.2.3-rc.1+build.5").unwrap()),
            "1.2.3-rc.1_build.5"
        );
    }
}
