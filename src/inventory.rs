//! The fleet: which MAC is which machine, in which role, with which variables.
//!
//! Owns `inventory.yaml`: parsing with positions, validation (every problem as
//! `file:line:col: message`), the MAC index, and hot reload with last-good fallback. The
//! inventory is intent only; what happened to a machine lives in `state`.
//!
//! Values that reach kernel command lines and shell scripts (hostnames, role names,
//! variables) are limited to safe characters here, at load time, so no template has to
//! remember to quote them: a value cannot contain quotes, `$`, backticks, `;`, `&`, `|`,
//! `<`, `>`, backslashes or newlines.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::dhcp::{Loader, Subnet};
use crate::mac::MacAddr;
use crate::values::{
    cmdline_char, safe_relative, valid_hostname, valid_name, valid_var_name, value_char,
};
use crate::yaml::{self, Kind, Node, Pos, Problems, Report};

mod disk;
mod split;
#[cfg(feature = "fuzzing")]
pub(crate) use disk::legacy_ok as legacy_disk_ok;
pub(crate) use disk::DiskRule;
#[cfg(test)]
pub(crate) use disk::Pick;

/// One entry of `machines:` read on its own (possibly on another thread); the checks
/// across machines are `Seen::add`'s, in file order.
struct Entry {
    /// `None`: the key is not a MAC (the problem is in the entry's problems).
    mac: Option<MacAddr>,
    key_pos: Pos,
    machine: Option<(Machine, Pos)>,
    ip_pos: Option<Pos>,
}

fn read_entry(r: &mut Report, k: &Node, v: &Node, inv: &Inventory, ctx: &Context) -> Entry {
    let mut entry = Entry {
        mac: None,
        key_pos: k.pos,
        machine: None,
        ip_pos: ip_pos_of(v),
    };
    let Some(key) = r.string(k, "a machine's MAC address") else {
        return entry;
    };
    match key.parse::<MacAddr>() {
        Ok(mac) => {
            entry.mac = Some(mac);
            entry.machine = read_machine(r, mac, k.pos, v, inv, ctx);
        }
        Err(e) => r.add(k.pos, e.to_string()),
    }
    entry
}

/// What the machines read so far claimed: every MAC (a machine's key or one of its
/// `interfaces:`), hostname and reserved IP, with where.
#[derive(Default)]
struct Seen {
    hostnames: HashMap<String, Pos>,
    ips: HashMap<Ipv4Addr, Pos>,
    macs: HashMap<MacAddr, (Pos, String)>,
}

impl Seen {
    /// Add the next entry in file order: its problems, unless it repeats an earlier MAC
    /// (then only that is said), and the machine, unless it clashes with an earlier one.
    fn add(&mut self, r: &mut Report, inv: &mut Inventory, e: Entry, problems: Vec<yaml::Problem>) {
        let Some(mac) = e.mac else {
            r.problems.extend(problems);
            return;
        };
        if let Some((first, what)) = self.macs.get(&mac) {
            let how = if what.is_empty() {
                "spelled differently, but the same MAC".to_string()
            } else {
                what.clone()
            };
            r.add(
                e.key_pos,
                format!(
                    "duplicate machine {mac}: already listed at line {}, column {} ({how})",
                    first.line, first.col
                ),
            );
            return;
        }
        self.macs.insert(mac, (e.key_pos, String::new()));
        r.problems.extend(problems);
        let Some((m, host_pos)) = e.machine else {
            return;
        };
        // Every NIC identifies one machine only: a MAC listed for two is an error naming
        // both places.
        let mut clash = false;
        for nic in m.nics.iter().filter(|n| n.mac != mac) {
            if let Some((first, _)) = self.macs.get(&nic.mac) {
                r.add(
                    nic.pos,
                    format!(
                        "{} (interface {} of machine {mac}) is already listed at line {}, column {}: a NIC belongs to one machine",
                        nic.mac, nic.name, first.line, first.col
                    ),
                );
                clash = true;
            } else {
                self.macs.insert(
                    nic.mac,
                    (
                        nic.pos,
                        format!("as interface {} of machine {mac}", nic.name),
                    ),
                );
            }
        }
        if clash {
            return;
        }
        let host = m.hostname.to_ascii_lowercase();
        if let Some(first) = self.hostnames.get(&host) {
            r.add(
                host_pos,
                format!(
                    "duplicate hostname {:?}: already used at line {}, column {}",
                    m.hostname, first.line, first.col
                ),
            );
        } else {
            self.hostnames.insert(host, host_pos);
        }
        if let Some((ip, ip_pos)) = m.ip.zip(e.ip_pos) {
            if let Some(first) = self.ips.get(&ip) {
                r.add(
                    ip_pos,
                    format!(
                        "duplicate reserved IP {ip}: already reserved at line {}, column {}",
                        first.line, first.col
                    ),
                );
            } else {
                self.ips.insert(ip, ip_pos);
            }
        }
        inv.order.push(mac);
        for nic in m.nics.iter().filter(|n| n.mac != mac) {
            inv.aliases.insert(nic.mac, mac);
        }
        inv.machines.insert(mac, m);
    }
}

/// Variables as templates see them.
///
/// A list sorted by name rather than a map: a machine has a handful, and a fleet of
/// 100,000 machines keeps 100,000 of these (a `BTreeMap` spends a 600-byte node on each).
/// Serialized as a mapping, in name order.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Vars(Vec<(String, Value)>);

impl Vars {
    pub(crate) fn new() -> Vars {
        Vars(Vec::new())
    }

    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn get(&self, name: &str) -> Option<&Value> {
        let i = self
            .0
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()?;
        Some(&self.0[i].1)
    }

    /// Set `name`, replacing an earlier value.
    pub(crate) fn insert(&mut self, name: String, value: Value) {
        match self.0.binary_search_by(|(k, _)| k.as_str().cmp(&name)) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => self.0.insert(i, (name, value)),
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub(crate) fn shrink_to_fit(&mut self) {
        self.0.shrink_to_fit();
    }
}

impl<'a> IntoIterator for &'a Vars {
    type Item = (&'a String, &'a Value);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, Value)>,
        fn(&'a (String, Value)) -> (&'a String, &'a Value),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

#[cfg(test)]
impl std::ops::Index<&str> for Vars {
    type Output = Value;

    fn index(&self, name: &str) -> &Value {
        self.get(name).unwrap_or(&Value::Null)
    }
}

impl FromIterator<(String, Value)> for Vars {
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(items: I) -> Vars {
        let mut out = Vars::new();
        for (k, v) in items {
            out.insert(k, v);
        }
        out
    }
}

impl Serialize for Vars {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum UnknownPolicy {
    /// Machines not listed get no boot answer.
    Ignore,
    /// Machines not listed boot into the stem cell, which reports what they are.
    Discover,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Role {
    pub(crate) name: String,
    pub(crate) template: String,
    pub(crate) vars: Vars,
    /// Another kernel than the stem cell's: an http(s) URL or a path under `assets`.
    pub(crate) kernel: Option<String>,
    pub(crate) initrd: Option<String>,
    /// Kernel command line for `kernel` (a template: may use `{{ install_url }}` etc.).
    pub(crate) cmdline: Option<String>,
    /// The OS image the role installs (a spec in the OS folder, built by `os build`).
    pub(crate) os: Option<String>,
    /// A Puppet server to run `puppet agent --onetime` against; without it the role's
    /// manifest from the site's Puppet bundle is applied with `puppet apply`.
    pub(crate) puppet_server: Option<String>,
    #[serde(skip)]
    pub(crate) power: PowerLayer,
    /// Secrets the role's installs may fetch (`/secret/MAC/NAME`), by name.
    pub(crate) secrets: Vec<SecretRef>,
    /// The role's target-disk rule (`disk:`, or its `vars.disk`), if it has one.
    pub(crate) disk: Option<Arc<DiskRule>>,
    /// `loader: ipxe|grub`; `None`: the defaults'.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) loader: Option<Loader>,
}

/// A secret a role declares, and where (for `check`'s messages).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct SecretRef {
    pub(crate) name: String,
    #[serde(skip)]
    pub(crate) pos: crate::yaml::Pos,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Machine {
    pub(crate) mac: MacAddr,
    pub(crate) hostname: String,
    pub(crate) role: String,
    pub(crate) ip: Option<Ipv4Addr>,
    pub(crate) vars: Vars,
    pub(crate) line: usize,
    /// How to reach its BMC (defaults ← role ← machine, resolved at load); never shown.
    /// Boxed: most machines have none, and a fleet keeps one `Machine` per machine.
    #[serde(skip)]
    pub(crate) power: Option<Box<Power>>,
    /// Every NIC (`interfaces:`), the key MAC among them; empty when only the key is known.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) nics: Vec<crate::network::Nic>,
    /// The installed system's network (`network:`); `None`: DHCP on the NIC it booted from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) network: Option<crate::network::Plan>,
    /// Its target-disk rule: its own, else its role's, else the defaults' (resolved at load).
    /// Shared with the role or the defaults it came from.
    pub(crate) disk: Arc<DiskRule>,
}

impl Machine {
    /// Its NICs by label; without `interfaces:`, the key MAC alone, labelled `boot`.
    pub(crate) fn labelled_nics(&self) -> Vec<crate::network::Nic> {
        let pos = Pos {
            line: self.line,
            col: 1,
        };
        crate::network::labelled(&self.nics, self.mac, pos)
    }

    /// Every MAC of this machine: its NICs, or its key alone.
    pub(crate) fn macs(&self) -> Vec<MacAddr> {
        if self.nics.is_empty() {
            vec![self.mac]
        } else {
            self.nics.iter().map(|n| n.mac).collect()
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Defaults {
    pub(crate) unknown: UnknownPolicy,
    pub(crate) vars: Vars,
    #[serde(skip)]
    pub(crate) power: PowerLayer,
    pub(crate) disk: Option<Arc<DiskRule>>,
    /// `defaults.loader`: the site's network loader (iPXE unless it says grub).
    pub(crate) loader: Loader,
}

/// Which protocol a BMC speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PowerDriver {
    /// IPMI 2.0 over LAN (RMCP+, `lanplus`).
    Ipmi,
    Redfish,
}

/// The machine's firmware, for "next boot from the network" (IPMI's EFI boot flag).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Firmware {
    Uefi,
    Bios,
}

/// A machine's BMC, resolved from defaults, role and machine. The password is not here:
/// it is read from `password_file` at each call and never stored or shown.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Power {
    pub(crate) driver: PowerDriver,
    /// A host name or an IP address.
    pub(crate) address: String,
    pub(crate) port: Option<u16>,
    pub(crate) username: String,
    pub(crate) password_file: PathBuf,
    /// Where `password_file` was set, for `check`'s messages.
    #[serde(skip)]
    pub(crate) password_file_pos: Pos,
    pub(crate) firmware: Firmware,
    /// Redfish: `https` (the default) or `http`.
    pub(crate) scheme: String,
    /// Redfish over https: a PEM file of the CAs that sign the BMC's certificate.
    pub(crate) ca_file: Option<PathBuf>,
    /// Redfish over https: do not verify the BMC's certificate (set explicitly, per BMC).
    pub(crate) insecure: bool,
    /// Redfish: the member of /redfish/v1/Systems (default: the only one).
    pub(crate) system: Option<String>,
}

/// One level's `power:` block: every key optional, later levels replace earlier ones.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct PowerLayer {
    driver: Option<PowerDriver>,
    address: Option<String>,
    port: Option<u16>,
    username: Option<String>,
    password_file: Option<(PathBuf, Pos)>,
    firmware: Option<Firmware>,
    scheme: Option<String>,
    ca_file: Option<PathBuf>,
    insecure: Option<bool>,
    system: Option<String>,
}

impl PowerLayer {
    fn over(&self, top: &PowerLayer) -> PowerLayer {
        PowerLayer {
            driver: top.driver.or(self.driver),
            address: top.address.clone().or_else(|| self.address.clone()),
            port: top.port.or(self.port),
            username: top.username.clone().or_else(|| self.username.clone()),
            password_file: top
                .password_file
                .clone()
                .or_else(|| self.password_file.clone()),
            firmware: top.firmware.or(self.firmware),
            scheme: top.scheme.clone().or_else(|| self.scheme.clone()),
            ca_file: top.ca_file.clone().or_else(|| self.ca_file.clone()),
            insecure: top.insecure.or(self.insecure),
            system: top.system.clone().or_else(|| self.system.clone()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Inventory {
    pub(crate) file: PathBuf,
    pub(crate) defaults: Defaults,
    pub(crate) roles: BTreeMap<String, Role>,
    pub(crate) machines: HashMap<MacAddr, Machine>,
    /// MACs in file order.
    pub(crate) order: Vec<MacAddr>,
    /// A machine's other NICs → its key MAC.
    #[serde(skip)]
    pub(crate) aliases: HashMap<MacAddr, MacAddr>,
}

/// A machine for unit tests elsewhere in the crate.
#[cfg(test)]
pub(crate) fn test_machine(mac: &str, hostname: &str, role: &str) -> Machine {
    Machine {
        mac: mac.parse().expect("a MAC"),
        hostname: hostname.into(),
        role: role.into(),
        ip: None,
        vars: Vars::new(),
        line: 1,
        power: None,
        nics: Vec::new(),
        network: None,
        disk: Arc::new(DiskRule::default_rule()),
    }
}

/// What validation needs from the server config.
#[derive(Clone, Debug, Default)]
pub(crate) struct Context {
    pub(crate) kickstarts: PathBuf,
    /// The OS spec folder: a role's `os:` must name a spec there.
    pub(crate) os_specs: PathBuf,
    pub(crate) subnets: Vec<Subnet>,
}

impl Inventory {
    pub(crate) fn empty(file: &Path) -> Inventory {
        Inventory {
            file: file.to_path_buf(),
            defaults: Defaults {
                unknown: UnknownPolicy::Ignore,
                vars: Vars::new(),
                power: PowerLayer::default(),
                disk: None,
                loader: Loader::Ipxe,
            },
            roles: BTreeMap::new(),
            machines: HashMap::new(),
            order: Vec::new(),
            aliases: HashMap::new(),
        }
    }

    pub(crate) fn load(path: &Path, ctx: &Context) -> Result<Inventory, Problems> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Problems(vec![yaml::Problem {
                file: path.to_path_buf(),
                pos: Pos { line: 1, col: 1 },
                message: format!("cannot read the inventory: {e}"),
            }])
        })?;
        Inventory::parse(path, &text, ctx)
    }

    pub(crate) fn parse(path: &Path, text: &str, ctx: &Context) -> Result<Inventory, Problems> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Inventory::parse_split(path, text, ctx, split::MIN_SPLIT_BYTES, threads)
    }

    /// `parse`, reading a `machines:` section of `min_bytes` or more in pieces on `threads`
    /// threads (`split`).
    fn parse_split(
        path: &Path,
        text: &str,
        ctx: &Context,
        min_bytes: usize,
        threads: usize,
    ) -> Result<Inventory, Problems> {
        if let Some(cut) = split::split(text, min_bytes, threads * 4) {
            // The header must read as YAML with `machines:` where the cut saw it (not, say,
            // inside a multi-line scalar), and an inventory with any problem is read again
            // whole: the problems are then exactly the ones the whole file gives.
            let root = yaml::parse(path, &cut.header)
                .ok()
                .filter(|root| split::section_is_where_cut(root, cut.key_line));
            if let Some(root) = root {
                let read =
                    Inventory::from_tree(path, text, &root, Some((&cut.pieces, threads)), ctx);
                if read.is_ok() {
                    return read;
                }
            }
        }
        Inventory::parse_whole(path, text, ctx)
    }

    /// The inventory read in pieces wherever `split` can cut it (however small), and read
    /// whole: for the fuzzer, which checks the two agree.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn parse_both_ways(
        path: &Path,
        text: &str,
        ctx: &Context,
    ) -> (Result<Inventory, Problems>, Result<Inventory, Problems>) {
        (
            Inventory::parse_split(path, text, ctx, 0, 2),
            Inventory::parse_whole(path, text, ctx),
        )
    }

    /// `parse` without the split: for files `split` does not cut, and for the ordinary
    /// error when a piece does not parse.
    fn parse_whole(path: &Path, text: &str, ctx: &Context) -> Result<Inventory, Problems> {
        Inventory::from_tree(path, text, &yaml::parse(path, text)?, None, ctx)
    }

    /// The inventory from its parsed tree; `pieces`: the `machines:` section's entries,
    /// still to be parsed (the tree has the section empty), and the threads to use.
    fn from_tree(
        path: &Path,
        text: &str,
        root: &Node,
        pieces: Option<(&[(usize, &str)], usize)>,
        ctx: &Context,
    ) -> Result<Inventory, Problems> {
        let mut r = Report::new(path);
        let mut inv = Inventory::empty(path);
        let Some(mut top) = r.map(root, "the inventory") else {
            return Err(r.finish(()).unwrap_err());
        };

        if let Some(n) = top.get("defaults") {
            if let Some(mut d) = r.map(n, "defaults") {
                if let Some(u) = d.get("unknown") {
                    match u.as_str() {
                        Some("ignore") => inv.defaults.unknown = UnknownPolicy::Ignore,
                        Some("discover") => inv.defaults.unknown = UnknownPolicy::Discover,
                        _ => r.add(u.pos, "defaults.unknown must be ignore or discover"),
                    }
                }
                if let Some(v) = d.get("vars") {
                    inv.defaults.vars = read_vars(&mut r, v, "defaults.vars");
                }
                if let Some(p) = d.get("power") {
                    inv.defaults.power = read_power(&mut r, p, "defaults.power");
                }
                let (dk, vs) = (d.get("disk"), d.get("vars"));
                inv.defaults.disk = disk::read_level(&mut r, dk, vs, "defaults").map(Arc::new);
                if let Some(l) = read_loader(&mut r, d.get("loader"), "defaults.loader") {
                    inv.defaults.loader = l;
                }
                d.deny_unknown(
                    &mut r,
                    "defaults",
                    &["unknown", "vars", "power", "disk", "loader"],
                );
            }
        }

        if let Some(n) = top.get("roles") {
            if let Some(mut roles) = r.map(n, "roles") {
                for (k, v) in roles.entries() {
                    let Some(name) = r.string(k, "a role name") else {
                        continue;
                    };
                    if !valid_name(&name) {
                        r.add(
                            k.pos,
                            format!("role name {name:?} must be 1-63 letters, digits, - or _"),
                        );
                        continue;
                    }
                    if let Some(role) = read_role(&mut r, &name, v, ctx) {
                        inv.roles.insert(name, role);
                    }
                }
            }
        }

        let mut seen = Seen::default();
        if let Some((pieces, threads)) = pieces {
            // In the header the section is empty; its entries are in the pieces.
            top.get("machines");
            let read = |r: &mut Report, k: &Node, v: &Node| read_entry(r, k, v, &inv, ctx);
            let Some(pieces) = split::read_pieces(path, pieces, threads, &read) else {
                return Inventory::parse_whole(path, text, ctx);
            };
            for entry in pieces.into_iter().flatten() {
                seen.add(&mut r, &mut inv, entry.value, entry.problems);
            }
        } else if let Some(n) = top.get("machines") {
            if let Some(mut ms) = r.map(n, "machines") {
                for (k, v) in ms.entries() {
                    let before = r.problems.len();
                    let entry = read_entry(&mut r, k, v, &inv, ctx);
                    let problems = r.problems.split_off(before);
                    seen.add(&mut r, &mut inv, entry, problems);
                }
            }
        }
        top.deny_unknown(&mut r, "the inventory", &["defaults", "roles", "machines"]);
        r.finish(inv)
    }

    /// The machine with this MAC: its key, or any NIC it lists.
    pub(crate) fn machine(&self, mac: &MacAddr) -> Option<&Machine> {
        self.machines
            .get(mac)
            .or_else(|| self.machines.get(self.aliases.get(mac)?))
    }

    /// The MAC a machine is known by (its key) for any of its NICs; an unlisted MAC is
    /// its own.
    pub(crate) fn id(&self, mac: MacAddr) -> MacAddr {
        self.aliases.get(&mac).copied().unwrap_or(mac)
    }

    pub(crate) fn role_of(&self, m: &Machine) -> Option<&Role> {
        self.roles.get(&m.role)
    }

    /// The network loader a machine (or, for `None`, an unknown one) runs: its role's,
    /// else the defaults'.
    pub(crate) fn loader_of(&self, m: Option<&Machine>) -> Loader {
        m.and_then(|m| self.role_of(m))
            .and_then(|r| r.loader)
            .unwrap_or(self.defaults.loader)
    }

    /// Whether any machine could be handed GRUB (the defaults or a role say so).
    pub(crate) fn uses_grub(&self) -> bool {
        self.defaults.loader == Loader::Grub
            || self.roles.values().any(|r| r.loader == Some(Loader::Grub))
    }

    /// Variables as a template sees them: defaults ← role ← machine (a later level
    /// replaces an earlier one key by key).
    pub(crate) fn merged_vars(&self, m: &Machine) -> Vars {
        let mut out = self.defaults.vars.clone();
        if let Some(role) = self.role_of(m) {
            for (k, v) in &role.vars {
                out.insert(k.clone(), v.clone());
            }
        }
        for (k, v) in &m.vars {
            out.insert(k.clone(), v.clone());
        }
        out
    }
}

fn ip_pos_of(machine_node: &Node) -> Option<Pos> {
    if let Kind::Map(entries) = &machine_node.kind {
        entries
            .iter()
            .find(|(k, _)| k.as_str() == Some("ip"))
            .map(|(_, v)| v.pos)
    } else {
        None
    }
}

fn read_role(r: &mut Report, name: &str, node: &Node, ctx: &Context) -> Option<Role> {
    let mut m = r.map(node, &format!("role {name:?}"))?;
    let template = match m.get("template") {
        Some(t) => {
            let s = r.string(t, "template")?;
            if !safe_relative(&s) {
                r.add(t.pos, format!("template {s:?} must be a file name inside the kickstarts folder (letters, digits, . _ - /; no ..)"));
                None
            } else if !ctx.kickstarts.join(&s).is_file() {
                r.add(
                    t.pos,
                    format!(
                        "role {name:?}: template {s:?} does not exist in {}",
                        ctx.kickstarts.display()
                    ),
                );
                None
            } else {
                Some(s)
            }
        }
        None => {
            r.add(
                node.pos,
                format!("role {name:?} needs `template:` (a file in the kickstarts folder)"),
            );
            None
        }
    };
    let vars = m
        .get("vars")
        .map(|v| read_vars(r, v, &format!("role {name:?} vars")))
        .unwrap_or_default();
    let mut location = |r: &mut Report, key: &str| -> Option<String> {
        let n = m.get(key)?;
        let s = r.string(n, key)?;
        let ok = if s.starts_with("http://") || s.starts_with("https://") {
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-:/~%?=&+@".contains(c))
        } else {
            safe_relative(&s)
        };
        if !ok {
            r.add(n.pos, format!("role {name:?}: {key} {s:?} must be an http(s) URL or a file path inside the assets folder"));
            return None;
        }
        Some(s)
    };
    let kernel = location(r, "kernel");
    let initrd = location(r, "initrd");
    let cmdline = m.get("cmdline").and_then(|n| {
        let s = r.string(n, "cmdline")?;
        // `;` too, for cloud-init's `ds=nocloud;s=URL`: written here by the operator, it is
        // the only way one reaches a command line (values cannot hold one).
        if let Some(bad) = s.chars().find(|c| !cmdline_char(*c) && !"{};".contains(*c)) {
            r.add(n.pos, format!("role {name:?}: cmdline contains {bad:?}; allowed are letters, digits, spaces, . _ - : / = , + @ % ? ; and {{{{ variable }}}} placeholders"));
            return None;
        }
        Some(s)
    });
    let os = m.get("os").and_then(|n| {
        let s = r.string(n, "os")?;
        if !valid_name(&s) {
            r.add(n.pos, format!("role {name:?}: os {s:?} must be a name of letters, digits, - and _ (a spec NAME.yaml in the OS folder)"));
            return None;
        }
        if !ctx.os_specs.join(format!("{s}.yaml")).is_file() {
            r.add(
                n.pos,
                format!(
                    "role {name:?}: os {s:?} is not declared: there is no {}",
                    ctx.os_specs.join(format!("{s}.yaml")).display()
                ),
            );
            return None;
        }
        Some(s)
    });
    let puppet_server = m.get("puppet_server").and_then(|n| {
        let s = r.string(n, "puppet_server")?;
        if !valid_hostname(&s) {
            r.add(
                n.pos,
                format!("role {name:?}: puppet_server {s:?} is not a host name"),
            );
            return None;
        }
        Some(s)
    });
    let power = m
        .get("power")
        .map(|p| read_power(r, p, &format!("role {name:?} power")))
        .unwrap_or_default();
    let mut secrets: Vec<SecretRef> = Vec::new();
    if let Some(n) = m.get("secrets") {
        for item in r
            .list(n, &format!("role {name:?} secrets"))
            .unwrap_or_default()
        {
            let Some(s) = r.string(item, "a secret name") else {
                continue;
            };
            if !crate::secrets::valid_name(&s) {
                r.add(item.pos, format!("role {name:?}: secret {s:?} must be a name of letters, digits, . _ - (a letter or digit first, at most 64): a file in the secrets folder"));
            } else if secrets.iter().any(|x| x.name == s) {
                r.add(
                    item.pos,
                    format!("role {name:?}: secret {s:?} is listed twice"),
                );
            } else {
                secrets.push(SecretRef {
                    name: s,
                    pos: item.pos,
                });
            }
        }
    }
    let (dk, vs) = (m.get("disk"), m.get("vars"));
    let disk = disk::read_level(r, dk, vs, &format!("role {name:?}"));
    let loader = read_loader(r, m.get("loader"), &format!("role {name:?} loader"));
    if (initrd.is_some() || cmdline.is_some()) && kernel.is_none() {
        r.add(
            node.pos,
            format!("role {name:?}: initrd and cmdline need a kernel too"),
        );
    }
    m.deny_unknown(
        r,
        &format!("role {name:?}"),
        &[
            "template",
            "vars",
            "kernel",
            "initrd",
            "cmdline",
            "os",
            "puppet_server",
            "power",
            "secrets",
            "disk",
            "loader",
        ],
    );
    Some(Role {
        name: name.to_string(),
        template: template?,
        vars,
        kernel,
        initrd,
        cmdline,
        os,
        puppet_server,
        power,
        secrets,
        disk: disk.map(Arc::new),
        loader,
    })
}

/// `loader: ipxe|grub`.
fn read_loader(r: &mut Report, n: Option<&Node>, what: &str) -> Option<Loader> {
    let n = n?;
    let l = n.as_str().and_then(Loader::parse);
    if l.is_none() {
        r.add(
            n.pos,
            format!("{what} must be ipxe or grub (grub: shim and GRUB for UEFI and Secure Boot)"),
        );
    }
    l
}

fn read_machine(
    r: &mut Report,
    mac: MacAddr,
    key_pos: Pos,
    node: &Node,
    inv: &Inventory,
    ctx: &Context,
) -> Option<(Machine, Pos)> {
    let roles = &inv.roles;
    let mut m = r.map(node, &format!("machine {mac}"))?;
    let (hostname, host_pos) = match m.get("hostname") {
        Some(n) => {
            let s = r.string(n, "hostname")?;
            if !valid_hostname(&s) {
                r.add(n.pos, format!("hostname {s:?} is not a valid hostname: letters, digits and - in dot-separated labels of 1-63 characters, not starting or ending with -"));
                return None;
            }
            (s, n.pos)
        }
        None => (format!("mac-{}", mac.hex()), key_pos),
    };
    let role = match m.get("role") {
        Some(n) => {
            let s = r.string(n, "role")?;
            if !roles.contains_key(&s) {
                let names: Vec<&str> = roles.keys().map(String::as_str).collect();
                let hint = yaml::suggestion(&s, &names)
                    .map(|x| format!(" (did you mean {x:?}?)"))
                    .unwrap_or_default();
                r.add(
                    n.pos,
                    format!(
                        "machine {mac}: unknown role {s:?}{hint}; roles defined: {}",
                        if names.is_empty() {
                            "none".to_string()
                        } else {
                            names.join(", ")
                        }
                    ),
                );
                return None;
            }
            s
        }
        None => {
            r.add(node.pos, format!("machine {mac} needs `role:`"));
            return None;
        }
    };
    let ip = m.get("ip").and_then(|n| {
        let ip = r.parsed::<Ipv4Addr>(n, "ip", "an IPv4 address")?;
        if !ctx.subnets.is_empty() {
            match ctx.subnets.iter().find(|s| s.net.contains(ip)) {
                None => {
                    let nets: Vec<String> = ctx.subnets.iter().map(|s| s.net.to_string()).collect();
                    r.add(n.pos, format!("machine {mac}: reserved IP {ip} is outside every configured subnet ({})", nets.join(", ")));
                    return None;
                }
                Some(s) if s.in_pool(ip) => {
                    r.add(n.pos, format!("machine {mac}: reserved IP {ip} is inside the dynamic pool {}-{} of {}; reserve an address outside the pool", s.pool_start, s.pool_end, s.net));
                    return None;
                }
                Some(s) if ip == s.net.network() || ip == s.net.broadcast() => {
                    r.add(n.pos, format!("machine {mac}: reserved IP {ip} is not a host address of {}", s.net));
                    return None;
                }
                Some(_) => {}
            }
        }
        Some(ip)
    });
    let vars = m
        .get("vars")
        .map(|v| read_vars(r, v, &format!("machine {mac} vars")))
        .unwrap_or_default();
    let own_power = m
        .get("power")
        .map(|p| (p.pos, read_power(r, p, &format!("machine {mac} power"))));
    let layered = inv
        .defaults
        .power
        .over(
            &roles
                .get(&role)
                .map(|x| x.power.clone())
                .unwrap_or_default(),
        )
        .over(&own_power.as_ref().map(|p| p.1.clone()).unwrap_or_default());
    let power = resolve_power(r, mac, own_power.map(|p| p.0).unwrap_or(key_pos), layered);
    let (dk, vs) = (m.get("disk"), m.get("vars"));
    let own_disk = disk::read_level(r, dk, vs, &format!("machine {mac}"));
    let disk = disk::resolve(
        inv.defaults.disk.as_ref(),
        roles.get(&role).and_then(|x| x.disk.as_ref()),
        own_disk,
    );
    let nics = m
        .get("interfaces")
        .map(|n| crate::network::read_interfaces(r, n, mac, key_pos))
        .unwrap_or_default();
    let network = m.get("network").and_then(|n| {
        let known = crate::network::labelled(&nics, mac, key_pos);
        crate::network::read_network(r, n, &known, &format!("machine {mac} network"))
    });
    m.deny_unknown(
        r,
        &format!("machine {mac}"),
        &[
            "hostname",
            "role",
            "ip",
            "vars",
            "power",
            "interfaces",
            "network",
            "disk",
        ],
    );
    Some((
        Machine {
            mac,
            hostname,
            role,
            ip,
            vars,
            line: key_pos.line,
            power: power.map(Box::new),
            nics,
            network,
            disk,
        },
        host_pos,
    ))
}

const POWER_KEYS: &[&str] = &[
    "driver",
    "address",
    "port",
    "username",
    "password_file",
    "firmware",
    "scheme",
    "ca_file",
    "insecure",
    "system",
];

/// One `power:` block; `what` names it in messages (`defaults.power`, `machine … power`).
fn read_power(r: &mut Report, node: &Node, what: &str) -> PowerLayer {
    let mut out = PowerLayer::default();
    let Some(mut m) = r.map(node, what) else {
        return out;
    };
    if let Some(n) = m.get("driver") {
        match n.as_str() {
            Some("ipmi") => out.driver = Some(PowerDriver::Ipmi),
            Some("redfish") => out.driver = Some(PowerDriver::Redfish),
            _ => r.add(n.pos, format!("{what}.driver must be ipmi or redfish")),
        }
    }
    if let Some(n) = m.get("address") {
        if let Some(s) = r.string(n, &format!("{what}.address")) {
            if s.parse::<std::net::IpAddr>().is_ok() || valid_hostname(&s) {
                out.address = Some(s);
            } else {
                r.add(
                    n.pos,
                    format!("{what}.address {s:?} is not a host name or an IP address"),
                );
            }
        }
    }
    if let Some(n) = m.get("port") {
        match r.parsed::<u16>(n, &format!("{what}.port"), "a port number (1-65535)") {
            Some(0) => r.add(n.pos, format!("{what}.port must be 1-65535")),
            p => out.port = p,
        }
    }
    if let Some(n) = m.get("username") {
        if let Some(s) = r.string(n, &format!("{what}.username")) {
            // ipmitool takes it as an argument and Redfish in a header: printable, no
            // spaces, no shell or header metacharacters, at most 64 bytes.
            if s.is_empty()
                || s.len() > 64
                || !s
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-@+".contains(c))
            {
                r.add(
                    n.pos,
                    format!("{what}.username {s:?} must be 1-64 letters, digits or . _ - @ +"),
                );
            } else {
                out.username = Some(s);
            }
        }
    }
    let mut path = |r: &mut Report, key: &str| -> Option<(PathBuf, Pos)> {
        let n = m.get(key)?;
        let s = r.string(n, &format!("{what}.{key}"))?;
        if !s.starts_with('/') {
            r.add(
                n.pos,
                format!("{what}.{key} {s:?} must be an absolute path"),
            );
            return None;
        }
        Some((PathBuf::from(s), n.pos))
    };
    out.password_file = path(r, "password_file");
    out.ca_file = path(r, "ca_file").map(|p| p.0);
    if let Some(n) = m.get("firmware") {
        match n.as_str() {
            Some("uefi") => out.firmware = Some(Firmware::Uefi),
            Some("bios") => out.firmware = Some(Firmware::Bios),
            _ => r.add(n.pos, format!("{what}.firmware must be uefi or bios")),
        }
    }
    if let Some(n) = m.get("scheme") {
        match n.as_str() {
            Some(s @ ("https" | "http")) => out.scheme = Some(s.to_string()),
            _ => r.add(n.pos, format!("{what}.scheme must be https or http")),
        }
    }
    if let Some(n) = m.get("insecure") {
        out.insecure = r.boolean(n, &format!("{what}.insecure"));
    }
    if let Some(n) = m.get("system") {
        if let Some(s) = r.string(n, &format!("{what}.system")) {
            if valid_name(&s) {
                out.system = Some(s);
            } else {
                r.add(n.pos, format!("{what}.system {s:?} must be 1-63 letters, digits, - or _ (a member of /redfish/v1/Systems)"));
            }
        }
    }
    m.deny_unknown(r, what, POWER_KEYS);
    out
}

/// A machine's merged `power:` settings as a BMC to call, or `None` when it has no
/// address (defaults and roles may set everything else for machines that add one).
fn resolve_power(r: &mut Report, mac: MacAddr, pos: Pos, l: PowerLayer) -> Option<Power> {
    let address = l.address?;
    let mut missing = Vec::new();
    if l.driver.is_none() {
        missing.push("driver");
    }
    if l.username.is_none() {
        missing.push("username");
    }
    if l.password_file.is_none() {
        missing.push("password_file");
    }
    if !missing.is_empty() {
        r.add(
            pos,
            format!(
                "machine {mac} power: needs {} (here, in its role or in defaults)",
                missing.join(", ")
            ),
        );
        return None;
    }
    let driver = l.driver?;
    let scheme = l.scheme.clone().unwrap_or_else(|| "https".into());
    let insecure = l.insecure.unwrap_or(false);
    if driver == PowerDriver::Redfish && scheme == "https" && l.ca_file.is_none() && !insecure {
        r.add(pos, format!("machine {mac} power: a Redfish BMC over https needs ca_file (the CA that signs its certificate) or an explicit insecure: true"));
        return None;
    }
    if driver == PowerDriver::Ipmi
        && (l.ca_file.is_some() || l.insecure.is_some() || l.scheme.is_some() || l.system.is_some())
    {
        r.add(
            pos,
            format!("machine {mac} power: ca_file, insecure, scheme and system are for redfish, not ipmi"),
        );
        return None;
    }
    let (password_file, password_file_pos) = l.password_file?;
    Some(Power {
        driver,
        address,
        port: l.port,
        username: l.username?,
        password_file,
        password_file_pos,
        firmware: l.firmware.unwrap_or(Firmware::Uefi),
        scheme,
        ca_file: l.ca_file,
        insecure,
        system: l.system,
    })
}

fn read_vars(r: &mut Report, node: &Node, what: &str) -> Vars {
    let mut out = Vars::new();
    let Some(mut m) = r.map(node, what) else {
        return out;
    };
    for (k, v) in m.entries() {
        let Some(name) = r.string(k, "a variable name") else {
            continue;
        };
        if !valid_var_name(&name) {
            r.add(k.pos, format!("variable name {name:?} must start with a letter or _ and hold only letters, digits and _"));
            continue;
        }
        if let Some(value) = read_value(r, v, &name, 0) {
            out.insert(name, value);
        }
    }
    out.shrink_to_fit();
    out
}

fn read_value(r: &mut Report, node: &Node, name: &str, depth: usize) -> Option<Value> {
    if depth > 8 {
        r.add(
            node.pos,
            format!("variable {name:?} nests deeper than 8 levels"),
        );
        return None;
    }
    match &node.kind {
        Kind::Null => Some(Value::Null),
        Kind::Scalar { text, quoted } => {
            if let Some(bad) = text.chars().find(|c| !value_char(*c)) {
                r.add(node.pos, format!("variable {name:?}: {bad:?} is not allowed in values that reach scripts; allowed are letters, digits, spaces and . _ - : / @ + = , % ~ ^ * # [ ] ( ) !"));
                return None;
            }
            if !quoted {
                if let Ok(i) = text.parse::<i64>() {
                    return Some(Value::from(i));
                }
                match text.as_str() {
                    "true" => return Some(Value::Bool(true)),
                    "false" => return Some(Value::Bool(false)),
                    _ => {}
                }
            }
            Some(Value::String(text.clone()))
        }
        Kind::Seq(items) => Some(Value::Array(
            items
                .iter()
                .filter_map(|i| read_value(r, i, name, depth + 1))
                .collect(),
        )),
        Kind::Map(entries) => {
            let mut out = serde_json::Map::new();
            for (k, v) in entries {
                let Some(key) = k.as_str().filter(|s| valid_var_name(s)) else {
                    r.add(
                        k.pos,
                        format!("keys inside variable {name:?} must be letters, digits and _"),
                    );
                    continue;
                };
                if let Some(val) = read_value(r, v, name, depth + 1) {
                    out.insert(key.to_string(), val);
                }
            }
            Some(Value::Object(out))
        }
    }
}

/// How the inventory loaded last, for the API and the page.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Status {
    pub(crate) file: PathBuf,
    /// Seconds since the epoch of the last good load.
    pub(crate) loaded_at: Option<u64>,
    pub(crate) machines: usize,
    pub(crate) roles: usize,
    /// The current problem (the last edit was invalid and is not in use), if any.
    pub(crate) error: Option<String>,
    pub(crate) reloads: u64,
    pub(crate) reload_errors: u64,
}

/// The inventory in use, swapped whole on a good reload.
pub(crate) struct Live {
    current: RwLock<Arc<Inventory>>,
    status: RwLock<Status>,
    ctx: Context,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Live {
    pub(crate) fn new(inv: Inventory, ctx: Context) -> Live {
        let status = Status {
            file: inv.file.clone(),
            loaded_at: Some(unix_now()),
            machines: inv.machines.len(),
            roles: inv.roles.len(),
            ..Status::default()
        };
        Live {
            current: RwLock::new(Arc::new(inv)),
            status: RwLock::new(status),
            ctx,
        }
    }

    pub(crate) fn get(&self) -> Arc<Inventory> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn status(&self) -> Status {
        self.status
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Load the file again: a good file replaces the inventory; a bad one is kept as the
    /// current error and the last good inventory stays.
    pub(crate) fn reload(&self) -> Result<(), Problems> {
        let path = self.get().file.clone();
        let result = Inventory::load(&path, &self.ctx);
        let mut st = self.status.write().unwrap_or_else(|e| e.into_inner());
        st.reloads += 1;
        match result {
            Ok(inv) => {
                st.loaded_at = Some(unix_now());
                st.machines = inv.machines.len();
                st.roles = inv.roles.len();
                st.error = None;
                drop(st);
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(inv);
                Ok(())
            }
            Err(p) => {
                st.reload_errors += 1;
                st.error = Some(p.to_string());
                Err(p)
            }
        }
    }

    /// Poll the file (cheap `stat`) and reload when its identity, size or time changes.
    /// Polling sees every kind of edit — in place, or an editor's write-and-rename — and
    /// needs nothing from the platform.
    pub(crate) async fn watch(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let path = self.get().file.clone();
        let mut last = fingerprint(&path);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let now = fingerprint(&path);
            if now == last {
                continue;
            }
            last = now;
            if now.is_none() {
                let msg = format!(
                    "{}: the inventory file is gone; still serving the last good inventory",
                    path.display()
                );
                tracing::warn!(file = %path.display(), "inventory file is gone; keeping the last good inventory");
                let mut st = self.status.write().unwrap_or_else(|e| e.into_inner());
                st.error = Some(msg);
                continue;
            }
            let me = self.clone();
            match tokio::task::spawn_blocking(move || me.reload()).await {
                Ok(Ok(())) => {
                    let inv = self.get();
                    tracing::info!(file = %path.display(), machines = inv.machines.len(), roles = inv.roles.len(), "inventory reloaded");
                }
                Ok(Err(p)) => {
                    tracing::warn!(error = %p, "inventory edit is invalid; still serving the last good inventory");
                }
                Err(e) => tracing::error!(error = %e, "inventory reload task failed"),
            }
        }
    }
}

#[cfg(unix)]
fn fingerprint(path: &Path) -> Option<(u64, u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Files the fuzzer (and reasoning) found where the header alone reads differently
    /// from the whole file: each gives the whole file's answer.
    #[test]
    fn odd_files_read_in_pieces_give_the_whole_files_answer() {
        let ctx = Context::default();
        let path = Path::new("inventory.yaml");
        for text in [
            // A root block scalar, and a NUL inside the section.
            "|\n\n# x\nroles:\n  web: {}\nmachines:\n  \"52:54:00:12:34:56\":\n    \0ip: 1\n",
            // `machines:` inside a multi-line quoted scalar of the defaults.
            "defaults:\n  vars: { a: \"x\nmachines:\n  52:54:00:00:00:01: { hostname: y }\n\" }\n",
        ] {
            let whole = Inventory::parse_whole(path, text, &ctx).map(|i| i.order);
            let pieces = Inventory::parse_split(path, text, &ctx, 0, 2).map(|i| i.order);
            assert_eq!(format!("{whole:?}"), format!("{pieces:?}"), "{text:?}");
        }
    }

    /// The pieces path reads exactly what the whole-file path reads: the same machines in
    /// the same order, and the same problems (a bad MAC, a MAC spelled twice across pieces,
    /// a hostname and an IP used twice, a bad variable); the same key written twice in two
    /// pieces falls back to the whole file's YAML error.
    #[test]
    fn reading_machines_in_pieces_is_reading_them_whole() {
        let mut good = String::from("defaults:\n  vars: { ntp: 198.18.0.1 }\nroles:\n  web: { template: base.sh.j2 }\nmachines:\n");
        for i in 0..300u32 {
            good.push_str(&format!(
                "  \"52:54:00:00:{:02x}:{:02x}\":\n    hostname: m{i}\n    role: web\n    ip: 198.18.{}.{}\n    vars: {{ rack: r{} }}\n\n",
                i / 256,
                i % 256,
                1 + i / 200,
                i % 200,
                i / 40
            ));
        }
        let mut bad = good.clone();
        bad.push_str("  not-a-mac:\n    hostname: x1\n");
        bad.push_str("  \"52-54-00-00-00-05\":\n    hostname: x2\n");
        bad.push_str("  \"52:54:00:00:09:99\":\n    hostname: m7\n    role: web\n    ip: 198.18.1.3\n    vars: { bad: \"a;b\" }\n");
        let mut same_key = good.clone();
        same_key.push_str("  \"52:54:00:00:00:05\":\n    hostname: x3\n");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("base.sh.j2"), "#!/bin/sh\n").unwrap();
        let ctx = Context {
            kickstarts: dir.path().to_path_buf(),
            ..Context::default()
        };
        let path = Path::new("inventory.yaml");
        for (what, text) in [("good", &good), ("bad", &bad), ("same key", &same_key)] {
            assert!(split::split(text, 0, 8).is_some(), "{what}: cut");
            let whole = Inventory::parse_whole(path, text, &ctx);
            for threads in [1, 2, 3] {
                let pieces = Inventory::parse_split(path, text, &ctx, 0, threads);
                match (&whole, &pieces) {
                    (Ok(a), Ok(b)) => {
                        assert_eq!(a.order, b.order, "{what}");
                        assert_eq!(a.machines, b.machines, "{what}");
                        assert_eq!(a.aliases, b.aliases, "{what}");
                    }
                    (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{what}"),
                    _ => panic!(
                        "{what}: {whole:?} vs {pieces:?}",
                        whole = whole.as_ref().map(|i| i.order.len()),
                        pieces = pieces.as_ref().map(|i| i.order.len())
                    ),
                }
            }
            match (what, &whole) {
                ("good", Ok(inv)) => assert_eq!(inv.order.len(), 300),
                ("bad", Err(e)) => {
                    let e = e.to_string();
                    for want in [
                        "not-a-mac",
                        "duplicate machine 52:54:00:00:00:05",
                        "duplicate hostname \"m7\"",
                        "duplicate reserved IP 198.18.1.3",
                        "variable \"bad\"",
                    ] {
                        assert!(e.contains(want), "{want} in {e}");
                    }
                }
                ("same key", Err(e)) => assert!(e.to_string().contains("duplicate key"), "{e}"),
                _ => panic!("{what}: unexpected {}", whole.is_ok()),
            }
        }
    }

    use std::fs;

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            fs::create_dir(dir.path().join("kickstarts")).unwrap();
            fs::write(
                dir.path().join("kickstarts/web.sh.j2"),
                "echo {{ hostname }}\n",
            )
            .unwrap();
            Fixture { dir }
        }
        fn ctx(&self, subnets: Vec<Subnet>) -> Context {
            Context {
                kickstarts: self.dir.path().join("kickstarts"),
                os_specs: self.dir.path().join("os"),
                subnets,
            }
        }
        fn parse(&self, text: &str) -> Result<Inventory, Problems> {
            Inventory::parse(Path::new("inventory.yaml"), text, &self.ctx(subnets()))
        }
    }

    fn subnets() -> Vec<Subnet> {
        vec![Subnet {
            net: "198.18.0.0/24".parse().unwrap(),
            pool_start: "198.18.0.100".parse().unwrap(),
            pool_end: "198.18.0.199".parse().unwrap(),
            router: None,
            dns: vec![],
            domain: None,
            lease_time: Duration::from_secs(3600),
        }]
    }

    #[test]
    fn every_nic_identifies_its_machine() {
        let f = Fixture::new();
        let inv = f
            .parse("roles:\n  web: {template: web.sh.j2}\nmachines:\n  52:54:00:00:00:01:\n    hostname: db1\n    role: web\n    interfaces: {eno1: 52:54:00:00:00:01, eno2: 52:54:00:00:00:02}\n    network:\n      bond0: {bond: [eno1, eno2], mode: active-backup, dhcp: true}\n  52:54:00:00:00:03: {hostname: db2, role: web}\n")
            .unwrap();
        let key: MacAddr = "52:54:00:00:00:01".parse().unwrap();
        let second: MacAddr = "52:54:00:00:00:02".parse().unwrap();
        assert_eq!(inv.machine(&second).unwrap().hostname, "db1");
        assert_eq!(inv.id(second), key);
        assert_eq!(inv.id(key), key);
        let other: MacAddr = "52:54:00:00:00:09".parse().unwrap();
        assert_eq!(inv.id(other), other);
        assert!(inv.machine(&other).is_none());
        assert_eq!(inv.machine(&key).unwrap().macs(), vec![key, second]);
        assert_eq!(inv.machines.len(), 2, "one machine, not two");
        assert!(inv.machine(&key).unwrap().network.is_some());
    }

    #[test]
    fn the_loader_comes_from_the_role_else_the_defaults() {
        let f = Fixture::new();
        let text = "defaults:\n  loader: grub\nroles:\n  web: {template: web.sh.j2}\n  old: {template: web.sh.j2, loader: ipxe}\nmachines:\n  52:54:00:00:00:01: {hostname: a, role: web}\n  52:54:00:00:00:02: {hostname: b, role: old}\n";
        let inv = f.parse(text).unwrap();
        let m = |s: &str| inv.machine(&s.parse().unwrap());
        assert_eq!(inv.loader_of(m("52:54:00:00:00:01")), Loader::Grub);
        assert_eq!(inv.loader_of(m("52:54:00:00:00:02")), Loader::Ipxe);
        assert_eq!(
            inv.loader_of(None),
            Loader::Grub,
            "unknown machines: the defaults'"
        );
        assert!(inv.uses_grub());
        // Without `loader:` anywhere: iPXE, as before.
        let inv = f.parse(GOOD).unwrap();
        assert_eq!(inv.loader_of(None), Loader::Ipxe);
        assert!(!inv.uses_grub());
        let inv = f
            .parse("roles:\n  sb: {template: web.sh.j2, loader: grub}\nmachines: {}\n")
            .unwrap();
        assert!(inv.uses_grub());
        // A wrong value says where and what is allowed.
        let e = err(
            &f,
            "defaults:\n  loader: pxelinux\nroles: {}\nmachines: {}\n",
        );
        assert!(
            e.contains("inventory.yaml:2:11: defaults.loader must be ipxe or grub"),
            "{e}"
        );
        let e = err(
            &f,
            "roles:\n  web:\n    template: web.sh.j2\n    loader: GRUB\nmachines: {}\n",
        );
        assert!(
            e.contains("inventory.yaml:4:13: role \"web\" loader must be ipxe or grub"),
            "{e}"
        );
    }

    #[test]
    fn a_nic_listed_for_two_machines_names_both_places() {
        let f = Fixture::new();
        let e = f
            .parse("roles:\n  web: {template: web.sh.j2}\nmachines:\n  52:54:00:00:00:01:\n    hostname: db1\n    role: web\n    interfaces: {eno1: 52:54:00:00:00:01, eno2: 52:54:00:00:00:02}\n  52:54:00:00:00:02: {hostname: db2, role: web}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("inventory.yaml:8:3: duplicate machine 52:54:00:00:00:02: already listed at line 7, column 49 (as interface eno2 of machine 52:54:00:00:00:01)"), "{e}");
        let e = f
            .parse("roles:\n  web: {template: web.sh.j2}\nmachines:\n  52:54:00:00:00:02: {hostname: db2, role: web}\n  52:54:00:00:00:01:\n    hostname: db1\n    role: web\n    interfaces: {eno1: 52:54:00:00:00:01, eno2: 52:54:00:00:00:02}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("inventory.yaml:8:49: 52:54:00:00:00:02 (interface eno2 of machine 52:54:00:00:00:01) is already listed at line 4, column 3"), "{e}");
    }

    const GOOD: &str = "defaults:
  unknown: discover
  vars: { ntp_server: 198.18.0.1, disk: /dev/sda }
roles:
  web:
    template: web.sh.j2
    vars: { puppet_server: puppet.lab.example, disk: /dev/vdb }
machines:
  \"52:54:00:12:34:56\":
    hostname: web01
    role: web
    ip: 198.18.0.21
    vars: { disk: /dev/vda }
  52-54-00-12-34-57:
    hostname: web02
    role: web
";

    fn err(f: &Fixture, text: &str) -> String {
        f.parse(text).unwrap_err().to_string()
    }

    #[test]
    fn the_documented_example_loads_and_normalises_macs() {
        let f = Fixture::new();
        let inv = f.parse(GOOD).unwrap();
        assert_eq!(inv.defaults.unknown, UnknownPolicy::Discover);
        let m = inv.machine(&"52:54:00:12:34:57".parse().unwrap()).unwrap();
        assert_eq!(m.hostname, "web02");
        assert_eq!(inv.order.len(), 2);
    }

    #[test]
    fn variables_merge_defaults_then_role_then_machine() {
        let f = Fixture::new();
        let inv = f.parse(GOOD).unwrap();
        let m = inv.machine(&"52:54:00:12:34:56".parse().unwrap()).unwrap();
        let v = inv.merged_vars(m);
        assert_eq!(v["disk"], "/dev/vda");
        assert_eq!(v["puppet_server"], "puppet.lab.example");
        assert_eq!(v["ntp_server"], "198.18.0.1");
        let m2 = inv.machine(&"52:54:00:12:34:57".parse().unwrap()).unwrap();
        assert_eq!(inv.merged_vars(m2)["disk"], "/dev/vdb");
    }

    #[test]
    fn duplicate_mac_in_another_spelling_names_both_lines() {
        let f = Fixture::new();
        let e = err(&f, &GOOD.replace("52-54-00-12-34-57", "52-54-00-12-34-56"));
        assert!(e.contains("inventory.yaml:14:3: duplicate machine 52:54:00:12:34:56: already listed at line 9, column 3"), "{e}");
        let e = err(
            &f,
            &GOOD.replace("52-54-00-12-34-57", "\"52:54:00:12:34:56\""),
        );
        assert!(e.contains("inventory.yaml:14:3: duplicate key"), "{e}");
        assert!(e.contains("line 9, column 3"), "{e}");
    }

    #[test]
    fn duplicate_hostname_and_ip() {
        let f = Fixture::new();
        let e = err(&f, &GOOD.replace("hostname: web02", "hostname: WEB01"));
        assert!(e.contains("inventory.yaml:15:15: duplicate hostname \"WEB01\": already used at line 10, column 15"), "{e}");
        let e = err(&f, &format!("{GOOD}    ip: 198.18.0.21\n"));
        assert!(e.contains("inventory.yaml:17:9: duplicate reserved IP 198.18.0.21: already reserved at line 12, column 9"), "{e}");
    }

    #[test]
    fn unknown_role_missing_template_and_unknown_keys() {
        let f = Fixture::new();
        let e = err(
            &f,
            &GOOD.replace("    role: web\n    ip", "    role: wbe\n    ip"),
        );
        assert!(e.contains("inventory.yaml:11:11: machine 52:54:00:12:34:56: unknown role \"wbe\" (did you mean \"web\"?)"), "{e}");
        let e = err(
            &f,
            &GOOD.replace("template: web.sh.j2", "template: db.sh.j2"),
        );
        assert!(
            e.contains("inventory.yaml:6:15: role \"web\": template \"db.sh.j2\" does not exist"),
            "{e}"
        );
        let e = err(
            &f,
            &GOOD.replace("    hostname: web02", "    hostnme: web02"),
        );
        assert!(e.contains("inventory.yaml:15:5: unknown key \"hostnme\" in machine 52:54:00:12:34:57 (did you mean \"hostname\"?)"), "{e}");
        let e = err(
            &f,
            &GOOD.replace("template: web.sh.j2", "template: ../etc/passwd"),
        );
        assert!(e.contains("inside the kickstarts folder"), "{e}");
    }

    const POWERED: &str = "defaults:
  power: { driver: ipmi, username: admin, password_file: /etc/stemcell/bmc.pass }
roles:
  web:
    template: web.sh.j2
    power: { port: 6230, firmware: bios }
  db:
    template: web.sh.j2
    power: { driver: redfish, ca_file: /etc/stemcell/bmc-ca.pem }
machines:
  52:54:00:00:00:01:
    role: web
    power: { address: 198.18.1.1 }
  52:54:00:00:00:02:
    role: db
    power: { address: bmc2.lab.example, username: root, system: node2 }
  52:54:00:00:00:03:
    role: web
";

    #[test]
    fn power_merges_defaults_then_role_then_machine() {
        let f = Fixture::new();
        let inv = f.parse(POWERED).unwrap();
        let m = |s: &str| inv.machine(&s.parse().unwrap()).unwrap().power.clone();
        let one = m("52:54:00:00:00:01").unwrap();
        assert_eq!(one.driver, PowerDriver::Ipmi);
        assert_eq!(one.address, "198.18.1.1");
        assert_eq!(one.port, Some(6230));
        assert_eq!(one.username, "admin");
        assert_eq!(one.firmware, Firmware::Bios);
        assert_eq!(one.password_file, Path::new("/etc/stemcell/bmc.pass"));
        assert_eq!(one.password_file_pos, Pos { line: 2, col: 58 });
        let two = m("52:54:00:00:00:02").unwrap();
        assert_eq!(two.driver, PowerDriver::Redfish);
        assert_eq!(two.username, "root");
        assert_eq!(two.scheme, "https");
        assert_eq!(two.firmware, Firmware::Uefi);
        assert_eq!(two.system.as_deref(), Some("node2"));
        assert_eq!(
            two.ca_file.as_deref(),
            Some(Path::new("/etc/stemcell/bmc-ca.pem"))
        );
        // No address anywhere: no power control, and no error.
        assert_eq!(m("52:54:00:00:00:03"), None);
        // Nothing about the BMC reaches what the API serialises.
        let json =
            serde_json::to_string(inv.machine(&"52:54:00:00:00:02".parse().unwrap()).unwrap())
                .unwrap();
        assert!(!json.contains("bmc") && !json.contains("power"), "{json}");
    }

    #[test]
    fn bad_power_blocks_name_the_place() {
        let f = Fixture::new();
        let e = err(&f, &POWERED.replace("driver: ipmi", "driver: ilo"));
        assert!(
            e.contains("inventory.yaml:2:20: defaults.power.driver must be ipmi or redfish"),
            "{e}"
        );
        let e = err(&f, &POWERED.replace("port: 6230", "port: 70000"));
        assert!(
            e.contains(
                "inventory.yaml:6:20: role \"web\" power.port: \"70000\" is not a port number"
            ),
            "{e}"
        );
        let e = err(
            &f,
            &POWERED.replace("address: 198.18.1.1", "adress: 198.18.1.1"),
        );
        assert!(e.contains("inventory.yaml:13:14: unknown key \"adress\" in machine 52:54:00:00:00:01 power (did you mean \"address\"?)"), "{e}");
        let e = err(
            &f,
            &POWERED.replace("address: 198.18.1.1", "address: \"198.18.1.1;reboot\""),
        );
        assert!(e.contains("inventory.yaml:13:23: machine 52:54:00:00:00:01 power.address \"198.18.1.1;reboot\" is not a host name or an IP address"), "{e}");
        let e = err(
            &f,
            &POWERED.replace(
                "password_file: /etc/stemcell/bmc.pass",
                "password_file: bmc.pass",
            ),
        );
        assert!(e.contains("inventory.yaml:2:58: defaults.power.password_file \"bmc.pass\" must be an absolute path"), "{e}");
        // A Redfish BMC over https with neither a CA nor an explicit insecure.
        let e = err(
            &f,
            &POWERED.replace(", ca_file: /etc/stemcell/bmc-ca.pem", ""),
        );
        assert!(e.contains("inventory.yaml:16:12: machine 52:54:00:00:00:02 power: a Redfish BMC over https needs ca_file"), "{e}");
        let ok = f
            .parse(&POWERED.replace(", ca_file: /etc/stemcell/bmc-ca.pem", ", insecure: true"))
            .unwrap();
        assert!(
            ok.machine(&"52:54:00:00:00:02".parse().unwrap())
                .unwrap()
                .power
                .as_ref()
                .unwrap()
                .insecure
        );
        // A machine whose merged block lacks the password file.
        let e = err(
            &f,
            &POWERED.replace(", password_file: /etc/stemcell/bmc.pass", ""),
        );
        assert!(
            e.contains(
                "inventory.yaml:13:12: machine 52:54:00:00:00:01 power: needs password_file"
            ),
            "{e}"
        );
        // Redfish-only keys on an IPMI BMC.
        let e = err(
            &f,
            &POWERED.replace("firmware: bios", "firmware: bios, insecure: true"),
        );
        assert!(e.contains("are for redfish, not ipmi"), "{e}");
        let e = err(&f, &POWERED.replace("firmware: bios", "firmware: efi"));
        assert!(
            e.contains("inventory.yaml:6:36: role \"web\" power.firmware must be uefi or bios"),
            "{e}"
        );
    }

    #[test]
    fn reservations_must_be_in_a_subnet_and_outside_its_pool() {
        let f = Fixture::new();
        let e = err(&f, &GOOD.replace("ip: 198.18.0.21", "ip: 198.18.5.21"));
        assert!(e.contains("inventory.yaml:12:9: machine 52:54:00:12:34:56: reserved IP 198.18.5.21 is outside every configured subnet (198.18.0.0/24)"), "{e}");
        let e = err(&f, &GOOD.replace("ip: 198.18.0.21", "ip: 198.18.0.150"));
        assert!(
            e.contains("inside the dynamic pool 198.18.0.100-198.18.0.199"),
            "{e}"
        );
    }

    #[test]
    fn invalid_hostnames_and_macs() {
        let f = Fixture::new();
        for bad in ["-web", "web_01", "a..b", "we b", "x;reboot"] {
            let e = err(
                &f,
                &GOOD.replace("hostname: web02", &format!("hostname: \"{bad}\"")),
            );
            assert!(
                e.contains("inventory.yaml:15:15:") && e.contains("is not a valid hostname"),
                "{bad}: {e}"
            );
        }
        let e = err(&f, &GOOD.replace("52-54-00-12-34-57", "52-54-00-12-34"));
        assert!(
            e.contains("inventory.yaml:14:3: invalid MAC address"),
            "{e}"
        );
    }

    #[test]
    fn hostile_values_are_refused_at_load() {
        let f = Fixture::new();
        for bad in [
            "$(reboot)",
            "a;b",
            "`id`",
            "x\\\"y",
            "a|b",
            "a&b",
            "a'b",
            "a\\nb",
            "a>b",
        ] {
            let text = GOOD.replace("disk: /dev/vda", &format!("disk: \"{bad}\""));
            let e = err(&f, &text);
            assert!(
                e.contains("inventory.yaml:13:19: variable \"disk\":")
                    && e.contains("is not allowed"),
                "{bad}: {e}"
            );
        }
        let e = err(
            &f,
            &GOOD.replace(
                "    ip: 198.18.0.21\n",
                "    ip: 198.18.0.21\n    vars: {\"bad-name\": 1}\n",
            ),
        );
        assert!(
            e.contains("duplicate key \"vars\"") || e.contains("variable name"),
            "{e}"
        );
    }

    const DISKS: &str = "defaults:
  disk: { pick: smallest }
roles:
  web:
    template: web.sh.j2
    disk: { model: \"SAMSUNG*\", min_size: 100G, pick: largest }
  db:
    template: web.sh.j2
machines:
  52:54:00:00:00:01:
    role: web
    disk: { serial: S3Z9NB0K123456 }
  52:54:00:00:00:02:
    role: web
  52:54:00:00:00:03:
    role: db
  52:54:00:00:00:04:
    role: db
    vars: { disk: /dev/vdb }
";

    #[test]
    fn disk_rules_most_specific_block_wins_whole() {
        let f = Fixture::new();
        let inv = f.parse(DISKS).unwrap();
        let d = |s: &str| inv.machine(&s.parse().unwrap()).unwrap().disk.clone();
        // the machine's own rule, nothing merged from the role's
        let one = d("52:54:00:00:00:01");
        assert_eq!(one.serial.as_deref(), Some("S3Z9NB0K123456"));
        assert_eq!(
            (one.model.clone(), one.min_size, one.pick),
            (None, None, Pick::Only)
        );
        assert_eq!(one.from, "machine 52:54:00:00:00:01");
        let two = d("52:54:00:00:00:02");
        assert_eq!(two.model.as_deref(), Some("SAMSUNG*"));
        assert_eq!(two.min_size, Some(100_000_000_000));
        assert_eq!(two.pick, Pick::Largest);
        assert_eq!(two.from, "role \"web\"");
        let three = d("52:54:00:00:00:03");
        assert_eq!(
            (three.pick, three.from.as_str()),
            (Pick::Smallest, "defaults")
        );
        // vars.disk: an explicit name rule on the machine's level
        let four = d("52:54:00:00:00:04");
        assert_eq!(four.name.as_deref(), Some("vdb"));
        assert_eq!(four.pick, Pick::Only);
        assert_eq!(four.from, "machine 52:54:00:00:00:04 vars.disk");
        // no rule anywhere: exactly one non-removable disk
        let inv = f
            .parse(&DISKS.replace("  disk: { pick: smallest }\n", ""))
            .unwrap();
        let three = inv.machine(&"52:54:00:00:00:03".parse().unwrap()).unwrap();
        assert_eq!(*three.disk, DiskRule::default_rule());
        assert_eq!(three.disk.describe(), "pick=only");
        // legacy by-path and by-id device paths become those rules
        let inv = f
            .parse(&DISKS.replace("/dev/vdb", "/dev/disk/by-path/pci-0000:00:1f.2-ata-2.0"))
            .unwrap();
        let four = inv.machine(&"52:54:00:00:00:04".parse().unwrap()).unwrap();
        assert_eq!(four.disk.by_path.as_deref(), Some("pci-0000:00:1f.2-ata-2"));
        let inv = f
            .parse(&DISKS.replace("/dev/vdb", "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4"))
            .unwrap();
        let four = inv.machine(&"52:54:00:00:00:04".parse().unwrap()).unwrap();
        assert_eq!(four.disk.by_id.as_deref(), Some("wwn-0x5000c500a1b2c3d4"));
    }

    #[test]
    fn bad_disk_rules_name_the_place() {
        let f = Fixture::new();
        let e = err(&f, &DISKS.replace("serial: S3Z9", "serail: S3Z9"));
        assert!(e.contains("inventory.yaml:12:13: unknown key \"serail\" in machine 52:54:00:00:00:01 disk (did you mean \"serial\"?)"), "{e}");
        let e = err(&f, &DISKS.replace("min_size: 100G", "min_size: 100X"));
        assert!(
            e.contains("inventory.yaml:6:42: role \"web\" disk.min_size \"100X\" is not a size"),
            "{e}"
        );
        let e = err(&f, &DISKS.replace("pick: largest", "pick: biggest"));
        assert!(e.contains("inventory.yaml:6:54: role \"web\" disk.pick must be only, smallest, largest or first"), "{e}");
        let e = err(
            &f,
            &DISKS.replace("min_size: 100G", "min_size: 2T, max_size: 1T"),
        );
        assert!(e.contains("inventory.yaml:6:11: role \"web\" disk: min_size (2000000000000 bytes) is larger than max_size (1000000000000 bytes)"), "{e}");
        let e = err(
            &f,
            &DISKS.replace(
                "serial: S3Z9NB0K123456",
                "serial: S3Z9NB0K123456, raid1: true",
            ),
        );
        assert!(e.contains("inventory.yaml:12:11: machine 52:54:00:00:00:01 disk: raid1 needs two disks, but serial names a single disk"), "{e}");
        let e = err(&f, &DISKS.replace("/dev/vdb", "sdb"));
        assert!(
            e.contains(
                "inventory.yaml:19:19: machine 52:54:00:00:00:04: vars.disk \"sdb\" is not a disk"
            ),
            "{e}"
        );
        let e = err(
            &f,
            &DISKS.replace(
                "vars: { disk: /dev/vdb }",
                "vars: { disk: /dev/vdb }\n    disk: { name: vdb }",
            ),
        );
        assert!(
            e.contains(
                "inventory.yaml:19:19: machine 52:54:00:00:00:04: vars.disk is the old spelling"
            ),
            "{e}"
        );
        let e = err(
            &f,
            &DISKS.replace("serial: S3Z9NB0K123456", "by_path: \"pci 0000\""),
        );
        assert!(e.contains("inventory.yaml:12:22: machine 52:54:00:00:00:01 disk.by_path \"pci 0000\" is not a by-path name"), "{e}");
        let e = err(
            &f,
            &DISKS.replace("serial: S3Z9NB0K123456", "name: \"/dev/sd;a\""),
        );
        assert!(
            e.contains("disk.name \"/dev/sd;a\" is not a kernel disk name"),
            "{e}"
        );
        let e = err(
            &f,
            &DISKS.replace("pick: smallest", "pick: smallest, removable: maybe"),
        );
        assert!(
            e.contains("inventory.yaml:2:38: defaults disk.removable must be true or false"),
            "{e}"
        );
        // hostile values never reach the script
        for bad in ["$(reboot)", "a\\\"b", "`id`", "x;y", "a|b", "a'b"] {
            let e = err(&f, &DISKS.replace("S3Z9NB0K123456", &format!("\"{bad}\"")));
            assert!(
                e.contains("inventory.yaml:12:21: machine 52:54:00:00:00:01 disk.serial"),
                "{bad}: {e}"
            );
            let e = err(&f, &DISKS.replace("\"SAMSUNG*\"", &format!("\"{bad}\"")));
            assert!(e.contains("disk.model"), "{bad}: {e}");
        }
    }

    #[test]
    fn live_reload_keeps_last_good_on_a_bad_edit() {
        let f = Fixture::new();
        let path = f.dir.path().join("inventory.yaml");
        fs::write(&path, GOOD).unwrap();
        let ctx = f.ctx(subnets());
        let live = Live::new(Inventory::load(&path, &ctx).unwrap(), ctx);
        fs::write(
            &path,
            GOOD.replace("role: web\n    ip", "role: nope\n    ip"),
        )
        .unwrap();
        assert!(live.reload().is_err());
        assert_eq!(live.get().machines.len(), 2);
        let st = live.status();
        assert!(
            st.error.as_deref().unwrap().contains(":11:11: machine"),
            "{st:?}"
        );
        fs::write(&path, GOOD.replace("hostname: web02", "hostname: web03")).unwrap();
        live.reload().unwrap();
        assert!(live.status().error.is_none());
        assert!(live.get().machines.values().any(|m| m.hostname == "web03"));
    }
}

#[cfg(test)]
mod fuzz {
    //! Deterministic fuzzing: mutated inventories must give Ok or positioned problems,
    //! never a panic. (cargo-fuzz needs a nightly toolchain, which this project does not
    //! assume.)
    use super::*;

    #[test]
    fn mutated_inventories_never_panic() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("web.sh.j2"), "x").unwrap();
        let ctx = Context {
            kickstarts: dir.path().to_path_buf(),
            os_specs: dir.path().to_path_buf(),
            subnets: vec![],
        };
        let base = "defaults:\n  unknown: discover\n  vars: {a: 1, b: [x, y], c: {d: e}}\nroles:\n  web:\n    template: web.sh.j2\n    kernel: http://x/k\n    cmdline: a={{ hostname }}\nmachines:\n  \"52:54:00:12:34:56\": {hostname: web01, role: web, ip: 198.18.0.9, vars: {k: v}}\n  &a 52-54-00-12-34-57: *a\n";
        let alphabet: Vec<char> = "\n :-{}[],&*!|>'\"#%@`?~\\\t0aZ.".chars().collect();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rnd = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        for _ in 0..3000 {
            let mut s: Vec<char> = base.chars().collect();
            for _ in 0..1 + rnd(6) {
                let i = rnd(s.len());
                match rnd(3) {
                    0 => s[i] = alphabet[rnd(alphabet.len())],
                    1 => s.insert(i, alphabet[rnd(alphabet.len())]),
                    _ => {
                        s.remove(i);
                    }
                }
            }
            let text: String = s.into_iter().collect();
            if let Err(p) = Inventory::parse(Path::new("f.yaml"), &text, &ctx) {
                for pr in &p.0 {
                    assert!(pr.pos.line >= 1 && pr.pos.col >= 1, "{pr} for {text:?}");
                }
            }
        }
    }
}
