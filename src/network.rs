//! A machine's NICs and its installed system's network, as the inventory states them.
//!
//! `interfaces:` names every NIC of a machine (a label → its MAC): any of them identifies
//! the machine. `network:` describes the installed system's links — the NICs themselves,
//! bonds of them, VLANs on either — each with DHCP, static addresses or nothing (a bond
//! that only carries VLANs). Both are validated with positions at load time; the plan is
//! then written for the OS: systemd-networkd files (`networkd`), or ifupdown's
//! `/etc/network/interfaces` with systemd `.link` files that give the NICs their labels
//! (`ifupdown`). NICs are always matched by their permanent MAC, never by a kernel name:
//! names change between kernels and boots, MACs do not.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::Serialize;

use crate::mac::MacAddr;
use crate::yaml::{Node, Pos, Report};

/// One NIC of a machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Nic {
    /// The inventory's label for it (Linux interface-name rules).
    pub(crate) name: String,
    pub(crate) mac: MacAddr,
    #[serde(skip)]
    pub(crate) pos: Pos,
}

/// How a bond spreads traffic over its NICs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) enum BondMode {
    /// One NIC carries the traffic, another takes over when its link goes (any switch).
    #[serde(rename = "active-backup")]
    ActiveBackup,
    /// LACP: the switch ports must be configured as one aggregate.
    #[serde(rename = "802.3ad")]
    Lacp,
}

impl BondMode {
    fn as_str(self) -> &'static str {
        match self {
            BondMode::ActiveBackup => "active-backup",
            BondMode::Lacp => "802.3ad",
        }
    }
}

/// What a link is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub(crate) enum LinkKind {
    /// One of the machine's NICs.
    Nic { mac: MacAddr },
    /// A bond of NICs (by label); the bond takes the first one's MAC, so DHCP knows it.
    Bond {
        members: Vec<String>,
        mode: BondMode,
    },
    /// A VLAN on a NIC or a bond.
    Vlan { id: u16, link: String },
}

/// One link of the installed system and how it is addressed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Link {
    pub(crate) name: String,
    #[serde(flatten)]
    pub(crate) kind: LinkKind,
    pub(crate) dhcp: bool,
    #[serde(serialize_with = "cidrs")]
    pub(crate) addresses: Vec<Ipv4Network>,
    pub(crate) gateway: Option<Ipv4Addr>,
    pub(crate) dns: Vec<Ipv4Addr>,
    pub(crate) mtu: Option<u16>,
}

fn cidrs<S: serde::Serializer>(a: &[Ipv4Network], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(a.iter().map(|n| n.to_string()))
}

impl Link {
    fn addressed(&self) -> bool {
        self.dhcp || !self.addresses.is_empty()
    }
}

/// The installed system's network: links in the inventory's order, with the NICs that
/// only serve as bond members or VLAN carriers added.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Plan {
    pub(crate) links: Vec<Link>,
}

/// A file the install writes into the new system (path relative to its root).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct File {
    pub(crate) path: String,
    pub(crate) text: String,
}

/// Linux's rules for an interface name (IFNAMSIZ 16 with the NUL; no `/`, `:`,
/// whitespace, not `.` or `..`), narrowed to what is safe in a script and a file name.
pub(crate) fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// A machine's NICs as `network:` and templates name them: `nics`, or without
/// `interfaces:` the key MAC alone, labelled `boot`.
pub(crate) fn labelled(nics: &[Nic], key: MacAddr, pos: Pos) -> Vec<Nic> {
    if nics.is_empty() {
        vec![Nic {
            name: "boot".into(),
            mac: key,
            pos,
        }]
    } else {
        nics.to_vec()
    }
}

/// `interfaces:` of machine `key`: label → MAC. The key MAC must be one of them.
pub(crate) fn read_interfaces(r: &mut Report, node: &Node, key: MacAddr, key_pos: Pos) -> Vec<Nic> {
    let what = format!("machine {key} interfaces");
    let Some(mut m) = r.map(node, &what) else {
        return Vec::new();
    };
    let mut out: Vec<Nic> = Vec::new();
    for (k, v) in m.entries() {
        let Some(name) = r.string(k, "an interface name") else {
            continue;
        };
        if !valid_ifname(&name) {
            r.add(k.pos, format!("{what}: {name:?} is not an interface name: 1-15 letters, digits, _ . -, starting with a letter"));
            continue;
        }
        let Some(text) = r.string(v, &format!("the MAC of interface {name}")) else {
            continue;
        };
        let mac = match text.parse::<MacAddr>() {
            Ok(m) => m,
            Err(e) => {
                r.add(v.pos, format!("{what}: {name}: {e}"));
                continue;
            }
        };
        if let Some(first) = out.iter().find(|n| n.mac == mac) {
            r.add(
                v.pos,
                format!(
                    "{what}: {mac} is listed twice ({} at line {}, column {}, and {name})",
                    first.name, first.pos.line, first.pos.col
                ),
            );
            continue;
        }
        if out.iter().any(|n| n.name.eq_ignore_ascii_case(&name)) {
            r.add(k.pos, format!("{what}: the name {name} is used twice"));
            continue;
        }
        out.push(Nic {
            name,
            mac,
            pos: v.pos,
        });
    }
    if !out.is_empty() && !out.iter().any(|n| n.mac == key) {
        r.add(
            node.pos,
            format!("{what}: the machine's key MAC {key} (line {}) must be one of its interfaces; list it with a name", key_pos.line),
        );
    }
    out
}

const LINK_KEYS: &[&str] = &[
    "bond", "mode", "vlan", "link", "dhcp", "address", "gateway", "dns", "mtu",
];

/// `network:` of a machine with `nics`: link name → its definition.
pub(crate) fn read_network(r: &mut Report, node: &Node, nics: &[Nic], what: &str) -> Option<Plan> {
    let mut m = r.map(node, what)?;
    let nic_by_name: HashMap<&str, &Nic> = nics.iter().map(|n| (n.name.as_str(), n)).collect();
    let mut links: Vec<(Link, Pos)> = Vec::new();
    let mut ok = true;
    for (k, v) in m.entries() {
        let Some(name) = r.string(k, "a link name") else {
            ok = false;
            continue;
        };
        let here = format!("{what}.{name}");
        if !valid_ifname(&name) {
            r.add(k.pos, format!("{here}: not an interface name: 1-15 letters, digits, _ . -, starting with a letter"));
            ok = false;
            continue;
        }
        if links.iter().any(|(l, _)| l.name == name) {
            r.add(k.pos, format!("{here}: defined twice"));
            ok = false;
            continue;
        }
        match read_link(r, &name, v, &here, &nic_by_name) {
            Some(l) => links.push((l, k.pos)),
            None => ok = false,
        }
    }
    if !ok {
        return None;
    }
    // References: bond members are NICs of this machine, in one bond, not configured on
    // their own; a VLAN's link is a NIC or a bond of this plan.
    let mut member_of: HashMap<String, String> = HashMap::new();
    for (l, pos) in &links {
        if let LinkKind::Bond { members, .. } = &l.kind {
            for mname in members {
                if let Some(other) = member_of.insert(mname.clone(), l.name.clone()) {
                    r.add(
                        *pos,
                        format!(
                            "{what}.{}: interface {mname} is already a member of bond {other}",
                            l.name
                        ),
                    );
                    ok = false;
                }
                if links.iter().any(|(x, _)| &x.name == mname) {
                    r.add(*pos, format!("{what}.{}: interface {mname} is a bond member, so it cannot have a configuration of its own in {what}", l.name));
                    ok = false;
                }
            }
        }
    }
    for (l, pos) in &links {
        if let LinkKind::Vlan { link, .. } = &l.kind {
            let is_bond = links
                .iter()
                .any(|(x, _)| &x.name == link && matches!(x.kind, LinkKind::Bond { .. }));
            let is_vlan = links
                .iter()
                .any(|(x, _)| &x.name == link && matches!(x.kind, LinkKind::Vlan { .. }));
            if is_vlan {
                r.add(
                    *pos,
                    format!(
                        "{what}.{}: link {link} is a VLAN; VLANs go on a NIC or a bond",
                        l.name
                    ),
                );
                ok = false;
            } else if let Some(b) = member_of.get(link) {
                r.add(
                    *pos,
                    format!(
                        "{what}.{}: link {link} is a member of bond {b}; put the VLAN on {b}",
                        l.name
                    ),
                );
                ok = false;
            } else if !is_bond && !nic_by_name.contains_key(link.as_str()) {
                let mut names: Vec<&str> = nic_by_name.keys().copied().collect();
                names.extend(
                    links
                        .iter()
                        .filter(|(x, _)| matches!(x.kind, LinkKind::Bond { .. }))
                        .map(|(x, _)| x.name.as_str()),
                );
                names.sort_unstable();
                r.add(*pos, format!("{what}.{}: link {link:?} is neither an interface of this machine nor a bond; known: {}", l.name, names.join(", ")));
                ok = false;
            }
        }
    }
    let mut seen_vlans: HashMap<(String, u16), String> = HashMap::new();
    for (l, pos) in &links {
        if let LinkKind::Vlan { id, link } = &l.kind {
            if let Some(first) = seen_vlans.insert((link.clone(), *id), l.name.clone()) {
                r.add(
                    *pos,
                    format!("{what}.{}: VLAN {id} on {link} is already {first}", l.name),
                );
                ok = false;
            }
        }
    }
    if !links.iter().any(|(l, _)| l.addressed()) {
        r.add(node.pos, format!("{what}: no link has `dhcp: true` or an `address`: the installed system would be unreachable"));
        ok = false;
    }
    if !ok {
        return None;
    }
    // NICs that only carry VLANs get a link of their own (no addresses), so the VLAN has
    // a parent to attach to; bond members are written with their bond.
    let mut out: Vec<Link> = links.into_iter().map(|(l, _)| l).collect();
    let carriers: Vec<String> = out
        .iter()
        .filter_map(|l| match &l.kind {
            LinkKind::Vlan { link, .. } => Some(link.clone()),
            _ => None,
        })
        .collect();
    for c in carriers {
        if !out.iter().any(|l| l.name == c) {
            if let Some(n) = nic_by_name.get(c.as_str()) {
                out.push(Link {
                    name: c.clone(),
                    kind: LinkKind::Nic { mac: n.mac },
                    dhcp: false,
                    addresses: Vec::new(),
                    gateway: None,
                    dns: Vec::new(),
                    mtu: None,
                });
            }
        }
    }
    Some(Plan { links: out })
}

fn read_link(
    r: &mut Report,
    name: &str,
    node: &Node,
    here: &str,
    nics: &HashMap<&str, &Nic>,
) -> Option<Link> {
    let mut m = r.map(node, here)?;
    let mut ok = true;
    let bond = m.get("bond");
    let vlan = m.get("vlan");
    let mode = m.get("mode");
    let parent = m.get("link");
    let kind = match (bond, vlan) {
        (Some(b), Some(_)) => {
            r.add(
                b.pos,
                format!("{here}: `bond` and `vlan` exclude each other"),
            );
            return None;
        }
        (Some(b), None) => {
            let mut members = Vec::new();
            for item in r.list(b, &format!("{here}.bond")).unwrap_or_default() {
                let Some(s) = r.string(item, "a bond member") else {
                    ok = false;
                    continue;
                };
                if !nics.contains_key(s.as_str()) {
                    let mut known: Vec<&str> = nics.keys().copied().collect();
                    known.sort_unstable();
                    r.add(
                        item.pos,
                        format!(
                            "{here}.bond: {s:?} is not one of this machine's interfaces ({})",
                            if known.is_empty() {
                                "it lists none: add `interfaces:`".to_string()
                            } else {
                                known.join(", ")
                            }
                        ),
                    );
                    ok = false;
                } else if members.contains(&s) {
                    r.add(item.pos, format!("{here}.bond: {s} is listed twice"));
                    ok = false;
                } else {
                    members.push(s);
                }
            }
            if ok && members.is_empty() {
                r.add(
                    b.pos,
                    format!("{here}.bond: a bond needs at least one interface"),
                );
                ok = false;
            }
            let mode = match mode {
                None => BondMode::ActiveBackup,
                Some(n) => match r.string(n, "mode").as_deref() {
                    Some("active-backup") => BondMode::ActiveBackup,
                    Some("802.3ad") | Some("lacp") => BondMode::Lacp,
                    Some(other) => {
                        r.add(n.pos, format!("{here}.mode: {other:?} is not a bond mode: active-backup or 802.3ad"));
                        ok = false;
                        BondMode::ActiveBackup
                    }
                    None => {
                        ok = false;
                        BondMode::ActiveBackup
                    }
                },
            };
            if let Some(p) = parent {
                r.add(
                    p.pos,
                    format!("{here}: `link` is for VLANs; a bond's interfaces are its `bond` list"),
                );
                ok = false;
            }
            LinkKind::Bond { members, mode }
        }
        (None, Some(v)) => {
            let id = r.parsed::<u16>(v, &format!("{here}.vlan"), "a VLAN id (1-4094)");
            let id = match id {
                Some(i) if (1..=4094).contains(&i) => i,
                Some(i) => {
                    r.add(v.pos, format!("{here}.vlan: {i} is not a VLAN id (1-4094)"));
                    return None;
                }
                None => return None,
            };
            let Some(p) = parent else {
                r.add(
                    node.pos,
                    format!("{here}: a VLAN needs `link:` (the NIC or bond it runs on)"),
                );
                return None;
            };
            let link = r.string(p, "link")?;
            if let Some(n) = mode {
                r.add(n.pos, format!("{here}: `mode` is for bonds"));
                ok = false;
            }
            LinkKind::Vlan { id, link }
        }
        (None, None) => {
            let Some(nic) = nics.get(name) else {
                let mut known: Vec<&str> = nics.keys().copied().collect();
                known.sort_unstable();
                r.add(node.pos, format!("{here}: {name} is not one of this machine's interfaces ({}); a bond needs `bond: [..]`, a VLAN `vlan: ID` and `link:`", if known.is_empty() { "it lists none: add `interfaces:`".to_string() } else { known.join(", ") }));
                return None;
            };
            for (key, n) in [("mode", mode), ("link", parent)] {
                if let Some(n) = n {
                    r.add(
                        n.pos,
                        format!("{here}: `{key}` is for bonds and VLANs; {name} is an interface"),
                    );
                    ok = false;
                }
            }
            LinkKind::Nic { mac: nic.mac }
        }
    };
    let dhcp = m
        .get("dhcp")
        .and_then(|n| r.boolean(n, &format!("{here}.dhcp")))
        .unwrap_or(false);
    let mut addresses = Vec::new();
    if let Some(n) = m.get("address") {
        let items: Vec<&Node> = match &n.kind {
            crate::yaml::Kind::Seq(_) => r.list(n, &format!("{here}.address")).unwrap_or_default(),
            _ => vec![n],
        };
        for item in items {
            let Some(s) = r.string(item, "an address") else {
                ok = false;
                continue;
            };
            match s.parse::<Ipv4Network>() {
                Err(e) => {
                    r.add(item.pos, format!("{here}.address: {s:?} is not an IPv4 address with a prefix (198.18.5.10/24): {e}"));
                    ok = false;
                }
                Ok(_) if !s.contains('/') => {
                    r.add(
                        item.pos,
                        format!("{here}.address: {s} needs its prefix length (like {s}/24)"),
                    );
                    ok = false;
                }
                Ok(net)
                    if net.prefix() < 31
                        && (net.ip() == net.network() || net.ip() == net.broadcast()) =>
                {
                    r.add(
                        item.pos,
                        format!(
                            "{here}.address: {s} is not a host address of {}/{}",
                            net.network(),
                            net.prefix()
                        ),
                    );
                    ok = false;
                }
                Ok(net) => addresses.push(net),
            }
        }
    }
    let gateway = m.get("gateway").and_then(|n| {
        let g = r.parsed::<Ipv4Addr>(n, &format!("{here}.gateway"), "an IPv4 address")?;
        if addresses.is_empty() {
            r.add(n.pos, format!("{here}.gateway: a gateway goes with a static `address` (DHCP brings its own router)"));
            ok = false;
            return None;
        }
        if !addresses.iter().any(|a| a.contains(g)) {
            let nets: Vec<String> = addresses.iter().map(|a| format!("{}/{}", a.network(), a.prefix())).collect();
            r.add(n.pos, format!("{here}.gateway: {g} is not on {} (the link's network)", nets.join(" or ")));
            ok = false;
            return None;
        }
        Some(g)
    });
    let mut dns = Vec::new();
    if let Some(n) = m.get("dns") {
        for item in r.list(n, &format!("{here}.dns")).unwrap_or_default() {
            match r.parsed::<Ipv4Addr>(item, &format!("{here}.dns"), "an IPv4 address") {
                Some(a) => dns.push(a),
                None => ok = false,
            }
        }
    }
    let mtu = m.get("mtu").and_then(|n| {
        let v = r.parsed::<u16>(n, &format!("{here}.mtu"), "an MTU (576-9216)")?;
        if !(576..=9216).contains(&v) {
            r.add(n.pos, format!("{here}.mtu: {v} is outside 576-9216"));
            ok = false;
            return None;
        }
        Some(v)
    });
    m.deny_unknown(r, here, LINK_KEYS);
    ok.then_some(Link {
        name: name.to_string(),
        kind,
        dhcp,
        addresses,
        gateway,
        dns,
        mtu,
    })
}

impl Plan {
    fn vlans_on<'a>(&'a self, parent: &'a str) -> impl Iterator<Item = &'a Link> + 'a {
        self.links
            .iter()
            .filter(move |l| matches!(&l.kind, LinkKind::Vlan { link, .. } if link == parent))
    }

    fn bond_of(&self, nic: &str) -> Option<&Link> {
        self.links
            .iter()
            .find(|l| matches!(&l.kind, LinkKind::Bond { members, .. } if members.iter().any(|m| m == nic)))
    }

    /// The plan as systemd-networkd files (`etc/systemd/network/…`), in a stable order.
    pub(crate) fn networkd(&self, nics: &[Nic]) -> Vec<File> {
        let mac_of = |name: &str| nics.iter().find(|n| n.name == name).map(|n| n.mac);
        let mut files: BTreeMap<String, String> = BTreeMap::new();
        let dir = "etc/systemd/network";
        let head = "# Written by stemcell from the inventory's `network:`.\n";
        for l in &self.links {
            let mut network = String::from(head);
            match &l.kind {
                LinkKind::Nic { mac } => {
                    let _ = write!(network, "[Match]\nPermanentMACAddress={mac}\n");
                }
                LinkKind::Bond { members, mode } => {
                    let mut netdev = format!("{head}[NetDev]\nName={}\nKind=bond\n", l.name);
                    // The first member's MAC, so the bond's DHCP requests are this machine's.
                    if let Some(mac) = members.first().and_then(|m| mac_of(m)) {
                        let _ = writeln!(netdev, "MACAddress={mac}");
                    }
                    if let Some(mtu) = l.mtu {
                        let _ = writeln!(netdev, "MTUBytes={mtu}");
                    }
                    let _ = write!(
                        netdev,
                        "\n[Bond]\nMode={}\nMIIMonitorSec=100ms\n",
                        mode.as_str()
                    );
                    match mode {
                        BondMode::Lacp => {
                            netdev.push_str("LACPTransmitRate=fast\nTransmitHashPolicy=layer3+4\n")
                        }
                        BondMode::ActiveBackup => {
                            if let Some(first) = members.first() {
                                let _ = writeln!(netdev, "# primary: {first}");
                            }
                        }
                    }
                    files.insert(format!("{dir}/20-stemcell-{}.netdev", l.name), netdev);
                    for (i, mname) in members.iter().enumerate() {
                        let Some(mac) = mac_of(mname) else { continue };
                        // Its bond is what must come online: a member without link (a cut
                        // cable) must not hold up network-online.target.
                        let mut f = format!("{head}# {mname}: a member of {}\n[Match]\nPermanentMACAddress={mac}\n\n[Link]\nRequiredForOnline=no\n\n[Network]\nBond={}\n", l.name, l.name);
                        if *mode == BondMode::ActiveBackup && i == 0 {
                            f.push_str("PrimarySlave=true\n");
                        }
                        files.insert(format!("{dir}/10-stemcell-{mname}.network"), f);
                    }
                    let _ = write!(network, "[Match]\nName={}\n", l.name);
                }
                LinkKind::Vlan { id, .. } => {
                    let mut netdev = format!("{head}[NetDev]\nName={}\nKind=vlan\n", l.name);
                    if let Some(mtu) = l.mtu {
                        let _ = writeln!(netdev, "MTUBytes={mtu}");
                    }
                    let _ = write!(netdev, "\n[VLAN]\nId={id}\n");
                    files.insert(format!("{dir}/30-stemcell-{}.netdev", l.name), netdev);
                    let _ = write!(network, "[Match]\nName={}\n", l.name);
                }
            }
            let mtu = match (&l.kind, l.mtu) {
                (LinkKind::Nic { .. }, Some(mtu)) => format!("MTUBytes={mtu}\n"),
                _ => String::new(),
            };
            // A link without addresses (a VLAN carrier) is online through its VLANs.
            let online = if l.addressed() {
                ""
            } else {
                "RequiredForOnline=no\n"
            };
            if !mtu.is_empty() || !online.is_empty() {
                let _ = write!(network, "\n[Link]\n{mtu}{online}");
            }
            network.push_str("\n[Network]\n");
            if l.dhcp {
                network.push_str("DHCP=ipv4\n");
            }
            for a in &l.addresses {
                let _ = writeln!(network, "Address={a}");
            }
            if let Some(g) = l.gateway {
                let _ = writeln!(network, "Gateway={g}");
            }
            for d in &l.dns {
                let _ = writeln!(network, "DNS={d}");
            }
            for v in self.vlans_on(&l.name) {
                let _ = writeln!(network, "VLAN={}", v.name);
            }
            if !l.addressed() {
                network.push_str("LinkLocalAddressing=no\n");
            }
            let prefix = match l.kind {
                LinkKind::Nic { .. } => 10,
                LinkKind::Bond { .. } => 20,
                LinkKind::Vlan { .. } => 30,
            };
            files.insert(
                format!("{dir}/{prefix}-stemcell-{}.network", l.name),
                network,
            );
        }
        files
            .into_iter()
            .map(|(path, text)| File { path, text })
            .collect()
    }

    /// The plan for ifupdown: `.link` files that give each NIC its label (udev applies them
    /// before ifupdown runs), and `/etc/network/interfaces`. Bonds need Debian's
    /// `ifenslave` in the installed system; VLANs are named `PARENT.ID`, which ifupdown
    /// creates itself.
    pub(crate) fn ifupdown(&self, nics: &[Nic]) -> Vec<File> {
        let mut files = Vec::new();
        let used =
            |name: &str| self.links.iter().any(|l| l.name == name) || self.bond_of(name).is_some();
        for n in nics.iter().filter(|n| used(&n.name)) {
            files.push(File {
                path: format!("etc/systemd/network/10-stemcell-{}.link", n.name),
                text: format!("# Written by stemcell: this NIC is {} (inventory `interfaces:`).\n[Match]\nPermanentMACAddress={}\n\n[Link]\nName={}\n", n.name, n.mac, n.name),
            });
        }
        let mut t = String::from("# Written by stemcell from the inventory's `network:`.\nsource /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n");
        for l in &self.links {
            if let LinkKind::Bond { members, .. } = &l.kind {
                for mname in members {
                    let _ = write!(
                        t,
                        "\nauto {mname}\niface {mname} inet manual\n    bond-master {}\n",
                        l.name
                    );
                }
            }
            let method = if l.dhcp {
                "dhcp"
            } else if l.addresses.is_empty() {
                "manual"
            } else {
                "static"
            };
            // ifupdown makes a VLAN itself from a PARENT.ID name (its own label is a comment).
            let name = match &l.kind {
                LinkKind::Vlan { id, link } => format!("{link}.{id}"),
                _ => l.name.clone(),
            };
            if name != l.name {
                let _ = write!(t, "\n# {}", l.name);
            }
            let _ = write!(t, "\nauto {name}\niface {name} inet {method}\n");
            if let Some(a) = l.addresses.first() {
                let _ = writeln!(t, "    address {a}");
                if let Some(g) = l.gateway {
                    let _ = writeln!(t, "    gateway {g}");
                }
            }
            if !l.dns.is_empty() {
                let d: Vec<String> = l.dns.iter().map(|d| d.to_string()).collect();
                let _ = writeln!(t, "    dns-nameservers {}", d.join(" "));
            }
            if let Some(mtu) = l.mtu {
                let _ = writeln!(t, "    mtu {mtu}");
            }
            match &l.kind {
                LinkKind::Bond { members, mode } => {
                    let _ = writeln!(
                        t,
                        "    bond-slaves {}\n    bond-mode {}\n    bond-miimon 100",
                        members.join(" "),
                        mode.as_str()
                    );
                    if *mode == BondMode::ActiveBackup {
                        if let Some(first) = members.first() {
                            let _ = writeln!(t, "    bond-primary {first}");
                        }
                    } else {
                        t.push_str("    bond-lacp-rate fast\n    bond-xmit-hash-policy layer3+4\n");
                    }
                }
                LinkKind::Vlan { .. } | LinkKind::Nic { .. } => {}
            }
            for a in l.addresses.iter().skip(1) {
                let _ = writeln!(t, "    up ip addr add {a} dev {name}");
            }
        }
        files.push(File {
            path: "etc/network/interfaces".into(),
            text: t,
        });
        files
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(yaml: &str) -> Result<(Vec<Nic>, Option<Plan>), String> {
        let node = crate::yaml::parse(Path::new("inv.yaml"), yaml).map_err(|e| e.to_string())?;
        let mut r = Report::new(Path::new("inv.yaml"));
        let mut top = r.map(&node, "top").unwrap();
        let key: MacAddr = "52:54:00:00:00:01".parse().unwrap();
        let nics = top
            .get("interfaces")
            .map(|n| read_interfaces(&mut r, n, key, Pos { line: 1, col: 1 }))
            .unwrap_or_default();
        let plan = top
            .get("network")
            .and_then(|n| read_network(&mut r, n, &nics, "machine network"));
        r.finish((nics, plan)).map_err(|e| e.to_string())
    }

    const NICS: &str = "interfaces: {eno1: 52:54:00:00:00:01, eno2: \"52-54-00-00-00-02\", eno3: 5254.0000.0003}\n";

    #[test]
    fn bond_with_dhcp_and_a_vlan_with_a_static_address() {
        let (nics, plan) = parse(&format!("{NICS}network:\n  bond0: {{bond: [eno2, eno1], mode: 802.3ad, dhcp: true}}\n  storage: {{vlan: 20, link: bond0, address: 198.18.20.5/24, gateway: 198.18.20.1, dns: [198.18.20.1], mtu: 9000}}\n  eno3: {{address: [198.18.30.5/24, 198.18.31.5/24]}}\n")).unwrap();
        assert_eq!(nics.len(), 3);
        let plan = plan.unwrap();
        let files = plan.networkd(&nics);
        let get = |p: &str| {
            files
                .iter()
                .find(|f| f.path.ends_with(p))
                .unwrap_or_else(|| panic!("{p} in {files:#?}"))
                .text
                .clone()
        };
        let netdev = get("20-stemcell-bond0.netdev");
        assert!(
            netdev.contains("Kind=bond") && netdev.contains("Mode=802.3ad"),
            "{netdev}"
        );
        assert!(
            netdev.contains("MACAddress=52:54:00:00:00:02"),
            "the first member's MAC: {netdev}"
        );
        let eno1 = get("10-stemcell-eno1.network");
        assert!(
            eno1.contains("PermanentMACAddress=52:54:00:00:00:01") && eno1.contains("Bond=bond0"),
            "{eno1}"
        );
        let bond = get("20-stemcell-bond0.network");
        assert!(
            bond.contains("Name=bond0")
                && bond.contains("DHCP=ipv4")
                && bond.contains("VLAN=storage"),
            "{bond}"
        );
        let vlan = get("30-stemcell-storage.network");
        assert!(
            vlan.contains("Address=198.18.20.5/24")
                && vlan.contains("Gateway=198.18.20.1")
                && vlan.contains("DNS=198.18.20.1"),
            "{vlan}"
        );
        assert!(get("30-stemcell-storage.netdev").contains("Id=20"));
        assert!(get("30-stemcell-storage.netdev").contains("MTUBytes=9000"));
        let eno3 = get("10-stemcell-eno3.network");
        assert!(
            eno3.contains("Address=198.18.30.5/24\nAddress=198.18.31.5/24"),
            "{eno3}"
        );
        let ifup = plan.ifupdown(&nics);
        let interfaces = &ifup
            .iter()
            .find(|f| f.path == "etc/network/interfaces")
            .unwrap()
            .text;
        assert!(interfaces.contains("iface bond0 inet dhcp") && interfaces.contains("bond-slaves eno2 eno1") && interfaces.contains("# storage\nauto bond0.20\niface bond0.20 inet static\n    address 198.18.20.5/24"), "{interfaces}");
        assert!(ifup
            .iter()
            .any(|f| f.path.ends_with("10-stemcell-eno2.link") && f.text.contains("Name=eno2")));
    }

    #[test]
    fn a_vlan_on_a_bare_nic_gets_its_carrier() {
        let (nics, plan) = parse(&format!(
            "{NICS}network:\n  v7: {{vlan: 7, link: eno1, dhcp: true}}\n"
        ))
        .unwrap();
        let files = plan.unwrap().networkd(&nics);
        let carrier = files
            .iter()
            .find(|f| f.path.ends_with("10-stemcell-eno1.network"))
            .unwrap();
        assert!(
            carrier.text.contains("VLAN=v7") && carrier.text.contains("LinkLocalAddressing=no"),
            "{}",
            carrier.text
        );
    }

    #[test]
    fn mistakes_are_named_with_positions() {
        for (yaml, want) in [
            ("network:\n  bond0: {bond: [eno1, eno9], dhcp: true}\n", "inv.yaml:3:24: machine network.bond0.bond: \"eno9\" is not one of this machine's interfaces"),
            ("network:\n  bond0: {bond: [eno1, eno2], mode: rr, dhcp: true}\n", "\"rr\" is not a bond mode"),
            ("network:\n  bond0: {bond: [eno1], dhcp: true}\n  bond1: {bond: [eno1], dhcp: true}\n", "eno1 is already a member of bond bond0"),
            ("network:\n  bond0: {bond: [eno1], dhcp: true}\n  eno1: {dhcp: true}\n", "eno1 is a bond member, so it cannot have a configuration of its own"),
            ("network:\n  v1: {vlan: 5000, link: eno1, dhcp: true}\n", "5000 is not a VLAN id"),
            ("network:\n  v1: {vlan: 5, link: nope, dhcp: true}\n", "link \"nope\" is neither an interface"),
            ("network:\n  v1: {vlan: 5, dhcp: true}\n", "a VLAN needs `link:`"),
            ("network:\n  eno1: {address: 198.18.0.5}\n", "needs its prefix length"),
            ("network:\n  eno1: {address: 198.18.0.0/24}\n", "is not a host address"),
            ("network:\n  eno1: {address: 198.18.0.5/24, gateway: 198.19.0.1}\n", "198.19.0.1 is not on 198.18.0.0/24"),
            ("network:\n  eno1: {dhcp: true, gateway: 198.19.0.1}\n", "a gateway goes with a static `address`"),
            ("network:\n  eno1: {dchp: true}\n", "dchp"),
            ("network:\n  bond0: {bond: [eno1]}\n", "no link has `dhcp: true` or an `address`"),
            ("network:\n  wlan0: {dhcp: true}\n", "wlan0 is not one of this machine's interfaces"),
        ] {
            let err = parse(&format!("{NICS}{yaml}")).expect_err(yaml);
            assert!(err.contains(want), "{yaml}\nwant {want:?} in:\n{err}");
        }
    }

    #[test]
    fn interfaces_must_be_unique_and_include_the_key() {
        let err = parse("interfaces: {a: 52:54:00:00:00:02, b: 52:54:00:00:00:02}\n").unwrap_err();
        assert!(err.contains("listed twice"), "{err}");
        let err = parse("interfaces: {a: 52:54:00:00:00:02}\n").unwrap_err();
        assert!(err.contains("must be one of its interfaces"), "{err}");
        let err = parse("interfaces: {\"eth 0\": 52:54:00:00:00:01}\n").unwrap_err();
        assert!(err.contains("is not an interface name"), "{err}");
        let err = parse("interfaces: {a: 52:54:00:00:00:01, A: 52:54:00:00:00:03}\n").unwrap_err();
        assert!(err.contains("used twice"), "{err}");
    }
}
