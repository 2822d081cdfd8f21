//! The HTTP half of booting, and the API.
//!
//! Owns the axum router: per-MAC iPXE boot scripts (`/boot/{mac}.ipxe`), the stem cell's
//! kernel and initrd and the assets folder (`files`), install scripts
//! (`/install/{mac}?token=…`) and their callbacks (`log`, `done`, `failed`), and the JSON
//! API under `/api/v1`. It decides nothing about lifecycles itself: `render::choose` picks
//! the script and `state::Store` records what happened.
//!
//! Every request from a machine is an event in that machine's history.

pub mod files;
pub mod page;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use askama::Template;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::inventory::{self, Inventory, Machine};
use crate::mac::MacAddr;
use crate::render::{self, Choice, InstallVars};
use crate::state::{self, Lifecycle, Record, StateError, Store};

/// Everything a request handler needs; cheap to clone.
#[derive(Clone)]
pub struct App {
    pub config: Arc<Config>,
    pub server_url: String,
    pub inventory: Arc<inventory::Live>,
    pub store: Arc<Store>,
    pub admin_token: Option<Arc<String>>,
    pub sessions: Arc<page::Sessions>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Authoritative mode's leases (for the API's `ip` and the lease gauges).
    pub leases: Option<Arc<dyn crate::leases::LeaseStore>>,
    /// The stem cell's kernel and initrd, kept in memory while unchanged on disk.
    pub stemcell_files: Arc<[files::Cached; 2]>,
}

pub fn router(app: App) -> Router {
    Router::new()
        .route("/boot/{file}", get(boot_script))
        .route("/stemcell/{file}", get(stemcell_file))
        .route("/assets/{*path}", get(asset))
        .route("/tftp/{*path}", get(tftp_over_http))
        .route("/install/{mac}", get(install_script))
        .route("/install/{mac}/{action}", post(install_callback))
        .route("/discover/{mac}", post(discover))
        .route("/api/v1/machines", get(api_machines))
        .route("/api/v1/machines/{mac}", get(api_machine))
        .route("/api/v1/machines/{mac}/reinstall", post(api_reinstall))
        .route("/api/v1/machines/{mac}/cancel", post(api_cancel))
        .route("/api/v1/status", get(api_status))
        .route("/api/v1/events", get(page::events))
        .route("/", get(page::index))
        .route("/machines/{mac}", get(page::machine))
        .route("/machines/{mac}/{action}", post(page::action))
        .route("/login", get(page::login_form).post(page::login))
        .route("/logout", post(page::logout))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/api/v1/openapi.json", get(openapi))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            count_requests,
        ))
        .with_state(app)
}

/// Count every request by its route pattern (never the raw path: MACs would explode the
/// label set) and status.
async fn count_requests(
    State(app): State<App>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let resp = next.run(req).await;
    app.metrics.inc(
        "stemcell_http_requests_total",
        &[("route", &route), ("status", resp.status().as_str())],
        1.0,
    );
    resp
}

async fn metrics(State(app): State<App>) -> Response {
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
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
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

/// Serve `router` on an already-bound listener until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: App,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(app).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

/// A refused request: status and a one-line reason.
pub struct Reject(pub StatusCode, pub String);

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        text(self.0, self.1)
    }
}

fn parse_mac(s: &str) -> Result<MacAddr, Reject> {
    s.parse::<MacAddr>()
        .map_err(|e| Reject(StatusCode::BAD_REQUEST, format!("{e}\n")))
}

/// A short fingerprint of what a machine would be installed from (role, template text,
/// variables), to tell when an installed machine has drifted from its inventory entry.
pub fn install_fingerprint(config: &Config, inv: &Inventory, m: &Machine) -> String {
    fingerprint_with(config, inv, m, &mut TemplateCache::new())
}

/// Template texts read once per request when many machines are fingerprinted.
pub type TemplateCache = std::collections::HashMap<String, Vec<u8>>;

fn fingerprint_with(
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
    format!("{}:{h:016x}", m.role)
}

// ---------------------------------------------------------------------------------------
// Boot scripts

async fn boot_script(
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
            app.store
                .event(mac, "error", format!("boot script failed: {e}"));
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "boot script failed; see the server log\n",
            )
        }
    }
}

/// The boot script for `mac` now, recording that it was served (arming a pending
/// machine with a durable install token first).
pub async fn boot_script_for(app: &App, mac: MacAddr) -> anyhow::Result<(Choice, String)> {
    let inv = app.inventory.get();
    let machine = inv.machine(&mac);
    let record = app.store.record(&mac);
    let choice = choice_for(&inv, mac, record.as_ref());
    app.store
        .observe(mac, machine.is_some(), state::Facts::default());
    let token = match choice {
        Choice::Install => Some(app.store.arm(mac).await?),
        _ => None,
    };
    let message = match (&choice, machine) {
        (Choice::Install, Some(m)) => format!("boot script: install as role {}", m.role),
        (Choice::Local, _) => "boot script: installed, boot from local disk".into(),
        (Choice::Failed(_), _) => "boot script: last install failed, waiting to be re-armed".into(),
        (Choice::Discover, _) => "boot script: unknown machine, discovery boot".into(),
        _ => "boot script: not in the inventory, ignored".into(),
    };
    let script = boot_script_text(
        &app.config,
        &app.server_url,
        &inv,
        mac,
        &choice,
        token.as_deref(),
    )?;
    app.store.event(mac, "boot", message);
    Ok((choice, script))
}

/// Pure: what `mac` should do on its next boot.
pub fn choice_for(inv: &Inventory, mac: MacAddr, record: Option<&Record>) -> Choice {
    let machine = inv.machine(&mac);
    render::choose(
        machine,
        state::effective(record, machine.is_some()),
        record.and_then(|r| r.reason.as_deref()),
        inv.defaults.unknown,
    )
}

/// Pure: the text of the boot script for a choice (`token` is needed for `Install`).
pub fn boot_script_text(
    config: &Config,
    url: &str,
    inv: &Inventory,
    mac: MacAddr,
    choice: &Choice,
    token: Option<&str>,
) -> anyhow::Result<String> {
    let mac_s = mac.to_string();
    let machine = inv.machine(&mac);
    let script_url = format!("{url}/boot/{mac_s}.ipxe");
    Ok(match (choice, machine) {
        (Choice::Install, Some(m)) => {
            let token = token.ok_or_else(|| anyhow::anyhow!("no install token"))?;
            let (kernel, initrd, cmdline) = installer(config, url, inv, m, token)?;
            render::InstallScript {
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
        (Choice::Local, Some(m)) => render::LocalScript {
            mac: &mac_s,
            hostname: &m.hostname,
        }
        .render()?,
        (Choice::Failed(reason), Some(m)) => render::FailedScript {
            mac: &mac_s,
            hostname: &m.hostname,
            reason: &render::ipxe_text(reason),
        }
        .render()?,
        (Choice::Discover, _) => render::InstallScript {
            mac: &mac_s,
            hostname: "unknown",
            role: "discover",
            kernel_url: &format!("{url}/stemcell/vmlinuz?mac={mac_s}"),
            initrd_url: &format!("{url}/stemcell/initrd.img?mac={mac_s}"),
            cmdline: &render::stemcell_cmdline(&mac, url, None, &config.stemcell.cmdline),
            script_url: &script_url,
        }
        .render()?,
        _ => render::IgnoreScript { mac: &mac_s }.render()?,
    })
}

/// Kernel URL, initrd URL and command line for a machine's install boot.
fn installer(
    config: &Config,
    url: &str,
    inv: &Inventory,
    m: &Machine,
    token: &str,
) -> anyhow::Result<(String, String, String)> {
    let mac = m.mac;
    let role = inv
        .role_of(m)
        .ok_or_else(|| anyhow::anyhow!("role {:?} is not defined", m.role))?;
    let locate = |s: &str| -> String {
        if s.starts_with("http://") || s.starts_with("https://") {
            s.to_string()
        } else {
            format!("{url}/assets/{s}?mac={mac}")
        }
    };
    match &role.kernel {
        Some(k) => {
            let vars = InstallVars::new(inv, m, url, token);
            let cmdline = match &role.cmdline {
                Some(c) => render::cmdline(c, &vars)?,
                None => String::new(),
            };
            let initrd = role.initrd.as_deref().map(locate).unwrap_or_default();
            Ok((locate(k), initrd, cmdline))
        }
        None => Ok((
            format!("{url}/stemcell/vmlinuz?mac={mac}"),
            format!("{url}/stemcell/initrd.img?mac={mac}"),
            render::stemcell_cmdline(&mac, url, Some(token), &config.stemcell.cmdline),
        )),
    }
}

// ---------------------------------------------------------------------------------------
// Files

#[derive(Deserialize)]
struct MacQuery {
    mac: Option<String>,
}

fn file_event(app: &App, q: &MacQuery, headers: &HeaderMap, what: &str) {
    if let Some(mac) = q.mac.as_deref().and_then(|m| m.parse::<MacAddr>().ok()) {
        // Only whole-file fetches are boot steps; resumed ranges are not worth an event.
        if headers.get(header::RANGE).is_none() {
            app.store.event(mac, "file", format!("fetched {what}"));
        }
    }
}

async fn stemcell_file(
    State(app): State<App>,
    Path(file): Path<String>,
    Query(q): Query<MacQuery>,
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
    file_event(&app, &q, &headers, &format!("stem-cell {file}"));
    cached.serve(&headers).await
}

async fn asset(
    State(app): State<App>,
    Path(rel): Path<String>,
    Query(q): Query<MacQuery>,
    headers: HeaderMap,
) -> Response {
    let Some(root) = &app.config.assets else {
        return text(StatusCode::NOT_FOUND, "no assets folder is configured\n");
    };
    let Some(path) = files::jail(root, &rel) else {
        tracing::warn!(path = %rel, "asset request refused or not found");
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    file_event(&app, &q, &headers, &format!("asset {rel}"));
    files::serve(&path, &headers).await
}

/// The TFTP root over HTTP, for UEFI HTTP boot (its DHCP answer names
/// `{server_url}/tftp/ipxe.efi`); jailed like the assets.
async fn tftp_over_http(
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

// ---------------------------------------------------------------------------------------
// Install scripts and callbacks

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

async fn install_script(
    State(app): State<App>,
    Path(mac): Path<String>,
    Query(q): Query<TokenQuery>,
) -> Response {
    let mac = match parse_mac(&mac) {
        Ok(m) => m,
        Err(r) => return r.into_response(),
    };
    let inv = app.inventory.get();
    let Some(machine) = inv.machine(&mac).cloned() else {
        return text(
            StatusCode::NOT_FOUND,
            format!("{mac} is not in the inventory\n"),
        );
    };
    let Some(token) = q.token.filter(|t| app.store.check_token(&mac, t)) else {
        tracing::warn!(mac = %mac, "install script refused: wrong or missing token");
        app.store.event(
            mac,
            "error",
            "install script refused: wrong or missing token",
        );
        return text(StatusCode::FORBIDDEN, "wrong or missing install token\n");
    };
    let Some(role) = inv.role_of(&machine).cloned() else {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "role is not defined\n");
    };
    let vars = InstallVars::new(&inv, &machine, &app.server_url, &token);
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
            if let Err(e) = app.store.install_started(mac, &token).await {
                return state_error(mac, e);
            }
            app.store.event(
                mac,
                "install",
                format!(
                    "install script served ({} bytes, template {})",
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
        Err(e) => {
            tracing::warn!(mac = %mac, error = %e, "install template failed");
            app.store
                .event(mac, "error", format!("install template failed: {e}"));
            let _ = app
                .store
                .failed(mac, None, format!("install template failed: {e}"))
                .await;
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "install template failed to render; the cause is in the server log and the machine's events\n",
            )
        }
    }
}

fn state_error(mac: MacAddr, e: StateError) -> Response {
    match e {
        StateError::BadToken => text(StatusCode::FORBIDDEN, "wrong or missing install token\n"),
        StateError::Io(e) => {
            tracing::error!(mac = %mac, error = %e, "state journal write failed");
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "state could not be saved; try again\n",
            )
        }
    }
}

/// Longest log line kept, and most lines taken from one request.
const LOG_LINE_MAX: usize = 2000;
const LOG_LINES_MAX: usize = 5000;

async fn install_callback(
    State(app): State<App>,
    Path((mac, action)): Path<(String, String)>,
    Query(q): Query<TokenQuery>,
    body: String,
) -> Response {
    let mac = match parse_mac(&mac) {
        Ok(m) => m,
        Err(r) => return r.into_response(),
    };
    let Some(token) = q.token.filter(|t| app.store.check_token(&mac, t)) else {
        tracing::warn!(mac = %mac, action = %action, "install callback refused: wrong or missing token");
        return text(StatusCode::FORBIDDEN, "wrong or missing install token\n");
    };
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
        "done" => {
            let inv = app.inventory.get();
            let from = inv
                .machine(&mac)
                .map(|m| install_fingerprint(&app.config, &inv, m))
                .unwrap_or_default();
            match app.store.done(mac, &token, from).await {
                Ok(r) => {
                    record_install_outcome(&app, "done", &r);
                    app.store.event(
                        mac,
                        "done",
                        "install done; next boots are from the local disk",
                    );
                    tracing::info!(mac = %mac, "install done");
                    text(StatusCode::OK, "installed\n")
                }
                Err(e) => state_error(mac, e),
            }
        }
        "failed" => {
            let reason: String = body.trim().chars().take(LOG_LINE_MAX).collect();
            let reason = if reason.is_empty() {
                "no reason given".to_string()
            } else {
                reason
            };
            match app.store.failed(mac, Some(&token), reason.clone()).await {
                Ok(r) => {
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

/// Most facts taken from one discovery report, and their longest key and value.
const FACTS_MAX: usize = 128;
const FACT_KEY_MAX: usize = 64;
const FACT_VALUE_MAX: usize = 512;

/// Pure: `key=value` lines from a discovering stem cell, bounded and cleaned. Keys are
/// lower-case identifiers; lines that are not `key=value` are skipped.
pub fn parse_facts(body: &str) -> std::collections::BTreeMap<String, String> {
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
async fn discover(State(app): State<App>, Path(mac): Path<String>, body: String) -> Response {
    let mac = match parse_mac(&mac) {
        Ok(m) => m,
        Err(r) => return r.into_response(),
    };
    let listed = app.inventory.get().machine(&mac).is_some();
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

// ---------------------------------------------------------------------------------------
// API

#[derive(Serialize)]
pub struct MachineView {
    pub mac: MacAddr,
    pub hostname: Option<String>,
    pub role: Option<String>,
    pub state: Lifecycle,
    pub ip: Option<String>,
    pub listed: bool,
    pub reason: Option<String>,
    pub last_seen: Option<u64>,
    pub installed_at: Option<u64>,
    /// Installed, but its role, template or variables changed since (never acted on
    /// automatically).
    pub drifted: bool,
    pub facts: state::Facts,
    pub last_event: Option<state::Event>,
}

fn view(
    app: &App,
    inv: &Inventory,
    mac: MacAddr,
    record: Option<&Record>,
    cache: Option<&mut TemplateCache>,
) -> MachineView {
    let m = inv.machine(&mac);
    let state = state::effective(record, m.is_some());
    let drifted = match (m, record.and_then(|r| r.installed_from.as_deref())) {
        (Some(m), Some(from)) if state == Lifecycle::Installed => {
            let mut local = TemplateCache::new();
            from != fingerprint_with(&app.config, inv, m, cache.unwrap_or(&mut local))
        }
        _ => false,
    };
    MachineView {
        mac,
        hostname: m.map(|m| m.hostname.clone()),
        role: m.map(|m| m.role.clone()),
        state,
        drifted,
        ip: m
            .and_then(|m| m.ip.map(|i| i.to_string()))
            .or_else(|| {
                let now = state::now_ms() / 1000;
                let lease = app.leases.as_ref()?.lease_of(mac, now)?;
                (lease.state == crate::leases::LeaseState::Bound).then(|| lease.ip.to_string())
            })
            .or_else(|| record.and_then(|r| r.facts.ip.clone())),
        listed: m.is_some(),
        reason: record.and_then(|r| r.reason.clone()),
        last_seen: record.map(|r| r.last_seen).filter(|t| *t > 0),
        installed_at: record.and_then(|r| r.installed_at),
        facts: record.map(|r| r.facts.clone()).unwrap_or_default(),
        last_event: app.store.last_event(&mac),
    }
}

/// Every listed machine in file order, then every other machine that was seen.
pub fn machine_views(app: &App) -> Vec<MachineView> {
    let inv = app.inventory.get();
    let records: BTreeMap<MacAddr, Record> = app
        .store
        .records()
        .into_iter()
        .map(|r| (r.mac, r))
        .collect();
    let mut cache = TemplateCache::new();
    let mut out: Vec<MachineView> = inv
        .order
        .iter()
        .map(|mac| view(app, &inv, *mac, records.get(mac), Some(&mut cache)))
        .collect();
    for (mac, r) in &records {
        if inv.machine(mac).is_none() {
            out.push(view(app, &inv, *mac, Some(r), None));
        }
    }
    out
}

async fn api_machines(State(app): State<App>) -> Response {
    Json(machine_views(&app)).into_response()
}

async fn api_machine(State(app): State<App>, Path(mac): Path<String>) -> Response {
    let mac = match parse_mac(&mac) {
        Ok(m) => m,
        Err(r) => return r.into_response(),
    };
    let inv = app.inventory.get();
    let record = app.store.record(&mac);
    if inv.machine(&mac).is_none() && record.is_none() {
        return text(
            StatusCode::NOT_FOUND,
            format!("{mac} is neither in the inventory nor seen\n"),
        );
    }
    #[derive(Serialize)]
    struct Detail {
        #[serde(flatten)]
        machine: MachineView,
        events: Vec<state::Event>,
    }
    Json(Detail {
        machine: view(&app, &inv, mac, record.as_ref(), None),
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
pub async fn reinstall(app: &App, mac: MacAddr) -> Result<(), Reject> {
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
pub async fn cancel(app: &App, mac: MacAddr) -> Result<(), Reject> {
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

fn state_reject(mac: MacAddr, e: StateError) -> Reject {
    match e {
        StateError::BadToken => Reject(
            StatusCode::FORBIDDEN,
            "wrong or missing install token\n".into(),
        ),
        StateError::Io(e) => {
            tracing::error!(mac = %mac, error = %e, "state journal write failed");
            Reject(
                StatusCode::SERVICE_UNAVAILABLE,
                "state could not be saved; try again\n".into(),
            )
        }
    }
}

async fn api_action(app: App, mac: String, headers: HeaderMap, cancel_it: bool) -> Response {
    if let Err(r) = authorized(&app, &headers) {
        return r.into_response();
    }
    let mac = match parse_mac(&mac) {
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
            Json(view(&app, &inv, mac, app.store.record(&mac).as_ref(), None)).into_response()
        }
        Err(r) => r.into_response(),
    }
}

async fn api_reinstall(
    State(app): State<App>,
    Path(mac): Path<String>,
    headers: HeaderMap,
) -> Response {
    api_action(app, mac, headers, false).await
}

async fn api_cancel(
    State(app): State<App>,
    Path(mac): Path<String>,
    headers: HeaderMap,
) -> Response {
    api_action(app, mac, headers, true).await
}

async fn api_status(State(app): State<App>) -> Response {
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
        let many: String = (0..500)
            .map(|i| format!("k{i}={}\n", "v".repeat(2000)))
            .collect();
        let f = parse_facts(&many);
        assert_eq!(f.len(), FACTS_MAX);
        assert!(f.values().all(|v| v.len() == FACT_VALUE_MAX));
    }
}
