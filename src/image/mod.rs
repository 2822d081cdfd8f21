//! Building the stem cell: a Linux kernel and an initrd, reproducibly, without root.
//!
//! `stemcell image build --out DIR` writes `DIR/vmlinuz` and `DIR/initrd.img`.
//!
//! * **Kernel**: Debian's. `linux-image-amd64` (`linux-image-arm64` with `--arch arm64`)
//!   names the versioned package (`linux-image-6.1.0-N-amd64`), which is fetched with `apt-get download` into the cache
//!   folder and unpacked there with `dpkg-deb -x`. Nothing is installed and `/boot` is not
//!   touched. `--kernel-deb FILE` uses a package file instead; `--kernel-dir DIR` an unpacked
//!   tree (`DIR/boot/vmlinuz-VERSION` and `DIR/lib/modules/VERSION`, so `--kernel-dir /`
//!   takes an installed kernel; `--kernel-version` picks one when there are several).
//! * **Initrd**: a newc cpio archive written here (no root, no loop mounts, no `cpio`
//!   binary), zstd-compressed (`--compression gzip`: gzip). It holds busybox (Debian's
//!   busybox-static), the stem cell's init (`image/init`, compiled into this binary;
//!   `--init FILE` overrides it), the tools an install of a real OS needs (sfdisk and blkid
//!   from fdisk and util-linux, mke2fs and Debian's `mke2fs.conf` from e2fsprogs, mkfs.fat,
//!   zstd, GNU tar; see `TOOLS`), the boot loaders the `base` template puts on disks
//!   (extlinux and its `mbr.bin`, systemd-boot's `systemd-bootx64.efi`; on arm64
//!   `systemd-bootaa64.efi` only), the shared
//!   libraries the dynamically linked ones need — their `DT_NEEDED` entries resolved,
//!   transitively, within the unpacked library packages they depend on (libc6 included),
//!   never from the build host — and the kernel modules in [`DEFAULT_MODULES`], those of
//!   the driver sets (every Ethernet and storage driver by default, see [`drivers`];
//!   `--drivers` chooses others) and any `--module NAME`, together with every module they
//!   depend on, and the device firmware those modules ask for (`firmware=` in their
//!   `.modinfo`), taken from Debian's firmware packages ([`drivers::FIRMWARE_PACKAGES`],
//!   component `non-free-firmware`) into `lib/firmware`. Dependencies come from the
//!   `depends=` field the kernel build writes into each module's `.modinfo` section
//!   (Debian's package ships no `modules.dep`: depmod runs at install time).
//!   `modules.dep`, `modules.alias` and `modules.softdep` are written for just the included
//!   modules, in depmod's format, so busybox `modprobe` loads them by name and by modalias.
//! * **Inputs fetched** when not given: `linux-image-*-amd64`, [`TOOL_PACKAGES`] and the
//!   library packages they depend on, the firmware packages, as `.deb` files in `--cache`
//!   (default `$XDG_CACHE_HOME/stemcell`, else `~/.cache/stemcell`), reused when the
//!   candidate version is already there, and the newest cached file is used when apt has
//!   no package lists (offline). It needs `apt-get update` to have run once; it waits while
//!   another apt-get or dpkg runs. `--tools-dir DIR` (repeatable) takes busybox and the
//!   loaders from unpacked trees instead, e.g. `--tools-dir /` for the host's installed
//!   packages.
//!
//! **Reproducible**: the same inputs give byte-identical outputs. Entries are sorted by path;
//! every entry has uid and gid 0, a fixed mode, the mtime `SOURCE_DATE_EPOCH` (or 0) and an
//! inode number from its position; zstd runs single-threaded at a fixed level (gzip: mtime
//! 0, no file name and a fixed level). Nothing of the build host's files (mtimes, owners,
//! directory order, umask, the paths of the inputs) reaches the archive. The unit tests
//! below build twice from the same inputs laid out differently and compare bytes;
//! `tests/pxe_boot.rs` does it with the real inputs.
//!
//! **Architectures** (`--arch`, [`Arch`]): `amd64` (the default) or `arm64`. Everything
//! comes from that architecture's packages: `linux-image-arm64` (its `vmlinuz` is an
//! uncompressed arm64 `Image` with the EFI stub: GRUB, systemd-boot and QEMU's `-kernel`
//! boot it as it is), `busybox-static:arm64`, the tools and their libraries (in
//! `lib/aarch64-linux-gnu`, loader `/lib/ld-linux-aarch64.so.1`), systemd-boot's
//! `systemd-bootaa64.efi` (no extlinux: Debian builds it for x86 only, and arm64 machines
//! are UEFI). The firmware packages are `Architecture: all`, shared by both. A foreign
//! architecture needs `dpkg --add-architecture arm64` and `apt-get update` on the build
//! host (scripts/setup-debian.sh does it); nothing of it is installed. Every program,
//! library and module taken is checked to be an ELF file for that machine (`e_machine`),
//! and the kernel image too (an x86 bzImage is refused for arm64, an arm64 Image for
//! amd64): a wrong-architecture package in the cache or a `--tools-dir` tree is an error
//! naming the file. x86-only base modules (`crc32c_intel`, `vmxnet3`) are left out of
//! arm64 stem cells ([`default_modules`]); the driver sets are the same folders of the
//! arm64 kernel's tree (which has its own SoC NICs and SATA controllers besides the PCI
//! ones).
//!
//! No `build.sh` is needed: the downloads are plain `apt-get download` and `dpkg-deb -x`
//! calls made from here.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

mod drivers;
mod elf;

/// Kernel modules the stem cell always carries, whatever the driver sets (their
/// dependencies are added): what it needs on every machine. The hardware drivers come from
/// the driver sets ([`drivers::DRIVER_SETS`]: every Ethernet and storage driver by default).
/// Names as `modprobe` takes them (`-` and `_` are the same). Built-in ones (e.g.
/// `af_packet` in Debian's kernel) are fine and reported as such; unknown ones are an error.
pub(crate) const DEFAULT_MODULES: &[&str] = &[
    // virtual machines
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "virtio_scsi",
    "vmxnet3",
    // the disk layers and controllers nearly every machine has
    "ahci",
    "nvme",
    "sd_mod",
    // USB sticks and disks (usb_storage is also in the storage set; here so that a site's
    // own set still sees a stick: the disk rule must see it to leave it alone)
    "usb_storage",
    // software RAID 1 for the root (`disk: { raid1: true }`; mdadm is in TOOL_PACKAGES)
    "md_mod",
    "raid1",
    // file systems (vfat's default codepage 437 and iocharset ascii; iso8859-1 and utf8
    // for mount options), the checksums ext4 asks for by name
    "ext4",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_iso8859_1",
    "nls_utf8",
    "crc32c_generic",
    "crc32c_intel",
    // raw sockets for udhcpc
    "af_packet",
    // UEFI variables: an installed OS's boot entry (grub-install, efibootmgr)
    "efivarfs",
    // a keyboard on a real server's console, for the rescue shell
    "xhci_pci",
    "ehci_pci",
    "usbhid",
    "hid_generic",
];

/// Modules of [`DEFAULT_MODULES`] only x86 kernels have: left out of arm64 stem cells.
const X86_ONLY_MODULES: &[&str] = &["crc32c_intel", "vmxnet3"];

/// The base modules for `arch`: [`DEFAULT_MODULES`] less what its kernel cannot have.
pub(crate) fn default_modules(arch: Arch) -> Vec<String> {
    DEFAULT_MODULES
        .iter()
        .filter(|m| arch == Arch::Amd64 || !X86_ONLY_MODULES.contains(m))
        .map(|s| s.to_string())
        .collect()
}

/// The machine architecture a stem cell is built for (`--arch`): Debian's name for it.
/// Everything comes from that architecture's packages (`apt-get download PKG:ARCH`; for
/// a foreign one the host needs `dpkg --add-architecture ARCH` and `apt-get update`), and
/// every program, library and module is checked to be built for it (ELF `e_machine`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Arch {
    /// x86-64 (BIOS and UEFI machines).
    Amd64,
    /// 64-bit ARM (UEFI machines: DHCP arch 11).
    Arm64,
}

impl Arch {
    /// Debian's architecture name (`dpkg --print-architecture`).
    pub(crate) fn debian(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The multiarch triplet: where Debian keeps its libraries (`lib/TRIPLET`).
    fn triplet(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-linux-gnu",
            Arch::Arm64 => "aarch64-linux-gnu",
        }
    }

    /// The ELF `e_machine` of its programs and kernel modules.
    fn elf_machine(self) -> u16 {
        match self {
            Arch::Amd64 => elf::EM_X86_64,
            Arch::Arm64 => elf::EM_AARCH64,
        }
    }

    /// Where Debian's packages keep shared libraries, searched in order.
    fn library_dirs(self) -> Vec<String> {
        let t = self.triplet();
        let mut v = vec![format!("lib/{t}"), format!("usr/lib/{t}")];
        if self == Arch::Amd64 {
            v.push("lib64".into());
        }
        v.extend(["lib".into(), "usr/lib".into()]);
        v
    }

    /// Where the stem cell keeps them: a directory Debian's dynamic loader searches without
    /// an `ld.so.cache`.
    fn initrd_library_dir(self) -> String {
        format!("lib/{}", self.triplet())
    }

    /// The packages the tools come from: [`TOOL_PACKAGES`] less those Debian does not
    /// build for this architecture (extlinux is x86 only: arm64 machines are all UEFI).
    pub(crate) fn tool_packages(self) -> Vec<&'static str> {
        TOOL_PACKAGES
            .iter()
            .copied()
            .filter(|p| self == Arch::Amd64 || *p != "extlinux")
            .collect()
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.debian())
    }
}

/// The stem cell's init, compiled in (`--init FILE` replaces it).
pub(crate) const INIT: &str = include_str!("../../image/init");

/// Discovery's LLDP listener (`image/lldp`, a perl script without modules), installed as
/// `/usr/libexec/stemcell/lldp`; the init runs it when perl is there.
const LLDP: &str = include_str!("../../image/lldp");
/// The disk lister (`image/disks`), compiled in: at [`DISKS_PATH`] in the initrd, used by
/// the init's discovery facts and by install templates (`snippets/disk.sh.j2`).
pub(crate) const DISKS: &str = include_str!("../../image/disks");
pub(crate) const DISKS_PATH: &str = "usr/libexec/stemcell/disks";

/// Debian packages the tools come from when no `--tools-dir` is given. Their shared
/// libraries come from the library packages they depend on ([`library_packages`]), never
/// from the build host.
pub(crate) const TOOL_PACKAGES: &[&str] = &[
    "busybox-static",
    "extlinux",
    "systemd-boot-efi",
    "fdisk",
    "util-linux",
    "e2fsprogs",
    "dosfstools",
    "zstd",
    "tar",
    // /usr/bin/perl alone (no modules): image/lldp's packet socket for discovery's LLDP.
    "perl-base",
    "mdadm",
];

/// Dependencies that are libraries without the `lib` prefix.
const LIBRARY_PACKAGES_WITHOUT_LIB_PREFIX: &[&str] = &["zlib1g"];

/// A file taken from the tools trees (the first of `from` found) into `to` in the initrd.
struct Tool {
    from: &'static [&'static str],
    to: &'static str,
    mode: u32,
    required: bool,
    purpose: &'static str,
    /// Other names for it (symlinks beside it): `mkfs.ext4` for `mke2fs`.
    links: &'static [&'static str],
    /// Only in stem cells for this architecture (the UEFI loader has a name per
    /// architecture); `None`: in all.
    only: Option<Arch>,
}

// GNU and util-linux tools go to /usr/sbin and /usr/bin: the init's PATH looks there
// before busybox's /sbin and /bin links, and `busybox --install` leaves existing names.
const TOOLS: &[Tool] = &[
    Tool {
        from: &["bin/busybox"],
        to: "bin/busybox",
        mode: 0o755,
        required: true,
        purpose: "the stem cell's userland",
        links: &[],
        only: None,
    },
    Tool {
        from: &["usr/bin/extlinux"],
        to: "usr/bin/extlinux",
        mode: 0o755,
        required: false,
        purpose: "BIOS installs (extlinux)",
        links: &[],
        only: Some(Arch::Amd64),
    },
    Tool {
        from: &["usr/lib/EXTLINUX/mbr.bin"],
        to: "usr/lib/EXTLINUX/mbr.bin",
        mode: 0o644,
        required: false,
        purpose: "BIOS installs (MBR boot code)",
        links: &[],
        only: Some(Arch::Amd64),
    },
    Tool {
        from: &["usr/lib/systemd/boot/efi/systemd-bootx64.efi"],
        to: "usr/lib/systemd/boot/efi/systemd-bootx64.efi",
        mode: 0o644,
        required: false,
        purpose: "UEFI installs (systemd-boot)",
        links: &[],
        only: Some(Arch::Amd64),
    },
    Tool {
        from: &["usr/lib/systemd/boot/efi/systemd-bootaa64.efi"],
        to: "usr/lib/systemd/boot/efi/systemd-bootaa64.efi",
        mode: 0o644,
        required: false,
        purpose: "UEFI installs (systemd-boot, arm64)",
        links: &[],
        only: Some(Arch::Arm64),
    },
    Tool {
        from: &["sbin/sfdisk", "usr/sbin/sfdisk"],
        to: "usr/sbin/sfdisk",
        mode: 0o755,
        required: false,
        purpose: "GPT partitioning (sfdisk)",
        links: &[],
        only: None,
    },
    Tool {
        from: &["sbin/blkid", "usr/sbin/blkid"],
        to: "usr/sbin/blkid",
        mode: 0o755,
        required: false,
        purpose: "file system UUIDs (blkid)",
        links: &[],
        only: None,
    },
    Tool {
        from: &["sbin/mke2fs", "usr/sbin/mke2fs"],
        to: "usr/sbin/mke2fs",
        mode: 0o755,
        required: false,
        purpose: "ext4 file systems (mke2fs)",
        links: &["mkfs.ext4"],
        only: None,
    },
    Tool {
        // Debian's defaults (features GRUB can read), not the ones compiled into mke2fs.
        from: &["etc/mke2fs.conf"],
        to: "etc/mke2fs.conf",
        mode: 0o644,
        required: false,
        purpose: "Debian's mke2fs defaults",
        links: &[],
        only: None,
    },
    Tool {
        from: &["sbin/mkfs.fat", "usr/sbin/mkfs.fat"],
        to: "usr/sbin/mkfs.fat",
        mode: 0o755,
        required: false,
        purpose: "EFI system partitions (mkfs.fat)",
        links: &["mkfs.vfat"],
        only: None,
    },
    Tool {
        from: &["usr/bin/zstd", "bin/zstd"],
        to: "usr/bin/zstd",
        mode: 0o755,
        required: false,
        purpose: "OS image streams (zstd)",
        links: &[],
        only: None,
    },
    Tool {
        from: &["sbin/mdadm", "usr/sbin/mdadm"],
        to: "usr/sbin/mdadm",
        mode: 0o755,
        required: false,
        purpose: "software RAID 1 installs (mdadm)",
        links: &[],
        only: None,
    },
    Tool {
        from: &["bin/tar", "usr/bin/tar"],
        to: "usr/bin/tar",
        mode: 0o755,
        required: false,
        purpose: "OS image extraction with xattrs and numeric owners (GNU tar)",
        links: &[],
        only: None,
    },
    Tool {
        from: &["usr/bin/perl"],
        to: "usr/bin/perl",
        mode: 0o755,
        required: false,
        purpose: "LLDP neighbours in discovery (perl: a packet socket)",
        links: &[],
        only: None,
    },
];

/// Where the device firmware comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum FirmwareSource {
    /// Debian's firmware packages ([`drivers::FIRMWARE_PACKAGES`]) via apt-get.
    Apt,
    /// Unpacked trees with `lib/firmware` (or `usr/lib/firmware`); `/` is the host's.
    Dirs(Vec<PathBuf>),
    /// No device firmware at all.
    None,
}

/// How the initrd is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Compression {
    /// gzip -9.
    Gzip,
    /// zstd -18: about a quarter smaller than gzip and faster to unpack (the default).
    Zstd,
}

/// Where the kernel comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum KernelSource {
    /// Debian's current kernel: the package `linux-image-amd64` depends on, via apt-get.
    Apt,
    /// A kernel package file (`linux-image-*.deb`).
    Deb(PathBuf),
    /// An unpacked tree with `boot/vmlinuz-VERSION` and `lib/modules/VERSION`.
    Dir(PathBuf),
}

/// Everything a build needs; [`BuildOptions::new`] gives the defaults.
#[derive(Clone, Debug)]
pub(crate) struct BuildOptions {
    /// Folder that receives `vmlinuz` and `initrd.img` (created if missing).
    pub(crate) out: PathBuf,
    /// The machines' architecture: every package, program and module is for it.
    pub(crate) arch: Arch,
    pub(crate) kernel: KernelSource,
    /// Which kernel when the tree holds several.
    pub(crate) kernel_version: Option<String>,
    /// Unpacked trees to take busybox and the boot loaders from, searched in order; empty:
    /// fetch [`TOOL_PACKAGES`] with apt-get into `cache`.
    pub(crate) tools: Vec<PathBuf>,
    /// Downloaded packages and their unpacked trees.
    pub(crate) cache: PathBuf,
    /// The init script's text.
    pub(crate) init: String,
    /// Modules to include (with their dependencies).
    pub(crate) modules: Vec<String>,
    /// Driver sets or module-tree folders whose modules are included too
    /// ([`drivers::select`]).
    pub(crate) drivers: Vec<String>,
    pub(crate) firmware: FirmwareSource,
    pub(crate) compression: Compression,
    /// The mtime of every archive entry.
    pub(crate) source_date_epoch: u64,
}

impl BuildOptions {
    /// Defaults: Debian's kernel and tools for `arch` via apt-get, the default cache, the
    /// built-in init, [`default_modules`], and `SOURCE_DATE_EPOCH` from the environment
    /// (else 0).
    pub(crate) fn new(out: impl Into<PathBuf>, arch: Arch) -> Result<BuildOptions> {
        Ok(BuildOptions {
            out: out.into(),
            arch,
            kernel: KernelSource::Apt,
            kernel_version: None,
            tools: Vec::new(),
            cache: default_cache(),
            init: INIT.to_string(),
            modules: default_modules(arch),
            drivers: drivers::DEFAULT_DRIVER_SETS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            firmware: FirmwareSource::Apt,
            compression: Compression::Zstd,
            source_date_epoch: source_date_epoch_from_env()?,
        })
    }
}

/// `SOURCE_DATE_EPOCH` (seconds), or 0 when unset or empty.
pub(crate) fn source_date_epoch_from_env() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) if !s.trim().is_empty() => s
            .trim()
            .parse()
            .map_err(|_| anyhow!("SOURCE_DATE_EPOCH={s:?} is not a number of seconds since 1970")),
        _ => Ok(0),
    }
}

/// `$XDG_CACHE_HOME/stemcell`, else `$HOME/.cache/stemcell`, else `target/stemcell-cache`.
pub(crate) fn default_cache() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(x) = var("XDG_CACHE_HOME") {
        PathBuf::from(x).join("stemcell")
    } else if let Some(h) = var("HOME") {
        PathBuf::from(h).join(".cache/stemcell")
    } else {
        PathBuf::from("target/stemcell-cache")
    }
}

/// What a build produced.
#[derive(Clone, Debug)]
pub(crate) struct BuildReport {
    pub(crate) arch: Arch,
    pub(crate) kernel_version: String,
    pub(crate) vmlinuz: PathBuf,
    pub(crate) initrd: PathBuf,
    pub(crate) vmlinuz_bytes: u64,
    pub(crate) initrd_bytes: u64,
    /// The cpio archive before compression.
    pub(crate) initrd_unpacked_bytes: u64,
    /// Entries in the archive (files, directories, links, device nodes).
    pub(crate) entries: usize,
    pub(crate) compression: Compression,
    /// Modules included, dependencies too (sorted).
    pub(crate) modules: Vec<String>,
    pub(crate) modules_bytes: u64,
    /// Modules of the driver sets left out ([`drivers::MODULES_LEFT_OUT`]): path, reason.
    pub(crate) modules_left_out: Vec<drivers::LeftOut>,
    pub(crate) driver_sets: Vec<String>,
    /// Files in `lib/firmware` and their bytes.
    pub(crate) firmware_files: usize,
    pub(crate) firmware_bytes: u64,
    /// Firmware asked for and deliberately not carried: name, modules, reason.
    pub(crate) firmware_left_out: Vec<(String, Vec<String>, &'static str)>,
    /// Firmware asked for that no firmware tree has: name, modules.
    pub(crate) firmware_missing: Vec<(String, Vec<String>)>,
    /// Requested modules that are built into the kernel.
    pub(crate) builtin: Vec<String>,
    /// Package files used (names only).
    pub(crate) packages: Vec<String>,
    /// Things worth knowing (tools left out, offline fallbacks).
    pub(crate) notes: Vec<String>,
    pub(crate) source_date_epoch: u64,
}

fn mb(n: u64) -> String {
    format!("{:.1} MB", n as f64 / 1_000_000.0)
}

impl fmt::Display for BuildReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "stem cell: kernel {} ({})",
            self.kernel_version, self.arch
        )?;
        writeln!(
            f,
            "  {}  {} ({} bytes)",
            self.vmlinuz.display(),
            mb(self.vmlinuz_bytes),
            self.vmlinuz_bytes
        )?;
        writeln!(
            f,
            "  {}  {} ({} bytes, {}; {} unpacked, {} entries)",
            self.initrd.display(),
            mb(self.initrd_bytes),
            self.initrd_bytes,
            match self.compression {
                Compression::Gzip => "gzip",
                Compression::Zstd => "zstd",
            },
            mb(self.initrd_unpacked_bytes),
            self.entries
        )?;
        writeln!(
            f,
            "  driver sets: {}",
            if self.driver_sets.is_empty() {
                "none".to_string()
            } else {
                self.driver_sets.join(" ")
            }
        )?;
        writeln!(
            f,
            "  {} modules ({}): {}",
            self.modules.len(),
            mb(self.modules_bytes),
            self.modules.join(" ")
        )?;
        for (m, why) in &self.modules_left_out {
            writeln!(f, "  module left out: {m}: {why}")?;
        }
        writeln!(
            f,
            "  firmware: {} files ({}) in lib/firmware",
            self.firmware_files,
            mb(self.firmware_bytes)
        )?;
        for (name, mods, why) in &self.firmware_left_out {
            writeln!(
                f,
                "  firmware left out: {name} (for {}): {why}",
                mods.join(" ")
            )?;
        }
        for (name, mods) in &self.firmware_missing {
            writeln!(
                f,
                "  firmware missing: {name} (for {}): in none of the firmware packages",
                mods.join(" ")
            )?;
        }
        if !self.builtin.is_empty() {
            writeln!(f, "  built into the kernel: {}", self.builtin.join(" "))?;
        }
        if !self.packages.is_empty() {
            writeln!(f, "  packages: {}", self.packages.join(" "))?;
        }
        writeln!(f, "  SOURCE_DATE_EPOCH={}", self.source_date_epoch)?;
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        Ok(())
    }
}

/// Build the stem cell's kernel and initrd into `opts.out`.
pub(crate) fn build(opts: &BuildOptions) -> Result<BuildReport> {
    drivers::check_names(&opts.drivers)?;
    let mut notes = Vec::new();
    let mut packages = Vec::new();

    let arch = opts.arch;
    let kernel_root = match &opts.kernel {
        KernelSource::Apt => {
            let pkg = kernel_package(arch)?;
            let deb = fetch_deb(&pkg, arch, &opts.cache, &mut notes)?;
            packages.push(file_name(&deb));
            unpack(&deb, &opts.cache)?
        }
        KernelSource::Deb(deb) => {
            packages.push(file_name(deb));
            unpack(deb, &opts.cache)?
        }
        KernelSource::Dir(d) => d.clone(),
    };
    let kernel = find_kernel(&kernel_root, opts.kernel_version.as_deref())?;
    check_kernel_image(&kernel.vmlinuz, arch)?;

    let tool_roots = if opts.tools.is_empty() {
        let mut roots = Vec::new();
        let tools = arch.tool_packages();
        let libs = library_packages(&tools, arch)?;
        let all = tools.iter().map(|p| p.to_string()).chain(libs);
        for pkg in all {
            let deb = fetch_deb(&pkg, arch, &opts.cache, &mut notes)?;
            packages.push(file_name(&deb));
            roots.push(unpack(&deb, &opts.cache)?);
        }
        roots
    } else {
        opts.tools.clone()
    };

    let firmware_roots = match &opts.firmware {
        FirmwareSource::Apt => {
            let mut roots = Vec::new();
            for pkg in drivers::FIRMWARE_PACKAGES {
                let deb = fetch_deb(pkg, arch, &opts.cache, &mut notes).map_err(|e| {
                    anyhow!(
                        "cannot get the firmware package {pkg}: {e:#}\n\
                         Debian's device firmware is in its non-free-firmware component, which \
                         apt's sources must list: add non-free-firmware to the Components: line \
                         of /etc/apt/sources.list.d/debian.sources (or to the `deb` lines of \
                         /etc/apt/sources.list), run apt-get update and build again \
                         (scripts/setup-debian.sh does both); or build without device \
                         firmware with --no-firmware, or take it from a tree with --firmware-dir"
                    )
                })?;
                packages.push(file_name(&deb));
                roots.push(unpack(&deb, &opts.cache)?);
            }
            roots
        }
        FirmwareSource::Dirs(d) => d.clone(),
        FirmwareSource::None => Vec::new(),
    };

    let mut ar = Archive::default();
    base_layout(&mut ar)?;
    ar.file("init", opts.init.as_bytes().to_vec(), 0o755)?;
    ar.file("usr/libexec/stemcell/lldp", LLDP.as_bytes().to_vec(), 0o755)?;
    ar.file(DISKS_PATH, DISKS.as_bytes().to_vec(), 0o755)?;
    add_tools(&mut ar, &tool_roots, arch, &mut notes)?;
    let sel = add_modules(&mut ar, &kernel, arch, &opts.modules, &opts.drivers)?;
    let fw = if opts.firmware == FirmwareSource::None {
        notes.push("no device firmware (--no-firmware)".into());
        FirmwareAdded::default()
    } else {
        add_firmware(&mut ar, &sel, &firmware_roots)?
    };
    let release = format!(
        "arch={arch}\nkernel={}\nsource_date_epoch={}\npackages={}\n",
        kernel.version,
        opts.source_date_epoch,
        packages.join(" ")
    );
    ar.file("etc/stemcell-release", release.into_bytes(), 0o644)?;

    let cpio = ar.to_newc(opts.source_date_epoch)?;
    let gz = match opts.compression {
        Compression::Gzip => gzip(&cpio)?,
        Compression::Zstd => zstd_compress(&cpio)?,
    };
    let vmlinuz = fs::read(&kernel.vmlinuz)
        .with_context(|| format!("reading {}", kernel.vmlinuz.display()))?;

    fs::create_dir_all(&opts.out).with_context(|| format!("creating {}", opts.out.display()))?;
    let vmlinuz_path = opts.out.join("vmlinuz");
    let initrd_path = opts.out.join("initrd.img");
    write_atomic(&vmlinuz_path, &vmlinuz)?;
    write_atomic(&initrd_path, &gz)?;

    Ok(BuildReport {
        arch,
        kernel_version: kernel.version,
        vmlinuz: vmlinuz_path,
        initrd: initrd_path,
        vmlinuz_bytes: vmlinuz.len() as u64,
        initrd_bytes: gz.len() as u64,
        initrd_unpacked_bytes: cpio.len() as u64,
        entries: ar.entries.len(),
        compression: opts.compression,
        modules: sel.modules.keys().cloned().collect(),
        modules_bytes: sel.modules.values().map(|m| m.data.len() as u64).sum(),
        modules_left_out: sel.left_out,
        driver_sets: opts.drivers.clone(),
        firmware_files: fw.files.len(),
        firmware_bytes: fw.bytes,
        firmware_left_out: fw.left_out,
        firmware_missing: fw.missing,
        builtin: sel.builtin,
        packages,
        notes,
        source_date_epoch: opts.source_date_epoch,
    })
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_file_name(format!(".{}.tmp.{}", file_name(path), std::process::id()));
    fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// zstd at [`ZSTD_LEVEL`] in one frame with the content size, single-threaded: the same
/// bytes in give the same bytes out (the library's version is pinned by Cargo.lock).
fn zstd_compress(data: &[u8]) -> Result<Vec<u8>> {
    zstd::bulk::compress(data, ZSTD_LEVEL).context("zstd")
}

/// zstd's level for the initrd. Measured on the default stem cell (98 MB of cpio, zstd
/// 1.5): -18 makes 23.9 MB in 36 s, -19 23.8 MB in 77 s, -15 26.3 MB in 18 s, -9 26.6 MB in
/// 3 s; gzip -9 32.5 MB, xz -9e 21.4 MB (but the kernel unpacks xz much more slowly: 9.6 s
/// to init under TCG against zstd's 6 s).
const ZSTD_LEVEL: i32 = 18;

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(3) // Unix, whatever the build host
        .write(
            Vec::with_capacity(data.len() / 2),
            flate2::Compression::best(),
        );
    enc.write_all(data)?;
    Ok(enc.finish()?)
}

// ---------------------------------------------------------------------------------------
// The archive

#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDev(u32, u32),
}

#[derive(Clone, Debug)]
struct Entry {
    perm: u32,
    node: Node,
}

/// An initramfs being assembled: paths (no leading `/`) to entries, kept sorted.
#[derive(Default)]
struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    fn put(&mut self, path: &str, perm: u32, node: Node) -> Result<()> {
        let path = path.trim_matches('/');
        if path.is_empty()
            || path
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            bail!("bad path in the initrd: {path:?}");
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent, 0o755)?;
        }
        match self.entries.get(path) {
            Some(e) if e.node == Node::Dir && node == Node::Dir => Ok(()),
            Some(_) => bail!("{path} is in the initrd twice"),
            None => {
                self.entries.insert(path.to_string(), Entry { perm, node });
                Ok(())
            }
        }
    }

    fn dir(&mut self, path: &str, perm: u32) -> Result<()> {
        self.put(path, perm, Node::Dir)
    }

    fn file(&mut self, path: &str, data: Vec<u8>, perm: u32) -> Result<()> {
        self.put(path, perm, Node::File(data))
    }

    fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.put(path, 0o777, Node::Symlink(target.to_string()))
    }

    fn chardev(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> Result<()> {
        self.put(path, perm, Node::CharDev(major, minor))
    }

    /// The archive in the kernel's initramfs format (cpio "newc"), entries in path order
    /// (a directory always precedes what it holds), then the trailer.
    fn to_newc(&self, mtime: u64) -> Result<Vec<u8>> {
        let mtime = u32::try_from(mtime).map_err(|_| anyhow!("SOURCE_DATE_EPOCH too large"))?;
        let mut out = Vec::new();
        for (i, (path, e)) in self.entries.iter().enumerate() {
            let (kind, nlink, data, rdev): (u32, u32, &[u8], (u32, u32)) = match &e.node {
                Node::Dir => (0o040000, 2, &[], (0, 0)),
                Node::File(d) => (0o100000, 1, d, (0, 0)),
                Node::Symlink(t) => (0o120000, 1, t.as_bytes(), (0, 0)),
                Node::CharDev(ma, mi) => (0o020000, 1, &[], (*ma, *mi)),
            };
            let size = u32::try_from(data.len()).map_err(|_| anyhow!("{path}: too large"))?;
            let header = NewcHeader {
                ino: i as u32 + 1,
                mode: kind | (e.perm & 0o7777),
                nlink,
                mtime,
                size,
                rdev,
            };
            header.write(&mut out, path);
            out.extend_from_slice(data);
            pad4(&mut out);
        }
        NewcHeader {
            ino: 0,
            mode: 0,
            nlink: 1,
            mtime: 0,
            size: 0,
            rdev: (0, 0),
        }
        .write(&mut out, "TRAILER!!!");
        Ok(out)
    }
}

struct NewcHeader {
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    size: u32,
    rdev: (u32, u32),
}

impl NewcHeader {
    fn write(&self, out: &mut Vec<u8>, name: &str) {
        let fields = [
            self.ino,
            self.mode,
            0, // uid
            0, // gid
            self.nlink,
            self.mtime,
            self.size,
            0, // device of the file system the entry came from
            0,
            self.rdev.0,
            self.rdev.1,
            name.len() as u32 + 1,
            0, // check (only for the "crc" format)
        ];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        pad4(out);
    }
}

fn pad4(out: &mut Vec<u8>) {
    out.resize(out.len().next_multiple_of(4), 0);
}

fn base_layout(ar: &mut Archive) -> Result<()> {
    for d in [
        "bin", "dev", "etc", "lib", "mnt", "proc", "run", "sbin", "sys", "usr/bin", "usr/sbin",
        "var",
    ] {
        ar.dir(d, 0o755)?;
    }
    ar.dir("root", 0o700)?;
    ar.dir("tmp", 0o1777)?;
    // The kernel opens /dev/console for init before anything is mounted on /dev.
    ar.chardev("dev/console", 0o600, 5, 1)?;
    // init is `#!/bin/sh`; it installs busybox's other applets itself.
    ar.symlink("bin/sh", "busybox")?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Tools: busybox, the boot loaders and their libraries

fn add_tools(
    ar: &mut Archive,
    roots: &[PathBuf],
    arch: Arch,
    notes: &mut Vec<String>,
) -> Result<()> {
    for tool in TOOLS.iter().filter(|t| t.only.is_none_or(|a| a == arch)) {
        let Some(src) = tool
            .from
            .iter()
            .find_map(|rel| roots.iter().find_map(|r| resolve_in_tree(r, rel)))
        else {
            if tool.required {
                bail!(
                    "{} ({}) is in none of: {}",
                    tool.to,
                    tool.purpose,
                    roots
                        .iter()
                        .map(|r| r.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            notes.push(format!(
                "left out {} (not in the tools trees): no {}",
                tool.to, tool.purpose
            ));
            continue;
        };
        let data = fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
        if tool.to == "bin/busybox" && elf::is_dynamic_program(&data) {
            bail!(
                "{} is dynamically linked: the stem cell needs busybox-static's",
                src.display()
            );
        }
        check_machine(&src, &data, arch)?;
        if tool.mode & 0o111 != 0 && elf::is_dynamic_program(&data) {
            add_libraries(ar, roots, arch, tool.to, &data)?;
        }
        ar.file(tool.to, data, tool.mode)?;
        let name = tool.to.rsplit('/').next().unwrap_or(tool.to);
        let dir = tool.to.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        for link in tool.links {
            ar.symlink(&format!("{dir}/{link}"), name)?;
        }
    }
    Ok(())
}

/// An ELF file built for another machine than `arch` is an error naming both (the wrong
/// architecture's package in a cache or tools tree); anything that is not ELF passes.
fn check_machine(path: &Path, data: &[u8], arch: Arch) -> Result<()> {
    match elf::machine(data) {
        Some(m) if m != arch.elf_machine() => bail!(
            "{} is built for {}, not for {} (the stem cell's --arch): a package of the wrong architecture in the cache or a --tools-dir/--kernel-dir tree",
            path.display(),
            elf::machine_name(m),
            elf::machine_name(arch.elf_machine())
        ),
        _ => Ok(()),
    }
}

/// The kernel image must boot on `arch`: an x86 bzImage ("HdrS" at 0x202) or an arm64
/// Image ("ARM\x64" at 0x38), or gzip (Debian's arm64 vmlinuz is a gzipped Image).
fn check_kernel_image(path: &Path, arch: Arch) -> Result<()> {
    let mut head = [0u8; 0x206];
    let n = {
        use std::io::Read;
        let mut f = fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
        let mut n = 0;
        while n < head.len() {
            match f.read(&mut head[n..])? {
                0 => break,
                k => n += k,
            }
        }
        n
    };
    let head = &head[..n];
    let x86 = head.get(0x202..0x206) == Some(b"HdrS");
    let arm64 = head.get(0x38..0x3c) == Some(b"ARM\x64");
    let gzip = head.starts_with(&[0x1f, 0x8b]);
    let other = match arch {
        Arch::Amd64 if arm64 || gzip => Some("an arm64 kernel"),
        Arch::Arm64 if x86 => Some("an x86 kernel (bzImage)"),
        _ => None,
    };
    if let Some(what) = other {
        bail!(
            "{} is {what}, not one for {arch} (the stem cell's --arch)",
            path.display()
        );
    }
    Ok(())
}

/// `rel` inside `root`, following symlinks inside the tree (an absolute link target means
/// the tree's root, as it would once installed): the file it names, if any.
fn resolve_in_tree(root: &Path, rel: &str) -> Option<PathBuf> {
    let mut p = root.join(rel.trim_start_matches('/'));
    for _ in 0..16 {
        let meta = fs::symlink_metadata(&p).ok()?;
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&p).ok()?;
            p = if target.is_absolute() {
                root.join(target.strip_prefix("/").ok()?)
            } else {
                p.parent()?.join(target)
            };
        } else if meta.is_file() {
            return Some(p);
        } else {
            return None;
        }
    }
    None
}

/// The dynamic loader and every shared library `program` needs, transitively (DT_NEEDED),
/// taken from the unpacked packages in `roots` and put where the loader looks.
fn add_libraries(
    ar: &mut Archive,
    roots: &[PathBuf],
    arch: Arch,
    program: &str,
    data: &[u8],
) -> Result<()> {
    let find = |rels: &[String]| {
        rels.iter()
            .find_map(|rel| roots.iter().find_map(|r| resolve_in_tree(r, rel)))
    };
    if let Some(interp) = elf::interpreter(data) {
        let rel = interp.trim_start_matches('/').to_string();
        if !ar.entries.contains_key(&rel) {
            let src = find(std::slice::from_ref(&rel)).ok_or_else(|| {
                anyhow!("{program} asks for the loader {interp}, which no package has (libc6?)")
            })?;
            let bytes = fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
            check_machine(&src, &bytes, arch)?;
            ar.file(&rel, bytes, 0o755)?;
        }
    }
    let mut queue: Vec<(String, String)> = elf::needed(data)
        .ok_or_else(|| anyhow!("{program}: cannot read its dynamic section"))?
        .into_iter()
        .map(|n| (n, program.to_string()))
        .collect();
    while let Some((soname, by)) = queue.pop() {
        if soname.contains('/') {
            bail!("{by} needs the library {soname:?} by path; only plain sonames are resolved");
        }
        let dest = format!("{}/{soname}", arch.initrd_library_dir());
        if ar.entries.contains_key(&dest) {
            continue;
        }
        let candidates: Vec<String> = arch
            .library_dirs()
            .iter()
            .map(|d| format!("{d}/{soname}"))
            .collect();
        let src = find(&candidates).ok_or_else(|| {
            anyhow!(
                "{by} needs {soname}, which none of the unpacked packages has ({}): add its package to LIBRARY_PACKAGES_WITHOUT_LIB_PREFIX or pass it with --tools-dir",
                roots
                    .iter()
                    .map(|r| file_name(r))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        let bytes = fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
        check_machine(&src, &bytes, arch)?;
        let more = elf::needed(&bytes)
            .ok_or_else(|| anyhow!("{}: not a shared library", src.display()))?;
        queue.extend(more.into_iter().map(|n| (n, soname.clone())));
        ar.file(&dest, bytes, 0o755)?;
    }
    Ok(())
}

/// The library packages `packages` depend on (Depends and Pre-Depends, the first of each
/// set of alternatives), transitively: every package named `lib…` (and
/// [`LIBRARY_PACKAGES_WITHOUT_LIB_PREFIX`]). Programs' own dependencies (`dpkg`,
/// `readline-common`) are not followed: the stem cell needs their libraries, not them.
fn library_packages(packages: &[&str], arch: Arch) -> Result<Vec<String>> {
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut queue: Vec<String> = packages.iter().map(|p| p.to_string()).collect();
    let mut libs = Vec::new();
    while let Some(p) = queue.pop() {
        let (_, fields) = apt_candidate(&p, arch)?;
        for field in ["Pre-Depends", "Depends"] {
            let Some(deps) = fields.get(field) else {
                continue;
            };
            for dep in deps.split(',') {
                let first = dep.split('|').next().unwrap_or("");
                let Some(name) = first.split_whitespace().next() else {
                    continue;
                };
                let name = name.split(':').next().unwrap_or(name).to_string();
                let is_lib = name.starts_with("lib")
                    || LIBRARY_PACKAGES_WITHOUT_LIB_PREFIX.contains(&name.as_str());
                if is_lib && seen.insert(name.clone()) {
                    libs.push(name.clone());
                    queue.push(name);
                }
            }
        }
    }
    libs.sort();
    Ok(libs)
}

// ---------------------------------------------------------------------------------------
// Kernel modules

struct Kernel {
    version: String,
    vmlinuz: PathBuf,
    /// `lib/modules/VERSION`
    modules: PathBuf,
}

fn find_kernel(root: &Path, version: Option<&str>) -> Result<Kernel> {
    let moddirs = [root.join("lib/modules"), root.join("usr/lib/modules")];
    let mut found = BTreeMap::new();
    for dir in &moddirs {
        let Ok(rd) = fs::read_dir(dir) else { continue };
        for e in rd.flatten() {
            let v = e.file_name().to_string_lossy().into_owned();
            let vmlinuz = root.join("boot").join(format!("vmlinuz-{v}"));
            if vmlinuz.is_file() && e.path().is_dir() {
                found.entry(v).or_insert((vmlinuz, e.path()));
            }
        }
    }
    let pick = match version {
        Some(v) => found.remove_entry(v).ok_or_else(|| {
            anyhow!(
                "no kernel {v} in {} (found: {})",
                root.display(),
                found.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?,
        None if found.len() == 1 => found.pop_first().expect("one entry"),
        None if found.is_empty() => bail!(
            "no kernel in {}: expected boot/vmlinuz-VERSION and lib/modules/VERSION",
            root.display()
        ),
        None => bail!(
            "several kernels in {} ({}): choose one with --kernel-version",
            root.display(),
            found.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
    };
    let (version, (vmlinuz, modules)) = pick;
    Ok(Kernel {
        version,
        vmlinuz,
        modules,
    })
}

/// A module name as modprobe and the kernel know it (`crc32c-intel.ko` → `crc32c_intel`).
fn module_name(s: &str) -> String {
    let base = s.rsplit('/').next().unwrap_or(s);
    base.trim().trim_end_matches(".ko").replace('-', "_")
}

/// The fields of a module's `.modinfo` section, in order.
fn modinfo(elf: &[u8]) -> Option<Vec<(String, String)>> {
    let sec = elf::section(elf, ".modinfo")?;
    Some(
        sec.split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .filter_map(|s| {
                let s = String::from_utf8_lossy(s);
                s.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect(),
    )
}

struct Module {
    /// Path relative to `lib/modules/VERSION`.
    rel: String,
    depends: Vec<String>,
    aliases: Vec<String>,
    softdeps: Vec<String>,
    /// Files it may ask the firmware loader for (`firmware=`; globs possible).
    firmware: Vec<String>,
    data: Vec<u8>,
}

struct Selection {
    modules: BTreeMap<String, Module>,
    builtin: Vec<String>,
    /// Modules of the driver sets left out on purpose: path, reason.
    left_out: Vec<drivers::LeftOut>,
}

fn walk_modules(dir: &Path, rel: &str, out: &mut Vec<String>) -> Result<()> {
    let rd = fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for e in rd {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let r = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let ft = e.file_type()?;
        if ft.is_dir() {
            walk_modules(&e.path(), &r, out)?;
        } else if name.ends_with(".ko") {
            out.push(r);
        } else if [".ko.xz", ".ko.zst", ".ko.gz"]
            .iter()
            .any(|x| name.ends_with(x))
        {
            bail!(
                "{}: compressed kernel modules are not supported (Debian 12's are not compressed)",
                e.path().display()
            );
        }
    }
    Ok(())
}

fn add_modules(
    ar: &mut Archive,
    kernel: &Kernel,
    arch: Arch,
    requested: &[String],
    sets: &[String],
) -> Result<Selection> {
    let mut rels = Vec::new();
    walk_modules(&kernel.modules, "", &mut rels)?;
    rels.sort();
    let (from_sets, left_out) = drivers::select(sets, &rels)?;
    let mut index: BTreeMap<String, String> = BTreeMap::new();
    for r in rels {
        index.entry(module_name(&r)).or_insert(r);
    }
    let builtin_text =
        fs::read_to_string(kernel.modules.join("modules.builtin")).unwrap_or_default();
    let builtin: BTreeSet<String> = builtin_text.lines().map(module_name).collect();

    let mut sel = Selection {
        modules: BTreeMap::new(),
        builtin: Vec::new(),
        left_out,
    };
    let mut wanted: Vec<String> = requested
        .iter()
        .chain(&from_sets)
        .map(|m| module_name(m))
        .collect();
    wanted.sort();
    wanted.dedup();
    let mut queue: Vec<(String, Option<String>)> = wanted.into_iter().map(|m| (m, None)).collect();
    while let Some((name, needed_by)) = queue.pop() {
        if sel.modules.contains_key(&name) {
            continue;
        }
        let Some(rel) = index.get(&name) else {
            if builtin.contains(&name) {
                if needed_by.is_none() {
                    sel.builtin.push(name);
                }
                continue;
            }
            match needed_by {
                Some(by) => bail!(
                    "module {by} depends on {name}, which kernel {} does not have",
                    kernel.version
                ),
                None => bail!(
                    "module {name} is not in kernel {} (neither a module nor built in)",
                    kernel.version
                ),
            }
        };
        let path = kernel.modules.join(rel);
        let data = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        check_machine(&path, &data, arch)?;
        let info = modinfo(&data).ok_or_else(|| {
            anyhow!(
                "{}: no .modinfo section (not a kernel module?)",
                path.display()
            )
        })?;
        let field = |k: &str| -> Vec<String> {
            info.iter()
                .filter(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .collect()
        };
        let mut depends: Vec<String> = field("depends")
            .iter()
            .flat_map(|d| d.split(','))
            .filter(|d| !d.trim().is_empty())
            .map(module_name)
            .collect();
        depends.sort();
        depends.dedup();
        for d in &depends {
            queue.push((d.clone(), Some(name.clone())));
        }
        sel.modules.insert(
            name,
            Module {
                rel: rel.clone(),
                depends,
                aliases: field("alias"),
                softdeps: field("softdep"),
                firmware: field("firmware"),
                data,
            },
        );
    }
    sel.builtin.sort();

    // modules.dep: each module, then every module it needs, the last to load first (that is
    // how depmod writes it and how busybox's and kmod's modprobe read it).
    let mut dep = String::new();
    let mut by_rel: Vec<&String> = sel.modules.keys().collect();
    by_rel.sort_by_key(|n| &sel.modules[*n].rel);
    for name in by_rel {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        load_order(&sel.modules, name, &mut seen, &mut Vec::new(), &mut order)?;
        order.pop(); // the module itself comes last in load order
        let m = &sel.modules[name];
        dep.push_str(&m.rel);
        dep.push(':');
        for d in order.iter().rev() {
            dep.push(' ');
            dep.push_str(&sel.modules[d].rel);
        }
        dep.push('\n');
    }
    let mut alias = String::from("# Aliases extracted from modules themselves.\n");
    let mut softdep = String::from("# Soft dependencies extracted from modules themselves.\n");
    for (name, m) in &sel.modules {
        for a in &m.aliases {
            alias.push_str(&format!("alias {a} {name}\n"));
        }
        for s in &m.softdeps {
            softdep.push_str(&format!("softdep {name} {s}\n"));
        }
    }

    let base = format!("lib/modules/{}", kernel.version);
    for m in sel.modules.values() {
        ar.file(&format!("{base}/{}", m.rel), m.data.clone(), 0o644)?;
    }
    ar.file(&format!("{base}/modules.dep"), dep.into_bytes(), 0o644)?;
    ar.file(&format!("{base}/modules.alias"), alias.into_bytes(), 0o644)?;
    ar.file(
        &format!("{base}/modules.softdep"),
        softdep.into_bytes(),
        0o644,
    )?;
    ar.file(
        &format!("{base}/modules.builtin"),
        builtin_text.into_bytes(),
        0o644,
    )?;
    Ok(sel)
}

/// What [`add_firmware`] put into the archive and what it did not.
#[derive(Default)]
struct FirmwareAdded {
    files: BTreeMap<String, PathBuf>,
    bytes: u64,
    left_out: Vec<(String, Vec<String>, &'static str)>,
    missing: Vec<(String, Vec<String>)>,
}

/// The firmware files the selected modules ask for, from the unpacked firmware trees, into
/// `lib/firmware` (see [`drivers::plan_firmware`]).
fn add_firmware(ar: &mut Archive, sel: &Selection, roots: &[PathBuf]) -> Result<FirmwareAdded> {
    let mut wanted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, m) in &sel.modules {
        for f in &m.firmware {
            wanted
                .entry(f.trim().to_string())
                .or_default()
                .insert(name.clone());
        }
    }
    wanted.remove("");
    let available = drivers::firmware_files(roots)?;
    let plan = drivers::plan_firmware(&wanted, &available);
    let mut bytes = 0;
    for (name, src) in &plan.files {
        let data = fs::read(src).with_context(|| format!("reading {}", src.display()))?;
        bytes += data.len() as u64;
        ar.file(&format!("lib/firmware/{name}"), data, 0o644)?;
    }
    Ok(FirmwareAdded {
        files: plan.files,
        bytes,
        left_out: plan.left_out,
        missing: plan.missing,
    })
}

/// Depth-first: `name`'s dependencies, each before what needs it, then `name`.
fn load_order(
    mods: &BTreeMap<String, Module>,
    name: &str,
    seen: &mut BTreeSet<String>,
    path: &mut Vec<String>,
    out: &mut Vec<String>,
) -> Result<()> {
    if path.iter().any(|p| p == name) {
        bail!(
            "modules depend on each other in a cycle: {} -> {name}",
            path.join(" -> ")
        );
    }
    if !seen.insert(name.to_string()) {
        return Ok(());
    }
    path.push(name.to_string());
    if let Some(m) = mods.get(name) {
        for d in &m.depends {
            load_order(mods, d, seen, path, out)?;
        }
    }
    path.pop();
    // A built-in dependency has no entry and nothing to load.
    if mods.contains_key(name) {
        out.push(name.to_string());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Debian packages: apt-get download, dpkg-deb -x

/// The versioned kernel package `linux-image-ARCH` depends on.
fn kernel_package(arch: Arch) -> Result<String> {
    let meta = format!("linux-image-{arch}");
    let (_, fields) = apt_candidate(&meta, arch)?;
    let depends = fields
        .get("Depends")
        .ok_or_else(|| anyhow!("{meta} has no Depends field"))?;
    depends
        .split([',', '|'])
        .filter_map(|d| d.split_whitespace().next())
        .find(|d| d.starts_with("linux-image-"))
        .map(str::to_string)
        .ok_or_else(|| anyhow!("{meta} does not depend on a linux-image package: {depends}"))
}

/// `pkg` for `arch`: the name apt knows it by (`PKG:ARCH`, or plain `PKG` for an
/// `Architecture: all` package, which takes no qualifier) and the candidate's fields.
fn apt_candidate(pkg: &str, arch: Arch) -> Result<(String, BTreeMap<String, String>)> {
    let qualified = format!("{pkg}:{arch}");
    match apt_show(&qualified) {
        Ok(f) => Ok((qualified, f)),
        Err(e) => match apt_show(pkg) {
            Ok(f) if f.get("Architecture").map(String::as_str) == Some("all") => {
                Ok((pkg.to_string(), f))
            }
            _ if arch != Arch::Amd64 => Err(e.context(format!(
                "no {arch} package {pkg}: apt needs the architecture (dpkg --add-architecture {arch}; apt-get update; scripts/setup-debian.sh does both)"
            ))),
            _ => Err(e),
        },
    }
}

/// `apt-cache show --no-all-versions PKG`: the candidate's fields.
fn apt_show(pkg: &str) -> Result<BTreeMap<String, String>> {
    let out = Command::new("apt-cache")
        .args(["show", "--no-all-versions", pkg])
        .output()
        .context("running apt-cache (is this Debian?)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut fields = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if !k.starts_with(' ') {
                fields.insert(k.to_string(), v.trim().to_string());
            }
        }
    }
    if !out.status.success() || !fields.contains_key("Version") {
        bail!(
            "apt-cache knows no package {pkg} ({}); run apt-get update, or pass the files",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(fields)
}

fn cached_debs(pkg: &str, arch: Arch, cache: &Path) -> Vec<PathBuf> {
    let prefix = format!("{pkg}_");
    let ends = [format!("_{arch}.deb"), "_all.deb".to_string()];
    let mut v: Vec<PathBuf> = fs::read_dir(cache)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = file_name(p);
            n.starts_with(&prefix) && ends.iter().any(|e| n.ends_with(e.as_str()))
        })
        .collect();
    v.sort();
    v
}

/// The candidate version of `pkg` as a `.deb` in `cache`, downloaded if it is not there.
fn fetch_deb(pkg: &str, arch: Arch, cache: &Path, notes: &mut Vec<String>) -> Result<PathBuf> {
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let (name, fields) = match apt_candidate(pkg, arch) {
        Ok(f) => f,
        Err(e) => {
            // Offline (no package lists): the newest file already in the cache will do.
            if let Some(f) = cached_debs(pkg, arch, cache).pop() {
                notes.push(format!(
                    "apt-cache failed ({e:#}); using cached {}",
                    file_name(&f)
                ));
                return Ok(f);
            }
            return Err(e);
        }
    };
    let version = &fields["Version"];
    let deb_arch = fields
        .get("Architecture")
        .map(String::as_str)
        .unwrap_or(arch.debian());
    let path = cache.join(format!(
        "{pkg}_{}_{deb_arch}.deb",
        version.replace(':', "%3a")
    ));
    if path.is_file() {
        return Ok(path);
    }
    wait_for_apt()?;
    let out = Command::new("apt-get")
        .args(["download", "-q", &format!("{name}={version}")])
        .current_dir(cache)
        .output()
        .context("running apt-get download")?;
    if !out.status.success() || !path.is_file() {
        bail!(
            "apt-get download {name}={version} in {} failed: {}{}",
            cache.display(),
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(path)
}

/// Wait (up to 15 minutes) while the host's apt-get, apt or dpkg runs: never run apt
/// beside another.
fn wait_for_apt() -> Result<()> {
    let start = Instant::now();
    let mut told = false;
    loop {
        // The host's apt and dpkg hold these lock files open while they run; apt-get and
        // dpkg inside a chroot (mmdebstrap building an OS image) use their own and do not
        // make us wait. (fuser is psmisc's; without it we do not wait.)
        let busy = Command::new("fuser")
            .args([
                "-s",
                "/var/lib/dpkg/lock-frontend",
                "/var/lib/apt/lists/lock",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !busy {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(900) {
            bail!("another apt-get/dpkg has been running for 15 minutes; try again later");
        }
        if !told {
            eprintln!("stemcell: waiting for another apt-get or dpkg to finish");
            told = true;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// `dpkg-deb -x` into `cache/unpacked/NAME` (once; reused afterwards).
fn unpack(deb: &Path, cache: &Path) -> Result<PathBuf> {
    let name = file_name(deb);
    let stem = name.strip_suffix(".deb").unwrap_or(&name);
    let dir = cache.join("unpacked");
    let dest = dir.join(stem);
    let done = dir.join(format!("{stem}.done"));
    if done.is_file() && dest.is_dir() {
        return Ok(dest);
    }
    if !deb.is_file() {
        bail!("no package file {}", deb.display());
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".{stem}.{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let out = Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(&tmp)
        .output()
        .context("running dpkg-deb (Debian's dpkg)")?;
    if !out.status.success() {
        let _ = fs::remove_dir_all(&tmp);
        bail!(
            "dpkg-deb -x {}: {}",
            deb.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let _ = fs::remove_dir_all(&dest);
    if let Err(e) = fs::rename(&tmp, &dest) {
        let _ = fs::remove_dir_all(&tmp);
        if !dest.is_dir() {
            return Err(e).with_context(|| format!("renaming to {}", dest.display()));
        }
    }
    fs::write(&done, b"")?;
    Ok(dest)
}

// ---------------------------------------------------------------------------------------
// The command line: `stemcell image build ...`

/// `stemcell image ...`
#[derive(clap::Subcommand, Clone, Debug)]
pub(crate) enum ImageCommand {
    /// Build the stem cell's kernel and initrd (Debian's kernel and busybox, stemcell's init).
    Build(ImageArgs),
}

/// `stemcell image build` options.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct ImageArgs {
    /// Folder to write vmlinuz and initrd.img into.
    #[arg(long, value_name = "DIR")]
    pub(crate) out: PathBuf,
    /// The machines' architecture: Debian's kernel, tools and libraries for it (arm64 from
    /// another host needs `dpkg --add-architecture arm64` and `apt-get update`).
    #[arg(long, value_enum, default_value = "amd64")]
    pub(crate) arch: Arch,
    /// A kernel package file (linux-image-*.deb) instead of fetching Debian's current one.
    #[arg(long, value_name = "FILE", conflicts_with = "kernel_dir")]
    pub(crate) kernel_deb: Option<PathBuf>,
    /// An unpacked kernel: DIR/boot/vmlinuz-VERSION and DIR/lib/modules/VERSION (/ works).
    #[arg(long, value_name = "DIR")]
    pub(crate) kernel_dir: Option<PathBuf>,
    /// Which kernel version, when the tree holds several.
    #[arg(long, value_name = "VERSION")]
    pub(crate) kernel_version: Option<String>,
    /// Folder for downloaded and unpacked packages [default: $XDG_CACHE_HOME/stemcell or
    /// ~/.cache/stemcell].
    #[arg(long, value_name = "DIR")]
    pub(crate) cache: Option<PathBuf>,
    /// Take busybox and the boot loaders from this unpacked tree instead of fetching
    /// busybox-static, extlinux and systemd-boot-efi (repeatable; / uses installed ones).
    #[arg(long = "tools-dir", value_name = "DIR")]
    pub(crate) tools_dir: Vec<PathBuf>,
    /// An init script to use instead of the built-in image/init.
    #[arg(long, value_name = "FILE")]
    pub(crate) init: Option<PathBuf>,
    /// Add a kernel module (and what it depends on) to the stem cell (repeatable).
    #[arg(long = "module", value_name = "NAME")]
    pub(crate) modules: Vec<String>,
    /// Add the modules named in FILE: one per line or separated by spaces, `#` comments.
    #[arg(long = "modules-file", value_name = "FILE")]
    pub(crate) modules_file: Vec<PathBuf>,
    /// The hardware drivers to carry instead of the default `ethernet,storage`: driver
    /// sets (`ethernet`, `storage`), folders of the kernel's module tree
    /// (`drivers/net/ethernet/intel`), or `none` for only the base modules and --module
    /// (comma-separated or repeated).
    #[arg(long, value_name = "SET", value_delimiter = ',')]
    pub(crate) drivers: Vec<String>,
    /// Take device firmware from this tree's lib/firmware instead of Debian's firmware
    /// packages (repeatable; / takes the host's).
    #[arg(
        long = "firmware-dir",
        value_name = "DIR",
        conflicts_with = "no_firmware"
    )]
    pub(crate) firmware_dir: Vec<PathBuf>,
    /// Carry no device firmware (and fetch no firmware package).
    #[arg(long)]
    pub(crate) no_firmware: bool,
    /// How to compress the initrd.
    #[arg(long, value_enum, default_value = "zstd")]
    pub(crate) compression: Compression,
}

impl ImageArgs {
    /// The build these arguments ask for (`SOURCE_DATE_EPOCH` is read from the environment).
    pub(crate) fn options(&self) -> Result<BuildOptions> {
        let mut o = BuildOptions::new(&self.out, self.arch)?;
        if let Some(d) = &self.kernel_deb {
            o.kernel = KernelSource::Deb(d.clone());
        } else if let Some(d) = &self.kernel_dir {
            o.kernel = KernelSource::Dir(d.clone());
        }
        o.kernel_version = self.kernel_version.clone();
        if let Some(c) = &self.cache {
            o.cache = c.clone();
        }
        o.tools = self.tools_dir.clone();
        if let Some(f) = &self.init {
            o.init = fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        }
        o.modules.extend(self.modules.iter().cloned());
        for f in &self.modules_file {
            let text = fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            o.modules.extend(modules_in(&text));
        }
        if !self.drivers.is_empty() {
            o.drivers = self.drivers.clone();
        }
        if self.no_firmware {
            o.firmware = FirmwareSource::None;
        } else if !self.firmware_dir.is_empty() {
            o.firmware = FirmwareSource::Dirs(self.firmware_dir.clone());
        }
        o.compression = self.compression;
        Ok(o)
    }
}

/// Module names in a `--modules-file`: words, `#` to the end of a line a comment.
fn modules_in(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(str::split_whitespace)
        .map(str::to_string)
        .collect()
}

/// Run an `image` subcommand, printing what it built.
pub(crate) fn run(cmd: &ImageCommand) -> Result<()> {
    match cmd {
        ImageCommand::Build(args) => {
            let report = build(&args.options()?)?;
            print!("{report}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A minimal ELF64 file with a `.modinfo` section holding `fields`.
    fn fake_ko(fields: &[&str]) -> Vec<u8> {
        let mut modinfo = Vec::new();
        for f in fields {
            modinfo.extend_from_slice(f.as_bytes());
            modinfo.push(0);
        }
        let shstrtab = b"\0.modinfo\0.shstrtab\0".to_vec();
        let mut d = vec![0u8; 64];
        d[..4].copy_from_slice(b"\x7fELF");
        d[4] = 2;
        d[5] = 1;
        d[6] = 1;
        d[0x12..0x14].copy_from_slice(&elf::EM_X86_64.to_le_bytes());
        let modinfo_off = d.len();
        d.extend_from_slice(&modinfo);
        let shstr_off = d.len();
        d.extend_from_slice(&shstrtab);
        d.resize(d.len().next_multiple_of(8), 0);
        let shoff = d.len();
        let sh = |name: u32, off: usize, size: usize| {
            let mut h = vec![0u8; 64];
            h[0..4].copy_from_slice(&name.to_le_bytes());
            h[4..8].copy_from_slice(&1u32.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            h
        };
        d.extend_from_slice(&[0u8; 64]);
        d.extend_from_slice(&sh(1, modinfo_off, modinfo.len()));
        d.extend_from_slice(&sh(10, shstr_off, shstrtab.len()));
        d[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        d[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        d[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        d[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        d
    }

    /// (path, mode, mtime, rdev, data) of each entry of a newc archive, trailer excluded.
    type Parsed = Vec<(String, u32, u32, (u32, u32), Vec<u8>)>;

    fn parse_newc(mut d: &[u8]) -> Parsed {
        let mut out = Vec::new();
        let mut pos = 0usize;
        let total = d.len();
        loop {
            assert_eq!(&d[..6], b"070701", "bad magic at {pos}");
            let field = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&d[6 + i * 8..14 + i * 8]).unwrap(), 16)
                    .unwrap()
            };
            let (ino, mode, uid, gid, mtime, size) =
                (field(0), field(1), field(2), field(3), field(5), field(6));
            let rdev = (field(9), field(10));
            let namesize = field(11) as usize;
            let name = std::str::from_utf8(&d[110..110 + namesize - 1])
                .unwrap()
                .to_string();
            let mut at = 110 + namesize;
            at += (4 - (pos + at) % 4) % 4;
            let data = d[at..at + size as usize].to_vec();
            at += size as usize;
            at += (4 - (pos + at) % 4) % 4;
            if name == "TRAILER!!!" {
                assert_eq!(pos + at, total, "data after the trailer");
                return out;
            }
            assert_eq!((uid, gid), (0, 0));
            assert_eq!(ino as usize, out.len() + 1);
            out.push((name, mode, mtime, rdev, data));
            pos += at;
            d = &d[at..];
        }
    }

    /// A kernel tree and a tools tree, written in the given order of modules with the given
    /// file mtimes (which must not matter).
    fn fake_inputs(root: &Path, reverse: bool, mtime: i64) -> (PathBuf, PathBuf) {
        let kdir = root.join("kernel");
        let mods = kdir.join("lib/modules/9.9.9-test");
        let mut files: Vec<(&str, Vec<u8>)> = vec![
            (
                "kernel/drivers/net/virtio_net.ko",
                fake_ko(&[
                    "alias=virtio:d00000001v*",
                    "depends=net_failover,virtio_ring",
                    "name=virtio_net",
                ]),
            ),
            (
                "kernel/drivers/net/net_failover.ko",
                fake_ko(&["depends=failover", "name=net_failover"]),
            ),
            (
                "kernel/net/core/failover.ko",
                fake_ko(&["depends=", "name=failover"]),
            ),
            (
                "kernel/drivers/virtio/virtio_ring.ko",
                fake_ko(&["depends=", "name=virtio_ring"]),
            ),
            (
                "kernel/arch/x86/crypto/crc32c-intel.ko",
                fake_ko(&[
                    "alias=crypto-crc32c",
                    "alias=crc32c",
                    "depends=",
                    "name=crc32c_intel",
                ]),
            ),
            (
                "kernel/fs/ext4/ext4.ko",
                fake_ko(&["softdep=pre: crc32c", "depends=", "name=ext4"]),
            ),
            (
                "kernel/drivers/unused/unused.ko",
                fake_ko(&["depends=", "name=unused"]),
            ),
        ];
        if reverse {
            files.reverse();
        }
        for (rel, data) in files {
            let p = mods.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, data).unwrap();
        }
        fs::write(
            mods.join("modules.builtin"),
            "kernel/net/packet/af_packet.ko\n",
        )
        .unwrap();
        fs::create_dir_all(kdir.join("boot")).unwrap();
        fs::write(kdir.join("boot/vmlinuz-9.9.9-test"), b"not really a kernel").unwrap();
        let tdir = root.join("tools");
        fs::create_dir_all(tdir.join("bin")).unwrap();
        fs::write(tdir.join("bin/busybox"), b"not really busybox").unwrap();
        fs::create_dir_all(tdir.join("usr/lib/EXTLINUX")).unwrap();
        fs::write(tdir.join("usr/lib/EXTLINUX/mbr.bin"), [0xfa; 440]).unwrap();
        let t = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(mtime as u64);
        for p in [
            kdir.join("boot/vmlinuz-9.9.9-test"),
            tdir.join("bin/busybox"),
        ] {
            fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        (kdir, tdir)
    }

    fn options(root: &Path, kdir: PathBuf, tdir: PathBuf, epoch: u64) -> BuildOptions {
        BuildOptions {
            out: root.join("out"),
            arch: Arch::Amd64,
            kernel: KernelSource::Dir(kdir),
            kernel_version: None,
            tools: vec![tdir],
            cache: root.join("cache"),
            init: "#!/bin/sh\necho hello\n".into(),
            modules: vec![
                "virtio-net".into(),
                "ext4".into(),
                "af_packet".into(),
                "crc32c_intel".into(),
            ],
            drivers: Vec::new(),
            firmware: FirmwareSource::Dirs(Vec::new()),
            compression: Compression::Gzip,
            source_date_epoch: epoch,
        }
    }

    fn unpacked(report: &BuildReport) -> Parsed {
        let gz = fs::read(&report.initrd).unwrap();
        let mut cpio = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut cpio)
            .unwrap();
        assert_eq!(cpio.len() as u64, report.initrd_unpacked_bytes);
        parse_newc(&cpio)
    }

    #[test]
    fn two_builds_from_the_same_inputs_are_byte_identical() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let (ka, ta) = fake_inputs(a.path(), false, 1_000_000);
        let (kb, tb) = fake_inputs(b.path(), true, 2_000_000_000);
        let ra = build(&options(a.path(), ka, ta, 1_700_000_000)).unwrap();
        let rb = build(&options(b.path(), kb, tb, 1_700_000_000)).unwrap();
        for f in ["vmlinuz", "initrd.img"] {
            let x = fs::read(a.path().join("out").join(f)).unwrap();
            let y = fs::read(b.path().join("out").join(f)).unwrap();
            assert!(x == y, "{f} differs between two builds");
        }
        assert_eq!(ra.initrd_bytes, rb.initrd_bytes);
        // Building again over the same output gives the same bytes too.
        let first = fs::read(&ra.initrd).unwrap();
        let (ka, ta) = (a.path().join("kernel"), a.path().join("tools"));
        build(&options(a.path(), ka.clone(), ta.clone(), 1_700_000_000)).unwrap();
        assert_eq!(first, fs::read(&ra.initrd).unwrap());
        // SOURCE_DATE_EPOCH is what every entry carries, so a different one changes it.
        build(&options(a.path(), ka, ta, 1)).unwrap();
        assert_ne!(first, fs::read(&ra.initrd).unwrap());
    }

    #[test]
    fn the_archive_is_sorted_owned_by_root_and_dated_by_the_epoch() {
        let t = tempfile::tempdir().unwrap();
        let (k, tools) = fake_inputs(t.path(), false, 5);
        let r = build(&options(t.path(), k, tools, 1234)).unwrap();
        let entries = unpacked(&r);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert!(entries.iter().all(|e| e.2 == 1234));
        let get = |n: &str| {
            entries
                .iter()
                .find(|e| e.0 == n)
                .unwrap_or_else(|| panic!("no {n}"))
        };
        assert_eq!(get("init").1, 0o100755);
        assert_eq!(get("init").4, b"#!/bin/sh\necho hello\n");
        // Discovery's LLDP listener, whatever init is used.
        assert_eq!(get("usr/libexec/stemcell/lldp").1, 0o100755);
        assert_eq!(get("usr/libexec/stemcell/lldp").4, LLDP.as_bytes());
        // the disk lister beside it, where the init and install templates call it
        assert_eq!(get("usr/libexec/stemcell/disks").1, 0o100755);
        assert_eq!(get("usr/libexec/stemcell/disks").4, DISKS.as_bytes());
        assert_eq!(get("bin/busybox").1, 0o100755);
        assert_eq!(get("bin/sh").1, 0o120777);
        assert_eq!(get("bin/sh").4, b"busybox");
        assert_eq!(get("dev/console").1, 0o020600);
        assert_eq!(get("dev/console").3, (5, 1));
        assert_eq!(get("tmp").1, 0o041777);
        assert_eq!(get("usr/lib/EXTLINUX/mbr.bin").4.len(), 440);
        // Every directory comes before what it holds.
        for (i, e) in entries.iter().enumerate() {
            if let Some((parent, _)) = e.0.rsplit_once('/') {
                let p = names
                    .iter()
                    .position(|n| *n == parent)
                    .expect("parent entry");
                assert!(p < i, "{parent} after {}", e.0);
            }
        }
        assert_eq!(r.kernel_version, "9.9.9-test");
        assert_eq!(r.builtin, vec!["af_packet".to_string()]);
        assert!(r.notes.iter().any(|n| n.contains("usr/bin/extlinux")));
        assert_eq!(fs::read(&r.vmlinuz).unwrap(), b"not really a kernel");
    }

    #[test]
    fn modules_come_with_their_dependencies_and_a_trimmed_depmod_index() {
        let t = tempfile::tempdir().unwrap();
        let (k, tools) = fake_inputs(t.path(), false, 5);
        let r = build(&options(t.path(), k, tools, 0)).unwrap();
        assert_eq!(
            r.modules,
            [
                "crc32c_intel",
                "ext4",
                "failover",
                "net_failover",
                "virtio_net",
                "virtio_ring"
            ]
        );
        let entries = unpacked(&r);
        let text = |n: &str| {
            let e = entries
                .iter()
                .find(|e| e.0 == format!("lib/modules/9.9.9-test/{n}"))
                .unwrap_or_else(|| panic!("no {n}"));
            String::from_utf8(e.4.clone()).unwrap()
        };
        let dep = text("modules.dep");
        assert!(!dep.contains("unused"));
        // virtio_net needs net_failover (which needs failover) and virtio_ring: busybox
        // modprobe loads the list from its end, so failover must follow net_failover.
        let line = dep
            .lines()
            .find(|l| l.starts_with("kernel/drivers/net/virtio_net.ko:"))
            .unwrap();
        let deps: Vec<&str> = line.split_whitespace().skip(1).collect();
        assert_eq!(deps.len(), 3);
        let fo = deps
            .iter()
            .position(|d| *d == "kernel/net/core/failover.ko")
            .unwrap();
        let nfo = deps
            .iter()
            .position(|d| *d == "kernel/drivers/net/net_failover.ko")
            .unwrap();
        assert!(nfo < fo, "{line}");
        assert!(dep.contains("kernel/net/core/failover.ko:\n"));
        assert!(dep.contains("kernel/arch/x86/crypto/crc32c-intel.ko:\n"));
        let alias = text("modules.alias");
        assert!(alias.contains("alias virtio:d00000001v* virtio_net\n"));
        assert!(alias.contains("alias crypto-crc32c crc32c_intel\n"));
        assert!(text("modules.softdep").contains("softdep ext4 pre: crc32c\n"));
        assert!(text("modules.builtin").contains("af_packet.ko"));
        assert!(entries
            .iter()
            .any(|e| e.0 == "lib/modules/9.9.9-test/kernel/arch/x86/crypto/crc32c-intel.ko"));
    }

    #[test]
    fn driver_sets_bring_their_modules_and_the_firmware_they_ask_for() {
        let t = tempfile::tempdir().unwrap();
        let (k, tools) = fake_inputs(t.path(), false, 5);
        let mods = k.join("lib/modules/9.9.9-test/kernel/drivers/net/ethernet");
        fs::create_dir_all(mods.join("broadcom")).unwrap();
        fs::write(
            mods.join("broadcom/tg3.ko"),
            fake_ko(&[
                "firmware=tigon/tg3_tso5.bin",
                "firmware=tigon/tg3*.bin",
                "firmware=netronome/x.nffw",
                "firmware=nowhere/gone.bin",
                "alias=pci:v000014E4d00001644sv*sd*bc*sc*i*",
                "depends=",
                "name=tg3",
            ]),
        )
        .unwrap();
        fs::write(
            mods.join("some_cs.ko"),
            fake_ko(&["depends=", "name=some_cs"]),
        )
        .unwrap();
        let fw = t.path().join("fw/lib/firmware/tigon");
        fs::create_dir_all(&fw).unwrap();
        for f in ["tg3.bin", "tg3_tso5.bin", "unrelated.bin"] {
            fs::write(fw.join(f), f).unwrap();
        }
        let mut o = options(t.path(), k, tools, 0);
        o.drivers = vec!["ethernet".into()];
        o.firmware = FirmwareSource::Dirs(vec![t.path().join("fw")]);
        o.compression = Compression::Zstd;
        let r = build(&o).unwrap();
        assert!(r.modules.contains(&"tg3".to_string()));
        assert!(!r.modules.contains(&"some_cs".to_string()));
        assert_eq!(r.modules_left_out.len(), 1);
        assert_eq!(r.firmware_files, 2);
        assert_eq!(r.firmware_left_out[0].0, "netronome/x.nffw");
        assert_eq!(r.firmware_missing[0].0, "nowhere/gone.bin");
        let text = r.to_string();
        assert!(text.contains("firmware: 2 files"), "{text}");
        assert!(
            text.contains("firmware left out: netronome/x.nffw (for tg3): Netronome"),
            "{text}"
        );
        assert!(
            text.contains("firmware missing: nowhere/gone.bin (for tg3)"),
            "{text}"
        );
        assert!(text.contains("zstd;"), "{text}");
        let cpio = zstd::decode_all(&fs::read(&r.initrd).unwrap()[..]).unwrap();
        assert_eq!(cpio.len() as u64, r.initrd_unpacked_bytes);
        let entries = parse_newc(&cpio);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert!(names.contains(&"lib/firmware/tigon/tg3.bin"));
        assert!(names.contains(&"lib/firmware/tigon/tg3_tso5.bin"));
        assert!(!names.contains(&"lib/firmware/tigon/unrelated.bin"));
        assert!(
            names.contains(&"lib/modules/9.9.9-test/kernel/drivers/net/ethernet/broadcom/tg3.ko")
        );
        // The same inputs give the same zstd bytes.
        let first = fs::read(&r.initrd).unwrap();
        build(&o).unwrap();
        assert_eq!(first, fs::read(&r.initrd).unwrap());
        // --drivers none: only the listed modules.
        o.drivers = vec!["none".into()];
        let r = build(&o).unwrap();
        assert!(!r.modules.contains(&"tg3".to_string()));
        assert_eq!(r.firmware_files, 0);
    }

    #[test]
    fn modules_files_are_words_with_comments() {
        assert_eq!(
            modules_in("# site drivers\nixgbe  i40e # Intel\n\n  megaraid_sas\n"),
            ["ixgbe", "i40e", "megaraid_sas"]
        );
    }

    #[test]
    fn unknown_modules_and_missing_busybox_are_errors() {
        let t = tempfile::tempdir().unwrap();
        let (k, tools) = fake_inputs(t.path(), false, 5);
        let mut o = options(t.path(), k.clone(), tools, 0);
        o.modules.push("no_such_driver".into());
        let e = build(&o).unwrap_err().to_string();
        assert!(
            e.contains("module no_such_driver is not in kernel 9.9.9-test"),
            "{e}"
        );
        let empty = t.path().join("empty");
        fs::create_dir_all(&empty).unwrap();
        let o = options(t.path(), k, empty, 0);
        let e = build(&o).unwrap_err().to_string();
        assert!(e.contains("bin/busybox"), "{e}");
    }

    #[test]
    fn shared_libraries_come_from_the_packages_with_their_dependencies() {
        let t = tempfile::tempdir().unwrap();
        let (k, tools) = fake_inputs(t.path(), false, 5);
        let interp = Some("/lib64/ld-linux-x86-64.so.2");
        fs::create_dir_all(tools.join("usr/bin")).unwrap();
        fs::create_dir_all(tools.join("sbin")).unwrap();
        fs::write(
            tools.join("usr/bin/zstd"),
            elf::fake_program(interp, &["libzstd.so.1", "libc.so.6"]),
        )
        .unwrap();
        fs::write(
            tools.join("sbin/mke2fs"),
            elf::fake_program(interp, &["libext2fs.so.2"]),
        )
        .unwrap();
        // A library package tree as dpkg-deb -x leaves it: symlinks, absolute and relative.
        let libs = t.path().join("libs");
        let multi = libs.join("lib/x86_64-linux-gnu");
        fs::create_dir_all(&multi).unwrap();
        fs::create_dir_all(libs.join("lib64")).unwrap();
        fs::create_dir_all(libs.join("usr/lib/x86_64-linux-gnu")).unwrap();
        fs::write(multi.join("ld-linux-x86-64.so.2"), b"the loader").unwrap();
        std::os::unix::fs::symlink(
            "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            libs.join("lib64/ld-linux-x86-64.so.2"),
        )
        .unwrap();
        fs::write(multi.join("libc.so.6"), elf::fake_program(None, &[])).unwrap();
        fs::write(
            libs.join("usr/lib/x86_64-linux-gnu/libzstd.so.1.5.4"),
            elf::fake_program(None, &["libc.so.6"]),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            "libzstd.so.1.5.4",
            libs.join("usr/lib/x86_64-linux-gnu/libzstd.so.1"),
        )
        .unwrap();
        let mut o = options(t.path(), k, tools, 0);
        o.tools.push(libs.clone());
        // libext2fs is in none of the trees: the error names it and who needs it.
        let e = build(&o).unwrap_err().to_string();
        assert!(e.contains("usr/sbin/mke2fs needs libext2fs.so.2"), "{e}");
        fs::write(
            multi.join("libext2fs.so.2"),
            elf::fake_program(None, &["libcom_err.so.2"]),
        )
        .unwrap();
        let e = build(&o).unwrap_err().to_string();
        assert!(e.contains("libext2fs.so.2 needs libcom_err.so.2"), "{e}");
        fs::write(multi.join("libcom_err.so.2"), elf::fake_program(None, &[])).unwrap();
        let r = build(&o).unwrap();
        let entries = unpacked(&r);
        let get = |n: &str| {
            entries
                .iter()
                .find(|e| e.0 == n)
                .unwrap_or_else(|| panic!("no {n}"))
        };
        assert_eq!(get("lib64/ld-linux-x86-64.so.2").4, b"the loader");
        assert_eq!(get("lib64/ld-linux-x86-64.so.2").1, 0o100755);
        for l in [
            "libc.so.6",
            "libzstd.so.1",
            "libext2fs.so.2",
            "libcom_err.so.2",
        ] {
            assert_eq!(get(&format!("lib/x86_64-linux-gnu/{l}")).1, 0o100755, "{l}");
        }
        assert_eq!(get("usr/bin/zstd").1, 0o100755);
        assert_eq!(get("usr/sbin/mkfs.ext4").4, b"mke2fs");
        assert_eq!(get("usr/sbin/mkfs.ext4").1, 0o120777);
        // Only what is needed: nothing of the library trees beyond the closure.
        let libs_in: Vec<&str> = entries
            .iter()
            .map(|e| e.0.as_str())
            .filter(|n| n.starts_with("lib/x86_64-linux-gnu/"))
            .collect();
        assert_eq!(libs_in.len(), 4, "{libs_in:?}");
    }

    #[test]
    fn arm64_takes_aarch64_programs_and_refuses_x86_ones() {
        let t = tempfile::tempdir().unwrap();
        let (k, tools) = fake_inputs(t.path(), false, 5);
        // The kernel tree is x86's (its modules say so): an arm64 build refuses it.
        let mut o = options(t.path(), k.clone(), tools.clone(), 0);
        o.arch = Arch::Arm64;
        o.modules = vec!["ext4".into()];
        let e = build(&o).unwrap_err().to_string();
        assert!(
            e.contains("ext4.ko is built for x86-64, not for aarch64"),
            "{e}"
        );
        // An arm64 tree: modules, loader, libraries and the arm64 UEFI loader.
        let k64 = t.path().join("kernel64");
        let mods = k64.join("lib/modules/9.9.9-arm64/kernel/fs/ext4");
        fs::create_dir_all(&mods).unwrap();
        let mut ko = fake_ko(&["depends=", "name=ext4"]);
        ko[0x12..0x14].copy_from_slice(&elf::EM_AARCH64.to_le_bytes());
        fs::write(mods.join("ext4.ko"), ko).unwrap();
        fs::create_dir_all(k64.join("boot")).unwrap();
        let mut image = vec![0u8; 64];
        image[0x38..0x3c].copy_from_slice(b"ARM\x64");
        fs::write(k64.join("boot/vmlinuz-9.9.9-arm64"), &image).unwrap();
        let efi = tools.join("usr/lib/systemd/boot/efi");
        fs::create_dir_all(&efi).unwrap();
        fs::write(efi.join("systemd-bootaa64.efi"), b"MZ arm64").unwrap();
        fs::write(efi.join("systemd-bootx64.efi"), b"MZ x64").unwrap();
        fs::create_dir_all(tools.join("usr/bin")).unwrap();
        let interp = Some("/lib/ld-linux-aarch64.so.1");
        fs::write(
            tools.join("usr/bin/zstd"),
            elf::fake_program_for(elf::EM_AARCH64, interp, &["libc.so.6"]),
        )
        .unwrap();
        let multi = tools.join("lib/aarch64-linux-gnu");
        fs::create_dir_all(&multi).unwrap();
        fs::write(multi.join("ld-linux-aarch64.so.1"), b"the loader").unwrap();
        std::os::unix::fs::symlink(
            "aarch64-linux-gnu/ld-linux-aarch64.so.1",
            tools.join("lib/ld-linux-aarch64.so.1"),
        )
        .unwrap();
        // An x86 libc where the aarch64 one belongs: refused by name.
        fs::write(multi.join("libc.so.6"), elf::fake_program(None, &[])).unwrap();
        o.kernel = KernelSource::Dir(k64.clone());
        let e = build(&o).unwrap_err().to_string();
        assert!(
            e.contains("libc.so.6 is built for x86-64, not for aarch64"),
            "{e}"
        );
        fs::write(
            multi.join("libc.so.6"),
            elf::fake_program_for(elf::EM_AARCH64, None, &[]),
        )
        .unwrap();
        let r = build(&o).unwrap();
        assert_eq!(r.arch, Arch::Arm64);
        assert!(r
            .to_string()
            .starts_with("stem cell: kernel 9.9.9-arm64 (arm64)"));
        let entries = unpacked(&r);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        for n in [
            "lib/ld-linux-aarch64.so.1",
            "lib/aarch64-linux-gnu/libc.so.6",
            "usr/lib/systemd/boot/efi/systemd-bootaa64.efi",
            "lib/modules/9.9.9-arm64/kernel/fs/ext4/ext4.ko",
        ] {
            assert!(names.contains(&n), "no {n} in {names:?}");
        }
        // No x86 loaders in an arm64 stem cell (no BIOS on arm64).
        for n in [
            "usr/lib/systemd/boot/efi/systemd-bootx64.efi",
            "usr/lib/EXTLINUX/mbr.bin",
        ] {
            assert!(!names.contains(&n), "{n} in an arm64 stem cell");
        }
        let release = &entries
            .iter()
            .find(|e| e.0 == "etc/stemcell-release")
            .unwrap()
            .4;
        assert!(release.starts_with(b"arch=arm64\nkernel=9.9.9-arm64\n"));
        // An x86 kernel image is refused for arm64.
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        fs::write(k64.join("boot/vmlinuz-9.9.9-arm64"), &bz).unwrap();
        let e = build(&o).unwrap_err().to_string();
        assert!(
            e.contains("is an x86 kernel (bzImage), not one for arm64"),
            "{e}"
        );
    }

    #[test]
    fn base_modules_per_architecture() {
        let amd = default_modules(Arch::Amd64);
        let arm = default_modules(Arch::Arm64);
        assert_eq!(amd.len(), DEFAULT_MODULES.len());
        assert!(arm.contains(&"virtio_net".to_string()));
        assert!(!arm.contains(&"crc32c_intel".to_string()));
        assert!(!arm.contains(&"vmxnet3".to_string()));
        assert!(!Arch::Arm64.tool_packages().contains(&"extlinux"));
        assert!(Arch::Amd64.tool_packages().contains(&"extlinux"));
        assert_eq!(Arch::Arm64.initrd_library_dir(), "lib/aarch64-linux-gnu");
    }

    #[test]
    fn modinfo_and_names() {
        let ko = fake_ko(&["license=GPL", "depends=a,b-c", "name=x"]);
        let info = modinfo(&ko).unwrap();
        assert_eq!(info[1], ("depends".into(), "a,b-c".into()));
        assert!(modinfo(b"not an elf file").is_none());
        assert_eq!(
            module_name("kernel/fs/nls/nls_iso8859-1.ko"),
            "nls_iso8859_1"
        );
        assert_eq!(module_name("crc32c-intel"), "crc32c_intel");
        assert!(!elf::is_dynamic_program(&ko));
    }
}
