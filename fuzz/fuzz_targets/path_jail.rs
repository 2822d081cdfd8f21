//! Arbitrary requested names against a real directory tree (made once in a temporary
//! folder) with symlinks that stay inside the root and ones that point outside it, by
//! absolute and by relative paths, a loop and a dangling one. Whatever `jail::resolve`
//! returns is a canonical path inside the canonical root, is never the file or folder
//! outside, and agrees with `jail::sanitize`; `sanitize` returns only plain relative paths.
#![no_main]

use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use stemcell::fuzzing;

struct Tree {
    root: PathBuf,
    outside: PathBuf,
}

fn tree() -> &'static Tree {
    static TREE: OnceLock<Tree> = OnceLock::new();
    TREE.get_or_init(|| {
        use std::os::unix::fs::symlink;
        let base = std::env::temp_dir().join(format!("stemcell-fuzz-jail-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("root");
        // A sibling whose name starts with the root's: a string prefix test would pass it.
        let outside = base.join("rootx");
        for d in [root.join("efi/boot"), root.join("sub"), outside.join("dir")] {
            std::fs::create_dir_all(d).expect("make the tree");
        }
        std::fs::write(root.join("undionly.kpxe"), "inside").expect("write");
        std::fs::write(root.join("efi/boot/x.efi"), "inside").expect("write");
        std::fs::write(root.join("a..b"), "inside").expect("write");
        std::fs::write(outside.join("secret"), "SECRET").expect("write");
        std::fs::write(outside.join("dir/secret"), "SECRET").expect("write");
        let links: [(&str, PathBuf); 9] = [
            ("sub/in", PathBuf::from("../efi/boot/x.efi")),
            ("sub/up", PathBuf::from("..")),
            ("sub/self", PathBuf::from(".")),
            ("abs_out", outside.join("secret")),
            ("rel_out", PathBuf::from("../rootx/secret")),
            ("dir_out", PathBuf::from("../rootx/dir")),
            ("root_parent", PathBuf::from("..")),
            ("loop", PathBuf::from("loop")),
            ("dangling", PathBuf::from("missing/file")),
        ];
        for (name, target) in links {
            symlink(target, root.join(name)).expect("make a symlink");
        }
        Tree {
            root: std::fs::canonicalize(&root).expect("canonical root"),
            outside: std::fs::canonicalize(&outside).expect("canonical outside"),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let t = tree();
    let name = String::from_utf8_lossy(data);
    let sanitized = fuzzing::jail_sanitize(&name);
    if let Ok(rel) = &sanitized {
        assert!(!rel.as_os_str().is_empty(), "{name:?}: an empty path");
        assert!(
            rel.components().all(|c| matches!(c, Component::Normal(_))),
            "{name:?} sanitized to {rel:?}"
        );
    }
    let resolved = fuzzing::jail_resolve(&t.root, &name);
    if let Ok(p) = &resolved {
        assert!(
            sanitized.is_ok(),
            "{name:?}: resolved although sanitize refuses it"
        );
        assert!(p.starts_with(&t.root), "{name:?} escaped the root to {p:?}");
        assert!(!p.starts_with(&t.outside), "{name:?} reached {p:?}");
        assert_eq!(
            std::fs::canonicalize(p).ok().as_deref(),
            Some(p.as_path()),
            "{name:?}: not a canonical existing path"
        );
        if p.is_file() {
            let content = std::fs::read(p).expect("read a resolved file");
            assert_eq!(content, b"inside", "{name:?} read {p:?}");
        }
    }
    // The names that name the outside files through the links are always refused.
    for bad in [
        "abs_out",
        "rel_out",
        "dir_out/secret",
        "root_parent/rootx/secret",
    ] {
        if name.trim_start_matches(['/', '\\']) == bad {
            assert!(resolved.is_err(), "{name:?} resolved");
        }
    }
    let _ = Path::new(&*name);
});
