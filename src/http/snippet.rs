//! The ready-to-paste inventory entry for a discovered machine, and the NIC summary rows of
//! its page, from the facts its stem cell reported (`nic.NAME.*`, `disk.NAME.*`; see
//! image/init and docs/hardware.md).
//!
//! Facts are untrusted input (anyone who can reach the discovery URL with the machine's
//! token wrote them; parse_facts only bounded them and dropped control characters): every
//! value lands in the YAML double-quoted and escaped, names are used only when they are
//! plain identifiers, MACs only when they parse, and comments carry printable ASCII only.

use std::collections::BTreeMap;

use crate::mac::MacAddr;

/// One NIC as its facts describe it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Nic {
    pub(super) name: String,
    pub(super) mac: Option<MacAddr>,
    pub(super) driver: Option<String>,
    pub(super) carrier: Option<bool>,
    pub(super) speed: Option<String>,
    pub(super) boot: bool,
    pub(super) lldp_chassis: Option<String>,
    pub(super) lldp_port: Option<String>,
    pub(super) lldp_port_descr: Option<String>,
    pub(super) lldp_system: Option<String>,
}

/// One disk as its facts describe it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Disk {
    pub(super) name: String,
    pub(super) bytes: u64,
    pub(super) model: Option<String>,
    pub(super) serial: Option<String>,
    pub(super) by_path: Option<String>,
    pub(super) removable: bool,
}

const NIC_FIELDS: &[&str] = &[
    "lldp.port_descr",
    "lldp.chassis",
    "lldp.system",
    "lldp.port",
    "carrier",
    "driver",
    "speed",
    "boot",
    "mac",
];

const DISK_FIELDS: &[&str] = &[
    "rotational",
    "removable",
    "transport",
    "by_path",
    "serial",
    "by_id",
    "model",
    "bytes",
    "wwn",
];

/// `PREFIX.NAME.FIELD` for one of `fields` -> (NAME, FIELD). NAME may hold dots.
fn split_key<'a>(
    key: &'a str,
    prefix: &str,
    fields: &[&'static str],
) -> Option<(&'a str, &'static str)> {
    let rest = key.strip_prefix(prefix)?;
    fields.iter().find_map(|f| {
        let name = rest.strip_suffix(f)?.strip_suffix('.')?;
        (!name.is_empty()).then_some((name, *f))
    })
}

fn some(v: &str) -> Option<String> {
    let v = v.trim();
    (!v.is_empty()).then(|| v.to_string())
}

/// The NICs in the facts, by name.
pub(super) fn nics(hw: &BTreeMap<String, String>) -> Vec<Nic> {
    let mut by_name: BTreeMap<&str, Nic> = BTreeMap::new();
    for (k, v) in hw {
        let Some((name, field)) = split_key(k, "nic.", NIC_FIELDS) else {
            continue;
        };
        let n = by_name.entry(name).or_insert_with(|| Nic {
            name: name.to_string(),
            ..Nic::default()
        });
        match field {
            "mac" => n.mac = v.trim().parse().ok(),
            "driver" => n.driver = some(v),
            "carrier" => n.carrier = Some(v.trim() == "1"),
            "speed" => n.speed = some(v),
            "boot" => n.boot = v.trim() == "1",
            "lldp.chassis" => n.lldp_chassis = some(v),
            "lldp.port" => n.lldp_port = some(v),
            "lldp.port_descr" => n.lldp_port_descr = some(v),
            "lldp.system" => n.lldp_system = some(v),
            _ => {}
        }
    }
    by_name.into_values().collect()
}

/// The disks in the facts (those with a size), by name.
pub(super) fn disks(hw: &BTreeMap<String, String>) -> Vec<Disk> {
    let mut by_name: BTreeMap<&str, Disk> = BTreeMap::new();
    for (k, v) in hw {
        let Some((name, field)) = split_key(k, "disk.", DISK_FIELDS) else {
            continue;
        };
        let d = by_name.entry(name).or_insert_with(|| Disk {
            name: name.to_string(),
            ..Disk::default()
        });
        match field {
            "bytes" => d.bytes = v.trim().parse().unwrap_or(0),
            "model" => d.model = some(v),
            "serial" => d.serial = some(v),
            "by_path" => d.by_path = some(v),
            "removable" => d.removable = v.trim() == "1",
            _ => {}
        }
    }
    by_name.into_values().filter(|d| d.bytes > 0).collect()
}

/// A YAML double-quoted scalar: `\` and `"` escaped, anything outside printable ASCII as
/// `\uXXXX` (or `\UXXXXXXXX`), so no value can end the string, the line or the mapping.
pub(super) fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            c if (c as u32) <= 0xffff => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// Text for a YAML comment: printable ASCII only, bounded.
fn comment_text(s: &str) -> String {
    s.chars()
        .filter(|c| (' '..='~').contains(c))
        .take(80)
        .collect()
}

/// A Linux interface name usable as an `interfaces:` label: 1 to 15 of `[A-Za-z0-9_.-]`.
fn label_ok(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

fn size(bytes: u64) -> String {
    const UNITS: &[&str] = &["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn disk_line(d: &Disk) -> String {
    let mut s = format!("{} {}", d.name, size(d.bytes));
    if let Some(m) = &d.model {
        s.push_str(&format!(", model {m}"));
    }
    if let Some(x) = &d.serial {
        s.push_str(&format!(", serial {x}"));
    }
    if let Some(p) = &d.by_path {
        s.push_str(&format!(", by_path {p}"));
    }
    if d.removable {
        s.push_str(", removable");
    }
    comment_text(&s)
}

/// The disk an install would use: the smallest non-removable one (ties: by name).
pub(super) fn install_disk(disks: &[Disk]) -> Option<&Disk> {
    disks
        .iter()
        .filter(|d| !d.removable)
        .min_by(|a, b| a.bytes.cmp(&b.bytes).then_with(|| a.name.cmp(&b.name)))
}

/// The entry under `machines:` (indented by 2), ready to paste: the key is `mac` (the MAC
/// stemcell knows the machine by: the NIC it booted from), `interfaces:` every NIC with a
/// MAC, `disk:` a stable rule for the smallest non-removable disk (its serial, else its
/// by-path name, else `pick: smallest`), the other disks listed in comments.
pub(super) fn inventory_snippet(
    mac: MacAddr,
    host: &str,
    role: &str,
    hw: &BTreeMap<String, String>,
) -> String {
    let mut s = format!(
        "  {}:\n    hostname: {}\n    role: {}\n",
        quoted(&mac.to_string()),
        quoted(host),
        quoted(role)
    );
    let nics: Vec<Nic> = nics(hw)
        .into_iter()
        .filter(|n| n.mac.is_some() && label_ok(&n.name))
        .collect();
    if !nics.is_empty() {
        s.push_str("    interfaces:\n");
        for n in &nics {
            let mut note = Vec::new();
            if n.boot {
                note.push("booted from".to_string());
            }
            if let Some(sys) = &n.lldp_system {
                note.push(format!("switch {sys}"));
            }
            if let Some(p) = n.lldp_port.as_ref().or(n.lldp_port_descr.as_ref()) {
                note.push(format!("port {p}"));
            }
            if n.carrier == Some(false) {
                note.push("no link".into());
            }
            let note = if note.is_empty() {
                String::new()
            } else {
                format!("  # {}", comment_text(&note.join(", ")))
            };
            let m = n.mac.map(|m| m.to_string()).unwrap_or_default();
            s.push_str(&format!("      {}: {}{note}\n", n.name, quoted(&m)));
        }
    }
    let disks = disks(hw);
    if let Some(d) = install_disk(&disks) {
        let others: Vec<&Disk> = disks.iter().filter(|o| o.name != d.name).collect();
        s.push_str(&format!(
            "    # install disk: the smallest non-removable one, {}\n",
            disk_line(d)
        ));
        if !others.is_empty() {
            s.push_str("    # other disks (change the rule to pick one of them):\n");
            for o in others {
                s.push_str(&format!("    #   {}\n", disk_line(o)));
            }
        }
        let rule = if let Some(x) = &d.serial {
            format!("{{ serial: {} }}", quoted(x))
        } else if let Some(p) = &d.by_path {
            format!("{{ by_path: {} }}", quoted(p))
        } else {
            "{ pick: smallest }".to_string()
        };
        s.push_str(&format!("    disk: {rule}\n"));
    }
    s
}

/// One summary row per NIC for the page's facts table: MAC, driver, link and speed, the
/// boot flag, and the switch and port from LLDP.
pub(super) fn nic_rows(hw: &BTreeMap<String, String>) -> Vec<(String, String)> {
    nics(hw)
        .into_iter()
        .map(|n| {
            let mut parts = Vec::new();
            if let Some(m) = n.mac {
                parts.push(m.to_string());
            }
            if let Some(d) = &n.driver {
                parts.push(d.clone());
            }
            match (n.carrier, &n.speed) {
                (Some(true), Some(sp)) => parts.push(format!("link {sp} Mb/s")),
                (Some(true), None) => parts.push("link".into()),
                (Some(false), _) => parts.push("no link".into()),
                (None, _) => {}
            }
            if n.boot {
                parts.push("booted from".into());
            }
            let port = n.lldp_port.as_ref().or(n.lldp_port_descr.as_ref());
            match (&n.lldp_system, &n.lldp_chassis, port) {
                (None, None, None) => {}
                (sys, ch, port) => parts.push(format!(
                    "switch {}{}",
                    sys.as_ref().or(ch.as_ref()).map_or("?", |s| s.as_str()),
                    port.map(|p| format!(" port {p}")).unwrap_or_default()
                )),
            }
            (format!("NIC {}", n.name), parts.join(", "))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::{self, Kind, Node};
    use std::path::Path;

    fn hw(lines: &str) -> BTreeMap<String, String> {
        super::super::install::parse_facts(lines)
    }

    fn get<'a>(n: &'a Node, key: &str) -> &'a Node {
        match &n.kind {
            Kind::Map(entries) => {
                &entries
                    .iter()
                    .find(|(k, _)| k.as_str() == Some(key))
                    .unwrap_or_else(|| panic!("no key {key} in {n:?}"))
                    .1
            }
            _ => panic!("not a mapping: {n:?}"),
        }
    }

    fn keys(n: &Node) -> Vec<String> {
        match &n.kind {
            Kind::Map(entries) => entries
                .iter()
                .map(|(k, _)| k.as_str().unwrap().to_string())
                .collect(),
            _ => panic!("not a mapping: {n:?}"),
        }
    }

    fn machine(snippet: &str) -> Node {
        let doc = format!("machines:\n{snippet}");
        let root = yaml::parse(Path::new("snippet.yaml"), &doc)
            .unwrap_or_else(|e| panic!("the snippet is not YAML: {e}\n{doc}"));
        let machines = get(&root, "machines");
        let ks = keys(machines);
        assert_eq!(ks.len(), 1, "{doc}");
        get(machines, &ks[0]).clone()
    }

    const TWO_NICS_TWO_DISKS: &str = "cpus=2
nic.eth0.mac=52:54:00:5e:00:11
nic.eth0.driver=e1000
nic.eth0.carrier=1
nic.eth0.speed=1000
nic.eth0.lldp.chassis=22:c4:6c:b2:8b:5a
nic.eth0.lldp.port=swp7
nic.eth0.lldp.port_descr=rack 4, port 7
nic.eth0.lldp.system=sw-lab-1
nic.eth1.mac=52:54:00:5e:00:12
nic.eth1.driver=e1000
nic.eth1.carrier=1
nic.eth1.speed=1000
nic.eth1.boot=1
disk.vda.bytes=2147483648
disk.vda.model=QEMU disk
disk.vda.serial=SC-BIG-02
disk.vda.by_path=pci-0000:00:06.0
disk.vda.removable=0
disk.vdb.bytes=1073741824
disk.vdb.serial=SC-SMALL-01
disk.vdb.by_path=pci-0000:00:07.0
disk.vdb.removable=0
disk.sda.bytes=536870912
disk.sda.model=USB stick
disk.sda.removable=1
";

    #[test]
    fn the_snippet_has_every_nic_and_a_serial_rule_for_the_smallest_fixed_disk() {
        let mac: MacAddr = "52:54:00:5e:00:12".parse().unwrap();
        let s = inventory_snippet(mac, "mac-5254005e0012", "base", &hw(TWO_NICS_TWO_DISKS));
        let m = machine(&s);
        assert_eq!(keys(&m), ["hostname", "role", "interfaces", "disk"], "{s}");
        assert_eq!(get(&m, "hostname").as_str(), Some("mac-5254005e0012"));
        assert_eq!(get(&m, "role").as_str(), Some("base"));
        let ifs = get(&m, "interfaces");
        assert_eq!(keys(ifs), ["eth0", "eth1"]);
        assert_eq!(get(ifs, "eth0").as_str(), Some("52:54:00:5e:00:11"));
        assert_eq!(get(ifs, "eth1").as_str(), Some("52:54:00:5e:00:12"));
        // The removable 512 MiB stick is smaller but not a candidate; vdb (1 GiB) is.
        let disk = get(&m, "disk");
        assert_eq!(keys(disk), ["serial"]);
        assert_eq!(get(disk, "serial").as_str(), Some("SC-SMALL-01"));
        // The others are listed for the operator, with what tells them apart.
        assert!(
            s.contains("#   vda 2.0 GiB, model QEMU disk, serial SC-BIG-02"),
            "{s}"
        );
        assert!(
            s.contains("#   sda 512.0 MiB, model USB stick, removable"),
            "{s}"
        );
        assert!(
            s.contains("eth0: \"52:54:00:5e:00:11\"  # switch sw-lab-1, port swp7"),
            "{s}"
        );
        assert!(
            s.contains("eth1: \"52:54:00:5e:00:12\"  # booted from"),
            "{s}"
        );
    }

    #[test]
    fn without_a_serial_the_rule_is_the_by_path_name_and_without_either_pick_smallest() {
        let mac: MacAddr = "52:54:00:5e:00:12".parse().unwrap();
        let s = inventory_snippet(
            mac,
            "h",
            "r",
            &hw(
                "disk.sda.bytes=100\ndisk.sda.by_path=pci-0000:00:1f.2-ata-1\ndisk.sdb.bytes=200\n",
            ),
        );
        assert_eq!(
            get(get(&machine(&s), "disk"), "by_path").as_str(),
            Some("pci-0000:00:1f.2-ata-1")
        );
        let s = inventory_snippet(
            mac,
            "h",
            "r",
            &hw("disk.sda.bytes=100\ndisk.sdb.bytes=200\n"),
        );
        assert_eq!(
            get(get(&machine(&s), "disk"), "pick").as_str(),
            Some("smallest")
        );
        // No NIC or disk facts (an older stem cell): the entry as before, and still YAML.
        let s = inventory_snippet(mac, "h", "r", &hw("cpus=1\n"));
        assert_eq!(keys(&machine(&s)), ["hostname", "role"]);
    }

    #[test]
    fn odd_values_stay_inside_their_quotes_and_odd_names_are_left_out() {
        let mac: MacAddr = "52:54:00:5e:00:12".parse().unwrap();
        let evil = "x\" }, role: admin # \\ é \u{1F600}\u{7f}";
        let facts = format!(
            "nic.eth0.mac=52:54:00:5e:00:12\n\
             nic.a-very-long-interface-name.mac=52:54:00:5e:00:14\n\
             nic.eth1.mac=not-a-mac\n\
             nic.eth2.mac=52:54:00:5e:00:15\n\
             nic.eth2.lldp.system=sw # \"1\"\n\
             disk.vda.bytes=10\n\
             disk.vda.serial={evil}\n"
        );
        let mut h = hw(&facts);
        // parse_facts already refuses keys with spaces or colons; the snippet does not rely
        // on it.
        h.insert("nic.e: {x}.mac".into(), "52:54:00:5e:00:13".into());
        let s = inventory_snippet(mac, "h", "r", &h);
        let m = machine(&s);
        assert_eq!(keys(&m), ["hostname", "role", "interfaces", "disk"], "{s}");
        assert_eq!(keys(get(&m, "interfaces")), ["eth0", "eth2"], "{s}");
        // The YAML gives back exactly what parse_facts kept.
        let want = h["disk.vda.serial"].clone();
        assert!(want.contains('"') && want.contains('é'), "{want:?}");
        assert_eq!(get(get(&m, "disk"), "serial").as_str(), Some(want.as_str()));
        // A hostname or role with YAML syntax in it is a string too.
        let s = inventory_snippet(mac, "a: b", "- c", &h);
        assert_eq!(get(&machine(&s), "hostname").as_str(), Some("a: b"));
        assert_eq!(get(&machine(&s), "role").as_str(), Some("- c"));
    }

    #[test]
    fn quoting_escapes_what_would_end_the_string() {
        assert_eq!(quoted("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(quoted("\n\u{7f}é"), "\"\\u000a\\u007f\\u00e9\"");
        assert_eq!(quoted("\u{1F600}"), "\"\\U0001f600\"");
    }

    #[test]
    fn the_page_rows_summarise_each_nic_with_its_switch_and_port() {
        let rows = nic_rows(&hw(TWO_NICS_TWO_DISKS));
        assert_eq!(
            rows,
            vec![
                (
                    "NIC eth0".to_string(),
                    "52:54:00:5e:00:11, e1000, link 1000 Mb/s, switch sw-lab-1 port swp7"
                        .to_string()
                ),
                (
                    "NIC eth1".to_string(),
                    "52:54:00:5e:00:12, e1000, link 1000 Mb/s, booted from".to_string()
                ),
            ]
        );
    }
}
