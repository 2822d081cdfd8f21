//! One request in, one reply (or nothing) out: the DHCP server's decisions.
//!
//! Pure apart from the lease store it is given (an in-memory decision behind a trait) and
//! `now`, which is passed in. Nothing here touches a socket or a file, and nothing here
//! awaits: the durability of a binding comes back as a [`Durable`] for the caller to await
//! before it sends the ACK.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use super::classify::{classify, Arch, ClientClass};
use super::wire::{
    code, pxe_vendor_options, MessageType, Packet, Reply, BOOTREQUEST, FLAG_BROADCAST,
};
use super::Counters;
use super::{
    DhcpError, DhcpEvent, DhcpObserver, DhcpSettings, Directory, Host, Loader, Mode, Refusal,
    Subnet, DHCP_CLIENT_PORT, DHCP_SERVER_PORT, PXE_PORT,
};
use crate::leases::{AllocError, Durable, LeaseStore, UnixTime};
use crate::mac::MacAddr;

/// Which socket a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Port {
    /// 67: DHCP.
    Dhcp,
    /// 4011: PXE boot server (proxyDHCP requests).
    Pxe,
}

impl Port {
    pub(crate) fn number(self) -> u16 {
        match self {
            Port::Dhcp => DHCP_SERVER_PORT,
            Port::Pxe => PXE_PORT,
        }
    }
}

/// A reply and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outgoing {
    pub(crate) reply: Reply,
    pub(crate) to: SocketAddrV4,
}

/// The result of handling one request.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) reply: Option<Outgoing>,
    /// Await before sending `reply` (a lease being written to the journal).
    pub(crate) durable: Durable,
    pub(crate) event: Option<(MacAddr, DhcpEvent)>,
    /// Why the request was ignored without an event (debug log and counter).
    pub(crate) ignored: Option<&'static str>,
}

impl Outcome {
    fn ignore(why: &'static str) -> Outcome {
        Outcome {
            reply: None,
            durable: Durable::done(),
            event: None,
            ignored: Some(why),
        }
    }

    fn event_only(mac: MacAddr, ev: DhcpEvent) -> Outcome {
        Outcome {
            reply: None,
            durable: Durable::done(),
            event: Some((mac, ev)),
            ignored: None,
        }
    }

    fn reply(
        reply: Reply,
        to: SocketAddrV4,
        durable: Durable,
        mac: MacAddr,
        ev: DhcpEvent,
    ) -> Outcome {
        Outcome {
            reply: Some(Outgoing { reply, to }),
            durable,
            event: Some((mac, ev)),
            ignored: None,
        }
    }
}

/// A boot answer for a network-boot client.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Boot {
    /// TFTP file name or HTTP URL.
    file: String,
    /// `file` is an HTTP URL (iPXE or UEFI HTTP boot): no TFTP server name.
    http: bool,
    /// Option 60 in proxy replies ("HTTPClient" is also sent in authoritative mode).
    vendor_class: &'static str,
    /// Option 43 with discovery control 8 (proxy replies to BIOS PXE and iPXE).
    pxe_options: bool,
}

/// The DHCP service: settings, inventory, events, leases and counters.
pub(crate) struct DhcpServer {
    settings: DhcpSettings,
    http_url: String,
    directory: Arc<dyn Directory>,
    observer: Arc<dyn DhcpObserver>,
    leases: Arc<dyn LeaseStore>,
    /// The subnet of the server's own address (non-relayed clients), if any.
    local: Option<usize>,
    counters: Arc<Counters>,
    limiter: std::sync::Mutex<super::limit::Limiter>,
}

fn nonzero(a: Ipv4Addr) -> Option<Ipv4Addr> {
    (!a.is_unspecified()).then_some(a)
}

impl DhcpServer {
    /// Check the settings and assemble the service. In proxy mode `leases` is not used:
    /// pass `Arc::new(JournalStore::in_memory(vec![]))`.
    pub(crate) fn new(
        settings: DhcpSettings,
        directory: Arc<dyn Directory>,
        observer: Arc<dyn DhcpObserver>,
        leases: Arc<dyn LeaseStore>,
    ) -> Result<DhcpServer, DhcpError> {
        settings.validate()?;
        let local = settings
            .subnets
            .iter()
            .position(|s| s.net.contains(settings.server_ip))
            .or(if settings.subnets.len() == 1 {
                Some(0)
            } else {
                None
            });
        let http_url = settings.http_url.trim_end_matches('/').to_string();
        Ok(DhcpServer {
            settings,
            http_url,
            directory,
            observer,
            leases,
            local,
            counters: Arc::default(),
            limiter: Default::default(),
        })
    }

    pub(crate) fn settings(&self) -> &DhcpSettings {
        &self.settings
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The counters, to read from elsewhere (metrics).
    pub(crate) fn shared_counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    pub(crate) fn observer(&self) -> &dyn DhcpObserver {
        &*self.observer
    }

    pub(crate) fn leases(&self) -> &Arc<dyn LeaseStore> {
        &self.leases
    }

    /// Decide the answer to one decoded request that arrived from `src` on `port`.
    pub(crate) fn handle(
        &self,
        p: &Packet,
        src: SocketAddrV4,
        port: Port,
        now: UnixTime,
    ) -> Outcome {
        if p.op != BOOTREQUEST {
            return Outcome::ignore("not a BOOTREQUEST");
        }
        if *src.ip() == self.settings.server_ip && src.port() == DHCP_SERVER_PORT {
            return Outcome::ignore("our own packet");
        }
        if p.htype != 1 || p.hlen != 6 {
            return Outcome::ignore("not an Ethernet client");
        }
        let Some(mac) = MacAddr::from_slice(&p.chaddr) else {
            return Outcome::ignore("no client hardware address");
        };
        let Some(msg) = p.options.message_type() else {
            return Outcome::ignore("BOOTP request without DHCP message type");
        };
        let limited = self
            .limiter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check(mac, nonzero(p.giaddr), now);
        if let Err(l) = limited {
            Counters::bump(&self.counters.rate_limited);
            return Outcome::ignore(match l {
                super::limit::Limited::Client => "over the per-client rate limit",
                super::limit::Limited::Relay => "over the per-relay rate limit",
            });
        }
        let class = classify(&p.options);
        match (self.settings.mode, port) {
            (Mode::Off, _) => Outcome::ignore("DHCP is off"),
            (_, Port::Pxe) => self.pxe_port(p, src, mac, msg, class),
            (Mode::Proxy, Port::Dhcp) => self.proxy(p, mac, msg, class),
            (Mode::Authoritative, Port::Dhcp) => self.authoritative(p, mac, msg, class, now),
        }
    }

    fn event(&self, p: &Packet, msg: MessageType, port: Port, class: ClientClass) -> DhcpEvent {
        DhcpEvent {
            received: msg,
            sent: None,
            port: port.number(),
            xid: p.xid,
            ip: None,
            boot_file: None,
            class,
            relay: nonzero(p.giaddr),
            known: false,
            refusal: None,
        }
    }

    /// The boot file for a network-boot client.
    fn boot_for(&self, class: &ClientClass, mac: MacAddr) -> Result<Boot, Refusal> {
        let files = &self.settings.boot_files;
        if class.ipxe {
            return Ok(Boot {
                file: format!("{}/boot/{}.ipxe", self.http_url, mac),
                http: true,
                vendor_class: "PXEClient",
                pxe_options: true,
            });
        }
        let missing = |arch| Refusal::NoBootFile { arch };
        if class.http_boot {
            let file = match class.arch {
                Arch::UefiX64 | Arch::Bios => Some(&files.uefi_http),
                Arch::UefiIa32 => files.uefi_ia32.as_ref(),
                Arch::UefiArm64 => files.arm64.as_ref(),
            };
            let file = file.ok_or(missing(class.arch))?;
            return Ok(Boot {
                file: format!("{}/tftp/{}", self.http_url, file),
                http: true,
                vendor_class: "HTTPClient",
                pxe_options: false,
            });
        }
        // GRUB machines get shim, which loads GRUB from the same folder. BIOS has no
        // GRUB chain here: those machines keep iPXE.
        let loader = match self.directory.lookup(mac) {
            Some(h) => h.loader,
            None => self.directory.unknown_loader(),
        };
        // Debian has no iPXE for ARM64: unless the site names its own arm64 loader
        // (`dhcp.boot_files.arm64`) or the machine's loader is grub (shim first, for Secure
        // Boot), arch 11 gets GRUB's signed network image directly: without Secure Boot
        // (AAVMF's default) shim adds nothing but three failed TFTP requests
        // (docs/firmware.md, "ARM64 (AAVMF)").
        if class.arch == Arch::UefiArm64 && files.arm64.is_none() && loader != Loader::Grub {
            if let Some(g) = super::grub_arch(class.arch) {
                return Ok(Boot {
                    file: g.grub.to_string(),
                    http: false,
                    vendor_class: "PXEClient",
                    pxe_options: false,
                });
            }
        }
        if let (Loader::Grub, Some(g)) = (loader, super::grub_arch(class.arch)) {
            return Ok(Boot {
                file: g.shim.to_string(),
                http: false,
                vendor_class: "PXEClient",
                pxe_options: false,
            });
        }
        let (file, pxe_options) = match class.arch {
            Arch::Bios => (Some(&files.bios), true),
            Arch::UefiX64 => (Some(&files.uefi_x64), false),
            Arch::UefiIa32 => (files.uefi_ia32.as_ref(), false),
            Arch::UefiArm64 => (files.arm64.as_ref(), false),
        };
        Ok(Boot {
            file: file.ok_or(missing(class.arch))?.clone(),
            http: false,
            vendor_class: "PXEClient",
            pxe_options,
        })
    }

    /// Whether this client gets a boot file, and which.
    fn boot_decision(
        &self,
        class: &ClientClass,
        mac: MacAddr,
        known: bool,
    ) -> (Option<Boot>, Option<Refusal>) {
        if !class.boots() {
            return (None, None);
        }
        if !known && !self.directory.answer_unknown() {
            return (None, Some(Refusal::UnknownMachine));
        }
        if let Some(why) = &class.arch_fallback {
            // A missing option 93 is normal for old BIOS ROMs; anything else is worth a look.
            if class.arch_code.is_some() || why.starts_with("malformed") {
                tracing::warn!(mac = %mac, arch = ?class.arch_code, fallback = %why, "client architecture not recognised; using a fallback");
            }
        }
        match self.boot_for(class, mac) {
            // TFTP is off: PXE firmware still gets its file's name. With no boot file in
            // any offer EDK2's PXE asks again for about a minute (DISCOVER after 4, 8, 16
            // and 32 s) before it moves on to HTTP boot; with one, its TFTP read meets no
            // listener (ICMP port unreachable) and fails at once. The event says why.
            Ok(b) if !b.http && !self.settings.boot_files.tftp => {
                let why = Refusal::NoTftp { arch: class.arch };
                (Some(b), Some(why))
            }
            Ok(b) => (Some(b), None),
            Err(r) => {
                tracing::warn!(mac = %mac, arch = %class.arch, refusal = %r, "no boot file for this client");
                (None, Some(r))
            }
        }
    }

    fn put_boot(&self, r: &mut Reply, boot: &Boot) {
        r.siaddr = self.settings.server_ip;
        if !boot.http {
            let name = self.settings.server_ip.to_string();
            r.set(code::TFTP_SERVER_NAME, name.clone().into_bytes());
            r.sname = name;
        }
        r.file = boot.file.clone();
        r.set(code::BOOTFILE_NAME, boot.file.clone().into_bytes());
    }

    fn echo_relay_info(r: &mut Reply, p: &Packet) {
        if !p.giaddr.is_unspecified() {
            if let Some(info) = p.options.get(code::RELAY_AGENT_INFO) {
                r.set(code::RELAY_AGENT_INFO, info.to_vec());
            }
        }
    }

    /// RFC 2131 §4.1: relay first, then the client's address, else broadcast (we cannot
    /// unicast to a client without an address: that needs an ARP entry we may not write).
    fn destination(p: &Packet, broadcast_only: bool) -> SocketAddrV4 {
        if let Some(g) = nonzero(p.giaddr) {
            return SocketAddrV4::new(g, DHCP_SERVER_PORT);
        }
        match nonzero(p.ciaddr) {
            Some(c) if !broadcast_only => SocketAddrV4::new(c, DHCP_CLIENT_PORT),
            _ => SocketAddrV4::new(Ipv4Addr::BROADCAST, DHCP_CLIENT_PORT),
        }
    }

    // ---- proxy mode -------------------------------------------------------------------

    /// Proxy mode, port 67: network-boot clients only, DISCOVER → OFFER.
    fn proxy(&self, p: &Packet, mac: MacAddr, msg: MessageType, class: ClientClass) -> Outcome {
        if !class.boots() {
            return Outcome::ignore("proxy mode: not a network-boot client");
        }
        // PXE clients send their REQUEST for boot details to port 4011 (PXE 2.1 §2.2.4); a
        // REQUEST on 67 is for the site's server, or comes from a client that took our
        // address-less offer for a lease (dhclient does): answering it would hand that
        // client 0.0.0.0.
        let out = match msg {
            MessageType::Discover => MessageType::Offer,
            MessageType::Request => {
                return Outcome::ignore("proxy mode: a DHCPREQUEST on port 67 is not ours")
            }
            _ => return Outcome::ignore("proxy mode: nothing to answer"),
        };
        let mut dest = Self::destination(p, true);
        if !p.ciaddr.is_unspecified() && p.giaddr.is_unspecified() {
            dest = SocketAddrV4::new(p.ciaddr, DHCP_CLIENT_PORT);
        }
        self.proxy_answer(p, mac, msg, out, class, Port::Dhcp, dest)
    }

    /// Port 4011 (either mode): the PXE boot server. REQUEST or INFORM → ACK, unicast
    /// back to where it came from.
    fn pxe_port(
        &self,
        p: &Packet,
        src: SocketAddrV4,
        mac: MacAddr,
        msg: MessageType,
        class: ClientClass,
    ) -> Outcome {
        if !matches!(msg, MessageType::Request | MessageType::Inform) {
            return Outcome::ignore("port 4011: not a DHCPREQUEST");
        }
        let dest = if src.ip().is_unspecified() {
            SocketAddrV4::new(Ipv4Addr::BROADCAST, src.port())
        } else {
            src
        };
        self.proxy_answer(p, mac, msg, MessageType::Ack, class, Port::Pxe, dest)
    }

    #[allow(clippy::too_many_arguments)]
    fn proxy_answer(
        &self,
        p: &Packet,
        mac: MacAddr,
        msg: MessageType,
        out: MessageType,
        class: ClientClass,
        port: Port,
        dest: SocketAddrV4,
    ) -> Outcome {
        let host = self.directory.lookup(mac);
        let (boot, refusal) = self.boot_decision(&class, mac, host.is_some());
        let mut ev = self.event(p, msg, port, class);
        ev.known = host.is_some();
        ev.refusal = refusal;
        let Some(boot) = boot else {
            tracing::debug!(mac = %mac, refusal = ?ev.refusal, "network-boot client not answered");
            return Outcome::event_only(mac, ev);
        };
        let mut r = Reply::to(p, out);
        // A proxy reply has no address for the client: relays must broadcast it.
        if port == Port::Dhcp {
            r.flags |= FLAG_BROADCAST;
        } else {
            r.ciaddr = p.ciaddr;
        }
        r.set_ip(code::SERVER_ID, self.settings.server_ip);
        r.set(code::VENDOR_CLASS, boot.vendor_class.as_bytes().to_vec());
        if let Some(uuid) = client_uuid(p) {
            r.set(code::CLIENT_UUID, uuid.to_vec());
        }
        if boot.pxe_options {
            r.set(code::VENDOR_SPECIFIC, pxe_vendor_options());
        }
        self.put_boot(&mut r, &boot);
        Self::echo_relay_info(&mut r, p);
        tracing::debug!(mac = %mac, msg = %out, file = %boot.file, to = %dest, "proxy reply");
        ev.sent = Some(out);
        ev.boot_file = Some(boot.file);
        Outcome {
            reply: Some(Outgoing { reply: r, to: dest }),
            durable: Durable::done(),
            event: Some((mac, ev)),
            ignored: None,
        }
    }

    // ---- authoritative mode -------------------------------------------------------------

    fn subnet_containing(&self, a: Ipv4Addr) -> Option<usize> {
        self.settings.subnets.iter().position(|s| s.net.contains(a))
    }

    fn put_subnet_options(&self, r: &mut Reply, s: &Subnet, lease_secs: Option<u64>) {
        r.set_ip(code::SERVER_ID, self.settings.server_ip);
        if let Some(l) = lease_secs {
            r.set_lease_time(l);
        }
        r.set_ip(code::SUBNET_MASK, s.net.mask());
        if let Some(router) = s.router {
            r.set_ip(code::ROUTER, router);
        }
        if !s.dns.is_empty() {
            r.set_ips(code::DNS, &s.dns);
        }
        if let Some(d) = &s.domain {
            r.set(code::DOMAIN_NAME, d.clone().into_bytes());
        }
    }

    /// Host name, boot file and PXE echoes for an address-carrying reply.
    fn put_client_options(
        &self,
        r: &mut Reply,
        p: &Packet,
        host: Option<&Host>,
        boot: Option<&Boot>,
    ) {
        if let Some(h) = host.filter(|h| !h.hostname.is_empty()) {
            r.set(code::HOSTNAME, h.hostname.clone().into_bytes());
        }
        if let Some(b) = boot {
            self.put_boot(r, b);
            if b.vendor_class == "HTTPClient" {
                r.set(code::VENDOR_CLASS, b"HTTPClient".to_vec());
            }
            if let Some(uuid) = client_uuid(p) {
                r.set(code::CLIENT_UUID, uuid.to_vec());
            }
        }
        Self::echo_relay_info(r, p);
    }

    fn authoritative(
        &self,
        p: &Packet,
        mac: MacAddr,
        msg: MessageType,
        class: ClientClass,
        now: UnixTime,
    ) -> Outcome {
        let relay = nonzero(p.giaddr);
        let ciaddr = nonzero(p.ciaddr);
        let idx = match relay {
            Some(g) => self.subnet_containing(g),
            None => ciaddr
                .and_then(|c| self.subnet_containing(c))
                .or(self.local),
        };
        let mut ev = self.event(p, msg, Port::Dhcp, class);
        let Some(idx) = idx else {
            if matches!(msg, MessageType::Discover | MessageType::Request) {
                tracing::warn!(mac = %mac, relay = ?relay, "no configured subnet for this client");
            }
            ev.refusal = Some(Refusal::NoSubnet { relay });
            return Outcome::event_only(mac, ev);
        };
        let host = self.directory.lookup(mac);
        ev.known = host.is_some();
        let c = Client {
            p,
            mac,
            subnet: &self.settings.subnets[idx],
            reserved: host.as_ref().and_then(|h| h.reserved_ip),
            host,
            relay,
            ciaddr,
            now,
        };
        if matches!(msg, MessageType::Discover | MessageType::Request) {
            self.move_reservation(&c);
        }
        match msg {
            MessageType::Discover => self.handle_discover(&c, ev),
            MessageType::Request => self.handle_request(&c, ev),
            MessageType::Decline => {
                let Some(ip) = p.options.ipv4(code::REQUESTED_IP) else {
                    return Outcome::ignore("DHCPDECLINE without an address");
                };
                if self.leases.decline(mac, ip, now) {
                    tracing::warn!(mac = %mac, ip = %ip, "client declined its address (another host uses it); quarantined");
                }
                ev.ip = Some(ip);
                Outcome::event_only(mac, ev)
            }
            MessageType::Release => {
                let Some(ip) = ciaddr else {
                    return Outcome::ignore("DHCPRELEASE without ciaddr");
                };
                self.leases.release(mac, ip, now);
                ev.ip = Some(ip);
                Outcome::event_only(mac, ev)
            }
            MessageType::Inform => self.handle_inform(&c, ev),
            _ => Outcome::ignore("not a client message"),
        }
    }

    /// A machine's reserved address belongs to the machine, not to one NIC: when another
    /// of its NICs holds it (it netbooted from that port last time), it is released so the
    /// NIC asking now gets it.
    fn move_reservation(&self, c: &Client<'_>) {
        let (Some(ip), Some(host)) = (c.reserved, c.host.as_ref()) else {
            return;
        };
        let Some(held) = self.leases.lease_at(ip, c.now) else {
            return;
        };
        if held.mac != c.mac && host.siblings.contains(&held.mac) {
            tracing::info!(mac = %c.mac, from = %held.mac, ip = %ip, "reserved address moves to another NIC of the same machine");
            self.leases.release(held.mac, ip, c.now);
        }
    }

    /// DISCOVER: offer an address (held briefly, not yet durable: nothing is promised).
    fn handle_discover(&self, c: &Client<'_>, mut ev: DhcpEvent) -> Outcome {
        let (p, mac, subnet) = (c.p, c.mac, c.subnet);
        let (boot, boot_refusal) = self.boot_decision(&ev.class, mac, ev.known);
        let requested = p.options.ipv4(code::REQUESTED_IP);
        let ip = match self.leases.offer(
            subnet.net,
            mac,
            c.reserved,
            requested,
            c.now,
            c.host.is_some(),
        ) {
            Ok(ip) => ip,
            Err(e) => {
                ev.refusal = Some(match &e {
                    AllocError::PoolExhausted(net) => {
                        tracing::warn!(subnet = %net, mac = %mac, "address pool exhausted; no offer");
                        Refusal::PoolExhausted {
                            subnet: net.to_string(),
                        }
                    }
                    other => {
                        tracing::warn!(subnet = %subnet.net, mac = %mac, error = %other, "no address to offer");
                        Refusal::NoAddress {
                            reason: other.to_string(),
                        }
                    }
                });
                return Outcome::event_only(mac, ev);
            }
        };
        let mut r = Reply::to(p, MessageType::Offer);
        r.yiaddr = ip;
        self.put_subnet_options(&mut r, subnet, Some(subnet.lease_time.as_secs()));
        self.put_client_options(&mut r, p, c.host.as_ref(), boot.as_ref());
        ev.sent = Some(MessageType::Offer);
        ev.ip = Some(ip);
        ev.boot_file = boot.map(|b| b.file);
        ev.refusal = boot_refusal;
        let to = Self::destination(p, true);
        tracing::debug!(mac = %mac, ip = %ip, to = %to, "offer");
        Outcome::reply(r, to, Durable::done(), mac, ev)
    }

    /// REQUEST in every client state: bind (durably) and ACK, or NAK with the reason.
    fn handle_request(&self, c: &Client<'_>, mut ev: DhcpEvent) -> Outcome {
        let (p, mac, subnet, now) = (c.p, c.mac, c.subnet, c.now);
        if let Some(server) = p.options.ipv4(code::SERVER_ID) {
            if server != self.settings.server_ip {
                self.leases.forget_offer(mac, subnet.net, now);
                ev.refusal = Some(Refusal::OtherServer { server });
                return Outcome::event_only(mac, ev);
            }
        }
        let Some(ip) = p.options.ipv4(code::REQUESTED_IP).or(c.ciaddr) else {
            return Outcome::ignore("DHCPREQUEST without a requested address or ciaddr");
        };
        ev.ip = Some(ip);
        let bound = if subnet.net.contains(ip) {
            self.leases
                .bind(mac, ip, c.reserved, subnet.lease_time.as_secs(), now)
                .map_err(|e| e.to_string())
        } else {
            Err(format!("{ip} is not on network {}", subnet.net))
        };
        let (lease, durable) = match bound {
            Ok(b) => b,
            Err(reason) => return self.nak(c, ev, reason),
        };
        let (boot, boot_refusal) = self.boot_decision(&ev.class, mac, ev.known);
        let mut r = Reply::to(p, MessageType::Ack);
        r.yiaddr = lease.ip;
        r.ciaddr = p.ciaddr;
        self.put_subnet_options(&mut r, subnet, Some(lease.expires.saturating_sub(now)));
        self.put_client_options(&mut r, p, c.host.as_ref(), boot.as_ref());
        ev.sent = Some(MessageType::Ack);
        ev.boot_file = boot.map(|b| b.file);
        ev.refusal = boot_refusal;
        let to = Self::destination(p, false);
        tracing::debug!(mac = %mac, ip = %ip, to = %to, "ack");
        Outcome::reply(r, to, durable, mac, ev)
    }

    fn nak(&self, c: &Client<'_>, mut ev: DhcpEvent, reason: String) -> Outcome {
        let p = c.p;
        tracing::warn!(mac = %c.mac, ip = ?ev.ip, reason = %reason, "DHCPNAK");
        let mut r = Reply::to(p, MessageType::Nak);
        r.set_ip(code::SERVER_ID, self.settings.server_ip);
        r.set(code::MESSAGE, reason.clone().into_bytes());
        if c.relay.is_some() {
            // RFC 2131 §4.3.2: the relay must broadcast a NAK.
            r.flags |= FLAG_BROADCAST;
        }
        Self::echo_relay_info(&mut r, p);
        ev.sent = Some(MessageType::Nak);
        ev.refusal = Some(Refusal::Nak { reason });
        Outcome::reply(r, Self::destination(p, true), Durable::done(), c.mac, ev)
    }

    /// INFORM: the client has an address; answer with options only.
    fn handle_inform(&self, c: &Client<'_>, mut ev: DhcpEvent) -> Outcome {
        let p = c.p;
        let (boot, boot_refusal) = self.boot_decision(&ev.class, c.mac, ev.known);
        let mut r = Reply::to(p, MessageType::Ack);
        r.ciaddr = p.ciaddr;
        self.put_subnet_options(&mut r, c.subnet, None);
        self.put_client_options(&mut r, p, c.host.as_ref(), boot.as_ref());
        ev.sent = Some(MessageType::Ack);
        ev.boot_file = boot.map(|b| b.file);
        ev.refusal = boot_refusal;
        Outcome::reply(r, Self::destination(p, false), Durable::done(), c.mac, ev)
    }
}

/// The client's option 97 if it is what RFC 4578 §2.3 defines (type 0, then a 16-byte
/// UUID): only that is echoed. A malformed one could be empty (encoders such as dhcproto's
/// then drop it) or, joined from several instances (RFC 3396), hundreds of bytes that push
/// the reply past the 576 bytes a client must accept (RFC 2131 §2). Found by fuzzing.
fn client_uuid(p: &Packet) -> Option<&[u8]> {
    p.options
        .get(code::CLIENT_UUID)
        .filter(|u| u.len() == 17 && u[0] == 0)
}

/// One authoritative-mode client request, with what was looked up for it.
struct Client<'a> {
    p: &'a Packet,
    mac: MacAddr,
    subnet: &'a Subnet,
    host: Option<Host>,
    reserved: Option<Ipv4Addr>,
    relay: Option<Ipv4Addr>,
    ciaddr: Option<Ipv4Addr>,
    now: UnixTime,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::wire::{decode, tests::request_bytes};
    use crate::dhcp::{BootFiles, NoObserver};
    use crate::leases::{JournalStore, LeaseState};
    use std::collections::HashMap;
    use std::time::Duration;

    const T0: UnixTime = 1_700_000_000;
    const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const PXE_X64: &[u8] = b"PXEClient:Arch:00007:UNDI:003016";
    const PXE_BIOS: &[u8] = b"PXEClient:Arch:00000:UNDI:002001";

    struct Dir {
        hosts: HashMap<MacAddr, Host>,
        unknown: bool,
    }

    impl Directory for Dir {
        fn lookup(&self, mac: MacAddr) -> Option<Host> {
            self.hosts.get(&mac).cloned()
        }
        fn answer_unknown(&self) -> bool {
            self.unknown
        }
    }

    fn subnet(net: &str, start: [u8; 4], end: [u8; 4]) -> Subnet {
        Subnet {
            net: net.parse().unwrap(),
            pool_start: start.into(),
            pool_end: end.into(),
            router: Some(SERVER),
            dns: vec![SERVER],
            domain: Some("lab.example".into()),
            lease_time: Duration::from_secs(3600),
        }
    }

    fn settings(mode: Mode) -> DhcpSettings {
        DhcpSettings {
            mode,
            server_ip: SERVER,
            interface: "veth0".into(),
            http_url: "http://198.18.0.1:8080/".into(),
            boot_files: BootFiles::default(),
            subnets: vec![
                subnet("198.18.0.0/24", [198, 18, 0, 100], [198, 18, 0, 101]),
                subnet("198.18.1.0/24", [198, 18, 1, 100], [198, 18, 1, 199]),
            ],
        }
    }

    fn server_with(mode: Mode, unknown: bool, hosts: &[(MacAddr, Host)]) -> DhcpServer {
        let s = settings(mode);
        let leases = Arc::new(JournalStore::in_memory(s.pools()));
        DhcpServer::new(
            s,
            Arc::new(Dir {
                hosts: hosts.iter().cloned().collect(),
                unknown,
            }),
            Arc::new(NoObserver),
            leases,
        )
        .unwrap()
    }

    fn server(mode: Mode) -> DhcpServer {
        server_with(mode, true, &[])
    }

    fn mac() -> MacAddr {
        MacAddr(MAC)
    }

    fn pkt(msg: u8, opts: &[(u8, &[u8])]) -> Packet {
        decode(&request_bytes(msg, MAC, opts)).unwrap()
    }

    fn from_client() -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68)
    }

    fn handle(s: &DhcpServer, p: &Packet, now: UnixTime) -> Outcome {
        s.handle(p, from_client(), Port::Dhcp, now)
    }

    fn reply(o: &Outcome) -> &Reply {
        &o.reply.as_ref().expect("a reply").reply
    }

    fn opt_str(r: &Reply, c: u8) -> Option<String> {
        r.get(c).map(|b| String::from_utf8_lossy(b).into_owned())
    }

    // ---- boot files -------------------------------------------------------------------

    #[test]
    fn boot_file_by_class() {
        let s = server(Mode::Proxy);
        type Case<'a> = (Vec<(u8, &'a [u8])>, &'a str);
        let cases: Vec<Case> = vec![
            (vec![(60, PXE_BIOS), (93, &[0, 0])], "undionly.kpxe"),
            (vec![(60, PXE_X64), (93, &[0, 7])], "snponly.efi"),
            (vec![(60, PXE_X64), (93, &[0, 9])], "snponly.efi"),
            (
                vec![(60, b"HTTPClient:Arch:00016:UNDI:003001"), (93, &[0, 16])],
                "http://198.18.0.1:8080/tftp/snponly.efi",
            ),
            (
                vec![(60, PXE_X64), (93, &[0, 7]), (77, b"iPXE")],
                "http://198.18.0.1:8080/boot/52:54:00:12:34:56.ipxe",
            ),
            (
                vec![(60, PXE_BIOS), (93, &[0, 0]), (175, &[1, 1, 1])],
                "http://198.18.0.1:8080/boot/52:54:00:12:34:56.ipxe",
            ),
            // Unknown architecture value: vendor class says BIOS.
            (vec![(60, PXE_BIOS), (93, &[0, 42])], "undionly.kpxe"),
            // Malformed option 93 before option 60: still answered, from the vendor class.
            (vec![(93, &[7]), (60, PXE_X64)], "snponly.efi"),
        ];
        for (opts, want) in cases {
            let o = handle(&s, &pkt(1, &opts), T0);
            let r = reply(&o);
            assert_eq!(r.file, want, "{opts:?}");
            assert_eq!(opt_str(r, code::BOOTFILE_NAME).as_deref(), Some(want));
            assert_eq!(r.siaddr, SERVER);
        }
    }

    #[test]
    fn grub_machines_get_shim_on_uefi_and_ipxe_elsewhere() {
        let grub = Host {
            hostname: "sb01".into(),
            loader: Loader::Grub,
            ..Host::default()
        };
        let s = server_with(Mode::Proxy, false, &[(mac(), grub)]);
        type Case<'a> = (Vec<(u8, &'a [u8])>, &'a str);
        let cases: Vec<Case> = vec![
            // UEFI x64 and ARM64 PXE: shim, which loads GRUB from the same folder.
            (vec![(60, PXE_X64), (93, &[0, 7])], "shimx64.efi"),
            (vec![(60, PXE_X64), (93, &[0, 9])], "shimx64.efi"),
            (
                vec![(60, b"PXEClient:Arch:00011:UNDI:003000"), (93, &[0, 11])],
                "shimaa64.efi",
            ),
            // BIOS has no GRUB chain: iPXE as before.
            (vec![(60, PXE_BIOS), (93, &[0, 0])], "undionly.kpxe"),
            // A client already running iPXE still gets its script.
            (
                vec![(60, PXE_X64), (93, &[0, 7]), (77, b"iPXE")],
                "http://198.18.0.1:8080/boot/52:54:00:12:34:56.ipxe",
            ),
        ];
        for (opts, want) in cases {
            let o = handle(&s, &pkt(1, &opts), T0);
            let r = reply(&o);
            assert_eq!(r.file, want, "{opts:?}");
            assert_eq!(opt_str(r, code::BOOTFILE_NAME).as_deref(), Some(want));
            assert_eq!(o.event.unwrap().1.boot_file.as_deref(), Some(want));
        }
        // The same machine with the iPXE loader: snponly.efi.
        let ipxe = Host {
            hostname: "sb01".into(),
            ..Host::default()
        };
        let s = server_with(Mode::Proxy, false, &[(mac(), ipxe)]);
        let o = handle(&s, &pkt(1, &[(60, PXE_X64), (93, &[0, 7])]), T0);
        assert_eq!(reply(&o).file, "snponly.efi");
        // Unknown machines follow the directory's default loader.
        struct GrubByDefault;
        impl Directory for GrubByDefault {
            fn lookup(&self, _: MacAddr) -> Option<Host> {
                None
            }
            fn answer_unknown(&self) -> bool {
                true
            }
            fn unknown_loader(&self) -> Loader {
                Loader::Grub
            }
        }
        let st = settings(Mode::Proxy);
        let leases = Arc::new(JournalStore::in_memory(st.pools()));
        let s = DhcpServer::new(st, Arc::new(GrubByDefault), Arc::new(NoObserver), leases).unwrap();
        let o = handle(&s, &pkt(1, &[(60, PXE_X64), (93, &[0, 7])]), T0);
        assert_eq!(reply(&o).file, "shimx64.efi");
    }

    #[test]
    fn arm64_gets_the_grub_chain_by_default_or_the_sites_own_loader() {
        // Arch 11, loader ipxe (the default): GRUB all the same (Debian has no arm64 iPXE),
        // directly (no shim).
        let arm64 = [
            (60, &b"PXEClient:Arch:00011:UNDI:003000"[..]),
            (93, &[0, 11][..]),
        ];
        let s = server(Mode::Proxy);
        let o = handle(&s, &pkt(1, &arm64), T0);
        let r = reply(&o);
        assert_eq!(
            opt_str(r, code::BOOTFILE_NAME).as_deref(),
            Some("grubaa64.efi")
        );
        let (_, ev) = o.event.unwrap();
        assert_eq!(ev.class.arch, Arch::UefiArm64);
        assert_eq!(ev.refusal, None);
        // x86-64 UEFI with the same (default) loader keeps iPXE.
        let o = handle(&s, &pkt(1, &[(60, PXE_X64), (93, &[0, 7])]), T0);
        assert_eq!(
            opt_str(reply(&o), code::BOOTFILE_NAME).as_deref(),
            Some("snponly.efi")
        );
        // A site's own arm64 loader (an iPXE it built) wins.
        let mut set = settings(Mode::Proxy);
        set.boot_files.arm64 = Some("ipxe-arm64.efi".into());
        let leases = Arc::new(JournalStore::in_memory(set.pools()));
        let dir = Arc::new(Dir {
            hosts: Default::default(),
            unknown: true,
        });
        let s = DhcpServer::new(set, dir, Arc::new(NoObserver), leases).unwrap();
        let o = handle(&s, &pkt(1, &arm64), T0);
        assert_eq!(
            opt_str(reply(&o), code::BOOTFILE_NAME).as_deref(),
            Some("ipxe-arm64.efi")
        );
        // ARM64 HTTP boot (arch 19) has no default: refused with the reason.
        let s = server(Mode::Proxy);
        let o = handle(
            &s,
            &pkt(
                1,
                &[(60, b"HTTPClient:Arch:00019:UNDI:003000"), (93, &[0, 19])],
            ),
            T0,
        );
        assert!(o.reply.is_none());
        let (_, ev) = o.event.unwrap();
        assert_eq!(
            ev.refusal,
            Some(Refusal::NoBootFile {
                arch: Arch::UefiArm64
            })
        );
    }

    // ---- proxy mode ---------------------------------------------------------------------

    #[test]
    fn proxy_offer_for_bios_pxe() {
        let s = server(Mode::Proxy);
        let mut uuid = vec![0u8];
        uuid.extend([7u8; 16]);
        let o = handle(
            &s,
            &pkt(1, &[(60, PXE_BIOS), (93, &[0, 0]), (97, &uuid)]),
            T0,
        );
        let out = o.reply.as_ref().unwrap();
        let r = &out.reply;
        assert_eq!(r.message_type(), Some(MessageType::Offer));
        assert_eq!(
            r.yiaddr,
            Ipv4Addr::UNSPECIFIED,
            "a proxy never offers an address"
        );
        assert_eq!(r.get(code::SERVER_ID), Some(&SERVER.octets()[..]));
        assert_eq!(opt_str(r, code::VENDOR_CLASS).as_deref(), Some("PXEClient"));
        assert_eq!(r.get(code::VENDOR_SPECIFIC), Some(&[6u8, 1, 8, 255][..]));
        assert_eq!(r.get(code::CLIENT_UUID), Some(&uuid[..]));
        assert_eq!(
            opt_str(r, code::TFTP_SERVER_NAME).as_deref(),
            Some("198.18.0.1")
        );
        assert!(r.get(code::LEASE_TIME).is_none());
        assert!(r.flags & FLAG_BROADCAST != 0);
        assert_eq!(out.to, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
        let (m, ev) = o.event.unwrap();
        assert_eq!(m, mac());
        assert_eq!(ev.sent, Some(MessageType::Offer));
        assert_eq!(ev.boot_file.as_deref(), Some("undionly.kpxe"));
        assert_eq!(ev.class.arch, Arch::Bios);
        assert_eq!(
            ev.class.uuid.as_deref(),
            Some("07070707-0707-0707-0707-070707070707")
        );
    }

    #[test]
    fn proxy_offer_for_uefi_has_no_option_43_and_decodes_with_dhcproto() {
        let s = server(Mode::Proxy);
        let o = handle(&s, &pkt(1, &[(60, PXE_X64), (93, &[0, 7])]), T0);
        let r = reply(&o);
        assert!(r.get(code::VENDOR_SPECIFIC).is_none());
        use dhcproto::{Decodable, Decoder};
        let bytes = r.encode();
        let m = dhcproto::v4::Message::decode(&mut Decoder::new(&bytes)).unwrap();
        assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(m.siaddr(), SERVER);
        assert_eq!(
            m.fname().map(|f| f.split(|&b| b == 0).next().unwrap_or(f)),
            Some(&b"snponly.efi"[..])
        );
        assert_eq!(m.opts().msg_type(), Some(dhcproto::v4::MessageType::Offer));
    }

    /// Found by fuzzing: option 97 was echoed whatever it held, so a client sending a long
    /// one (several instances joined, RFC 3396) got a reply over the 576 bytes it must
    /// accept, and an empty one came back as an option that dhcproto's encoder drops.
    #[test]
    fn malformed_or_oversized_option_97_is_not_echoed() {
        let long = vec![0u8; 600];
        let uuid: Vec<u8> = std::iter::once(0).chain(1..=16).collect();
        for mode in [Mode::Proxy, Mode::Authoritative] {
            let s = server(mode);
            let bad: [&[(u8, &[u8])]; 3] = [
                &[
                    (97, &long[..255]),
                    (97, &long[255..510]),
                    (97, &long[510..]),
                ],
                &[(97, &[])],
                &[(97, &uuid[1..])],
            ];
            for opts in bad {
                let mut opts = opts.to_vec();
                opts.extend([(60, PXE_X64), (93, &[0, 7][..])]);
                let o = handle(&s, &pkt(1, &opts), T0);
                let r = reply(&o);
                assert!(r.get(code::CLIENT_UUID).is_none(), "{mode:?}");
                assert!(r.encode().len() <= 576, "{mode:?}");
            }
            let o = handle(
                &s,
                &pkt(1, &[(97, &uuid), (60, PXE_X64), (93, &[0, 7])]),
                T0,
            );
            assert_eq!(
                reply(&o).get(code::CLIENT_UUID),
                Some(&uuid[..]),
                "{mode:?}"
            );
        }
    }

    #[test]
    fn proxy_http_boot_says_httpclient() {
        let s = server(Mode::Proxy);
        let o = handle(
            &s,
            &pkt(
                1,
                &[(60, b"HTTPClient:Arch:00016:UNDI:003001"), (93, &[0, 16])],
            ),
            T0,
        );
        let r = reply(&o);
        assert_eq!(
            opt_str(r, code::VENDOR_CLASS).as_deref(),
            Some("HTTPClient")
        );
        assert!(r.get(code::TFTP_SERVER_NAME).is_none());
        assert!(r.get(code::VENDOR_SPECIFIC).is_none());
    }

    #[test]
    fn proxy_ignores_plain_dhcp_clients_and_other_messages() {
        let s = server(Mode::Proxy);
        let o = handle(&s, &pkt(1, &[(60, b"udhcp 1.36.1")]), T0);
        assert!(o.reply.is_none() && o.event.is_none() && o.ignored.is_some());
        let o = handle(&s, &pkt(1, &[]), T0);
        assert!(o.reply.is_none() && o.event.is_none());
        // A REQUEST on port 67 is not ours: to the site's DHCP server, or to us from a
        // client that mistook our offer for a lease.
        let o = handle(&s, &pkt(3, &[(60, PXE_X64), (54, &[198, 18, 0, 2])]), T0);
        assert!(o.reply.is_none() && o.event.is_none());
        let o = handle(
            &s,
            &pkt(
                3,
                &[(60, PXE_X64), (50, &[0, 0, 0, 0]), (54, &SERVER.octets())],
            ),
            T0,
        );
        assert!(o.reply.is_none() && o.event.is_none());
        // Releases and the like are never answered.
        assert!(handle(&s, &pkt(7, &[(60, PXE_X64)]), T0).reply.is_none());
    }

    #[test]
    fn proxy_pxe_port_acks_unicast_to_the_source() {
        let s = server(Mode::Proxy);
        let mut p = pkt(3, &[(60, PXE_X64), (93, &[0, 7])]);
        p.ciaddr = Ipv4Addr::new(198, 18, 0, 57);
        let src = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 57), 4011);
        let o = s.handle(&p, src, Port::Pxe, T0);
        let out = o.reply.as_ref().unwrap();
        assert_eq!(out.to, src);
        assert_eq!(out.reply.message_type(), Some(MessageType::Ack));
        assert_eq!(out.reply.ciaddr, p.ciaddr);
        assert_eq!(out.reply.yiaddr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(out.reply.file, "snponly.efi");
        assert_eq!(o.event.unwrap().1.port, 4011);
        // A DISCOVER on 4011 is not answered.
        assert!(s
            .handle(&pkt(1, &[(60, PXE_X64)]), src, Port::Pxe, T0)
            .reply
            .is_none());
    }

    #[test]
    fn unknown_machines_under_ignore_get_no_boot_answer() {
        let s = server_with(Mode::Proxy, false, &[]);
        let o = handle(&s, &pkt(1, &[(60, PXE_X64), (93, &[0, 7])]), T0);
        assert!(o.reply.is_none());
        let (_, ev) = o.event.unwrap();
        assert_eq!(ev.refusal, Some(Refusal::UnknownMachine));
        assert!(!ev.known);
        // Known ones do.
        let s = server_with(Mode::Proxy, false, &[(mac(), Host::default())]);
        let o = handle(&s, &pkt(1, &[(60, PXE_X64), (93, &[0, 7])]), T0);
        assert!(o.reply.is_some());
        assert!(o.event.unwrap().1.known);
    }

    #[test]
    fn ignores_replies_our_own_and_non_ethernet() {
        let s = server(Mode::Proxy);
        let mut p = pkt(1, &[(60, PXE_X64)]);
        p.op = 2;
        assert!(handle(&s, &p, T0).ignored.is_some());
        let p = pkt(1, &[(60, PXE_X64)]);
        let own = SocketAddrV4::new(SERVER, 67);
        assert!(s.handle(&p, own, Port::Dhcp, T0).ignored.is_some());
        let mut p = pkt(1, &[(60, PXE_X64)]);
        p.htype = 6;
        assert!(handle(&s, &p, T0).ignored.is_some());
        assert!(handle(&server(Mode::Off), &pkt(1, &[(60, PXE_X64)]), T0)
            .ignored
            .is_some());
    }

    #[test]
    fn relayed_proxy_offer_goes_to_the_relay() {
        let s = server(Mode::Proxy);
        let mut p = pkt(
            1,
            &[
                (60, PXE_X64),
                (93, &[0, 7]),
                (82, &[1, 3, b'a', b'b', b'c']),
            ],
        );
        p.giaddr = Ipv4Addr::new(198, 18, 1, 1);
        let o = handle(&s, &p, T0);
        let out = o.reply.unwrap();
        assert_eq!(out.to, SocketAddrV4::new(p.giaddr, 67));
        assert_eq!(out.reply.giaddr, p.giaddr);
        assert_eq!(out.reply.get(82), Some(&[1u8, 3, b'a', b'b', b'c'][..]));
    }

    #[test]
    fn a_client_over_its_rate_limit_is_dropped_and_counted() {
        let s = server(Mode::Authoritative);
        for i in 0..super::super::limit::PER_CLIENT {
            assert!(discover(&s, &[], T0).reply.is_some(), "request {i}");
        }
        let o = discover(&s, &[], T0);
        assert!(o.reply.is_none());
        assert_eq!(o.ignored, Some("over the per-client rate limit"));
        assert_eq!(
            s.counters()
                .rate_limited
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        let next = T0 + super::super::limit::WINDOW_SECS;
        assert!(discover(&s, &[], next).reply.is_some(), "a new window");
    }

    // ---- authoritative mode -------------------------------------------------------------

    fn discover(s: &DhcpServer, opts: &[(u8, &[u8])], now: UnixTime) -> Outcome {
        handle(s, &pkt(1, opts), now)
    }

    fn request(
        s: &DhcpServer,
        ip: Ipv4Addr,
        server_id: Option<Ipv4Addr>,
        now: UnixTime,
    ) -> Outcome {
        let ipb = ip.octets();
        let sid = server_id.map(|a| a.octets());
        let mut opts: Vec<(u8, &[u8])> = vec![(50, &ipb)];
        if let Some(sid) = &sid {
            opts.push((54, sid));
        }
        handle(s, &pkt(3, &opts), now)
    }

    #[tokio::test]
    async fn four_way_exchange_for_a_plain_client() {
        let s = server(Mode::Authoritative);
        let o = discover(&s, &[(60, b"udhcp 1.36.1")], T0);
        let r = reply(&o);
        assert_eq!(r.message_type(), Some(MessageType::Offer));
        let ip = r.yiaddr;
        assert_eq!(ip, Ipv4Addr::new(198, 18, 0, 100));
        assert_eq!(r.get(code::SUBNET_MASK), Some(&[255u8, 255, 255, 0][..]));
        assert_eq!(r.get(code::ROUTER), Some(&SERVER.octets()[..]));
        assert_eq!(r.get(code::LEASE_TIME), Some(&3600u32.to_be_bytes()[..]));
        assert_eq!(
            opt_str(r, code::DOMAIN_NAME).as_deref(),
            Some("lab.example")
        );
        assert!(
            r.get(code::BOOTFILE_NAME).is_none(),
            "plain clients get no boot file"
        );
        assert!(r.file.is_empty());
        assert_eq!(o.reply.as_ref().unwrap().to.ip(), &Ipv4Addr::BROADCAST);

        let o = request(&s, ip, Some(SERVER), T0 + 1);
        let r = reply(&o);
        assert_eq!(r.message_type(), Some(MessageType::Ack));
        assert_eq!(r.yiaddr, ip);
        o.durable.wait().await.unwrap();
        let l = s.leases().lease_of(mac(), T0 + 2).unwrap();
        assert_eq!((l.ip, l.state), (ip, LeaseState::Bound));
    }

    #[test]
    fn pxe_client_gets_address_and_boot_file_without_proxy_options() {
        let s = server(Mode::Authoritative);
        let o = discover(&s, &[(60, PXE_X64), (93, &[0, 7])], T0);
        let r = reply(&o);
        assert_ne!(r.yiaddr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(r.file, "snponly.efi");
        assert_eq!(r.siaddr, SERVER);
        assert!(r.get(code::VENDOR_SPECIFIC).is_none());
        assert!(r.get(code::VENDOR_CLASS).is_none());
        // HTTP boot needs its option 60 back.
        let o = discover(&s, &[(60, b"HTTPClient"), (93, &[0, 16])], T0);
        assert_eq!(
            opt_str(reply(&o), code::VENDOR_CLASS).as_deref(),
            Some("HTTPClient")
        );
    }

    /// A server for an HTTP-boot-only site: `tftp` off (no tftp section in the config).
    fn server_without_tftp(mode: Mode) -> DhcpServer {
        let mut s = settings(mode);
        s.boot_files.tftp = false;
        let leases = Arc::new(JournalStore::in_memory(s.pools()));
        let dir = Dir {
            hosts: Default::default(),
            unknown: true,
        };
        DhcpServer::new(s, Arc::new(dir), Arc::new(NoObserver), leases).unwrap()
    }

    /// OVMF's (EDK2 2022.11) HTTP boot DISCOVER, as captured from the firmware in the
    /// uefi-http scenario: vendor class, arch 16, NDI 1.3.0, an all-zero UUID.
    const EDK2_HTTP: &[(u8, &[u8])] = &[
        (57, &[0x05, 0xc0]),
        (97, &[0; 17]),
        (94, &[1, 3, 0]),
        (93, &[0, 16]),
        (60, b"HTTPClient:Arch:00016:UNDI:003000"),
    ];

    /// What EDK2's HTTP boot needs in authoritative mode, read back by dhcproto: an
    /// address, option 60 "HTTPClient" (without it EDK2 takes the offer for an address
    /// only and keeps looking for a boot URI), the loader's full http:// URL in `file` and
    /// option 67, no TFTP server name (option 66, sname) and no PXE options (43). The same
    /// with TFTP off: HTTP boot never needs it.
    #[test]
    fn authoritative_http_boot_offer_and_ack_decode_with_dhcproto() {
        use dhcproto::v4::{DhcpOption, Message, MessageType as M, OptionCode};
        use dhcproto::{Decodable, Decoder};
        let url = "http://198.18.0.1:8080/tftp/snponly.efi";
        for s in [
            server(Mode::Authoritative),
            server_without_tftp(Mode::Authoritative),
        ] {
            let offer = discover(&s, EDK2_HTTP, T0);
            assert_eq!(offer.event.as_ref().unwrap().1.refusal, None);
            let ip = reply(&offer).yiaddr;
            let ipb = ip.octets();
            let mut opts = EDK2_HTTP.to_vec();
            opts.extend([(50, &ipb[..]), (54, &[198, 18, 0, 1][..])]);
            let ack = handle(&s, &pkt(3, &opts), T0);
            assert_eq!(ack.event.as_ref().unwrap().1.refusal, None);
            for (o, want) in [(&offer, M::Offer), (&ack, M::Ack)] {
                let bytes = reply(o).encode();
                let m = Message::decode(&mut Decoder::new(&bytes)).unwrap();
                assert_eq!(m.opts().msg_type(), Some(want));
                assert_eq!(m.yiaddr(), ip);
                assert!(ip.octets()[..3] == [198, 18, 0], "{ip}");
                let fname = m.fname().map(|f| f.split(|&b| b == 0).next().unwrap_or(f));
                assert_eq!(fname, Some(url.as_bytes()), "{want:?}");
                assert!(m.sname().is_none_or(|n| n.iter().all(|&b| b == 0)));
                match m.opts().get(OptionCode::ClassIdentifier) {
                    Some(DhcpOption::ClassIdentifier(v)) => assert_eq!(v, b"HTTPClient"),
                    other => panic!("{want:?}: option 60 is {other:?}"),
                }
                match m.opts().get(OptionCode::BootfileName) {
                    Some(DhcpOption::BootfileName(v)) => assert_eq!(v, url.as_bytes()),
                    other => panic!("{want:?}: option 67 is {other:?}"),
                }
                assert!(m.opts().get(OptionCode::TFTPServerName).is_none());
                assert!(m.opts().get(OptionCode::VendorExtensions).is_none());
                assert_eq!(
                    m.opts().get(OptionCode::ServerIdentifier),
                    Some(&DhcpOption::ServerIdentifier(SERVER))
                );
            }
        }
    }

    /// TFTP off: PXE firmware is still told its TFTP file (so that its read fails at once
    /// and it moves on to HTTP boot instead of asking again for a minute), with the reason
    /// in its event; HTTP boot and iPXE are answered as ever, in both modes.
    #[test]
    fn without_tftp_pxe_firmware_is_told_its_file_and_why_it_will_fail() {
        for mode in [Mode::Authoritative, Mode::Proxy] {
            let s = server_without_tftp(mode);
            let o = discover(&s, &[(60, PXE_X64), (93, &[0, 7])], T0);
            assert_eq!(reply(&o).file, "snponly.efi", "{mode:?}");
            let ev = &o.event.as_ref().unwrap().1;
            assert_eq!(ev.boot_file.as_deref(), Some("snponly.efi"));
            assert_eq!(
                ev.refusal,
                Some(Refusal::NoTftp {
                    arch: Arch::UefiX64
                }),
                "{mode:?}"
            );
            assert_eq!(ev.refusal.as_ref().unwrap().kind(), "no_tftp");
            let msg = ev.refusal.as_ref().unwrap().to_string();
            assert!(
                msg.starts_with("TFTP is off: x86-64 UEFI PXE firmware"),
                "{msg}"
            );
            for opts in [
                EDK2_HTTP,
                &[(60, PXE_X64), (93, &[0, 7]), (77, b"iPXE")][..],
            ] {
                let o = discover(&s, opts, T0);
                assert!(reply(&o).file.starts_with("http://"), "{mode:?} {opts:?}");
                assert_eq!(o.event.unwrap().1.refusal, None, "{mode:?} {opts:?}");
            }
        }
    }

    #[test]
    fn unknown_pxe_client_under_ignore_gets_an_address_but_no_boot_file() {
        let s = server_with(Mode::Authoritative, false, &[]);
        let o = discover(&s, &[(60, PXE_X64), (93, &[0, 7])], T0);
        let r = reply(&o);
        assert_ne!(r.yiaddr, Ipv4Addr::UNSPECIFIED);
        assert!(r.file.is_empty());
        assert!(r.get(code::BOOTFILE_NAME).is_none());
        assert_eq!(o.event.unwrap().1.refusal, Some(Refusal::UnknownMachine));
    }

    #[test]
    fn reservation_and_hostname() {
        let reserved = Ipv4Addr::new(198, 18, 0, 21);
        let s = server_with(
            Mode::Authoritative,
            false,
            &[(
                mac(),
                Host {
                    hostname: "web01".into(),
                    reserved_ip: Some(reserved),
                    siblings: Vec::new(),
                    loader: Loader::Ipxe,
                },
            )],
        );
        let o = discover(&s, &[], T0);
        let r = reply(&o);
        assert_eq!(r.yiaddr, reserved);
        assert_eq!(opt_str(r, code::HOSTNAME).as_deref(), Some("web01"));
        assert_eq!(
            reply(&request(&s, reserved, Some(SERVER), T0)).yiaddr,
            reserved
        );
        // Asking for a pool address instead: NAK.
        let o = request(&s, Ipv4Addr::new(198, 18, 0, 100), None, T0);
        assert_eq!(reply(&o).message_type(), Some(MessageType::Nak));
    }

    #[test]
    fn a_reservation_follows_the_machine_from_nic_to_nic() {
        let reserved = Ipv4Addr::new(198, 18, 0, 21);
        let second = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x57]);
        let stranger = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x58]);
        let host = |siblings| Host {
            hostname: "web01".into(),
            reserved_ip: Some(reserved),
            siblings,
            loader: Loader::Ipxe,
        };
        let s = server_with(
            Mode::Authoritative,
            false,
            &[
                (mac(), host(vec![second])),
                (second, host(vec![mac()])),
                (stranger, host(Vec::new())),
            ],
        );
        // The first NIC binds the reserved address.
        discover(&s, &[], T0);
        assert_eq!(
            reply(&request(&s, reserved, Some(SERVER), T0)).yiaddr,
            reserved
        );
        // The machine netboots from its second NIC: the address moves with it.
        let as_nic = |m: MacAddr, msg: u8, opts: &[(u8, &[u8])]| {
            let mut p = decode(&request_bytes(msg, m.0, opts)).unwrap();
            p.chaddr[..6].copy_from_slice(&m.0);
            handle(&s, &p, T0 + 5)
        };
        let o = as_nic(second, 1, &[]);
        assert_eq!(reply(&o).yiaddr, reserved, "offered to the second NIC");
        let ipb = reserved.octets();
        let sid = SERVER.octets();
        let o = as_nic(second, 3, &[(50, &ipb), (54, &sid)]);
        assert_eq!(reply(&o).message_type(), Some(MessageType::Ack));
        assert_eq!(s.leases.lease_at(reserved, T0 + 5).unwrap().mac, second);
        // Someone that is not a NIC of this machine never takes it.
        let o = as_nic(stranger, 3, &[(50, &ipb), (54, &sid)]);
        assert_eq!(reply(&o).message_type(), Some(MessageType::Nak));
        assert_eq!(s.leases.lease_at(reserved, T0 + 5).unwrap().mac, second);
    }

    #[test]
    fn pool_exhaustion_is_an_event_not_an_offer() {
        let s = server(Mode::Authoritative);
        for m in 1..=2u8 {
            let mut p = pkt(1, &[]);
            p.chaddr[5] = m;
            assert!(handle(&s, &p, T0).reply.is_some());
        }
        let mut p = pkt(1, &[]);
        p.chaddr[5] = 3;
        let o = handle(&s, &p, T0);
        assert!(o.reply.is_none());
        assert_eq!(
            o.event.unwrap().1.refusal,
            Some(Refusal::PoolExhausted {
                subnet: "198.18.0.0/24".into()
            })
        );
    }

    #[test]
    fn request_states_and_nak_cases() {
        let s = server(Mode::Authoritative);
        let ip = reply(&discover(&s, &[], T0)).yiaddr;
        // SELECTING another server: our offer is forgotten, no reply.
        let o = request(&s, ip, Some(Ipv4Addr::new(198, 18, 0, 2)), T0);
        assert!(o.reply.is_none());
        assert!(matches!(
            o.event.unwrap().1.refusal,
            Some(Refusal::OtherServer { .. })
        ));
        // INIT-REBOOT (no server id) for a free address in our pool: ACK.
        assert_eq!(
            reply(&request(&s, ip, None, T0)).message_type(),
            Some(MessageType::Ack)
        );
        // INIT-REBOOT on the wrong network: NAK, broadcast.
        let o = request(&s, Ipv4Addr::new(10, 9, 8, 7), None, T0);
        let out = o.reply.as_ref().unwrap();
        assert_eq!(out.reply.message_type(), Some(MessageType::Nak));
        assert_eq!(out.to, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
        assert!(opt_str(&out.reply, code::MESSAGE)
            .unwrap()
            .contains("not on network"));
        // Outside the pool, inside the subnet: NAK.
        let o = request(&s, Ipv4Addr::new(198, 18, 0, 50), None, T0);
        assert_eq!(reply(&o).message_type(), Some(MessageType::Nak));
        // Another client's address: NAK.
        let mut p = pkt(3, &[(50, &ip.octets())]);
        p.chaddr[5] = 0x99;
        assert_eq!(
            reply(&handle(&s, &p, T0)).message_type(),
            Some(MessageType::Nak)
        );
        // RENEWING: unicast from ciaddr, no option 50: ACK unicast.
        let mut p = pkt(3, &[]);
        p.ciaddr = ip;
        let o = handle(&s, &p, T0 + 1800);
        let out = o.reply.as_ref().unwrap();
        assert_eq!(out.reply.message_type(), Some(MessageType::Ack));
        assert_eq!(out.reply.ciaddr, ip);
        assert_eq!(out.to, SocketAddrV4::new(ip, 68));
        // REBINDING someone else's address (broadcast, ciaddr set): NAK.
        let mut p = pkt(3, &[]);
        p.ciaddr = ip;
        p.chaddr[5] = 0x98;
        assert_eq!(
            reply(&handle(&s, &p, T0 + 1800)).message_type(),
            Some(MessageType::Nak)
        );
    }

    #[test]
    fn release_and_decline() {
        let s = server(Mode::Authoritative);
        let ip = reply(&discover(&s, &[], T0)).yiaddr;
        assert!(request(&s, ip, Some(SERVER), T0).reply.is_some());
        // DECLINE: quarantined, the client gets another address next time.
        let o = handle(
            &s,
            &pkt(4, &[(50, &ip.octets()), (54, &SERVER.octets())]),
            T0 + 1,
        );
        assert!(o.reply.is_none());
        assert_eq!(o.event.unwrap().1.ip, Some(ip));
        let again = reply(&discover(&s, &[], T0 + 2)).yiaddr;
        assert_ne!(again, ip);
        // RELEASE frees it.
        assert!(request(&s, again, Some(SERVER), T0 + 2).reply.is_some());
        let mut p = pkt(7, &[(54, &SERVER.octets())]);
        p.ciaddr = again;
        assert!(handle(&s, &p, T0 + 3).reply.is_none());
        assert_eq!(
            s.leases().lease_of(mac(), T0 + 3).unwrap().state,
            LeaseState::Released
        );
    }

    #[test]
    fn inform_gets_options_without_a_lease() {
        let s = server(Mode::Authoritative);
        let mut p = pkt(8, &[]);
        p.ciaddr = Ipv4Addr::new(198, 18, 0, 30);
        let o = handle(&s, &p, T0);
        let out = o.reply.unwrap();
        assert_eq!(out.reply.message_type(), Some(MessageType::Ack));
        assert_eq!(out.reply.yiaddr, Ipv4Addr::UNSPECIFIED);
        assert!(out.reply.get(code::LEASE_TIME).is_none());
        assert!(out.reply.get(code::ROUTER).is_some());
        assert_eq!(out.to, SocketAddrV4::new(p.ciaddr, 68));
    }

    #[test]
    fn relayed_requests_use_the_relay_subnet_and_answer_the_relay() {
        let s = server(Mode::Authoritative);
        let mut p = pkt(1, &[]);
        p.giaddr = Ipv4Addr::new(198, 18, 1, 1);
        let o = handle(&s, &p, T0);
        let out = o.reply.as_ref().unwrap();
        assert_eq!(out.reply.yiaddr, Ipv4Addr::new(198, 18, 1, 100));
        assert_eq!(out.to, SocketAddrV4::new(p.giaddr, 67));
        assert_eq!(o.event.as_ref().unwrap().1.relay, Some(p.giaddr));
        // A relay in no configured subnet: nothing, with a reason.
        p.giaddr = Ipv4Addr::new(10, 0, 0, 1);
        let o = handle(&s, &p, T0);
        assert!(o.reply.is_none());
        assert!(matches!(
            o.event.unwrap().1.refusal,
            Some(Refusal::NoSubnet { .. })
        ));
        // A relayed NAK asks the relay to broadcast.
        let mut p = pkt(3, &[(50, &[198, 18, 0, 100])]);
        p.giaddr = Ipv4Addr::new(198, 18, 1, 1);
        let o = handle(&s, &p, T0);
        let r = reply(&o);
        assert_eq!(r.message_type(), Some(MessageType::Nak));
        assert!(r.flags & FLAG_BROADCAST != 0);
    }

    #[test]
    fn settings_are_checked() {
        let mut s = settings(Mode::Authoritative);
        s.interface = String::new();
        assert!(matches!(s.validate(), Err(DhcpError::NoInterface)));
        let mut s = settings(Mode::Authoritative);
        s.subnets[0].pool_end = Ipv4Addr::new(198, 18, 5, 1);
        assert!(s.validate().is_err());
        let mut s = settings(Mode::Authoritative);
        s.subnets.push(subnet(
            "198.18.0.128/25",
            [198, 18, 0, 130],
            [198, 18, 0, 140],
        ));
        assert!(s.validate().is_err());
        let mut s = settings(Mode::Off);
        s.interface = String::new();
        assert!(s.validate().is_ok());
        assert_eq!(settings(Mode::Proxy).pools()[0].exclude, vec![SERVER]);
    }
}
