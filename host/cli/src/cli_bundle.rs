//! `edgeplug keygen | pack | sign | verify | inspect`: the bundle subcommands.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;

use edgeplug_bundle as bundle;
use edgeplug_bundle::{
    self, BundleError, BundleLimits, Inspection, SecretKey, TrustStore, VerifiedBundle,
};

/// The bundle subcommands; the CLI flattens them into its own enum.
#[derive(Debug, clap::Subcommand)]
pub enum BundleCommand {
    /// Generate an Ed25519 signing key pair: DIR/NAME.key (0600) and DIR/NAME.pub.
    Keygen(KeygenArgs),
    /// Pack a plugin directory into a bundle (unsigned, or signed with --key).
    Pack(PackArgs),
    /// Sign a bundle in place (replacing any signature it has).
    Sign(SignArgs),
    /// Verify a bundle against a trust store: exit 0 and a summary, or non-zero and why.
    Verify(VerifyArgs),
    /// Show a bundle's manifest, members and signer without verifying it.
    Inspect(InspectArgs),
}

#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Directory for the key files (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Base name of the key files.
    #[arg(long, default_value = "signing")]
    pub name: String,
}

#[derive(Debug, clap::Args)]
pub struct PackArgs {
    /// Plugin directory holding plugin.toml and the files it references.
    pub dir: PathBuf,
    /// Bundle file to write; an existing directory gets `<name>-<version>.epk` inside.
    /// Default: `<name>-<version>.epk` in the current directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Private key (PEM PKCS#8) to sign with; without it the bundle is unsigned.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Take a member from another file, e.g. `--member plugin.wasm=target/wasm32-wasip2/release/digits.wasm`.
    /// PATH must be a file plugin.toml references. Repeatable.
    #[arg(long = "member", value_name = "PATH=FILE", value_parser = parse_member_source)]
    pub members: Vec<(String, PathBuf)>,
}

fn parse_member_source(text: &str) -> Result<(String, PathBuf), String> {
    let (path, file) = text
        .split_once('=')
        .ok_or_else(|| format!("expected PATH=FILE, got {text:?}"))?;
    edgeplug_bundle::manifest::check_member_path(path).map_err(|e| e.to_string())?;
    Ok((path.to_string(), PathBuf::from(file)))
}

#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// Private key (PEM PKCS#8), as written by `keygen`.
    #[arg(long)]
    pub key: PathBuf,
    /// Bundle to sign in place.
    pub file: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Trust store directory: `*.pub` keys and an optional `revoked.txt`.
    #[arg(long)]
    pub trust: PathBuf,
    /// Bundle to verify.
    pub file: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Bundle to inspect.
    pub file: PathBuf,
    /// Also print plugin.toml as it is in the bundle.
    #[arg(long)]
    pub manifest: bool,
}

/// Runs a bundle subcommand. `Err` is for operational failures (unreadable files, bad
/// keys); a bundle that `verify` refuses is reported on stderr with exit code 1.
pub fn run(cmd: BundleCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BundleCommand::Keygen(args) => run_keygen(args),
        BundleCommand::Pack(args) => run_pack(args),
        BundleCommand::Sign(args) => run_sign(args),
        BundleCommand::Verify(args) => run_verify(args),
        BundleCommand::Inspect(args) => run_inspect(args),
    }
}

pub fn run_keygen(args: KeygenArgs) -> anyhow::Result<ExitCode> {
    let generated = bundle::generate_keypair(&args.out, &args.name)?;
    println!("key id       {}", generated.key_id);
    println!(
        "private key  {} (mode 0600)",
        generated.private_path.display()
    );
    println!("public key   {}", generated.public_path.display());
    println!("Copy the public key into each gateway's trust store directory.");
    Ok(ExitCode::SUCCESS)
}

pub fn run_pack(args: PackArgs) -> anyhow::Result<ExitCode> {
    let limits = BundleLimits::default();
    let key = args.key.as_deref().map(SecretKey::load).transpose()?;
    // A component taken from elsewhere (--member) is the caller's choice; the directory's own
    // must not be older than the crate it was built from.
    let component_overridden = edgeplug_bundle::manifest::Manifest::load(&args.dir)
        .is_ok_and(|m| args.members.iter().any(|(path, _)| *path == m.component));
    if !component_overridden {
        crate::cli_build::refuse_stale_component(&args.dir)?;
    }
    let sources = args.members.into_iter().collect();
    let packed = bundle::pack_dir_with(&args.dir, &sources, &limits)
        .with_context(|| format!("cannot pack {}", args.dir.display()))?;
    let file_name = format!("{}-{}.epk", packed.manifest.name, packed.manifest.version);
    let out = match args.out {
        Some(out) if out.is_dir() => out.join(file_name),
        Some(out) => out,
        None => PathBuf::from(file_name),
    };
    let bytes = match &key {
        Some(key) => bundle::sign_bundle(&packed.bytes, key, &limits)?,
        None => packed.bytes,
    };
    bundle::write_file_atomic(&out, &bytes)
        .with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "packed {} {} ({} members, {} bytes) into {}",
        packed.manifest.name,
        packed.manifest.version,
        packed.manifest.members.len(),
        bytes.len(),
        out.display()
    );
    match &key {
        Some(key) => println!("signed by key {}", key.key_id()),
        None => println!(
            "unsigned: sign it with `edgeplug sign --key KEY {}`",
            out.display()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run_sign(args: SignArgs) -> anyhow::Result<ExitCode> {
    let limits = BundleLimits::default();
    let key = SecretKey::load(&args.key)?;
    let bytes = bundle::read_bundle_file(&args.file, &limits)?;
    let was_signed = bundle::inspect(&bytes, &limits)
        .with_context(|| format!("{} is not a valid bundle", args.file.display()))?
        .signer;
    let signed = bundle::sign_bundle(&bytes, &key, &limits)?;
    bundle::write_file_atomic(&args.file, &signed)
        .with_context(|| format!("cannot write {}", args.file.display()))?;
    if let Some(old) = was_signed {
        println!("replaced the signature of key {old}");
    }
    println!("signed {} with key {}", args.file.display(), key.key_id());
    Ok(ExitCode::SUCCESS)
}

pub fn run_verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let limits = BundleLimits::default();
    let trust = TrustStore::load(&args.trust)?;
    match bundle::verify_file(&args.file, &trust, &limits) {
        Ok(verified) => {
            print!("{}", verified_summary(&args.file, &verified));
            Ok(ExitCode::SUCCESS)
        }
        Err(err @ BundleError::Io { .. }) => Err(err.into()),
        Err(err) => {
            eprintln!("REJECTED {}: {err}", args.file.display());
            Ok(ExitCode::FAILURE)
        }
    }
}

pub fn run_inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let limits = BundleLimits::default();
    let bytes = bundle::read_bundle_file(&args.file, &limits)?;
    let inspection = bundle::inspect(&bytes, &limits)
        .with_context(|| format!("{} is not a valid bundle", args.file.display()))?;
    print!(
        "{}",
        inspection_report(&args.file, &inspection, args.manifest)
    );
    Ok(ExitCode::SUCCESS)
}

/// What `verify` prints on success.
pub fn verified_summary(path: &Path, bundle: &VerifiedBundle) -> String {
    let mut out = format!(
        "OK {}\nname      {}\nversion   {}\nsigner    {}\nsha-256   {}\nsize      {} bytes\nmembers   {}\n",
        path.display(),
        bundle.name(),
        bundle.version(),
        bundle.signer(),
        bundle.bundle_sha256(),
        bundle.size(),
        bundle.manifest().members.len(),
    );
    for (path, digest) in &bundle.manifest().members {
        out.push_str(&format!(
            "  {path:<32} {:>12}  {}\n",
            digest.size, digest.sha256
        ));
    }
    out
}

/// What `inspect` prints.
pub fn inspection_report(path: &Path, inspection: &Inspection, with_manifest: bool) -> String {
    let mut out = format!(
        "bundle    {}\nformat    {}\nsize      {} bytes\nsha-256   {}\n",
        path.display(),
        inspection.format_version,
        inspection.size,
        inspection.sha256
    );
    match inspection.signer {
        Some(id) => out.push_str(&format!(
            "signed    yes, key {id} (not verified: use `edgeplug verify --trust DIR`)\n"
        )),
        None => out.push_str("signed    no\n"),
    }
    match &inspection.manifest {
        Ok(m) => {
            out.push_str(&format!(
                "name      {}\nversion   {}\nworld     {}\ncomponent {}\n",
                m.name, m.version, m.world, m.component
            ));
            if !m.description.is_empty() {
                out.push_str(&format!("about     {}\n", m.description));
            }
            for (name, file) in &m.grants.models {
                out.push_str(&format!("model     {name} = {file}\n"));
            }
            for file in &m.grants.weights {
                out.push_str(&format!("weights   {file}\n"));
            }
            let l = &m.limits;
            out.push_str(&format!(
                "limits    memory {} MiB, deadline {} ms, concurrency {}, tensor memory {} MiB, request {} MiB, response {} MiB\n",
                l.memory_mib, l.deadline_ms, l.concurrency, l.tensor_memory_mib, l.max_request_mib, l.max_response_mib
            ));
            for t in &m.self_tests {
                out.push_str(&format!(
                    "self-test {}: {} -> {} (tolerance {})\n",
                    t.name, t.input, t.expect, t.tolerance
                ));
            }
        }
        Err(err) => out.push_str(&format!("manifest  INVALID: {err}\n")),
    }
    out.push_str(&format!("members   {}\n", inspection.members.len()));
    for member in &inspection.members {
        let status = match &member.listed {
            None => "NOT LISTED",
            Some(_) if member.matches() => "ok",
            Some(_) => "MISMATCH",
        };
        out.push_str(&format!(
            "  {:<32} {:>12}  {}  {status}\n",
            member.path, member.size, member.sha256
        ));
    }
    if let Some(problem) = &inspection.problem {
        out.push_str(&format!("problem   {problem}\n"));
    }
    if with_manifest {
        out.push_str("--- plugin.toml ---\n");
        out.push_str(&inspection.manifest_text);
        if !inspection.manifest_text.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin_dir(root: &Path) -> PathBuf {
        let dir = root.join("plugin");
        std::fs::create_dir_all(dir.join("models")).unwrap();
        std::fs::write(
            dir.join("plugin.toml"),
            "name = \"echo\"\nversion = \"0.1.0\"\nworld = \"edgeplug:plugin/plugin@0.1.0\"\n\n[grants.models]\nm = \"models/m.onnx\"\n",
        )
        .unwrap();
        std::fs::write(dir.join("plugin.wasm"), b"\0asm fake").unwrap();
        std::fs::write(dir.join("models/m.onnx"), b"fake model").unwrap();
        dir
    }

    #[test]
    fn keygen_pack_sign_verify_inspect_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let keys = tmp.path().join("keys");
        let dir = plugin_dir(tmp.path());
        assert_eq!(
            run(BundleCommand::Keygen(KeygenArgs {
                out: keys.clone(),
                name: "dev".into()
            }))
            .unwrap(),
            ExitCode::SUCCESS
        );
        // Refuses to overwrite.
        assert!(
            run(BundleCommand::Keygen(KeygenArgs {
                out: keys.clone(),
                name: "dev".into()
            }))
            .is_err()
        );
        let trust = tmp.path().join("trust");
        std::fs::create_dir(&trust).unwrap();
        std::fs::copy(keys.join("dev.pub"), trust.join("dev.pub")).unwrap();

        let out = tmp.path().join("echo.epk");
        run(BundleCommand::Pack(PackArgs {
            dir: dir.clone(),
            out: Some(out.clone()),
            key: None,
            members: vec![],
        }))
        .unwrap();
        let verify_args = || VerifyArgs {
            trust: trust.clone(),
            file: out.clone(),
        };
        // Unsigned: refused.
        assert_eq!(
            run(BundleCommand::Verify(verify_args())).unwrap(),
            ExitCode::FAILURE
        );
        run(BundleCommand::Sign(SignArgs {
            key: keys.join("dev.key"),
            file: out.clone(),
        }))
        .unwrap();
        assert_eq!(
            run(BundleCommand::Verify(verify_args())).unwrap(),
            ExitCode::SUCCESS
        );
        let limits = BundleLimits::default();
        let bytes = std::fs::read(&out).unwrap();
        let report = inspection_report(&out, &bundle::inspect(&bytes, &limits).unwrap(), true);
        assert!(report.contains("name      echo"), "{report}");
        assert!(report.contains("models/m.onnx"), "{report}");
        assert!(report.contains("signed    yes"), "{report}");
        assert!(!report.contains("MISMATCH"), "{report}");
        let trust_store = TrustStore::load(&trust).unwrap();
        let verified = bundle::verify(bytes, &trust_store, &limits).unwrap();
        let summary = verified_summary(&out, &verified);
        assert!(
            summary.contains(&verified.signer().to_string()),
            "{summary}"
        );

        // Pack and sign in one step, into a directory, with the component from elsewhere.
        let outdir = tmp.path().join("dist");
        std::fs::create_dir(&outdir).unwrap();
        let built = tmp.path().join("built.wasm");
        std::fs::write(&built, b"\0asm built elsewhere").unwrap();
        run(BundleCommand::Pack(PackArgs {
            dir,
            out: Some(outdir.clone()),
            key: Some(keys.join("dev.key")),
            members: vec![
                parse_member_source(&format!("plugin.wasm={}", built.display())).unwrap(),
            ],
        }))
        .unwrap();
        let file = outdir.join("echo-0.1.0.epk");
        assert_eq!(
            run(BundleCommand::Verify(VerifyArgs {
                trust: trust.clone(),
                file: file.clone()
            }))
            .unwrap(),
            ExitCode::SUCCESS
        );
        let verified = bundle::verify_file(&file, &trust_store, &limits).unwrap();
        assert_eq!(verified.component(), b"\0asm built elsewhere");
        assert!(parse_member_source("../x=y").is_err());
        assert!(parse_member_source("plugin.wasm").is_err());
        // A source for a file the manifest does not reference is refused.
        let err = run(BundleCommand::Pack(PackArgs {
            dir: plugin_dir(&tmp.path().join("again")),
            out: Some(outdir),
            key: None,
            members: vec![parse_member_source("extra.bin=/dev/null").unwrap()],
        }))
        .unwrap_err();
        assert!(format!("{err:#}").contains("does not reference"), "{err:#}");
    }
}
