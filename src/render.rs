//! Everything stemcell writes for a machine to run: iPXE boot scripts and install scripts.
//!
//! Boot scripts come from askama templates compiled into the binary (`templates/boot`);
//! install scripts come from operators' minijinja templates in the kickstarts folder, read
//! from disk on each render so an edit takes effect without a rebuild or restart. Undefined
//! variables are errors (strict mode): a typo fails the render instead of producing a
//! script with a hole in it, and a failed render never yields a partial script.
//!
//! `choose` is the pure decision "what should this machine do on this boot".

use std::path::Path;

use askama::Template;
use serde::Serialize;

use crate::inventory::{Inventory, Machine, UnknownPolicy, Vars};
use crate::mac::MacAddr;
use crate::state::Lifecycle;

/// What a machine's boot script tells it to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Choice {
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
pub fn choose(
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
        (Some(_), Lifecycle::Installed) => Choice::Local,
        (Some(_), Lifecycle::Failed) => {
            Choice::Failed(reason.unwrap_or("no reason given").to_string())
        }
        (Some(_), _) => Choice::Install,
    }
}

#[derive(Template)]
#[template(path = "boot/install.ipxe", escape = "none")]
pub struct InstallScript<'a> {
    pub mac: &'a str,
    pub hostname: &'a str,
    pub role: &'a str,
    pub kernel_url: &'a str,
    pub initrd_url: &'a str,
    pub cmdline: &'a str,
    pub script_url: &'a str,
}

#[derive(Template)]
#[template(path = "boot/local.ipxe", escape = "none")]
pub struct LocalScript<'a> {
    pub mac: &'a str,
    pub hostname: &'a str,
}

#[derive(Template)]
#[template(path = "boot/failed.ipxe", escape = "none")]
pub struct FailedScript<'a> {
    pub mac: &'a str,
    pub hostname: &'a str,
    pub reason: &'a str,
}

#[derive(Template)]
#[template(path = "boot/ignore.ipxe", escape = "none")]
pub struct IgnoreScript<'a> {
    pub mac: &'a str,
}

/// Make a free-text reason safe to echo in an iPXE script (one line, no expansions).
pub fn ipxe_text(s: &str) -> String {
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

/// The variables an install template sees (DESIGN.md "Install templates see at least").
#[derive(Clone, Debug, Serialize)]
pub struct InstallVars {
    pub mac: String,
    pub hostname: String,
    pub role: String,
    pub ip: Option<String>,
    pub server_url: String,
    pub token: String,
    pub install_url: String,
    pub log_url: String,
    pub done_url: String,
    pub failed_url: String,
    pub vars: Vars,
}

impl InstallVars {
    pub fn new(inv: &Inventory, m: &Machine, server_url: &str, token: &str) -> InstallVars {
        let base = format!("{server_url}/install/{}", m.mac);
        InstallVars {
            mac: m.mac.to_string(),
            hostname: m.hostname.clone(),
            role: m.role.clone(),
            ip: m.ip.map(|i| i.to_string()),
            server_url: server_url.to_string(),
            token: token.to_string(),
            install_url: format!("{base}?token={token}"),
            log_url: format!("{base}/log?token={token}"),
            done_url: format!("{base}/done?token={token}"),
            failed_url: format!("{base}/failed?token={token}"),
            vars: inv.merged_vars(m),
        }
    }
}

/// Why an install script or command line could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
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
pub struct Batch<'a> {
    env: minijinja::Environment<'a>,
}

impl Batch<'_> {
    pub fn new(kickstarts: &Path) -> Self {
        let mut env = environment();
        env.set_loader(minijinja::path_loader(kickstarts));
        Batch { env }
    }

    pub fn install_script(
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
pub fn install_script(
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
pub fn cmdline(template: &str, vars: &InstallVars) -> Result<String, RenderError> {
    let env = environment();
    let out = env
        .render_str(template, vars)
        .map_err(|e| describe("cmdline", &e, Some(template)))?;
    if let Some(bad) = out.chars().find(|c| !crate::inventory::cmdline_char(*c)) {
        return Err(RenderError::UnsafeCmdline(bad));
    }
    Ok(out)
}

/// The stem cell's own command line: which NIC, where the server is, the token.
pub fn stemcell_cmdline(
    mac: &MacAddr,
    server_url: &str,
    token: Option<&str>,
    extra: &str,
) -> String {
    let mut s = format!(
        "BOOTIF={} stemcell.url={} stemcell.mac={}",
        mac.bootif(),
        server_url,
        mac
    );
    match token {
        Some(t) => s.push_str(&format!(" stemcell.token={t}")),
        None => s.push_str(" stemcell.mode=discover"),
    }
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
        Machine {
            mac: "52:54:00:00:00:07".parse().unwrap(),
            hostname: "web07".into(),
            role: "web".into(),
            ip: None,
            vars: Vars::new(),
            line: 1,
        }
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
        let mac: MacAddr = "52:54:00:00:00:07".parse().unwrap();
        let s = stemcell_cmdline(&mac, "http://s", Some("t0k"), "console=ttyS0");
        assert_eq!(s, "BOOTIF=01-52-54-00-00-00-07 stemcell.url=http://s stemcell.mac=52:54:00:00:00:07 stemcell.token=t0k console=ttyS0");
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
    }
}
