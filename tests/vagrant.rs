//! vagrant/: the lab on a laptop (a stemcell server VM and a netbooting machine, libvirt).
//! The VMs need KVM, which this machine does not have; what runs here is Vagrant's own
//! validator (Debian's vagrant and vagrant-libvirt) on the Vagrantfile, which loads the
//! libvirt provider and checks every setting, and shellcheck on its provisioner.

mod common;

use std::path::Path;
use std::process::Command;

/// `vagrant validate` in a copy of vagrant/ (Vagrant writes a .vagrant folder beside the
/// file it checks), with `edit` applied to the Vagrantfile; (success, output).
fn validate(edit: impl Fn(String) -> String) -> (bool, String) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("vagrant");
    let dir = tempfile::tempdir().unwrap();
    let v = dir.path().join("vagrant");
    std::fs::create_dir(&v).unwrap();
    for f in ["Vagrantfile", "provision.sh", "README.md"] {
        std::fs::copy(src.join(f), v.join(f)).unwrap();
    }
    let text = std::fs::read_to_string(v.join("Vagrantfile")).unwrap();
    std::fs::write(v.join("Vagrantfile"), edit(text)).unwrap();
    let out = Command::new("vagrant")
        .arg("validate")
        .current_dir(&v)
        .env("VAGRANT_CHECKPOINT_DISABLE", "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn have_vagrant_libvirt() -> bool {
    if !common::require("vagrant (Debian's vagrant)", common::have_tool("vagrant")) {
        return false;
    }
    let plugins = Command::new("vagrant")
        .args(["plugin", "list"])
        .env("VAGRANT_CHECKPOINT_DISABLE", "1")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    common::require(
        "the vagrant-libvirt plugin (Debian's vagrant-libvirt)",
        plugins.contains("vagrant-libvirt"),
    )
}

#[test]
fn the_vagrantfile_validates_with_the_libvirt_provider() {
    if !have_vagrant_libvirt() {
        return;
    }
    let (ok, out) = validate(|t| t);
    assert!(ok, "vagrant validate failed:\n{out}");
    assert!(out.contains("validated successfully"), "{out}");
}

#[test]
fn the_validator_catches_a_wrong_setting() {
    // The check above can fail: a misspelt libvirt setting and an unknown vm setting are
    // refused by name, so the provider's validation really runs here.
    if !have_vagrant_libvirt() {
        return;
    }
    let (ok, out) = validate(|t| t.replace("lv.mgmt_attach = false", "lv.mgmt_atach = false"));
    assert!(!ok, "a misspelt libvirt setting validated:\n{out}");
    assert!(out.contains("mgmt_atach"), "{out}");
    let (ok, out) = validate(|t| t.replace("server.vm.hostname", "server.vm.hostnam"));
    assert!(!ok, "an unknown vm setting validated:\n{out}");
    assert!(out.contains("hostnam"), "{out}");
}

#[test]
fn the_web01_machine_is_the_lab_inventorys_web01() {
    // The netbooting VM must be a machine the lab's inventory lists, with its address
    // outside the pool: the README's walk-through depends on it.
    let vf =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("vagrant/Vagrantfile"))
            .unwrap();
    let inv = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/lab/inventory.yaml"),
    )
    .unwrap();
    assert!(vf.contains(r#"mac: "52:54:00:12:34:56""#), "{vf}");
    let entry = inv
        .split(r#""52:54:00:12:34:56":"#)
        .nth(1)
        .expect("web01's MAC in the lab inventory");
    assert!(entry.trim_start().starts_with("hostname: web01"), "{entry}");
    assert!(entry.contains("ip: 198.18.0.21") && vf.contains(r#"ip: "198.18.0.21""#));
}
