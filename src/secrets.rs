//! Per-install secrets: files in the site's `secrets` folder (`secrets/hosts/HOSTNAME/NAME`,
//! else `secrets/roles/ROLE/NAME`) that reach an install only through
//! `/secret/MAC/NAME?token=…` with its live install token, and only for names its role
//! declares (`secrets:` in the inventory). Never rendered into a script, never on the page,
//! the API, events or logs: templates see only each secret's URL (`secrets.NAME`).
//!
//! Names are judged here (letters, digits, `.`, `_`, `-`; a letter or digit first; at most
//! 64), and the file is found through the path jail, so no name and no symbolic link in
//! the folder can reach outside it.

use std::path::{Path, PathBuf};

/// The longest secret file served (password hashes, keys, small certificates).
pub(crate) const MAX_BYTES: u64 = 1 << 20;

/// Whether `name` may name a secret.
pub(crate) fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && !name.contains("..")
}

/// Why a secret cannot be served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum SecretError {
    #[error("{0:?} is not a secret name (letters, digits, . _ -; a letter or digit first)")]
    BadName(String),
    #[error("role {role} does not declare the secret {name:?}")]
    NotDeclared { role: String, name: String },
    #[error("secret {name:?}: neither {host} nor {role} is a file in the secrets folder")]
    Missing {
        name: String,
        host: String,
        role: String,
    },
}

/// The file holding secret `name` for `hostname` in `role`: the host's own, else the
/// role's; each through the jail rooted at `root`.
pub(crate) fn find(
    root: &Path,
    hostname: &str,
    role: &str,
    name: &str,
) -> Result<PathBuf, SecretError> {
    if !valid_name(name) {
        return Err(SecretError::BadName(name.to_string()));
    }
    let host = format!("hosts/{hostname}/{name}");
    let by_role = format!("roles/{role}/{name}");
    let found = root.canonicalize().ok().and_then(|root| {
        [&host, &by_role].into_iter().find_map(|rel| {
            crate::jail::resolve(&root, rel)
                .ok()
                .filter(|p| p.is_file())
        })
    });
    found.ok_or(SecretError::Missing {
        name: name.to_string(),
        host,
        role: by_role,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain() {
        for ok in ["root_hash", "ssh-host-key.ed25519", "a", "X9"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "../etc/passwd",
            "a/b",
            ".hidden",
            "a..b",
            "-x",
            "a b",
            "a\0",
            &"x".repeat(65),
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_host_file_wins_and_nothing_escapes() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("secrets");
        std::fs::create_dir_all(root.join("hosts/web01")).unwrap();
        std::fs::create_dir_all(root.join("roles/web")).unwrap();
        std::fs::write(root.join("roles/web/pw"), "role").unwrap();
        std::fs::write(root.join("hosts/web01/pw"), "host").unwrap();
        std::fs::write(d.path().join("outside"), "no").unwrap();
        std::os::unix::fs::symlink(d.path().join("outside"), root.join("roles/web/link")).unwrap();
        let read = |h: &str, n: &str| {
            find(&root, h, "web", n).map(|p| std::fs::read_to_string(p).unwrap())
        };
        assert_eq!(read("web01", "pw").as_deref(), Ok("host"));
        assert_eq!(read("web02", "pw").as_deref(), Ok("role"));
        assert!(
            matches!(read("web02", "link"), Err(SecretError::Missing { .. })),
            "a symlink out is not served"
        );
        assert!(matches!(
            read("web01", "../../outside"),
            Err(SecretError::BadName(_))
        ));
        // A hostname cannot climb either (hostnames are validated, but the jail holds anyway).
        assert!(find(&root, "../..", "web", "outside").is_err());
    }
}
