//! Adapters between the network services and the store: they turn what DHCP and TFTP saw
//! into machine events, facts and metrics, and give DHCP its view of the inventory. The
//! services know nothing of the store or the inventory; these small types are the only
//! place the two meet.

use std::sync::Arc;

use crate::dhcp;
use crate::inventory;
use crate::leases::{self, LeaseStore};
use crate::mac::MacAddr;
use crate::metrics::Metrics;
use crate::state::{self, Store};
use crate::tftp;

/// A DHCP or DHCPv6 event's answer, as its text says it: " → OFFER 198.18.0.100, boot
/// file snponly.efi".
fn push_answer(
    msg: &mut String,
    sent: impl std::fmt::Display,
    ip: Option<impl std::fmt::Display>,
    boot_file: Option<&str>,
) {
    msg.push_str(&format!(" → {sent}"));
    if let Some(ip) = ip {
        msg.push_str(&format!(" {ip}"));
    }
    if let Some(f) = boot_file {
        msg.push_str(&format!(", boot file {f}"));
    }
}

/// Which machine an address belongs to: its lease (authoritative mode), else the kernel's
/// neighbour table (the client just talked to us, so it is there).
pub(crate) fn mac_for_ip(
    leases: Option<&Arc<dyn LeaseStore>>,
    ip: std::net::IpAddr,
) -> Option<MacAddr> {
    let v4 = match ip {
        std::net::IpAddr::V4(v4) => v4,
        // DHCPv6 hands out each NIC's EUI-64 address, and link-local addresses carry it too.
        std::net::IpAddr::V6(v6) => return crate::dhcp6::mac_of_eui64(v6),
    };
    if let Some(l) = leases {
        let now = state::now_ms() / 1000;
        // One lookup by address: listing every lease here took the lock DHCP needs, for
        // every transfer.
        if let Some(lease) = l
            .lease_at(v4, now)
            .filter(|l| l.state == leases::LeaseState::Bound)
        {
            return Some(lease.mac);
        }
    }
    let arp = std::fs::read_to_string("/proc/net/arp").ok()?;
    parse_arp(&arp, v4)
}

/// Pure: the MAC of `ip` in `/proc/net/arp` text.
fn parse_arp(text: &str, ip: std::net::Ipv4Addr) -> Option<MacAddr> {
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
pub(crate) struct TftpRecorder {
    pub(crate) store: Arc<Store>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) leases: Option<Arc<dyn LeaseStore>>,
    /// To tell which machine a NIC belongs to.
    pub(crate) inventory: Arc<inventory::Live>,
}

impl tftp::TftpObserver for TftpRecorder {
    fn transfer(&self, ev: tftp::TransferEvent) {
        use tftp::TransferOutcome as O;
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
            Some(mac) => self.store.event(self.inventory.get().id(mac), "tftp", msg),
            None => {
                tracing::debug!(peer = %ev.peer, "TFTP transfer from an address with no known MAC")
            }
        }
    }
}

/// The inventory as DHCP sees it (called on the packet path: a lock-free-ish Arc read).
pub(crate) struct InventoryDirectory(pub(crate) Arc<inventory::Live>);

impl dhcp::Directory for InventoryDirectory {
    fn lookup(&self, mac: MacAddr) -> Option<dhcp::Host> {
        let inv = self.0.get();
        inv.machine(&mac).map(|m| dhcp::Host {
            hostname: m.hostname.clone(),
            reserved_ip: m.ip,
            siblings: m.macs().into_iter().filter(|n| *n != mac).collect(),
            loader: inv.loader_of(Some(m)),
        })
    }

    fn answer_unknown(&self) -> bool {
        self.0.get().defaults.unknown == inventory::UnknownPolicy::Discover
    }

    fn unknown_loader(&self) -> dhcp::Loader {
        self.0.get().loader_of(None)
    }
}

/// Turns DHCP steps into machine events, facts and metrics.
pub(crate) struct Recorder {
    pub(crate) store: Arc<Store>,
    pub(crate) metrics: Arc<Metrics>,
    /// To tell which machine a NIC belongs to: its events and state live under its key MAC.
    pub(crate) inventory: Arc<inventory::Live>,
}

/// "UEFI x64 (iPXE)", "BIOS", … for the firmware column.
pub(crate) fn firmware_label(class: &dhcp::ClientClass) -> String {
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
        let nic = mac;
        let mac = self.inventory.get().id(nic);
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
                boot_nic: netboot.then(|| nic.to_string()),
                hardware: Default::default(),
            },
        );
        let mut msg = format!("{}", ev.received);
        if nic != mac {
            msg.push_str(&format!(" from its NIC {nic}"));
        }
        if ev.port == dhcp::PXE_PORT {
            msg.push_str(" on port 4011");
        }
        match (&ev.sent, &ev.refusal) {
            (Some(sent), _) => {
                push_answer(&mut msg, sent, ev.ip, ev.boot_file.as_deref());
                // An answer with less than the firmware asked for: say why.
                if let Some(r) = &ev.refusal {
                    msg.push_str(&format!(" ({r})"));
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

/// DHCPv6 steps as machine events ("DHCPv6 SOLICIT → DHCPv6 ADVERTISE fd00:…, boot file
/// tftp://…") and the same facts as DHCPv4 (firmware, vendor class, boot NIC; the address
/// once bound).
impl crate::dhcp6::Dhcp6Observer for Recorder {
    fn event(&self, nic: MacAddr, ev: crate::dhcp6::Dhcp6Event) {
        use crate::dhcp6::MessageType as T;
        let outcome = ev
            .sent
            .map(|s| s.to_string())
            .unwrap_or_else(|| "none".into());
        self.metrics.inc(
            "stemcell_dhcp6_packets_total",
            &[("type", &ev.received.to_string()), ("outcome", &outcome)],
            1.0,
        );
        let netboot = ev.class.boots();
        if !(ev.known || netboot) {
            return;
        }
        let mac = self.inventory.get().id(nic);
        let bound =
            ev.sent == Some(T::Reply) && matches!(ev.received, T::Request | T::Renew | T::Rebind);
        self.store.observe(
            mac,
            ev.known,
            state::Facts {
                arch: netboot.then(|| firmware_label(&ev.class)),
                vendor_class: if netboot {
                    ev.class.vendor_class.clone()
                } else {
                    None
                },
                uuid: None,
                // The IPv4 address stays the machine's address fact (the installer's).
                ip: None,
                boot_nic: netboot.then(|| nic.to_string()),
                hardware: Default::default(),
            },
        );
        let mut msg = ev.received.to_string();
        if nic != mac {
            msg.push_str(&format!(" from its NIC {nic}"));
        }
        if let Some(sent) = ev.sent {
            push_answer(&mut msg, sent, ev.ip, ev.boot_file.as_deref());
        }
        if let Some(r) = &ev.refusal {
            msg.push_str(&format!(": {r}"));
        }
        if bound && ev.ip.is_some() {
            msg.push_str(" (bound)");
        }
        if netboot {
            msg.push_str(&format!(" [{}]", firmware_label(&ev.class)));
        }
        self.store.event(mac, "dhcp", msg);
    }
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
            inventory: Arc::new(inventory::Live::new(
                inventory::Inventory::empty(std::path::Path::new("inventory.yaml")),
                Default::default(),
            )),
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
