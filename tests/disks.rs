//! The stem cell's disk lister (`image/disks`, /usr/libexec/stemcell/disks in the initrd),
//! run by busybox sh against fake sysfs trees laid out as the kernel lays them out for
//! virtio-blk, SATA (libata, with the IDENTIFY data in VPD page 0x89), NVMe with native
//! multipath, virtio-scsi and a USB stick: every `disk.NAME.*` line, by-path and by-id names
//! as udev would make them, and what it must leave out (loop devices, partitions, an empty
//! card reader). Also `sh -n` and shellcheck on the script (the install snippet is run by
//! src/render.rs's tests).

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{have_tool, require};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// A fake sysfs in a temporary folder.
struct Sys {
    dir: tempfile::TempDir,
}

impl Sys {
    fn new() -> Sys {
        let s = Sys {
            dir: tempfile::tempdir().unwrap(),
        };
        fs::create_dir_all(s.p("block")).unwrap();
        fs::create_dir_all(s.p("devices")).unwrap();
        s
    }
    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    fn write(&self, rel: &str, data: impl AsRef<[u8]>) {
        let p = self.p(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }
    /// `rel` -> `target` (relative, as sysfs links are)
    fn link(&self, rel: &str, target: &str) {
        let p = self.p(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        symlink(target, p).unwrap();
    }
    /// A block device at devices/`at`/block/NAME with /sys/block/NAME pointing at it.
    fn block(&self, at: &str, name: &str, sectors: u64, removable: u8, rotational: u8) {
        let b = format!("devices/{at}/block/{name}");
        self.write(&format!("{b}/size"), format!("{sectors}\n"));
        self.write(&format!("{b}/removable"), format!("{removable}\n"));
        self.write(&format!("{b}/queue/rotational"), format!("{rotational}\n"));
        self.link(&format!("block/{name}"), &format!("../{b}"));
        // the partitions are under the disk, with a `partition` file; never listed
        self.write(&format!("{b}/{name}1/partition"), "1\n");
        self.write(&format!("{b}/{name}1/size"), "2048\n");
    }
}

/// A SCSI VPD page 0x80 (unit serial number): a 4-byte header, then the serial.
fn vpd80(serial: &str) -> Vec<u8> {
    let mut v = vec![0, 0x80, 0, serial.len() as u8];
    v.extend_from_slice(serial.as_bytes());
    v
}

/// An ATA string as IDENTIFY stores it: padded with spaces, the bytes of each word swapped.
fn ata_string(s: &str, len: usize) -> Vec<u8> {
    let mut b = format!("{s:<len$}").into_bytes();
    for pair in b.chunks_mut(2) {
        pair.swap(0, 1);
    }
    b
}

/// libata's VPD page 0x89: 60 bytes of header, then the 512 bytes of IDENTIFY DEVICE.
fn vpd89(model: &str, serial: &str) -> Vec<u8> {
    let mut v = vec![0u8; 572];
    v[1] = 0x89;
    v[60 + 20..60 + 40].copy_from_slice(&ata_string(serial, 20));
    v[60 + 54..60 + 94].copy_from_slice(&ata_string(model, 40));
    v
}

fn fake_server() -> Sys {
    let s = Sys::new();
    // virtio-blk in PCI slot 4 (vda), with a serial
    s.block("pci0000:00/0000:00:04.0/virtio1", "vda", 20_971_520, 0, 1);
    s.link(
        "devices/pci0000:00/0000:00:04.0/virtio1/block/vda/device",
        "../../../virtio1",
    );
    s.write(
        "devices/pci0000:00/0000:00:04.0/virtio1/block/vda/serial",
        "SMALL-1\n",
    );
    s.write("bus/virtio/drivers/virtio_blk/bind", "");
    s.link(
        "devices/pci0000:00/0000:00:04.0/virtio1/driver",
        "../../../../bus/virtio/drivers/virtio_blk",
    );
    // SATA behind AHCI at 00:1f.2, on the controller's port 1 (the kernel's ata3)
    let sata = "pci0000:00/0000:00:1f.2/ata3/host2/target2:0:0/2:0:0:0";
    s.block(sata, "sda", 976_773_168, 0, 0);
    s.link(
        &format!("devices/{sata}/block/sda/device"),
        "../../../2:0:0:0",
    );
    s.write(&format!("devices/{sata}/vendor"), "ATA     \n");
    s.write(&format!("devices/{sata}/model"), "Samsung SSD 860 \n");
    s.write(&format!("devices/{sata}/vpd_pg80"), vpd80("S3Z9NB0K123456"));
    s.write(
        &format!("devices/{sata}/vpd_pg89"),
        vpd89("Samsung SSD 860 EVO 500GB", "S3Z9NB0K123456"),
    );
    s.write(&format!("devices/{sata}/wwid"), "naa.5002538E40A1B2C3\n");
    s.write("class/ata_port/ata3/port_no", "1\n");
    // NVMe with native multipath: the namespace under nvme-subsystem, the controller on PCI
    let ctrl = "pci0000:00/0000:00:1d.0/0000:3b:00.0/nvme/nvme0";
    s.write(
        &format!("devices/{ctrl}/model"),
        "SAMSUNG MZVL2512HCJQ-00B00              \n",
    );
    s.write(&format!("devices/{ctrl}/serial"), "S64KNX0R123456      \n");
    let subsys = "devices/virtual/nvme-subsystem/nvme-subsys0";
    s.link(&format!("{subsys}/nvme0"), &format!("../../../{ctrl}"));
    // the namespace head sits right in the subsystem (no block/ folder between)
    s.write(&format!("{subsys}/nvme0n1/size"), "1000215216\n");
    s.write(&format!("{subsys}/nvme0n1/removable"), "0\n");
    s.write(&format!("{subsys}/nvme0n1/queue/rotational"), "0\n");
    s.link(
        "block/nvme0n1",
        "../devices/virtual/nvme-subsystem/nvme-subsys0/nvme0n1",
    );
    s.write(&format!("{subsys}/nvme0n1/nsid"), "1\n");
    s.write(&format!("{subsys}/nvme0n1/wwid"), "eui.002538b911b12345\n");
    s.link(&format!("{subsys}/nvme0n1/device"), "../../nvme-subsys0");
    // virtio-scsi at 00:07.0 (its SCSI host is the kernel's host1), target 2
    let vs = "pci0000:00/0000:00:07.0/virtio3/host1/target1:0:2/1:0:2:0";
    s.block(vs, "sdc", 41_943_040, 0, 1);
    s.link(
        &format!("devices/{vs}/block/sdc/device"),
        "../../../1:0:2:0",
    );
    s.write(&format!("devices/{vs}/vendor"), "QEMU    \n");
    s.write(&format!("devices/{vs}/model"), "QEMU HARDDISK   \n");
    s.write(&format!("devices/{vs}/vpd_pg80"), vpd80("drive-scsi0"));
    // a USB stick on the xHCI at 00:05.0, port 1 (host3)
    let usb = "pci0000:00/0000:00:05.0/usb2/2-1";
    s.write(&format!("devices/{usb}/idVendor"), "46f4\n");
    s.write(&format!("devices/{usb}/serial"), "1-0000:00:05.0-1\n");
    let us = format!("{usb}/2-1:1.0/host3/target3:0:0/3:0:0:0");
    s.block(&us, "sdb", 2_097_152, 1, 1);
    s.link(
        &format!("devices/{us}/block/sdb/device"),
        "../../../3:0:0:0",
    );
    s.write(&format!("devices/{us}/vendor"), "QEMU    \n");
    s.write(&format!("devices/{us}/model"), "QEMU HARDDISK   \n");
    // an empty card reader slot, a loop device and a RAID: not disks to list
    let cr = "pci0000:00/0000:00:14.0/usb1/1-3/1-3:1.0/host4/target4:0:0/4:0:0:0";
    s.block(cr, "sdd", 0, 1, 1);
    s.link(
        &format!("devices/{cr}/block/sdd/device"),
        "../../../4:0:0:0",
    );
    s.block("virtual/block", "loop0", 1000, 0, 1);
    s.block("virtual/block", "md127", 1000, 0, 0);
    s
}

fn run_lister(sys: &Path) -> String {
    let out = Command::new("busybox")
        .arg("sh")
        .arg(root().join("image/disks"))
        .env("SYSFS", sys)
        .output()
        .expect("run busybox sh image/disks");
    assert!(
        out.status.success(),
        "image/disks failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn lists_every_disk_with_udev_names_from_sysfs() {
    if !require("busybox (Debian's busybox)", have_tool("busybox")) {
        return;
    }
    let sys = fake_server();
    let out = run_lister(sys.dir.path());
    let want = "\
disk.nvme0n1.bytes=512110190592
disk.nvme0n1.model=SAMSUNG MZVL2512HCJQ-00B00
disk.nvme0n1.serial=S64KNX0R123456
disk.nvme0n1.wwn=eui.002538b911b12345
disk.nvme0n1.by_path=pci-0000:3b:00.0-nvme-1
disk.nvme0n1.by_id=nvme-SAMSUNG_MZVL2512HCJQ-00B00_S64KNX0R123456
disk.nvme0n1.removable=0
disk.nvme0n1.rotational=0
disk.nvme0n1.transport=nvme
disk.sda.bytes=500107862016
disk.sda.model=Samsung SSD 860 EVO 500GB
disk.sda.serial=S3Z9NB0K123456
disk.sda.wwn=0x5002538e40a1b2c3
disk.sda.by_path=pci-0000:00:1f.2-ata-1
disk.sda.by_id=ata-Samsung_SSD_860_EVO_500GB_S3Z9NB0K123456
disk.sda.removable=0
disk.sda.rotational=0
disk.sda.transport=ata
disk.sdb.bytes=1073741824
disk.sdb.model=QEMU HARDDISK
disk.sdb.serial=1-0000:00:05.0-1
disk.sdb.wwn=
disk.sdb.by_path=pci-0000:00:05.0-usb-0:1:1.0-scsi-0:0:0:0
disk.sdb.by_id=usb-QEMU_QEMU_HARDDISK_1-0000:00:05.0-1-0:0
disk.sdb.removable=1
disk.sdb.rotational=1
disk.sdb.transport=usb
disk.sdc.bytes=21474836480
disk.sdc.model=QEMU HARDDISK
disk.sdc.serial=drive-scsi0
disk.sdc.wwn=
disk.sdc.by_path=pci-0000:00:07.0-scsi-0:0:2:0
disk.sdc.by_id=scsi-SQEMU_QEMU_HARDDISK_drive-scsi0
disk.sdc.removable=0
disk.sdc.rotational=1
disk.sdc.transport=scsi
disk.vda.bytes=10737418240
disk.vda.model=
disk.vda.serial=SMALL-1
disk.vda.wwn=
disk.vda.by_path=pci-0000:00:04.0
disk.vda.by_id=virtio-SMALL-1
disk.vda.removable=0
disk.vda.rotational=1
disk.vda.transport=virtio
";
    assert_eq!(out, want, "got:\n{out}");
}

#[test]
fn an_ata_disk_without_vpd_page_89_falls_back_to_inquiry_and_page_80() {
    if !require("busybox (Debian's busybox)", have_tool("busybox")) {
        return;
    }
    let sys = fake_server();
    fs::remove_file(
        sys.p("devices/pci0000:00/0000:00:1f.2/ata3/host2/target2:0:0/2:0:0:0/vpd_pg89"),
    )
    .unwrap();
    let out = run_lister(sys.dir.path());
    assert!(out.contains("disk.sda.model=Samsung SSD 860\n"), "{out}");
    assert!(out.contains("disk.sda.serial=S3Z9NB0K123456\n"), "{out}");
    assert!(
        out.contains("disk.sda.by_id=ata-Samsung_SSD_860_S3Z9NB0K123456\n"),
        "{out}"
    );
}

#[test]
fn a_missing_sysfs_is_an_error_not_an_empty_list() {
    if !require("busybox (Debian's busybox)", have_tool("busybox")) {
        return;
    }
    let out = Command::new("busybox")
        .arg("sh")
        .arg(root().join("image/disks"))
        .env("SYSFS", "/nonexistent/sys")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no sysfs at /nonexistent/sys"),
        "{out:?}"
    );
}

#[test]
fn the_lister_passes_sh_n_and_shellcheck() {
    let lister = root().join("image/disks");
    let st = Command::new("sh").arg("-n").arg(&lister).status().unwrap();
    assert!(st.success(), "sh -n image/disks");
    if !require("shellcheck", have_tool("shellcheck")) {
        return;
    }
    let out = Command::new("shellcheck")
        .arg(&lister)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "shellcheck image/disks:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
