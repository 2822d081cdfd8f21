//! The stem cell's LLDP listener (`image/lldp`, run by discovery) against a real sender:
//! Debian's lldpd on two "switches", each wired by a veth to one NIC of a "machine"
//! namespace. The listener (the host's perl, as the stem cell runs it: no modules) must
//! report each NIC's own switch: chassis MAC, port ID as the switch sends it (an interface
//! name on one, a MAC on the other), port description and system name; and nothing, after
//! its wait, on a NIC whose cable has no switch. The QEMU discovery test
//! (tests/netns/discover.sh) runs the same listener inside the stem cell.
//!
//! Needs root (namespaces), ip, perl and lldpd; a skip otherwise (a failure under CI).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{have_tool, is_root, require};

/// Namespaces made here, and lldpd processes; removed on drop (also when a test panics).
struct Lab {
    nss: Vec<String>,
    children: Vec<Child>,
}

impl Lab {
    fn ns(&mut self, name: &str) {
        ip(&["netns", "add", name]);
        self.nss.push(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"]);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.nss {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn in_ns(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("run ip netns exec");
    assert!(
        out.status.success(),
        "{args:?} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn the_lldp_listener_reports_each_nics_switch_from_real_lldpd_frames() {
    if !require("root (network namespaces)", is_root())
        || !require("perl", have_tool("perl"))
        || !require(
            "lldpd (Debian's lldpd)",
            have_tool("lldpd") && have_tool("lldpcli"),
        )
    {
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("image/lldp");
    let dir = tempfile::tempdir().unwrap();
    // lldpd's unprivileged half opens its control socket in this folder.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let pid = std::process::id();
    let (m, sa, sb, sc) = (
        format!("sclp-{pid}-m"),
        format!("sclp-{pid}-a"),
        format!("sclp-{pid}-b"),
        format!("sclp-{pid}-c"),
    );
    let mut lab = Lab {
        nss: vec![],
        children: vec![],
    };
    for ns in [&m, &sa, &sb, &sc] {
        lab.ns(ns);
    }
    // The machine's NICs eth1..eth3, each cabled to its own namespace's swp7.
    for (nic, sw) in [("eth1", &sa), ("eth2", &sb), ("eth3", &sc)] {
        ip(&[
            "-n", &m, "link", "add", nic, "type", "veth", "peer", "name", "swp7", "netns", sw,
        ]);
        ip(&["-n", &m, "link", "set", nic, "up"]);
        ip(&["-n", sw, "link", "set", "swp7", "up"]);
    }
    // Switch a: port ID the interface name, a port description; switch b: lldpd's default
    // port ID (the port's MAC). Switch c sends nothing.
    for (sw, conf) in [
        (
            &sa,
            "configure system hostname sw-a.lab\nconfigure lldp tx-interval 1\n\
             configure lldp portidsubtype ifname\n\
             configure ports swp7 lldp portdescription \"rack 4, port 7\"\n",
        ),
        (
            &sb,
            "configure system hostname sw-b\nconfigure lldp tx-interval 1\n",
        ),
    ] {
        let conf_file = dir.path().join(format!("{sw}.conf"));
        std::fs::write(&conf_file, conf).unwrap();
        let log = std::fs::File::create(dir.path().join(format!("{sw}.log"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", sw, "lldpd", "-d", "-I", "swp7", "-u"])
            .arg(dir.path().join(format!("{sw}.socket")))
            .arg("-O")
            .arg(&conf_file)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start lldpd");
        lab.children.push(child);
    }
    let mac = |ns: &str| in_ns(ns, &["cat", "/sys/class/net/swp7/address"]);
    let (mac_a, mac_b) = (mac(&sa), mac(&sb));
    let idx = |nic: &str| in_ns(&m, &["cat", &format!("/sys/class/net/{nic}/ifindex")]);
    let args: Vec<String> = ["eth1", "eth2", "eth3"]
        .iter()
        .map(|n| format!("{n}:{}", idx(n)))
        .collect();

    // eth3 hears nothing: the listener stops at its wait (8 s here; 35 in the stem cell).
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &m, "perl"])
        .arg(&script)
        .arg("8")
        .args(&args)
        .env("LC_ALL", "C");
    let out = cmd.output().expect("run image/lldp");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "image/lldp: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let facts: BTreeMap<&str, &str> = stdout.lines().filter_map(|l| l.split_once('=')).collect();
    let want: BTreeMap<&str, &str> = [
        ("nic.eth1.lldp.chassis", mac_a.as_str()),
        ("nic.eth1.lldp.port", "swp7"),
        ("nic.eth1.lldp.port_descr", "rack 4, port 7"),
        ("nic.eth1.lldp.system", "sw-a.lab"),
        ("nic.eth2.lldp.chassis", mac_b.as_str()),
        ("nic.eth2.lldp.port", mac_b.as_str()),
        ("nic.eth2.lldp.port_descr", "swp7"),
        ("nic.eth2.lldp.system", "sw-b"),
    ]
    .into_iter()
    .collect();
    assert_eq!(facts, want, "{stdout}");

    // A wait of 0: not listening at all.
    let out = Command::new("ip")
        .args(["netns", "exec", &m, "perl"])
        .arg(&script)
        .arg("0")
        .args(&args)
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");
}
