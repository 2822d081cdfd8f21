//! The stem cell carries every Ethernet and storage driver with the firmware they ask for.
//!
//! Builds the stem cell as every QEMU test does (`common::stemcell_image`: Debian's kernel,
//! tools and firmware packages, fetched once into `<target>/stemcell-cache`), unpacks the
//! initrd with the real `zstd` and `cpio`, and runs the real `modinfo -F firmware` (kmod) on
//! every module in it: each file a module asks for must be in the initrd's `lib/firmware`
//! (a glob must match at least one file), or be one the build prints as deliberately left
//! out, with its reason. The drivers real servers need are asserted by name, and so are the
//! firmware files tg3 and ice need.
//!
//! Skips (failing under `CI=true`) only without zstd, cpio or modinfo.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{have_tool, require, stemcell_image_with_report};

/// The drivers the issue names: Broadcom, QLogic, Emulex, Solarflare, Chelsio, Realtek,
/// Intel NICs; Broadcom (LSI) RAID and SAS; NVMe; md RAID 1.
const REQUIRED: &[&str] = &[
    "bnx2x",
    "qede",
    "be2net",
    "sfc",
    "cxgb4",
    "r8169",
    "tg3",
    "ice",
    "megaraid_sas",
    "mpt3sas",
    "nvme",
    "raid1",
];

/// `*` and `?` as in the kernel's `firmware=` globs (and the build's own matcher, written
/// again here so the test does not trust it).
fn glob(p: &[u8], n: &[u8]) -> bool {
    match (p.first(), n.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&p[1..], n) || (!n.is_empty() && glob(p, &n[1..])),
        (Some(b'?'), Some(_)) => glob(&p[1..], &n[1..]),
        (Some(a), Some(b)) if a == b => glob(&p[1..], &n[1..]),
        _ => false,
    }
}

fn files_under(dir: &Path, rel: &str, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let r = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            files_under(&e.path(), &r, out);
        } else {
            out.push(r);
        }
    }
}

fn unpack(initrd: &Path, into: &Path) {
    let magic = std::fs::read(initrd).unwrap()[..4].to_vec();
    let decompress = if magic == [0x28, 0xb5, 0x2f, 0xfd] {
        "zstd"
    } else if magic[..2] == [0x1f, 0x8b] {
        "gzip"
    } else {
        panic!("{}: neither zstd nor gzip ({magic:02x?})", initrd.display());
    };
    let mut dec = Command::new(decompress)
        .args(["-dc"])
        .arg(initrd)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let st = Command::new("cpio")
        .args(["-id", "--quiet", "--no-absolute-filenames"])
        .current_dir(into)
        .stdin(dec.stdout.take().unwrap())
        .status()
        .unwrap();
    assert!(dec.wait().unwrap().success(), "{decompress} -dc failed");
    assert!(st.success(), "cpio -id failed");
}

#[test]
fn every_firmware_a_module_asks_for_is_in_the_initrd_or_left_out_on_purpose() {
    for tool in ["zstd", "cpio", "modinfo"] {
        if !require(tool, have_tool(tool)) {
            return;
        }
    }
    let (dir, report) =
        stemcell_image_with_report().unwrap_or_else(|e| panic!("the stem-cell build failed:\n{e}"));
    let root = tempfile::tempdir().unwrap();
    unpack(&dir.join("initrd.img"), root.path());

    let mut all = Vec::new();
    files_under(root.path(), "", &mut all);
    let modules: Vec<PathBuf> = all
        .iter()
        .filter(|f| f.starts_with("lib/modules/") && f.ends_with(".ko"))
        .map(|f| root.path().join(f))
        .collect();
    let firmware: BTreeSet<String> = all
        .iter()
        .filter_map(|f| f.strip_prefix("lib/firmware/"))
        .map(str::to_string)
        .collect();

    // What the build printed as left out on purpose: "  firmware left out: NAME (for M): WHY".
    let left_out: BTreeMap<String, String> = report
        .lines()
        .filter_map(|l| l.trim().strip_prefix("firmware left out: "))
        .map(|l| {
            let (name, rest) = l.split_once(" (for ").expect("NAME (for MODULES): REASON");
            let (_, why) = rest.split_once("): ").expect("a reason");
            (name.to_string(), why.to_string())
        })
        .collect();
    for (name, why) in &left_out {
        assert!(why.len() > 10, "{name} is left out without a reason");
    }

    // The real modinfo, module by module.
    let mut asked: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut names = BTreeSet::new();
    for ko in &modules {
        let out = Command::new("modinfo")
            .args(["-F", "firmware"])
            .arg(ko)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "modinfo {}: {}",
            ko.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let name = ko.file_stem().unwrap().to_string_lossy().replace('-', "_");
        for fw in String::from_utf8(out.stdout).unwrap().lines() {
            asked
                .entry(fw.trim().to_string())
                .or_default()
                .push(name.clone());
        }
        names.insert(name);
    }
    assert!(
        modules.len() > 250,
        "only {} modules: every Ethernet and storage driver is expected",
        modules.len()
    );

    let mut wrong = Vec::new();
    for (fw, by) in &asked {
        let present = if fw.contains(['*', '?']) {
            firmware.iter().any(|f| glob(fw.as_bytes(), f.as_bytes()))
        } else {
            firmware.contains(fw)
        };
        if !present && !left_out.contains_key(fw) {
            wrong.push(format!("{fw} (asked for by {})", by.join(" ")));
        }
        // Nothing is both carried and listed as left out.
        if present && !fw.contains(['*', '?']) {
            assert!(!left_out.contains_key(fw), "{fw} is carried and left out");
        }
    }
    assert!(
        wrong.is_empty(),
        "firmware the modules ask for, neither in the initrd nor left out on purpose:\n  {}\n\nthe build said:\n{report}",
        wrong.join("\n  ")
    );
    // Every left-out name is one a module asks for (the list names no stale files).
    for name in left_out.keys() {
        assert!(
            asked.contains_key(name),
            "{name} is listed but no module asks for it"
        );
    }
    // A file carried that no module asks for is weight for nothing.
    for f in &firmware {
        assert!(
            asked
                .keys()
                .any(|a| a == f || (a.contains(['*', '?']) && glob(a.as_bytes(), f.as_bytes()))),
            "lib/firmware/{f} is in the initrd but no module asks for it"
        );
    }

    for m in REQUIRED {
        assert!(names.contains(*m), "the stem cell has no {m} module");
    }
    // tg3's and ice's firmware (the examples), and what modinfo says they ask for.
    let tg3: Vec<&String> = firmware
        .iter()
        .filter(|f| glob(b"tigon/tg3*.bin", f.as_bytes()))
        .collect();
    assert!(tg3.len() >= 3, "tigon/tg3*.bin: {tg3:?}");
    for f in ["tigon/tg3.bin", "tigon/tg3_tso.bin", "tigon/tg3_tso5.bin"] {
        assert!(
            asked.get(f).is_some_and(|m| m.iter().any(|m| m == "tg3")),
            "{f}"
        );
    }
    assert!(firmware.contains("intel/ice/ddp/ice.pkg"));
    assert!(asked["intel/ice/ddp/ice.pkg"].contains(&"ice".to_string()));
    let pkg = std::fs::metadata(root.path().join("lib/firmware/intel/ice/ddp/ice.pkg")).unwrap();
    assert!(pkg.is_file() && pkg.len() > 100_000, "ice.pkg: {pkg:?}");
    assert!(firmware.iter().any(|f| f.starts_with("bnx2x/")));

    // busybox modprobe finds them by the hardware's modalias.
    let moddir = std::fs::read_dir(root.path().join("lib/modules"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let alias = std::fs::read_to_string(moddir.join("modules.alias")).unwrap();
    for m in ["bnx2x", "megaraid_sas", "r8169"] {
        assert!(
            alias
                .lines()
                .any(|l| l.starts_with("alias pci:") && l.ends_with(&format!(" {m}"))),
            "modules.alias has no PCI alias for {m}"
        );
    }
    println!(
        "{} modules, {} firmware files, {} left out on purpose",
        modules.len(),
        firmware.len(),
        left_out.len()
    );
}
