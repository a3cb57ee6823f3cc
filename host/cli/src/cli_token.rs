//! `edgeplug token`: makes a scoped admin token for a gateway's `tokens_file`.
//!
//! The secret is 256 random bits from the operating system, shown once; the gateway keeps
//! only its SHA-256 (see `edgeplug_gateway::auth` for why a plain hash is enough).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use edgeplug_gateway::auth::{Scope, TokenEntry, Tokens};

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The token's name, which the audit log records (e.g. `ci`, `alice@ops`).
    #[arg(long)]
    pub name: String,
    /// What it may do: `read` (list plugins), `deploy:PLUGIN` (push and roll back that
    /// plugin), `feedback:PLUGIN` (send labeled samples for that plugin's training) or
    /// `admin` (everything). Repeatable.
    #[arg(long = "scope", value_name = "SCOPE", required = true)]
    pub scopes: Vec<Scope>,
    /// Append the entry to this token file (created with mode 0600 if missing) and print only
    /// the secret. Without it, the secret and the entry to add are printed.
    #[arg(long)]
    pub tokens_file: Option<PathBuf>,
}

/// The prefix of every secret, so that secret scanners and people recognize one.
const SECRET_PREFIX: &str = "ept_";

pub fn run(args: TokenArgs) -> anyhow::Result<ExitCode> {
    let secret = new_secret();
    let entry = TokenEntry::for_secret(&args.name, &secret, args.scopes)?;
    match &args.tokens_file {
        Some(path) => {
            append_entry(path, &entry)?;
            println!("{secret}");
            eprintln!(
                "token {:?} added to {}; the secret above is shown only now",
                entry.name,
                path.display()
            );
        }
        None => {
            println!("token: {secret}");
            println!("# shown only now; add this entry to the gateway's tokens_file:");
            print!("{}", entry.to_toml());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `ept_` and 64 hex digits: 256 bits from the operating system's generator.
fn new_secret() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let mut secret = String::from(SECRET_PREFIX);
    for b in bytes {
        secret.push_str(&format!("{b:02x}"));
    }
    secret
}

/// Appends `entry` to the token file at `path`, after checking that the file with it still
/// parses (no second token of that name or secret), and syncs it.
fn append_entry(path: &Path, entry: &TokenEntry) -> anyhow::Result<()> {
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let separator = if existing.is_empty() {
        ""
    } else if existing.ends_with('\n') {
        "\n"
    } else {
        "\n\n"
    };
    let addition = format!("{separator}{}", entry.to_toml());
    Tokens::parse(&format!("{existing}{addition}"))
        .with_context(|| format!("{} with the new token would be invalid", path.display()))?;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    file.write_all(addition.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_fresh_256_bit_hex() {
        let a = new_secret();
        let b = new_secret();
        assert_ne!(a, b);
        let hex = a.strip_prefix(SECRET_PREFIX).unwrap();
        assert_eq!(hex.len(), 64);
        assert!(hex.bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn entries_append_to_a_token_file_that_still_parses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let ci =
            TokenEntry::for_secret("ci", "s1", vec!["deploy:digits".parse().unwrap()]).unwrap();
        append_entry(&path, &ci).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let ops = TokenEntry::for_secret("ops", "s2", vec![Scope::Admin]).unwrap();
        append_entry(&path, &ops).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let tokens = Tokens::parse(&text).unwrap();
        assert_eq!(tokens.find("s1"), Some(&ci));
        assert_eq!(tokens.find("s2"), Some(&ops));
        // Only digests: no 's' is a hex digit.
        assert!(!text.contains("s1") && !text.contains("s2"));
        // A second "ci" is refused and the file is left as it was.
        let again = TokenEntry::for_secret("ci", "s3", vec![Scope::Read]).unwrap();
        let err = append_entry(&path, &again).unwrap_err();
        assert!(
            format!("{err:#}").contains("two tokens are named"),
            "{err:#}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }
}
