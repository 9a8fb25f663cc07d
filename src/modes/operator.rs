//! `fleet operator …`: the home of the operator's own subcommands, run outside any controller
//! or agent. `fleet operator password` makes a dashboard login: the `[ui] users` entry for the
//! controller's config, holding only a hash of the password. `fleet operator keygen` makes the
//! key that signs commands, and [`load_signing_key`] reads it (for `fleet send` and the
//! dashboard's send form).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::command::OperatorKey;

/// Most bytes of a password.
const PASSWORD_MAX: usize = 1024;

/// The `[ui] users` entry for `name` with the password on the first line of `input`.
pub fn password_entry(name: &str, mut input: impl std::io::BufRead) -> anyhow::Result<String> {
    let name = name.trim();
    if name.is_empty()
        || name.len() > 64
        || name.contains(['"', '\\'])
        || name.chars().any(char::is_control)
    {
        anyhow::bail!(
            "the name must be 1 to 64 characters, without quotes, backslashes or control characters"
        );
    }
    let mut line = String::new();
    let read = input
        .read_line(&mut line)
        .context("cannot read the password from stdin")?;
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        anyhow::bail!(
            "{} is empty: pipe the password in, e.g. `echo 'a long passphrase' | fleet operator password {name}`",
            if read == 0 { "stdin" } else { "the password" }
        );
    }
    if password.len() < 8 {
        anyhow::bail!("the password is shorter than 8 characters; pipe a longer one in");
    }
    if password.len() > PASSWORD_MAX {
        anyhow::bail!("the password is longer than {PASSWORD_MAX} bytes");
    }
    let hash = crate::web::ui::session::hash_password(password);
    Ok(format!(
        "# under [ui] in the controller's config:\nusers = [{{ name = \"{name}\", password_hash = \"{hash}\" }}]"
    ))
}

/// Reads the operator key file.
pub fn load_signing_key(path: Option<&Path>) -> anyhow::Result<OperatorKey> {
    let path = path.context(
        "no operator key: pass --signing-key FILE or set FLEET_SIGNING_KEY (make one with `fleet operator keygen`)",
    )?;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the operator key {}", path.display()))?;
    OperatorKey::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// `fleet operator keygen`: writes a new key file (mode 0600) and `FILE.pub`, and returns the
/// public key to list in nodes' `[commands] trusted_keys`. Missing parent directories are
/// created private (0700), as `~/.fleet` in the README's example on a fresh machine.
pub fn keygen(path: &Path, force: bool) -> anyhow::Result<String> {
    let key = OperatorKey::generate();
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        crate::files::create_dir(parent).map_err(|err| {
            // mkdir -p says only "File exists" or "Not a directory" when a file stands where a
            // directory should: name the file.
            let blocked = parent.ancestors().find(|p| p.exists() && !p.is_dir());
            match blocked {
                Some(file) => anyhow::anyhow!(
                    "cannot create the directory {}: {} is a file, not a directory; choose another --out",
                    parent.display(),
                    file.display()
                ),
                None => anyhow::Error::new(err)
                    .context(format!("cannot create the directory {}", parent.display())),
            }
        })?;
    }
    let mut file = crate::files::options()
        .write(true)
        .create(true)
        .create_new(!force)
        .truncate(true)
        .open(path)
        .map_err(|err| match err.kind() {
            // Only a file that is there already is helped by --force.
            std::io::ErrorKind::AlreadyExists => anyhow::anyhow!(
                "{} exists already: pass --force to replace it (the old secret key is lost)",
                path.display()
            ),
            _ => anyhow::Error::new(err).context(format!("cannot create {}", path.display())),
        })?;
    // A file replaced with --force keeps its mode unless narrowed: a new secret in an old
    // world-readable file would be no secret.
    crate::files::narrow(&file)
        .with_context(|| format!("cannot make {} private", path.display()))?;
    file.write_all(key.secret_text().as_bytes())?;
    file.sync_all()?;
    let public = key.public();
    let pub_path = PathBuf::from(format!("{}.pub", path.display()));
    std::fs::write(&pub_path, format!("{public}\n"))
        .with_context(|| format!("cannot write {}", pub_path.display()))?;
    Ok(public)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_entry_holds_a_hash_that_checks_the_password() {
        let entry = password_entry("alice", "correct horse battery\n".as_bytes()).unwrap();
        assert!(!entry.contains("correct horse"), "{entry}");
        let config: crate::config::UiConfig =
            toml::from_str(entry.lines().nth(1).unwrap()).expect("the entry is TOML for [ui]");
        config.validate().unwrap();
        let phc = &config.users[0].password_hash;
        assert!(crate::web::ui::session::password_matches(
            phc,
            "correct horse battery"
        ));
        assert!(!crate::web::ui::session::password_matches(
            phc,
            "correct horse"
        ));
        assert!(password_entry("alice", "short\n".as_bytes()).is_err());
        for (input, said) in [("", "stdin is empty"), ("\n", "the password is empty")] {
            let err = password_entry("alice", input.as_bytes()).unwrap_err();
            assert!(err.to_string().starts_with(said), "{err}");
        }
        assert!(password_entry("a\"b", "long enough password\n".as_bytes()).is_err());
    }
}
