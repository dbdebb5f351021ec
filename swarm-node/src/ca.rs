//! `swarm-node certs`: the command line of the `certs` crate.

use anyhow::Context as _;

use crate::cli::{Certs, Issue};

/// Runs a `certs` subcommand.
pub(crate) fn run(command: Certs) -> anyhow::Result<()> {
    match command {
        Certs::Init { dir, name, force } => {
            let ca = certs::Ca::create(&name).context("cannot create the CA")?;
            ca.save(&dir, force).context("cannot save the CA (--force overwrites)")?;
            println!("created CA {:?} in {}", name, dir.display());
            Ok(())
        }
        Certs::Issue(Issue { name, dns, ip, dir, force }) => {
            let ca =
                certs::Ca::load(&dir).context("cannot load the CA (run `certs init` first?)")?;
            let node = ca.issue(&name, &dns, &ip).context("cannot issue the certificate")?;
            node.save(&dir, force).context("cannot save the certificate (--force overwrites)")?;
            println!("issued {name} in {}", dir.display());
            Ok(())
        }
    }
}
