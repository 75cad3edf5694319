//! `imagegate provenance init`: a development CA and signing certificate for
//! Content Credentials, written where `[provenance.c2pa]` can point.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum Action {
    /// Make a private CA and an ES256 signing certificate for development. Public
    /// verifiers (Adobe's Content Credentials site, c2patool with the C2PA trust
    /// list) will show files signed with it as untrusted: use a certificate from a
    /// CA on the C2PA trust list in production.
    Init(InitArgs),
}

#[derive(clap::Args)]
pub struct InitArgs {
    /// Where to write ca.pem, chain.pem and signer.key.
    #[arg(long, default_value = "data/provenance")]
    dir: PathBuf,
    /// The organization named in the certificates.
    #[arg(long, default_value = "imagegate")]
    organization: String,
    /// Replace files that exist.
    #[arg(long)]
    force: bool,
}

pub fn run(action: Action) -> Result<std::process::ExitCode> {
    let Action::Init(args) = action;
    let files = [
        args.dir.join("ca.pem"),
        args.dir.join("chain.pem"),
        args.dir.join("signer.key"),
    ];
    if !args.force {
        if let Some(existing) = files.iter().find(|f| f.exists()) {
            bail!(
                "{} exists; pass --force to replace the development CA (files signed with the old one will no longer chain to the new anchor)",
                existing.display()
            );
        }
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let made = imagegate_provenance::generate_development_ca(&args.organization)?;
    std::fs::write(&files[0], &made.ca_cert_pem)?;
    std::fs::write(&files[1], &made.cert_chain_pem)?;
    write_private(&files[2], &made.private_key_pem)?;
    println!(
        "Wrote a development CA and signing certificate to {dir}:\n\
         \x20 ca.pem      the CA certificate (the trust anchor to give verifiers)\n\
         \x20 chain.pem   the signing certificate then the CA\n\
         \x20 signer.key  the signing key (mode 0600; never commit it)\n\n\
         Sign with them:\n\n\
         [provenance.c2pa]\n\
         cert_chain_file = \"{dir}/chain.pem\"\n\
         private_key_file = \"{dir}/signer.key\"\n\
         trust_anchors_file = \"{dir}/ca.pem\"\n\n\
         Public verifiers will show these files as signed by an untrusted certificate:\n\
         this CA is on no public trust list. Use a certificate from a CA on the C2PA\n\
         trust list for production.",
        dir = args.dir.display()
    );
    Ok(std::process::ExitCode::SUCCESS)
}

fn write_private(path: &std::path::Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}
