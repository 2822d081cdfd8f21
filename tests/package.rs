//! The Debian package (scripts/build-deb.sh), installed on a clean Debian 12 and started:
//! a minimal Debian 12 with systemd (made by mmdebstrap, cached under <target>/pkgtest) is
//! booted with systemd-nspawn in a private network namespace; a unit in it runs
//! tests/package/pkgtest.sh, which installs the package with dpkg as an operator would on a
//! running system, checks what systemd and the server say, removes and purges it, and
//! powers the container off. The package must leave a running, enabled service that has
//! dropped root, and answer its API; purge must remove its state and config.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn report(out: &str, what: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("== {what}: ")))
        .unwrap_or_else(|| panic!("no '== {what}:' in the container's report:\n{out}"))
        .trim()
        .to_string()
}

#[test]
fn the_deb_installs_on_clean_debian_12_and_its_service_runs() {
    if !require("root (systemd-nspawn)", is_root())
        || !require("mmdebstrap", have_tool("mmdebstrap"))
        || !require(
            "systemd-nspawn (Debian's systemd-container)",
            have_tool("systemd-nspawn"),
        )
        || !require("dpkg-deb", have_tool("dpkg-deb"))
    {
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let build = Command::new("bash")
        .arg(repo.join("scripts/build-deb.sh"))
        .arg(BIN)
        .env("CARGO_TARGET_DIR", target_dir())
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "build-deb.sh failed:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let deb = PathBuf::from(String::from_utf8_lossy(&build.stdout).trim().to_string());
    assert!(deb.exists(), "{}", deb.display());
    // What dpkg says of it before it goes anywhere.
    let info = Command::new("dpkg-deb")
        .arg("-I")
        .arg(&deb)
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("Package: stemcell"), "{info}");
    let files = Command::new("dpkg-deb")
        .arg("-c")
        .arg(&deb)
        .output()
        .unwrap();
    let files = String::from_utf8_lossy(&files.stdout);
    for f in [
        "./usr/bin/stemcell",
        "./lib/systemd/system/stemcell.service",
        "./usr/lib/sysusers.d/stemcell.conf",
        "./etc/stemcell/stemcell.yaml",
        "./usr/share/stemcell/kickstarts/debian.sh.j2",
        "./usr/share/doc/stemcell/docs/first-role.md",
    ] {
        assert!(files.contains(f), "{f} not in the package:\n{files}");
    }

    let tar = debian_rootfs();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let x = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-xf")
        .arg(&tar)
        .status()
        .unwrap();
    assert!(x.success());
    std::fs::copy(&deb, root.join("root/stemcell.deb")).unwrap();
    std::fs::copy(
        repo.join("tests/package/pkgtest.sh"),
        root.join("usr/local/sbin/pkgtest"),
    )
    .unwrap();
    std::fs::copy(
        repo.join("tests/package/pkgtest.service"),
        root.join("etc/systemd/system/pkgtest.service"),
    )
    .unwrap();
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink("../pkgtest.service", wants.join("pkgtest.service")).unwrap();

    // Boot it: its own network namespace (--private-network: loopback only), not registered
    // with a machined the host may not run; it powers itself off after the report.
    let boot = Command::new("timeout")
        .args(["300", "systemd-nspawn", "-q", "-D"])
        .arg(&root)
        .args(["--private-network", "--register=no", "--keep-unit", "-b"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let out = std::fs::read_to_string(root.join("pkgtest.out")).unwrap_or_else(|_| {
        panic!(
            "the container wrote no report ({}):\n{}",
            boot.status,
            String::from_utf8_lossy(&boot.stdout)
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    assert_eq!(report(&out, "dpkg rc"), "0", "{out}");
    assert_eq!(report(&out, "enabled"), "enabled", "{out}");
    assert_eq!(report(&out, "active"), "active", "{out}");
    let status: serde_json::Value =
        serde_json::from_str(&report(&out, "status")).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"), "{out}");
    assert_eq!(
        status["inventory"]["error"],
        serde_json::Value::Null,
        "{out}"
    );
    assert_eq!(
        report(&out, "user"),
        "stemcell",
        "it must drop root:\n{out}"
    );
    assert_eq!(report(&out, "state dir"), "stemcell 700", "{out}");
    assert!(report(&out, "check").ends_with("ok (0 machines)"), "{out}");
    assert!(out.contains("stemcell ready addr=0.0.0.0:8080"), "{out}");
    assert_eq!(report(&out, "after remove"), "inactive state-kept", "{out}");
    assert_eq!(
        report(&out, "after purge"),
        "state-gone config-gone",
        "{out}"
    );
    assert!(out.contains("== end"), "{out}");
}
