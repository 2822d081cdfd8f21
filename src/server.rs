//! The composition root. `prepare` loads and validates everything, opens the stores and
//! binds every socket, in that order, so nothing is bound for a config that cannot run;
//! `run` takes what `prepare` returned and a cancellation token and runs every service
//! until the token is cancelled or one of them stops. The binary owns the signals.
//!
//! A service that ends before shutdown, with an error or without one, stops the whole
//! server: a half-running netboot server (DHCP answering, HTTP gone) strands machines
//! mid-boot, which is worse than a clean exit a supervisor restarts. Journals are flushed
//! before `run` returns, whichever way it ends.
//!
//! Also the `check` and `render` subcommands, which share the loading path but bind
//! nothing and change no state.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::adapters::{InventoryDirectory, Recorder, TftpRecorder};
use crate::boot;
use crate::config::Config;
use crate::dhcp;
use crate::dhcp6;
use crate::http::{self, App};
use crate::inventory::{self, Inventory};
use crate::leases::{self, LeaseStore};
use crate::mac::MacAddr;
use crate::render;
use crate::state::{self, Store};
use crate::tftp;

/// Exit code: the config or inventory cannot be used (as linkerd2-proxy uses 64).
pub(crate) const EXIT_CONFIG: u8 = 64;
/// Exit code: a socket could not be bound or a store could not be opened (EX_UNAVAILABLE).
pub(crate) const EXIT_BIND: u8 = 69;
/// Exit code: a service failed or stopped while the server was running (EX_SOFTWARE).
pub(crate) const EXIT_RUNTIME: u8 = 70;

/// A failure that ends the process, and the exit code its class maps to.
#[derive(Debug)]
pub(crate) struct Fatal {
    pub(crate) code: u8,
    pub(crate) error: anyhow::Error,
}

impl Fatal {
    fn config(e: impl Into<anyhow::Error>) -> Fatal {
        Fatal {
            code: EXIT_CONFIG,
            error: e.into(),
        }
    }

    fn bind(e: impl Into<anyhow::Error>) -> Fatal {
        Fatal {
            code: EXIT_BIND,
            error: e.into(),
        }
    }

    fn runtime(e: impl Into<anyhow::Error>) -> Fatal {
        Fatal {
            code: EXIT_RUNTIME,
            error: e.into(),
        }
    }
}

fn inventory_context(config: &Config) -> inventory::Context {
    inventory::Context {
        kickstarts: config.kickstarts.clone(),
        os_specs: config.os_specs.clone(),
        subnets: config.dhcp.subnets.clone(),
    }
}

/// Load config and inventory, or say exactly what is wrong.
fn load(config_path: &Path) -> Result<(Config, Inventory), Fatal> {
    let config = Config::load(config_path).map_err(Fatal::config)?;
    let inv =
        Inventory::load(&config.inventory, &inventory_context(&config)).map_err(Fatal::config)?;
    let missing = missing_files(&config, &inv);
    if !missing.is_empty() {
        return Err(Fatal::config(anyhow::anyhow!(missing.join("\n"))));
    }
    Ok((config, inv))
}

/// Files the config and inventory name that are not there: the TFTP root and the boot
/// files in it (through the same jail TFTP uses, so a symlink out counts as missing), UEFI
/// HTTP boot's loader in the `loaders` folder (when DHCP hands out boot files), and the
/// roles' kernels and initrds in the assets folder. Each says where it was named.
fn missing_files(config: &Config, inv: &Inventory) -> Vec<String> {
    let mut out = Vec::new();
    let cfg = config.file.display();
    let b = &config.dhcp.boot_files;
    if config.dhcp.mode != crate::dhcp::Mode::Off {
        let dir = &config.loaders;
        let found = match dir.canonicalize() {
            Ok(root) => crate::jail::resolve(&root, &b.uefi_http).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = found {
            out.push(format!(
                "{cfg}: dhcp.boot_files.uefi_http: {} cannot be served over HTTP from loaders {}: {e}",
                b.uefi_http,
                dir.display()
            ));
        }
    }
    if let Some(t) = &config.tftp {
        match t.root.canonicalize() {
            Err(e) => out.push(format!(
                "{cfg}: tftp.root {} cannot be served: {e}",
                t.root.display()
            )),
            Ok(root) => {
                let files = [
                    ("bios", Some(&b.bios)),
                    ("uefi_x64", Some(&b.uefi_x64)),
                    ("uefi_ia32", b.uefi_ia32.as_ref()),
                    ("arm64", b.arm64.as_ref()),
                ];
                for (key, file) in files {
                    let Some(file) = file else { continue };
                    if let Err(e) = crate::jail::resolve(&root, file) {
                        out.push(format!(
                            "{cfg}: dhcp.boot_files.{key}: {file} cannot be served from {}: {e}",
                            root.display()
                        ));
                    }
                }
            }
        }
    }
    // GRUB's chain, when some machine's loader is grub: over TFTP, from Debian's packages.
    if inv.uses_grub() {
        if config.tftp.is_none() {
            out.push(format!(
                "{}: the loader grub (defaults.loader or a role's loader) needs TFTP: GRUB's network image fetches everything over TFTP; enable the tftp section in {cfg}",
                inv.file.display()
            ));
        }
        for g in &config.grub {
            // Debian's arm64 files are only there on hosts that serve arm64 machines: a
            // missing default is an error for x86-64 and where `grub:` names the file.
            if g.pos.is_none() && g.arch.arch != crate::dhcp::Arch::UefiX64 {
                for m in g.missing() {
                    tracing::warn!("{cfg}: {m}; arm64 machines whose loader is grub cannot boot");
                }
                continue;
            }
            let at = g.pos.map(|p| format!(":{p}")).unwrap_or_default();
            for m in g.missing() {
                out.push(format!("{cfg}{at}: {m}"));
            }
        }
    }
    // ARM64 machines (DHCP arch 11) get GRUB's chain whatever their loader (Debian has no
    // arm64 iPXE) unless dhcp.boot_files.arm64 names the site's own: its files, as above.
    if !inv.uses_grub() && config.tftp.is_some() && config.dhcp.boot_files.arm64.is_none() {
        for g in config
            .grub
            .iter()
            .filter(|g| g.arch.arch == crate::dhcp::Arch::UefiArm64)
        {
            for m in g.missing() {
                match g.pos {
                    Some(p) => out.push(format!("{cfg}:{p}: {m}")),
                    // Most sites have no arm64 machines: said, not warned (an arm64
                    // machine that asks finds its TFTP refusal in its events).
                    None => tracing::info!(
                        "{cfg}: {m}; arm64 machines (DHCP arch 11, GRUB by default) cannot boot"
                    ),
                }
            }
        }
    }
    // Every secret a role declares, for each of its machines: the host's file or the role's.
    for mac in &inv.order {
        let Some(m) = inv.machine(mac) else { continue };
        let Some(role) = inv.role_of(m) else { continue };
        for s in &role.secrets {
            if let Err(e) = crate::secrets::find(&config.secrets, &m.hostname, &role.name, &s.name)
            {
                out.push(format!(
                    "{}:{}: role {} ({} {}): {e} ({})",
                    inv.file.display(),
                    s.pos,
                    role.name,
                    m.hostname,
                    m.mac,
                    config.secrets.display()
                ));
            }
        }
    }
    for role in inv.roles.values() {
        for (key, value) in [("kernel", &role.kernel), ("initrd", &role.initrd)] {
            let Some(v) = value else { continue };
            if v.starts_with("http://") || v.starts_with("https://") {
                continue;
            }
            let found = config
                .assets
                .as_ref()
                .and_then(|a| http::files::jail(a, v))
                .is_some_and(|p| p.is_file());
            if !found {
                out.push(format!(
                    "{}: role {}: {key} {v} is not a file in the assets folder ({})",
                    inv.file.display(),
                    role.name,
                    config
                        .assets
                        .as_ref()
                        .map(|a| a.display().to_string())
                        .unwrap_or_else(|| "none is configured".into())
                ));
            }
        }
    }
    out
}

/// A token file (`admin_token_file`, `read_token_file`): read once, at least 16
/// characters.
fn read_token(file: Option<&Path>, key: &str) -> Result<Option<Arc<String>>, Fatal> {
    let Some(p) = file else {
        return Ok(None);
    };
    let t = std::fs::read_to_string(p)
        .with_context(|| format!("{}: cannot read {key}", p.display()))
        .map_err(Fatal::config)?;
    let t = t.trim().to_string();
    if t.len() < 16 {
        return Err(Fatal::config(anyhow::anyhow!(
            "{}: the {} must be at least 16 characters",
            p.display(),
            if key == "admin_token_file" {
                "admin token"
            } else {
                "read token"
            }
        )));
    }
    Ok(Some(Arc::new(t)))
}

/// Everything `run` needs: validated config, open stores, bound sockets.
pub(crate) struct Prepared {
    app: App,
    live: Arc<inventory::Live>,
    listener: tokio::net::TcpListener,
    tls: Option<(tokio::net::TcpListener, tokio_rustls::TlsAcceptor)>,
    tftp: Option<(tokio::net::UdpSocket, tftp::TftpConfig)>,
    dhcp: Option<(Arc<dhcp::DhcpServer>, dhcp::Sockets)>,
    /// `dhcp.ipv6`: the DHCPv6 server and its socket, and TFTP's socket on the IPv6 address.
    dhcp6: Option<(Arc<dhcp6::Dhcp6Server>, tokio::net::UdpSocket)>,
    tftp6: Option<tokio::net::UdpSocket>,
}

/// Raise the open-file soft limit to the hard limit: every HTTP connection, TFTP transfer
/// and journal is a descriptor, and the usual soft limit of 1,024 is what a few hundred
/// booting machines plus a slow client reach first.
fn raise_open_files() {
    match rlimit::Resource::NOFILE.get() {
        Ok((soft, hard)) if soft < hard => match rlimit::Resource::NOFILE.set(hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "open-file limit raised"),
            Err(e) => tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit"),
        },
        Ok((soft, _)) => tracing::info!(limit = soft, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
}

/// Load and validate, bind every socket, drop root (with `user:`), open the stores. Call
/// inside a tokio runtime.
///
/// Sockets come before the stores so that, when started as root with `user:`, the switch
/// happens between them: privileged ports and devices are bound as root, and the journals
/// are opened by the account that owns them (crate::privilege says why).
pub(crate) async fn prepare(config_path: &Path) -> Result<Prepared, Fatal> {
    let (config, inv) = load(config_path)?;
    let run_as = crate::privilege::resolve(&config).map_err(Fatal::config)?;
    raise_open_files();
    let server_ip = config.resolve_server_ip().map_err(Fatal::config)?;
    let admin_token = read_token(config.admin_token_file.as_deref(), "admin_token_file")?;
    let read_token = read_token(config.read_token_file.as_deref(), "read_token_file")?;
    if let (Some(a), Some(r)) = (&admin_token, &read_token) {
        if a == r {
            return Err(Fatal::config(anyhow::anyhow!(
                "read_token_file holds the admin token: the read token must be another secret"
            )));
        }
    }
    // The TLS key is read now, before root is dropped: it may be root's alone.
    let tls_acceptor = match &config.http.tls {
        Some(t) => Some(http::tls::acceptor(&config, t).map_err(Fatal::config)?),
        None => None,
    };
    // Settings are validated before anything is opened or bound.
    let dhcp_settings = (config.dhcp.mode != dhcp::Mode::Off)
        .then(|| config.dhcp_settings(server_ip, ""))
        .transpose()
        .map_err(Fatal::config)?;
    let dhcp6_settings = config
        .dhcp6_settings(config.http.listen.port())
        .map_err(Fatal::config)?;

    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", config.http.listen))
        .map_err(Fatal::bind)?;
    let tls = match (&config.http.tls, tls_acceptor) {
        (Some(t), Some(acceptor)) => {
            let l = tokio::net::TcpListener::bind(t.listen)
                .await
                .with_context(|| {
                    format!("cannot listen for HTTPS (http.tls.listen) on {}", t.listen)
                })
                .map_err(Fatal::bind)?;
            Some((l, acceptor))
        }
        _ => None,
    };
    let addr = listener.local_addr().map_err(Fatal::bind)?;
    // With `listen: …:0` (tests) machines must be told the port actually bound.
    let mut server_url = config.server_url(server_ip);
    if config.http.url.is_none() && config.http.listen.port() == 0 {
        server_url = format!("http://{}:{}", server_ip, addr.port());
    }
    // TFTP: on the server's address, on the configured interface only.
    let tftp = match &config.tftp {
        Some(t) => Some((
            bind_tftp(config.interface.as_deref(), server_ip.into()).map_err(Fatal::bind)?,
            t.clone(),
        )),
        None => None,
    };
    // DHCP: only on the one configured interface, bound before anything is announced.
    let dhcp_sockets = match &dhcp_settings {
        Some(settings) => Some(dhcp::Sockets::bind(settings).map_err(Fatal::bind)?),
        None => None,
    };

    // DHCPv6 and TFTP over IPv6 (`dhcp.ipv6`): on the same interface only.
    let dhcp6_socket = match &dhcp6_settings {
        Some(s) => Some(dhcp6::bind(&s.interface).map_err(Fatal::bind)?),
        None => None,
    };
    let tftp6 = match (&dhcp6_settings, &config.tftp) {
        (Some(s), Some(_)) => {
            Some(bind_tftp(config.interface.as_deref(), s.server_ip.into()).map_err(Fatal::bind)?)
        }
        _ => None,
    };

    let state_dir_error = |e: std::io::Error| {
        Fatal::bind(anyhow::anyhow!(
            "{}: cannot open the state directory: {e}",
            config.state_dir.display()
        ))
    };
    crate::privilege::prepare_state_dir(&config.state_dir, run_as.as_ref())
        .map_err(state_dir_error)?;
    if let Some(target) = &run_as {
        crate::privilege::switch(target).map_err(Fatal::bind)?;
        crate::privilege::check_readable(&config, target).map_err(Fatal::bind)?;
    }

    let store = Arc::new(match &config.postgres {
        Some(pg) => Store::open_pg(pg)
            .await
            .map_err(|e| Fatal::bind(anyhow::anyhow!("machine store (store.postgres): {e}")))?,
        None => Store::open(&config.state_dir).map_err(state_dir_error)?,
    });
    let leases: Option<Arc<dyn LeaseStore>> = match &dhcp_settings {
        Some(s) if s.mode == dhcp::Mode::Authoritative && config.postgres.is_some() => {
            let pg = config.postgres.as_ref().expect("checked");
            let store = leases::PgLeaseStore::open(pg, leases::Allocator::new(s.pools()))
                .await
                .map_err(|e| Fatal::bind(anyhow::anyhow!("lease store (store.postgres): {e}")))?;
            Some(Arc::new(store))
        }
        Some(s) if s.mode == dhcp::Mode::Authoritative => {
            let path = config.state_dir.join("leases.journal");
            let store = leases::JournalStore::open(&path, s.pools()).map_err(|e| {
                Fatal::bind(anyhow::anyhow!(
                    "{}: cannot open the lease journal: {e}",
                    path.display()
                ))
            })?;
            Some(Arc::new(store))
        }
        _ => None,
    };

    tracing::info!(
        file = %inv.file.display(),
        machines = inv.machines.len(),
        roles = inv.roles.len(),
        "inventory loaded"
    );
    let live = Arc::new(inventory::Live::new(inv, inventory_context(&config)));
    let config = Arc::new(config);
    let app = App {
        config: config.clone(),
        server_url: server_url.clone(),
        inventory: live.clone(),
        store: store.clone(),
        admin_token,
        read_token,
        sessions: Default::default(),
        metrics: Default::default(),
        leases,
        stemcell_files: Arc::new([
            http::files::Cached::new(config.stemcell.kernel.clone()),
            http::files::Cached::new(config.stemcell.initrd.clone()),
        ]),
        bundles: Arc::new(crate::puppet::Bundles::new(config.puppet.clone())),
        dhcp_counters: None,
        power: crate::power::Controller::new(config.power.max_calls, config.power.timeout),
        power_states: Default::default(),
    };
    let mut app = app;

    let dhcp = match (dhcp_settings, dhcp_sockets) {
        (Some(mut settings), Some(sockets)) => {
            settings.http_url = server_url.clone();
            let leases = app
                .leases
                .clone()
                .unwrap_or_else(|| Arc::new(leases::JournalStore::in_memory(vec![])));
            let directory = Arc::new(InventoryDirectory(live.clone()));
            let observer = Arc::new(Recorder {
                store: store.clone(),
                metrics: app.metrics.clone(),
                inventory: app.inventory.clone(),
            });
            let server = dhcp::DhcpServer::new(settings, directory, observer, leases)
                .map_err(Fatal::config)?;
            app.dhcp_counters = Some(server.shared_counters());
            Some((Arc::new(server), sockets))
        }
        _ => None,
    };
    let dhcp6 = match (dhcp6_settings, dhcp6_socket) {
        (Some(mut settings), Some((socket, duid))) => {
            settings.http_url = format!("http://[{}]:{}", settings.server_ip, addr.port());
            let directory = Arc::new(InventoryDirectory(live.clone()));
            let server =
                dhcp6::Dhcp6Server::new(settings, duid, directory).map_err(Fatal::config)?;
            Some((Arc::new(server), socket))
        }
        _ => None,
    };
    Ok(Prepared {
        app,
        live,
        listener,
        tls,
        tftp,
        dhcp,
        dhcp6,
        tftp6,
    })
}

/// A service's name and how it ended.
type ServiceEnd = (&'static str, anyhow::Result<()>);

/// Run every prepared service until `shutdown` is cancelled (then drain and return `Ok`) or
/// until one service stops on its own (then stop the others and return that failure).
/// Journals are flushed before returning either way.
pub(crate) async fn run(p: Prepared, shutdown: CancellationToken) -> Result<(), Fatal> {
    let Prepared {
        app,
        live,
        listener,
        tls,
        tftp,
        dhcp,
        dhcp6,
        tftp6,
    } = p;
    let store = app.store.clone();
    let leases = app.leases.clone();
    let mut tasks: JoinSet<ServiceEnd> = JoinSet::new();

    if let Some((socket, tcfg)) = tftp {
        let observer = Arc::new(TftpRecorder {
            store: store.clone(),
            metrics: app.metrics.clone(),
            leases: leases.clone(),
            inventory: app.inventory.clone(),
        });
        let files: Arc<dyn tftp::TftpFiles> = Arc::new(http::grub::GrubTftp { app: app.clone() });
        if let Some(socket6) = tftp6 {
            let (token, tcfg, observer) = (shutdown.clone(), tcfg.clone(), observer.clone());
            let files = files.clone();
            tasks.spawn(async move {
                let r = tftp::serve_with(socket6, tcfg, observer, Some(files), token).await;
                ("TFTP over IPv6", r.map_err(anyhow::Error::from))
            });
        }
        let token = shutdown.clone();
        tasks.spawn(async move {
            let r = tftp::serve_with(socket, tcfg, observer, Some(files), token).await;
            ("TFTP", r.map_err(anyhow::Error::from))
        });
    }
    if let Some((server, socket)) = dhcp6 {
        let observer = Arc::new(Recorder {
            store: store.clone(),
            metrics: app.metrics.clone(),
            inventory: app.inventory.clone(),
        });
        let token = shutdown.clone();
        tasks.spawn(async move {
            let r = dhcp6::serve(server, socket, observer, Default::default(), token).await;
            ("DHCPv6", r.map_err(anyhow::Error::from))
        });
    }
    if let Some((server, sockets)) = dhcp {
        let token = shutdown.clone();
        tasks.spawn(async move {
            let r = dhcp::serve(server, sockets, token).await;
            ("DHCP", r.map_err(anyhow::Error::from))
        });
    }
    {
        let token = shutdown.clone();
        tasks.spawn(async move {
            live.watch(Duration::from_millis(200), token).await;
            ("inventory watcher", Ok(()))
        });
    }
    {
        let (token, app) = (shutdown.clone(), app.clone());
        tasks.spawn(async move {
            poll_power(app, token).await;
            ("power poll", Ok(()))
        });
    }
    let addr = listener.local_addr().map_err(Fatal::runtime)?;
    let url = app.server_url.clone();
    if let Some((l, _)) = &tls {
        let tls_addr = l.local_addr().map_err(Fatal::runtime)?;
        tracing::info!(%tls_addr, "TLS listener for the page, the API and /metrics");
    }
    {
        let token = shutdown.clone();
        tasks.spawn(async move {
            let r = http::serve(listener, app, tls, token).await;
            ("HTTP", r.map_err(anyhow::Error::from))
        });
    }
    // The one readiness line harnesses wait for: every socket is bound and served.
    tracing::info!(%addr, %url, "stemcell ready");

    let failure = tokio::select! {
        biased;
        () = shutdown.cancelled() => None,
        Some(ended) = tasks.join_next() => {
            // Services return when shutdown is cancelled; only an end before it is a failure.
            (!shutdown.is_cancelled()).then(|| service_failure(ended))
        }
    };
    match &failure {
        None => tracing::info!("shutting down"),
        Some(e) => {
            tracing::error!(error = %format!("{e:#}"), "a service stopped; shutting down the server")
        }
    }
    shutdown.cancel();
    let drain = async {
        while let Some(ended) = tasks.join_next().await {
            if let Ok((name, Err(e))) = ended {
                tracing::warn!(service = name, error = %format!("{e:#}"), "service failed while stopping");
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .is_err()
    {
        tracing::warn!("some services did not finish within 10 s; stopping anyway");
    }
    let flushed = flush_journals(&store, leases.as_deref()).await;
    match (failure, flushed) {
        (Some(e), _) => Err(Fatal::runtime(e)),
        (None, Err(e)) => Err(Fatal::runtime(e)),
        (None, Ok(())) => Ok(()),
    }
}

/// Why the first service to end before shutdown ended.
fn service_failure(ended: Result<ServiceEnd, tokio::task::JoinError>) -> anyhow::Error {
    match ended {
        Ok((name, Ok(()))) => anyhow::anyhow!("the {name} service stopped unexpectedly"),
        Ok((name, Err(e))) => e.context(format!("the {name} service failed")),
        Err(e) => anyhow::anyhow!("a service task panicked or was aborted: {e}"),
    }
}

/// Wait until every journal line written so far is on disk.
async fn flush_journals(store: &Store, leases: Option<&dyn LeaseStore>) -> anyhow::Result<()> {
    store
        .flush()
        .await
        .context("the machine state journal could not be flushed")?;
    if let Some(l) = leases {
        l.flush()
            .wait()
            .await
            .context("the lease journal could not be flushed")?;
    }
    tracing::info!("journals flushed");
    Ok(())
}

/// TFTP's listening socket: `server_ip:69` (IPv4, or `dhcp.ipv6.server_ip`), bound to the
/// interface so that nothing on another interface is ever answered, and so replies leave
/// from the address asked.
fn bind_tftp(
    interface: Option<&str>,
    server_ip: std::net::IpAddr,
) -> anyhow::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if server_ip.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if server_ip.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if let Some(i) = interface {
        s.bind_device(Some(i.as_bytes()))
            .with_context(|| format!("cannot bind TFTP to interface {i}"))?;
    }
    s.set_nonblocking(true)?;
    let addr = std::net::SocketAddr::from((server_ip, 69));
    s.bind(&addr.into())
        .with_context(|| format!("cannot listen for TFTP on {addr}"))?;
    Ok(tokio::net::UdpSocket::from_std(s.into())?)
}

/// Every `power.refresh`, ask each machine's BMC for its power state, for the page and the
/// API. At most half of `power.max_calls` are used for this, so operators' actions always
/// find a permit; a BMC that hangs holds one for at most `power.timeout`.
async fn poll_power(app: App, shutdown: CancellationToken) {
    let every = app.config.power.refresh;
    if every.is_zero() {
        shutdown.cancelled().await;
        return;
    }
    let share = Arc::new(tokio::sync::Semaphore::new(
        (app.config.power.max_calls / 2).max(1),
    ));
    loop {
        let mut polls = JoinSet::new();
        {
            let inv = app.inventory.get();
            for mac in &inv.order {
                let Some(p) = inv.machine(mac).and_then(|m| m.power.clone()) else {
                    continue;
                };
                let (app, share, mac) = (app.clone(), share.clone(), *mac);
                polls.spawn(async move {
                    let Ok(_permit) = share.acquire_owned().await else {
                        return;
                    };
                    let r = app.power.act(&p, crate::power::Action::Status).await;
                    if let Err(e) = &r {
                        tracing::debug!(mac = %mac, "power poll: {e}");
                    }
                    app.power_states.record(mac, &r, state::now_ms());
                });
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = async { while polls.join_next().await.is_some() {} } => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// `stemcell check`: validate config and inventory, and render every machine's templates.
/// Returns the number of machines checked.
pub(crate) fn check(config_path: &Path) -> Result<usize, Fatal> {
    let (config, inv) = load(config_path)?;
    let url = config.display_url();
    // Render on every core: a 100,000-machine inventory is checked in about a second.
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let chunk = inv.order.len().div_ceil(threads).max(1);
    let oses = role_images(&config, &inv, true);
    check_puppet(&config, &inv);
    let mut password_problems = power_password_problems(&inv);
    let problems: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = inv
            .order
            .chunks(chunk)
            .map(|macs| {
                let (config, inv, url, oses) = (&config, &inv, &url, &oses);
                scope.spawn(move || check_machines(config, inv, url, oses, macs))
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| {
                w.join()
                    .unwrap_or_else(|_| vec!["a check worker panicked".into()])
            })
            .collect()
    });
    let mut problems = problems;
    if let Some(t) = &config.http.tls {
        if let Err(e) = http::tls::acceptor(&config, t) {
            problems.push(e.to_string());
        }
    }
    if !config.stemcell.kernel.is_file() {
        tracing::warn!(path = %config.stemcell.kernel.display(), "the stem-cell kernel does not exist yet (build it with `stemcell image build`)");
    }
    password_problems.extend(problems);
    if !password_problems.is_empty() {
        return Err(Fatal::config(anyhow::anyhow!(password_problems.join("\n"))));
    }
    Ok(inv.machines.len())
}

/// BMC password files that cannot be read or are empty, once per file, at the place the
/// inventory names them. (Not a start-up error for `serve`: power calls say it too.)
fn power_password_problems(inv: &Inventory) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for mac in &inv.order {
        let Some(p) = inv.machine(mac).and_then(|m| m.power.as_ref()) else {
            continue;
        };
        if !seen.insert(p.password_file.clone()) {
            continue;
        }
        if let Err(e) = crate::power::read_password(&p.password_file) {
            out.push(format!(
                "{}:{}: power.password_file: {e}",
                inv.file.display(),
                p.password_file_pos
            ));
        }
    }
    out
}

/// The image each role's OS would install now, by OS name. An OS that is not built yet is
/// a warning (it may be built after the inventory is written) and gets a placeholder, so
/// templates still render.
fn role_images(
    config: &Config,
    inv: &Inventory,
    warn: bool,
) -> std::collections::BTreeMap<String, crate::images::BuiltOs> {
    let mut out = std::collections::BTreeMap::new();
    for role in inv.roles.values() {
        let Some(name) = &role.os else { continue };
        if out.contains_key(name) {
            continue;
        }
        let os = crate::images::current(&config.os_images, name).unwrap_or_else(|e| {
            if warn {
                tracing::warn!(role = %role.name, "{e}");
            }
            crate::images::BuiltOs {
                name: name.clone(),
                sha256: "0".repeat(64),
                size: 0,
                file: "NOT-BUILT.tar.zst".into(),
            }
        });
        out.insert(name.clone(), os);
    }
    out
}

/// Warn about roles that install an OS but have no Puppet manifest to apply.
fn check_puppet(config: &Config, inv: &Inventory) {
    let applying: Vec<&str> = inv
        .roles
        .values()
        .filter(|r| r.os.is_some() && r.puppet_server.is_none())
        .map(|r| r.name.as_str())
        .collect();
    if applying.is_empty() {
        return;
    }
    match crate::puppet::Bundles::new(config.puppet.clone()).current() {
        Ok(b) => {
            for role in applying {
                if !b.roles.iter().any(|r| r == role) {
                    tracing::warn!(
                        role,
                        "role {role} installs an OS but {} has no manifests/{role}.pp for Puppet to apply",
                        config.puppet.display()
                    );
                }
            }
        }
        Err(e) => tracing::warn!("the Puppet bundle cannot be built: {e}"),
    }
}

/// Render every template of `macs`; the problems, in inventory order.
fn check_machines(
    config: &Config,
    inv: &Inventory,
    url: &str,
    oses: &std::collections::BTreeMap<String, crate::images::BuiltOs>,
    macs: &[MacAddr],
) -> Vec<String> {
    let mut problems = Vec::new();
    let batch = render::Batch::new(&config.kickstarts);
    for mac in macs {
        let Some(m) = inv.machine(mac) else { continue };
        let Some(role) = inv.role_of(m) else { continue };
        let mut vars = render::InstallVars::new(inv, m, url, "0123456789abcdef0123456789abcdef")
            .with_machine_key("fedcba9876543210fedcba9876543210");
        if let Some(os) = role.os.as_ref().and_then(|n| oses.get(n)) {
            vars = vars.with_os(os);
        }
        if let Err(e) = batch.install_script(&role.template, &vars) {
            problems.push(format!(
                "{}:{}: machine {} ({}): {e}",
                inv.file.display(),
                m.line,
                m.mac,
                m.hostname
            ));
        }
        if let Some(c) = &role.cmdline {
            if let Err(e) = render::cmdline(c, &vars) {
                problems.push(format!(
                    "{}:{}: machine {}: role {} cmdline: {e}",
                    inv.file.display(),
                    m.line,
                    m.mac,
                    role.name
                ));
            }
        }
    }
    problems
}

/// `stemcell render`: what `mac` would be served now, without changing anything.
pub(crate) fn render_machine(config_path: &Path, mac: MacAddr) -> Result<String, Fatal> {
    let (config, inv) = load(config_path)?;
    let url = config.display_url();
    let record = state::read_records(&config.state_dir)
        .map_err(Fatal::config)?
        .remove(&mac);
    let choice = boot::choice_for(&inv, mac, record.as_ref());
    let token = record
        .as_ref()
        .and_then(|r| r.token.clone())
        .unwrap_or_else(|| "TOKEN-ISSUED-AT-BOOT".to_string());
    let mut out = format!("# boot script ({choice:?}) for {mac}\n");
    if config.postgres.is_some() {
        // `render` reads the state directory's journal only (no database connection).
        out.push_str(
            "# machine state lives in store.postgres: this shows the machine without it\n",
        );
    }
    out.push_str(
        &boot::boot_script_text(&config, &url, &inv, mac, &choice, Some(&token))
            .map_err(Fatal::config)?,
    );
    if let Some(m) = inv.machine(&mac) {
        if let Some(role) = inv.role_of(m) {
            let mut vars = render::InstallVars::new(&inv, m, &url, &token).with_machine_key(
                record
                    .as_ref()
                    .and_then(|r| r.machine_key.as_deref())
                    .unwrap_or("MACHINE-KEY-ISSUED-AT-BOOT"),
            );
            if let Some(os) = role
                .os
                .as_ref()
                .and_then(|n| role_images(&config, &inv, false).remove(n))
            {
                vars = vars.with_os(&os);
            }
            out.push_str(&format!(
                "\n# install script (template {})\n",
                role.template
            ));
            out.push_str(
                &render::install_script(&config.kickstarts, &role.template, &vars)
                    .map_err(Fatal::config)?,
            );
        }
    }
    Ok(out)
}
