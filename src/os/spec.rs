//! `os/NAME.yaml`: what an operating system image is made of.
//!
//! Read with the positioned YAML reader so every problem is `file:line:col: message` with
//! what would be valid. Values end up on mmdebstrap's command line and in a shell hook, so
//! each is checked against the characters its kind can hold (package names, suites, URLs,
//! paths): nothing an operator writes can reach a shell unquoted.

use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::yaml::{self, Kind, Node, Problems, Report};

/// mmdebstrap variants that make a bootable base (the others are for special uses:
/// `extract` and `custom` do not configure packages, `buildd` is for build chroots).
pub(crate) const VARIANTS: &[&str] = &[
    "essential",
    "apt",
    "required",
    "minbase",
    "important",
    "standard",
];

const KEYS: &[&str] = &[
    "suite",
    "mirror",
    "components",
    "variant",
    "architecture",
    "packages",
    "trim",
    "apt_sources",
];

/// An OS as `os/NAME.yaml` declares it. Field order is the digest's order: do not reorder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct OsSpec {
    /// The file's stem (`debian-12` for `os/debian-12.yaml`).
    pub(crate) name: String,
    pub(crate) suite: String,
    /// A Debian mirror URL; `None`: the build host's apt sources for `suite`.
    pub(crate) mirror: Option<String>,
    pub(crate) components: Vec<String>,
    pub(crate) variant: String,
    pub(crate) architecture: String,
    pub(crate) packages: Vec<String>,
    /// Paths or globs (relative to the root) left out of the image; a directory takes
    /// everything under it.
    pub(crate) trim: Vec<String>,
    /// The installed system's `/etc/apt/sources.list`, one line each; `None`: what the
    /// build used.
    pub(crate) apt_sources: Option<Vec<String>>,
}

impl OsSpec {
    /// Read and validate `path`; the OS's name is the file's stem.
    pub(crate) fn load(path: &Path) -> Result<OsSpec, Problems> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Problems(vec![yaml::Problem {
                file: path.to_path_buf(),
                pos: yaml::Pos { line: 1, col: 1 },
                message: format!("cannot read the OS spec: {e}"),
            }])
        })?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        OsSpec::parse(path, &name, &text)
    }

    pub(crate) fn parse(path: &Path, name: &str, text: &str) -> Result<OsSpec, Problems> {
        let root = yaml::parse(path, text)?;
        let mut r = Report::new(path);
        if !valid_name(name) {
            r.add(
                root.pos,
                format!("the OS name {name:?} (the file's name) may hold only a-z, 0-9, '.', '_' and '-', starting with a letter or digit"),
            );
        }
        let Some(mut top) = r.map(&root, "an OS spec") else {
            return Err(Problems(r.problems));
        };
        let suite = match top.get("suite") {
            Some(n) => checked(&mut r, n, "suite", is_word, "a suite name such as bookworm"),
            None => {
                r.add(
                    top.pos,
                    "suite is required (the Debian release, e.g. bookworm)",
                );
                None
            }
        };
        let mirror = top.get("mirror").and_then(|n| {
            checked(
                &mut r,
                n,
                "mirror",
                is_url,
                "an http://, https:// or file:// URL without spaces or quotes",
            )
        });
        let components = match top.get("components") {
            Some(n) => words(&mut r, n, "components", is_word, "a component such as main"),
            None => vec!["main".to_string()],
        };
        if components.is_empty() {
            if let Some(n) = top_node(&root, "components") {
                r.add(n.pos, "components must name at least one (e.g. [main])");
            }
        }
        let variant = match top.get("variant") {
            Some(n) => r.string(n, "variant").and_then(|v| {
                if VARIANTS.contains(&v.as_str()) {
                    Some(v)
                } else {
                    let hint = yaml::suggestion(&v, VARIANTS)
                        .map(|s| format!(" (did you mean {s:?}?)"))
                        .unwrap_or_default();
                    r.add(
                        n.pos,
                        format!("variant {v:?} is not one of {}{hint}", VARIANTS.join(", ")),
                    );
                    None
                }
            }),
            None => Some("minbase".to_string()),
        };
        let architecture = match top.get("architecture") {
            Some(n) => checked(
                &mut r,
                n,
                "architecture",
                is_word,
                "a Debian architecture such as amd64",
            ),
            None => Some("amd64".to_string()),
        };
        let packages = match top.get("packages") {
            Some(n) => words(
                &mut r,
                n,
                "packages",
                is_package,
                "a Debian package name (a-z, 0-9, '+', '-', '.'), optionally =VERSION",
            ),
            None => Vec::new(),
        };
        // Debian's device firmware (firmware-bnx2x, firmware-misc-nonfree, ...) is in the
        // non-free-firmware component (non-free before bookworm): say so where the package
        // is named, rather than mmdebstrap's "unable to locate package" later.
        if !components
            .iter()
            .any(|c| c == "non-free-firmware" || c == "non-free")
        {
            if let Some(Kind::Seq(items)) = top_node(&root, "packages").map(|n| &n.kind) {
                for item in items {
                    if let Kind::Scalar { text, .. } = &item.kind {
                        let name = text.split('=').next().unwrap_or("").trim();
                        if name.starts_with("firmware-") && !FREE_FIRMWARE.contains(&name) {
                            r.add(
                                item.pos,
                                format!("{name} is in Debian's non-free-firmware component, which components does not name: add it (components: [main, non-free-firmware])"),
                            );
                        }
                    }
                }
            }
        }
        let trim = match top.get("trim") {
            Some(n) => words(
                &mut r,
                n,
                "trim",
                is_trim,
                "a path or glob inside the root (letters, digits, '/', '.', '_', '-', '+', '*', '?', '[', ']'), without '..'",
            ),
            None => Vec::new(),
        };
        let apt_sources = top.get("apt_sources").map(|n| match &n.kind {
            Kind::Scalar { text, .. } => text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>(),
            _ => words(
                &mut r,
                n,
                "apt_sources",
                |s| !s.contains(['\n', '\r', '\0']),
                "one sources.list line",
            ),
        });
        if let Some(lines) = &apt_sources {
            if let Some(n) = top_node(&root, "apt_sources") {
                for l in lines {
                    if !(l.starts_with("deb ") || l.starts_with("deb-src ") || l.starts_with('#')) {
                        r.add(
                            n.pos,
                            format!("apt_sources: {l:?} is not a sources.list line (deb URI SUITE COMPONENT...)"),
                        );
                    }
                }
            }
        }
        top.deny_unknown(&mut r, "an OS spec", KEYS);
        let spec = OsSpec {
            name: name.to_string(),
            suite: suite.unwrap_or_default(),
            mirror,
            components,
            variant: variant.unwrap_or_default(),
            architecture: architecture.unwrap_or_default(),
            packages,
            trim: trim
                .into_iter()
                .map(|t| t.trim_matches('/').to_string())
                .collect(),
            apt_sources,
        };
        r.finish(spec)
    }

    /// sha256 of the spec's meaning (its canonical JSON, not its text: comments and
    /// formatting do not change an image).
    pub(crate) fn digest(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex(&Sha256::digest(&json))
    }
}

fn top_node<'a>(root: &'a Node, key: &str) -> Option<&'a Node> {
    match &root.kind {
        Kind::Map(entries) => entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v),
        _ => None,
    }
}

fn checked(
    r: &mut Report,
    n: &Node,
    what: &str,
    ok: fn(&str) -> bool,
    expected: &str,
) -> Option<String> {
    let s = r.string(n, what)?;
    if ok(&s) {
        Some(s)
    } else {
        r.add(n.pos, format!("{what}: {s:?} is not {expected}"));
        None
    }
}

/// `firmware-*` packages in Debian's main component.
const FREE_FIRMWARE: &[&str] = &["firmware-linux-free", "firmware-ath9k-htc"];

fn words(
    r: &mut Report,
    n: &Node,
    what: &str,
    ok: fn(&str) -> bool,
    expected: &str,
) -> Vec<String> {
    let Some(items) = r.list(n, what) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in items {
        if let Some(s) = checked(r, item, what, ok, expected) {
            if out.contains(&s) {
                r.add(item.pos, format!("{what}: {s:?} is listed twice"));
            } else {
                out.push(s);
            }
        }
    }
    out
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn valid_name(s: &str) -> bool {
    s.len() <= 64
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
}

fn is_word(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c))
}

fn is_url(s: &str) -> bool {
    ["http://", "https://", "file://"]
        .iter()
        .any(|p| s.starts_with(p) && s.len() > p.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || ":/._-~%+@[]=,".contains(c))
}

fn is_package(s: &str) -> bool {
    let (name, version) = match s.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (s, None),
    };
    name.len() >= 2
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
        && version.is_none_or(|v| {
            !v.is_empty()
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".+-~:".contains(c))
        })
}

fn is_trim(s: &str) -> bool {
    let t = s.trim_matches('/');
    !t.is_empty()
        && !t.split('/').any(|c| c.is_empty() || c == "." || c == "..")
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+*?[]".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<OsSpec, Problems> {
        OsSpec::parse(Path::new("os/test.yaml"), "test", text)
    }

    #[test]
    fn defaults_and_a_full_spec() {
        let s = parse("suite: bookworm\n").unwrap();
        assert_eq!(s.components, ["main"]);
        assert_eq!(s.variant, "minbase");
        assert_eq!(s.architecture, "amd64");
        assert!(s.mirror.is_none() && s.packages.is_empty() && s.apt_sources.is_none());
        let s = parse(
            "suite: bookworm\nmirror: http://mirror.invalid/debian\ncomponents: [main, contrib]\n\
             variant: apt\npackages: [linux-image-amd64, puppet-agent, libc6=2.36-9]\n\
             trim: [/lib/modules/*/kernel/sound/, usr/share/man]\n\
             apt_sources: |\n  deb http://mirror.invalid/debian bookworm main\n",
        )
        .unwrap();
        assert_eq!(s.trim, ["lib/modules/*/kernel/sound", "usr/share/man"]);
        assert_eq!(s.packages[2], "libc6=2.36-9");
        assert_eq!(
            s.apt_sources.unwrap(),
            ["deb http://mirror.invalid/debian bookworm main"]
        );
    }

    #[test]
    fn problems_have_positions_and_say_what_is_valid() {
        let e = parse("suite: bookworm\nvariant: minbsae\npackges: [x]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("os/test.yaml:2:10: variant \"minbsae\" is not one of"),
            "{e}"
        );
        assert!(e.contains("did you mean \"minbase\"?"), "{e}");
        assert!(
            e.contains("os/test.yaml:3:1: unknown key \"packges\""),
            "{e}"
        );
        assert!(e.contains("did you mean \"packages\"?"), "{e}");
        let e = parse("mirror: http://x/debian\n").unwrap_err().to_string();
        assert!(e.contains("suite is required"), "{e}");
        let e = parse("suite: bookworm\npackages: [ok, \"bad;rm -rf\"]\ntrim: [../etc]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("2:16: packages: \"bad;rm -rf\" is not a Debian package name"),
            "{e}"
        );
        assert!(
            e.contains("3:8: trim: \"../etc\" is not a path or glob"),
            "{e}"
        );
        let e = parse("suite: bookworm\nmirror: \"http://x/$(id)\"\npackages: [a1, a1]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("2:9: mirror"), "{e}");
        assert!(e.contains("3:16: packages: \"a1\" is listed twice"), "{e}");
        let e = parse("suite: bookworm\napt_sources: [\"rm -rf /\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a sources.list line"), "{e}");
        let e = OsSpec::parse(
            Path::new("os/Bad Name.yaml"),
            "Bad Name",
            "suite: bookworm\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("the OS name \"Bad Name\""), "{e}");
    }

    #[test]
    fn firmware_packages_need_the_non_free_firmware_component() {
        let e = parse("suite: bookworm\npackages:\n  - firmware-linux-free\n  - firmware-bnx2x\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("os/test.yaml:4:5: firmware-bnx2x is in Debian's non-free-firmware component, which components does not name"),
            "{e}"
        );
        assert!(!e.contains("firmware-linux-free"), "{e}");
        let s = parse(
            "suite: bookworm\ncomponents: [main, non-free-firmware]\npackages: [firmware-bnx2x, firmware-realtek]\n",
        )
        .unwrap();
        assert_eq!(s.components, ["main", "non-free-firmware"]);
        assert_eq!(s.packages, ["firmware-bnx2x", "firmware-realtek"]);
    }

    #[test]
    fn the_digest_follows_meaning_not_formatting() {
        let a = parse("suite: bookworm\npackages: [a1, b2]\n").unwrap();
        let b = parse("# comment\nsuite: bookworm\npackages:\n  - a1\n  - b2\n").unwrap();
        let c = parse("suite: bookworm\npackages: [a1, b3]\n").unwrap();
        assert_eq!(a.digest(), b.digest());
        assert_ne!(a.digest(), c.digest());
        assert_eq!(a.digest().len(), 64);
    }
}
