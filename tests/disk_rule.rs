//! The target disk by a stable rule, in a real stem cell under QEMU (tests/netns/disks.sh):
//! a machine with two virtio disks and a USB stick netboots through the real `stemcell`
//! binary in a network namespace; without a rule the install refuses and its failed event
//! lists all three disks; with `disk: { serial: … }` it picks that disk although the kernel
//! calls it vdb; with `disk: { raid1: true }` it takes both virtio disks and the stem cell
//! builds an md RAID 1 of them. The checks live in the script; this runs it and shows its
//! output when it fails. About 2 minutes on 2 cores (three stem-cell boots under TCG, 40 s
//! each), plus the stem-cell build (about 90 s with a warm package cache).
//!
//! Skips only when the script says it cannot run here (exit 77: not root, or no QEMU or
//! iPXE); a skip is reported as one, and fails under `CI=true` (`common::skip`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::{skip, stemcell_image, Slot, BIN as STEMCELL, SKIP_EXIT};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/netns/disks.sh")
}

#[test]
fn the_disk_rule_picks_by_serial_and_refuses_listing_every_disk() {
    let pre = Command::new("bash")
        .arg(script())
        .env("DISKS_PREFLIGHT", "1")
        .output()
        .expect("run tests/netns/disks.sh");
    if pre.status.code() == Some(SKIP_EXIT) {
        skip(&format!(
            "the disk-rule QEMU test: {}",
            String::from_utf8_lossy(&pre.stdout)
                .trim()
                .trim_matches(|c: char| c == '!' || c.is_whitespace())
        ));
        return;
    }
    assert!(
        pre.status.success(),
        "tests/netns/disks.sh (preflight) failed ({}):\n{}{}",
        pre.status,
        String::from_utf8_lossy(&pre.stdout),
        String::from_utf8_lossy(&pre.stderr)
    );
    let image =
        stemcell_image().unwrap_or_else(|e| panic!("the stem-cell image build failed:\n{e}"));
    let _slot = Slot::take("PXE_PARALLEL");
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(script())
        .arg(STEMCELL)
        .env("STEMCELL_IMAGE", image)
        .output()
        .expect("run tests/netns/disks.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(SKIP_EXIT) {
        skip(&format!("the disk-rule QEMU test: {}", stdout.trim()));
        return;
    }
    assert!(
        out.status.success(),
        "tests/netns/disks.sh failed ({}) after {:.0?}:\n{stdout}\n--- stderr ---\n{stderr}",
        out.status,
        started.elapsed()
    );
    println!("{stdout}(took {:.0?})", started.elapsed());
}
