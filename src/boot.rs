//! The boot decision, in one pure place: from a machine's inventory entry and recorded
//! state to what it should do on this netboot (`Choice`), and the iPXE script that says
//! so. HTTP only calls it (and records what was served); `render` supplies the operators'
//! templates for role kernels' command lines.
//!
//! Boot scripts are askama templates compiled into the binary (`templates/boot`).

use askama::Template;

use crate::config::Config;
use crate::inventory::{Inventory, Machine, UnknownPolicy};
use crate::mac::MacAddr;
use crate::render::{self, InstallVars, RenderError};
use crate::state::{self, Lifecycle, Record};

/// Why a boot script could not be produced.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BootError {
    #[error("no install token was issued")]
    NoToken,
    #[error("role {0:?} is not defined")]
    NoRole(String),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error("boot script template: {0}")]
    Template(#[from] askama::Error),
    #[error("role {role:?}: its {what} {url} is an http(s) URL, which GRUB cannot fetch (Debian's grubnetx64 has TFTP only); put the file in the assets folder for machines whose loader is grub")]
    GrubNeedsTftp {
        role: String,
        what: &'static str,
        url: String,
    },
}

/// How the loader fetches the installer: iPXE over HTTP from the server's URL, GRUB over
/// TFTP (paths on the server it booted from; see `http::grub` for the names).
#[derive(Clone, Copy, Debug)]
enum Fetch<'a> {
    Http(&'a str),
    Tftp,
}

/// What a machine's boot script tells it to do.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Choice {
    /// Boot the installer (the stem cell or its role's own kernel).
    Install,
    /// Installed: boot from the local disk.
    Local,
    /// The last install failed; do nothing until re-armed.
    Failed(String),
    /// Unknown machine, policy `discover`: boot the stem cell to report what it is.
    Discover,
    /// Unknown machine, policy `ignore`.
    Ignore,
}

/// Pure: the boot decision from the inventory entry (if any), the lifecycle and the policy.
pub(crate) fn choose(
    listed: Option<&Machine>,
    lifecycle: Lifecycle,
    reason: Option<&str>,
    policy: UnknownPolicy,
) -> Choice {
    match (listed, lifecycle) {
        (None, _) => match policy {
            UnknownPolicy::Discover => Choice::Discover,
            UnknownPolicy::Ignore => Choice::Ignore,
        },
        // Installed, whatever the installed system reported since: boot from the disk.
        (Some(_), s) if s.on_disk() => Choice::Local,
        (Some(_), Lifecycle::Failed) => {
            Choice::Failed(reason.unwrap_or("no reason given").to_string())
        }
        (Some(_), _) => Choice::Install,
    }
}

#[derive(Template)]
#[template(path = "boot/install.ipxe", escape = "none")]
pub(crate) struct InstallScript<'a> {
    pub(crate) mac: &'a str,
    pub(crate) hostname: &'a str,
    pub(crate) role: &'a str,
    pub(crate) kernel_url: &'a str,
    pub(crate) initrd_url: &'a str,
    pub(crate) cmdline: &'a str,
    pub(crate) script_url: &'a str,
}

#[derive(Template)]
#[template(path = "boot/local.ipxe", escape = "none")]
pub(crate) struct LocalScript<'a> {
    pub(crate) mac: &'a str,
    pub(crate) hostname: &'a str,
}

#[derive(Template)]
#[template(path = "boot/failed.ipxe", escape = "none")]
pub(crate) struct FailedScript<'a> {
    pub(crate) mac: &'a str,
    pub(crate) hostname: &'a str,
    pub(crate) reason: &'a str,
}

#[derive(Template)]
#[template(path = "boot/ignore.ipxe", escape = "none")]
pub(crate) struct IgnoreScript<'a> {
    pub(crate) mac: &'a str,
}

#[derive(Template)]
#[template(path = "boot/install.grub", escape = "none")]
pub(crate) struct GrubInstall<'a> {
    pub(crate) mac: &'a str,
    pub(crate) hostname: &'a str,
    pub(crate) role: &'a str,
    pub(crate) kernel: &'a str,
    pub(crate) initrd: &'a str,
    pub(crate) cmdline: &'a str,
    pub(crate) script: &'a str,
}

#[derive(Template)]
#[template(path = "boot/local.grub", escape = "none")]
pub(crate) struct GrubLocal<'a> {
    pub(crate) mac: &'a str,
    pub(crate) hostname: &'a str,
}

#[derive(Template)]
#[template(path = "boot/failed.grub", escape = "none")]
pub(crate) struct GrubFailed<'a> {
    pub(crate) mac: &'a str,
    pub(crate) hostname: &'a str,
    pub(crate) reason: &'a str,
}

#[derive(Template)]
#[template(path = "boot/ignore.grub", escape = "none")]
pub(crate) struct GrubIgnore<'a> {
    pub(crate) mac: &'a str,
}

/// The grub.cfg every GRUB machine fetches first (`/grub/grub.cfg`): it loads its own,
/// `/grub/MAC.cfg` ([`grub_cfg_text`]).
#[derive(Template)]
#[template(path = "boot/first.grub", escape = "none")]
pub(crate) struct GrubFirst;

/// A kernel command line as GRUB script words: each single-quoted (a `;` would end the
/// command, a `?` could be globbed), none holding a space. GRUB wraps an argument that
/// holds a space in double quotes when it builds the command line, and the kernel then
/// takes the whole line as one parameter (seen: no `console=`, so no serial console).
/// stemcell's values never hold a quote.
fn grub_words(cmdline: &str) -> String {
    cmdline
        .split_whitespace()
        .map(|w| format!("'{w}'"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The TFTP path of a NIC's own grub.cfg.
pub(crate) fn grub_cfg_path(nic: MacAddr) -> String {
    format!("/grub/{nic}.cfg")
}

/// Pure: the grub.cfg for a choice, the same decision as [`boot_script_text`] says to
/// iPXE: kernel and initrd over TFTP (`/stemcell/MAC/…`, `/assets/MAC/…`), the stem cell's
/// command line with the server's HTTP `url`.
pub(crate) fn grub_cfg_text(
    config: &Config,
    url: &str,
    inv: &Inventory,
    mac: MacAddr,
    choice: &Choice,
    token: Option<&str>,
) -> Result<String, BootError> {
    let mac_s = mac.to_string();
    let machine = inv.machine(&mac);
    let script = grub_cfg_path(mac);
    Ok(match (choice, machine) {
        (Choice::Install, Some(m)) => {
            let token = token.ok_or(BootError::NoToken)?;
            let (kernel, initrd, cmdline) =
                installer(config, Fetch::Tftp, url, inv, m, mac, token)?;
            GrubInstall {
                mac: &mac_s,
                hostname: &m.hostname,
                role: &m.role,
                kernel: &kernel,
                initrd: &initrd,
                cmdline: &grub_words(&cmdline),
                script: &script,
            }
            .render()?
        }
        (Choice::Local, Some(m)) => GrubLocal {
            mac: &mac_s,
            hostname: &m.hostname,
        }
        .render()?,
        (Choice::Failed(reason), Some(m)) => GrubFailed {
            mac: &mac_s,
            hostname: &m.hostname,
            reason: &ipxe_text(reason),
        }
        .render()?,
        (Choice::Discover, _) => GrubInstall {
            mac: &mac_s,
            hostname: "unknown",
            role: "discover",
            kernel: &format!("/stemcell/{mac_s}/vmlinuz"),
            initrd: &format!("/stemcell/{mac_s}/initrd.img"),
            cmdline: &grub_words(&stemcell_cmdline(
                &mac,
                &mac,
                url,
                StemcellMode::Discover(token.ok_or(BootError::NoToken)?),
                &config.stemcell.cmdline,
            )),
            script: &script,
        }
        .render()?,
        _ => GrubIgnore { mac: &mac_s }.render()?,
    })
}

/// Make a free-text reason safe to echo in an iPXE script (one line, no expansions).
pub(crate) fn ipxe_text(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || " ._-:/,()=+@%".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(200)
        .collect()
}

/// Pure: what `mac` should do on its next boot.
pub(crate) fn choice_for(inv: &Inventory, mac: MacAddr, record: Option<&Record>) -> Choice {
    let machine = inv.machine(&mac);
    choose(
        machine,
        state::effective(record, machine.is_some()),
        record.and_then(|r| r.reason.as_deref()),
        inv.defaults.unknown,
    )
}

/// Pure: the text of the boot script for a choice (`token` is needed for `Install`).
/// `mac` is the NIC that asked (any NIC of a listed machine).
pub(crate) fn boot_script_text(
    config: &Config,
    url: &str,
    inv: &Inventory,
    mac: MacAddr,
    choice: &Choice,
    token: Option<&str>,
) -> Result<String, BootError> {
    let mac_s = mac.to_string();
    let machine = inv.machine(&mac);
    let script_url = format!("{url}/boot/{mac_s}.ipxe");
    Ok(match (choice, machine) {
        (Choice::Install, Some(m)) => {
            let token = token.ok_or(BootError::NoToken)?;
            let (kernel, initrd, cmdline) =
                installer(config, Fetch::Http(url), url, inv, m, mac, token)?;
            InstallScript {
                mac: &mac_s,
                hostname: &m.hostname,
                role: &m.role,
                kernel_url: &kernel,
                initrd_url: &initrd,
                cmdline: &cmdline,
                script_url: &script_url,
            }
            .render()?
        }
        (Choice::Local, Some(m)) => LocalScript {
            mac: &mac_s,
            hostname: &m.hostname,
        }
        .render()?,
        (Choice::Failed(reason), Some(m)) => FailedScript {
            mac: &mac_s,
            hostname: &m.hostname,
            reason: &ipxe_text(reason),
        }
        .render()?,
        (Choice::Discover, _) => InstallScript {
            mac: &mac_s,
            hostname: "unknown",
            role: "discover",
            kernel_url: &format!("{url}/stemcell/vmlinuz?mac={mac_s}"),
            initrd_url: &format!("{url}/stemcell/initrd.img?mac={mac_s}"),
            cmdline: &stemcell_cmdline(
                &mac,
                &mac,
                url,
                StemcellMode::Discover(token.ok_or(BootError::NoToken)?),
                &config.stemcell.cmdline,
            ),
            script_url: &script_url,
        }
        .render()?,
        _ => IgnoreScript { mac: &mac_s }.render()?,
    })
}

/// Kernel, initrd (URLs for iPXE, TFTP paths for GRUB) and command line for a machine's
/// install boot from its NIC `nic`; `url` is the server's HTTP URL the installer uses.
fn installer(
    config: &Config,
    fetch: Fetch<'_>,
    url: &str,
    inv: &Inventory,
    m: &Machine,
    nic: MacAddr,
    token: &str,
) -> Result<(String, String, String), BootError> {
    let mac = m.mac;
    let role = inv
        .role_of(m)
        .ok_or_else(|| BootError::NoRole(m.role.clone()))?;
    let locate = |s: &str, what: &'static str| -> Result<String, BootError> {
        let remote = s.starts_with("http://") || s.starts_with("https://");
        Ok(match fetch {
            Fetch::Http(_) if remote => s.to_string(),
            Fetch::Http(base) => format!("{base}/assets/{s}?mac={mac}"),
            Fetch::Tftp if remote => {
                return Err(BootError::GrubNeedsTftp {
                    role: role.name.clone(),
                    what,
                    url: s.to_string(),
                })
            }
            Fetch::Tftp => format!("/assets/{mac}/{s}"),
        })
    };
    match &role.kernel {
        Some(k) => {
            let vars = InstallVars::new(inv, m, url, token).with_boot_nic(nic);
            let cmdline = match &role.cmdline {
                Some(c) => render::cmdline(c, &vars)?,
                None => String::new(),
            };
            let initrd = match role.initrd.as_deref() {
                Some(i) => locate(i, "initrd")?,
                None => String::new(),
            };
            Ok((locate(k, "kernel")?, initrd, cmdline))
        }
        None => Ok((
            match fetch {
                Fetch::Http(base) => format!("{base}/stemcell/vmlinuz?mac={mac}"),
                Fetch::Tftp => format!("/stemcell/{mac}/vmlinuz"),
            },
            match fetch {
                Fetch::Http(base) => format!("{base}/stemcell/initrd.img?mac={mac}"),
                Fetch::Tftp => format!("/stemcell/{mac}/initrd.img"),
            },
            stemcell_cmdline(
                &mac,
                &nic,
                url,
                StemcellMode::Install(token),
                &config.stemcell.cmdline,
            ),
        )),
    }
}

/// A short fingerprint of what a machine would be installed from (role, template text,
/// variables), to tell when an installed machine has drifted from its inventory entry.
pub(crate) fn install_fingerprint(config: &Config, inv: &Inventory, m: &Machine) -> String {
    fingerprint_with(config, inv, m, &mut TemplateCache::new())
}

/// Template texts read once per request when many machines are fingerprinted.
pub(crate) type TemplateCache = std::collections::HashMap<String, Vec<u8>>;

pub(crate) fn fingerprint_with(
    config: &Config,
    inv: &Inventory,
    m: &Machine,
    cache: &mut TemplateCache,
) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |b: &[u8]| {
        for x in b {
            h ^= u64::from(*x);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    feed(m.role.as_bytes());
    if let Some(role) = inv.role_of(m) {
        feed(role.template.as_bytes());
        let text = cache.entry(role.template.clone()).or_insert_with(|| {
            std::fs::read(config.kickstarts.join(&role.template)).unwrap_or_default()
        });
        feed(text);
        feed(format!("{:?}{:?}{:?}", role.kernel, role.initrd, role.cmdline).as_bytes());
    }
    feed(
        serde_json::to_string(&inv.merged_vars(m))
            .unwrap_or_default()
            .as_bytes(),
    );
    // A `disk:` rule changes what is installed where; machines without one (and the
    // `vars.disk` spelling, in the variables above) keep the fingerprint they had.
    if m.disk.is_block() {
        feed(m.disk.describe().as_bytes());
    }
    format!("{}:{h:016x}", m.role)
}

/// What the stem cell is booted for, with the token its reports must carry.
#[derive(Clone, Copy, Debug)]
pub(crate) enum StemcellMode<'a> {
    /// Install, with the machine's install token.
    Install(&'a str),
    /// Report the hardware, with the machine's discovery token.
    Discover(&'a str),
}

/// The stem cell's own command line: which NIC it booted from (`nic`), where the server
/// is, which machine it is (`mac`, its key), the token.
pub(crate) fn stemcell_cmdline(
    mac: &MacAddr,
    nic: &MacAddr,
    server_url: &str,
    mode: StemcellMode<'_>,
    extra: &str,
) -> String {
    let mut s = format!(
        "BOOTIF={} stemcell.url={} stemcell.mac={}",
        nic.bootif(),
        server_url,
        mac
    );
    match mode {
        StemcellMode::Install(t) => s.push_str(&format!(" stemcell.token={t}")),
        StemcellMode::Discover(t) => {
            s.push_str(&format!(" stemcell.mode=discover stemcell.token={t}"))
        }
    }
    // A stem cell whose kernel panics (seen under TCG: "IO-APIC + timer doesn't work") would
    // hang there for good; rebooting netboots it again, and `installer_boots` bounds how
    // often. The operator's cmdline comes after it, so its own `panic=` wins.
    s.push_str(" panic=30");
    if !extra.is_empty() {
        s.push(' ');
        s.push_str(extra);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> Machine {
        crate::inventory::test_machine("52:54:00:00:00:07", "web07", "web")
    }

    #[test]
    fn the_boot_decision_follows_state_and_policy() {
        let m = machine();
        use Lifecycle::*;
        for (state, want) in [
            (Pending, Choice::Install),
            (Installing, Choice::Install),
            (Installed, Choice::Local),
            (Failed, Choice::Failed("disk".into())),
        ] {
            assert_eq!(
                choose(Some(&m), state, Some("disk"), UnknownPolicy::Ignore),
                want
            );
        }
        assert_eq!(
            choose(None, Unknown, None, UnknownPolicy::Ignore),
            Choice::Ignore
        );
        assert_eq!(
            choose(None, Discovered, None, UnknownPolicy::Discover),
            Choice::Discover
        );
    }

    #[test]
    fn boot_scripts_are_ipxe_scripts_for_bios_and_uefi() {
        let s = LocalScript {
            mac: "52:54:00:00:00:07",
            hostname: "web07",
        }
        .render()
        .unwrap();
        assert!(s.starts_with("#!ipxe\n"));
        assert!(s.contains("sanboot --no-describe --drive 0x80"));
        assert!(s.contains("iseq ${platform} efi"));
        let s = InstallScript {
            mac: "m",
            hostname: "h",
            role: "r",
            kernel_url: "http://x/k",
            initrd_url: "http://x/i",
            cmdline: "BOOTIF=01-aa",
            script_url: "http://x/boot/m.ipxe",
        }
        .render()
        .unwrap();
        assert!(s.contains("kernel http://x/k initrd=initrd.img BOOTIF=01-aa"));
        assert!(s.contains("initrd --name initrd.img http://x/i"));
    }

    #[test]
    fn the_stem_cells_command_line() {
        let mac: MacAddr = "52:54:00:00:00:07".parse().unwrap();
        let s = stemcell_cmdline(
            &mac,
            &mac,
            "http://s",
            StemcellMode::Install("t0k"),
            "console=ttyS0",
        );
        assert_eq!(s, "BOOTIF=01-52-54-00-00-00-07 stemcell.url=http://s stemcell.mac=52:54:00:00:00:07 stemcell.token=t0k panic=30 console=ttyS0");
        // Booted from another NIC: BOOTIF names that NIC, stemcell.mac the machine.
        let nic: MacAddr = "52:54:00:00:00:08".parse().unwrap();
        let s = stemcell_cmdline(&mac, &nic, "http://s", StemcellMode::Install("t"), "");
        assert!(
            s.starts_with(
                "BOOTIF=01-52-54-00-00-00-08 stemcell.url=http://s stemcell.mac=52:54:00:00:00:07 "
            ),
            "{s}"
        );
        let s = stemcell_cmdline(&mac, &mac, "http://s", StemcellMode::Discover("d1"), "");
        assert!(
            s.ends_with("stemcell.mode=discover stemcell.token=d1 panic=30"),
            "{s}"
        );
        // The operator's own panic= comes last, and the kernel takes the last one.
        let s = stemcell_cmdline(
            &mac,
            &mac,
            "http://s",
            StemcellMode::Install("t"),
            "panic=0",
        );
        assert!(s.ends_with("panic=30 panic=0"), "{s}");
    }

    /// A site whose machines netboot GRUB: `web` installs with the stem cell, `asset`
    /// with its own kernel from the assets folder, `remote` from an http URL (which GRUB
    /// cannot fetch).
    fn grub_site() -> (tempfile::TempDir, Config, Inventory) {
        let dir = tempfile::tempdir().unwrap();
        let ks = dir.path().join("kickstarts");
        std::fs::create_dir_all(&ks).unwrap();
        std::fs::write(ks.join("t.sh.j2"), "true\n").unwrap();
        let config = Config::parse(
            &dir.path().join("stemcell.yaml"),
            "interface: br0\nserver_ip: 198.18.0.1\nstemcell:\n  cmdline: console=ttyS0\n",
        )
        .unwrap();
        let text = "defaults:\n  unknown: discover\n  loader: grub\nroles:\n  web:\n    template: t.sh.j2\n  asset:\n    template: t.sh.j2\n    kernel: d/linux\n    initrd: d/initrd.gz\n    cmdline: auto=true;url={{ install_url }}\n  remote:\n    template: t.sh.j2\n    kernel: http://mirror/linux\nmachines:\n  \"52:54:00:00:00:07\": {hostname: web07, role: web}\n  \"52:54:00:00:00:08\": {hostname: di08, role: asset}\n  \"52:54:00:00:00:09\": {hostname: rm09, role: remote}\n";
        let ctx = crate::inventory::Context {
            kickstarts: ks,
            os_specs: dir.path().join("os"),
            subnets: vec![],
        };
        let inv = Inventory::parse(Path::new("i.yaml"), text, &ctx).unwrap();
        (dir, config, inv)
    }

    use std::path::Path;

    #[test]
    fn grub_cfg_for_each_choice() {
        let (_dir, config, inv) = grub_site();
        let url = "http://198.18.0.1:8080";
        let web: MacAddr = "52:54:00:00:00:07".parse().unwrap();
        let cfg = |mac: MacAddr, c: &Choice, token: Option<&str>| {
            grub_cfg_text(&config, url, &inv, mac, c, token).unwrap()
        };

        // Install: the stem cell over TFTP, each word of its command line quoted on its
        // own, a retry that loads this machine's config again.
        let s = cfg(web, &Choice::Install, Some("t0k"));
        assert!(
            s.contains("echo 'stemcell: installing web07 as web'"),
            "{s}"
        );
        assert!(s.contains("linux /stemcell/52:54:00:00:00:07/vmlinuz 'BOOTIF=01-52-54-00-00-00-07' 'stemcell.url=http://198.18.0.1:8080' 'stemcell.mac=52:54:00:00:00:07' 'stemcell.token=t0k' 'panic=30' 'console=ttyS0'\n"), "{s}");
        assert!(
            s.contains("\ninitrd /stemcell/52:54:00:00:00:07/initrd.img\nboot\n"),
            "{s}"
        );
        assert!(
            s.trim_end()
                .ends_with("sleep 10\nconfigfile /grub/52:54:00:00:00:07.cfg"),
            "{s}"
        );
        assert!(matches!(
            grub_cfg_text(&config, url, &inv, web, &Choice::Install, None),
            Err(BootError::NoToken)
        ));

        // A role's own kernel comes from the assets folder over TFTP; its `;` stays inside
        // the quotes (unquoted, GRUB would end the command there).
        let di: MacAddr = "52:54:00:00:00:08".parse().unwrap();
        let s = cfg(di, &Choice::Install, Some("t1"));
        assert!(s.contains("linux /assets/52:54:00:00:00:08/d/linux 'auto=true;url=http://198.18.0.1:8080/install/52:54:00:00:00:08?token=t1'\n"), "{s}");
        assert_eq!(grub_words("a=1  b;c\td"), "'a=1' 'b;c' 'd'");
        assert!(
            s.contains("initrd /assets/52:54:00:00:00:08/d/initrd.gz\n"),
            "{s}"
        );
        // An http kernel cannot be fetched by Debian's network GRUB: a clear error.
        let rm: MacAddr = "52:54:00:00:00:09".parse().unwrap();
        let e = grub_cfg_text(&config, url, &inv, rm, &Choice::Install, Some("t"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("role \"remote\": its kernel http://mirror/linux is an http(s) URL, which GRUB cannot fetch"), "{e}");

        // Installed: the disk's own GRUB config, else its removable-path loader; no such
        // disk: back to the firmware.
        let s = cfg(web, &Choice::Local, None);
        assert!(s.contains("if search --no-floppy --file --set=stemcell_root /boot/grub/grub.cfg; then\n  set root=$stemcell_root\n  configfile ($stemcell_root)/boot/grub/grub.cfg\nfi"), "{s}");
        assert!(
            s.contains("search --no-floppy --file --set=stemcell_esp $stemcell_efi"),
            "{s}"
        );
        assert!(
            // $root is the ESP: the chainloaded image gets $root's device (systemd-boot
            // found no root directory on the network device: the arm64 scenario).
            s.contains("set root=$stemcell_esp\n  chainloader $stemcell_efi\n  boot\n"),
            "{s}"
        );
        assert!(s.contains("/EFI/BOOT/BOOTX64.EFI") && s.contains("/EFI/BOOT/BOOTAA64.EFI"));
        assert!(s.trim_end().ends_with("exit 1"), "{s}");
        assert!(!s.contains("linux "), "{s}");

        // Failed: wait, no install; the reason made safe to echo inside quotes.
        let s = cfg(
            web,
            &Choice::Failed("disk 'sda' gone; $(reboot)".into()),
            None,
        );
        assert!(
            s.contains("echo 'stemcell: the install of web07 failed: disk _sda_ gone_ _(reboot)'"),
            "{s}"
        );
        assert!(s.contains("sleep 30\nexit 1"), "{s}");
        assert!(!s.contains("linux "), "{s}");

        // Discover: the stem cell in discovery mode, by the asking NIC.
        let unknown: MacAddr = "52:54:00:00:00:99".parse().unwrap();
        let s = cfg(unknown, &Choice::Discover, Some("d1"));
        assert!(s.contains("linux /stemcell/52:54:00:00:00:99/vmlinuz 'BOOTIF=01-52-54-00-00-00-99' 'stemcell.url=http://198.18.0.1:8080' 'stemcell.mac=52:54:00:00:00:99' 'stemcell.mode=discover' 'stemcell.token=d1' 'panic=30' 'console=ttyS0'"), "{s}");
        assert!(
            s.contains("echo 'stemcell: installing unknown as discover'"),
            "{s}"
        );

        // Ignore: nothing loaded, back to the firmware.
        let s = cfg(unknown, &Choice::Ignore, None);
        assert!(
            s.contains("is not in the inventory; not netbooting it'\nexit 1"),
            "{s}"
        );
        assert!(!s.contains("linux "), "{s}");

        // The same decisions as iPXE's, from the same choice.
        let ipxe =
            boot_script_text(&config, url, &inv, web, &Choice::Install, Some("t0k")).unwrap();
        assert!(
            ipxe.contains("kernel http://198.18.0.1:8080/stemcell/vmlinuz?mac=52:54:00:00:00:07"),
            "{ipxe}"
        );
    }

    #[test]
    fn grubs_first_config_loads_the_machines_own_by_its_mac() {
        let s = GrubFirst.render().unwrap();
        assert!(
            s.contains("configfile $prefix/${net_default_mac}.cfg"),
            "{s}"
        );
        let mac: MacAddr = "52:54:00:00:00:07".parse().unwrap();
        // GRUB's net_default_mac is lower-case with colons, as MacAddr prints.
        assert_eq!(grub_cfg_path(mac), "/grub/52:54:00:00:00:07.cfg");
    }
}
