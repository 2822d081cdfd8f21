//! Power control through a machine's BMC: status, on, off, cycle, and "next boot from the
//! network, once" — IPMI 2.0 over LAN through `ipmitool` (ipmi.rs), Redfish over HTTP(S)
//! (redfish.rs). ARCHITECTURE.md says why.
//!
//! Every call holds a permit of [`Controller`]'s semaphore (a bound on BMC calls at once),
//! runs under its time-out (the subprocess is killed, the HTTP call abandoned), and fails
//! with an error that says what went wrong: unreachable, authentication, unsupported,
//! timed out. The password is read from its file at each call and appears in no message.

mod ipmi;
mod redfish;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Semaphore;

use crate::inventory::{Power, PowerDriver};
use crate::mac::MacAddr;

/// What an operator asks of a BMC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Action {
    Status,
    On,
    Off,
    /// Off and on again (on when it was off).
    Cycle,
    /// The next boot, once, from the network.
    Pxe,
}

impl Action {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Action::Status => "status",
            Action::On => "on",
            Action::Off => "off",
            Action::Cycle => "cycle",
            Action::Pxe => "pxe",
        }
    }
}

impl std::str::FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Action, String> {
        Ok(match s {
            "status" => Action::Status,
            "on" => Action::On,
            "off" => Action::Off,
            "cycle" => Action::Cycle,
            "pxe" => Action::Pxe,
            _ => {
                return Err(format!(
                    "unknown power action {s:?}: status, on, off, cycle or pxe"
                ))
            }
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PowerState {
    On,
    Off,
}

impl PowerState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PowerState::On => "on",
            PowerState::Off => "off",
        }
    }
}

/// What a call did: the power state when known, and what happened in words.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Outcome {
    pub(crate) state: Option<PowerState>,
    pub(crate) message: String,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum PowerError {
    #[error("cannot read the BMC password file {}: {detail}", path.display())]
    Password { path: PathBuf, detail: String },
    #[error("BMC {bmc} is unreachable: {detail}")]
    Unreachable { bmc: String, detail: String },
    #[error("BMC {bmc} refused the credentials (wrong username or password): {detail}")]
    Authentication { bmc: String, detail: String },
    #[error("BMC {bmc} does not support {what}: {detail}")]
    Unsupported {
        bmc: String,
        what: String,
        detail: String,
    },
    #[error("BMC {bmc}: its TLS certificate is not trusted: {detail} (power.ca_file must hold the CA that signs it)")]
    Certificate { bmc: String, detail: String },
    #[error("BMC {bmc} did not answer within {} s", timeout.as_secs_f64())]
    TimedOut { bmc: String, timeout: Duration },
    #[error("BMC {bmc}: {detail}")]
    Failed { bmc: String, detail: String },
}

impl PowerError {
    /// One word for events, metrics and the API.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            PowerError::Password { .. } => "password",
            PowerError::Unreachable { .. } => "unreachable",
            PowerError::Authentication { .. } => "authentication",
            PowerError::Unsupported { .. } => "unsupported",
            PowerError::Certificate { .. } => "certificate",
            PowerError::TimedOut { .. } => "timeout",
            PowerError::Failed { .. } => "failed",
        }
    }
}

/// A BMC's name in messages: driver and address, never the credentials.
pub(crate) struct BmcName<'a>(pub(crate) &'a Power);

impl fmt::Display for BmcName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.0;
        let d = match p.driver {
            PowerDriver::Ipmi => "ipmi",
            PowerDriver::Redfish => "redfish",
        };
        match p.port {
            Some(port) => write!(f, "{d} {}:{port}", p.address),
            None => write!(f, "{d} {}", p.address),
        }
    }
}

/// The first line of a password file, without its line end. Empty is an error.
pub(crate) fn read_password(path: &Path) -> Result<String, PowerError> {
    let text = std::fs::read_to_string(path).map_err(|e| PowerError::Password {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let pw = text.lines().next().unwrap_or("").to_string();
    if pw.is_empty() {
        return Err(PowerError::Password {
            path: path.to_path_buf(),
            detail: "the file is empty".into(),
        });
    }
    Ok(pw)
}

/// Runs BMC calls: at most `limit` at once, each within `timeout`.
#[derive(Clone)]
pub(crate) struct Controller {
    permits: Arc<Semaphore>,
    timeout: Duration,
}

impl Controller {
    pub(crate) fn new(limit: usize, timeout: Duration) -> Controller {
        Controller {
            permits: Arc::new(Semaphore::new(limit.max(1))),
            timeout,
        }
    }

    /// Do `action` on the BMC `p`. Waiting for a permit counts against the time-out.
    pub(crate) async fn act(&self, p: &Power, action: Action) -> Result<Outcome, PowerError> {
        let bmc = BmcName(p).to_string();
        let timed_out = || PowerError::TimedOut {
            bmc: bmc.clone(),
            timeout: self.timeout,
        };
        let deadline = tokio::time::Instant::now() + self.timeout;
        let _permit = tokio::time::timeout_at(deadline, self.permits.acquire())
            .await
            .map_err(|_| timed_out())?
            .map_err(|_| timed_out())?;
        let password = read_password(&p.password_file)?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let call = async {
            match p.driver {
                PowerDriver::Ipmi => ipmi::act(p, &password, action, left).await,
                PowerDriver::Redfish => redfish::act(p, password.clone(), action, left).await,
            }
        };
        // ipmi.rs kills its subprocess when this future is dropped (kill_on_drop);
        // redfish.rs's blocking call has its own time-out a little shorter than this one.
        tokio::time::timeout_at(deadline, call)
            .await
            .map_err(|_| timed_out())?
    }
}

/// The last known power state of each machine, for the page and the API: what the
/// background poll or the last action saw, and when.
#[derive(Default)]
pub(crate) struct PowerStates {
    map: std::sync::Mutex<std::collections::HashMap<MacAddr, Seen>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Seen {
    /// `None` when the last call failed or did not say.
    pub(crate) state: Option<PowerState>,
    /// Why the last call failed.
    pub(crate) error: Option<String>,
    /// Unix milliseconds.
    pub(crate) at: u64,
}

impl PowerStates {
    pub(crate) fn record(&self, mac: MacAddr, result: &Result<Outcome, PowerError>, at: u64) {
        let seen = match result {
            Ok(o) => Seen {
                state: o.state,
                error: None,
                at,
            },
            Err(e) => Seen {
                state: None,
                error: Some(e.to_string()),
                at,
            },
        };
        if let Ok(mut m) = self.map.lock() {
            m.insert(mac, seen);
        }
    }

    pub(crate) fn get(&self, mac: &MacAddr) -> Option<Seen> {
        self.map.lock().ok()?.get(mac).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_parse_and_unknown_ones_say_what_is_valid() {
        for a in ["status", "on", "off", "cycle", "pxe"] {
            assert_eq!(a.parse::<Action>().unwrap().as_str(), a);
        }
        let e = "reboot".parse::<Action>().unwrap_err();
        assert!(e.contains("status, on, off, cycle or pxe"), "{e}");
    }

    #[test]
    fn password_files_are_read_to_the_first_line_and_empty_ones_refused() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        assert_eq!(read_password(&f).unwrap(), "s3cret");
        std::fs::write(&f, "\n").unwrap();
        assert!(read_password(&f).unwrap_err().to_string().contains("empty"));
        let e = read_password(&d.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope") && e.contains("No such file"), "{e}");
    }
}
