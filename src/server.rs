//! Start-up and shutdown: load and validate everything before binding anything, bind,
//! run every service until a signal, then drain.
//!
//! Also the `check` and `render` subcommands, which share the loading path but bind
//! nothing and change no state.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, DhcpMode};
use crate::dhcp;
use crate::http::{self, App};
use crate::inventory::{self, Inventory};
use crate::leases::{self, LeaseStore};
use crate::mac::MacAddr;
use crate::render;
use crate::state::{self, Store};

/// Exit code for unusable configuration (EX_CONFIG-like, as linkerd2-proxy uses 64).
pub const EXIT_CONFIG: i32 = 64;

/// A start-up failure and the exit code it maps to.
#[derive(Debug)]
pub struct Fatal {
    pub code: i32,
    pub error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Fatal {
    fn from(e: E) -> Self {
        Fatal {
            code: 1,
            error: e.into(),
        }
    }
}

fn config_error(e: impl Into<anyhow::Error>) -> Fatal {
    Fatal {
        code: EXIT_CONFIG,
        error: e.into(),
    }
}

pub fn inventory_context(config: &Config) -> inventory::Context {
    inventory::Context {
        kickstarts: config.kickstarts.clone(),
        subnets: config.dhcp.subnets.clone(),
    }
}

/// Load config and inventory, or say exactly what is wrong.
pub fn load(config_path: &Path) -> Result<(Config, Inventory), Fatal> {
    let config = Config::load(config_path).map_err(config_error)?;
    let inv =
        Inventory::load(&config.inventory, &inventory_context(&config)).map_err(config_error)?;
    Ok((config, inv))
}

fn read_admin_token(config: &Config) -> Result<Option<Arc<String>>, Fatal> {
    let Some(p) = &config.admin_token_file else {
        return Ok(None);
    };
    let t = std::fs::read_to_string(p)
        .with_context(|| format!("{}: cannot read admin_token_file", p.display()))
        .map_err(config_error)?;
    let t = t.trim().to_string();
    if t.len() < 16 {
        return Err(config_error(anyhow::anyhow!(
            "{}: the admin token must be at least 16 characters",
            p.display()
        )));
    }
    Ok(Some(Arc::new(t)))
}

/// `stemcell serve`: run until SIGINT or SIGTERM.
pub async fn serve(config_path: &Path) -> Result<(), Fatal> {
    let (config, inv) = load(config_path)?;
    let server_ip = config.resolve_server_ip().map_err(config_error)?;
    let admin_token = read_admin_token(&config)?;
    let store = Arc::new(Store::open(&config.state_dir).with_context(|| {
        format!(
            "{}: cannot open the state directory",
            config.state_dir.display()
        )
    })?);
    let ctx = inventory_context(&config);
    tracing::info!(
        file = %inv.file.display(),
        machines = inv.machines.len(),
        roles = inv.roles.len(),
        "inventory loaded"
    );
    let live = Arc::new(inventory::Live::new(inv, ctx));
    let config = Arc::new(config);
    let shutdown = CancellationToken::new();

    let leases: Option<Arc<dyn LeaseStore>> = if config.dhcp.mode == DhcpMode::Authoritative {
        let pools = dhcp_settings(&config, server_ip, "")?.pools();
        let path = config.state_dir.join("leases.journal");
        let store = leases::JournalStore::open(&path, pools)
            .with_context(|| format!("{}: cannot open the lease journal", path.display()))?;
        Some(Arc::new(store))
    } else {
        None
    };

    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", config.http.listen))?;
    let addr = listener.local_addr()?;
    // With `listen: …:0` (tests) machines must be told the port actually bound.
    let mut server_url = config.server_url(server_ip);
    if config.http.url.is_none() && config.http.listen.port() == 0 {
        server_url = format!("http://{}:{}", server_ip, addr.port());
    }
    tracing::info!(%addr, url = %server_url, "http listening");

    let app = App {
        config: config.clone(),
        server_url,
        inventory: live.clone(),
        store: store.clone(),
        admin_token,
        sessions: Default::default(),
        metrics: Default::default(),
        leases,
        stemcell_files: Arc::new([
            http::files::Cached::new(config.stemcell.kernel.clone()),
            http::files::Cached::new(config.stemcell.initrd.clone()),
        ]),
    };
    let mut tasks = tokio::task::JoinSet::new();

    // TFTP: on the server's address, on the configured interface only.
    if let Some(t) = &config.tftp {
        let socket = bind_tftp(config.interface.as_deref(), server_ip).map_err(config_error)?;
        let tcfg = crate::tftp::TftpConfig {
            root: t.root.clone(),
            max_transfers: t.max_transfers,
            max_window: t.max_window,
            ..Default::default()
        };
        let observer = Arc::new(TftpRecorder {
            store: store.clone(),
            metrics: app.metrics.clone(),
            leases: app.leases.clone(),
        });
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            if let Err(e) = crate::tftp::serve(socket, tcfg, observer, shutdown).await {
                tracing::error!(error = %e, "TFTP service stopped");
            }
        });
    }

    // DHCP: only on the one configured interface, bound before anything is announced.
    if config.dhcp.mode != DhcpMode::Off {
        let settings = dhcp_settings(&config, server_ip, &app.server_url)?;
        let leases = app
            .leases
            .clone()
            .unwrap_or_else(|| Arc::new(leases::JournalStore::in_memory(vec![])));
        let sockets = dhcp::Sockets::bind(&settings).map_err(config_error)?;
        let directory = Arc::new(InventoryDirectory(live.clone()));
        let observer = Arc::new(Recorder {
            store: store.clone(),
            metrics: app.metrics.clone(),
        });
        let server = Arc::new(
            dhcp::DhcpServer::new(settings, directory, observer, leases).map_err(config_error)?,
        );
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            if let Err(e) = dhcp::serve(server, sockets, shutdown).await {
                tracing::error!(error = %e, "DHCP service stopped");
            }
        });
    }
    tracing::info!(%addr, url = %app.server_url, "stemcell ready");
    tasks.spawn(
        live.clone()
            .watch(Duration::from_millis(200), shutdown.clone()),
    );
    {
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            if let Err(e) = http::serve(listener, app, shutdown).await {
                tracing::error!(error = %e, "http service stopped");
            }
        });
    }

    wait_for_signal().await;
    tracing::info!("shutting down");
    shutdown.cancel();
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .is_err()
    {
        tracing::warn!("some requests did not finish within 10 s; stopping anyway");
    }
    Ok(())
}

/// The DHCP service's view of the config.
pub fn dhcp_settings(
    config: &Config,
    server_ip: std::net::Ipv4Addr,
    http_url: &str,
) -> Result<dhcp::DhcpSettings, Fatal> {
    let settings = dhcp::DhcpSettings {
        mode: match config.dhcp.mode {
            DhcpMode::Proxy => dhcp::Mode::Proxy,
            DhcpMode::Authoritative => dhcp::Mode::Authoritative,
            DhcpMode::Off => dhcp::Mode::Off,
        },
        server_ip,
        interface: config.interface.clone().unwrap_or_default(),
        http_url: http_url.to_string(),
        boot_files: config.dhcp.boot_files.clone(),
        subnets: config.dhcp.subnets.clone(),
    };
    settings.validate().map_err(config_error)?;
    Ok(settings)
}

/// TFTP's listening socket: `server_ip:69`, bound to the interface so that nothing on
/// another interface is ever answered, and so replies leave from the address asked.
fn bind_tftp(
    interface: Option<&str>,
    server_ip: std::net::Ipv4Addr,
) -> anyhow::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
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

/// Which machine an address belongs to: its lease (authoritative mode), else the kernel's
/// neighbour table (the client just talked to us, so it is there).
fn mac_for_ip(leases: Option<&Arc<dyn LeaseStore>>, ip: std::net::IpAddr) -> Option<MacAddr> {
    let std::net::IpAddr::V4(v4) = ip else {
        return None;
    };
    if let Some(l) = leases {
        let now = state::now_ms() / 1000;
        if let Some(lease) = l
            .leases(now)
            .into_iter()
            .find(|l| l.ip == v4 && l.state == leases::LeaseState::Bound)
        {
            return Some(lease.mac);
        }
    }
    let arp = std::fs::read_to_string("/proc/net/arp").ok()?;
    parse_arp(&arp, v4)
}

/// Pure: the MAC of `ip` in `/proc/net/arp` text.
pub fn parse_arp(text: &str, ip: std::net::Ipv4Addr) -> Option<MacAddr> {
    text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() >= 4
            && f[0].parse::<std::net::Ipv4Addr>().ok() == Some(ip)
            && f[3] != "00:00:00:00:00:00"
        {
            f[3].parse().ok()
        } else {
            None
        }
    })
}

/// Turns TFTP transfers into machine events and metrics.
struct TftpRecorder {
    store: Arc<Store>,
    metrics: Arc<crate::metrics::Metrics>,
    leases: Option<Arc<dyn LeaseStore>>,
}

impl crate::tftp::TftpObserver for TftpRecorder {
    fn transfer(&self, ev: crate::tftp::TransferEvent) {
        use crate::tftp::TransferOutcome as O;
        let (outcome, bytes, what) = match &ev.outcome {
            O::Completed { bytes } => (
                "completed",
                *bytes,
                format!("sent {} ({bytes} bytes, ", ev.file),
            ),
            O::Refused(r) => ("refused", 0, format!("refused {}: {r} (", ev.file)),
            O::AbortedByClient {
                code,
                message,
                bytes,
            } => (
                "aborted",
                *bytes,
                format!(
                    "{} aborted by the client after {bytes} bytes: error {} {message:?} (",
                    ev.file,
                    code.to_u16()
                ),
            ),
            O::TimedOut { bytes } => (
                "timed_out",
                *bytes,
                format!("{} timed out after {bytes} bytes (", ev.file),
            ),
            O::Cancelled { bytes } => (
                "cancelled",
                *bytes,
                format!("{} cancelled at shutdown after {bytes} bytes (", ev.file),
            ),
            O::Failed { bytes, error } => (
                "failed",
                *bytes,
                format!("{} failed after {bytes} bytes: {error} (", ev.file),
            ),
        };
        self.metrics.inc(
            "stemcell_tftp_transfers_total",
            &[("outcome", outcome)],
            1.0,
        );
        self.metrics
            .inc("stemcell_tftp_bytes_total", &[], bytes as f64);
        let o = &ev.options;
        let mut msg = what;
        msg.push_str(&format!("blksize {}", o.block_size));
        if o.window_size > 1 {
            msg.push_str(&format!(", windowsize {}", o.window_size));
        }
        if let Some(t) = o.transfer_size {
            msg.push_str(&format!(", tsize {t}"));
        }
        msg.push_str(&format!(
            ", {:.2} s, from {})",
            ev.elapsed.as_secs_f64(),
            ev.peer
        ));
        match mac_for_ip(self.leases.as_ref(), ev.peer.ip()) {
            Some(mac) => self.store.event(mac, "tftp", msg),
            None => {
                tracing::debug!(peer = %ev.peer, "TFTP transfer from an address with no known MAC")
            }
        }
    }
}

/// The inventory as DHCP sees it (called on the packet path: a lock-free-ish Arc read).
struct InventoryDirectory(Arc<inventory::Live>);

impl dhcp::Directory for InventoryDirectory {
    fn lookup(&self, mac: MacAddr) -> Option<dhcp::Host> {
        let inv = self.0.get();
        inv.machine(&mac).map(|m| dhcp::Host {
            hostname: m.hostname.clone(),
            reserved_ip: m.ip,
        })
    }

    fn answer_unknown(&self) -> bool {
        self.0.get().defaults.unknown == inventory::UnknownPolicy::Discover
    }
}

/// Turns DHCP steps into machine events, facts and metrics.
struct Recorder {
    store: Arc<Store>,
    metrics: Arc<crate::metrics::Metrics>,
}

/// "UEFI x64 (iPXE)", "BIOS", … for the firmware column.
pub fn firmware_label(class: &dhcp::ClientClass) -> String {
    let mut s = class.arch.to_string();
    if class.http_boot {
        s.push_str(" HTTP boot");
    }
    if class.ipxe {
        s.push_str(" (iPXE)");
    }
    s
}

impl dhcp::DhcpObserver for Recorder {
    fn event(&self, mac: MacAddr, ev: dhcp::DhcpEvent) {
        let outcome = match (&ev.sent, &ev.refusal) {
            (Some(sent), _) => sent.to_string(),
            (None, Some(r)) => r.kind().to_string(),
            (None, None) => "none".into(),
        };
        self.metrics.inc(
            "stemcell_dhcp_packets_total",
            &[("type", &ev.received.to_string()), ("outcome", &outcome)],
            1.0,
        );
        let netboot = ev.class.pxe || ev.class.ipxe || ev.class.http_boot;
        // Plain DHCP clients that are not ours (laptops, printers) are not machines to track.
        if !(ev.known || netboot) {
            return;
        }
        let acked = ev.sent == Some(dhcp::MessageType::Ack);
        self.store.observe(
            mac,
            ev.known,
            state::Facts {
                arch: netboot.then(|| firmware_label(&ev.class)),
                // Only what the firmware said: the stem cell's own DHCP client (udhcpc)
                // must not overwrite the machine's vendor class and UUID.
                vendor_class: if netboot {
                    ev.class.vendor_class.clone()
                } else {
                    None
                },
                uuid: if netboot { ev.class.uuid.clone() } else { None },
                ip: if acked {
                    ev.ip.map(|i| i.to_string())
                } else {
                    None
                },
                hardware: Default::default(),
            },
        );
        let mut msg = format!("{}", ev.received);
        if ev.port == dhcp::PXE_PORT {
            msg.push_str(" on port 4011");
        }
        match (&ev.sent, &ev.refusal) {
            (Some(sent), _) => {
                msg.push_str(&format!(" → {sent}"));
                if let Some(ip) = ev.ip {
                    msg.push_str(&format!(" {ip}"));
                }
                if let Some(f) = &ev.boot_file {
                    msg.push_str(&format!(", boot file {f}"));
                }
            }
            (None, Some(r)) => msg.push_str(&format!(": no answer: {r}")),
            // RELEASE and DECLINE are not answered by design.
            (None, None)
                if matches!(
                    ev.received,
                    dhcp::MessageType::Release | dhcp::MessageType::Decline
                ) =>
            {
                if let Some(ip) = ev.ip {
                    msg.push_str(&format!(" {ip}"));
                }
            }
            (None, None) => msg.push_str(": no answer"),
        }
        if netboot {
            msg.push_str(&format!(" [{}]", firmware_label(&ev.class)));
        }
        if let Some(relay) = ev.relay {
            msg.push_str(&format!(" via relay {relay}"));
        }
        self.store.event(mac, "dhcp", msg);
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// `stemcell check`: validate config and inventory, and render every machine's templates.
/// Returns the number of machines checked.
pub fn check(config_path: &Path) -> Result<usize, Fatal> {
    let (config, inv) = load(config_path)?;
    let url = config.display_url();
    // Render on every core: a 100,000-machine inventory is checked in about a second.
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let chunk = inv.order.len().div_ceil(threads).max(1);
    let problems: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = inv
            .order
            .chunks(chunk)
            .map(|macs| {
                let (config, inv, url) = (&config, &inv, &url);
                scope.spawn(move || check_machines(config, inv, url, macs))
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
    if !config.stemcell.kernel.is_file() {
        tracing::warn!(path = %config.stemcell.kernel.display(), "the stem-cell kernel does not exist yet (build it with `stemcell image build`)");
    }
    if !problems.is_empty() {
        return Err(config_error(anyhow::anyhow!(problems.join("\n"))));
    }
    Ok(inv.machines.len())
}

/// Render every template of `macs`; the problems, in inventory order.
fn check_machines(config: &Config, inv: &Inventory, url: &str, macs: &[MacAddr]) -> Vec<String> {
    let mut problems = Vec::new();
    let batch = render::Batch::new(&config.kickstarts);
    for mac in macs {
        let Some(m) = inv.machine(mac) else { continue };
        let Some(role) = inv.role_of(m) else { continue };
        let vars = render::InstallVars::new(inv, m, url, "0123456789abcdef0123456789abcdef");
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
pub fn render_machine(config_path: &Path, mac: MacAddr) -> Result<String, Fatal> {
    let (config, inv) = load(config_path)?;
    let url = config.display_url();
    let record = state::read_records(&config.state_dir)
        .map_err(Fatal::from)?
        .remove(&mac);
    let choice = http::choice_for(&inv, mac, record.as_ref());
    let token = record
        .as_ref()
        .and_then(|r| r.token.clone())
        .unwrap_or_else(|| "TOKEN-ISSUED-AT-BOOT".to_string());
    let mut out = format!("# boot script ({choice:?}) for {mac}\n");
    out.push_str(&http::boot_script_text(
        &config,
        &url,
        &inv,
        mac,
        &choice,
        Some(&token),
    )?);
    if let Some(m) = inv.machine(&mac) {
        if let Some(role) = inv.role_of(m) {
            let vars = render::InstallVars::new(&inv, m, &url, &token);
            out.push_str(&format!(
                "\n# install script (template {})\n",
                role.template
            ));
            out.push_str(
                &render::install_script(&config.kickstarts, &role.template, &vars)
                    .map_err(config_error)?,
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_acked_address_becomes_the_machines_ip_fact() {
        use dhcp::DhcpObserver as _;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let rec = Recorder {
            store: store.clone(),
            metrics: Default::default(),
        };
        let mac: MacAddr = "52:54:00:00:00:42".parse().unwrap();
        let ev = |sent| dhcp::DhcpEvent {
            received: dhcp::MessageType::Request,
            sent: Some(sent),
            port: 67,
            xid: 1,
            ip: Some("198.18.0.42".parse().unwrap()),
            boot_file: None,
            class: dhcp::ClientClass {
                pxe: true,
                http_boot: false,
                ipxe: false,
                arch: dhcp::Arch::Bios,
                arch_code: Some(0),
                arch_fallback: None,
                vendor_class: Some("PXEClient:Arch:00000".into()),
                user_class: None,
                uuid: None,
            },
            relay: None,
            known: true,
            refusal: None,
        };
        rec.event(mac, ev(dhcp::MessageType::Offer));
        assert_eq!(
            store.record(&mac).unwrap().facts.ip,
            None,
            "an offer is not the machine's address"
        );
        rec.event(mac, ev(dhcp::MessageType::Ack));
        assert_eq!(
            store.record(&mac).unwrap().facts.ip.as_deref(),
            Some("198.18.0.42")
        );
    }

    #[test]
    fn arp_lookup() {
        let t = "IP address       HW type     Flags       HW address            Mask     Device
198.18.0.100     0x1         0x2         52:54:00:12:34:56     *        br0
198.18.0.101     0x1         0x0         00:00:00:00:00:00     *        br0
";
        assert_eq!(
            parse_arp(t, "198.18.0.100".parse().unwrap()),
            Some("52:54:00:12:34:56".parse().unwrap())
        );
        assert_eq!(
            parse_arp(t, "198.18.0.101".parse().unwrap()),
            None,
            "incomplete entries are not answers"
        );
        assert_eq!(parse_arp(t, "198.18.0.102".parse().unwrap()), None);
    }
}
