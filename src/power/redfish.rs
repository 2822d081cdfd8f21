//! Redfish over HTTPS (or HTTP where configured) with ureq: find the computer system,
//! read its `PowerState`, `PATCH` its `Boot` override (with `If-Match` when it has an
//! ETag) and `POST` `ComputerSystem.Reset` — what MAAS and Ironic do.
//!
//! ureq is blocking: each action runs on tokio's blocking pool with ureq's own global
//! time-out, so an abandoned call ends by itself. TLS: the BMC's CA from `ca_file`, or no
//! verification when the inventory says `insecure: true` for that BMC; never the public
//! web's CAs (a BMC's certificate is not signed by them).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use ureq::tls::{PemItem, RootCerts, TlsConfig};

use super::{Action, BmcName, Outcome, PowerError, PowerState};
use crate::inventory::{Firmware, Power};

pub(super) async fn act(
    p: &Power,
    password: String,
    action: Action,
    left: Duration,
) -> Result<Outcome, PowerError> {
    let p = p.clone();
    let bmc = BmcName(&p).to_string();
    // A little under the caller's deadline, so ureq's own error (which says more) wins.
    let budget = left
        .saturating_sub(Duration::from_millis(200))
        .max(Duration::from_millis(100));
    tokio::task::spawn_blocking(move || Session::new(&p, password, budget)?.act(action))
        .await
        .map_err(|e| PowerError::Failed {
            bmc,
            detail: format!("the Redfish call failed: {e}"),
        })?
}

struct Session {
    agent: ureq::Agent,
    base: String,
    auth: String,
    bmc: String,
    timeout: Duration,
    started: std::time::Instant,
    system: Option<String>,
    firmware: Firmware,
}

fn basic(user: &str, password: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{user}:{password}");
    let b = input.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk.len();
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                out.push(T[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    format!("Basic {out}")
}

impl Session {
    fn new(p: &Power, password: String, timeout: Duration) -> Result<Session, PowerError> {
        let bmc = BmcName(p).to_string();
        let mut tls = TlsConfig::builder();
        if let Some(ca) = &p.ca_file {
            let pem = std::fs::read(ca).map_err(|e| PowerError::Failed {
                bmc: bmc.clone(),
                detail: format!("cannot read ca_file {}: {e}", ca.display()),
            })?;
            let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                .filter_map(|i| match i {
                    Ok(PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(PowerError::Failed {
                    bmc,
                    detail: format!("ca_file {} holds no PEM certificate", ca.display()),
                });
            }
            tls = tls.root_certs(RootCerts::Specific(Arc::new(certs)));
        }
        if p.insecure {
            tls = tls.disable_verification(true);
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .tls_config(tls.build())
            .max_redirects(0)
            .build()
            .into();
        let host = if p.address.contains(':') {
            format!("[{}]", p.address)
        } else {
            p.address.clone()
        };
        let base = match p.port {
            Some(port) => format!("{}://{host}:{port}", p.scheme),
            None => format!("{}://{host}", p.scheme),
        };
        Ok(Session {
            agent,
            base,
            auth: basic(&p.username, &password),
            bmc,
            timeout,
            started: std::time::Instant::now(),
            system: p.system.clone(),
            firmware: p.firmware,
        })
    }

    fn err(&self, what: &str, e: ureq::Error) -> PowerError {
        let bmc = self.bmc.clone();
        match e {
            ureq::Error::Timeout(_) => PowerError::TimedOut {
                bmc,
                timeout: self.timeout,
            },
            ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => PowerError::Unreachable {
                bmc,
                detail: format!("{what}: {e}"),
            },
            ureq::Error::Rustls(e) => PowerError::Certificate {
                bmc,
                detail: format!("{what}: {e}"),
            },
            ureq::Error::Io(io) if io.to_string().contains("certificate") => {
                PowerError::Certificate {
                    bmc,
                    detail: format!("{what}: {io}"),
                }
            }
            ureq::Error::Io(io) => match io.kind() {
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
                    PowerError::TimedOut {
                        bmc,
                        timeout: self.timeout,
                    }
                }
                _ => PowerError::Unreachable {
                    bmc,
                    detail: format!("{what}: {io}"),
                },
            },
            other => PowerError::Failed {
                bmc,
                detail: format!("{what}: {other}"),
            },
        }
    }

    /// One request; JSON body (or null) and ETag on 2xx, a typed error otherwise.
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<(Value, Option<String>), PowerError> {
        let url = format!("{}{path}", self.base);
        let what = format!("{method} {path}");
        let result = match (method, body) {
            ("GET", _) => self
                .agent
                .get(&url)
                .header("Authorization", &self.auth)
                .header("Accept", "application/json")
                .call(),
            (m, Some(b)) => {
                let mut req = if m == "PATCH" {
                    self.agent.patch(&url)
                } else {
                    self.agent.post(&url)
                };
                req = req
                    .header("Authorization", &self.auth)
                    .header("Accept", "application/json");
                if let Some(tag) = if_match {
                    req = req.header("If-Match", tag);
                }
                req.send_json(b)
            }
            _ => unreachable!("POST and PATCH always carry a body"),
        };
        let mut resp = result.map_err(|e| self.err(&what, e))?;
        let status = resp.status().as_u16();
        let etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = resp
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_string()
            .unwrap_or_default();
        let bmc = self.bmc.clone();
        match status {
            200..=299 => Ok((serde_json::from_str(&text).unwrap_or(Value::Null), etag)),
            401 | 403 => Err(PowerError::Authentication {
                bmc,
                detail: format!("{what}: HTTP {status}"),
            }),
            404 | 405 | 501 => Err(PowerError::Unsupported {
                bmc,
                what: what.clone(),
                detail: format!("HTTP {status} {}", short(&text)),
            }),
            _ => Err(PowerError::Failed {
                bmc,
                detail: format!("{what}: HTTP {status} {}", short(&text)),
            }),
        }
    }

    /// The system's path: the configured member, or the only one there is.
    fn system_path(&self) -> Result<String, PowerError> {
        if let Some(s) = &self.system {
            return Ok(format!("/redfish/v1/Systems/{s}"));
        }
        let (v, _) = self.call("GET", "/redfish/v1/Systems", None, None)?;
        let members: Vec<String> = v["Members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["@odata.id"].as_str().map(str::to_string))
            .collect();
        match members.as_slice() {
            [one] => Ok(one.trim_end_matches('/').to_string()),
            [] => Err(PowerError::Failed {
                bmc: self.bmc.clone(),
                detail: "/redfish/v1/Systems has no members".into(),
            }),
            many => Err(PowerError::Failed {
                bmc: self.bmc.clone(),
                detail: format!(
                    "/redfish/v1/Systems has {} members ({}): set power.system in the inventory",
                    many.len(),
                    many.join(", ")
                ),
            }),
        }
    }

    fn state_of(&self, sys: &Value) -> Result<PowerState, PowerError> {
        match sys["PowerState"].as_str() {
            Some("On" | "PoweringOff") => Ok(PowerState::On),
            Some("Off" | "PoweringOn") => Ok(PowerState::Off),
            other => Err(PowerError::Failed {
                bmc: self.bmc.clone(),
                detail: format!("unexpected PowerState {other:?}"),
            }),
        }
    }

    fn reset(&self, path: &str, sys: &Value, kind: &str) -> Result<(), PowerError> {
        let action = &sys["Actions"]["#ComputerSystem.Reset"];
        let target = action["target"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("{path}/Actions/ComputerSystem.Reset"));
        if let Some(allowed) = action["ResetType@Redfish.AllowableValues"].as_array() {
            if !allowed.iter().any(|a| a.as_str() == Some(kind)) {
                return Err(PowerError::Unsupported {
                    bmc: self.bmc.clone(),
                    what: format!("ResetType {kind}"),
                    detail: format!("it allows {}", Value::Array(allowed.clone())),
                });
            }
        }
        self.call("POST", &target, Some(&json!({ "ResetType": kind })), None)?;
        Ok(())
    }

    /// Many BMCs take a moment to change the power state after a reset is accepted: read
    /// it again every half second (as Rufio does) until it is `want`, until three quarters
    /// of the time-out have passed; then the state as it is.
    fn settle(&self, path: &str, want: PowerState) -> Result<PowerState, PowerError> {
        let until = self.started + self.timeout * 3 / 4;
        loop {
            let (sys, _) = self.call("GET", path, None, None)?;
            let s = self.state_of(&sys)?;
            if s == want || std::time::Instant::now() >= until {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn act(&self, action: Action) -> Result<Outcome, PowerError> {
        let path = self.system_path()?;
        let (sys, etag) = self.call("GET", &path, None, None)?;
        let state = self.state_of(&sys)?;
        match action {
            Action::Status => Ok(Outcome {
                state: Some(state),
                message: format!("power is {}", state.as_str()),
            }),
            Action::On | Action::Off => {
                let (kind, word) = if action == Action::On {
                    ("On", "on")
                } else {
                    ("ForceOff", "off")
                };
                self.reset(&path, &sys, kind)?;
                let want = if action == Action::On {
                    PowerState::On
                } else {
                    PowerState::Off
                };
                let s = self.settle(&path, want)?;
                Ok(Outcome {
                    state: Some(s),
                    message: format!("powered {word}; power is {}", s.as_str()),
                })
            }
            Action::Cycle => match state {
                PowerState::Off => {
                    self.reset(&path, &sys, "On")?;
                    let s = self.settle(&path, PowerState::On)?;
                    Ok(Outcome {
                        state: Some(s),
                        message: "was off: powered on".into(),
                    })
                }
                PowerState::On => {
                    self.reset(&path, &sys, "ForceRestart")?;
                    Ok(Outcome {
                        state: None,
                        message: "power cycled".into(),
                    })
                }
            },
            Action::Pxe => {
                let mut boot = json!({
                    "BootSourceOverrideEnabled": "Once",
                    "BootSourceOverrideTarget": "Pxe",
                });
                // Only where the system has the property: not every BMC knows it.
                if sys["Boot"].get("BootSourceOverrideMode").is_some() {
                    boot["BootSourceOverrideMode"] = json!(match self.firmware {
                        Firmware::Uefi => "UEFI",
                        Firmware::Bios => "Legacy",
                    });
                }
                let tag = etag.or_else(|| sys["@odata.etag"].as_str().map(str::to_string));
                self.call(
                    "PATCH",
                    &path,
                    Some(&json!({ "Boot": boot })),
                    tag.as_deref(),
                )?;
                Ok(Outcome {
                    state: Some(state),
                    message: "next boot from the network, once".into(),
                })
            }
        }
    }
}

fn short(s: &str) -> String {
    let s = s.trim();
    if s.len() > 200 {
        let mut end = 200;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_is_rfc_4648_base64() {
        assert_eq!(basic("admin", "password"), "Basic YWRtaW46cGFzc3dvcmQ=");
        assert_eq!(basic("a", "b"), "Basic YTpi");
        assert_eq!(basic("ab", "cd"), "Basic YWI6Y2Q=");
    }
}
