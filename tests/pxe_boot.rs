//! End to end through real firmware: QEMU machines (SeaBIOS, OVMF) netboot through the real
//! `stemcell` binary's DHCP, TFTP and HTTP inside network namespaces, install themselves
//! with the stem cell, reboot by themselves into the installed system, stay installed on
//! the next power-on, and reinstall once re-armed; a failing install template leaves its
//! machine failed and still. The scenarios and their checks live in `tests/netns/pxe.sh`;
//! each test here runs one scenario and shows the script's output when it fails.
//!
//! The stem cell (kernel and initrd) is built once per test run, before the first scenario,
//! with `stemcell image build` into `<target>/stemcell-image`; downloaded Debian packages
//! are kept in `<target>/stemcell-cache` (the first build fetches the kernel package).
//! The arm64 scenario's stem cell is built the same way with `--arch arm64` into
//! `<target>/stemcell-image-arm64` (about 3 minutes the first time, then reused).
//! QEMU runs with TCG on few cores, so at most `PXE_PARALLEL` (default 2) machines boot at
//! once, counted across every test binary running at the time (tests/run.sh runs this one
//! beside tests/debian.rs and tests/disk_rule.rs; `common::Slot`); the whole set takes about
//! 12 minutes on 2 cores when it runs alone.
//!
//! Skips only when the script says it cannot run here (exit 77: not root, or no QEMU,
//! OVMF, iPXE or dnsmasq); a skip is reported as one, and fails under `CI=true`
//! (`common::skip`).

mod common;

#[path = "common/browser.rs"]
mod browser;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::{
    build_stemcell_image, helper, skip, stemcell_image, stemcell_image_arm64, Slot,
    BIN as STEMCELL, SKIP_EXIT,
};

/// The BIOS machine is also watched on the inventory page in headless Chromium: its row
/// must move to installing and installed with no reload (examples/browser_watch.rs).
#[test]
fn pxe_bios_authoritative() {
    scenario_watched("bios", true);
}

/// The stem cell built from Debian's real packages is reproducible and small.
#[test]
fn stem_cell_image_is_reproducible_from_debian_packages() {
    if !preflight("bios", "the image test") {
        return;
    }
    let first =
        stemcell_image().unwrap_or_else(|e| panic!("the stem-cell image build failed:\n{e}"));
    let second = tempfile::tempdir().unwrap();
    if let Err(e) = build_stemcell_image(second.path()) {
        panic!("the second build failed:\n{e}");
    }
    for f in ["vmlinuz", "initrd.img"] {
        let a = std::fs::read(first.join(f)).unwrap();
        let b = std::fs::read(second.path().join(f)).unwrap();
        assert!(
            a == b,
            "{f} differs between two builds from the same packages"
        );
    }
    let initrd = std::fs::metadata(first.join("initrd.img")).unwrap().len();
    println!("initrd.img: {initrd} bytes");
    // Every Ethernet and storage driver with its firmware, zstd -18: about 24 MB (see
    // docs/hardware.md, "Drivers and firmware").
    assert!(
        initrd < 32 << 20,
        "the compressed initrd must stay under 32 MB: {initrd} bytes"
    );
}

#[test]
fn pxe_uefi_ipxe_rom_proxy_beside_dnsmasq() {
    scenario("uefi-ipxe");
}

#[test]
fn pxe_uefi_firmware_pxe_authoritative() {
    scenario("uefi-pxe");
}

/// OVMF's own UEFI HTTP Boot with no TFTP at all: option 60 "HTTPClient" and the loader's
/// URL from stemcell's DHCP, snponly.efi over HTTP, then the usual install (pxe.sh says
/// what it checks; docs/firmware.md, "UEFI HTTP Boot", what the firmware does).
#[test]
fn pxe_uefi_http_boot_without_tftp() {
    scenario("uefi-http");
}

/// OVMF with IPv4 off netboots over IPv6: DHCPv6 (address and tftp:// boot-file URL, option
/// 59) and TFTP over IPv6 from stemcell; iPXE and the stem cell then use IPv4 (see pxe.sh).
#[test]
fn pxe_uefi_ipv6_dhcpv6_and_tftp_over_ipv6() {
    scenario("uefi-ipv6");
}

#[test]
fn pxe_failing_install_does_not_loop() {
    scenario("failing");
}

/// Discovery (tests/netns/discover.sh): an unlisted machine with two NICs and two disks
/// reports every NIC (link, speed, the NIC it booted from, the switch and port from a real
/// lldpd), its disks and DMI; the page's snippet, pasted into the inventory, passes `check`.
#[test]
fn pxe_discovery_reports_nics_lldp_disks_and_a_snippet_check_accepts() {
    scenario("discover");
}

#[test]
fn pxe_debian_installer_fetches_its_preseed() {
    scenario("debian-installer");
}

/// Whether the script can run here; `false` after a skip (exit 77; a failure under CI).
fn preflight(name: &str, what: &str) -> bool {
    let pre = Command::new("bash")
        .arg(script())
        .arg(name)
        .env("PXE_PREFLIGHT", "1")
        .output()
        .expect("run tests/netns/pxe.sh");
    if pre.status.code() == Some(SKIP_EXIT) {
        skip(&format!(
            "{what}: {}",
            String::from_utf8_lossy(&pre.stdout)
                .trim()
                .trim_matches(|c: char| c == '!' || c.is_whitespace())
        ));
        return false;
    }
    assert!(
        pre.status.success(),
        "tests/netns/pxe.sh {name} (preflight) failed ({}):\n{}{}",
        pre.status,
        String::from_utf8_lossy(&pre.stdout),
        String::from_utf8_lossy(&pre.stderr)
    );
    true
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/netns/pxe.sh")
}

fn scenario(name: &str) {
    scenario_watched(name, false)
}

fn scenario_watched(name: &str, watched: bool) {
    if !preflight(name, &format!("the {name} PXE test")) {
        return;
    }
    // The arm64 machine boots the arm64 stem cell (`stemcell image build --arch arm64`).
    let image = if name == "arm64" {
        stemcell_image_arm64()
    } else {
        stemcell_image()
    };
    let image = match image {
        Ok(dir) => dir,
        Err(e) => panic!("the stem-cell image build failed:\n{e}"),
    };

    let _slot = Slot::take("PXE_PARALLEL");
    let started = Instant::now();
    let mut cmd = Command::new("bash");
    cmd.arg(script())
        .arg(name)
        .arg(STEMCELL)
        .env("STEMCELL_IMAGE", image);
    // Without a browser the boot still runs; the watch is a recorded skip (a failure in CI).
    if watched && browser::Browser::available() {
        let watcher = helper("browser_watch");
        cmd.env("WATCH_CMD", format!("'{}'", watcher.display()));
    } else if watched {
        skip("the page watch: chromium and chromedriver are missing (the boot itself ran)");
    }
    let out = cmd.output().expect("run tests/netns/pxe.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(SKIP_EXIT) {
        skip(&format!("the {name} PXE test: {}", stdout.trim()));
        return;
    }
    assert!(
        out.status.success(),
        "tests/netns/pxe.sh {name} failed ({}) after {:.0?}:\n{stdout}\n--- stderr ---\n{stderr}",
        out.status,
        started.elapsed()
    );
    // Shown with --nocapture; kept quiet otherwise.
    println!("{stdout}(took {:.0?})", started.elapsed());
}

/// ARM64: qemu-system-aarch64's virt machine with AAVMF netboots by DHCP arch 11 into
/// GRUB (Debian has no arm64 iPXE), then the arm64 stem cell, installs with the `base`
/// role (systemd-boot as BOOTAA64.EFI) and reboots by itself into the installed system
/// from its disk.
#[test]
fn pxe_arm64_aavmf_grub() {
    scenario("arm64");
}

/// Honest skips, proved on a real PXE test: with QEMU missing from PATH, the UEFI PXE test
/// (run as a child of this test binary) fails under `CI=true`, naming what is missing, and
/// without CI it passes only as a recorded skip. The child never boots anything: it stops
/// at the script's preflight.
#[test]
fn without_qemu_a_pxe_test_fails_in_ci_and_is_a_reported_skip_otherwise() {
    let tmp = tempfile::tempdir().unwrap();
    // PATH: links to every command there is, but no qemu-system-*.
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for dir in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let link = bin.join(&name);
            if name.to_string_lossy().starts_with("qemu-system") || link.exists() {
                continue;
            }
            std::os::unix::fs::symlink(e.path(), link).unwrap();
        }
    }
    let which = |tool: &str| {
        Command::new("/bin/sh")
            .args(["-c", &format!("command -v {tool}")])
            .env("PATH", &bin)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    assert!(
        which("bash") && which("ip"),
        "the filtered PATH lost bash or ip"
    );
    assert!(
        !which("qemu-system-x86_64"),
        "qemu is still on the filtered PATH"
    );

    let skips = tmp.path().join("skipped.txt");
    let test = "pxe_uefi_firmware_pxe_authoritative";
    let run = |ci: bool| {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", test, "--nocapture", "--test-threads", "1"])
            .env("PATH", &bin)
            .env("STEMCELL_SKIP_FILE", &skips)
            .env_remove("CI");
        if ci {
            cmd.env("CI", "true");
        }
        let out = cmd.output().expect("run this test binary");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    // What is missing: QEMU as root; as anyone else the script stops earlier, at root.
    let missing = if common::is_root() {
        "qemu-system-x86_64"
    } else {
        "not root"
    };

    let (passed, text) = run(true);
    assert!(!passed, "with CI=true and no QEMU, {test} passed:\n{text}");
    assert!(
        text.contains(missing) && text.contains("CI set"),
        "the failure must name {missing:?}:\n{text}"
    );
    assert!(
        !skips.exists(),
        "under CI nothing is recorded as skipped: {:?}",
        std::fs::read_to_string(&skips)
    );

    let (passed, text) = run(false);
    assert!(
        passed,
        "without CI, {test} is a skip, not a failure:\n{text}"
    );
    let recorded = std::fs::read_to_string(&skips).unwrap_or_default();
    assert!(
        recorded.starts_with(&format!("pxe_boot::{test}: ")) && recorded.contains(missing),
        "the skip must be recorded with the test's name and why: {recorded:?}"
    );
    assert_eq!(recorded.lines().count(), 1, "{recorded:?}");
}
