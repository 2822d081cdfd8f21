//! The inventory page and the per-machine page: server-rendered (askama), readable without
//! JavaScript, live with a little JavaScript over server-sent events (`/api/v1/events`).
//!
//! Operator actions (re-arm, cancel) need a login with the admin token: a random session
//! id in an HttpOnly, SameSite=Strict cookie and a per-session CSRF token in every form.
//! Without an admin token configured, the actions are hidden and refused.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use askama::Template;
use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use futures_util::stream::Stream;
use serde::Deserialize;

use super::api::{cancel, machine_views, reinstall, view, Current, MachineView};
use super::{text, App, Reject};
use crate::inventory::Inventory;
use crate::mac::MacAddr;
use crate::state::Record;
use crate::state::{self, Lifecycle};

const COOKIE: &str = "stemcell_session";
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

struct Session {
    csrf: String,
    created: Instant,
}

/// Logged-in operators.
#[derive(Default)]
pub(crate) struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    fn create(&self) -> (String, String) {
        let id = state::new_token();
        let csrf = state::new_token();
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|_, s| s.created.elapsed() < SESSION_TTL);
        m.insert(
            id.clone(),
            Session {
                csrf: csrf.clone(),
                created: Instant::now(),
            },
        );
        (id, csrf)
    }

    /// The CSRF token of the request's session, if it has a live one.
    fn csrf_of(&self, headers: &HeaderMap) -> Option<String> {
        let id = cookie(headers, COOKIE)?;
        let m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&id)
            .filter(|s| s.created.elapsed() < SESSION_TTL)
            .map(|s| s.csrf.clone())
    }

    fn remove(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, COOKIE) {
            self.map
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        }
    }
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Whether the request carries a live page session (`http.read_auth`).
pub(crate) fn logged_in(app: &App, headers: &HeaderMap) -> bool {
    login_state(app, headers).is_some()
}

/// The session's CSRF token if logged in (and actions exist at all).
fn login_state(app: &App, headers: &HeaderMap) -> Option<String> {
    app.admin_token.as_ref()?;
    app.sessions.csrf_of(headers)
}

fn fmt_time(ms: u64) -> String {
    if ms == 0 {
        return String::new();
    }
    let (date, time) = crate::civil::date_time(ms / 1000);
    format!("{date} {time}")
}

fn ago(ms: u64) -> String {
    if ms == 0 {
        return "never".into();
    }
    let s = state::now_ms().saturating_sub(ms) / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

struct Row {
    mac: String,
    mac_id: String,
    hostname: String,
    role: String,
    state: &'static str,
    drifted: bool,
    ip: String,
    arch: String,
    last_seen: String,
    last_seen_ms: u64,
    last_event: String,
    converged: String,
    /// "on, 12s ago", "unreachable?, 5s ago", "" without a BMC.
    power: String,
    power_title: String,
}

struct Count {
    state: &'static str,
    count: usize,
    active: bool,
}

#[derive(Template)]
#[template(path = "page/index.html")]
struct IndexPage {
    logged_in: bool,
    actions_available: bool,
    csrf: String,
    inventory_file: String,
    listed: usize,
    roles: usize,
    loaded_at: Option<String>,
    inventory_error: Option<String>,
    server_url: String,
    total: usize,
    counts: Vec<Count>,
    role_names: Vec<String>,
    state_filter: String,
    role_filter: String,
    query: String,
    rows: Vec<Row>,
}

#[derive(Deserialize, Default)]
pub(crate) struct Filters {
    state: Option<String>,
    role: Option<String>,
    q: Option<String>,
}

/// The states counted on the fleet page, in the order a machine goes through them.
const STATES: [Lifecycle; 10] = [
    Lifecycle::Pending,
    Lifecycle::Installing,
    Lifecycle::Installed,
    Lifecycle::Booted,
    Lifecycle::Configured,
    Lifecycle::ConfigFailed,
    Lifecycle::Stalled,
    Lifecycle::Failed,
    Lifecycle::Discovered,
    Lifecycle::Unknown,
];

/// "3m ago, 2 changed" for the fleet page's Puppet column.
fn converged(v: &MachineView) -> String {
    match &v.last_run {
        None => String::new(),
        Some(r) => {
            let what = if r.failed > 0 || !r.succeeded() {
                format!("{} failed", r.failed.max(1))
            } else if r.changed > 0 {
                format!("{} changed", r.changed)
            } else {
                "no changes".to_string()
            };
            format!("{}, {what}", ago(r.at))
        }
    }
}

/// One segment of an install's timeline: label, seconds, share of the whole (percent).
pub(crate) struct Segment {
    label: &'static str,
    secs: f64,
    pct: f64,
    /// Still running (no end yet).
    open: bool,
}

/// Pure: the phases of the last install as timeline segments. A phase ends where the next
/// one begins; the last one begun and not ended runs until `now` and is marked open.
pub(crate) fn timeline(p: &crate::state::Phases, now: u64, state: Lifecycle) -> Vec<Segment> {
    let marks = [
        ("stem cell boot", p.netboot),
        ("partition", p.stemcell),
        ("image + setup", p.image),
        ("first boot", p.installed),
        ("Puppet", p.booted),
        ("", p.configured),
    ];
    let mut out = Vec::new();
    for (i, (label, start)) in marks.iter().enumerate().take(5) {
        let Some(start) = start else { continue };
        let end = marks[i + 1..].iter().find_map(|(_, t)| *t);
        let running = matches!(
            state,
            Lifecycle::Installing | Lifecycle::Installed | Lifecycle::Booted | Lifecycle::Pending
        );
        let (end, open) = match end {
            Some(e) => (e, false),
            None if running => (now, true),
            None => continue,
        };
        out.push(Segment {
            label,
            secs: end.saturating_sub(*start) as f64 / 1000.0,
            pct: 0.0,
            open,
        });
    }
    let total: f64 = out.iter().map(|s| s.secs).sum();
    for s in &mut out {
        s.pct = if total > 0.0 {
            (s.secs / total * 100.0).max(0.5)
        } else {
            100.0 / 5.0
        };
    }
    out
}

fn row(v: &MachineView) -> Row {
    Row {
        mac: v.mac.to_string(),
        mac_id: v.mac.hex(),
        hostname: v.hostname.clone().unwrap_or_default(),
        role: v.role.clone().unwrap_or_default(),
        state: v.state.as_str(),
        drifted: v.drifted,
        ip: v.ip.clone().unwrap_or_default(),
        arch: v.facts.arch.clone().unwrap_or_default(),
        last_seen: ago(v.last_seen.unwrap_or(0)),
        last_seen_ms: v.last_seen.unwrap_or(0),
        last_event: v
            .last_event
            .as_ref()
            .map(|e| format!("{}: {}", e.kind, e.message))
            .unwrap_or_default(),
        converged: converged(v),
        power: power_text(v),
        power_title: v
            .power
            .as_ref()
            .and_then(|p| p.error.clone())
            .unwrap_or_default(),
    }
}

/// A machine's last seen power state and its age, for the page.
fn power_text(v: &MachineView) -> String {
    if !v.has_bmc {
        return String::new();
    }
    match &v.power {
        None => "not asked yet".into(),
        Some(p) => {
            let what = match (p.state, &p.error) {
                (Some(s), _) => s.as_str(),
                (None, Some(_)) => "error",
                (None, None) => "unknown",
            };
            format!("{what}, {}", ago(p.at))
        }
    }
}

pub(crate) async fn index(
    State(app): State<App>,
    Query(f): Query<Filters>,
    headers: HeaderMap,
) -> Response {
    let views = machine_views(&app);
    let status = app.inventory.status();
    let inv = app.inventory.get();
    let state_filter = f.state.unwrap_or_default();
    let role_filter = f.role.unwrap_or_default();
    let query = f.q.unwrap_or_default();
    let q = query.trim().to_ascii_lowercase();
    let q_mac = q.parse::<MacAddr>().ok();
    let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
    let mut rows = Vec::new();
    for v in &views {
        let role_ok = role_filter.is_empty() || v.role.as_deref() == Some(role_filter.as_str());
        let q_ok = q.is_empty()
            || q_mac == Some(v.mac)
            || v.mac.to_string().contains(&q)
            || v.nics
                .iter()
                .any(|n| q_mac == Some(n.mac) || n.mac.to_string().contains(&q))
            || v.hostname
                .as_deref()
                .is_some_and(|h| h.to_ascii_lowercase().contains(&q))
            || v.ip.as_deref().is_some_and(|i| i.contains(&q));
        if !(role_ok && q_ok) {
            continue;
        }
        *by_state.entry(v.state.as_str()).or_default() += 1;
        if state_filter.is_empty() || state_filter == v.state.as_str() {
            rows.push(row(v));
        }
    }
    let csrf = login_state(&app, &headers);
    let page = IndexPage {
        logged_in: csrf.is_some(),
        actions_available: app.admin_token.is_some(),
        csrf: csrf.unwrap_or_default(),
        inventory_file: status.file.display().to_string(),
        listed: status.machines,
        roles: status.roles,
        loaded_at: status.loaded_at.map(|t| fmt_time(t * 1000) + " UTC"),
        inventory_error: status.error.clone(),
        server_url: app.server_url.clone(),
        total: by_state.values().sum(),
        counts: STATES
            .iter()
            .map(|s| Count {
                state: s.as_str(),
                count: by_state.get(s.as_str()).copied().unwrap_or(0),
                active: state_filter == s.as_str(),
            })
            .collect(),
        role_names: inv.roles.keys().cloned().collect(),
        state_filter,
        role_filter,
        query,
        rows,
    };
    render(page)
}

fn render(t: impl Template) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "page template failed");
            text(StatusCode::INTERNAL_SERVER_ERROR, "page failed to render\n")
        }
    }
}

#[derive(Template)]
#[template(path = "page/machine.html")]
struct MachinePage {
    logged_in: bool,
    actions_available: bool,
    csrf: String,
    mac: String,
    mac_json: String,
    hostname: String,
    role: String,
    ip: String,
    state: &'static str,
    drift: Vec<String>,
    reason: Option<String>,
    listed: bool,
    timeline: Vec<Segment>,
    last_run: Option<String>,
    facts: Vec<(String, String)>,
    yaml_snippet: Option<String>,
    events: Vec<(String, String, String)>,
    boot_script: String,
    install_script: Option<String>,
    has_bmc: bool,
    power: String,
    power_title: String,
}

fn mask(s: &str, token: Option<&str>) -> String {
    match token {
        Some(t) if !t.is_empty() => s.replace(t, "••••••••"),
        _ => s.to_string(),
    }
}

pub(crate) async fn machine(
    State(app): State<App>,
    Path(mac): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Ok(mac) = mac.parse::<MacAddr>() else {
        return text(StatusCode::BAD_REQUEST, "not a MAC address\n");
    };
    let mac = app.inventory.get().id(mac);
    let (inv, record) = match super::known(&app, mac) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    let v = view(&app, &inv, mac, record.as_ref(), &mut Current::default());
    let token = record.as_ref().and_then(|r| r.token.clone());
    let (boot_script, install_script) = scripts_shown(&app, &inv, mac, record.as_ref());
    let facts = fact_rows(&v, record.as_ref());
    let yaml_snippet = (!v.listed).then(|| inventory_snippet(&v, &inv));
    let csrf = login_state(&app, &headers);
    render(MachinePage {
        logged_in: csrf.is_some(),
        actions_available: app.admin_token.is_some(),
        csrf: csrf.unwrap_or_default(),
        mac: mac.to_string(),
        mac_json: serde_json::to_string(&mac.to_string()).unwrap_or_default(),
        hostname: v
            .hostname
            .clone()
            .unwrap_or_else(|| "(not in the inventory)".into()),
        role: v.role.clone().unwrap_or_default(),
        ip: v.ip.clone().unwrap_or_default(),
        state: v.state.as_str(),
        drift: v.drift.clone(),
        reason: v.reason.clone(),
        listed: v.listed,
        timeline: timeline(&v.phases, crate::state::now_ms(), v.state),
        last_run: v.last_run.as_ref().map(|r| {
            format!(
                "{} UTC: exit {}, {} changed, {} failed of {} resources, {:.1} s",
                fmt_time(r.at),
                r.exit,
                r.changed,
                r.failed,
                r.total,
                r.millis as f64 / 1000.0
            )
        }),
        facts,
        yaml_snippet,
        events: recent_events(&app, mac, token.as_deref()),
        boot_script,
        install_script,
        has_bmc: v.has_bmc,
        power: power_text(&v),
        power_title: v
            .power
            .as_ref()
            .and_then(|p| p.error.clone())
            .unwrap_or_default(),
    })
}

/// The boot and install scripts the machine would get now, tokens masked.
fn scripts_shown(
    app: &App,
    inv: &Inventory,
    mac: MacAddr,
    record: Option<&Record>,
) -> (String, Option<String>) {
    let choice = crate::boot::choice_for(inv, mac, record);
    let shown_token = record
        .and_then(|r| r.token.clone())
        .unwrap_or_else(|| "TOKEN".into());
    let boot_script = crate::boot::boot_script_text(
        &app.config,
        &app.server_url,
        inv,
        mac,
        &choice,
        Some(&shown_token),
    )
    .map(|s| mask(&s, Some(&shown_token)))
    .unwrap_or_else(|e| format!("(cannot render: {e})"));
    let install_script = inv.machine(&mac).and_then(|m| {
        let role = inv.role_of(m)?;
        let mut vars = crate::render::InstallVars::new(inv, m, &app.server_url, &shown_token)
            .with_machine_key("MACHINE-KEY");
        if let Some(os) = role
            .os
            .as_deref()
            .and_then(|n| crate::images::current(&app.config.os_images, n).ok())
        {
            vars = vars.with_os(&os);
        }
        Some(
            match crate::render::install_script(&app.config.kickstarts, &role.template, &vars) {
                Ok(s) => mask(&s, Some(&shown_token)),
                Err(e) => format!("(template fails: {e})"),
            },
        )
    });
    (boot_script, install_script)
}

/// What the machine's packets and reports said, as label and value rows.
fn fact_rows(v: &MachineView, record: Option<&Record>) -> Vec<(String, String)> {
    let mut facts = Vec::new();
    let f = &v.facts;
    for (k, val) in [
        ("firmware", &f.arch),
        ("vendor class", &f.vendor_class),
        ("UUID", &f.uuid),
        ("address", &f.ip),
    ] {
        if let Some(val) = val {
            facts.push((k.to_string(), val.clone()));
        }
    }
    // Every NIC the inventory lists, and the one it last netbooted from.
    let boot_nic = f.boot_nic.as_deref();
    for n in &v.nics {
        let mac = n.mac.to_string();
        let note = if boot_nic == Some(mac.as_str()) {
            " (netbooted from this NIC)"
        } else {
            ""
        };
        facts.push((format!("NIC {}", n.name), format!("{mac}{note}")));
    }
    if let (true, Some(b)) = (v.nics.is_empty(), boot_nic) {
        facts.push(("netbooted from".into(), b.to_string()));
    }
    if let Some(r) = record {
        facts.push(("first seen".into(), fmt_time(r.first_seen) + " UTC"));
        facts.push(("last seen".into(), fmt_time(r.last_seen) + " UTC"));
    }
    // One summary row per NIC (link, speed, boot, switch and port), then the raw facts.
    facts.extend(super::snippet::nic_rows(&f.hardware));
    for (k, val) in &f.hardware {
        facts.push((k.clone(), val.clone()));
    }
    facts
}

/// A ready-to-paste inventory entry for a machine that is not listed: its NICs and a disk
/// rule from the discovery facts (see `snippet`).
fn inventory_snippet(v: &MachineView, inv: &Inventory) -> String {
    let host = v
        .facts
        .hardware
        .get("hostname")
        .filter(|h| crate::values::valid_hostname(h))
        .cloned()
        .unwrap_or_else(|| format!("mac-{}", v.mac.hex()));
    let role = inv
        .roles
        .keys()
        .next()
        .cloned()
        .unwrap_or_else(|| "ROLE".into());
    super::snippet::inventory_snippet(v.mac, &host, &role, &v.facts.hardware)
}

/// The last 500 events, oldest first, with the install token masked.
fn recent_events(app: &App, mac: MacAddr, token: Option<&str>) -> Vec<(String, String, String)> {
    let events = app.store.events(&mac);
    let skip = events.len().saturating_sub(500);
    events
        .into_iter()
        .skip(skip)
        .map(|e| (fmt_time(e.at), e.kind, mask(&e.message, token)))
        .collect()
}

#[derive(Template)]
#[template(path = "page/login.html")]
struct LoginPage {
    logged_in: bool,
    actions_available: bool,
    csrf: String,
    failed: bool,
}

pub(crate) async fn login_form(State(app): State<App>) -> Response {
    if app.admin_token.is_none() {
        return text(
            StatusCode::NOT_FOUND,
            "no admin_token_file is configured: there is nothing to log in to\n",
        );
    }
    render(LoginPage {
        logged_in: false,
        actions_available: true,
        csrf: String::new(),
        failed: false,
    })
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    token: String,
}

pub(crate) async fn login(
    State(app): State<App>,
    tls: Option<axum::Extension<super::listen::OverTls>>,
    Form(f): Form<LoginForm>,
) -> Response {
    let Some(want) = &app.admin_token else {
        return text(StatusCode::NOT_FOUND, "no admin token is configured\n");
    };
    if !state::constant_time_eq(f.token.trim().as_bytes(), want.as_bytes()) {
        tracing::warn!("page login refused: wrong admin token");
        let mut r = render(LoginPage {
            logged_in: false,
            actions_available: true,
            csrf: String::new(),
            failed: true,
        });
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        return r;
    }
    let (id, _) = app.sessions.create();
    // Over TLS the browser must never send the session back in clear text.
    let secure = if tls.is_some() { "; Secure" } else { "" };
    (
        [(
            header::SET_COOKIE,
            format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age=43200{secure}"),
        )],
        Redirect::to("/"),
    )
        .into_response()
}

#[derive(Deserialize)]
pub(crate) struct CsrfForm {
    csrf: String,
}

fn check_csrf(app: &App, headers: &HeaderMap, form: &CsrfForm) -> Result<(), Reject> {
    match login_state(app, headers) {
        Some(c) if state::constant_time_eq(c.as_bytes(), form.csrf.as_bytes()) => Ok(()),
        Some(_) => Err(Reject(
            StatusCode::FORBIDDEN,
            "stale or forged form (CSRF check failed)\n".into(),
        )),
        None => Err(Reject(StatusCode::UNAUTHORIZED, "log in first\n".into())),
    }
}

pub(crate) async fn logout(
    State(app): State<App>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Err(r) = check_csrf(&app, &headers, &f) {
        return r.into_response();
    }
    app.sessions.remove(&headers);
    (
        [(
            header::SET_COOKIE,
            format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
        )],
        Redirect::to("/"),
    )
        .into_response()
}

pub(crate) async fn action(
    State(app): State<App>,
    Path((mac, action)): Path<(String, String)>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Err(r) = check_csrf(&app, &headers, &f) {
        return r.into_response();
    }
    let Ok(mac) = mac.parse::<MacAddr>() else {
        return text(StatusCode::BAD_REQUEST, "not a MAC address\n");
    };
    let mac = app.inventory.get().id(mac);
    if let Some(a) = action.strip_prefix("power-") {
        let Ok(a) = a.parse::<crate::power::Action>() else {
            return text(
                StatusCode::NOT_FOUND,
                "power actions are power-status, power-on, power-off, power-cycle and power-pxe\n",
            );
        };
        // A BMC's failure is an event on the machine's page; only a refusal is an answer.
        return match super::api::power(&app, mac, a, "an admin on the page").await {
            Err(r) if r.0 == StatusCode::CONFLICT => r.into_response(),
            _ => Redirect::to(&format!("/machines/{mac}")).into_response(),
        };
    }
    let result = match action.as_str() {
        "reinstall" => reinstall(&app, mac).await,
        "cancel" => cancel(&app, mac).await,
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                "actions are reinstall, cancel and power-…\n",
            )
        }
    };
    match result {
        Ok(()) => Redirect::to(&format!("/machines/{mac}")).into_response(),
        Err(r) => r.into_response(),
    }
}

/// Server-sent events: one `machine` event per change, with the machine's new summary.
pub(crate) async fn events(
    State(app): State<App>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = app.store.subscribe();
    let stream = futures_util::stream::unfold((rx, app), |(mut rx, app)| async move {
        match rx.recv().await {
            Ok(change) => {
                let inv = app.inventory.get();
                let record = app.store.record(&change.mac);
                let v = view(
                    &app,
                    &inv,
                    change.mac,
                    record.as_ref(),
                    &mut Current::default(),
                );
                let data = serde_json::to_string(&v).unwrap_or_default();
                let ev = SseEvent::default().event("machine").data(data);
                Some((Ok(ev), (rx, app)))
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                let ev = SseEvent::default().event("lagged").data(n.to_string());
                Some((Ok(ev), (rx, app)))
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeline_has_one_segment_per_phase_and_the_running_one_is_open() {
        let p = crate::state::Phases {
            netboot: Some(0),
            stemcell: Some(10_000),
            image: Some(12_000),
            installed: Some(52_000),
            booted: None,
            configured: None,
        };
        let t = timeline(&p, 60_000, Lifecycle::Installed);
        let got: Vec<(&str, f64, bool)> = t.iter().map(|s| (s.label, s.secs, s.open)).collect();
        assert_eq!(
            got,
            vec![
                ("stem cell boot", 10.0, false),
                ("partition", 2.0, false),
                ("image + setup", 40.0, false),
                ("first boot", 8.0, true),
            ]
        );
        assert!((t.iter().map(|s| s.pct).sum::<f64>() - 100.0).abs() < 1.0);
        // A failed install shows what it did, with nothing left running.
        assert_eq!(timeline(&p, 60_000, Lifecycle::Failed).len(), 3);
        assert!(timeline(&crate::state::Phases::default(), 1, Lifecycle::Pending).is_empty());
    }

    #[test]
    fn civil_time() {
        assert_eq!(fmt_time(1_000), "1970-01-01 00:00:01");
        assert_eq!(fmt_time(1_795_766_400_000), "2026-11-27 08:00:00");
        assert_eq!(fmt_time(951_782_400_000), "2000-02-29 00:00:00");
    }

    #[test]
    fn cookies() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=1; stemcell_session=abc; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&h, COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "zzz"), None);
    }
}
