//! The target disk: a `disk:` rule in defaults, a role or a machine (the most specific block
//! wins whole, no key merging), validated with positions. The legacy `vars.disk` is the
//! same as an explicit rule on its level (`/dev/vda` is `{ name: vda }`,
//! `/dev/disk/by-path/X` is `{ by_path: X }`, `/dev/disk/by-id/X` is `{ by_id: X }`).
//! Without any rule: `{ pick: only }`, so a machine with one non-removable disk installs on
//! it and one with more refuses. The stem cell applies the rule
//! (`kickstarts/snippets/disk.sh.j2`) to what `/usr/libexec/stemcell/disks` lists.
//!
//! Every value reaches a shell script (inside double quotes), so each field has a short
//! list of allowed characters, checked here at load time.

use std::sync::{Arc, LazyLock};

use serde::Serialize;

use crate::values::value_char;
use crate::yaml::{Kind, Node, Report};

/// Which of the disks that match the filters the install takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Pick {
    /// Exactly one disk (two with `raid1`) must match; otherwise the install refuses.
    #[default]
    Only,
    Smallest,
    Largest,
    /// The first by udev's by-path name (controller and port order).
    First,
}

impl Pick {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Pick::Only => "only",
            Pick::Smallest => "smallest",
            Pick::Largest => "largest",
            Pick::First => "first",
        }
    }
}

/// One rule: every filter given must match.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub(crate) struct DiskRule {
    /// udev's /dev/disk/by-path name, without the folder.
    pub(crate) by_path: Option<String>,
    /// udev's /dev/disk/by-id name, without the folder.
    pub(crate) by_id: Option<String>,
    pub(crate) serial: Option<String>,
    /// `0x…` (an NAA name) or NVMe's `eui.…`.
    pub(crate) wwn: Option<String>,
    /// A glob (`*`, `?`, `[…]`).
    pub(crate) model: Option<String>,
    /// The kernel's name (`vda`): only when written explicitly.
    pub(crate) name: Option<String>,
    pub(crate) min_size: Option<u64>,
    pub(crate) max_size: Option<u64>,
    pub(crate) pick: Pick,
    /// Also consider removable disks (USB sticks and disks, SD cards).
    pub(crate) removable: bool,
    /// The root on an md RAID 1 of two disks.
    pub(crate) raid1: bool,
    /// Where the rule was written: `machine 52:54:…`, `role "db"`, `defaults`, `… vars.disk`,
    /// or `the default`.
    pub(crate) from: String,
}

impl DiskRule {
    /// No rule anywhere: exactly one non-removable disk.
    pub(crate) fn default_rule() -> DiskRule {
        DiskRule {
            from: "the default".into(),
            ..DiskRule::default()
        }
    }

    /// Whether an operator wrote it as a `disk:` block (not the default, not `vars.disk`,
    /// which the variables already carry).
    pub(crate) fn is_block(&self) -> bool {
        self.from != "the default" && !self.from.ends_with(" vars.disk")
    }

    /// The rule in one line, as the install's messages show it: `serial=X pick=only`.
    pub(crate) fn describe(&self) -> String {
        let mut out = Vec::new();
        for (k, v) in [
            ("by_path", &self.by_path),
            ("by_id", &self.by_id),
            ("serial", &self.serial),
            ("wwn", &self.wwn),
            ("model", &self.model),
            ("name", &self.name),
        ] {
            if let Some(v) = v {
                out.push(format!("{k}={v}"));
            }
        }
        if let Some(n) = self.min_size {
            out.push(format!("min_size={n}"));
        }
        if let Some(n) = self.max_size {
            out.push(format!("max_size={n}"));
        }
        out.push(format!("pick={}", self.pick.as_str()));
        if self.removable {
            out.push("removable=true".into());
        }
        if self.raid1 {
            out.push("raid1=true".into());
        }
        out.join(" ")
    }
}

const KEYS: &[&str] = &[
    "by_path",
    "by_id",
    "serial",
    "wwn",
    "model",
    "name",
    "min_size",
    "max_size",
    "pick",
    "removable",
    "raid1",
];

/// One level's rule: its `disk:` block (`disk`), else its `vars.disk` (`vars`: the level's
/// `vars:` node). `what` names the level in messages (`machine 52:…`, `role "db"`,
/// `defaults`).
pub(super) fn read_level(
    r: &mut Report,
    disk: Option<&Node>,
    vars: Option<&Node>,
    what: &str,
) -> Option<DiskRule> {
    let legacy = vars.and_then(|v| match &v.kind {
        Kind::Map(entries) => entries
            .iter()
            .find(|(k, _)| k.as_str() == Some("disk"))
            .map(|(_, v)| v),
        _ => None,
    });
    match (disk, legacy) {
        (Some(d), Some(l)) => {
            r.add(
                l.pos,
                format!("{what}: vars.disk is the old spelling of the `disk:` rule this level also has; keep one (vars.disk {} is `disk: {{ name: … }}`)", l.as_str().unwrap_or("…")),
            );
            read_rule(r, d, what)
        }
        (Some(d), None) => read_rule(r, d, what),
        (None, Some(l)) => read_legacy(r, l, what),
        (None, None) => None,
    }
}

/// The most specific rule wins whole; none anywhere is [`DiskRule::default_rule`]. A rule
/// inherited from the role or the defaults is shared, not copied.
pub(super) fn resolve(
    defaults: Option<&Arc<DiskRule>>,
    role: Option<&Arc<DiskRule>>,
    machine: Option<DiskRule>,
) -> Arc<DiskRule> {
    static DEFAULT: LazyLock<Arc<DiskRule>> = LazyLock::new(|| Arc::new(DiskRule::default_rule()));
    machine
        .map(Arc::new)
        .or_else(|| role.cloned())
        .or_else(|| defaults.cloned())
        .unwrap_or_else(|| DEFAULT.clone())
}

/// Whether `vars.disk` holds something [`read_legacy`] takes (a device path it turns into
/// a rule); anything else is refused at load.
pub(crate) fn legacy_ok(s: &str) -> bool {
    let path_ok = |p: &str, extra: &str| {
        !p.is_empty()
            && p.len() <= 255
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
    };
    if let Some(p) = s.strip_prefix("/dev/disk/by-path/") {
        path_ok(p, "._:+@-")
    } else if let Some(p) = s.strip_prefix("/dev/disk/by-id/") {
        path_ok(p, "._:+@#-")
    } else {
        s.strip_prefix("/dev/").is_some_and(kernel_name)
    }
}

fn read_legacy(r: &mut Report, node: &Node, what: &str) -> Option<DiskRule> {
    let from = format!("{what} vars.disk");
    let Some(s) = node.as_str() else {
        r.add(
            node.pos,
            format!("{from} must be a device path like /dev/sda (better: a `disk:` rule)"),
        );
        return None;
    };
    if !legacy_ok(s) {
        r.add(node.pos, format!("{what}: vars.disk {s:?} is not a disk: write /dev/NAME, /dev/disk/by-path/… or /dev/disk/by-id/…, or better a `disk:` rule (see docs/reference.md)"));
        return None;
    }
    let mut rule = DiskRule {
        from,
        ..DiskRule::default()
    };
    if let Some(p) = s.strip_prefix("/dev/disk/by-path/") {
        rule.by_path = Some(by_path(r, node, p, what)?);
    } else if let Some(p) = s.strip_prefix("/dev/disk/by-id/") {
        rule.by_id = Some(by_id(r, node, p, what)?);
    } else if let Some(n) = s.strip_prefix("/dev/").filter(|n| kernel_name(n)) {
        rule.name = Some(n.to_string());
    } else {
        r.add(node.pos, format!("{what}: vars.disk {s:?} is not a disk: write /dev/NAME, /dev/disk/by-path/… or /dev/disk/by-id/…, or better a `disk:` rule (see docs/reference.md)"));
        return None;
    }
    Some(rule)
}

fn kernel_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(x) if x.is_ascii_lowercase())
        && c.all(|x| x.is_ascii_lowercase() || x.is_ascii_digit())
        && s.len() <= 32
}

fn by_path(r: &mut Report, node: &Node, s: &str, what: &str) -> Option<String> {
    let s = s.strip_prefix("/dev/disk/by-path/").unwrap_or(s);
    if s.is_empty()
        || s.len() > 255
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:+@-".contains(c))
    {
        r.add(node.pos, format!("{what} disk.by_path {s:?} is not a by-path name (letters, digits and . _ : + @ -, like pci-0000:00:05.0 or pci-0000:00:1f.2-ata-1; discovery shows each disk's)"));
        return None;
    }
    // udev >= 251 also names ATA ports ata-N.0; the stem cell's lister says ata-N
    if let Some((head, tail)) = s.rsplit_once("-ata-") {
        if let Some(port) = tail.strip_suffix(".0") {
            if !port.is_empty() && port.chars().all(|c| c.is_ascii_digit()) {
                return Some(format!("{head}-ata-{port}"));
            }
        }
    }
    Some(s.to_string())
}

fn by_id(r: &mut Report, node: &Node, s: &str, what: &str) -> Option<String> {
    let s = s.strip_prefix("/dev/disk/by-id/").unwrap_or(s);
    if s.is_empty()
        || s.len() > 255
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:+@#-".contains(c))
    {
        r.add(node.pos, format!("{what} disk.by_id {s:?} is not a by-id name (letters, digits and . _ : + @ # -, like virtio-SERIAL or ata-MODEL_SERIAL with spaces as _; discovery shows each disk's)"));
        return None;
    }
    Some(s.to_string())
}

/// A size: bytes, or a number with K, M, G, T, P (powers of 1000, as disks are sold; `B`
/// may follow) or KiB, MiB, GiB, TiB, PiB (powers of 1024).
pub(crate) fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let unit = unit.trim();
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "p" | "pb" => 1_000_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        "pib" => 1 << 50,
        _ => return None,
    };
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') || num.matches('.').count() > 1
    {
        return None;
    }
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    let whole: u64 = whole.parse().ok()?;
    let mut n = whole.checked_mul(mult)?;
    if !frac.is_empty() {
        if mult == 1 || frac.len() > 6 {
            return None;
        }
        let f: u64 = frac.parse().ok()?;
        n = n.checked_add(f.checked_mul(mult)? / 10u64.pow(frac.len() as u32))?;
    }
    (n > 0).then_some(n)
}

fn read_rule(r: &mut Report, node: &Node, what: &str) -> Option<DiskRule> {
    let mut m = r.map(node, &format!("{what} disk"))?;
    let mut rule = DiskRule {
        from: what.to_string(),
        ..DiskRule::default()
    };
    let mut ok = true;
    let mut string = |r: &mut Report, key: &str| -> Option<(String, &Node)> {
        let n = m.get(key)?;
        let s = r.string(n, &format!("{what} disk.{key}"))?;
        Some((s, n))
    };
    if let Some((s, n)) = string(r, "by_path") {
        rule.by_path = by_path(r, n, &s, what);
        ok &= rule.by_path.is_some();
    }
    if let Some((s, n)) = string(r, "by_id") {
        rule.by_id = by_id(r, n, &s, what);
        ok &= rule.by_id.is_some();
    }
    if let Some((s, n)) = string(r, "serial") {
        let s = s.trim().to_string();
        if s.is_empty() || s.len() > 128 || !s.chars().all(value_char) {
            r.add(n.pos, format!("{what} disk.serial {s:?} must be 1-128 letters, digits, spaces or . _ - : / @ + = , % ~ ^ * # [ ] ( ) !"));
            ok = false;
        } else {
            rule.serial = Some(s);
        }
    }
    if let Some((s, n)) = string(r, "wwn") {
        let low = s.trim().to_ascii_lowercase();
        let low = low.strip_prefix("wwn-").unwrap_or(&low).to_string();
        let low = match low.strip_prefix("naa.") {
            Some(hex) => format!("0x{hex}"),
            None => low,
        };
        if low.len() < 3
            || low.len() > 64
            || !low
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == ':')
        {
            r.add(
                n.pos,
                format!("{what} disk.wwn {s:?} is not a world wide name (0x5000c500a1b2c3d4, naa.…, eui.…)"),
            );
            ok = false;
        } else {
            rule.wwn = Some(low);
        }
    }
    if let Some((s, n)) = string(r, "model") {
        if s.is_empty() || s.len() > 128 || !s.chars().all(|c| value_char(c) || c == '?') {
            r.add(n.pos, format!("{what} disk.model {s:?} must be a glob of 1-128 letters, digits, spaces, * ? [ ] and . _ - : / @ + = , % ~ ^ # ( ) !"));
            ok = false;
        } else {
            rule.model = Some(s);
        }
    }
    if let Some((s, n)) = string(r, "name") {
        let bare = s.strip_prefix("/dev/").unwrap_or(&s);
        if kernel_name(bare) {
            rule.name = Some(bare.to_string());
        } else {
            r.add(
                n.pos,
                format!(
                    "{what} disk.name {s:?} is not a kernel disk name like vda, sdb or nvme0n1"
                ),
            );
            ok = false;
        }
    }
    for key in ["min_size", "max_size"] {
        let Some(n) = m.get(key) else { continue };
        let text = match &n.kind {
            Kind::Scalar { text, .. } => Some(text.clone()),
            _ => None,
        };
        match text.as_deref().and_then(parse_size) {
            Some(v) if key == "min_size" => rule.min_size = Some(v),
            Some(v) => rule.max_size = Some(v),
            None => {
                r.add(n.pos, format!("{what} disk.{key} {:?} is not a size: bytes, or a number with K, M, G, T (powers of 1000, as disks are sold) or KiB, MiB, GiB, TiB, like 100G or 1.5T", text.unwrap_or_default()));
                ok = false;
            }
        }
    }
    if let Some(n) = m.get("pick") {
        match n.as_str() {
            Some("only") => rule.pick = Pick::Only,
            Some("smallest") => rule.pick = Pick::Smallest,
            Some("largest") => rule.pick = Pick::Largest,
            Some("first") => rule.pick = Pick::First,
            _ => {
                r.add(
                    n.pos,
                    format!("{what} disk.pick must be only, smallest, largest or first"),
                );
                ok = false;
            }
        }
    }
    if let Some(n) = m.get("removable") {
        match r.boolean(n, &format!("{what} disk.removable")) {
            Some(b) => rule.removable = b,
            None => ok = false,
        }
    }
    if let Some(n) = m.get("raid1") {
        match r.boolean(n, &format!("{what} disk.raid1")) {
            Some(b) => rule.raid1 = b,
            None => ok = false,
        }
    }
    if let (Some(lo), Some(hi)) = (rule.min_size, rule.max_size) {
        if lo > hi {
            r.add(
                node.pos,
                format!("{what} disk: min_size ({lo} bytes) is larger than max_size ({hi} bytes): no disk can match"),
            );
            ok = false;
        }
    }
    if rule.raid1 {
        let one: Vec<&str> = [
            ("by_path", rule.by_path.is_some()),
            ("by_id", rule.by_id.is_some()),
            ("serial", rule.serial.is_some()),
            ("wwn", rule.wwn.is_some()),
            ("name", rule.name.is_some()),
        ]
        .iter()
        .filter(|(_, set)| *set)
        .map(|(k, _)| *k)
        .collect();
        if !one.is_empty() {
            r.add(node.pos, format!("{what} disk: raid1 needs two disks, but {} names a single disk; choose the two with model, min_size, max_size, removable and pick (pick: only wants exactly two matches; smallest, largest and first take two)", one.join(", ")));
            ok = false;
        }
    }
    m.deny_unknown(r, &format!("{what} disk"), KEYS);
    ok.then_some(rule)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("100G"), Some(100_000_000_000));
        assert_eq!(parse_size("1T"), Some(1_000_000_000_000));
        assert_eq!(parse_size("1.5T"), Some(1_500_000_000_000));
        assert_eq!(parse_size("500GB"), Some(500_000_000_000));
        assert_eq!(parse_size("64GiB"), Some(64 << 30));
        assert_eq!(parse_size("512 MiB"), Some(512 << 20));
        assert_eq!(parse_size("1000204886016"), Some(1_000_204_886_016));
        for bad in [
            "",
            "G",
            "10X",
            "1.2.3G",
            ".5T",
            "5.T",
            "-1G",
            "0",
            "1.5",
            "99999999999T",
        ] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn describe_lists_the_given_filters() {
        let r = DiskRule {
            serial: Some("S1".into()),
            min_size: Some(10),
            pick: Pick::Smallest,
            raid1: true,
            ..DiskRule::default()
        };
        assert_eq!(
            r.describe(),
            "serial=S1 min_size=10 pick=smallest raid1=true"
        );
        assert_eq!(DiskRule::default_rule().describe(), "pick=only");
    }
}
