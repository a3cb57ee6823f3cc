//! Who may use the admin API, and for what: scoped bearer tokens from a token file, and
//! optionally a client certificate (mutual TLS) on top.
//!
//! A token has a name (what the audit log records) and one or more scopes:
//!
//! | scope | allows |
//! |---|---|
//! | `read` | `GET /v1/admin/plugins` |
//! | `deploy:NAME` | push and roll back plugin `NAME` (`PUT`, `POST .../rollback`) |
//! | `feedback:NAME` | send labeled samples for plugin `NAME` (`POST .../feedback`) |
//! | `admin` | everything, removing a plugin included |
//!
//! The token file (`tokens_file` in the configuration, TOML, unknown keys are errors) holds
//! only each secret's SHA-256, never the secret; `edgeplug token` makes an entry:
//!
//! ```toml
//! [[token]]
//! name = "ci"
//! sha256 = "3f1c...64 hex digits"
//! scopes = ["deploy:digits", "read"]
//! ```
//!
//! The file is read again when its contents change (checked on every admin request), so
//! adding or revoking a token needs no restart; while it is unreadable or invalid, every
//! admin request is refused (503) rather than served with a stale token list. The legacy
//! `admin_token` / `admin_token_file` keys still work: that token is an entry named
//! `admin_token` with scope `admin`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use edgeplug_bundle::manifest::Sha256;
use serde::Deserialize;
use subtle::ConstantTimeEq as _;

/// The name the legacy `admin_token` gets in the audit log.
pub const LEGACY_ADMIN_TOKEN_NAME: &str = "admin_token";

/// A token file larger than this is refused: it is a list of short entries, and it is read
/// on the request path.
const MAX_TOKENS_FILE_BYTES: u64 = 1 << 20;

/// What a token may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// List plugins through the admin API.
    Read,
    /// Push and roll back this one plugin.
    Deploy(String),
    /// Send labeled samples (feedback) for this one plugin.
    Feedback(String),
    /// Every admin operation on every plugin.
    Admin,
}

impl std::str::FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Scope, String> {
        match s {
            "read" => Ok(Scope::Read),
            "admin" => Ok(Scope::Admin),
            _ => {
                let (kind, name) = s.split_once(':').unwrap_or((s, ""));
                if !matches!(kind, "deploy" | "feedback") {
                    return Err(format!(
                        "unknown scope {s:?} (read, deploy:PLUGIN, feedback:PLUGIN or admin)"
                    ));
                }
                if !is_plugin_name(name) {
                    return Err(format!(
                        "scope {s:?}: plugin name {name:?} must be 1-64 characters of a-z, 0-9 and '-'"
                    ));
                }
                Ok(if kind == "deploy" {
                    Scope::Deploy(name.to_string())
                } else {
                    Scope::Feedback(name.to_string())
                })
            }
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Read => f.write_str("read"),
            Scope::Deploy(name) => write!(f, "deploy:{name}"),
            Scope::Feedback(name) => write!(f, "feedback:{name}"),
            Scope::Admin => f.write_str("admin"),
        }
    }
}

/// The plugin names a manifest accepts (see `edgeplug_bundle::manifest`).
fn is_plugin_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// An admin operation, as a scope sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminOp<'a> {
    List,
    Push(&'a str),
    Rollback(&'a str),
    Remove(&'a str),
    /// A labeled sample for the plugin's training.
    Feedback(&'a str),
    /// Starting (a push with `?canary=` or `?shadow=`), promoting or ending a canary.
    Canary(&'a str),
    /// A fine-tune job of a plugin that learns, and its head's gate.
    Finetune(&'a str),
    /// Back to the plugin's previous trained head.
    HeadRollback(&'a str),
}

impl AdminOp<'_> {
    /// The action's name in the audit log.
    pub fn action(&self) -> &'static str {
        match self {
            AdminOp::List => "list",
            AdminOp::Push(_) => "push",
            AdminOp::Rollback(_) => "rollback",
            AdminOp::Remove(_) => "remove",
            AdminOp::Feedback(_) => "feedback",
            AdminOp::Canary(_) => "canary",
            AdminOp::Finetune(_) => "finetune",
            AdminOp::HeadRollback(_) => "head-rollback",
        }
    }

    /// The plugin it acts on, if one.
    pub fn plugin(&self) -> Option<&str> {
        match *self {
            AdminOp::List => None,
            AdminOp::Push(p)
            | AdminOp::Rollback(p)
            | AdminOp::Remove(p)
            | AdminOp::Feedback(p)
            | AdminOp::Canary(p)
            | AdminOp::Finetune(p)
            | AdminOp::HeadRollback(p) => Some(p),
        }
    }
}

impl Scope {
    /// Whether this scope alone allows `op`.
    pub fn permits(&self, op: &AdminOp<'_>) -> bool {
        match (self, op) {
            (Scope::Admin, _) => true,
            (Scope::Read, AdminOp::List) => true,
            // A trained head is a new version of the plugin's behaviour: deploying it, or
            // rolling it back, is the deployer's.
            (
                Scope::Deploy(name),
                AdminOp::Push(p)
                | AdminOp::Rollback(p)
                | AdminOp::Canary(p)
                | AdminOp::Finetune(p)
                | AdminOp::HeadRollback(p),
            ) => name == p,
            (Scope::Feedback(name), AdminOp::Feedback(p)) => name == p,
            _ => false,
        }
    }
}

/// One token: its name, the SHA-256 of its secret, and its scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEntry {
    pub name: String,
    /// SHA-256 of the secret. A plain hash is enough because `edgeplug token` secrets are
    /// 256 random bits: finding a preimage is as hard as guessing the secret itself, so a
    /// slow password hash (argon2, bcrypt), which only helps against guessable secrets,
    /// would add nothing but cost on every request.
    pub sha256: Sha256,
    pub scopes: Vec<Scope>,
}

impl TokenEntry {
    /// The entry for `secret`.
    pub fn for_secret(name: &str, secret: &str, scopes: Vec<Scope>) -> anyhow::Result<TokenEntry> {
        check_token_name(name)?;
        anyhow::ensure!(!scopes.is_empty(), "a token needs at least one scope");
        Ok(TokenEntry {
            name: name.to_string(),
            sha256: Sha256::of(secret.as_bytes()),
            scopes,
        })
    }

    /// The entry as a `[[token]]` table of the token file.
    pub fn to_toml(&self) -> String {
        let scopes: Vec<String> = self
            .scopes
            .iter()
            .map(|s| format!("{:?}", s.to_string()))
            .collect();
        format!(
            "[[token]]\nname = {:?}\nsha256 = \"{}\"\nscopes = [{}]\n",
            self.name,
            self.sha256,
            scopes.join(", ")
        )
    }

    /// Whether one of its scopes allows `op`.
    pub fn permits(&self, op: &AdminOp<'_>) -> bool {
        self.scopes.iter().any(|s| s.permits(op))
    }
}

/// Token names end up in the audit log and in tracing output: keep them plain.
fn check_token_name(name: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@')),
        "token name {name:?} must be 1-64 characters of A-Z, a-z, 0-9, '-', '_', '.' and '@'"
    );
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default)]
    token: Vec<RawEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    name: String,
    sha256: String,
    scopes: Vec<String>,
}

/// A set of tokens with unique names and unique secrets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    entries: Vec<TokenEntry>,
}

impl Tokens {
    /// Parses a token file.
    pub fn parse(text: &str) -> anyhow::Result<Tokens> {
        let file: TokenFile = toml::from_str(text).context("invalid token file")?;
        let mut tokens = Tokens::default();
        for raw in file.token {
            check_token_name(&raw.name)?;
            let sha256: Sha256 = raw
                .sha256
                .parse()
                .map_err(|e| anyhow::anyhow!("token {:?}: sha256: {e}", raw.name))?;
            let scopes = raw
                .scopes
                .iter()
                .map(|s| s.parse::<Scope>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow::anyhow!("token {:?}: {e}", raw.name))?;
            anyhow::ensure!(!scopes.is_empty(), "token {:?} has no scopes", raw.name);
            tokens.add(TokenEntry {
                name: raw.name,
                sha256,
                scopes,
            })?;
        }
        Ok(tokens)
    }

    /// Adds an entry; a second entry with the same name or the same secret is an error (the
    /// audit log could not say who acted).
    pub fn add(&mut self, entry: TokenEntry) -> anyhow::Result<()> {
        for e in &self.entries {
            anyhow::ensure!(
                e.name != entry.name,
                "two tokens are named {:?}",
                entry.name
            );
            anyhow::ensure!(
                e.sha256 != entry.sha256,
                "tokens {:?} and {:?} have the same secret",
                e.name,
                entry.name
            );
        }
        self.entries.push(entry);
        Ok(())
    }

    /// The entry whose secret is `presented`. The presented secret is hashed once and
    /// compared with every entry in constant time, without stopping at a match, so neither
    /// the secret's bytes, its length nor which entry matched show in the timing.
    pub fn find(&self, presented: &str) -> Option<&TokenEntry> {
        let digest = Sha256::of(presented.as_bytes());
        let mut found = None;
        for entry in &self.entries {
            if bool::from(digest.0.ct_eq(&entry.sha256.0)) {
                found = Some(entry);
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A verified client certificate (the TLS handshake checked it against `[tls] client_ca`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// SHA-256 of the leaf certificate's DER (what `openssl x509 -fingerprint -sha256`
    /// prints, without the colons): it names the certificate in the audit log.
    pub sha256: Sha256,
}

/// What the connection carrying a request knows about its client; `serve` puts it in every
/// request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    pub peer: std::net::SocketAddr,
    /// Present only if the client sent a certificate and the handshake verified it.
    pub client_cert: Option<ClientCert>,
}

/// Why an admin request was refused before it did anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No token is configured at all.
    Disabled,
    /// mTLS is on and the connection has no verified client certificate.
    ClientCertRequired,
    /// No `Authorization: Bearer` header.
    NoToken,
    /// A token that matches no entry.
    WrongToken,
    /// A known token whose scopes do not allow the operation.
    Scope { token: String },
    /// The token file is unreadable or invalid (since it last changed).
    TokensUnavailable,
}

impl Denied {
    pub fn status(&self) -> u16 {
        match self {
            Denied::NoToken | Denied::WrongToken => 401,
            Denied::Disabled | Denied::ClientCertRequired | Denied::Scope { .. } => 403,
            Denied::TokensUnavailable => 503,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Denied::Disabled => "admin-disabled",
            Denied::ClientCertRequired => "client-certificate-required",
            Denied::NoToken | Denied::WrongToken => "unauthorized",
            Denied::Scope { .. } => "forbidden",
            Denied::TokensUnavailable => "tokens-unavailable",
        }
    }

    /// The message the client sees: nothing about which tokens exist.
    pub fn message(&self) -> String {
        match self {
            Denied::Disabled => "the admin API is disabled: set tokens_file or admin_token \
                                 in the gateway's configuration"
                .into(),
            Denied::ClientCertRequired => {
                "the admin API needs a client certificate signed by the configured CA".into()
            }
            Denied::NoToken => "the admin API needs an Authorization: Bearer token".into(),
            Denied::WrongToken => "wrong admin token".into(),
            Denied::Scope { token } => {
                format!("token {token:?} is not allowed to do this")
            }
            Denied::TokensUnavailable => {
                "the gateway's token file is unreadable or invalid; see its log".into()
            }
        }
    }
}

/// The admin API's access policy: the token sources and whether a client certificate is
/// required.
pub struct Access {
    legacy: Option<TokenEntry>,
    file: Option<TokenFileState>,
    require_client_cert: bool,
}

struct TokenFileState {
    path: PathBuf,
    /// The file's bytes when last read and what they parsed to (an error is logged when
    /// first seen, and the API refused until the file changes); `None` while unreadable.
    current: Mutex<Option<(Vec<u8>, Parsed)>>,
}

/// A token file's tokens, or why it is invalid.
type Parsed = Result<Arc<Tokens>, String>;

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("legacy", &self.legacy.as_ref().map(|e| &e.name))
            .field("tokens_file", &self.file.as_ref().map(|s| &s.path))
            .field("require_client_cert", &self.require_client_cert)
            .finish()
    }
}

impl Access {
    /// The policy: `legacy_token` (the old `admin_token`, scope admin), the token file at
    /// `tokens_file` (read now: a broken file fails the start), and whether the admin API
    /// needs a verified client certificate.
    pub fn new(
        legacy_token: Option<&str>,
        tokens_file: Option<&Path>,
        require_client_cert: bool,
    ) -> anyhow::Result<Access> {
        let legacy = legacy_token
            .map(|t| TokenEntry::for_secret(LEGACY_ADMIN_TOKEN_NAME, t, vec![Scope::Admin]))
            .transpose()?;
        let file = match tokens_file {
            None => None,
            Some(path) => {
                let bytes = read_tokens_file(path)?;
                let tokens = parse_with(legacy.as_ref(), &bytes)
                    .with_context(|| format!("in {}", path.display()))?;
                Some(TokenFileState {
                    path: path.to_path_buf(),
                    current: Mutex::new(Some((bytes, Ok(Arc::new(tokens))))),
                })
            }
        };
        Ok(Access {
            legacy,
            file,
            require_client_cert,
        })
    }

    /// Whether any token source is configured.
    pub fn enabled(&self) -> bool {
        self.legacy.is_some() || self.file.is_some()
    }

    /// The tokens now in force (re-reading the token file if it changed).
    fn tokens(&self) -> Result<Arc<Tokens>, Denied> {
        let Some(state) = &self.file else {
            let mut tokens = Tokens::default();
            if let Some(legacy) = &self.legacy {
                tokens.entries.push(legacy.clone());
            }
            return Ok(Arc::new(tokens));
        };
        let mut current = state.current.lock().unwrap_or_else(|e| e.into_inner());
        match read_tokens_file(&state.path) {
            Ok(bytes) if current.as_ref().is_some_and(|(read, _)| *read == bytes) => {}
            Ok(bytes) => {
                let parsed = parse_with(self.legacy.as_ref(), &bytes)
                    .map(Arc::new)
                    .map_err(|e| format!("{e:#}"));
                match &parsed {
                    Ok(tokens) => tracing::info!(
                        path = %state.path.display(), tokens = tokens.len(),
                        "token file reloaded"
                    ),
                    Err(error) => tracing::error!(
                        path = %state.path.display(), %error,
                        "token file invalid: the admin API is refused until it is fixed"
                    ),
                }
                *current = Some((bytes, parsed));
            }
            Err(error) => {
                if current.is_some() {
                    tracing::error!(
                        path = %state.path.display(), error = format!("{error:#}"),
                        "token file unreadable: the admin API is refused until it is back"
                    );
                }
                *current = None;
            }
        }
        match current.as_ref() {
            Some((_, Ok(tokens))) => Ok(tokens.clone()),
            _ => Err(Denied::TokensUnavailable),
        }
    }

    /// Who is asking: the entry of the bearer token `authorization` carries (the header's
    /// value), on a connection described by `conn`. Refuses before any scope is considered.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        conn: Option<&ConnInfo>,
    ) -> Result<TokenEntry, Denied> {
        if !self.enabled() {
            return Err(Denied::Disabled);
        }
        if self.require_client_cert && conn.and_then(|c| c.client_cert.as_ref()).is_none() {
            return Err(Denied::ClientCertRequired);
        }
        let presented = authorization
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(Denied::NoToken)?;
        let tokens = self.tokens()?;
        tokens.find(presented).cloned().ok_or(Denied::WrongToken)
    }
}

fn read_tokens_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read tokens_file {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_TOKENS_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read tokens_file {}", path.display()))?;
    anyhow::ensure!(
        bytes.len() as u64 <= MAX_TOKENS_FILE_BYTES,
        "tokens_file {} is larger than {MAX_TOKENS_FILE_BYTES} bytes",
        path.display()
    );
    Ok(bytes)
}

fn parse_with(legacy: Option<&TokenEntry>, bytes: &[u8]) -> anyhow::Result<Tokens> {
    let text = std::str::from_utf8(bytes).context("the token file is not UTF-8")?;
    let mut tokens = Tokens::parse(text)?;
    if let Some(legacy) = legacy {
        tokens.add(legacy.clone())?;
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, secret: &str, scopes: &[&str]) -> TokenEntry {
        let scopes = scopes.iter().map(|s| s.parse().unwrap()).collect();
        TokenEntry::for_secret(name, secret, scopes).unwrap()
    }

    #[test]
    fn each_scope_permits_exactly_its_operations() {
        let ops = [
            AdminOp::List,
            AdminOp::Push("digits"),
            AdminOp::Rollback("digits"),
            AdminOp::Remove("digits"),
            AdminOp::Push("other"),
            AdminOp::Rollback("other"),
            AdminOp::Remove("other"),
        ];
        let cases: [(&str, [bool; 7]); 3] = [
            ("read", [true, false, false, false, false, false, false]),
            (
                "deploy:digits",
                [false, true, true, false, false, false, false],
            ),
            ("admin", [true; 7]),
        ];
        for (scope, expected) in cases {
            let scope: Scope = scope.parse().unwrap();
            for (op, allowed) in ops.iter().zip(expected) {
                assert_eq!(scope.permits(op), allowed, "{scope} {op:?}");
            }
        }
        // Scopes add up.
        let both = entry("both", "s", &["read", "deploy:digits"]);
        assert!(both.permits(&AdminOp::List) && both.permits(&AdminOp::Push("digits")));
        assert!(!both.permits(&AdminOp::Remove("digits")));
    }

    #[test]
    fn scopes_parse_strictly_and_print_back() {
        for text in ["read", "admin", "deploy:digits", "deploy:a-1"] {
            assert_eq!(text.parse::<Scope>().unwrap().to_string(), text);
        }
        for bad in [
            "",
            "Read",
            "deploy",
            "deploy:",
            "deploy:Digits",
            "deploy:../x",
            "write",
        ] {
            assert!(bad.parse::<Scope>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn a_token_file_round_trips_and_finds_by_secret() {
        let ci = entry("ci", "secret-one", &["deploy:digits", "read"]);
        let ops = entry("ops", "secret-two", &["admin"]);
        let text = format!("# comment\n{}\n{}", ci.to_toml(), ops.to_toml());
        let tokens = Tokens::parse(&text).unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens.find("secret-one"), Some(&ci));
        assert_eq!(tokens.find("secret-two"), Some(&ops));
        assert_eq!(tokens.find("secret-three"), None);
        assert_eq!(tokens.find(""), None);
        // The file holds the digest, never the secret.
        assert!(!text.contains("secret-one"));
        assert!(text.contains(&Sha256::of(b"secret-one").to_string()));
        assert!(Tokens::parse("").unwrap().is_empty());
    }

    #[test]
    fn bad_token_files_are_refused_with_the_reason() {
        let sha = Sha256::of(b"x").to_string();
        let cases = [
            (
                "[[token]]\nname = \"a\"\nsha256 = \"abc\"\nscopes = [\"admin\"]",
                "sha256",
            ),
            (
                &format!("[[token]]\nname = \"a\"\nsha256 = \"{sha}\"\nscopes = []"),
                "no scopes",
            ),
            (
                &format!("[[token]]\nname = \"a\"\nsha256 = \"{sha}\"\nscopes = [\"root\"]"),
                "unknown scope",
            ),
            (
                &format!("[[token]]\nname = \"a b\"\nsha256 = \"{sha}\"\nscopes = [\"read\"]"),
                "token name",
            ),
            (
                &format!(
                    "[[token]]\nname = \"a\"\nsha256 = \"{sha}\"\nscopes = [\"read\"]\nsecret = \"x\""
                ),
                "secret",
            ),
            (
                &format!(
                    "[[token]]\nname = \"a\"\nsha256 = \"{sha}\"\nscopes = [\"read\"]\n\
                     [[token]]\nname = \"a\"\nsha256 = \"{}\"\nscopes = [\"read\"]",
                    Sha256::of(b"y")
                ),
                "two tokens are named",
            ),
            (
                &format!(
                    "[[token]]\nname = \"a\"\nsha256 = \"{sha}\"\nscopes = [\"read\"]\n\
                     [[token]]\nname = \"b\"\nsha256 = \"{sha}\"\nscopes = [\"admin\"]"
                ),
                "same secret",
            ),
        ];
        for (text, reason) in cases {
            let err = format!("{:#}", Tokens::parse(text).unwrap_err());
            assert!(err.contains(reason), "{text}\n-> {err}");
        }
    }

    #[test]
    fn authentication_checks_certificate_then_token() {
        let conn = |cert: bool| ConnInfo {
            peer: "127.0.0.1:1".parse().unwrap(),
            client_cert: cert.then(|| ClientCert {
                sha256: Sha256::of(b"cert"),
            }),
        };
        let none = Access::new(None, None, false).unwrap();
        assert_eq!(
            none.authenticate(Some("Bearer x"), None),
            Err(Denied::Disabled)
        );
        let legacy = Access::new(Some("legacy"), None, false).unwrap();
        let who = legacy.authenticate(Some("Bearer legacy"), None).unwrap();
        assert_eq!(who.name, LEGACY_ADMIN_TOKEN_NAME);
        assert!(who.permits(&AdminOp::Remove("x")));
        assert_eq!(legacy.authenticate(None, None), Err(Denied::NoToken));
        assert_eq!(
            legacy.authenticate(Some("Basic bGVnYWN5"), None),
            Err(Denied::NoToken)
        );
        assert_eq!(
            legacy.authenticate(Some("Bearer legacy2"), None),
            Err(Denied::WrongToken)
        );
        let mtls = Access::new(Some("legacy"), None, true).unwrap();
        assert_eq!(
            mtls.authenticate(Some("Bearer legacy"), Some(&conn(false))),
            Err(Denied::ClientCertRequired)
        );
        assert_eq!(
            mtls.authenticate(Some("Bearer legacy"), None),
            Err(Denied::ClientCertRequired)
        );
        assert!(
            mtls.authenticate(Some("Bearer legacy"), Some(&conn(true)))
                .is_ok()
        );
        assert_eq!(
            mtls.authenticate(Some("Bearer nope"), Some(&conn(true))),
            Err(Denied::WrongToken)
        );
    }

    #[test]
    fn the_token_file_is_reread_when_it_changes_and_refused_while_broken() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        std::fs::write(&path, entry("ci", "one", &["read"]).to_toml()).unwrap();
        // A broken file at start fails the start.
        std::fs::write(dir.path().join("bad.toml"), "[[token]]\nname = 1").unwrap();
        assert!(Access::new(None, Some(&dir.path().join("bad.toml")), false).is_err());
        assert!(Access::new(None, Some(&dir.path().join("missing.toml")), false).is_err());

        let access = Access::new(Some("legacy"), Some(&path), false).unwrap();
        assert_eq!(
            access.authenticate(Some("Bearer one"), None).unwrap().name,
            "ci"
        );
        assert!(access.authenticate(Some("Bearer legacy"), None).is_ok());
        // Revoke "one", add "two": no restart.
        std::fs::write(
            &path,
            entry("deployer", "two", &["deploy:digits"]).to_toml(),
        )
        .unwrap();
        assert_eq!(
            access.authenticate(Some("Bearer one"), None),
            Err(Denied::WrongToken)
        );
        assert_eq!(
            access.authenticate(Some("Bearer two"), None).unwrap().name,
            "deployer"
        );
        // Broken: every token is refused, the legacy one too, until it is fixed.
        std::fs::write(&path, "[[token]]\nname = ").unwrap();
        assert_eq!(
            access.authenticate(Some("Bearer two"), None),
            Err(Denied::TokensUnavailable)
        );
        assert_eq!(
            access.authenticate(Some("Bearer legacy"), None),
            Err(Denied::TokensUnavailable)
        );
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            access.authenticate(Some("Bearer two"), None),
            Err(Denied::TokensUnavailable)
        );
        std::fs::write(
            &path,
            entry("deployer", "two", &["deploy:digits"]).to_toml(),
        )
        .unwrap();
        assert!(access.authenticate(Some("Bearer two"), None).is_ok());
        // A file naming a token "admin_token" collides with the legacy token.
        std::fs::write(
            &path,
            entry(LEGACY_ADMIN_TOKEN_NAME, "three", &["read"]).to_toml(),
        )
        .unwrap();
        assert_eq!(
            access.authenticate(Some("Bearer three"), None),
            Err(Denied::TokensUnavailable)
        );
    }

    #[test]
    fn refusals_have_their_statuses_and_a_message() {
        let cases = [
            (Denied::Disabled, 403),
            (Denied::ClientCertRequired, 403),
            (Denied::NoToken, 401),
            (Denied::WrongToken, 401),
            (Denied::Scope { token: "ci".into() }, 403),
            (Denied::TokensUnavailable, 503),
        ];
        for (denied, status) in cases {
            assert_eq!(denied.status(), status, "{denied:?}");
            assert!(!denied.message().is_empty());
        }
    }
}
