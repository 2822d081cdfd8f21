//! Which hardware drivers the stem cell carries, and the device firmware they ask for.
//!
//! * **Driver sets** ([`DRIVER_SETS`]): `ethernet` is every module Debian's kernel ships
//!   under `drivers/net/ethernet`; `storage` is every SCSI/SAS/RAID/FC host adapter
//!   (`drivers/scsi`, LSI Fusion `drivers/message/fusion`), every SATA/PATA controller
//!   (`drivers/ata`), NVMe (`drivers/nvme/host`), virtio-blk, Micron's mtip32xx and USB
//!   disks. Both are the default (md RAID 1 is in the base list, whatever the sets).
//!   `--drivers` names others (a set, or a folder of the kernel's module tree such as
//!   `drivers/net/ethernet/intel`); `--drivers none` leaves the base list and `--module`.
//!   [`MODULES_LEFT_OUT`] takes out of the sets what makes no sense in an installer (with
//!   the reason); a module named with `--module` is always included.
//! * **Firmware**: each included module lists the files it may load (`firmware=` in its
//!   `.modinfo`, what `modinfo -F firmware` prints; a name may be a glob). They are taken
//!   from Debian's firmware packages ([`FIRMWARE_PACKAGES`], in the `non-free-firmware`
//!   component) into `lib/firmware`; [`FIRMWARE_LEFT_OUT`] names the ones deliberately not
//!   carried, with the reason. A file asked for that no package has and that the list does
//!   not name is reported as missing (the build goes on: the driver still loads, and many
//!   devices fall back to the firmware in their flash).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// A named set of modules: paths in the kernel's module tree (relative to
/// `lib/modules/VERSION`), a folder when it ends with `/`, else one module file.
pub(crate) struct DriverSet {
    pub(crate) name: &'static str,
    pub(crate) paths: &'static [&'static str],
    pub(crate) purpose: &'static str,
}

pub(crate) const DRIVER_SETS: &[DriverSet] = &[
    DriverSet {
        name: "ethernet",
        paths: &["kernel/drivers/net/ethernet/"],
        purpose: "every Ethernet NIC driver",
    },
    DriverSet {
        name: "storage",
        paths: &[
            "kernel/drivers/scsi/",
            "kernel/drivers/message/fusion/",
            "kernel/drivers/ata/",
            "kernel/drivers/nvme/host/",
            "kernel/drivers/block/virtio_blk.ko",
            "kernel/drivers/block/mtip32xx/",
            "kernel/drivers/usb/storage/usb-storage.ko",
            "kernel/drivers/usb/storage/uas.ko",
        ],
        purpose: "SCSI/SAS/RAID/FC host adapters, SATA/PATA, NVMe, virtio, USB disks",
    },
];

/// The sets built when `--drivers` is not given.
pub(crate) const DEFAULT_DRIVER_SETS: &[&str] = &["ethernet", "storage"];

/// Modules of the sets above the stem cell leaves out (globs over the path in the module
/// tree; `*` matches anything, `/` included), and why. `--module NAME` still adds one.
pub(crate) const MODULES_LEFT_OUT: &[(&str, &str)] = &[
    (
        "kernel/drivers/scsi/scsi_debug.ko",
        "a kernel test driver that makes up disks",
    ),
    (
        "kernel/drivers/scsi/pcmcia/*",
        "PC Card adapters (laptops; no server has the slot)",
    ),
    ("kernel/drivers/ata/pata_pcmcia.ko", "PC Card adapters"),
    ("kernel/drivers/net/ethernet/*_cs.ko", "PC Card NICs"),
    (
        "kernel/drivers/scsi/qla2xxx/tcm_qla2xxx.ko",
        "Fibre Channel target mode (serving disks, not using them)",
    ),
    (
        "kernel/drivers/nvme/host/nvme-rdma.ko",
        "NVMe over RDMA fabrics: pulls in the InfiniBand stack; installs go to local disks",
    ),
];

/// Debian's firmware packages the files come from (`non-free-firmware`, and
/// `firmware-linux-free` from `main`): together they have every file the Ethernet and
/// storage drivers ask for that Debian ships, except what [`FIRMWARE_LEFT_OUT`] names
/// (hence no `firmware-netronome`). Only the files the included modules ask for are taken.
pub(crate) const FIRMWARE_PACKAGES: &[&str] = &[
    "firmware-bnx2",
    "firmware-bnx2x",
    "firmware-cavium",
    "firmware-linux-free",
    "firmware-misc-nonfree",
    "firmware-myricom",
    "firmware-netxen",
    "firmware-qlogic",
    "firmware-realtek",
];

/// Firmware files (globs) the stem cell deliberately does not carry, and why. The build
/// prints them; `tests/stemcell_drivers.rs` accepts no other file missing.
pub(crate) const FIRMWARE_LEFT_OUT: &[(&str, &str)] = &[
    (
        "netronome/*.nffw",
        "Netronome Agilio SmartNIC application firmware, 3 MB per card model (26 MB in all); \
         a card with firmware in its flash runs that",
    ),
    (
        "acenic/*",
        "Alteon AceNIC (1999 gigabit cards): Debian ships no firmware for it",
    ),
    (
        "adaptec/starfire_*",
        "Adaptec Starfire (1999 NICs): Debian ships no firmware for it",
    ),
    (
        "aic94xx-seq.fw",
        "Adaptec AIC-94xx SAS sequencer: Debian ships no firmware for it",
    ),
    (
        "sun/cassini.bin",
        "Sun Cassini (2003 NICs): Debian ships no firmware for it",
    ),
    (
        "wd719x-*.bin",
        "Western Digital WD7193/7197/7296 SCSI (1998): Debian ships no firmware for it",
    ),
];

/// `*` (any run of characters, `/` included) and `?` (one character); everything else is
/// literal.
pub(crate) fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == n[ni])) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

pub(crate) fn is_glob(s: &str) -> bool {
    s.contains(['*', '?'])
}

/// Refuses a `--drivers` value that is no set, not `none` and no folder, before anything is
/// fetched (folders are checked against the kernel's tree by [`select`]).
pub(crate) fn check_names(sets: &[String]) -> Result<()> {
    for s in sets {
        let s = s.trim();
        if s != "none" && !s.contains('/') && !DRIVER_SETS.iter().any(|d| d.name == s) {
            return Err(unknown_set(s));
        }
    }
    Ok(())
}

fn unknown_set(s: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "--drivers {s:?}: not a driver set ({}; none: only the base modules) nor a folder of the module tree such as drivers/net/ethernet/intel",
        DRIVER_SETS
            .iter()
            .map(|d| format!("{}: {}", d.name, d.purpose))
            .collect::<Vec<_>>()
            .join("; ")
    )
}

/// A module path left out of the driver sets, and why.
pub(crate) type LeftOut = (String, &'static str);

/// The module paths (relative to `lib/modules/VERSION`, sorted) the driver sets `sets`
/// select from `all`, minus [`MODULES_LEFT_OUT`]. A set is a name from [`DRIVER_SETS`],
/// `none`, or a folder of the module tree (`drivers/net/ethernet/intel`, with or without
/// `kernel/`). Returns the selected paths and the left-out ones with their reasons.
pub(crate) fn select(sets: &[String], all: &[String]) -> Result<(Vec<String>, Vec<LeftOut>)> {
    let mut prefixes: Vec<String> = Vec::new();
    for s in sets {
        let s = s.trim();
        if s == "none" {
            continue;
        }
        if let Some(set) = DRIVER_SETS.iter().find(|d| d.name == s) {
            prefixes.extend(set.paths.iter().map(|p| p.to_string()));
            continue;
        }
        if s.contains('/') {
            let rel = s.trim_matches('/');
            let rel = if rel.starts_with("kernel/") {
                rel.to_string()
            } else {
                format!("kernel/{rel}")
            };
            let dir = format!("{rel}/");
            if !all.iter().any(|m| m.starts_with(&dir) || *m == rel) {
                bail!("--drivers {s}: the kernel has no module under {rel}");
            }
            if rel.ends_with(".ko") {
                prefixes.push(rel);
            } else {
                prefixes.push(dir);
            }
            continue;
        }
        return Err(unknown_set(s));
    }
    let mut picked = Vec::new();
    let mut left_out = Vec::new();
    for m in all {
        let in_set = prefixes.iter().any(|p| {
            if p.ends_with('/') {
                m.starts_with(p.as_str())
            } else {
                m == p
            }
        });
        if !in_set {
            continue;
        }
        match MODULES_LEFT_OUT.iter().find(|(g, _)| glob_match(g, m)) {
            Some((_, why)) => left_out.push((m.clone(), *why)),
            None => picked.push(m.clone()),
        }
    }
    picked.sort();
    picked.dedup();
    Ok((picked, left_out))
}

/// What the firmware step decided.
#[derive(Clone, Debug, Default)]
pub(crate) struct FirmwarePlan {
    /// `lib/firmware`-relative name -> the file it comes from.
    pub(crate) files: BTreeMap<String, PathBuf>,
    /// (name asked for, modules asking, reason) for [`FIRMWARE_LEFT_OUT`] matches.
    pub(crate) left_out: Vec<(String, Vec<String>, &'static str)>,
    /// (name asked for, modules asking): in no firmware tree and not listed.
    pub(crate) missing: Vec<(String, Vec<String>)>,
}

/// Every regular file (or symlink to one) under `lib/firmware` and `usr/lib/firmware` of
/// `roots`: the name relative to that folder -> the path, the first root winning.
pub(crate) fn firmware_files(roots: &[PathBuf]) -> Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    for root in roots {
        for base in ["lib/firmware", "usr/lib/firmware"] {
            let dir = root.join(base);
            if dir.is_dir() {
                walk(&dir, "", &mut out)?;
            }
        }
    }
    Ok(out)
}

fn walk(dir: &Path, rel: &str, out: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    let rd = fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for e in rd {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let r = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let path = e.path();
        // Follows symlinks (Debian's firmware packages link versioned names).
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if !e.file_type()?.is_symlink() {
                walk(&path, &r, out)?;
            }
        } else if meta.is_file() {
            out.entry(r).or_insert(path);
        }
    }
    Ok(())
}

/// For `wanted` (firmware name -> the modules asking for it), the files of `available`
/// (from [`firmware_files`]) to carry, the names left out on purpose and the missing ones.
pub(crate) fn plan_firmware(
    wanted: &BTreeMap<String, BTreeSet<String>>,
    available: &BTreeMap<String, PathBuf>,
) -> FirmwarePlan {
    let mut plan = FirmwarePlan::default();
    for (name, mods) in wanted {
        let mods: Vec<String> = mods.iter().cloned().collect();
        if let Some((_, why)) = FIRMWARE_LEFT_OUT.iter().find(|(g, _)| glob_match(g, name)) {
            plan.left_out.push((name.clone(), mods, why));
            continue;
        }
        let found: Vec<(&String, &PathBuf)> = if is_glob(name) {
            available
                .iter()
                .filter(|(n, _)| glob_match(name, n))
                .collect()
        } else {
            available.get_key_value(name).into_iter().collect()
        };
        if found.is_empty() {
            plan.missing.push((name.clone(), mods));
        }
        for (n, p) in found {
            plan.files.insert(n.clone(), p.clone());
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("tigon/tg3*.bin", "tigon/tg3_tso5.bin"));
        assert!(glob_match("tigon/tg3*.bin", "tigon/tg3.bin"));
        assert!(!glob_match("tigon/tg3*.bin", "tigon/tg357766.bi"));
        assert!(glob_match(
            "netronome/*.nffw",
            "netronome/nic_AMDA0081-0001_1x40.nffw"
        ));
        assert!(glob_match(
            "kernel/drivers/net/ethernet/*_cs.ko",
            "kernel/drivers/net/ethernet/3com/3c589_cs.ko"
        ));
        assert!(!glob_match(
            "kernel/drivers/net/ethernet/*_cs.ko",
            "kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko"
        ));
        assert!(glob_match("wd719x-?isc.bin", "wd719x-risc.bin"));
        assert!(glob_match("a*b*c", "aXXbYYbc"));
        assert!(!glob_match("a*b*c", "aXXbYYb"));
        assert!(glob_match("exact.bin", "exact.bin"));
        assert!(!glob_match("exact.bin", "exact.bin2"));
        assert!(glob_match("*", ""));
    }

    fn tree() -> Vec<String> {
        [
            "kernel/drivers/net/ethernet/intel/igb/igb.ko",
            "kernel/drivers/net/ethernet/broadcom/tg3.ko",
            "kernel/drivers/net/ethernet/3com/3c589_cs.ko",
            "kernel/drivers/net/wireless/intel/iwlwifi/iwlwifi.ko",
            "kernel/drivers/scsi/megaraid/megaraid_sas.ko",
            "kernel/drivers/scsi/scsi_debug.ko",
            "kernel/drivers/md/raid10.ko",
            "kernel/drivers/gpu/drm/drm.ko",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    #[test]
    fn sets_folders_and_left_out_modules() {
        let all = tree();
        let (m, out) = select(&["ethernet".into(), "storage".into()], &all).unwrap();
        assert_eq!(
            m,
            [
                "kernel/drivers/net/ethernet/broadcom/tg3.ko",
                "kernel/drivers/net/ethernet/intel/igb/igb.ko",
                "kernel/drivers/scsi/megaraid/megaraid_sas.ko",
            ]
        );
        let out: Vec<&str> = out.iter().map(|(m, _)| m.as_str()).collect();
        assert_eq!(
            out,
            [
                "kernel/drivers/net/ethernet/3com/3c589_cs.ko",
                "kernel/drivers/scsi/scsi_debug.ko"
            ]
        );
        let (m, _) = select(&["drivers/net/ethernet/intel".into()], &all).unwrap();
        assert_eq!(m, ["kernel/drivers/net/ethernet/intel/igb/igb.ko"]);
        let (m, _) = select(&["kernel/drivers/md/raid10.ko".into()], &all).unwrap();
        assert_eq!(m, ["kernel/drivers/md/raid10.ko"]);
        assert!(select(&["none".into()], &all).unwrap().0.is_empty());
        assert!(check_names(&["ethernet".into(), "none".into(), "drivers/x".into()]).is_ok());
        let e = check_names(&["wireless".into()]).unwrap_err().to_string();
        assert!(
            e.contains("not a driver set (ethernet: every Ethernet"),
            "{e}"
        );
        let e = select(&["wireless".into()], &all).unwrap_err().to_string();
        assert!(
            e.contains("not a driver set (ethernet: every Ethernet"),
            "{e}"
        );
        let e = select(&["drivers/net/ethernet/nosuch".into()], &all)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no module under kernel/drivers/net/ethernet/nosuch"),
            "{e}"
        );
    }

    #[test]
    fn firmware_by_name_glob_left_out_and_missing() {
        let t = tempfile::tempdir().unwrap();
        let fw = t.path().join("a/lib/firmware");
        fs::create_dir_all(fw.join("tigon")).unwrap();
        fs::create_dir_all(fw.join("intel/ice/ddp")).unwrap();
        for f in ["tigon/tg3.bin", "tigon/tg3_tso.bin", "tigon/other.bin"] {
            fs::write(fw.join(f), f).unwrap();
        }
        fs::write(fw.join("intel/ice/ddp/ice-1.3.30.0.pkg"), "ddp").unwrap();
        std::os::unix::fs::symlink("ice-1.3.30.0.pkg", fw.join("intel/ice/ddp/ice.pkg")).unwrap();
        // A dangling link is no file.
        std::os::unix::fs::symlink("nowhere", fw.join("dangling.bin")).unwrap();
        let avail = firmware_files(&[t.path().join("a")]).unwrap();
        assert!(avail.contains_key("intel/ice/ddp/ice.pkg"));
        assert!(!avail.contains_key("dangling.bin"));
        let mut wanted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (n, m) in [
            ("tigon/tg3*.bin", "tg3"),
            ("intel/ice/ddp/ice.pkg", "ice"),
            ("netronome/nic_x.nffw", "nfp"),
            ("nosuch/fw.bin", "foo"),
            ("nosuch/fw.bin", "bar"),
        ] {
            wanted.entry(n.into()).or_default().insert(m.into());
        }
        let plan = plan_firmware(&wanted, &avail);
        let files: Vec<&str> = plan.files.keys().map(String::as_str).collect();
        assert_eq!(
            files,
            [
                "intel/ice/ddp/ice.pkg",
                "tigon/tg3.bin",
                "tigon/tg3_tso.bin"
            ]
        );
        assert_eq!(
            fs::read_to_string(&plan.files["intel/ice/ddp/ice.pkg"]).unwrap(),
            "ddp"
        );
        assert_eq!(plan.left_out.len(), 1);
        assert_eq!(plan.left_out[0].0, "netronome/nic_x.nffw");
        assert_eq!(
            plan.missing,
            [(
                "nosuch/fw.bin".to_string(),
                vec!["bar".to_string(), "foo".to_string()]
            )]
        );
    }
}
