//! The HTTP half of booting, and the API.
//!
//! Owns the axum router: per-MAC iPXE boot scripts (`/boot/{mac}.ipxe`), the stem cell's
//! kernel and initrd and the assets folder (`files`), install scripts
//! (`/install/{mac}?token=…`) and their callbacks (`log`, `done`, `failed`), and the JSON
//! API under `/api/v1`. It decides nothing about lifecycles itself: `crate::boot` picks the
//! script and `state::Store` records what happened. Routes are split by who calls them:
//! `netboot` (firmware and iPXE), `install` (the stem cell), `api` (tools and metrics),
//! `page` (people). With `http.tls` the operators' routes are also served over TLS on a
//! second listener (`tls`), and the plain one keeps them for this host only.
//!
//! Every request from a machine is an event in that machine's history.

mod api;
mod fast;
pub(crate) mod files;
pub(crate) mod grub;
mod install;
mod installed;
pub(crate) mod listen;
mod netboot;
pub(crate) mod page;
mod snippet;
pub(crate) mod tls;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::inventory::{self};
use crate::mac::MacAddr;
use crate::state::Store;

/// Everything a request handler needs; cheap to clone.
#[derive(Clone)]
pub(crate) struct App {
    pub(crate) config: Arc<Config>,
    pub(crate) server_url: String,
    pub(crate) inventory: Arc<inventory::Live>,
    pub(crate) store: Arc<Store>,
    pub(crate) admin_token: Option<Arc<String>>,
    /// `read_token_file`: may read under `http.read_auth`, never act.
    pub(crate) read_token: Option<Arc<String>>,
    pub(crate) sessions: Arc<page::Sessions>,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// Authoritative mode's leases (for the API's `ip` and the lease gauges).
    pub(crate) leases: Option<Arc<dyn crate::leases::LeaseStore>>,
    /// The stem cell's kernel and initrd, kept in memory while unchanged on disk.
    pub(crate) stemcell_files: Arc<[files::Cached; 2]>,
    /// The site's Puppet code as a bundle.
    pub(crate) bundles: Arc<crate::puppet::Bundles>,
    /// The DHCP service's own counters (malformed packets, send and journal errors…).
    pub(crate) dhcp_counters: Option<Arc<crate::dhcp::Counters>>,
    /// Calls to BMCs, bounded in number and time.
    pub(crate) power: crate::power::Controller,
    /// Each machine's last known power state.
    pub(crate) power_states: Arc<crate::power::PowerStates>,
}

/// What machines call: boot scripts and files, the install path, the installed system's
/// reports. Plain HTTP only (firmware and iPXE cannot check a certificate).
fn machine_routes() -> Router<App> {
    Router::new()
        .route("/boot/{file}", get(netboot::boot_script))
        .route("/stemcell/{file}", get(netboot::stemcell_file))
        .route("/assets/{*path}", get(netboot::asset))
        .route("/tftp/{*path}", get(netboot::tftp_over_http))
        .route("/install/{mac}", get(install::install_script))
        .route("/nocloud/{mac}/{token}/{file}", get(install::nocloud))
        // Bodies are bounded per route: a log batch, a hardware report, a Puppet report.
        .route(
            "/install/{mac}/{action}",
            post(install::install_callback)
                .get(install::converge_script)
                .layer(DefaultBodyLimit::max(1 << 20)),
        )
        .route(
            "/discover/{mac}",
            post(install::discover).layer(DefaultBodyLimit::max(64 << 10)),
        )
        .route("/secret/{mac}/{name}", get(install::secret))
        .route("/os/{name}/{file}", get(installed::os_image))
        .route("/puppet/bundle.tar.gz", get(installed::puppet_bundle))
        .route(
            "/report/{mac}/{what}",
            post(installed::report).layer(DefaultBodyLimit::max(256 << 10)),
        )
}

/// What people and their tools call: the API, the page and the metrics. The reading
/// routes go through `read_guard` (`http.read_auth`); actions check the admin token or
/// the page session themselves; the login form and the OpenAPI document are open.
fn operator_routes(app: &App) -> Router<App> {
    let read = Router::new()
        .route("/api/v1/machines", get(api::api_machines))
        .route("/api/v1/machines/{mac}", get(api::api_machine))
        .route("/api/v1/status", get(api::api_status))
        .route("/api/v1/events", get(page::events))
        .route("/", get(page::index))
        .route("/machines/{mac}", get(page::machine))
        .route("/metrics", get(api::metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            read_guard,
        ));
    Router::new()
        .route("/api/v1/machines/{mac}/reinstall", post(api::api_reinstall))
        .route("/api/v1/machines/{mac}/cancel", post(api::api_cancel))
        .route(
            "/api/v1/machines/{mac}/power",
            post(api::api_power).layer(DefaultBodyLimit::max(4 << 10)),
        )
        .route("/machines/{mac}/{action}", post(page::action))
        .route("/login", get(page::login_form).post(page::login))
        .route("/logout", post(page::logout))
        .route("/api/v1/openapi.json", get(api::openapi))
        .merge(read)
}

/// Whether `headers` may read under `http.read_auth`: `Authorization: Bearer` with the
/// admin or the read token, or a live page session.
fn may_read(app: &App, headers: &axum::http::HeaderMap) -> bool {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let matches = |t: &Option<Arc<String>>| match (t, bearer) {
        (Some(want), Some(got)) => crate::state::constant_time_eq(got.as_bytes(), want.as_bytes()),
        _ => false,
    };
    matches(&app.admin_token) || matches(&app.read_token) || page::logged_in(app, headers)
}

/// `http.read_auth`: the page sends a browser to the login form, the API and metrics
/// answer 401.
async fn read_guard(
    State(app): State<App>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if app.config.http.read_auth.is_none() || may_read(&app, req.headers()) {
        return next.run(req).await;
    }
    let path = req.uri().path();
    if path == "/" || path.starts_with("/machines/") {
        return (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, "/login")],
            "log in to see the machines\n",
        )
            .into_response();
    }
    (
        StatusCode::UNAUTHORIZED,
        [
            (header::WWW_AUTHENTICATE, "Bearer realm=\"stemcell\""),
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
        ],
        "reading needs Authorization: Bearer with the admin or the read token (http.read_auth)\n",
    )
        .into_response()
}

fn finish(router: Router<App>, app: App) -> Router {
    router
        .route("/healthz", get(|| async { "ok\n" }))
        // Everything else (forms, API actions) carries little or nothing.
        .layer(DefaultBodyLimit::max(16 << 10))
        .layer(axum::middleware::from_fn_with_state(
            app.metrics.clone(),
            count_requests,
        ))
        .with_state(app)
}

/// The plain listener: everything. With `http.tls`, the operator routes answer only
/// requests from this host (the CLI); everyone else is sent to the TLS listener.
pub(crate) fn router(app: App) -> Router {
    let operator = if app.config.http.tls.is_some() {
        operator_routes(&app).route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            local_only,
        ))
    } else {
        operator_routes(&app)
    };
    finish(machine_routes().merge(operator), app)
}

/// The TLS listener: the API, the page and the metrics, nothing machines call.
pub(crate) fn tls_router(app: App) -> Router {
    let url = app.server_url.clone();
    finish(
        operator_routes(&app).fallback(move || async move {
            text(
                StatusCode::NOT_FOUND,
                format!("not here: the TLS port serves the page, the API and /metrics; what machines fetch is plain HTTP at {url}\n"),
            )
        }),
        app,
    )
}

/// With TLS on, the plain listener's operator routes are for this host only (a loopback
/// peer, or a peer that is the address it connected to): the admin token and sessions
/// must not cross the network in clear text.
async fn local_only(
    State(app): State<App>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let local = req
        .extensions()
        .get::<listen::LocalAddr>()
        .map(|l| l.0.ip());
    if peer.ip().to_canonical().is_loopback() || Some(peer.ip()) == local {
        return next.run(req).await;
    }
    let port = app
        .config
        .http
        .tls
        .as_ref()
        .map(|t| t.listen.port())
        .unwrap_or(443);
    text(
        StatusCode::FORBIDDEN,
        format!("the page, the API and /metrics are served over TLS on port {port} (https://); plain HTTP serves them only to this host\n"),
    )
}

/// Count every request by its route pattern (never the raw path: MACs would explode the
/// label set) and status.
async fn count_requests(
    State(metrics): State<Arc<crate::metrics::Metrics>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .cloned();
    let resp = next.run(req).await;
    metrics.inc(
        "stemcell_http_requests_total",
        &[
            ("route", route.as_ref().map_or("unmatched", |p| p.as_str())),
            ("status", resp.status().as_str()),
        ],
        1.0,
    );
    resp
}

/// Serve the routers on already-bound listeners (the plain one, and the TLS one with
/// `http.tls`) until `shutdown`.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    app: App,
    tls: Option<(tokio::net::TcpListener, tokio_rustls::TlsAcceptor)>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let gate = listen::Gate::new(app.config.http.limits);
    let Some((l, acceptor)) = tls else {
        return listen::serve(listener, router(app), gate, None, shutdown).await;
    };
    // Either listener ending ends the other, and then this (so the server stops: see
    // server::run); each drains its own connections.
    let both = shutdown.child_token();
    let plain = async {
        let r = listen::serve(
            listener,
            router(app.clone()),
            gate.clone(),
            None,
            both.clone(),
        )
        .await;
        both.cancel();
        r
    };
    let secure = async {
        let r = listen::serve(
            l,
            tls_router(app.clone()),
            gate.clone(),
            Some(acceptor),
            both.clone(),
        )
        .await;
        both.cancel();
        r
    };
    let (a, b) = tokio::join!(plain, secure);
    a.and(b)
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
pub(crate) struct Reject(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        text(self.0, self.1)
    }
}

/// A refused state change as an HTTP answer (journal failures are logged here).
pub(crate) fn state_reject(mac: MacAddr, e: crate::state::StateError) -> Reject {
    use crate::state::StateError;
    match e {
        StateError::BadToken => Reject(
            StatusCode::FORBIDDEN,
            "wrong or missing install token\n".into(),
        ),
        StateError::BadKey => Reject(
            StatusCode::FORBIDDEN,
            "wrong or missing machine key\n".into(),
        ),
        StateError::NotNow(why) => Reject(StatusCode::CONFLICT, format!("{why}\n")),
        StateError::Io(e) => {
            tracing::error!(mac = %mac, error = %e, "machine state write failed");
            Reject(
                StatusCode::SERVICE_UNAVAILABLE,
                "state could not be saved; try again\n".into(),
            )
        }
    }
}

/// The inventory and the record of a machine that is listed or was seen; 404 otherwise.
fn known(
    app: &App,
    mac: MacAddr,
) -> Result<
    (
        Arc<crate::inventory::Inventory>,
        Option<crate::state::Record>,
    ),
    Reject,
> {
    let inv = app.inventory.get();
    let record = app.store.record(&mac);
    if inv.machine(&mac).is_none() && record.is_none() {
        return Err(Reject(
            StatusCode::NOT_FOUND,
            format!("{mac} is neither in the inventory nor seen\n"),
        ));
    }
    Ok((inv, record))
}

fn parse_mac(s: &str) -> Result<MacAddr, Reject> {
    s.parse::<MacAddr>()
        .map_err(|e| Reject(StatusCode::BAD_REQUEST, format!("{e}\n")))
}

/// The machine a path names: any NIC of a listed machine is that machine, known by its
/// key MAC (its state, token and events live there); an unlisted MAC is its own.
fn machine_mac(app: &App, s: &str) -> Result<MacAddr, Reject> {
    Ok(app.inventory.get().id(parse_mac(s)?))
}
