//! IPMI 2.0 over LAN through `ipmitool -I lanplus -C 3`, one subprocess per BMC command.
//!
//! The password goes to ipmitool in its environment (`IPMI_PASSWORD` with `-E`), never
//! on its command line (which any local user can read in /proc). The subprocess is killed
//! when the caller's time-out drops the future. `-v` makes ipmitool say why a session
//! failed, which is how errors are told apart: `RAKP 2 HMAC is invalid` / `unauthorized
//! name` (credentials), `Get Auth Capabilities error` (nothing answers), completion code
//! 0xc1 `Invalid command` (unsupported).

use std::process::Stdio;
use std::time::Duration;

use super::{Action, BmcName, Outcome, PowerError, PowerState};
use crate::inventory::{Firmware, Power};

/// The program; tests and unusual installs may point elsewhere.
fn program() -> String {
    std::env::var("STEMCELL_IPMITOOL").unwrap_or_else(|_| "ipmitool".into())
}

/// The arguments before the command: interface, cipher suite 3 (RAKP-HMAC-SHA1, what
/// every BMC and ipmi_sim speak; without `-C` ipmitool first tries 17 and stalls), host,
/// user, password from the environment, and a per-packet time-out with retries that fit
/// in the call's time-out.
fn base_args(p: &Power, left: Duration) -> Vec<String> {
    // ipmitool waits `-N` seconds per try, longer on each retry, and tries `-R` times
    // (`-N 1 -R 2` gives up after about 6 s).
    let retries = (left.as_secs() / 4).clamp(1, 4);
    let mut a: Vec<String> = ["-v", "-I", "lanplus", "-C", "3", "-N", "1", "-R"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.push(retries.to_string());
    a.extend(["-H".into(), p.address.clone()]);
    if let Some(port) = p.port {
        a.extend(["-p".into(), port.to_string()]);
    }
    a.extend(["-U".into(), p.username.clone(), "-E".into()]);
    a
}

/// What ipmitool's output says went wrong.
pub(super) fn classify(bmc: &str, what: &str, stderr: &str) -> PowerError {
    let detail = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Loading IANA"))
        .collect::<Vec<_>>()
        .join("; ");
    let bmc = bmc.to_string();
    let has = |s: &str| stderr.contains(s);
    if has("RAKP 2 HMAC is invalid")
        || has("unauthorized name")
        || has("Invalid user name")
        || has("invalid integrity check")
        || has("Unauthorized name")
    {
        PowerError::Authentication { bmc, detail }
    } else if has("Get Auth Capabilities error")
        || has("No response")
        || has("No route")
        || has("Connection refused")
        || has("Address lookup")
        || has("Name or service not known")
    {
        PowerError::Unreachable { bmc, detail }
    } else if has("Invalid command")
        || has("rsp=0xc1")
        || has("rsp=0xc2")
        || has("rsp=0xc9")
        || has("not supported")
    {
        PowerError::Unsupported {
            bmc,
            what: what.to_string(),
            detail,
        }
    } else {
        PowerError::Failed {
            bmc,
            detail: format!("{what}: {detail}"),
        }
    }
}

/// One ipmitool run; its standard output on success.
async fn run(
    p: &Power,
    password: &str,
    left: Duration,
    args: &[&str],
) -> Result<String, PowerError> {
    let bmc = BmcName(p).to_string();
    let what = args.join(" ");
    let mut cmd = tokio::process::Command::new(program());
    cmd.args(base_args(p, left))
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("IPMI_PASSWORD", password)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = cmd.output().await.map_err(|e| PowerError::Failed {
        bmc: bmc.clone(),
        detail: format!("cannot run {}: {e} (is ipmitool installed?)", program()),
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        return Ok(stdout);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(classify(&bmc, &what, &format!("{stderr}\n{stdout}")))
}

fn parse_state(bmc: &str, out: &str) -> Result<PowerState, PowerError> {
    if out.contains("Chassis Power is on") {
        Ok(PowerState::On)
    } else if out.contains("Chassis Power is off") {
        Ok(PowerState::Off)
    } else {
        Err(PowerError::Failed {
            bmc: bmc.to_string(),
            detail: format!("unexpected power status {:?}", out.trim()),
        })
    }
}

async fn status(p: &Power, password: &str, left: Duration) -> Result<PowerState, PowerError> {
    let out = run(p, password, left, &["chassis", "power", "status"]).await?;
    parse_state(&BmcName(p).to_string(), &out)
}

pub(super) async fn act(
    p: &Power,
    password: &str,
    action: Action,
    left: Duration,
) -> Result<Outcome, PowerError> {
    match action {
        Action::Status => {
            let s = status(p, password, left).await?;
            Ok(Outcome {
                state: Some(s),
                message: format!("power is {}", s.as_str()),
            })
        }
        Action::On | Action::Off => {
            let word = if action == Action::On { "on" } else { "off" };
            run(p, password, left, &["chassis", "power", word]).await?;
            let s = status(p, password, left).await?;
            Ok(Outcome {
                state: Some(s),
                message: format!("powered {word}; power is {}", s.as_str()),
            })
        }
        Action::Cycle => {
            // A power cycle of a machine that is off does nothing on many BMCs
            // (MAAS: `--cycle --on-if-off`).
            match status(p, password, left).await? {
                PowerState::Off => {
                    run(p, password, left, &["chassis", "power", "on"]).await?;
                    Ok(Outcome {
                        state: Some(PowerState::On),
                        message: "was off: powered on".into(),
                    })
                }
                PowerState::On => {
                    run(p, password, left, &["chassis", "power", "cycle"]).await?;
                    Ok(Outcome {
                        state: None,
                        message: "power cycled".into(),
                    })
                }
            }
        }
        Action::Pxe => {
            // As Ironic does: stop the BMC from clearing the boot flags 60 s after they are
            // set (IPMI boot option parameter 3, "BMC boot flag valid bit clearing").
            // Not every BMC has it; the boot device is still set.
            let mut note = String::new();
            if let Err(e) = run(p, password, left, &["raw", "0x00", "0x08", "0x03", "0x08"]).await {
                match e {
                    PowerError::Unsupported { .. } | PowerError::Failed { .. } => {
                        note = " (the BMC refused to keep the boot flag past 60 s)".into();
                    }
                    other => return Err(other),
                }
            }
            let mut args = vec!["chassis", "bootdev", "pxe"];
            if p.firmware == Firmware::Uefi {
                args.push("options=efiboot");
            }
            run(p, password, left, &args).await?;
            Ok(Outcome {
                state: None,
                message: format!(
                    "next boot from the network, once ({}){note}",
                    match p.firmware {
                        Firmware::Uefi => "UEFI",
                        Firmware::Bios => "legacy BIOS",
                    }
                ),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipmitool_messages_become_the_right_errors() {
        let e = classify(
            "ipmi x",
            "chassis power status",
            "Loading IANA PEN Registry...\n> RAKP 2 HMAC is invalid\nError: Unable to establish IPMI v2 / RMCP+ session\n",
        );
        assert_eq!(e.kind(), "authentication", "{e}");
        assert!(!e.to_string().contains("IANA"), "{e}");
        let e = classify("ipmi x", "s", "RAKP 2 message indicates an error : unauthorized name\nError: Unable to establish IPMI v2 / RMCP+ session");
        assert_eq!(e.kind(), "authentication");
        let e = classify("ipmi x", "s", "Get Auth Capabilities error\nError issuing Get Channel Authentication Capabilities request\nError: Unable to establish IPMI v2 / RMCP+ session");
        assert_eq!(e.kind(), "unreachable");
        let e = classify("ipmi x", "raw 0x00 0x08 0x03 0x08", "Unable to send RAW command (channel=0x0 netfn=0x0 lun=0x0 cmd=0x8 rsp=0xc1): Invalid command");
        assert_eq!(e.kind(), "unsupported");
        assert!(e.to_string().contains("raw 0x00 0x08"), "{e}");
    }

    #[test]
    fn the_password_is_never_an_argument() {
        let p = Power {
            driver: crate::inventory::PowerDriver::Ipmi,
            address: "198.18.0.9".into(),
            port: Some(6230),
            username: "admin".into(),
            password_file: "/etc/pw".into(),
            password_file_pos: Default::default(),
            firmware: Firmware::Uefi,
            scheme: "https".into(),
            ca_file: None,
            insecure: false,
            system: None,
        };
        let a = base_args(&p, Duration::from_secs(30));
        assert!(a.windows(2).any(|w| w == ["-C", "3"]));
        assert!(a.windows(2).any(|w| w == ["-p", "6230"]));
        assert!(a.contains(&"-E".to_string()));
        assert!(!a.iter().any(|x| x == "-P" || x == "-f"));
    }
}
