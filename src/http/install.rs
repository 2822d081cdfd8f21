//! What a running stem cell (or installer) talks to: its install script, the log, done and
//! failed callbacks, and a discovering stem cell's hardware report.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{machine_mac, text, App};
use crate::boot::install_fingerprint;
use crate::mac::MacAddr;
use crate::render::{self, InstallVars};
use crate::state::{self, Record, StateError};

#[derive(Deserialize)]
pub(super) struct TokenQuery {
    token: Option<String>,
}

/// Why `peer` may not use `mac`'s install token, if it may not: in authoritative mode the
/// token works only from the address `mac` holds a bound lease on now. With no lease at all
/// (it expired, or was never taken from this server) it is refused too. Proxy mode (no
/// lease store) knows no leases and binds nothing; nor does `dhcp.install_token_from_lease:
/// false`.
pub(super) fn off_lease(app: &App, mac: MacAddr, peer: IpAddr) -> Option<String> {
    if !app.config.dhcp.install_token_from_lease {
        return None;
    }
    let leases = app.leases.as_ref()?;
    let now = state::now_ms() / 1000;
    let bound = |l: &crate::leases::Lease| l.state == crate::leases::LeaseState::Bound;
    // Any NIC of the machine may hold the lease (it netbooted from its second port).
    let nics = app
        .inventory
        .get()
        .machine(&mac)
        .map(|m| m.macs())
        .unwrap_or_else(|| vec![mac]);
    if let IpAddr::V4(ip) = peer.to_canonical() {
        if leases
            .lease_at(ip, now)
            .is_some_and(|l| nics.contains(&l.mac) && bound(&l))
        {
            return None;
        }
    }
    let held: Vec<String> = nics
        .iter()
        .filter_map(|n| leases.lease_of(*n, now).filter(bound))
        .map(|l| {
            if l.mac == mac {
                l.ip.to_string()
            } else {
                format!("{} (NIC {})", l.ip, l.mac)
            }
        })
        .collect();
    Some(if held.is_empty() {
        format!("the request came from {peer}, but {mac} holds no lease from this server")
    } else {
        format!(
            "the request came from {peer}, but {mac} leases {} from this server",
            held.join(", ")
        )
    })
}

/// Refuse (403, with an event on the machine) an install-token request from an address
/// `mac` does not lease; `what` names the request.
pub(super) fn refuse_off_lease(
    app: &App,
    mac: MacAddr,
    peer: IpAddr,
    what: &str,
) -> Option<Response> {
    let why = off_lease(app, mac, peer)?;
    tracing::warn!(mac = %mac, peer = %peer, "{what} refused: not from the leased address");
    app.store
        .event(mac, "error", format!("{what} refused: {why}"));
    Some(text(
        StatusCode::FORBIDDEN,
        format!("{what} refused: {why}; the install token works only from the address the machine leased\n"),
    ))
}

/// The refusal (403, recorded as an event on the machine) of `what` unless it carries
/// `mac`'s live install token and, in authoritative mode, comes from its leased address.
async fn refuse_without_live_token(
    app: &App,
    mac: MacAddr,
    peer: IpAddr,
    token: Option<&str>,
    what: &str,
) -> Option<Response> {
    let live = match token {
        Some(t) => app.store.check_token_fresh(&mac, t).await,
        None => false,
    };
    if !live {
        tracing::warn!(mac = %mac, "{what} refused: wrong or missing token");
        app.store.event(
            mac,
            "error",
            format!("{what} refused: wrong or missing token"),
        );
        return Some(text(
            StatusCode::FORBIDDEN,
            "wrong or missing install token\n",
        ));
    }
    refuse_off_lease(app, mac, peer, what)
}

pub(super) async fn install_script(
    State(app): State<App>,
    Path(mac): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<TokenQuery>,
) -> Response {
    let mac = match machine_mac(&app, &mac) {
        Ok(m) => m,
        Err(r) => return r.into_response(),
    };
    serve_install_script(&app, mac, peer, q.token).await
}

/// cloud-init's NoCloud data source for an install (Ubuntu's autoinstall): the seed URL
/// `/nocloud/MAC/TOKEN/` carries the token in its path, because cloud-init appends the file
/// names to it. `user-data` is the install script (the role's template, rendered as
/// `/install/MAC` renders it), `meta-data` the instance id and hostname, `vendor-data`
/// empty; each only with the live install token (and, in authoritative mode, from the
/// leased address).
pub(super) async fn nocloud(
    State(app): State<App>,
    Path((mac, token, file)): Path<(String, String, String)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    let mac = match machine_mac(&app, &mac) {
        Ok(m) => m,
        Err(r) => return r.into_response(),
    };
    if file == "user-data" {
        return serve_install_script(&app, mac, peer, Some(token)).await;
    }
    if file != "meta-data" && file != "vendor-data" {
        return text(
            StatusCode::NOT_FOUND,
            "a NoCloud seed has user-data, meta-data and vendor-data\n",
        );
    }
    if let Some(r) = refuse_without_live_token(
        &app,
        mac,
        peer.ip(),
        Some(&token),
        &format!("nocloud {file}"),
    )
    .await
    {
        return r;
    }
    let body = match (file.as_str(), app.inventory.get().machine(&mac)) {
        ("meta-data", Some(m)) => format!(
            "instance-id: stemcell-{}-{}\nlocal-hostname: {}\n",
            mac.to_string().replace(':', ""),
            &token[..token.len().min(8)],
            m.hostname
        ),
        ("meta-data", None) => {
            return text(
                StatusCode::NOT_FOUND,
                format!("{mac} is not in the inventory\n"),
            )
        }
        _ => String::new(),
    };
    app.store
        .event(mac, "install", format!("nocloud {file} served"));
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

/// The install script for `mac`, with `token`: checked, recorded (`install_started`) and
/// rendered.
async fn serve_install_script(
    app: &App,
    mac: MacAddr,
    peer: SocketAddr,
    token: Option<String>,
) -> Response {
    let inv = app.inventory.get();
    let Some(machine) = inv.machine(&mac).cloned() else {
        return text(
            StatusCode::NOT_FOUND,
            format!("{mac} is not in the inventory\n"),
        );
    };
    if let Some(r) =
        refuse_without_live_token(app, mac, peer.ip(), token.as_deref(), "install script").await
    {
        return r;
    }
    let token = token.unwrap_or_default();
    let Some(role) = inv.role_of(&machine).cloned() else {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "role is not defined\n");
    };
    let os = match role
        .os
        .as_deref()
        .map(|name| crate::images::current(&app.config.os_images, name))
        .transpose()
    {
        Ok(os) => os,
        Err(e) => return install_failed(app, mac, format!("role {}: {e}", role.name)).await,
    };
    // The drift baseline is what is served now, not what the inventory says at `done`.
    let from = install_fingerprint(&app.config, &inv, &machine);
    let record = match app
        .store
        .install_started(mac, &token, from, os.as_ref().map(|o| o.sha256.clone()))
        .await
    {
        Ok(r) => r,
        Err(e) => return state_error(mac, e),
    };
    let mut vars = InstallVars::new(&inv, &machine, &app.server_url, &token)
        .with_machine_key(record.machine_key.as_deref().unwrap_or_default());
    if let Some(os) = &os {
        vars = vars.with_os(os);
    }
    let kickstarts = app.config.kickstarts.clone();
    let template = role.template.clone();
    let rendered =
        tokio::task::spawn_blocking(move || render::install_script(&kickstarts, &template, &vars))
            .await;
    let rendered = match rendered {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(format!("render task failed: {e}")),
    };
    match rendered {
        Ok(script) => {
            let what = match &os {
                Some(os) => format!(", OS {} {}", os.name, &os.sha256[..12]),
                None => String::new(),
            };
            app.store.event(
                mac,
                "install",
                format!(
                    "install script served ({} bytes, template {}{what})",
                    script.len(),
                    role.template
                ),
            );
            tracing::info!(mac = %mac, template = %role.template, "install script served");
            (
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                script,
            )
                .into_response()
        }
        Err(e) => install_failed(app, mac, format!("install template failed: {e}")).await,
    }
}

/// The install cannot even start: recorded as failed with `reason`, answered with a 500.
async fn install_failed(app: &App, mac: MacAddr, reason: String) -> Response {
    tracing::warn!(mac = %mac, reason = %reason, "install cannot start");
    app.store.event(mac, "error", reason.clone());
    if let Err(e) = app.store.failed(mac, None, reason).await {
        return state_error(mac, e);
    }
    text(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the install cannot start; the cause is in the server log and the machine's events\n",
    )
}

fn state_error(mac: MacAddr, e: StateError) -> Response {
    super::state_reject(mac, e).into_response()
}

/// Longest log line kept, and most lines taken from one request.
const LOG_LINE_MAX: usize = 2000;
const LOG_LINES_MAX: usize = 5000;

/// `GET /install/MAC/converge?token=…`: the configuration-management bootstrap a
/// distribution's installer runs at its end (`snippets/converge-bootstrap.sh.j2`, rendered
/// for this install: the machine key, where to report, the role's Puppet code). Only with
/// the live install token (and, in authoritative mode, from the leased address); it changes
/// no state.
pub(super) async fn converge_script(
    State(app): State<App>,
    Path((mac, what)): Path<(String, String)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<TokenQuery>,
) -> Response {
    if what != "converge" {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "log, done and failed are POSTs; GET is for converge\n",
        );
    }
    let mac = match machine_mac(&app, &mac) {
        Ok(m) => m,
        Err(r) => return r.into_response(),
    };
    if let Some(r) = refuse_without_live_token(
        &app,
        mac,
        peer.ip(),
        q.token.as_deref(),
        "converge bootstrap",
    )
    .await
    {
        return r;
    }
    let token = q.token.unwrap_or_default();
    let inv = app.inventory.get();
    let Some(machine) = inv.machine(&mac).cloned() else {
        return text(
            StatusCode::NOT_FOUND,
            format!("{mac} is not in the inventory\n"),
        );
    };
    let record = app.store.record(&mac);
    let mut vars = InstallVars::new(&inv, &machine, &app.server_url, &token).with_machine_key(
        record
            .as_ref()
            .and_then(|r| r.machine_key.as_deref())
            .unwrap_or_default(),
    );
    let os = inv
        .role_of(&machine)
        .and_then(|role| role.os.as_deref())
        .and_then(|name| crate::images::current(&app.config.os_images, name).ok());
    if let Some(os) = &os {
        vars = vars.with_os(os);
    }
    let kickstarts = app.config.kickstarts.clone();
    let rendered = tokio::task::spawn_blocking(move || {
        render::install_script(&kickstarts, "snippets/converge-bootstrap.sh.j2", &vars)
    })
    .await;
    match rendered {
        Ok(Ok(script)) => {
            app.store.event(mac, "install", "converge bootstrap served");
            (
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                script,
            )
                .into_response()
        }
        Ok(Err(e)) => {
            tracing::error!(mac = %mac, error = %e, "converge bootstrap failed to render");
            app.store
                .event(mac, "error", format!("converge bootstrap failed: {e}"));
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the converge bootstrap did not render; see the machine's events\n",
            )
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("render task failed: {e}\n"),
        ),
    }
}

pub(super) async fn install_callback(
    State(app): State<App>,
    Path((mac, action)): Path<(String, String)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<TokenQuery>,
    body: String,
) -> Response {
    let mac = match machine_mac(&app, &mac) {
        Ok(m) => m,
        Err(r) => return r.into_response(),
    };
    // done and failed check the token themselves: a repeat with the spent token (its first
    // answer was lost) is answered again; log needs the live token.
    let token = q.token.unwrap_or_default();
    // A request carrying this machine's token (live or spent) from an address the machine
    // does not lease is refused and recorded; one without it is refused below, unrecorded.
    if matches!(action.as_str(), "log" | "done" | "failed")
        && app.store.knows_token_fresh(&mac, &token).await
    {
        if let Some(r) = refuse_off_lease(&app, mac, peer.ip(), &format!("install {action}")) {
            return r;
        }
    }
    if action == "log" && !app.store.check_token_fresh(&mac, &token).await {
        tracing::warn!(mac = %mac, "install log refused: wrong or missing token");
        return text(StatusCode::FORBIDDEN, "wrong or missing install token\n");
    }
    match action.as_str() {
        "log" => {
            let mut n = 0;
            for line in body.lines().take(LOG_LINES_MAX) {
                let line: String = line.chars().take(LOG_LINE_MAX).collect();
                app.store.event(mac, "log", line);
                n += 1;
            }
            text(StatusCode::OK, format!("{n} lines\n"))
        }
        "done" => match app.store.done(mac, &token).await {
            Ok((_, false)) => text(StatusCode::OK, "installed\n"),
            Ok((r, true)) => {
                record_install_outcome(&app, "done", &r);
                app.store.event(
                    mac,
                    "done",
                    "install done; next boots are from the local disk",
                );
                tracing::info!(mac = %mac, "install done");
                text(StatusCode::OK, "installed\n")
            }
            Err(e) => {
                tracing::warn!(mac = %mac, error = %e, "install done refused");
                state_error(mac, e)
            }
        },
        "failed" => {
            let reason: String = body.trim().chars().take(LOG_LINE_MAX).collect();
            let reason = if reason.is_empty() {
                "no reason given".to_string()
            } else {
                reason
            };
            match app.store.failed(mac, Some(&token), reason.clone()).await {
                Ok((_, false)) => text(StatusCode::OK, "recorded as failed\n"),
                Ok((r, true)) => {
                    record_install_outcome(&app, "failed", &r);
                    app.store
                        .event(mac, "failed", format!("install failed: {reason}"));
                    tracing::warn!(mac = %mac, reason = %reason, "install failed");
                    text(StatusCode::OK, "recorded as failed\n")
                }
                Err(e) => state_error(mac, e),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "callbacks are log, done and failed\n",
        ),
    }
}

/// `GET /secret/{mac}/{name}?token=…`: one secret the machine's role declares, from the
/// secrets folder, to the live install token from the leased address (authoritative
/// mode). Its content goes nowhere else: the event and the log name the secret only.
pub(super) async fn secret(
    State(app): State<App>,
    Path((mac, name)): Path<(String, String)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<TokenQuery>,
) -> Response {
    let mac = match machine_mac(&app, &mac) {
        Ok(m) => m,
        Err(r) => return r.into_response(),
    };
    if !crate::secrets::valid_name(&name) {
        return text(
            StatusCode::BAD_REQUEST,
            format!("{}\n", crate::secrets::SecretError::BadName(name)),
        );
    }
    let inv = app.inventory.get();
    let Some(machine) = inv.machine(&mac).cloned() else {
        return text(
            StatusCode::NOT_FOUND,
            format!("{mac} is not in the inventory\n"),
        );
    };
    // Only the live token: a spent one (after done or failed) or an old one (re-armed)
    // fetches nothing.
    let live = match q.token.as_deref() {
        Some(t) => app.store.check_token_fresh(&mac, t).await,
        None => false,
    };
    if !live {
        tracing::warn!(mac = %mac, secret = %name, "secret refused: wrong, missing or spent install token");
        return text(
            StatusCode::FORBIDDEN,
            "wrong, missing or spent install token\n",
        );
    }
    if let Some(r) = refuse_off_lease(&app, mac, peer.ip(), &format!("secret {name}")) {
        return r;
    }
    let Some(role) = inv.role_of(&machine).cloned() else {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "role is not defined\n");
    };
    let refuse = |status, why: String| {
        tracing::warn!(mac = %mac, secret = %name, "{why}");
        app.store.event(mac, "error", why.clone());
        text(status, format!("{why}\n"))
    };
    if !role.secrets.iter().any(|s| s.name == name) {
        let e = crate::secrets::SecretError::NotDeclared {
            role: role.name.clone(),
            name: name.clone(),
        };
        return refuse(StatusCode::NOT_FOUND, e.to_string());
    }
    let path = match crate::secrets::find(&app.config.secrets, &machine.hostname, &role.name, &name)
    {
        Ok(p) => p,
        Err(e) => return refuse(StatusCode::NOT_FOUND, e.to_string()),
    };
    let read = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
        use std::io::Read as _;
        let mut out = Vec::new();
        std::fs::File::open(&path)?
            .take(crate::secrets::MAX_BYTES + 1)
            .read_to_end(&mut out)?;
        Ok(out)
    })
    .await;
    let bytes = match read {
        Ok(Ok(b)) if b.len() as u64 <= crate::secrets::MAX_BYTES => b,
        Ok(Ok(_)) => {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("secret {name:?} is larger than 1 MiB"),
            )
        }
        Ok(Err(e)) => {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("secret {name:?} cannot be read: {e}"),
            )
        }
        Err(e) => {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("secret {name:?}: read task failed: {e}"),
            )
        }
    };
    app.store
        .event(mac, "install", format!("secret {name} fetched"));
    tracing::info!(mac = %mac, secret = %name, "secret served");
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        bytes,
    )
        .into_response()
}

/// Most facts taken from one discovery report, and their longest key and value.
// A server with 8 NICs (10 facts each) and 24 disks (9 each) stays well inside.
const FACTS_MAX: usize = 512;
const FACT_KEY_MAX: usize = 64;
const FACT_VALUE_MAX: usize = 512;

/// Pure: `key=value` lines from a discovering stem cell, bounded and cleaned. Keys are
/// lower-case identifiers; lines that are not `key=value` are skipped.
pub(crate) fn parse_facts(body: &str) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    for line in body.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let k = k.trim().to_ascii_lowercase();
        if k.is_empty()
            || k.len() > FACT_KEY_MAX
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
        {
            continue;
        }
        let v: String = v
            .trim()
            .chars()
            .filter(|c| !c.is_control())
            .take(FACT_VALUE_MAX)
            .collect();
        if out.len() < FACTS_MAX || out.contains_key(&k) {
            out.insert(k, v);
        }
    }
    out
}

/// A stem cell booted in discovery mode reports what the machine is.
pub(super) async fn discover(
    State(app): State<App>,
    Path(mac): Path<String>,
    Query(q): Query<TokenQuery>,
    body: String,
) -> Response {
    let mac = match machine_mac(&app, &mac) {
        Ok(m) => m,
        Err(r) => return r.into_response(),
    };
    let inv = app.inventory.get();
    // Only machines this server booted into discovery may report: the policy must be
    // `discover`, the machine unlisted, and the token the one its boot script named.
    if inv.defaults.unknown != crate::inventory::UnknownPolicy::Discover {
        return text(
            StatusCode::FORBIDDEN,
            "discovery is off (the inventory's unknown policy is ignore)\n",
        );
    }
    let listed = inv.machine(&mac).is_some();
    if listed {
        return text(
            StatusCode::CONFLICT,
            format!("{mac} is in the inventory: it installs, it is not discovered\n"),
        );
    }
    let token = q.token.unwrap_or_default();
    if !app.store.check_discovery_token(&mac, &token) {
        tracing::warn!(mac = %mac, "discovery report refused: wrong or missing token");
        return text(StatusCode::FORBIDDEN, "wrong or missing discovery token\n");
    }
    let hardware = parse_facts(&body);
    let n = hardware.len();
    app.store.observe(
        mac,
        listed,
        state::Facts {
            hardware,
            ..Default::default()
        },
    );
    app.store.event(
        mac,
        "discover",
        format!("stem cell reported {n} hardware facts"),
    );
    tracing::info!(mac = %mac, facts = n, "discovery report");
    text(StatusCode::OK, format!("{n} facts\n"))
}

fn record_install_outcome(app: &App, outcome: &str, record: &Record) {
    app.metrics
        .inc("stemcell_installs_total", &[("outcome", outcome)], 1.0);
    if let Some(start) = record.install_started {
        let secs = state::now_ms().saturating_sub(start) as f64 / 1000.0;
        app.metrics.observe(
            "stemcell_install_duration_seconds",
            &[("outcome", outcome)],
            secs,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_facts_are_bounded_and_cleaned() {
        let f =
            parse_facts("CPUs=4\nmemory_kb = 2048\nbad key=x\nno equals\ndmi.vendor=QEMU\x07\n");
        assert_eq!(f.get("cpus").map(String::as_str), Some("4"));
        assert_eq!(f.get("memory_kb").map(String::as_str), Some("2048"));
        assert_eq!(f.get("dmi.vendor").map(String::as_str), Some("QEMU"));
        assert_eq!(f.len(), 3);
        let many: String = (0..FACTS_MAX + 100)
            .map(|i| format!("k{i}={}\n", "v".repeat(2000)))
            .collect();
        let f = parse_facts(&many);
        assert_eq!(f.len(), FACTS_MAX);
        assert!(f.values().all(|v| v.len() == FACT_VALUE_MAX));
    }
}
