//! The JSON API under `/api/v1`, its OpenAPI document and the Prometheus metrics.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::{machine_mac, state_reject, App, Reject};
use crate::boot::{fingerprint_with, TemplateCache};
use crate::inventory::{self, Inventory};
use crate::mac::MacAddr;
use crate::power::{Action, Outcome, PowerError};
use crate::state::{self, Lifecycle, Record};

#[derive(Serialize)]
pub(crate) struct MachineView {
    pub(crate) mac: MacAddr,
    pub(crate) hostname: Option<String>,
    pub(crate) role: Option<String>,
    /// Every NIC the inventory lists for it (label and MAC); `facts.boot_nic` is the one
    /// it last netbooted from.
    pub(crate) nics: Vec<crate::network::Nic>,
    pub(crate) state: Lifecycle,
    pub(crate) ip: Option<String>,
    pub(crate) listed: bool,
    pub(crate) reason: Option<String>,
    pub(crate) last_seen: Option<u64>,
    pub(crate) installed_at: Option<u64>,
    /// On its disk, but what it was installed or configured from changed since (never
    /// acted on automatically); `drift` says what.
    pub(crate) drifted: bool,
    pub(crate) drift: Vec<String>,
    /// The OS image (sha256) it was installed from.
    pub(crate) os_image: Option<String>,
    /// When each phase of its last install began.
    pub(crate) phases: state::Phases,
    /// Its last configuration run.
    pub(crate) last_run: Option<state::ConfigRun>,
    pub(crate) facts: state::Facts,
    pub(crate) last_event: Option<state::Event>,
    /// The inventory names its BMC.
    pub(crate) has_bmc: bool,
    /// The last power state seen through its BMC.
    pub(crate) power: Option<crate::power::Seen>,
}

/// What a machine would be installed and configured from now, read once per request for
/// many machines: template texts, each OS's current image, the Puppet bundle's digest.
#[derive(Default)]
pub(crate) struct Current {
    templates: TemplateCache,
    os: BTreeMap<String, Option<String>>,
    bundle: Option<Option<String>>,
}

impl Current {
    fn os_sha(&mut self, app: &App, name: &str) -> Option<String> {
        self.os
            .entry(name.to_string())
            .or_insert_with(|| {
                crate::images::current(&app.config.os_images, name)
                    .ok()
                    .map(|o| o.sha256)
            })
            .clone()
    }

    fn bundle_sha(&mut self, app: &App) -> Option<String> {
        self.bundle
            .get_or_insert_with(|| app.bundles.current().ok().map(|b| b.sha256.clone()))
            .clone()
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// What changed since a machine on its disk was installed and configured.
fn drift_of(
    app: &App,
    inv: &Inventory,
    m: &inventory::Machine,
    r: &Record,
    current: &mut Current,
) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(from) = &r.installed_from {
        if *from != fingerprint_with(&app.config, inv, m, &mut current.templates) {
            out.push("its role, template or variables changed since the install".to_string());
        }
    }
    let role = inv.role_of(m);
    if let Some(name) = role.and_then(|r| r.os.as_deref()) {
        let now = current.os_sha(app, name);
        match (&r.os_image, &now) {
            (Some(was), Some(now)) if was != now => out.push(format!(
                "OS image {name} rebuilt: installed {}, now {}",
                short(was),
                short(now)
            )),
            (None, Some(_)) => out.push(format!("its role now installs OS {name}")),
            _ => {}
        }
    }
    let applies_bundle = role.is_some_and(|r| r.puppet_server.is_none());
    if let (true, Some(applied)) = (
        applies_bundle,
        r.last_good_run.as_ref().and_then(|g| g.bundle.as_deref()),
    ) {
        if let Some(now) = current.bundle_sha(app) {
            if applied != now {
                out.push(format!(
                    "Puppet code changed: last applied {}, now {}",
                    short(applied),
                    short(&now)
                ));
            }
        }
    }
    out
}

pub(crate) fn view(
    app: &App,
    inv: &Inventory,
    mac: MacAddr,
    record: Option<&Record>,
    current: &mut Current,
) -> MachineView {
    let m = inv.machine(&mac);
    let state = state::effective_at(record, m.is_some(), state::now_ms(), app.config.stall_after);
    let drift = match (m, record) {
        (Some(m), Some(r)) if state.on_disk() => drift_of(app, inv, m, r, current),
        _ => Vec::new(),
    };
    MachineView {
        mac,
        hostname: m.map(|m| m.hostname.clone()),
        role: m.map(|m| m.role.clone()),
        state,
        drifted: !drift.is_empty(),
        drift,
        nics: m.map(|m| m.nics.clone()).unwrap_or_default(),
        ip: m
            .and_then(|m| m.ip.map(|i| i.to_string()))
            .or_else(|| {
                let now = state::now_ms() / 1000;
                let leases = app.leases.as_ref()?;
                let macs = m.map(|m| m.macs()).unwrap_or_else(|| vec![mac]);
                macs.iter()
                    .filter_map(|n| leases.lease_of(*n, now))
                    .find(|l| l.state == crate::leases::LeaseState::Bound)
                    .map(|l| l.ip.to_string())
            })
            .or_else(|| record.and_then(|r| r.facts.ip.clone())),
        listed: m.is_some(),
        reason: record.and_then(|r| r.reason.clone()),
        last_seen: record.map(|r| r.last_seen).filter(|t| *t > 0),
        installed_at: record.and_then(|r| r.installed_at),
        os_image: record.and_then(|r| r.os_image.clone()),
        phases: record.map(|r| r.phases.clone()).unwrap_or_default(),
        last_run: record.and_then(|r| r.last_run.clone()),
        facts: record.map(|r| r.facts.clone()).unwrap_or_default(),
        last_event: app.store.last_event(&mac),
        has_bmc: m.is_some_and(|m| m.power.is_some()),
        power: app.power_states.get(&mac),
    }
}

/// Every listed machine in file order, then every other machine that was seen.
pub(crate) fn machine_views(app: &App) -> Vec<MachineView> {
    let inv = app.inventory.get();
    let records: BTreeMap<MacAddr, Record> = app
        .store
        .records()
        .into_iter()
        .map(|r| (r.mac, r))
        .collect();
    let mut current = Current::default();
    let mut out: Vec<MachineView> = inv
        .order
        .iter()
        .map(|mac| view(app, &inv, *mac, records.get(mac), &mut current))
        .collect();
    for (mac, r) in &records {
        if inv.machine(mac).is_none() {
            out.push(view(app, &inv, *mac, Some(r), &mut current));
        }
    }
    out
}

pub(super) async fn api_machines(State(app): State<App>) -> Response {
    Json(machine_views(&app)).into_response()
}

pub(super) async fn api_machine(State(app): State<App>, Path(mac): Path<String>) -> Response {
    let mac = match machine_mac(&app, &mac) {
        Ok(m) => m,
        Err(r) => return r.into_response(),
    };
    let (inv, record) = match super::known(&app, mac) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    #[derive(Serialize)]
    struct Detail {
        #[serde(flatten)]
        machine: MachineView,
        events: Vec<state::Event>,
    }
    Json(Detail {
        machine: view(&app, &inv, mac, record.as_ref(), &mut Current::default()),
        events: app.store.events(&mac),
    })
    .into_response()
}

fn authorized(app: &App, headers: &HeaderMap) -> Result<(), Reject> {
    let Some(want) = &app.admin_token else {
        return Err(Reject(
            StatusCode::FORBIDDEN,
            "no admin_token_file is configured: the mutating API is off\n".into(),
        ));
    };
    let got = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if state::constant_time_eq(got.trim().as_bytes(), want.as_bytes()) {
        Ok(())
    } else {
        Err(Reject(
            StatusCode::UNAUTHORIZED,
            "wrong or missing bearer token\n".into(),
        ))
    }
}

/// Re-arm a listed machine: its next netboot installs again, with a new token.
pub(crate) async fn reinstall(app: &App, mac: MacAddr) -> Result<(), Reject> {
    if app.inventory.get().machine(&mac).is_none() {
        return Err(Reject(
            StatusCode::CONFLICT,
            format!("{mac} is not in the inventory; add it with a role first\n"),
        ));
    }
    app.store
        .rearm(mac)
        .await
        .map_err(|e| state_reject(mac, e))?;
    app.store
        .event(mac, "rearm", "re-armed: the next netboot reinstalls");
    tracing::info!(mac = %mac, "machine re-armed");
    Ok(())
}

/// Cancel an armed install: back to installed if it ever was, otherwise held as failed.
pub(crate) async fn cancel(app: &App, mac: MacAddr) -> Result<(), Reject> {
    let r = app
        .store
        .cancel(mac)
        .await
        .map_err(|e| state_reject(mac, e))?;
    app.store.event(
        mac,
        "cancel",
        format!("install cancelled by an operator; now {}", r.state.as_str()),
    );
    tracing::info!(mac = %mac, state = r.state.as_str(), "install cancelled");
    Ok(())
}

pub(super) async fn api_action(
    app: App,
    mac: String,
    headers: HeaderMap,
    cancel_it: bool,
) -> Response {
    if let Err(r) = authorized(&app, &headers) {
        return r.into_response();
    }
    let mac = match machine_mac(&app, &mac) {
        Ok(m) => m,
        Err(r) => return r.into_response(),
    };
    let result = if cancel_it {
        cancel(&app, mac).await
    } else {
        reinstall(&app, mac).await
    };
    match result {
        Ok(()) => {
            let inv = app.inventory.get();
            Json(view(
                &app,
                &inv,
                mac,
                app.store.record(&mac).as_ref(),
                &mut Current::default(),
            ))
            .into_response()
        }
        Err(r) => r.into_response(),
    }
}

pub(super) async fn api_reinstall(
    State(app): State<App>,
    Path(mac): Path<String>,
    headers: HeaderMap,
) -> Response {
    api_action(app, mac, headers, false).await
}

pub(super) async fn api_cancel(
    State(app): State<App>,
    Path(mac): Path<String>,
    headers: HeaderMap,
) -> Response {
    api_action(app, mac, headers, true).await
}

/// A power action on a listed machine's BMC, recorded as an event that says who asked
/// (a status query is not recorded). The BMC's own failure is a 502 (504 for a time-out).
pub(crate) async fn power(
    app: &App,
    mac: MacAddr,
    action: Action,
    who: &str,
) -> Result<Outcome, Reject> {
    let p = {
        let inv = app.inventory.get();
        let Some(m) = inv.machine(&mac) else {
            return Err(Reject(
                StatusCode::CONFLICT,
                format!("{mac} is not in the inventory\n"),
            ));
        };
        let Some(p) = m.power.clone() else {
            return Err(Reject(
                StatusCode::CONFLICT,
                format!("{mac} ({}) has no BMC: add a power: block with an address to it in the inventory\n", m.hostname),
            ));
        };
        p
    };
    let result = app.power.act(&p, action).await;
    app.power_states.record(mac, &result, state::now_ms());
    let a = action.as_str();
    match &result {
        Ok(o) => {
            if action != Action::Status {
                app.store
                    .event(mac, "power", format!("power {a} by {who}: {}", o.message));
            }
            tracing::info!(mac = %mac, action = a, who, "power: {}", o.message);
        }
        Err(e) => {
            app.store
                .event(mac, "power", format!("power {a} by {who}: failed: {e}"));
            tracing::warn!(mac = %mac, action = a, who, kind = e.kind(), "power: {e}");
        }
    }
    result.map_err(|e| {
        let code = match e {
            PowerError::TimedOut { .. } => StatusCode::GATEWAY_TIMEOUT,
            PowerError::Password { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_GATEWAY,
        };
        Reject(code, format!("{e}\n"))
    })
}

#[derive(serde::Deserialize)]
pub(super) struct PowerRequest {
    action: String,
}

pub(super) async fn api_power(
    State(app): State<App>,
    Path(mac): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = authorized(&app, &headers) {
        return r.into_response();
    }
    let mac = match machine_mac(&app, &mac) {
        Ok(m) => m,
        Err(r) => return r.into_response(),
    };
    let action = match serde_json::from_slice::<PowerRequest>(&body)
        .map_err(|e| {
            format!("the body must be JSON {{\"action\": \"status|on|off|cycle|pxe\"}}: {e}")
        })
        .and_then(|r| r.action.parse::<Action>())
    {
        Ok(a) => a,
        Err(e) => return Reject(StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    #[derive(Serialize)]
    struct Done {
        mac: MacAddr,
        action: Action,
        #[serde(flatten)]
        outcome: Outcome,
    }
    match power(&app, mac, action, "the admin API").await {
        Ok(outcome) => Json(Done {
            mac,
            action,
            outcome,
        })
        .into_response(),
        Err(r) => r.into_response(),
    }
}

pub(super) async fn api_status(State(app): State<App>) -> Response {
    #[derive(Serialize)]
    struct Status {
        version: &'static str,
        server_url: String,
        inventory: inventory::Status,
    }
    Json(Status {
        version: env!("CARGO_PKG_VERSION"),
        server_url: app.server_url.clone(),
        inventory: app.inventory.status(),
    })
    .into_response()
}

pub(super) async fn metrics(State(app): State<App>) -> Response {
    let st = app.inventory.status();
    let m = &app.metrics;
    m.set("stemcell_inventory_reloads_total", &[], st.reloads as f64);
    m.set(
        "stemcell_inventory_reload_errors_total",
        &[],
        st.reload_errors as f64,
    );
    m.set("stemcell_inventory_machines", &[], st.machines as f64);
    let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
    for v in machine_views(&app) {
        *by_state.entry(v.state.as_str()).or_default() += 1;
    }
    if let Some(leases) = &app.leases {
        let now = state::now_ms() / 1000;
        let mut active: BTreeMap<String, usize> = BTreeMap::new();
        for s in &app.config.dhcp.subnets {
            active.insert(s.net.to_string(), 0);
            let size = u32::from(s.pool_end) - u32::from(s.pool_start) + 1;
            m.set(
                "stemcell_dhcp_pool_size",
                &[("subnet", &s.net.to_string())],
                f64::from(size),
            );
        }
        for l in leases.leases(now) {
            if l.state == crate::leases::LeaseState::Bound {
                if let Some(s) = app
                    .config
                    .dhcp
                    .subnets
                    .iter()
                    .find(|s| s.net.contains(l.ip))
                {
                    *active.entry(s.net.to_string()).or_default() += 1;
                }
            }
        }
        for (net, n) in active {
            m.set("stemcell_dhcp_leases_active", &[("subnet", &net)], n as f64);
        }
    }
    if let Some(c) = &app.dhcp_counters {
        for (what, n) in c.snapshot() {
            m.set("stemcell_dhcp_datagrams_total", &[("what", what)], n as f64);
        }
    }
    let mut journals = vec![("machines", app.store.journal_stats())];
    if let Some(s) = app.leases.as_ref().and_then(|l| l.journal_stats()) {
        journals.push(("leases", s));
    }
    for (name, s) in journals {
        let l = [("journal", name)];
        m.set(
            "stemcell_journal_write_errors_total",
            &l,
            s.write_errors as f64,
        );
        m.set("stemcell_journal_backlog_bytes", &l, s.backlog_bytes as f64);
        m.set(
            "stemcell_journal_dropped_lines_total",
            &l,
            s.dropped_lines as f64,
        );
    }
    m.clear("stemcell_machines");
    for (s, n) in by_state {
        m.set("stemcell_machines", &[("state", s)], n as f64);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m.render(),
    )
        .into_response()
}

/// The API's OpenAPI 3 document (tests check real responses against it).
pub(crate) const OPENAPI: &str = include_str!("openapi.json");

pub(super) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}
