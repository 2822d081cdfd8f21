//! Operators' install templates: minijinja templates in the kickstarts folder, read
//! from disk on each render so an edit takes effect without a rebuild or restart. Undefined
//! variables are errors (strict mode): a typo fails the render instead of producing a
//! script with a hole in it, and a failed render never yields a partial script.

use std::path::Path;

use serde::Serialize;

use crate::inventory::{DiskRule, Inventory, Machine, Vars};
use crate::mac::MacAddr;

/// The variables an install template sees (the README lists them).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct InstallVars {
    /// The machine's key MAC (its identity at stemcell).
    pub(crate) mac: String,
    /// The NIC it netbooted from, where known (a boot script's request); else `mac`.
    pub(crate) boot_nic: String,
    pub(crate) hostname: String,
    pub(crate) role: String,
    pub(crate) ip: Option<String>,
    pub(crate) server_url: String,
    pub(crate) token: String,
    pub(crate) install_url: String,
    /// cloud-init's NoCloud seed for this install (`…/nocloud/MAC/TOKEN/`): user-data is the
    /// rendered template, meta-data its instance id and hostname.
    pub(crate) nocloud_url: String,
    /// The configuration-management bootstrap for distribution installers
    /// (`snippets/converge-bootstrap.sh.j2`, rendered for this install).
    pub(crate) converge_url: String,
    pub(crate) log_url: String,
    pub(crate) done_url: String,
    pub(crate) failed_url: String,
    /// The installed system's credential for its reports (not the install token).
    pub(crate) machine_key: String,
    /// Where the installed system reports: `{report_url}/booted`, `{report_url}/puppet`.
    pub(crate) report_url: String,
    /// The role's OS image, when the role names one.
    pub(crate) os: Option<OsVars>,
    pub(crate) puppet: PuppetVars,
    /// Each secret the role declares, by name: the URL that fetches it with this
    /// install's token (never its content).
    pub(crate) secrets: std::collections::BTreeMap<String, String>,
    /// Every NIC of the machine (`interfaces:`; the key MAC alone, labelled `boot`,
    /// without it).
    pub(crate) nics: Vec<crate::network::Nic>,
    /// The installed system's network from `network:`, written for each OS's tool; `None`:
    /// the template's own default (DHCP on the NIC the machine booted from).
    pub(crate) network: Option<NetworkVars>,
    /// The machine's target-disk rule (inventory `disk:`), for `snippets/disk.sh.j2`.
    pub(crate) disk: DiskVars,
    pub(crate) vars: Vars,
}

/// A disk rule as templates see it: every field present (empty string or 0 when the rule
/// does not use it), so a shell template can assign them all without `default()`. Every
/// string holds only characters the inventory allows for its field (letters, digits and a
/// few of `. _ - : / @ + = , % ~ ^ * ? # [ ] ( ) !` and spaces): safe inside double quotes.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct DiskVars {
    pub(crate) by_path: String,
    pub(crate) by_id: String,
    pub(crate) serial: String,
    pub(crate) wwn: String,
    pub(crate) model: String,
    pub(crate) name: String,
    /// Bytes; 0: no bound.
    pub(crate) min_size: u64,
    pub(crate) max_size: u64,
    /// only, smallest, largest or first.
    pub(crate) pick: &'static str,
    pub(crate) removable: bool,
    pub(crate) raid1: bool,
    /// The whole rule in one line (`serial=S3Z9 pick=only`), for messages.
    pub(crate) rule: String,
    /// Where it was written (`machine 52:54:…`, `role db`, `defaults`, `… vars.disk`,
    /// `the default`).
    pub(crate) from: String,
}

impl DiskVars {
    pub(crate) fn new(rule: &DiskRule) -> DiskVars {
        let s = |o: &Option<String>| o.clone().unwrap_or_default();
        DiskVars {
            by_path: s(&rule.by_path),
            by_id: s(&rule.by_id),
            serial: s(&rule.serial),
            wwn: s(&rule.wwn),
            model: s(&rule.model),
            name: s(&rule.name),
            min_size: rule.min_size.unwrap_or(0),
            max_size: rule.max_size.unwrap_or(0),
            pick: rule.pick.as_str(),
            removable: rule.removable,
            raid1: rule.raid1,
            rule: rule.describe(),
            // role names are plain; the quotes of messages stay out of scripts
            from: rule.from.replace('"', ""),
        }
    }
}

/// `network:` as files for the new root (paths relative to it).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct NetworkVars {
    /// systemd-networkd: `.netdev` and `.network` files in `etc/systemd/network`.
    pub(crate) networkd: Vec<crate::network::File>,
    /// ifupdown: `etc/network/interfaces` and the `.link` files naming the NICs.
    pub(crate) ifupdown: Vec<crate::network::File>,
}

/// The OS image an install streams onto the disk.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct OsVars {
    pub(crate) name: String,
    pub(crate) url: String,
    pub(crate) sha256: String,
    pub(crate) size: u64,
}

/// How the installed system runs Puppet.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct PuppetVars {
    /// The site's Puppet code as one gzipped tar (`puppet apply`).
    pub(crate) bundle_url: String,
    /// The role's manifest inside the bundle.
    pub(crate) manifest: String,
    /// A Puppet server for `puppet agent --onetime` instead, when the role names one.
    pub(crate) server: Option<String>,
}

impl InstallVars {
    pub(crate) fn new(inv: &Inventory, m: &Machine, server_url: &str, token: &str) -> InstallVars {
        let base = format!("{server_url}/install/{}", m.mac);
        let role = inv.role_of(m);
        let nics = m.labelled_nics();
        InstallVars {
            mac: m.mac.to_string(),
            boot_nic: m.mac.to_string(),
            hostname: m.hostname.clone(),
            role: m.role.clone(),
            ip: m.ip.map(|i| i.to_string()),
            server_url: server_url.to_string(),
            token: token.to_string(),
            install_url: format!("{base}?token={token}"),
            nocloud_url: format!("{server_url}/nocloud/{}/{token}/", m.mac),
            converge_url: format!("{base}/converge?token={token}"),
            log_url: format!("{base}/log?token={token}"),
            done_url: format!("{base}/done?token={token}"),
            failed_url: format!("{base}/failed?token={token}"),
            machine_key: String::new(),
            report_url: format!("{server_url}/report/{}", m.mac),
            os: None,
            puppet: PuppetVars {
                bundle_url: format!("{server_url}/puppet/bundle.tar.gz"),
                manifest: format!("manifests/{}.pp", m.role),
                server: role.and_then(|r| r.puppet_server.clone()),
            },
            secrets: role
                .map(|r| {
                    r.secrets
                        .iter()
                        .map(|s| {
                            (
                                s.name.clone(),
                                format!("{server_url}/secret/{}/{}?token={token}", m.mac, s.name),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
            network: m.network.as_ref().map(|plan| NetworkVars {
                networkd: plan.networkd(&nics),
                ifupdown: plan.ifupdown(&nics),
            }),
            nics,
            disk: DiskVars::new(&m.disk),
            vars: inv.merged_vars(m),
        }
    }

    /// With the NIC the machine netbooted from.
    pub(crate) fn with_boot_nic(mut self, nic: MacAddr) -> InstallVars {
        self.boot_nic = nic.to_string();
        self
    }

    /// With the machine's report credential.
    pub(crate) fn with_machine_key(mut self, key: &str) -> InstallVars {
        self.machine_key = key.to_string();
        self
    }

    /// With the OS image the install streams.
    pub(crate) fn with_os(mut self, os: &crate::images::BuiltOs) -> InstallVars {
        self.os = Some(OsVars {
            name: os.name.clone(),
            url: format!("{}/os/{}/{}", self.server_url, os.name, os.file),
            sha256: os.sha256.clone(),
            size: os.size,
        });
        self
    }
}

/// Why an install script or command line could not be rendered.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RenderError {
    #[error("{template}: {message}")]
    Template { template: String, message: String },
    #[error("rendered command line contains {0:?}, which is not allowed on a kernel command line")]
    UnsafeCmdline(char),
}

fn describe(template: &str, e: &minijinja::Error, source: Option<&str>) -> RenderError {
    let mut message = e.to_string();
    if let Some(line) = e.line() {
        // Quote the offending line: "undefined value" alone does not say which one.
        let quoted = source
            .and_then(|s| s.lines().nth(line.saturating_sub(1)))
            .map(|l| format!(" in `{}`", l.trim()))
            .unwrap_or_default();
        message = format!("line {line}{quoted}: {message}");
    }
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        message.push_str(&format!(": {s}"));
        src = s.source();
    }
    RenderError::Template {
        template: template.to_string(),
        message,
    }
}

fn environment<'a>() -> minijinja::Environment<'a> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env
}

/// Renders many machines' templates from one folder, compiling each template once (for
/// `check` over a large inventory). Requests use `install_script`, which re-reads the
/// folder every time so edits are live.
pub(crate) struct Batch<'a> {
    env: minijinja::Environment<'a>,
}

impl Batch<'_> {
    pub(crate) fn new(kickstarts: &Path) -> Self {
        let mut env = environment();
        env.set_loader(minijinja::path_loader(kickstarts));
        Batch { env }
    }

    pub(crate) fn install_script(
        &self,
        template: &str,
        vars: &InstallVars,
    ) -> Result<String, RenderError> {
        let t = self
            .env
            .get_template(template)
            .map_err(|e| describe(template, &e, None))?;
        t.render(vars)
            .map_err(|e| describe(template, &e, Some(t.source())))
    }
}

/// Render `template` (a file in `kickstarts`) for one machine. Shared snippets can be
/// pulled in with `{% include %}` / `{% extends %}` from the same folder.
pub(crate) fn install_script(
    kickstarts: &Path,
    template: &str,
    vars: &InstallVars,
) -> Result<String, RenderError> {
    let mut env = environment();
    env.set_loader(minijinja::path_loader(kickstarts));
    let t = env
        .get_template(template)
        .map_err(|e| describe(template, &e, None))?;
    t.render(vars)
        .map_err(|e| describe(template, &e, Some(t.source())))
}

/// Render a role's kernel command line (a template string) and check the result.
pub(crate) fn cmdline(template: &str, vars: &InstallVars) -> Result<String, RenderError> {
    let env = environment();
    let out = env
        .render_str(template, vars)
        .map_err(|e| describe("cmdline", &e, Some(template)))?;
    // A `;` may come only from the operator's own template text (cloud-init's
    // `ds=nocloud;s=URL` needs one), never from a value: values cannot hold one
    // (`values::value_char`), and neither can the URLs, names and tokens stemcell makes.
    let literal_semicolon = template.contains(';');
    let allowed = |c: char| crate::values::cmdline_char(c) || (c == ';' && literal_semicolon);
    if let Some(bad) = out.chars().find(|c| !allowed(*c)) {
        return Err(RenderError::UnsafeCmdline(bad));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> Machine {
        crate::inventory::test_machine("52:54:00:00:00:07", "web07", "web")
    }

    #[test]
    fn install_templates_render_strictly() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("ok.j2"),
            "h={{ hostname }} d={{ vars.disk }} t={{ token }}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("typo.j2"), "echo start\n{{ vars.dsik }}\n").unwrap();
        std::fs::write(dir.path().join("syntax.j2"), "{% if %}\n").unwrap();
        let mut inv = Inventory::empty(Path::new("i.yaml"));
        let mut m = machine();
        m.vars.insert("disk".into(), "/dev/vda".into());
        inv.machines.insert(m.mac, m.clone());
        let v = InstallVars::new(&inv, &m, "http://s:8080", "tok");
        assert_eq!(
            v.done_url,
            "http://s:8080/install/52:54:00:00:00:07/done?token=tok"
        );
        let out = install_script(dir.path(), "ok.j2", &v).unwrap();
        assert_eq!(out, "h=web07 d=/dev/vda t=tok\n");
        let e = install_script(dir.path(), "typo.j2", &v)
            .unwrap_err()
            .to_string();
        assert!(e.contains("typo.j2") && e.contains("line 2"), "{e}");
        let e = install_script(dir.path(), "syntax.j2", &v)
            .unwrap_err()
            .to_string();
        assert!(e.contains("syntax.j2"), "{e}");
        assert!(install_script(dir.path(), "missing.j2", &v).is_err());
    }

    #[test]
    fn command_lines() {
        let inv = Inventory::empty(Path::new("i.yaml"));
        let v = InstallVars::new(&inv, &machine(), "http://s", "t");
        assert_eq!(
            cmdline("auto url={{ install_url }}", &v).unwrap(),
            "auto url=http://s/install/52:54:00:00:00:07?token=t"
        );
        assert!(matches!(
            cmdline("a {{ token }}'", &v),
            Err(RenderError::UnsafeCmdline('\''))
        ));
        // cloud-init's NoCloud needs a `;`: from the template text it is kept…
        assert_eq!(
            cmdline("autoinstall ds=nocloud;s={{ nocloud_url }}", &v).unwrap(),
            "autoinstall ds=nocloud;s=http://s/nocloud/52:54:00:00:00:07/t/"
        );
        // …but a `;` that comes from a value is refused (values cannot hold one; a
        // variable that somehow did must not reach the command line either).
        let mut hostile = v.clone();
        hostile.hostname = "a;b".into();
        assert!(matches!(
            cmdline("h={{ hostname }}", &hostile),
            Err(RenderError::UnsafeCmdline(';'))
        ));
    }
}

#[cfg(test)]
mod disk_snippet {
    //! `snippets/disk.sh.j2` rendered from real inventories and run by `sh` against a fake
    //! disk lister: which disk each rule picks, and the refusal that lists every disk.
    use super::*;
    use std::process::Command;

    const FACTS: &str = "\
disk.sda.bytes=1073741824
disk.sda.model=QEMU HARDDISK
disk.sda.serial=1-0000:00:05.0-1
disk.sda.wwn=
disk.sda.by_path=pci-0000:00:05.0-usb-0:1:1.0-scsi-0:0:0:0
disk.sda.by_id=usb-QEMU_QEMU_HARDDISK_1-0000:00:05.0-1-0:0
disk.sda.removable=1
disk.sda.rotational=1
disk.sda.transport=usb
disk.vda.bytes=10737418240
disk.vda.model=
disk.vda.serial=SMALL-1
disk.vda.wwn=
disk.vda.by_path=pci-0000:00:04.0
disk.vda.by_id=virtio-SMALL-1
disk.vda.removable=0
disk.vda.rotational=1
disk.vda.transport=virtio
disk.vdb.bytes=21474836480
disk.vdb.model=
disk.vdb.serial=BIG-2
disk.vdb.wwn=
disk.vdb.by_path=pci-0000:00:03.0
disk.vdb.by_id=virtio-BIG-2
disk.vdb.removable=0
disk.vdb.rotational=1
disk.vdb.transport=virtio
";

    /// (exit status, output) of the snippet for a machine whose entry ends with `extra`.
    fn run(extra: &str) -> (bool, String) {
        let dir = tempfile::tempdir().unwrap();
        let ks = dir.path().join("kickstarts");
        std::fs::create_dir_all(ks.join("snippets")).unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        std::fs::copy(
            root.join("kickstarts/snippets/disk.sh.j2"),
            ks.join("snippets/disk.sh.j2"),
        )
        .unwrap();
        std::fs::write(
            ks.join("t.sh.j2"),
            "set -eu\nsay() { echo \"install: $*\"; }\ndie() { echo \"install: FAILED: $*\"; exit 1; }\n{% include \"snippets/disk.sh.j2\" %}\npick_disks\necho \"PICKED $DISKS\"\n",
        )
        .unwrap();
        let lister = dir.path().join("lister");
        std::fs::write(dir.path().join("facts"), FACTS).unwrap();
        std::fs::write(
            &lister,
            format!("#!/bin/sh\ncat '{}'\n", dir.path().join("facts").display()),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&lister, std::fs::Permissions::from_mode(0o755)).unwrap();
        let text = format!(
            "roles:\n  r:\n    template: t.sh.j2\nmachines:\n  \"52:54:00:00:00:01\":\n    role: r\n{extra}"
        );
        let ctx = crate::inventory::Context {
            kickstarts: ks.clone(),
            os_specs: dir.path().join("os"),
            subnets: vec![],
        };
        let inv = Inventory::parse(Path::new("i.yaml"), &text, &ctx)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let m = inv.machine(&"52:54:00:00:00:01".parse().unwrap()).unwrap();
        let vars = InstallVars::new(&inv, m, "http://s", "t");
        let script = install_script(&ks, "t.sh.j2", &vars).unwrap();
        // busybox's sh, as in the stem cell, where there is one; else the system's
        let mut cmd = if Path::new("/bin/busybox").exists() {
            let mut c = Command::new("/bin/busybox");
            c.arg("sh");
            c
        } else {
            Command::new("sh")
        };
        let out = cmd
            .arg("-c")
            .arg(&script)
            .env("DISKS_LISTER", &lister)
            .env("DISKS_FACTS", dir.path().join("seen"))
            .env("DISKS_SETTLE", "0")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    fn picks(extra: &str, want: &str) {
        let (ok, out) = run(extra);
        assert!(ok, "{extra}: {out}");
        assert!(out.contains(&format!("PICKED {want}\n")), "{extra}: {out}");
    }

    #[test]
    fn rules_pick_the_disk_they_name_whatever_the_kernel_calls_it() {
        picks("    disk: { serial: SMALL-1 }\n", "/dev/vda");
        picks("    disk: { by_path: pci-0000:00:03.0 }\n", "/dev/vdb");
        picks(
            "    disk: { by_path: /dev/disk/by-path/pci-0000:00:04.0 }\n",
            "/dev/vda",
        );
        picks("    disk: { by_id: virtio-BIG-2 }\n", "/dev/vdb");
        picks("    disk: { pick: smallest }\n", "/dev/vda");
        picks("    disk: { pick: largest }\n", "/dev/vdb");
        // first by by_path: 00:03.0 (vdb) before 00:04.0 (vda)
        picks("    disk: { pick: first }\n", "/dev/vdb");
        picks("    disk: { min_size: 15G }\n", "/dev/vdb");
        picks("    disk: { max_size: 12GiB }\n", "/dev/vda");
        // the USB stick only when removable disks are allowed
        picks(
            "    disk: { model: \"QEMU*\", removable: true }\n",
            "/dev/sda",
        );
        picks("    disk: { raid1: true }\n", "/dev/vda /dev/vdb");
        picks(
            "    disk: { raid1: true, pick: largest, removable: true }\n",
            "/dev/vdb /dev/vda",
        );
        // the legacy variable is an explicit name rule
        picks("    vars: { disk: /dev/vdb }\n", "/dev/vdb");
        let (ok, out) = run("    disk: { serial: SMALL-1 }\n");
        assert!(ok);
        assert!(
            out.contains("install: disk: /dev/vda vda (10.7 GB, model -, serial SMALL-1, by_path pci-0000:00:04.0, virtio): the only match of the disk rule serial=SMALL-1 pick=only (from machine 52:54:00:00:00:01)"),
            "{out}"
        );
    }

    #[test]
    fn no_single_match_refuses_and_lists_every_disk() {
        // no rule: the default `pick: only` sees two non-removable disks
        let (ok, out) = run("");
        assert!(!ok, "{out}");
        let reason = out
            .lines()
            .find(|l| l.starts_with("install: FAILED: "))
            .unwrap_or_else(|| panic!("{out}"));
        assert_eq!(
            reason,
            "install: FAILED: no disk to install on: the disk rule pick=only (from the default) matches 2 disk(s) (vda vdb), it needs exactly 1; nothing was written. Disks seen: sda (1.1 GB, model QEMU HARDDISK, serial 1-0000:00:05.0-1, by_path pci-0000:00:05.0-usb-0:1:1.0-scsi-0:0:0:0, usb, removable); vda (10.7 GB, model -, serial SMALL-1, by_path pci-0000:00:04.0, virtio); vdb (21.5 GB, model -, serial BIG-2, by_path pci-0000:00:03.0, virtio)"
        );
        assert!(!out.contains("PICKED"), "{out}");
        // nothing matches
        let (ok, out) = run("    disk: { name: nvme0n1 }\n");
        assert!(
            !ok && out.contains("matches 0 disk(s), it needs exactly 1"),
            "{out}"
        );
        // raid1 with one match
        let (ok, out) = run("    disk: { raid1: true, min_size: 15G }\n");
        assert!(
            !ok && out.contains("matches 1 disk(s) (vdb), it needs exactly 2 (raid1)"),
            "{out}"
        );
        let (ok, out) = run("    disk: { model: \"SAMSUNG*\", pick: smallest }\n");
        assert!(!ok && out.contains("matches 0 disk(s)"), "{out}");
    }
}

#[cfg(test)]
mod shipped_templates {
    //! The shipped stem-cell templates render with every kind of disk rule into scripts
    //! `sh -n` accepts, and carry the rule.
    use super::*;
    use std::process::Command;

    fn render(template: &str, disk: &str) -> String {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("debian-12.yaml"), "suite: bookworm\n").unwrap();
        let text = format!(
            "roles:\n  r:\n    template: {template}\nmachines:\n  \"52:54:00:00:00:01\":\n    role: r\n{disk}"
        );
        let ctx = crate::inventory::Context {
            kickstarts: root.join("kickstarts"),
            os_specs: dir.path().to_path_buf(),
            subnets: vec![],
        };
        let inv = Inventory::parse(Path::new("i.yaml"), &text, &ctx)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let m = inv.machine(&"52:54:00:00:00:01".parse().unwrap()).unwrap();
        let os = crate::images::BuiltOs {
            name: "debian-12".into(),
            sha256: "0".repeat(64),
            size: 1,
            file: "x.tar.zst".into(),
        };
        let vars = InstallVars::new(&inv, m, "http://s", "t")
            .with_machine_key("k")
            .with_os(&os);
        let script = install_script(&root.join("kickstarts"), template, &vars).unwrap();
        let st = Command::new("sh")
            .arg("-n")
            .arg("-c")
            .arg(&script)
            .status()
            .unwrap();
        assert!(st.success(), "sh -n {template} with {disk:?}");
        script
    }

    #[test]
    fn debian_and_base_render_with_disk_rules() {
        for t in ["debian.sh.j2", "base.sh.j2"] {
            let s = render(t, "");
            assert!(
                s.contains("DISK_RULE=\"pick=only (from the default)\""),
                "{t}"
            );
            assert!(s.contains("\npick_disks\n"), "{t}");
            assert!(!s.contains("DISK=\"/dev/sda\""), "{t}: a bare /dev/sda");
            let s = render(t, "    vars: { disk: /dev/vdb }\n");
            assert!(s.contains("DISK_RULE_NAME=\"vdb\""), "{t}");
        }
        let s = render(
            "debian.sh.j2",
            "    disk: { model: \"SAMSUNG*\", min_size: 100G, pick: smallest, raid1: true }\n",
        );
        assert!(s.contains("DISK_RULE_RAID1=\"1\""));
        assert!(s.contains("DISK_RULE_MODEL=\"SAMSUNG*\""));
        assert!(s.contains("DISK_RULE_MIN_SIZE=\"100000000000\""));
        assert!(s.contains("DISK_RULE_PICK=\"smallest\""));
        assert!(s.contains("--level=1 --raid-devices=2"));
    }
}
