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
//! QEMU runs with TCG on few cores, so at most `PXE_PARALLEL` (default 2) machines boot at
//! once; the whole set takes about 6 minutes on 2 cores.
//!
//! Skips (loudly) only when the script says it cannot run here (exit 77): not root, or no
//! QEMU, OVMF, iPXE or dnsmasq.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Instant;

const STEMCELL: &str = env!("CARGO_BIN_EXE_stemcell");
/// The script's exit code for "cannot run here" (automake's SKIP).
const SKIP: i32 = 77;

#[path = "common/browser.rs"]
mod browser;
#[path = "common/watch.rs"]
mod watch;

/// The BIOS machine is also watched on the inventory page in headless Chromium: its row
/// must move to installing and installed with no reload (tests/common/watch.rs).
#[test]
fn pxe_bios_authoritative() {
    scenario_watched("bios", true);
}

/// Not a test on its own: pxe.sh runs it inside the lab's namespace as WATCH_CMD.
#[test]
#[ignore = "run by pxe_bios_authoritative inside the lab namespace"]
fn browser_watch() {
    watch::watch();
}

/// The stem cell built from Debian's real packages is reproducible and small.
#[test]
fn stem_cell_image_is_reproducible_from_debian_packages() {
    if !preflight("bios", "the image test") {
        return;
    }
    let first = image().unwrap_or_else(|e| panic!("the stem-cell image build failed:\n{e}"));
    let second = tempfile::tempdir().unwrap();
    if let Err(e) = build_image(second.path()) {
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
    assert!(
        initrd < 20 << 20,
        "the compressed initrd must stay under 20 MB: {initrd} bytes"
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

#[test]
fn pxe_failing_install_does_not_loop() {
    scenario("failing");
}

/// Whether the script can run here; `false` after a loud skip message (exit 77).
fn preflight(name: &str, what: &str) -> bool {
    let pre = Command::new("bash")
        .arg(script())
        .arg(name)
        .env("PXE_PREFLIGHT", "1")
        .output()
        .expect("run tests/netns/pxe.sh");
    if pre.status.code() == Some(SKIP) {
        eprintln!(
            "\n!!!!!!!! SKIPPING {what}: {} !!!!!!!!\n",
            String::from_utf8_lossy(&pre.stdout).trim()
        );
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
    let image = match image() {
        Ok(dir) => dir,
        Err(e) => panic!("the stem-cell image build failed:\n{e}"),
    };

    let _slot = Slot::take();
    let started = Instant::now();
    let mut cmd = Command::new("bash");
    cmd.arg(script())
        .arg(name)
        .arg(STEMCELL)
        .env("STEMCELL_IMAGE", image);
    if watched {
        let me = std::env::current_exe().expect("the test binary's path");
        cmd.env(
            "WATCH_CMD",
            format!(
                "{} --exact --ignored --nocapture browser_watch",
                me.display()
            ),
        );
    }
    let out = cmd.output().expect("run tests/netns/pxe.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(SKIP) {
        eprintln!(
            "\n!!!!!!!! SKIPPING the {name} PXE test: {} !!!!!!!!\n",
            stdout.trim()
        );
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

/// Builds the stem cell once for this test binary. A file lock (flock(1)) keeps two test
/// runs at once from writing the same folder.
fn image() -> Result<PathBuf, String> {
    static IMAGE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let out_dir = target_dir().join("stemcell-image");
            let started = Instant::now();
            let text = build_image(&out_dir)?;
            eprintln!(
                "stem cell built in {:.0?}: {}",
                started.elapsed(),
                text.lines().next().unwrap_or("")
            );
            Ok(out_dir)
        })
        .clone()
}

/// `<target>`, the folder cargo builds into.
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is <target>/tmp")
        .to_path_buf()
}

/// `stemcell image build --out OUT_DIR` with the shared package cache, under a file lock
/// (flock(1)) so two test runs never write it at once. Returns what the build printed.
fn build_image(out_dir: &Path) -> Result<String, String> {
    let target = target_dir();
    let cache = std::env::var_os("STEMCELL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| target.join("stemcell-cache"));
    let out = Command::new("flock")
        .arg(target.join("stemcell-image.lock"))
        .arg(STEMCELL)
        .args(["image", "build", "--out"])
        .arg(out_dir)
        .arg("--cache")
        .arg(&cache)
        .output()
        .map_err(|e| format!("cannot run flock {STEMCELL} image build: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(format!("{} ({}):\n{text}", out_dir.display(), out.status));
    }
    Ok(text)
}

/// One of `PXE_PARALLEL` (default 2) places for a QEMU machine: with TCG every machine
/// keeps a core busy, and firmware timeouts do not wait for a starved one.
struct Slot;

static BUSY: Mutex<usize> = Mutex::new(0);
static FREED: Condvar = Condvar::new();

impl Slot {
    fn take() -> Slot {
        let max = std::env::var("PXE_PARALLEL")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(2)
            .max(1);
        let mut busy = BUSY.lock().unwrap_or_else(|e| e.into_inner());
        while *busy >= max {
            busy = FREED.wait(busy).unwrap_or_else(|e| e.into_inner());
        }
        *busy += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        *BUSY.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        FREED.notify_one();
    }
}
