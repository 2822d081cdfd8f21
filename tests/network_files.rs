//! A machine's `network:` as the installed system gets it, through the real server's
//! install script, checked by the format's own tool: ifupdown's `ifquery` (from Debian's
//! ifupdown package, unpacked under target/, not installed: it would take over the host's
//! network) parses `/etc/network/interfaces` and reports each link's options. The
//! systemd-networkd form is proven by systemd-networkd itself in the QEMU Debian install
//! (tests/netns/debian.sh `uefi`: a bond of two NICs, each link cut in turn).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

const INVENTORY: &str = "defaults:
  unknown: ignore
roles:
  web:
    template: files.sh.j2
machines:
  52:54:00:00:00:01:
    hostname: db01
    role: web
    interfaces: { eno1: 52:54:00:00:00:01, eno2: 52:54:00:00:00:02, eno3: 52:54:00:00:00:03 }
    network:
      bond0: { bond: [eno1, eno2], mode: 802.3ad, dhcp: true, mtu: 9000 }
      storage: { vlan: 20, link: bond0, address: [198.18.20.5/24, 198.18.21.5/24], gateway: 198.18.20.1, dns: [198.18.20.1, 198.18.20.2] }
      eno3: { address: 198.18.30.5/24 }
";

/// The files of `network.<form>`, as `=== PATH` sections of the rendered install script.
const TEMPLATE: &str = "{% for f in network.ifupdown %}=== {{ f.path }}\n{{ f.text }}{% endfor %}";

/// ifupdown's `ifquery`, unpacked from Debian's package into target/ifupdown once.
fn ifquery() -> Option<PathBuf> {
    let dir = target_dir().join("ifupdown");
    let bin = dir.join("root/sbin/ifquery");
    if bin.is_file() {
        return Some(bin);
    }
    std::fs::create_dir_all(&dir).ok()?;
    let ok = Command::new("sh")
        .arg("-c")
        .arg("cd \"$1\" && rm -f ifupdown_*.deb && apt-get download ifupdown >/dev/null 2>&1 && dpkg-deb -x ifupdown_*.deb root")
        .arg("sh")
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success());
    (ok && bin.is_file()).then_some(bin)
}

#[test]
fn ifupdown_reads_the_interfaces_stemcell_writes() {
    let Some(ifquery) = ifquery() else {
        skip("ifupdown's ifquery (apt-get download ifupdown failed: no Debian archive?)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    lab(dir.path(), INVENTORY);
    std::fs::write(dir.path().join("kickstarts/files.sh.j2"), TEMPLATE).unwrap();
    let s = Server::start(dir.path());
    let script = curl(&[], &s.url("/boot/52:54:00:00:00:02.ipxe")).text();
    let token = cmdline_value(&script, "stemcell.token").expect("armed");
    let r = curl(
        &[],
        &s.url(&format!("/install/52:54:00:00:00:01?token={token}")),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    let mut files = std::collections::BTreeMap::new();
    for part in text.split("=== ").skip(1) {
        let (path, body) = part.split_once('\n').unwrap();
        files.insert(path.to_string(), body.to_string());
    }
    for nic in ["eno1", "eno2", "eno3"] {
        let link = &files[&format!("etc/systemd/network/10-stemcell-{nic}.link")];
        assert!(link.contains(&format!("[Link]\nName={nic}")), "{link}");
    }
    let work = tempfile::tempdir().unwrap();
    let interfaces = work.path().join("interfaces");
    std::fs::write(&interfaces, &files["etc/network/interfaces"]).unwrap();
    let state = work.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let query = |args: &[&str]| {
        let out = Command::new(&ifquery)
            .arg("-i")
            .arg(&interfaces)
            .arg("--state-dir")
            .arg(&state)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ifquery {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            files["etc/network/interfaces"]
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let all = query(&["--list", "-a"]);
    let links: Vec<&str> = all.lines().collect();
    assert_eq!(
        links,
        ["lo", "eno1", "eno2", "bond0", "bond0.20", "eno3"],
        "{all}"
    );
    let bond = query(&["bond0"]);
    for want in [
        "bond-slaves: eno1 eno2",
        "bond-mode: 802.3ad",
        "bond-miimon: 100",
        "mtu: 9000",
    ] {
        assert!(bond.contains(want), "no {want:?} in\n{bond}");
    }
    let vlan = query(&["bond0.20"]);
    for want in [
        "address: 198.18.20.5",
        "netmask: 255.255.255.0",
        "gateway: 198.18.20.1",
        "dns-nameservers: 198.18.20.1 198.18.20.2",
        "up: ip addr add 198.18.21.5/24 dev bond0.20",
    ] {
        assert!(vlan.contains(want), "no {want:?} in\n{vlan}");
    }
    assert!(query(&["eno2"]).contains("bond-master: bond0"));
    assert!(query(&["eno3"]).contains("address: 198.18.30.5"));
    // The checker itself fails on a broken file.
    std::fs::write(&interfaces, "auto x\niface x inet bogus\n").unwrap();
    let out = Command::new(&ifquery)
        .arg("-i")
        .arg(&interfaces)
        .arg("--state-dir")
        .arg(&state)
        .args(["--list", "-a"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "ifquery accepted a broken file");
}
