//! The server's own configuration (`stemcell.yaml`).
//!
//! Owns reading the file into typed values and validating them before anything is bound:
//! every problem names `file:line:col` and says what would be valid; unknown keys are
//! refused (a typo must not silently fall back to a default). Relative paths are relative
//! to the config file's folder. Resolving the interface's address happens at `serve` time
//! (`Config::resolve_server_ip`), so `check` works on a machine without that interface.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnetwork::{Ipv4Network, Ipv6Network};

use crate::yaml::{self, Kind, Node, Problems, Report};

use crate::dhcp::{BootFiles, Mode as DhcpMode, Subnet};
use crate::tftp::TftpConfig;

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct DhcpConfig {
    pub(crate) mode: DhcpMode,
    pub(crate) subnets: Vec<Subnet>,
    /// Where each subnet was written (parallel to `subnets`), for messages.
    pub(crate) subnet_pos: Vec<yaml::Pos>,
    pub(crate) boot_files: BootFiles,
    /// Authoritative mode: the install token works only from the address the machine
    /// leased (`dhcp.install_token_from_lease`, default on). Off for sites whose installs
    /// reach stemcell through NAT or a proxy, at the cost SECURITY.md describes.
    pub(crate) install_token_from_lease: bool,
    /// `dhcp.ipv6`: DHCPv6 for network boot over IPv6 (authoritative mode only).
    pub(crate) ipv6: Option<Dhcp6Config>,
}

/// `dhcp.ipv6`: one /64 on the interface, our address in it, lifetimes and name servers.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Dhcp6Config {
    pub(crate) server_ip: Ipv6Addr,
    pub(crate) prefix: Ipv6Network,
    pub(crate) lease_time: Duration,
    pub(crate) dns: Vec<Ipv6Addr>,
    /// Where `dhcp.ipv6` was written.
    pub(crate) pos: yaml::Pos,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct HttpConfig {
    pub(crate) listen: SocketAddr,
    /// What machines are told; `None` means `http://SERVER_IP:PORT`.
    pub(crate) url: Option<String>,
    pub(crate) limits: HttpLimits,
    /// `http.tls`: a second listener for the page, API and metrics over TLS.
    pub(crate) tls: Option<TlsConfig>,
    /// `http.read_auth: true` (where it was written): the read API, the page and
    /// `/metrics` need the admin token, a page session or the read token.
    pub(crate) read_auth: Option<yaml::Pos>,
}

/// `http.tls`: where the TLS listener binds and its certificate chain and key (PEM files,
/// read at start while still root), with where each was written for messages about the
/// files' contents.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TlsConfig {
    pub(crate) listen: SocketAddr,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    /// Where `cert` and `key` were written.
    pub(crate) cert_pos: yaml::Pos,
    pub(crate) key_pos: yaml::Pos,
}

/// HTTP's limits (see `http::listen`): a header time-out that is also the idle keep-alive
/// time-out, the largest request head, and bounds on connections in all and per client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HttpLimits {
    pub(crate) header_timeout: Duration,
    /// The largest request head, in bytes (hyper's minimum is 8,192).
    pub(crate) max_header_bytes: usize,
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_client: usize,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_connections: 10_000,
            max_connections_per_client: 64,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct StemcellFiles {
    pub(crate) kernel: PathBuf,
    pub(crate) initrd: PathBuf,
    /// Extra kernel arguments for the stem cell (e.g. `console=ttyS0,115200`).
    pub(crate) cmdline: String,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Config {
    pub(crate) file: PathBuf,
    pub(crate) interface: Option<String>,
    pub(crate) server_ip: Option<Ipv4Addr>,
    pub(crate) dhcp: DhcpConfig,
    pub(crate) tftp: Option<TftpConfig>,
    pub(crate) http: HttpConfig,
    pub(crate) stemcell: StemcellFiles,
    pub(crate) assets: Option<PathBuf>,
    /// The boot loaders served over HTTP at `/tftp/` (UEFI HTTP boot's `uefi_http`):
    /// `loaders`, else `tftp.root`, else Debian's `/usr/lib/ipxe` (see [`read_loaders`]).
    pub(crate) loaders: PathBuf,
    pub(crate) inventory: PathBuf,
    pub(crate) kickstarts: PathBuf,
    pub(crate) state_dir: PathBuf,
    pub(crate) admin_token_file: Option<PathBuf>,
    /// A token that may only read (the API, the page's data, `/metrics`) under
    /// `http.read_auth`, for scrapers and dashboards.
    pub(crate) read_token_file: Option<PathBuf>,
    /// OS specs (`NAME.yaml`), built by `stemcell os build`.
    pub(crate) os_specs: PathBuf,
    /// Built OS images (`NAME/current.json`, `NAME/SHA256.tar.zst`), served at `/os/`.
    pub(crate) os_images: PathBuf,
    /// The site's Puppet code (`manifests/ROLE.pp`, `modules/`), served as a bundle.
    pub(crate) puppet: PathBuf,
    /// Per-install secrets (`hosts/HOSTNAME/NAME`, `roles/ROLE/NAME`), served only at
    /// `/secret/MAC/NAME` with a live install token.
    pub(crate) secrets: PathBuf,
    /// An installed machine that has not phoned home after this long is `stalled`.
    pub(crate) stall_after: Duration,
    /// How many times an armed machine may boot its installer without reporting `done` or
    /// `failed`; the next boot stops the install (an installer that never calls back must
    /// not reinstall forever).
    pub(crate) installer_boots: u32,
    pub(crate) power: PowerConfig,
    /// `user:` (and `group:`): whom `serve` becomes once every socket is bound.
    pub(crate) run_as: Option<RunAs>,
    /// `grub:`: where shim and GRUB's network image are, per UEFI architecture (the
    /// machines whose loader is grub get them over TFTP).
    pub(crate) grub: Vec<GrubFiles>,
    /// `store.postgres`: leases and machine state in a database several servers share;
    /// `None`: the journals in `state_dir`.
    pub(crate) postgres: Option<crate::pg::PgConfig>,
}

/// The files of one architecture's GRUB chain (defaults: Debian's packages).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct GrubFiles {
    pub(crate) arch: &'static crate::dhcp::GrubArch,
    pub(crate) shim: PathBuf,
    pub(crate) grub: PathBuf,
    /// Where `grub.ARCH` was written; `None`: Debian's defaults.
    pub(crate) pos: Option<yaml::Pos>,
}

impl GrubFiles {
    /// The files that are not there (or not files), each with the package that ships
    /// the default one.
    pub(crate) fn missing(&self) -> Vec<String> {
        let a = self.arch;
        [
            (&self.shim, "shim", a.shim_package),
            (&self.grub, "grub", a.grub_package),
        ]
        .into_iter()
        .filter(|(p, _, _)| !p.is_file())
        .map(|(p, key, package)| {
            format!(
                "grub.{}.{key}: {} is missing (Debian's package {package} installs it)",
                a.key,
                p.display()
            )
        })
        .collect()
    }
}

/// Debian's files for every architecture in [`crate::dhcp::GRUB_ARCHES`].
fn default_grub() -> Vec<GrubFiles> {
    crate::dhcp::GRUB_ARCHES
        .iter()
        .map(|a| GrubFiles {
            arch: a,
            shim: PathBuf::from(a.shim_path),
            grub: PathBuf::from(a.grub_path),
            pos: None,
        })
        .collect()
}

/// `grub: { uefi_x64: { shim: PATH, grub: PATH }, arm64: {...} }`.
fn read_grub(r: &mut Report, node: Option<&Node>, dir: &Path) -> Vec<GrubFiles> {
    let mut out = default_grub();
    let Some(mut m) = node.and_then(|n| r.map(n, "grub")) else {
        return out;
    };
    for files in &mut out {
        let key = files.arch.key;
        let Some(n) = m.get(key) else { continue };
        files.pos = Some(n.pos);
        let Some(mut f) = r.map(n, &format!("grub.{key}")) else {
            continue;
        };
        for (name, slot) in [("shim", &mut files.shim), ("grub", &mut files.grub)] {
            if let Some(v) = f.get(name) {
                if let Some(s) = r.string(v, &format!("grub.{key}.{name}")) {
                    if s.is_empty() {
                        r.add(v.pos, format!("grub.{key}.{name} must be a file path"));
                    } else {
                        *slot = relative_to(dir, s);
                    }
                }
            }
        }
        f.deny_unknown(r, &format!("grub.{key}"), &["shim", "grub"]);
    }
    let keys: Vec<&str> = crate::dhcp::GRUB_ARCHES.iter().map(|a| a.key).collect();
    m.deny_unknown(r, "grub", &keys);
    out
}

/// The account `serve` switches to after binding, as written, with where it was written
/// (it is resolved and checked at `serve` time, so `check` works on another host).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RunAs {
    pub(crate) user: String,
    pub(crate) user_pos: yaml::Pos,
    /// `group:`; `None` means the user's primary group.
    pub(crate) group: Option<(String, yaml::Pos)>,
}

/// Why the config could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    #[error("{}: cannot read: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{0}")]
    Invalid(Problems),
    #[error("{0}")]
    Resolve(String),
}

/// How long an installed machine may take to phone home before it shows as stalled.
const DEFAULT_STALL_AFTER: Duration = Duration::from_secs(30 * 60);
/// Boots into the installer an armed machine gets before its install is stopped.
const DEFAULT_INSTALLER_BOOTS: u32 = 3;

const TOP_KEYS: &[&str] = &[
    "interface",
    "server_ip",
    "dhcp",
    "tftp",
    "http",
    "stemcell",
    "assets",
    "loaders",
    "inventory",
    "kickstarts",
    "state_dir",
    "admin_token_file",
    "read_token_file",
    "os",
    "images",
    "puppet",
    "secrets",
    "stall_after",
    "installer_boots",
    "user",
    "group",
    "power",
    "grub",
    "store",
];

/// How stemcell calls BMCs (the BMCs themselves are in the inventory).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PowerConfig {
    /// The longest one power action may take (the subprocess is killed after it).
    pub(crate) timeout: Duration,
    /// BMC calls at once, for all machines together.
    pub(crate) max_calls: usize,
    /// How often the page's power states are fetched again (0: never in the background).
    pub(crate) refresh: Duration,
}

impl Default for PowerConfig {
    fn default() -> PowerConfig {
        PowerConfig {
            timeout: Duration::from_secs(30),
            max_calls: 8,
            refresh: Duration::from_secs(60),
        }
    }
}

fn read_power_config(r: &mut Report, node: Option<&Node>) -> PowerConfig {
    let mut out = PowerConfig::default();
    let Some(node) = node else { return out };
    let Some(mut m) = r.map(node, "power") else {
        return out;
    };
    let mut duration = |r: &mut Report, key: &str, zero_ok: bool| -> Option<Duration> {
        let n = m.get(key)?;
        let s = r.string(n, &format!("power.{key}"))?;
        match parse_duration(&s) {
            Some(d) if zero_ok || d.as_secs() > 0 => Some(d),
            _ => {
                r.add(
                    n.pos,
                    format!("power.{key}: {s:?} is not a duration such as 30s, 2m or 60"),
                );
                None
            }
        }
    };
    if let Some(d) = duration(r, "timeout", false) {
        out.timeout = d;
    }
    if let Some(d) = duration(r, "refresh", true) {
        out.refresh = d;
    }
    if let Some(n) = m.get("max_calls") {
        match r.parsed::<usize>(
            n,
            "power.max_calls",
            "a number of BMC calls at once (1-256)",
        ) {
            Some(v @ 1..=256) => out.max_calls = v,
            Some(_) => r.add(n.pos, "power.max_calls must be 1-256"),
            None => {}
        }
    }
    m.deny_unknown(r, "power", &["timeout", "max_calls", "refresh"]);
    out
}

impl Config {
    pub(crate) fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Config::parse(path, &text).map_err(ConfigError::Invalid)
    }

    pub(crate) fn parse(path: &Path, text: &str) -> Result<Config, Problems> {
        let root = yaml::parse(path, text)?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut r = Report::new(path);
        let Some(mut top) = r.map(&root, "the config file") else {
            return Err(r.finish(()).unwrap_err());
        };
        let interface = top.get("interface").and_then(|n| read_interface(&mut r, n));
        let server_ip = top
            .get("server_ip")
            .and_then(|n| r.parsed::<Ipv4Addr>(n, "server_ip", "an IPv4 address"));
        let dhcp = read_dhcp(&mut r, top.get("dhcp"), top.pos);
        let tftp = top.get("tftp").and_then(|n| read_tftp(&mut r, n, &dir));
        let http = read_http(&mut r, top.get("http"), &dir);
        let stemcell = read_stemcell(&mut r, top.get("stemcell"), &dir);
        let mut path_key = |r: &mut Report, key: &str, default: Option<&str>| match top.get(key) {
            Some(n) => r.string(n, key).map(|s| relative_to(&dir, s)),
            None => default.map(|d| relative_to(&dir, d.to_string())),
        };
        let inventory = path_key(&mut r, "inventory", Some("inventory.yaml")).unwrap_or_default();
        let kickstarts = path_key(&mut r, "kickstarts", Some("kickstarts")).unwrap_or_default();
        let state_dir =
            path_key(&mut r, "state_dir", Some("/var/lib/stemcell")).unwrap_or_default();
        let assets = path_key(&mut r, "assets", None);
        let admin_token_file = path_key(&mut r, "admin_token_file", None);
        let read_token_file = path_key(&mut r, "read_token_file", None);
        let os_specs = path_key(&mut r, "os", Some("os")).unwrap_or_default();
        let os_images = path_key(&mut r, "images", Some("images")).unwrap_or_default();
        let puppet = path_key(&mut r, "puppet", Some("puppet")).unwrap_or_default();
        let secrets = path_key(&mut r, "secrets", Some("secrets")).unwrap_or_default();
        let stall_after = match top.get("stall_after") {
            Some(n) => r
                .string(n, "stall_after")
                .and_then(|s| match parse_duration(&s) {
                    Some(d) if d.as_secs() > 0 => Some(d),
                    _ => {
                        r.add(
                            n.pos,
                            format!("stall_after: {s:?} is not a duration such as 20m, 1h or 3600"),
                        );
                        None
                    }
                })
                .unwrap_or(DEFAULT_STALL_AFTER),
            None => DEFAULT_STALL_AFTER,
        };
        let installer_boots = match top.get("installer_boots") {
            Some(n) => match r.parsed::<u32>(n, "installer_boots", "a whole number from 1") {
                Some(0) => {
                    r.add(
                        n.pos,
                        "installer_boots must be at least 1 (the first boot is one)",
                    );
                    DEFAULT_INSTALLER_BOOTS
                }
                Some(v) => v,
                None => DEFAULT_INSTALLER_BOOTS,
            },
            None => DEFAULT_INSTALLER_BOOTS,
        };
        let run_as = read_run_as(&mut r, top.get("user"), top.get("group"));
        let loaders = read_loaders(&mut r, top.get("loaders"), &dir, tftp.as_ref());
        let power = read_power_config(&mut r, top.get("power"));
        let grub = read_grub(&mut r, top.get("grub"), &dir);
        let postgres = read_store(&mut r, top.get("store"), &dir);
        if let Some(pos) = http.read_auth {
            if admin_token_file.is_none() && read_token_file.is_none() {
                r.add(pos, "http.read_auth needs admin_token_file or read_token_file: otherwise nobody could read the API or the page");
            }
        }
        top.deny_unknown(&mut r, "the config file", TOP_KEYS);
        check_dhcp6_http(&mut r, &dhcp, &http);

        let needs_interface = dhcp.mode != DhcpMode::Off || tftp.is_some();
        if needs_interface && interface.is_none() && r.problems.is_empty() {
            r.add(
                root.pos,
                "interface is required: the one interface DHCP and TFTP answer on (stemcell never answers on an interface it was not given); with dhcp.mode: off and no tftp section it may be left out",
            );
        }
        if matches!(root.kind, Kind::Null) {
            r.add(root.pos, "the config file is empty");
        }
        r.finish(Config {
            file: path.to_path_buf(),
            interface,
            server_ip,
            dhcp,
            tftp,
            http,
            stemcell,
            assets,
            loaders,
            inventory,
            kickstarts,
            state_dir,
            admin_token_file,
            read_token_file,
            os_specs,
            os_images,
            puppet,
            secrets,
            stall_after,
            installer_boots,
            power,
            run_as,
            grub,
            postgres,
        })
    }

    /// The DHCP service's view of the config, validated.
    pub(crate) fn dhcp_settings(
        &self,
        server_ip: Ipv4Addr,
        http_url: &str,
    ) -> Result<crate::dhcp::DhcpSettings, crate::dhcp::DhcpError> {
        let settings = crate::dhcp::DhcpSettings {
            mode: self.dhcp.mode,
            server_ip,
            interface: self.interface.clone().unwrap_or_default(),
            http_url: http_url.to_string(),
            boot_files: crate::dhcp::BootFiles {
                tftp: self.tftp.is_some(),
                ..self.dhcp.boot_files.clone()
            },
            subnets: self.dhcp.subnets.clone(),
        };
        settings.validate()?;
        Ok(settings)
    }

    /// The DHCPv6 service's view of the config (`dhcp.ipv6`), validated; `None` without
    /// it. Machines booting over IPv6 are told `http://[server_ip]:PORT` (the port HTTP
    /// actually listens on).
    pub(crate) fn dhcp6_settings(
        &self,
        http_port: u16,
    ) -> Result<Option<crate::dhcp6::Dhcp6Settings>, crate::dhcp6::Dhcp6Error> {
        let Some(v6) = &self.dhcp.ipv6 else {
            return Ok(None);
        };
        let settings = crate::dhcp6::Dhcp6Settings {
            interface: self.interface.clone().unwrap_or_default(),
            server_ip: v6.server_ip,
            prefix: v6.prefix,
            lease_time: v6.lease_time,
            dns: v6.dns.clone(),
            http_url: format!("http://[{}]:{http_port}", v6.server_ip),
            tftp: self.tftp.is_some(),
            boot_files: self.dhcp.boot_files.clone(),
        };
        settings.validate()?;
        Ok(Some(settings))
    }

    /// The server's address: `server_ip`, else the interface's first IPv4 address.
    pub(crate) fn resolve_server_ip(&self) -> Result<Ipv4Addr, ConfigError> {
        if let Some(ip) = self.server_ip {
            return Ok(ip);
        }
        let Some(ifname) = &self.interface else {
            return Err(ConfigError::Resolve(format!(
                "{}: set server_ip (no interface is configured to take it from)",
                self.file.display()
            )));
        };
        let addrs = if_addrs::get_if_addrs()
            .map_err(|e| ConfigError::Resolve(format!("cannot list network interfaces: {e}")))?;
        addrs
            .iter()
            .filter(|a| &a.name == ifname)
            .find_map(|a| match a.ip() {
                std::net::IpAddr::V4(v4) => Some(v4),
                _ => None,
            })
            .ok_or_else(|| {
                ConfigError::Resolve(format!(
                    "{}: interface {ifname:?} has no IPv4 address here; give it one or set server_ip",
                    self.file.display()
                ))
            })
    }

    /// The base URL machines are told, without a trailing slash.
    pub(crate) fn server_url(&self, server_ip: Ipv4Addr) -> String {
        match &self.http.url {
            Some(u) => u.clone(),
            None => format!("http://{}:{}", server_ip, self.http.listen.port()),
        }
    }

    /// The URL for `render` and `check`, which must not fail on a host without the
    /// interface: falls back to a placeholder address.
    pub(crate) fn display_url(&self) -> String {
        let ip = self
            .resolve_server_ip()
            .unwrap_or(Ipv4Addr::new(198, 18, 0, 1));
        self.server_url(ip)
    }
}

/// A path from the config: absolute as written, else relative to the config's folder.
fn relative_to(dir: &Path, p: String) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() {
        p
    } else {
        dir.join(p)
    }
}

/// `user:` and `group:`: account names (letters, digits, `_ . -`, as useradd allows).
/// `store: { postgres: { url: ..., password_file: ... } }`.
fn read_store(r: &mut Report, node: Option<&Node>, dir: &Path) -> Option<crate::pg::PgConfig> {
    let mut m = r.map(node?, "store")?;
    let pg = m.get("postgres");
    m.deny_unknown(r, "store", &["postgres"]);
    let pg = pg?;
    let mut m = r.map(pg, "store.postgres")?;
    let url = match m.get("url") {
        Some(n) => r.string(n, "store.postgres.url").and_then(|s| {
            if s.trim().is_empty() {
                r.add(n.pos, "store.postgres.url is empty");
                return None;
            }
            if let Err(e) = s.parse::<tokio_postgres::Config>() {
                r.add(n.pos, format!("store.postgres.url: {e}"));
                return None;
            }
            Some(s)
        }),
        None => {
            r.add(
                pg.pos,
                "store.postgres needs url: (postgresql://USER@HOST/DB, or host=/run/postgresql dbname=DB user=USER)",
            );
            None
        }
    };
    let password_file = m
        .get("password_file")
        .and_then(|n| r.string(n, "store.postgres.password_file"))
        .map(|s| relative_to(dir, s));
    m.deny_unknown(r, "store.postgres", &["url", "password_file"]);
    Some(crate::pg::PgConfig {
        url: url?,
        password_file,
    })
}

fn read_run_as(r: &mut Report, user: Option<&Node>, group: Option<&Node>) -> Option<RunAs> {
    let name = |r: &mut Report, n: &Node, key: &str| {
        let s = r.string(n, key)?;
        let ok = !s.is_empty()
            && s.len() <= 32
            && !s.starts_with('-')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !ok {
            r.add(
                n.pos,
                format!("{key}: {s:?} is not an account name (letters, digits, _ . -)"),
            );
        }
        ok.then_some((s, n.pos))
    };
    let group = group.and_then(|n| {
        let g = name(r, n, "group");
        if user.is_none() {
            r.add(
                n.pos,
                "group: needs user: (the account serve switches to after binding)",
            );
        }
        g
    });
    let (user, user_pos) = name(r, user?, "user")?;
    Some(RunAs {
        user,
        user_pos,
        group,
    })
}

fn read_interface(r: &mut Report, n: &Node) -> Option<String> {
    let s = r.string(n, "interface")?;
    if s.is_empty()
        || s.len() > 15
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
    {
        r.add(
            n.pos,
            format!(
                "interface: {s:?} is not a network interface name (1-15 letters, digits, - _ . @)"
            ),
        );
        return None;
    }
    Some(s)
}

/// Machines booting over IPv6 fetch over HTTP from `http://[dhcp.ipv6.server_ip]:PORT`:
/// HTTP must listen there (`[::]:PORT` serves IPv4 and IPv6 alike).
fn check_dhcp6_http(r: &mut Report, dhcp: &DhcpConfig, http: &HttpConfig) {
    let Some(v6) = &dhcp.ipv6 else { return };
    let ok = match http.listen.ip() {
        std::net::IpAddr::V6(a) => a.is_unspecified() || a == v6.server_ip,
        std::net::IpAddr::V4(_) => false,
    };
    if !ok {
        r.add(
            v6.pos,
            format!(
                "dhcp.ipv6: http.listen {} does not reach {}: machines booting over IPv6 fetch from http://[{}]:{}; listen on \"[::]:{}\" (quoted in YAML; IPv4 and IPv6 alike)",
                http.listen,
                v6.server_ip,
                v6.server_ip,
                http.listen.port(),
                http.listen.port()
            ),
        );
    }
}

fn read_dhcp(r: &mut Report, node: Option<&Node>, top: yaml::Pos) -> DhcpConfig {
    let mut dhcp = DhcpConfig {
        mode: DhcpMode::Proxy,
        subnets: Vec::new(),
        subnet_pos: Vec::new(),
        boot_files: BootFiles::default(),
        install_token_from_lease: true,
        ipv6: None,
    };
    if let Some(mut m) = node.and_then(|n| r.map(n, "dhcp")) {
        if let Some(n) = m.get("mode") {
            match n.as_str() {
                Some("proxy") => dhcp.mode = DhcpMode::Proxy,
                Some("authoritative") => dhcp.mode = DhcpMode::Authoritative,
                Some("off") => dhcp.mode = DhcpMode::Off,
                _ => r.add(n.pos, "dhcp.mode must be one of: proxy, authoritative, off"),
            }
        }
        if let Some(n) = m.get("subnets") {
            for item in r.list(n, "dhcp.subnets").unwrap_or_default() {
                if let Some(s) = parse_subnet(r, item) {
                    dhcp.subnets.push(s);
                    dhcp.subnet_pos.push(item.pos);
                }
            }
        }
        if let Some(n) = m.get("boot_files") {
            read_boot_files(r, n, &mut dhcp.boot_files);
        }
        if let Some(n) = m.get("install_token_from_lease") {
            dhcp.install_token_from_lease = r
                .boolean(n, "dhcp.install_token_from_lease")
                .unwrap_or(true);
        }
        if let Some(n) = m.get("ipv6") {
            dhcp.ipv6 = read_dhcp6(r, n);
        }
        m.deny_unknown(
            r,
            "dhcp",
            &[
                "mode",
                "subnets",
                "boot_files",
                "install_token_from_lease",
                "ipv6",
            ],
        );
    }
    if let Some(v6) = &dhcp.ipv6 {
        if dhcp.mode != DhcpMode::Authoritative {
            r.add(v6.pos, "dhcp.ipv6 needs dhcp.mode authoritative: stemcell's DHCPv6 hands every NIC its address with the boot file (UEFI's PXE over IPv6 needs an address in the same ADVERTISE); there is no DHCPv6 proxy mode (docs/firmware.md, \"IPv6 (DHCPv6)\")");
        }
    }
    if dhcp.mode == DhcpMode::Authoritative && dhcp.subnets.is_empty() {
        r.add(
            node.map(|n| n.pos).unwrap_or(top),
            "dhcp.mode authoritative needs at least one entry under dhcp.subnets",
        );
    }
    for (i, a) in dhcp.subnets.iter().enumerate() {
        for (j, b) in dhcp.subnets[..i].iter().enumerate() {
            if a.net.overlaps(b.net) {
                r.add(
                    dhcp.subnet_pos[i],
                    format!(
                        "subnet {} overlaps subnet {} (line {})",
                        a.net, b.net, dhcp.subnet_pos[j].line
                    ),
                );
            }
        }
    }
    dhcp
}

fn read_boot_files(r: &mut Report, n: &Node, bf: &mut BootFiles) {
    let Some(mut b) = r.map(n, "dhcp.boot_files") else {
        return;
    };
    let mut file = |r: &mut Report, key: &str| -> Option<String> {
        let v = b.get(key)?;
        let s = r.string(v, key)?;
        if !crate::values::safe_relative(&s) {
            r.add(v.pos, format!("dhcp.boot_files.{key}: {s:?} must be a relative file name of letters, digits and . _ - /"));
            return None;
        }
        Some(s)
    };
    if let Some(f) = file(r, "bios") {
        bf.bios = f;
    }
    if let Some(f) = file(r, "uefi_x64") {
        bf.uefi_x64 = f;
    }
    if let Some(f) = file(r, "uefi_http") {
        bf.uefi_http = f;
    }
    bf.uefi_ia32 = file(r, "uefi_ia32").or(bf.uefi_ia32.take());
    bf.arm64 = file(r, "arm64").or(bf.arm64.take());
    b.deny_unknown(
        r,
        "dhcp.boot_files",
        &["bios", "uefi_x64", "uefi_ia32", "arm64", "uefi_http"],
    );
}

/// `loaders`: the folder UEFI HTTP boot fetches its loader from (at `{http.url}/tftp/`).
/// Without the key: TFTP's root when TFTP is on (one folder for both), else
/// `/usr/lib/ipxe` (Debian's ipxe), so an HTTP-boot-only site needs no TFTP section.
fn read_loaders(
    r: &mut Report,
    n: Option<&Node>,
    dir: &Path,
    tftp: Option<&TftpConfig>,
) -> PathBuf {
    if let Some(s) = n.and_then(|n| r.string(n, "loaders")) {
        return relative_to(dir, s);
    }
    tftp.map_or_else(|| PathBuf::from("/usr/lib/ipxe"), |t| t.root.clone())
}

/// The `tftp` section; `None` when it says `enabled: false`.
fn read_tftp(r: &mut Report, node: &Node, dir: &Path) -> Option<TftpConfig> {
    let mut m = r.map(node, "tftp")?;
    let mut t = TftpConfig {
        root: PathBuf::from("/usr/lib/ipxe"),
        ..TftpConfig::default()
    };
    let mut enabled = true;
    if let Some(n) = m.get("enabled") {
        enabled = r.boolean(n, "tftp.enabled").unwrap_or(true);
    }
    if let Some(n) = m.get("root") {
        if let Some(s) = r.string(n, "tftp.root") {
            t.root = relative_to(dir, s);
        }
    }
    if let Some(n) = m.get("max_transfers") {
        match r.parsed::<usize>(n, "tftp.max_transfers", "a whole number from 1") {
            Some(0) => r.add(n.pos, "tftp.max_transfers must be at least 1"),
            Some(v) => t.max_transfers = v,
            None => {}
        }
    }
    if let Some(n) = m.get("max_transfers_per_client") {
        match r.parsed::<usize>(n, "tftp.max_transfers_per_client", "a whole number from 1") {
            Some(0) => r.add(n.pos, "tftp.max_transfers_per_client must be at least 1"),
            Some(v) => t.max_transfers_per_client = v,
            None => {}
        }
    }
    if let Some(n) = m.get("max_window") {
        match r.parsed::<u16>(n, "tftp.max_window", "a whole number from 1 to 64") {
            Some(v @ 1..=64) => t.max_window = v,
            Some(_) => r.add(
                n.pos,
                "tftp.max_window must be from 1 to 64 (larger windows break some clients)",
            ),
            None => {}
        }
    }
    m.deny_unknown(
        r,
        "tftp",
        &[
            "enabled",
            "root",
            "max_transfers",
            "max_transfers_per_client",
            "max_window",
        ],
    );
    enabled.then_some(t)
}

fn read_http(r: &mut Report, node: Option<&Node>, dir: &Path) -> HttpConfig {
    let mut http = HttpConfig {
        listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
        url: None,
        limits: HttpLimits::default(),
        tls: None,
        read_auth: None,
    };
    let Some(mut m) = node.and_then(|n| r.map(n, "http")) else {
        return http;
    };
    if let Some(n) = m.get("listen") {
        if let Some(a) = r.parsed::<SocketAddr>(
            n,
            "http.listen",
            "an address with a port, such as 0.0.0.0:8080",
        ) {
            http.listen = a;
        }
    }
    if let Some(n) = m.get("url") {
        if let Some(s) = r.string(n, "http.url") {
            let s = s.trim_end_matches('/').to_string();
            if !(s.starts_with("http://") || s.starts_with("https://"))
                || !s[s.find("//").unwrap_or(0) + 2..]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-:[]/_".contains(c))
            {
                r.add(n.pos, format!("http.url: {s:?} must be an http:// URL such as http://198.18.0.1:8080 (letters, digits and . - : / only)"));
            } else {
                http.url = Some(s);
            }
        }
    }
    if let Some(n) = m.get("header_timeout") {
        match r
            .string(n, "http.header_timeout")
            .map(|s| (parse_duration(&s), s))
        {
            Some((Some(d), _)) if d.as_secs() >= 1 => http.limits.header_timeout = d,
            Some((_, s)) => r.add(
                n.pos,
                format!("http.header_timeout: {s:?} is not a duration of at least 1s, such as 10s"),
            ),
            None => {}
        }
    }
    for (key, slot) in [
        ("max_connections", &mut http.limits.max_connections),
        (
            "max_connections_per_client",
            &mut http.limits.max_connections_per_client,
        ),
    ] {
        if let Some(n) = m.get(key) {
            match r.parsed::<usize>(n, &format!("http.{key}"), "a whole number from 1") {
                Some(0) => r.add(n.pos, format!("http.{key} must be at least 1")),
                Some(v) => *slot = v,
                None => {}
            }
        }
    }
    if let Some(n) = m.get("read_auth") {
        if r.boolean(n, "http.read_auth") == Some(true) {
            http.read_auth = Some(n.pos);
        }
    }
    if let Some(n) = m.get("tls") {
        http.tls = read_tls(r, n, dir);
        if let Some(t) = &http.tls {
            if t.listen == http.listen && t.listen.port() != 0 {
                r.add(
                    n.pos,
                    format!("http.tls.listen: {} is http.listen too; the TLS listener needs its own port, such as 8443", t.listen),
                );
            }
        }
    }
    m.deny_unknown(
        r,
        "http",
        &[
            "listen",
            "url",
            "header_timeout",
            "max_connections",
            "max_connections_per_client",
            "tls",
            "read_auth",
        ],
    );
    http
}

fn read_tls(r: &mut Report, node: &Node, dir: &Path) -> Option<TlsConfig> {
    let mut m = r.map(node, "http.tls")?;
    let listen = match m.get("listen") {
        Some(n) => r.parsed::<SocketAddr>(
            n,
            "http.tls.listen",
            "an address with a port, such as 0.0.0.0:8443",
        ),
        None => Some(SocketAddr::from(([0, 0, 0, 0], 8443))),
    };
    let mut file = |key: &str| match m.get(key) {
        Some(n) => r
            .string(n, &format!("http.tls.{key}"))
            .map(|s| (relative_to(dir, s), n.pos)),
        None => {
            r.add(
                node.pos,
                format!(
                    "http.tls.{key} is required: the {} as a PEM file",
                    if key == "cert" {
                        "certificate chain (the server's certificate first)"
                    } else {
                        "private key"
                    }
                ),
            );
            None
        }
    };
    let cert = file("cert");
    let key = file("key");
    m.deny_unknown(r, "http.tls", &["listen", "cert", "key"]);
    let ((cert, cert_pos), (key, key_pos)) = (cert?, key?);
    Some(TlsConfig {
        listen: listen?,
        cert,
        key,
        cert_pos,
        key_pos,
    })
}

fn read_stemcell(r: &mut Report, node: Option<&Node>, dir: &Path) -> StemcellFiles {
    let mut stemcell = StemcellFiles {
        kernel: dir.join("stemcell/vmlinuz"),
        initrd: dir.join("stemcell/initrd.img"),
        cmdline: String::new(),
    };
    let Some(mut m) = node.and_then(|n| r.map(n, "stemcell")) else {
        return stemcell;
    };
    if let Some(n) = m.get("kernel") {
        if let Some(s) = r.string(n, "stemcell.kernel") {
            stemcell.kernel = relative_to(dir, s);
        }
    }
    if let Some(n) = m.get("initrd") {
        if let Some(s) = r.string(n, "stemcell.initrd") {
            stemcell.initrd = relative_to(dir, s);
        }
    }
    if let Some(n) = m.get("cmdline") {
        if let Some(s) = r.string(n, "stemcell.cmdline") {
            if let Some(bad) = s.chars().find(|c| !crate::values::cmdline_char(*c)) {
                r.add(n.pos, format!("stemcell.cmdline contains {bad:?}; allowed are letters, digits, spaces and . _ - : / = , + @ % ?"));
            } else {
                stemcell.cmdline = s;
            }
        }
    }
    m.deny_unknown(r, "stemcell", &["kernel", "initrd", "cmdline"]);
    stemcell
}

/// `dhcp.ipv6: {server_ip, prefix, lease_time, dns}`.
fn read_dhcp6(r: &mut Report, node: &Node) -> Option<Dhcp6Config> {
    let mut m = r.map(node, "dhcp.ipv6")?;
    let server_ip = match m.get("server_ip") {
        Some(n) => r.parsed::<Ipv6Addr>(
            n,
            "dhcp.ipv6.server_ip",
            "an IPv6 address such as fd00:5ce1::1",
        ),
        None => {
            r.add(node.pos, "dhcp.ipv6 needs `server_ip:` (stemcell's IPv6 address on the interface, such as fd00:5ce1::1)");
            None
        }
    };
    let prefix = match m.get("prefix") {
        Some(n) => r
            .parsed::<Ipv6Network>(n, "dhcp.ipv6.prefix", "an IPv6 /64 such as fd00:5ce1::/64")
            .and_then(|p| {
                if p.prefix() != 64 {
                    r.add(n.pos, format!("dhcp.ipv6.prefix {p} must be a /64: each NIC gets its EUI-64 address in it"));
                    return None;
                }
                Some(Ipv6Network::new(p.network(), 64).expect("a /64"))
            }),
        None => {
            r.add(node.pos, "dhcp.ipv6 needs `prefix:` (the link's /64, such as fd00:5ce1::/64)");
            None
        }
    };
    if let (Some(ip), Some(p), Some(n)) = (server_ip, prefix, m.get("server_ip")) {
        if !p.contains(ip) {
            r.add(
                n.pos,
                format!("dhcp.ipv6.server_ip {ip} is outside dhcp.ipv6.prefix {p}"),
            );
        }
    }
    let mut lease_time = Duration::from_secs(3600);
    if let Some(n) = m.get("lease_time") {
        match n.as_str().and_then(parse_duration) {
            Some(d) if d >= Duration::from_secs(60) => lease_time = d,
            _ => r.add(
                n.pos,
                "dhcp.ipv6.lease_time must be a duration of at least 60s, such as 3600, 30m or 12h",
            ),
        }
    }
    let mut dns = Vec::new();
    if let Some(n) = m.get("dns") {
        for item in r.list(n, "dhcp.ipv6.dns").unwrap_or_default() {
            if let Some(ip) = r.parsed::<Ipv6Addr>(item, "dhcp.ipv6.dns", "an IPv6 address") {
                dns.push(ip);
            }
        }
    }
    m.deny_unknown(
        r,
        "dhcp.ipv6",
        &["server_ip", "prefix", "lease_time", "dns"],
    );
    Some(Dhcp6Config {
        server_ip: server_ip?,
        prefix: prefix?,
        lease_time,
        dns,
        pos: node.pos,
    })
}

fn parse_subnet(r: &mut Report, node: &Node) -> Option<Subnet> {
    let mut m = r.map(node, "a dhcp.subnets entry")?;
    let net = match m.get("subnet") {
        Some(n) => r.parsed::<Ipv4Network>(n, "subnet", "an IPv4 network such as 198.18.0.0/24"),
        None => {
            r.add(node.pos, "a subnet needs `subnet:` (such as 198.18.0.0/24)");
            None
        }
    };
    let net = net.map(|n| Ipv4Network::new(n.network(), n.prefix()).expect("prefix already valid"));
    let mut pool = None;
    if let Some(n) = m.get("pool") {
        let items = r.list(n, "pool").unwrap_or_default();
        if items.len() != 2 {
            r.add(n.pos, "pool must be [first, last], two IPv4 addresses such as [198.18.0.100, 198.18.0.199]");
        } else {
            let a = r.parsed::<Ipv4Addr>(items[0], "pool start", "an IPv4 address");
            let b = r.parsed::<Ipv4Addr>(items[1], "pool end", "an IPv4 address");
            if let (Some(a), Some(b)) = (a, b) {
                if a > b {
                    r.add(n.pos, format!("pool starts at {a} after it ends at {b}"));
                } else if let Some(net) = net {
                    for (ip, it) in [(a, items[0]), (b, items[1])] {
                        if !net.contains(ip) || ip == net.network() || ip == net.broadcast() {
                            r.add(
                                it.pos,
                                format!("pool address {ip} is not a host address of subnet {net}"),
                            );
                        }
                    }
                    pool = Some((a, b));
                }
            }
        }
    } else {
        r.add(node.pos, "a subnet needs `pool: [first, last]`");
    }
    let router = m.get("router").and_then(|n| {
        let ip = r.parsed::<Ipv4Addr>(n, "router", "an IPv4 address")?;
        if let Some(net) = net {
            if !net.contains(ip) {
                r.add(n.pos, format!("router {ip} is outside subnet {net}"));
            }
        }
        Some(ip)
    });
    let mut dns = Vec::new();
    if let Some(n) = m.get("dns") {
        for item in r.list(n, "dns").unwrap_or_default() {
            if let Some(ip) = r.parsed::<Ipv4Addr>(item, "dns", "an IPv4 address") {
                dns.push(ip);
            }
        }
    }
    let domain = m.get("domain").and_then(|n| {
        let s = r.string(n, "domain")?;
        if !crate::values::valid_hostname(&s) {
            r.add(n.pos, format!("domain {s:?} is not a valid DNS name"));
            return None;
        }
        Some(s)
    });
    let mut lease_time = Duration::from_secs(3600);
    if let Some(n) = m.get("lease_time") {
        match n.as_str().and_then(parse_duration) {
            Some(d) if d >= Duration::from_secs(60) => lease_time = d,
            Some(_) => r.add(n.pos, "lease_time must be at least 60s"),
            None => r.add(
                n.pos,
                "lease_time must be a duration such as 3600, 90s, 30m, 12h or 7d",
            ),
        }
    }
    m.deny_unknown(
        r,
        "a dhcp.subnets entry",
        &["subnet", "pool", "router", "dns", "domain", "lease_time"],
    );
    let (pool_start, pool_end) = pool?;
    Some(Subnet {
        net: net?,
        pool_start,
        pool_end,
        router,
        dns,
        domain,
        lease_time,
    })
}

/// `3600`, `90s`, `30m`, `12h`, `7d`.
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = num.parse().ok()?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    n.checked_mul(mult).map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, Problems> {
        Config::parse(Path::new("/etc/stemcell/stemcell.yaml"), s)
    }

    const FULL: &str = "interface: br0
server_ip: 198.18.0.1
dhcp:
  mode: authoritative
  subnets:
    - subnet: 198.18.0.0/24
      pool: [198.18.0.100, 198.18.0.199]
      router: 198.18.0.1
      dns: [198.18.0.1]
      lease_time: 1h
tftp:
  root: /usr/lib/ipxe
http:
  listen: 0.0.0.0:8080
  url: http://198.18.0.1:8080
stemcell:
  kernel: stemcell/vmlinuz
  initrd: stemcell/initrd.img
inventory: inventory.yaml
kickstarts: kickstarts
state_dir: /var/lib/stemcell
admin_token_file: admin.token
";

    /// `dhcp.ipv6`: parsed into the DHCPv6 settings; each mistake named with its position.
    #[test]
    fn dhcp_ipv6_parses_and_says_what_is_wrong() {
        let v6 = |block: &str, listen: &str| {
            FULL.replace(
                "      lease_time: 1h\n",
                &format!("      lease_time: 1h\n  ipv6:\n{block}"),
            )
            .replace("  listen: 0.0.0.0:8080\n", &format!("  listen: {listen}\n"))
        };
        let good =
            "    server_ip: fd00:5ce1::1\n    prefix: fd00:5ce1::/64\n    dns: [fd00:5ce1::53]\n";
        let c = parse(&v6(good, "\"[::]:8080\"")).unwrap();
        let s = c.dhcp6_settings(8080).unwrap().unwrap();
        assert_eq!(s.http_url, "http://[fd00:5ce1::1]:8080");
        assert_eq!(s.prefix.to_string(), "fd00:5ce1::/64");
        assert_eq!(s.dns, vec!["fd00:5ce1::53".parse::<Ipv6Addr>().unwrap()]);
        assert!(s.tftp);
        assert!(parse(FULL).unwrap().dhcp6_settings(8080).unwrap().is_none());

        let e = parse(&v6(good, "0.0.0.0:8080")).unwrap_err().to_string();
        assert!(
            e.contains("stemcell.yaml:12:5: dhcp.ipv6: http.listen 0.0.0.0:8080 does not reach fd00:5ce1::1"),
            "{e}"
        );
        let e = parse(&v6(
            "    server_ip: fd00:5ce1::1\n    prefix: fd00:5ce1::/48\n",
            "\"[::]:8080\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(":13:13: dhcp.ipv6.prefix fd00:5ce1::/48 must be a /64"),
            "{e}"
        );
        let e = parse(&v6(
            "    server_ip: fd00:1::1\n    prefix: fd00:5ce1::/64\n",
            "\"[::]:8080\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(":12:16: dhcp.ipv6.server_ip fd00:1::1 is outside"),
            "{e}"
        );
        let e = parse(&v6(
            "    prefix: fd00:5ce1::/64\n    lease: 1h\n",
            "\"[::]:8080\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("dhcp.ipv6 needs `server_ip:`"), "{e}");
        assert!(e.contains("unknown key \"lease\" in dhcp.ipv6"), "{e}");
        let proxy = v6(good, "\"[::]:8080\"").replace("mode: authoritative", "mode: proxy");
        let e = parse(&proxy).unwrap_err().to_string();
        assert!(e.contains("dhcp.ipv6 needs dhcp.mode authoritative"), "{e}");
    }

    #[test]
    fn the_install_token_is_bound_to_the_lease_unless_switched_off() {
        assert!(parse(FULL).unwrap().dhcp.install_token_from_lease);
        let off = FULL.replace(
            "      lease_time: 1h\n",
            "      lease_time: 1h\n  install_token_from_lease: false\n",
        );
        assert!(!parse(&off).unwrap().dhcp.install_token_from_lease);
        let bad = FULL.replace(
            "      lease_time: 1h\n",
            "      lease_time: 1h\n  install_token_from_lease: sometimes\n",
        );
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.contains("dhcp.install_token_from_lease"), "{e}");
    }

    /// TFTP's bounds: all transfers and one client address's, each at least 1.
    #[test]
    fn tftp_transfer_bounds() {
        let c = parse(&FULL.replace(
            "  root: /usr/lib/ipxe",
            "  root: /usr/lib/ipxe\n  max_transfers: 100\n  max_transfers_per_client: 2",
        ))
        .unwrap();
        let t = c.tftp.unwrap();
        assert_eq!((t.max_transfers, t.max_transfers_per_client), (100, 2));
        assert_eq!(
            parse(FULL).unwrap().tftp.unwrap().max_transfers_per_client,
            8
        );
        let e = parse(&FULL.replace(
            "  root: /usr/lib/ipxe",
            "  root: /usr/lib/ipxe\n  max_transfers_per_client: 0",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("tftp.max_transfers_per_client must be at least 1"),
            "{e}"
        );
    }

    /// `loaders` (UEFI HTTP boot's folder): TFTP's root by default, Debian's iPXE folder
    /// with TFTP off, or the key, relative to the config; DHCP learns whether TFTP is on.
    #[test]
    fn loaders_follow_tftp_unless_set_and_dhcp_knows_when_tftp_is_off() {
        let ip = Ipv4Addr::new(198, 18, 0, 1);
        let url = "http://198.18.0.1:8080";
        let c = parse(&FULL.replace("  root: /usr/lib/ipxe", "  root: tftproot")).unwrap();
        assert_eq!(c.loaders, PathBuf::from("/etc/stemcell/tftproot"));
        assert!(c.dhcp_settings(ip, url).unwrap().boot_files.tftp);
        for no_tftp in [
            FULL.replace("tftp:\n  root: /usr/lib/ipxe\n", ""),
            FULL.replace("  root: /usr/lib/ipxe", "  enabled: false"),
        ] {
            let c = parse(&no_tftp).unwrap();
            assert!(c.tftp.is_none());
            assert_eq!(c.loaders, PathBuf::from("/usr/lib/ipxe"));
            assert!(!c.dhcp_settings(ip, url).unwrap().boot_files.tftp);
            let c = parse(&format!("{no_tftp}loaders: efi\n")).unwrap();
            assert_eq!(c.loaders, PathBuf::from("/etc/stemcell/efi"));
        }
        let e = parse(&format!("{FULL}loaders: [a, b]\n")).unwrap_err();
        assert!(e.to_string().contains(":23:10: loaders"), "{e}");
    }

    #[test]
    fn installer_boots_defaults_to_three_and_refuses_zero() {
        assert_eq!(parse(FULL).unwrap().installer_boots, 3);
        assert_eq!(
            parse(&format!("{FULL}installer_boots: 5\n"))
                .unwrap()
                .installer_boots,
            5
        );
        let e = parse(&format!("{FULL}installer_boots: 0\n")).unwrap_err();
        assert!(
            e.to_string()
                .contains(":23:18: installer_boots must be at least 1"),
            "{e}"
        );
        let e = parse(&format!("{FULL}installer_boots: many\n")).unwrap_err();
        assert!(e.to_string().contains("installer_boots"), "{e}");
    }

    #[test]
    fn tls_needs_its_files_and_its_own_port() {
        let c = parse(&FULL.replace(
            "  url: http://198.18.0.1:8080\n",
            "  url: http://198.18.0.1:8080\n  tls:\n    listen: 0.0.0.0:8443\n    cert: tls/cert.pem\n    key: /etc/stemcell/key.pem\n",
        ))
        .unwrap();
        let t = c.http.tls.unwrap();
        assert_eq!(t.listen, "0.0.0.0:8443".parse().unwrap());
        assert_eq!(t.cert, Path::new("/etc/stemcell/tls/cert.pem"));
        assert_eq!(t.key, Path::new("/etc/stemcell/key.pem"));
        assert_eq!((t.cert_pos.line, t.key_pos.line), (18, 19));
        let e = parse(&FULL.replace(
            "  url: http://198.18.0.1:8080\n",
            "  tls:\n    listen: 0.0.0.0:8080\n    cert: c.pem\n    kee: k.pem\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("stemcell.yaml:16:5: http.tls.key is required"),
            "{e}"
        );
        assert!(e.contains("unknown key \"kee\" in http.tls"), "{e}");
        let e = parse(&FULL.replace(
            "  url: http://198.18.0.1:8080\n",
            "  tls:\n    listen: 0.0.0.0:8080\n    cert: c.pem\n    key: k.pem\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("16:5: http.tls.listen: 0.0.0.0:8080 is http.listen too"),
            "{e}"
        );
    }

    #[test]
    fn read_auth_needs_a_token_to_read_with() {
        let no_tokens = FULL.replace("admin_token_file: admin.token\n", "");
        let e = parse(&no_tokens.replace(
            "  url: http://198.18.0.1:8080\n",
            "  url: http://198.18.0.1:8080\n  read_auth: true\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(
                "stemcell.yaml:16:14: http.read_auth needs admin_token_file or read_token_file"
            ),
            "{e}"
        );
        let c = parse(&format!(
            "{}read_token_file: read.token\n",
            no_tokens.replace(
                "  url: http://198.18.0.1:8080\n",
                "  url: http://198.18.0.1:8080\n  read_auth: true\n",
            )
        ))
        .unwrap();
        assert!(c.http.read_auth.is_some());
        assert_eq!(
            c.read_token_file.as_deref(),
            Some(Path::new("/etc/stemcell/read.token"))
        );
        assert!(
            parse(&FULL.replace("  url: http://198.18.0.1:8080\n", "  read_auth: maybe\n"))
                .is_err()
        );
    }

    #[test]
    fn the_documented_example_parses() {
        let c = parse(FULL).unwrap();
        assert_eq!(c.interface.as_deref(), Some("br0"));
        assert_eq!(c.dhcp.mode, DhcpMode::Authoritative);
        assert_eq!(c.dhcp.subnets[0].lease_time, Duration::from_secs(3600));
        assert_eq!(c.inventory, PathBuf::from("/etc/stemcell/inventory.yaml"));
        assert_eq!(
            c.stemcell.kernel,
            PathBuf::from("/etc/stemcell/stemcell/vmlinuz")
        );
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/stemcell"));
        assert_eq!(c.server_url(c.server_ip.unwrap()), "http://198.18.0.1:8080");
    }

    #[test]
    fn an_invented_key_anywhere_is_refused_with_its_position() {
        // Like hickory-dns: every level of the example, with one invented key added.
        let e = parse(&FULL.replace("  listen:", "  lisen: 1\n  listen:")).unwrap_err();
        assert!(
            e.to_string().contains(
                "stemcell.yaml:14:3: unknown key \"lisen\" in http (did you mean \"listen\"?)"
            ),
            "{e}"
        );
        let e = parse(&format!("{FULL}colour: blue\n")).unwrap_err();
        assert!(
            e.to_string().contains(":23:1: unknown key \"colour\""),
            "{e}"
        );
        let e =
            parse(&FULL.replace("      router:", "      gateway: 1\n      router:")).unwrap_err();
        assert!(
            e.to_string().contains(":8:7: unknown key \"gateway\""),
            "{e}"
        );
    }

    #[test]
    fn bad_values_say_what_would_be_valid() {
        let e = parse(&FULL.replace("mode: authoritative", "mode: full")).unwrap_err();
        assert!(
            e.to_string()
                .contains(":4:9: dhcp.mode must be one of: proxy, authoritative, off"),
            "{e}"
        );
        let e = parse(&FULL.replace("198.18.0.199]", "198.18.1.199]")).unwrap_err();
        assert!(
            e.to_string()
                .contains("not a host address of subnet 198.18.0.0/24"),
            "{e}"
        );
        let e = parse(&FULL.replace("lease_time: 1h", "lease_time: soon")).unwrap_err();
        assert!(
            e.to_string()
                .contains(":10:19: lease_time must be a duration"),
            "{e}"
        );
        let e = parse("dhcp: {mode: proxy}\n").unwrap_err();
        assert!(e.to_string().contains("interface is required"), "{e}");
        assert!(parse("dhcp: {mode: off}\n").is_ok());
    }

    #[test]
    fn an_unreadable_config_says_its_cause_once() {
        let e = Config::load(Path::new("/nonexistent/stemcell.yaml")).unwrap_err();
        // As the CLI prints it: the error and its chain of sources.
        let shown = format!("{:#}", anyhow::Error::from(e));
        assert_eq!(
            shown.matches("No such file or directory").count(),
            1,
            "{shown}"
        );
        assert!(
            shown.starts_with("/nonexistent/stemcell.yaml: cannot read"),
            "{shown}"
        );
    }

    #[test]
    fn grub_files_default_to_debians_and_can_be_moved() {
        let c = parse("dhcp: {mode: off}\n").unwrap();
        let x64 = c.grub.iter().find(|g| g.arch.key == "uefi_x64").unwrap();
        assert_eq!(x64.shim, Path::new("/usr/lib/shim/shimx64.efi.signed"));
        assert_eq!(
            x64.grub,
            Path::new("/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed")
        );
        assert_eq!(x64.pos, None);
        let c = parse("dhcp: {mode: off}\ngrub:\n  uefi_x64: {shim: sb/shim.efi, grub: /nowhere/grubnet.efi}\n").unwrap();
        let x64 = c.grub.iter().find(|g| g.arch.key == "uefi_x64").unwrap();
        assert_eq!(x64.shim, Path::new("/etc/stemcell/sb/shim.efi"));
        assert!(x64.pos.is_some());
        // A missing file names the key, the path and the package that ships the default.
        let missing = x64.missing();
        assert!(missing.iter().any(|m| m == "grub.uefi_x64.shim: /etc/stemcell/sb/shim.efi is missing (Debian's package shim-signed installs it)"), "{missing:?}");
        assert!(missing.iter().any(|m| m == "grub.uefi_x64.grub: /nowhere/grubnet.efi is missing (Debian's package grub-efi-amd64-signed installs it)"), "{missing:?}");
        let e = parse("dhcp: {mode: off}\ngrub:\n  uefi_x86: {shim: a}\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("stemcell.yaml:3:3: unknown key \"uefi_x86\" in grub"),
            "{e}"
        );
        let e = parse("dhcp: {mode: off}\ngrub:\n  arm64: {shim: a, loader: b}\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("unknown key \"loader\" in grub.arm64"),
            "{e}"
        );
    }

    #[test]
    fn store_postgres() {
        let c = parse("dhcp: {mode: off}\n").unwrap();
        assert_eq!(c.postgres, None, "the journals without store:");
        let c = parse("dhcp: {mode: off}\nstore:\n  postgres:\n    url: \"host=/run/postgresql dbname=sc\"\n    password_file: db.pw\n").unwrap();
        let pg = c.postgres.unwrap();
        assert_eq!(pg.url, "host=/run/postgresql dbname=sc");
        assert!(pg.password_file.unwrap().ends_with("db.pw"));
        for (text, want) in [
            (
                "store:\n  postgres: {password_file: x}\n",
                "stemcell.yaml:3:13: store.postgres needs url:",
            ),
            (
                "store:\n  postgres: {url: \"\"}\n",
                "store.postgres.url is empty",
            ),
            (
                "store:\n  postgres: {url: \"postgresql://[::1\"}\n",
                "store.postgres.url: ",
            ),
            (
                "store:\n  postgres: {url: x, pasword_file: y}\n",
                "unknown key \"pasword_file\" in store.postgres",
            ),
            (
                "store:\n  mysql: {url: x}\n",
                "unknown key \"mysql\" in store",
            ),
        ] {
            let e = parse(&format!("dhcp: {{mode: off}}\n{text}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Some(Duration::from_secs(1800)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(604800)));
        assert_eq!(parse_duration("1w"), None);
        assert_eq!(parse_duration("h"), None);
    }
}
