//! contrib/stemcell.service, checked by systemd's own tools: `systemd-analyze verify`
//! accepts it without a warning, and `systemd-analyze security` rates its exposure at most
//! 3.0 ("OK"). That the capabilities it leaves are enough to bind and drop root is proven by
//! tests/privilege.rs, which starts the server with exactly the unit's bounding set.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn unit() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/stemcell.service")
}

/// `systemd-analyze verify` on the unit, its ExecStart pointed at the binary built here
/// (verify refuses a command that does not exist, and this host has no /usr/bin/stemcell):
/// its warnings.
fn verify(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stemcell.service");
    std::fs::write(&file, text.replace("/usr/bin/stemcell", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&file)
        .output()
        .expect("run systemd-analyze");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn systemd_analyze_verifies_the_unit_without_a_warning() {
    if !require(
        "systemd-analyze (Debian's systemd)",
        have_tool("systemd-analyze"),
    ) {
        return;
    }
    let text = std::fs::read_to_string(unit()).unwrap();
    assert!(text.contains("ExecStart=/usr/bin/stemcell serve --config /etc/stemcell/stemcell.yaml"));
    let (ok, warnings) = verify(&text);
    assert!(ok && warnings.trim().is_empty(), "{warnings}");
    // The check can fail: a misspelt key is reported.
    let (_, warnings) = verify(&text.replace("ProtectHome=", "ProtectHom="));
    assert!(warnings.contains("Unknown key"), "{warnings}");
}

#[test]
fn systemd_analyze_rates_the_unit_ok() {
    if !require(
        "systemd-analyze (Debian's systemd)",
        have_tool("systemd-analyze"),
    ) {
        return;
    }
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit())
        .output()
        .expect("run systemd-analyze");
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("stemcell.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no overall exposure level in:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    eprintln!("systemd-analyze security: exposure {score}");
    assert!(score <= 3.0, "exposure {score} is above 3.0:\n{text}");
}
