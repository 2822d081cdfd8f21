//! Operators' install templates: minijinja templates in the kickstarts folder, read
//! from disk on each render so an edit takes effect without a rebuild or restart. Undefined
//! variables are errors (strict mode): a typo fails the render instead of producing a
//! script with a hole in it, and a failed render never yields a partial script.

use std::path::Path;

use serde::Serialize;

use crate::inventory::{Inventory, Machine, Vars};
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
    pub(crate) vars: Vars,
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
            nics: m.labelled_nics(),
            network: m.network.as_ref().map(|plan| {
                let nics = m.labelled_nics();
                NetworkVars {
                    networkd: plan.networkd(&nics),
                    ifupdown: plan.ifupdown(&nics),
                }
            }),
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
