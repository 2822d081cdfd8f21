//! DHCP for network boot: proxyDHCP next to a site's own DHCP server, or an authoritative
//! DHCP server with pools, reservations and durable leases.
//!
//! Owns the answers to DHCP and PXE boot-server requests on the one configured interface:
//! who is asking ([`classify`]: PXE, UEFI HTTP boot, iPXE; architecture), which boot file
//! they get, and in authoritative mode which address. It leaves the inventory to the
//! caller (the [`Directory`] trait), machine history to the caller (the [`DhcpObserver`]
//! trait), address bookkeeping to [`crate::leases`], and file transfer to TFTP and HTTP.
//!
//! Layout, from pure to I/O: [`wire`] decodes and encodes messages; [`classify`] reads the
//! client's firmware; [`decide`] turns one request (plus inventory, leases and `now`) into
//! a reply or nothing; [`serve`] is the socket loop.
//!
//! Standards: RFC 2131 (DHCP: §4.1 where replies go, §4.3 server behaviour in each client
//! state), RFC 2132 (options), RFC 3396 (long options), RFC 3004 (user class), RFC 3046
//! (relay agent information, echoed), RFC 4578 (PXE options 93, 94, 97), PXE 2.1 (proxyDHCP
//! and the boot server on port 4011), UEFI 2.5 §24.7 (HTTP boot, "HTTPClient").
//!
//! # Proxy mode (the default)
//! Only network-boot clients are answered (option 60 "PXEClient"/"HTTPClient", or iPXE),
//! never with an address (yiaddr 0.0.0.0): the site's DHCP server hands out addresses. A
//! DISCOVER on port 67 gets an OFFER; a REQUEST on port 4011 (UEFI firmware and iPXE ask
//! the proxy there, unicast) gets an ACK sent back to its source. Replies carry option 54,
//! option 60, option 97 echoed, siaddr, `file` and option 67. BIOS PXE and iPXE also get
//! option 43 with PXE discovery control 8 ("boot the named file, no boot server
//! discovery"), as Pixiecore does. UEFI PXE gets no option 43: some UEFI firmware ignores
//! proxy offers that bypass discovery, while EDK2 treats an offer without it as a "BINL"
//! offer and asks again on port 4011, where it gets its file.
//!
//! # Authoritative mode
//! Every client gets an address from the subnet of the relay (giaddr), of its current
//! address (ciaddr), or of the server's own address; network-boot clients also get their
//! boot file (no option 43 and no "PXEClient" option 60, so UEFI boots the file directly
//! instead of asking on port 4011; HTTP boot gets option 60 "HTTPClient", which UEFI
//! requires). Unknown machines under the inventory's `ignore` policy get an address but no
//! boot file.

pub(crate) mod classify;
pub(crate) mod decide;
pub(crate) mod limit;
pub(crate) mod serve;
pub(crate) mod wire;

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ipnetwork::Ipv4Network;
use serde::Serialize;

use crate::leases::PoolRange;
use crate::mac::MacAddr;

pub(crate) use classify::{Arch, ClientClass};
pub(crate) use decide::DhcpServer;
pub(crate) use serve::{serve, Sockets};
pub(crate) use wire::MessageType;

/// Server port for DHCP.
pub(crate) const DHCP_SERVER_PORT: u16 = 67;
/// Client port for DHCP.
pub(crate) const DHCP_CLIENT_PORT: u16 = 68;
/// PXE boot server discovery port (proxyDHCP requests from UEFI firmware and iPXE).
pub(crate) const PXE_PORT: u16 = 4011;

/// Packet counters (for metrics). Relaxed atomics: they are statistics.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Datagrams received.
    pub(crate) received: AtomicU64,
    /// Not DHCP (too short, no magic cookie) or with an option running past the end.
    pub(crate) malformed: AtomicU64,
    /// Well-formed but not for us (replies, plain clients in proxy mode, our own…).
    pub(crate) ignored: AtomicU64,
    /// Replies sent.
    pub(crate) sent: AtomicU64,
    /// Replies the kernel refused to send.
    pub(crate) send_errors: AtomicU64,
    /// Binds whose lease could not be made durable (no ACK, or one with the time on disk).
    pub(crate) journal_errors: AtomicU64,
    /// Renewals whose extension could not be written, ACKed with the lease end already on
    /// disk.
    pub(crate) acked_on_disk: AtomicU64,
    /// Requests dropped by the per-client or per-relay rate limit.
    pub(crate) rate_limited: AtomicU64,
    /// Binds another server sharing the lease database won first (answered with a NAK).
    pub(crate) lost_races: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Each counter with its metric label, for `/metrics`.
    pub(crate) fn snapshot(&self) -> [(&'static str, u64); 9] {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("received", g(&self.received)),
            ("malformed", g(&self.malformed)),
            ("ignored", g(&self.ignored)),
            ("sent", g(&self.sent)),
            ("send_error", g(&self.send_errors)),
            ("journal_error", g(&self.journal_errors)),
            ("ack_on_disk_time", g(&self.acked_on_disk)),
            ("rate_limited", g(&self.rate_limited)),
            ("lost_race", g(&self.lost_races)),
        ]
    }
}

/// What the DHCP service does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Mode {
    /// Answer network-boot clients only, never hand out addresses.
    #[default]
    Proxy,
    /// A full DHCP server for the configured subnets.
    Authoritative,
    /// No DHCP at all.
    Off,
}

/// Which network loader a machine runs after its firmware: iPXE (the default) or GRUB
/// behind shim (UEFI only; Secure Boot machines need it: Debian's iPXE is not signed).
/// Chosen per site (the inventory's `defaults.loader`) and per role (`loader:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Loader {
    #[default]
    Ipxe,
    Grub,
}

impl Loader {
    pub(crate) fn parse(s: &str) -> Option<Loader> {
        match s {
            "ipxe" => Some(Loader::Ipxe),
            "grub" => Some(Loader::Grub),
            _ => None,
        }
    }
}

/// The GRUB chain of one UEFI architecture: the names firmware and shim ask TFTP for,
/// the Debian files behind them and the packages that ship those. The one table of
/// arch-specific GRUB file names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GrubArch {
    pub(crate) arch: Arch,
    /// The `stemcell.yaml` key under `grub:` (`uefi_x64`, `arm64`).
    pub(crate) key: &'static str,
    /// What DHCP hands out: shim, signed by Microsoft's UEFI CA.
    pub(crate) shim: &'static str,
    pub(crate) shim_path: &'static str,
    pub(crate) shim_package: &'static str,
    /// What shim loads next from the same TFTP folder: GRUB's signed network image.
    pub(crate) grub: &'static str,
    pub(crate) grub_path: &'static str,
    pub(crate) grub_package: &'static str,
    /// GRUB's platform folder: it tries `/grub/PLATFORM/grub.cfg`, then `/grub/grub.cfg`.
    pub(crate) platform: &'static str,
}

pub(crate) const GRUB_ARCHES: [GrubArch; 2] = [
    GrubArch {
        arch: Arch::UefiX64,
        key: "uefi_x64",
        shim: "shimx64.efi",
        shim_path: "/usr/lib/shim/shimx64.efi.signed",
        shim_package: "shim-signed",
        grub: "grubx64.efi",
        grub_path: "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed",
        grub_package: "grub-efi-amd64-signed",
        platform: "x86_64-efi",
    },
    GrubArch {
        arch: Arch::UefiArm64,
        key: "arm64",
        shim: "shimaa64.efi",
        shim_path: "/usr/lib/shim/shimaa64.efi.signed",
        shim_package: "shim-signed",
        grub: "grubaa64.efi",
        grub_path: "/usr/lib/grub/arm64-efi-signed/grubnetaa64.efi.signed",
        grub_package: "grub-efi-arm64-signed",
        platform: "arm64-efi",
    },
];

/// The GRUB chain for a firmware architecture, if GRUB has one (not BIOS, not IA32).
pub(crate) fn grub_arch(arch: Arch) -> Option<&'static GrubArch> {
    GRUB_ARCHES.iter().find(|g| g.arch == arch)
}

/// Boot files by client class. TFTP file names (relative to the TFTP root), also served
/// over HTTP under `{http_url}/tftp/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BootFiles {
    /// x86 BIOS PXE: iPXE for PXE ROMs (chainloads over the ROM's UNDI driver).
    pub(crate) bios: String,
    /// x86-64 UEFI PXE: iPXE using the firmware's network driver (SNP).
    pub(crate) uefi_x64: String,
    /// 32-bit x86 UEFI. Debian's ipxe package has none; None refuses these clients with
    /// a clear event instead of handing them an x86-64 binary.
    pub(crate) uefi_ia32: Option<String>,
    /// ARM64 UEFI (e.g. an iPXE `snponly.efi` built for arm64). None: refused, as above.
    pub(crate) arm64: Option<String>,
    /// UEFI HTTP boot (x86-64): fetched as `{http_url}/tftp/{uefi_http}`. Not `ipxe.efi`
    /// by default: Debian's is a symlink out of /usr/lib/ipxe, which the jail refuses.
    pub(crate) uefi_http: String,
    /// TFTP is served. Without it (an HTTP-boot-only site) PXE firmware is still told its
    /// TFTP file, with [`Refusal::NoTftp`] in its event: a read nobody answers fails at
    /// once and the firmware moves on to HTTP boot, where an offer without a file makes
    /// EDK2 ask again for about a minute (docs/firmware.md, "UEFI HTTP Boot").
    pub(crate) tftp: bool,
}

impl Default for BootFiles {
    fn default() -> Self {
        BootFiles {
            bios: "undionly.kpxe".into(),
            uefi_x64: "snponly.efi".into(),
            uefi_ia32: None,
            arm64: None,
            uefi_http: "snponly.efi".into(),
            tftp: true,
        }
    }
}

/// One subnet served in authoritative mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Subnet {
    pub(crate) net: Ipv4Network,
    /// Dynamic pool, inclusive. Reservations lie inside `net` but outside the pool.
    pub(crate) pool_start: Ipv4Addr,
    pub(crate) pool_end: Ipv4Addr,
    pub(crate) router: Option<Ipv4Addr>,
    pub(crate) dns: Vec<Ipv4Addr>,
    pub(crate) domain: Option<String>,
    pub(crate) lease_time: Duration,
}

impl Subnet {
    /// Whether `ip` is in the dynamic pool.
    pub(crate) fn in_pool(&self, ip: Ipv4Addr) -> bool {
        ip >= self.pool_start && ip <= self.pool_end
    }
}

/// Everything the DHCP service needs from the config, as plain values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DhcpSettings {
    pub(crate) mode: Mode,
    /// Our address on `interface`: server identifier, siaddr (next server), TFTP server.
    pub(crate) server_ip: Ipv4Addr,
    /// The one interface DHCP answers on (SO_BINDTODEVICE). Required unless `Off`.
    pub(crate) interface: String,
    /// What machines are told for HTTP, e.g. "http://198.18.0.1:8080" (no trailing slash;
    /// one is trimmed if present).
    pub(crate) http_url: String,
    pub(crate) boot_files: BootFiles,
    /// Authoritative mode only.
    pub(crate) subnets: Vec<Subnet>,
}

impl DhcpSettings {
    /// The allocator's view of the subnets (in the same order): pools with the server's
    /// own address, routers and DNS servers excluded.
    pub(crate) fn pools(&self) -> Vec<PoolRange> {
        self.subnets
            .iter()
            .map(|s| {
                let mut exclude: Vec<Ipv4Addr> = std::iter::once(self.server_ip)
                    .chain(s.router)
                    .chain(s.dns.iter().copied())
                    .filter(|a| s.net.contains(*a))
                    .collect();
                exclude.sort();
                exclude.dedup();
                PoolRange {
                    net: s.net,
                    start: s.pool_start,
                    end: s.pool_end,
                    exclude,
                }
            })
            .collect()
    }

    /// Check what this module relies on (the config validator reports these better, with
    /// file positions; this is the last line of defence).
    pub(crate) fn validate(&self) -> Result<(), DhcpError> {
        let bad = |m: String| Err(DhcpError::Settings(m));
        if self.mode == Mode::Off {
            return Ok(());
        }
        if self.interface.trim().is_empty() {
            return Err(DhcpError::NoInterface);
        }
        if self.server_ip.is_unspecified() || self.server_ip.is_broadcast() {
            return bad(format!(
                "server_ip {} is not a usable address",
                self.server_ip
            ));
        }
        if self.mode == Mode::Authoritative && self.subnets.is_empty() {
            return bad("authoritative DHCP needs at least one subnet".into());
        }
        for s in &self.subnets {
            if !s.net.contains(s.pool_start) || !s.net.contains(s.pool_end) {
                return bad(format!(
                    "pool {}-{} is not inside subnet {}",
                    s.pool_start, s.pool_end, s.net
                ));
            }
            if u32::from(s.pool_start) > u32::from(s.pool_end) {
                return bad(format!(
                    "pool start {} is after pool end {}",
                    s.pool_start, s.pool_end
                ));
            }
            if s.lease_time < Duration::from_secs(60) {
                return bad(format!(
                    "lease time {:?} in subnet {} is under a minute",
                    s.lease_time, s.net
                ));
            }
        }
        for (i, a) in self.subnets.iter().enumerate() {
            for b in &self.subnets[i + 1..] {
                if a.net.overlaps(b.net) {
                    return bad(format!("subnets {} and {} overlap", a.net, b.net));
                }
            }
        }
        Ok(())
    }
}

/// A machine the inventory knows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Host {
    pub(crate) hostname: String,
    /// Authoritative mode: always this address (inside a subnet, outside its pool).
    pub(crate) reserved_ip: Option<Ipv4Addr>,
    /// The machine's other NICs: its reserved address moves from them to the NIC asking.
    pub(crate) siblings: Vec<MacAddr>,
    /// Its loader (its role's, else the inventory's default).
    pub(crate) loader: Loader,
}

/// The inventory as DHCP sees it. Implemented by the main crate; calls must be quick and
/// must not block (they run on the packet path).
pub(crate) trait Directory: Send + Sync {
    fn lookup(&self, mac: MacAddr) -> Option<Host>;
    /// The inventory's policy for unknown machines: `discover` (true) boots them,
    /// `ignore` (false) gives them no boot file.
    fn answer_unknown(&self) -> bool;
    /// The loader unknown machines get (the inventory's `defaults.loader`).
    fn unknown_loader(&self) -> Loader {
        Loader::Ipxe
    }
}

/// Where DHCP reports what it did. Implemented by the main crate (machine events,
/// discovered machines, metrics); must not block.
pub(crate) trait DhcpObserver: Send + Sync {
    fn event(&self, mac: MacAddr, ev: DhcpEvent);
}

/// An observer that drops everything.
#[cfg(test)]
pub(crate) struct NoObserver;

#[cfg(test)]
impl DhcpObserver for NoObserver {
    fn event(&self, _: MacAddr, _: DhcpEvent) {}
}

/// What happened with one request from a network-boot client, or any request in
/// authoritative mode. Plain DHCP clients ignored in proxy mode produce no event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct DhcpEvent {
    /// The message received.
    pub(crate) received: MessageType,
    /// The reply, if one is sent (an ACK leaves only once its lease is durable).
    pub(crate) sent: Option<MessageType>,
    /// 67 or 4011.
    pub(crate) port: u16,
    pub(crate) xid: u32,
    /// Address offered, acknowledged, released or declined.
    pub(crate) ip: Option<Ipv4Addr>,
    /// Boot file or URL given.
    pub(crate) boot_file: Option<String>,
    pub(crate) class: ClientClass,
    /// The relay's address (giaddr), for relayed requests.
    pub(crate) relay: Option<Ipv4Addr>,
    /// Whether the inventory knows the MAC.
    pub(crate) known: bool,
    /// Why the client got no reply, no address or no boot file.
    pub(crate) refusal: Option<Refusal>,
}

/// Why a request got less than it asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Refusal {
    #[error("unknown machine and the inventory's policy for unknown machines is ignore")]
    UnknownMachine,
    #[error("no boot file is configured for {arch} clients")]
    NoBootFile { arch: Arch },
    #[error("TFTP is off: {arch} PXE firmware's read of its boot file fails at once and it moves on; UEFI HTTP boot and iPXE are served")]
    NoTftp { arch: Arch },
    #[error("the address pool of subnet {subnet} is exhausted")]
    PoolExhausted { subnet: String },
    #[error("no address: {reason}")]
    NoAddress { reason: String },
    #[error("no configured subnet for this client (relay {relay:?})")]
    NoSubnet { relay: Option<Ipv4Addr> },
    #[error("DHCPNAK: {reason}")]
    Nak { reason: String },
    #[error("the client chose another DHCP server ({server})")]
    OtherServer { server: Ipv4Addr },
}

/// Errors that stop the DHCP service from starting.
impl Refusal {
    /// The short name used as a metric label (the same as the serialized `kind`).
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Refusal::UnknownMachine => "unknown_machine",
            Refusal::NoBootFile { .. } => "no_boot_file",
            Refusal::NoTftp { .. } => "no_tftp",
            Refusal::PoolExhausted { .. } => "pool_exhausted",
            Refusal::NoAddress { .. } => "no_address",
            Refusal::NoSubnet { .. } => "no_subnet",
            Refusal::Nak { .. } => "nak",
            Refusal::OtherServer { .. } => "other_server",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum DhcpError {
    #[error("no interface configured: DHCP answers only on an interface the config names")]
    NoInterface,
    #[error("invalid DHCP settings: {0}")]
    Settings(String),
    #[error("cannot bind UDP port {port} on interface {interface}: {source}")]
    Bind {
        interface: String,
        port: u16,
        source: std::io::Error,
    },
}

impl From<DhcpError> for std::io::Error {
    fn from(e: DhcpError) -> Self {
        let kind = match &e {
            DhcpError::Bind { source, .. } => source.kind(),
            _ => std::io::ErrorKind::InvalidInput,
        };
        std::io::Error::new(kind, e.to_string())
    }
}

#[cfg(test)]
mod refusal_tests {
    use super::*;

    #[test]
    fn the_metric_label_is_the_serialized_kind() {
        for r in [
            Refusal::UnknownMachine,
            Refusal::NoBootFile {
                arch: Arch::UefiArm64,
            },
            Refusal::PoolExhausted {
                subnet: "198.18.0.0/24".into(),
            },
            Refusal::NoAddress { reason: "x".into() },
            Refusal::NoSubnet { relay: None },
            Refusal::Nak { reason: "x".into() },
            Refusal::OtherServer {
                server: Ipv4Addr::new(198, 18, 0, 2),
            },
        ] {
            assert_eq!(serde_json::to_value(&r).unwrap()["kind"], r.kind());
        }
    }
}
