//! What firmware and iPXE fetch: per-MAC boot scripts, the stem cell's kernel and initrd,
//! the assets folder and the TFTP root over HTTP. The decision itself is `crate::boot`'s;
//! this module serves it and records each step as the machine's event.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{files, parse_mac, text, App};
use crate::boot::{boot_script_text, choice_for, grub_cfg_text, Choice};
use crate::dhcp::Loader;
use crate::mac::MacAddr;
use crate::state::{self};

pub(super) async fn boot_script(
    State(app): State<App>,
    Path(file): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    let Some(mac) = file.strip_suffix(".ipxe") else {
        return text(StatusCode::NOT_FOUND, "boot scripts are /boot/MAC.ipxe\n");
    };
    let mac = match parse_mac(mac) {
        Ok(m) => m,
        Err(r) => return r.into_response(),
    };
    match boot_script_for(&app, mac).await {
        Ok((choice, script)) => {
            tracing::info!(mac = %mac, peer = %peer, choice = ?choice, "boot script");
            (
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                script,
            )
                .into_response()
        }
        Err(e) => {
            tracing::warn!(mac = %mac, error = %e, "boot script failed");
            let id = app.inventory.get().id(mac);
            app.store
                .event(id, "error", format!("boot script failed: {e}"));
            if matches!(e, ScriptError::State(crate::state::StateError::Io(_))) {
                // The install token could not be written (a full disk): nothing was armed.
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "state could not be saved; try again\n",
                );
            }
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "boot script failed; see the server log\n",
            )
        }
    }
}

/// Why a boot script could not be served.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ScriptError {
    #[error("cannot arm the install: {0}")]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Boot(#[from] crate::boot::BootError),
}

/// The boot script for `mac` now, recording that it was served (arming a pending
/// machine with a durable install token first).
pub(crate) async fn boot_script_for(
    app: &App,
    nic: MacAddr,
) -> Result<(Choice, String), ScriptError> {
    boot_config_for(app, nic, Loader::Ipxe).await
}

/// As [`boot_script_for`], for either loader: an iPXE script or a grub.cfg, from the same
/// decision with the same events and state changes.
pub(crate) async fn boot_config_for(
    app: &App,
    nic: MacAddr,
    loader: Loader,
) -> Result<(Choice, String), ScriptError> {
    let inv = app.inventory.get();
    let machine = inv.machine(&nic);
    // Any NIC of a listed machine is that machine: its state lives under its key MAC.
    let mac = inv.id(nic);
    let record = app.store.record(&mac);
    let choice = choice_for(&inv, mac, record.as_ref());
    app.store.observe(
        mac,
        machine.is_some(),
        state::Facts {
            boot_nic: Some(nic.to_string()),
            ..Default::default()
        },
    );
    let token = match choice {
        Choice::Install => Some(app.store.arm(mac).await?),
        Choice::Discover => Some(app.store.discovery_token(&mac)),
        _ => None,
    };
    let message = match (&choice, machine) {
        (Choice::Install, Some(m)) => format!("boot script: install as role {}", m.role),
        (Choice::Local, _) => "boot script: installed, boot from local disk".into(),
        (Choice::Failed(_), _) => "boot script: last install failed, waiting to be re-armed".into(),
        (Choice::Discover, _) => "boot script: unknown machine, discovery boot".into(),
        _ => "boot script: not in the inventory, ignored".into(),
    };
    let render = match loader {
        Loader::Ipxe => boot_script_text,
        Loader::Grub => grub_cfg_text,
    };
    let script = render(
        &app.config,
        &app.server_url,
        &inv,
        nic,
        &choice,
        token.as_deref(),
    )?;
    let mut message = if nic == mac {
        message
    } else {
        format!("{message} (netbooted from its NIC {nic})")
    };
    if loader == Loader::Grub {
        message.push_str(" (GRUB)");
    }
    app.store.event(mac, "boot", message);
    Ok((choice, script))
}

#[derive(Deserialize)]
pub(super) struct MacQuery {
    pub(super) mac: Option<String>,
}

/// The machine a `?mac=` names (by its key MAC, whichever NIC was written).
fn query_machine(app: &App, q: &MacQuery) -> Option<MacAddr> {
    let mac = q.mac.as_deref()?.parse::<MacAddr>().ok()?;
    Some(app.inventory.get().id(mac))
}

fn file_event(app: &App, q: &MacQuery, headers: &HeaderMap, what: &str) {
    if let Some(mac) = query_machine(app, q) {
        // Only whole-file fetches are boot steps; resumed ranges are not worth an event.
        if headers.get(header::RANGE).is_none() {
            app.store.event(mac, "file", format!("fetched {what}"));
        }
    }
}

/// The refusal of an armed machine's installer kernel once it has been booted
/// `installer_boots` times without `done` or `failed` (see [`installer_kernel`]), for
/// HTTP and TFTP alike: `None` when it may boot (and the boot was counted).
pub(crate) async fn installer_boot_refused(
    app: &App,
    mac: MacAddr,
) -> Option<(StatusCode, &'static str)> {
    match app
        .store
        .installer_booted(mac, app.config.installer_boots)
        .await
    {
        Ok(true) => None,
        Ok(false) => Some((
            StatusCode::CONFLICT,
            "this machine's install was stopped: its installer booted too often without \
             reporting done or failed; re-arm it\n",
        )),
        Err(e) => {
            tracing::error!(mac = %mac, error = %e, "cannot record the installer boot");
            Some((
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot record this boot; see the server log\n",
            ))
        }
    }
}

/// A whole-file GET of an armed machine's installer kernel is one boot into the installer:
/// counted, and refused (409) once the machine has booted it `installer_boots` times
/// without `done` or `failed` — the install is then stopped (failed, with the reason) and
/// its next boot script waits for a re-arm.
async fn installer_kernel(
    app: &App,
    q: &MacQuery,
    method: &Method,
    headers: &HeaderMap,
) -> Option<Response> {
    let mac = query_machine(app, q)?;
    if method != Method::GET || headers.get(header::RANGE).is_some() {
        return None;
    }
    installer_boot_refused(app, mac)
        .await
        .map(|(status, why)| text(status, why))
}

pub(super) async fn stemcell_file(
    State(app): State<App>,
    Path(file): Path<String>,
    Query(q): Query<MacQuery>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let cached = match file.as_str() {
        "vmlinuz" => &app.stemcell_files[0],
        "initrd.img" => &app.stemcell_files[1],
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                "the stem cell has vmlinuz and initrd.img\n",
            )
        }
    };
    if file == "vmlinuz" {
        if let Some(refused) = installer_kernel(&app, &q, &method, &headers).await {
            return refused;
        }
    }
    file_event(&app, &q, &headers, &format!("stem-cell {file}"));
    cached.serve(&headers).await
}

pub(super) async fn asset(
    State(app): State<App>,
    Path(rel): Path<String>,
    Query(q): Query<MacQuery>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let Some(root) = &app.config.assets else {
        return text(StatusCode::NOT_FOUND, "no assets folder is configured\n");
    };
    let Some(path) = files::jail(root, &rel) else {
        tracing::warn!(path = %rel, "asset request refused or not found");
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    // The machine's role boots a distribution's installer: its kernel is counted as the
    // stem cell's is.
    let role_kernel = q
        .mac
        .as_deref()
        .and_then(|m| m.parse::<MacAddr>().ok())
        .and_then(|mac| {
            let inv = app.inventory.get();
            let m = inv.machine(&mac)?;
            inv.role_of(m)?.kernel.clone()
        });
    if role_kernel.as_deref() == Some(rel.as_str()) {
        if let Some(refused) = installer_kernel(&app, &q, &method, &headers).await {
            return refused;
        }
    }
    file_event(&app, &q, &headers, &format!("asset {rel}"));
    files::serve(&path, &headers).await
}

/// The TFTP root over HTTP, for UEFI HTTP boot (its DHCP answer names
/// `{server_url}/tftp/ipxe.efi`); jailed like the assets.
pub(super) async fn tftp_over_http(
    State(app): State<App>,
    Path(rel): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(tftp) = &app.config.tftp else {
        return text(StatusCode::NOT_FOUND, "TFTP is not configured\n");
    };
    let Some(path) = files::jail(&tftp.root, &rel) else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    files::serve(&path, &headers).await
}
