//! `stemcell os build` with the real mmdebstrap and Debian's archive: two builds of the same
//! spec from the same package versions and `SOURCE_DATE_EPOCH` are byte-for-byte identical,
//! the manifest names every package, and an unchanged spec and package lists reuse the
//! archive. The spec is small (minbase plus one small package) so this takes about a
//! minute.
//!
//! Skips (loudly, never as a pass) only when mmdebstrap, root or the apt sources are truly
//! missing; under `CI=true` that is a failure naming what is missing.

mod common;

use std::path::Path;
use std::process::Command;

const STEMCELL: &str = common::BIN;

/// Skip (recorded and listed by tests/run.sh; a failure under CI) because `what` is missing.
fn missing(what: &str) -> bool {
    common::skip(what);
    true
}

fn build(spec: &Path, out: &Path) -> String {
    let o = Command::new(STEMCELL)
        .args(["os", "build", "--spec"])
        .arg(spec)
        .arg("--out")
        .arg(out)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .env("STEMCELL_LOG", "warn")
        .output()
        .expect("run stemcell");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "stemcell os build failed:\n{text}");
    text
}

fn current(out: &Path) -> serde_json::Value {
    let p = out.join("tiny/current.json");
    serde_json::from_slice(&std::fs::read(&p).expect("current.json")).expect("current.json is JSON")
}

#[test]
fn two_builds_from_the_same_packages_and_epoch_are_identical() {
    if Command::new("mmdebstrap")
        .arg("--version")
        .output()
        .is_err()
        && missing("no mmdebstrap (scripts/setup-debian.sh installs it)")
    {
        return;
    }
    if !common::is_root() && missing("not root (mmdebstrap's root mode)") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let spec = t.path().join("tiny.yaml");
    std::fs::write(
        &spec,
        "suite: bookworm\nvariant: minbase\npackages: [hello]\ntrim: [usr/share/man, usr/share/locale]\n",
    )
    .unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    let first = build(&spec, &a);
    assert!(first.contains("os tiny: built"), "{first}");
    build(&spec, &b);
    let (ca, cb) = (current(&a), current(&b));
    let name = ca["archive"].as_str().unwrap();
    let bytes_a = std::fs::read(a.join("tiny").join(name)).unwrap();
    let bytes_b = std::fs::read(b.join("tiny").join(cb["archive"].as_str().unwrap())).unwrap();
    assert!(
        bytes_a == bytes_b,
        "two builds differ: {} vs {}",
        ca["sha256"],
        cb["sha256"]
    );
    assert_eq!(ca["sha256"], cb["sha256"]);
    assert_eq!(ca["size"].as_u64().unwrap(), bytes_a.len() as u64);
    assert_eq!(name, format!("{}.tar.zst", ca["sha256"].as_str().unwrap()));
    assert_eq!(ca["built_at"], "2023-11-14T22:13:20Z");
    // The manifest lists every package with its version, hello included.
    let manifest =
        std::fs::read_to_string(a.join("tiny").join(ca["manifest"].as_str().unwrap())).unwrap();
    assert!(
        manifest.lines().any(|l| l.starts_with("hello\t")),
        "{manifest}"
    );
    assert!(manifest.lines().any(|l| l.starts_with("base-files\t")));
    assert_eq!(
        ca["packages"].as_u64().unwrap() as usize,
        manifest.lines().count()
    );
    // Unchanged spec and lists: reused, and said so.
    let again = build(&spec, &a);
    assert!(
        again.contains("unchanged, cached archive reused"),
        "{again}"
    );
    assert_eq!(current(&a), ca);
}
