//! The path jail: maps a requested file name to a file inside a served root, or refuses
//! it. TFTP and HTTP (assets, the TFTP root over HTTP) both go through it, so the two
//! cannot disagree about what is reachable.
//!
//! Two steps: [`sanitize`] is pure and judges the name alone (no `..`, no NUL; backslashes
//! are separators; a leading `/` means the root, as firmware often sends it); [`resolve`]
//! then follows symlinks on disk and refuses whatever lands outside the canonical root.

use std::io;
use std::path::{Component, Path, PathBuf};

/// Why a requested name does not lead to a file inside the root.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("file not found")]
    NotFound,
    #[error("path is outside the served root")]
    OutsideRoot,
    #[error("invalid file name")]
    InvalidName,
    #[error("permission denied")]
    PermissionDenied,
    #[error("I/O error: {0}")]
    Io(String),
}

/// The longest file name accepted; longer names are refused without touching the disk.
const MAX_NAME_LEN: usize = 1024;

/// Turns a requested name into a relative path with only normal components.
pub(crate) fn sanitize(requested: &str) -> Result<PathBuf, Refusal> {
    if requested.contains('\0') || requested.len() > MAX_NAME_LEN {
        return Err(Refusal::InvalidName);
    }
    let normalized = requested.replace('\\', "/");
    let mut relative = PathBuf::new();
    for component in Path::new(&normalized).components() {
        match component {
            Component::Normal(part) => relative.push(part),
            // A leading '/' is the TFTP root; '.' and repeated '/' change nothing.
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => return Err(Refusal::OutsideRoot),
            // Only on Windows (drive letters); refused rather than guessed.
            Component::Prefix(_) => return Err(Refusal::OutsideRoot),
        }
    }
    if relative.as_os_str().is_empty() {
        return Err(Refusal::InvalidName);
    }
    Ok(relative)
}

/// Resolves a requested name against `root`, which must already be canonical. Symlinks are
/// followed, and the result must still be inside `root`. Blocking: it reads the file system.
pub(crate) fn resolve(root: &Path, requested: &str) -> Result<PathBuf, Refusal> {
    let relative = sanitize(requested)?;
    let joined = root.join(relative);
    let canonical = std::fs::canonicalize(joined).map_err(|e| Refusal::from_io(&e))?;
    if !canonical.starts_with(root) {
        return Err(Refusal::OutsideRoot);
    }
    Ok(canonical)
}

impl Refusal {
    /// The refusal for an I/O error met while looking up or opening a file.
    pub(crate) fn from_io(error: &io::Error) -> Refusal {
        match error.kind() {
            // A missing component in the middle ("file/x") or a dangling symlink.
            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => Refusal::NotFound,
            io::ErrorKind::PermissionDenied => Refusal::PermissionDenied,
            _ => Refusal::Io(error.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_nested_names_are_relative() {
        assert_eq!(
            sanitize("undionly.kpxe"),
            Ok(PathBuf::from("undionly.kpxe"))
        );
        assert_eq!(
            sanitize("efi/boot/x.efi"),
            Ok(PathBuf::from("efi/boot/x.efi"))
        );
        assert_eq!(sanitize("./a//b/./c"), Ok(PathBuf::from("a/b/c")));
    }

    #[test]
    fn leading_slash_is_the_root() {
        assert_eq!(sanitize("/ipxe.efi"), Ok(PathBuf::from("ipxe.efi")));
        assert_eq!(sanitize("//boot/x"), Ok(PathBuf::from("boot/x")));
    }

    #[test]
    fn backslashes_are_separators() {
        assert_eq!(
            sanitize("boot\\x64\\wdsnbp.com"),
            Ok(PathBuf::from("boot/x64/wdsnbp.com"))
        );
        assert_eq!(sanitize("\\pxelinux.0"), Ok(PathBuf::from("pxelinux.0")));
        assert_eq!(sanitize("..\\etc\\passwd"), Err(Refusal::OutsideRoot));
    }

    #[test]
    fn parent_components_are_refused_anywhere() {
        assert_eq!(sanitize(".."), Err(Refusal::OutsideRoot));
        assert_eq!(sanitize("../etc/passwd"), Err(Refusal::OutsideRoot));
        assert_eq!(sanitize("/../etc/passwd"), Err(Refusal::OutsideRoot));
        assert_eq!(sanitize("a/../b"), Err(Refusal::OutsideRoot));
        assert_eq!(sanitize("a/.."), Err(Refusal::OutsideRoot));
        // Not a parent component, just a name with dots.
        assert_eq!(sanitize("a..b"), Ok(PathBuf::from("a..b")));
        assert_eq!(sanitize("..."), Ok(PathBuf::from("...")));
    }

    #[test]
    fn nul_empty_and_overlong_names_are_refused() {
        assert_eq!(sanitize("a\0b"), Err(Refusal::InvalidName));
        assert_eq!(sanitize(""), Err(Refusal::InvalidName));
        assert_eq!(sanitize("/"), Err(Refusal::InvalidName));
        assert_eq!(sanitize("./."), Err(Refusal::InvalidName));
        assert_eq!(
            sanitize(&"a".repeat(MAX_NAME_LEN + 1)),
            Err(Refusal::InvalidName)
        );
    }

    #[test]
    fn symlinks_inside_are_followed_and_outside_refused() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/file"), b"y").unwrap();
        std::os::unix::fs::symlink("sub/file", root.join("inner")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.join("escape")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("escdir")).unwrap();
        std::os::unix::fs::symlink("missing", root.join("dangling")).unwrap();
        let root = std::fs::canonicalize(&root).unwrap();

        assert_eq!(resolve(&root, "/sub/file"), Ok(root.join("sub/file")));
        assert_eq!(resolve(&root, "inner"), Ok(root.join("sub/file")));
        assert_eq!(resolve(&root, "escape"), Err(Refusal::OutsideRoot));
        assert_eq!(resolve(&root, "escdir/secret"), Err(Refusal::OutsideRoot));
        assert_eq!(resolve(&root, "dangling"), Err(Refusal::NotFound));
        assert_eq!(resolve(&root, "nope"), Err(Refusal::NotFound));
        assert_eq!(resolve(&root, "sub/file/x"), Err(Refusal::NotFound));
        assert_eq!(
            resolve(&root, "../root/sub/file"),
            Err(Refusal::OutsideRoot)
        );
        let absolute = outside.path().join("secret");
        // An absolute path is taken as relative to the root, so it is simply not there.
        assert_eq!(
            resolve(&root, absolute.to_str().unwrap()),
            Err(Refusal::NotFound)
        );
    }
}
