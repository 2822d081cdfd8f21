//! Entry points for the fuzz targets in `fuzz/` (compiled only with the `fuzzing` feature).
//!
//! Every other module is crate-private; the targets reach the DHCP codec and decisions, the
//! TFTP codec and option negotiation, the path jail, the config and inventory loaders and
//! the install-template renderer only through these functions. Each one checks the
//! properties that need the crate's own types and panics when one does not hold (libFuzzer
//! records the input as a finding). What needs an independent implementation (dhcproto as a
//! second DHCP decoder) stays in the target, which gets plain values back.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::config::Config;
use crate::dhcp::decide::Port;
use crate::dhcp::wire::{self, code, MessageType, Reply};
use crate::dhcp::{
    BootFiles, DhcpEvent, DhcpObserver, DhcpServer, DhcpSettings, Directory, Host, Mode, Subnet,
};
use crate::inventory::{Context, Inventory, Vars};
use crate::leases::{JournalStore, LeaseState, LeaseStore, UnixTime};
use crate::mac::MacAddr;
use crate::render::{self, InstallVars};
use crate::tftp::packet::{self, Limits, Packet};
use crate::values::{cmdline_char, safe_relative, valid_hostname, valid_name, value_char};

// ---- DHCP -------------------------------------------------------------------------------

/// A DHCP message as our decoder sees it, in plain values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpView {
    pub op: u8,
    pub htype: u8,
    pub hlen: u8,
    pub hops: u8,
    pub xid: u32,
    pub secs: u16,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 16],
    /// The `sname` and `file` header fields up to their first NUL.
    pub sname: Vec<u8>,
    pub file: Vec<u8>,
    /// Options in the order first seen, split options concatenated (RFC 3396).
    pub options: Vec<(u8, Vec<u8>)>,
    pub truncated: bool,
}

impl DhcpView {
    pub fn option(&self, code: u8) -> Option<&[u8]> {
        self.options
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_slice())
    }
}

/// Our decoder's view of `bytes`, or `None` if it is not a DHCP message.
pub fn dhcp_decode(bytes: &[u8]) -> Option<DhcpView> {
    let p = wire::decode(bytes).ok()?;
    // decode() succeeded, so the fixed header (236 bytes) is there.
    let field = |f: &[u8]| f[..f.iter().position(|&b| b == 0).unwrap_or(f.len())].to_vec();
    Some(DhcpView {
        op: p.op,
        htype: p.htype,
        hlen: p.hlen,
        hops: p.hops,
        xid: p.xid,
        secs: p.secs,
        flags: p.flags,
        ciaddr: p.ciaddr,
        yiaddr: p.yiaddr,
        siaddr: p.siaddr,
        giaddr: p.giaddr,
        chaddr: p.chaddr,
        sname: field(&bytes[44..108]),
        file: field(&bytes[108..236]),
        options: p.options.iter().map(|(c, v)| (c, v.to_vec())).collect(),
        truncated: p.truncated,
    })
}

/// Decode one of our replies with our decoder and build the same reply again from what was
/// decoded: the bytes our encoder makes of it. `None` if it does not decode, has no message
/// type, or its `sname`/`file` are not UTF-8 (ours always are).
pub fn dhcp_reencode(bytes: &[u8]) -> Option<Vec<u8>> {
    let v = dhcp_decode(bytes)?;
    let p = wire::decode(bytes).ok()?;
    let msg = p.options.message_type()?;
    let mut r = Reply::to(&p, msg);
    r.ciaddr = v.ciaddr;
    r.yiaddr = v.yiaddr;
    r.siaddr = v.siaddr;
    r.sname = String::from_utf8(v.sname).ok()?;
    r.file = String::from_utf8(v.file).ok()?;
    for (c, data) in v.options {
        r.set(c, data);
    }
    Some(r.encode())
}

/// One reply the server would send.
#[derive(Debug, Clone)]
pub struct SentReply {
    pub authoritative: bool,
    pub to: SocketAddrV4,
    pub bytes: Vec<u8>,
}

/// A request and every reply the server would send to it.
#[derive(Debug, Clone)]
pub struct DhcpCase {
    pub request: DhcpView,
    pub replies: Vec<SentReply>,
}

const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const HTTP_URL: &str = "http://198.18.0.1:8080";
const T0: UnixTime = 1_700_000_000;
/// The inventory the DHCP target decides with: a machine with a reservation, one without.
const HOSTS: [([u8; 6], &str, Option<Ipv4Addr>); 2] = [
    (
        [0x52, 0x54, 0, 0x12, 0x34, 0x56],
        "web01",
        Some(Ipv4Addr::new(198, 18, 0, 21)),
    ),
    ([0x52, 0x54, 0, 0x12, 0x34, 0x57], "db01", None),
];

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

struct Quiet;

impl DhcpObserver for Quiet {
    fn event(&self, _: MacAddr, _: DhcpEvent) {}
}

fn subnet(net: &str, start: [u8; 4], end: [u8; 4], lease_secs: u64) -> Subnet {
    Subnet {
        net: net.parse().expect("a fixed network"),
        pool_start: start.into(),
        pool_end: end.into(),
        router: Some(SERVER),
        dns: vec![SERVER],
        domain: Some("lab.example".into()),
        lease_time: Duration::from_secs(lease_secs),
    }
}

/// A client request as firmware sends it (the prelude's packets).
fn request_bytes(msg: MessageType, mac: [u8; 6], opts: &[(u8, &[u8])]) -> Vec<u8> {
    let mut b = vec![0u8; 236];
    b[0] = wire::BOOTREQUEST;
    b[1] = 1;
    b[2] = 6;
    b[4..8].copy_from_slice(&0x0bad_cafe_u32.to_be_bytes());
    b[28..34].copy_from_slice(&mac);
    b.extend_from_slice(&[99, 130, 83, 99, code::MESSAGE_TYPE, 1, msg.to_u8()]);
    for (c, v) in opts {
        b.push(*c);
        b.push(v.len() as u8);
        b.extend_from_slice(v);
    }
    b.push(code::END);
    b
}

/// Bytes → our decoder → `DhcpServer::handle` (proxy or authoritative, port, source, policy
/// and lease time chosen by the first byte) with an in-memory lease store that already
/// holds two bound leases. The request is handled twice (the second time after the offer
/// hold has passed). Panics if a reply breaks what the server promises; returns the replies
/// for the target's cross-decoder checks.
pub fn dhcp_decide(input: &[u8]) -> Option<DhcpCase> {
    let (&ctl, bytes) = input.split_first()?;
    let p = wire::decode(bytes).ok()?;
    let request = dhcp_decode(bytes)?;
    let mode = if ctl & 1 == 0 {
        Mode::Proxy
    } else {
        Mode::Authoritative
    };
    let port = if ctl & 2 == 0 { Port::Dhcp } else { Port::Pxe };
    let unknown = ctl & 4 != 0;
    let src = match (ctl >> 3) & 3 {
        0 => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
        1 => SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 57), 4011),
        2 => SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 1), 67),
        _ => SocketAddrV4::new(SERVER, 67),
    };
    // What an operator may configure: an hour, the minimum, more than option 51 holds,
    // and the largest `lease_time: Nd` the config accepts.
    let lease_secs = match (ctl >> 5) & 3 {
        0 => 3600,
        1 => 60,
        2 => u64::from(u32::MAX) + 7,
        _ => u64::MAX / 86_400 * 86_400,
    };
    let boot_files = BootFiles {
        arm64: (ctl & 0x80 != 0).then(|| "arm64/snponly.efi".to_string()),
        ..BootFiles::default()
    };
    let settings = DhcpSettings {
        mode,
        server_ip: SERVER,
        interface: "fuzz0".into(),
        http_url: format!("{HTTP_URL}/"),
        boot_files,
        subnets: vec![
            subnet(
                "198.18.0.0/24",
                [198, 18, 0, 100],
                [198, 18, 0, 102],
                lease_secs,
            ),
            subnet(
                "198.18.1.0/24",
                [198, 18, 1, 100],
                [198, 18, 1, 199],
                lease_secs,
            ),
        ],
    };
    let leases = Arc::new(JournalStore::in_memory(settings.pools()));
    let hosts: HashMap<MacAddr, Host> = HOSTS
        .iter()
        .map(|(mac, name, ip)| {
            (
                MacAddr(*mac),
                Host {
                    hostname: (*name).into(),
                    reserved_ip: *ip,
                    siblings: Vec::new(),
                    loader: Default::default(),
                },
            )
        })
        .collect();
    let server = DhcpServer::new(
        settings.clone(),
        Arc::new(Dir {
            hosts: hosts.clone(),
            unknown,
        }),
        Arc::new(Quiet),
        leases.clone(),
    )
    .expect("the fuzz settings are valid");
    let from_client = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68);
    if mode == Mode::Authoritative {
        // Prelude: db01 holds a pool address, web01 its reservation.
        let (db, web) = (HOSTS[1].0, HOSTS[0].0);
        let o = server.handle(
            &wire::decode(&request_bytes(MessageType::Discover, db, &[])).ok()?,
            from_client,
            Port::Dhcp,
            T0,
        );
        let offered = o.reply.expect("prelude: db01 gets an offer").reply.yiaddr;
        for (mac, ip) in [(db, offered), (web, Ipv4Addr::new(198, 18, 0, 21))] {
            let req = request_bytes(
                MessageType::Request,
                mac,
                &[
                    (code::REQUESTED_IP, &ip.octets()),
                    (code::SERVER_ID, &SERVER.octets()),
                ],
            );
            let o = server.handle(&wire::decode(&req).ok()?, from_client, Port::Dhcp, T0);
            let r = o.reply.expect("prelude: an ACK");
            assert_eq!(r.reply.yiaddr, ip, "prelude: the address asked for");
        }
    }
    let mut replies = Vec::new();
    for now in [T0 + 10, T0 + 50] {
        let o = server.handle(&p, src, port, now);
        let Some(out) = o.reply else { continue };
        let mac = MacAddr::from_slice(&p.chaddr).expect("a reply names a client");
        let bytes = out.reply.encode();
        let sent = dhcp_decode(&bytes).expect("our reply decodes with our decoder");
        let msg = sent
            .option(code::MESSAGE_TYPE)
            .and_then(|m| <[u8; 1]>::try_from(m).ok())
            .map(|[m]| MessageType::from_u8(m));
        let (_, ev) = o.event.as_ref().expect("every reply has an event");
        assert_eq!(ev.sent, msg, "the event names the reply sent");
        assert!(
            matches!(
                msg,
                Some(MessageType::Offer | MessageType::Ack | MessageType::Nak)
            ),
            "a reply is an OFFER, ACK or NAK: {msg:?}"
        );
        assert_eq!(sent.op, wire::BOOTREPLY);
        assert!(!sent.truncated, "our reply decodes whole");
        assert_eq!(
            (sent.xid, sent.chaddr, sent.giaddr),
            (p.xid, p.chaddr, p.giaddr),
            "xid, chaddr and giaddr are the request's"
        );
        assert_eq!(
            sent.option(code::SERVER_ID),
            Some(&SERVER.octets()[..]),
            "every reply names this server"
        );
        let yi = sent.yiaddr;
        if mode == Mode::Proxy || port == Port::Pxe || msg == Some(MessageType::Nak) {
            assert!(
                yi.is_unspecified(),
                "proxy answers and NAKs never carry an address: {yi}"
            );
        }
        if msg == Some(MessageType::Nak) {
            assert!(sent.option(code::LEASE_TIME).is_none());
            assert!(sent.option(code::BOOTFILE_NAME).is_none());
        }
        if !yi.is_unspecified() {
            let s = settings
                .subnets
                .iter()
                .find(|s| s.net.contains(yi))
                .unwrap_or_else(|| panic!("{yi} is in no configured subnet"));
            assert!(
                yi != s.net.network() && yi != s.net.broadcast(),
                "{yi} is a host address"
            );
            assert!(
                yi != SERVER && Some(yi) != s.router && !s.dns.contains(&yi),
                "{yi} is not the server, the router or a DNS server"
            );
            let reserved = hosts.get(&mac).and_then(|h| h.reserved_ip);
            match reserved.filter(|r| s.net.contains(*r)) {
                Some(r) => assert_eq!(yi, r, "a machine with a reservation gets only it"),
                None => assert!(s.in_pool(yi), "{yi} is in the pool of {}", s.net),
            }
            if msg == Some(MessageType::Ack) {
                let l = leases
                    .lease_at(yi, now)
                    .unwrap_or_else(|| panic!("ACKed {yi} has a lease"));
                assert_eq!(
                    (l.mac, l.state),
                    (mac, LeaseState::Bound),
                    "ACKed {yi} is bound to the client"
                );
            }
        }
        if let Some(info) = sent.option(code::RELAY_AGENT_INFO) {
            assert!(!p.giaddr.is_unspecified(), "option 82 only to relays");
            assert_eq!(
                Some(info),
                p.options.get(code::RELAY_AGENT_INFO),
                "option 82 is echoed verbatim (RFC 3046 §2.2)"
            );
        }
        replies.push(SentReply {
            authoritative: mode == Mode::Authoritative,
            to: out.to,
            bytes,
        });
    }
    // No address is bound to two machines.
    let bound: Vec<_> = leases
        .leases(T0 + 50)
        .into_iter()
        .filter(|l| l.state == LeaseState::Bound)
        .collect();
    for (i, a) in bound.iter().enumerate() {
        for b in &bound[i + 1..] {
            assert!(a.ip != b.ip, "{} bound twice", a.ip);
        }
    }
    Some(DhcpCase { request, replies })
}

// ---- TFTP -------------------------------------------------------------------------------

/// Bytes → TFTP packet: decode → encode → decode is the identity (and encoding is stable);
/// a read request's options are negotiated against the server's caps (chosen by the first
/// three bytes) and never granted outside RFC 2348/2349/7440 or those caps.
pub fn tftp_packet(input: &[u8]) {
    let [w, t, s, bytes @ ..] = input else { return };
    let max_window = match *w {
        0 => 0,
        255 => u16::MAX,
        b => u16::from(b % 64) + 1,
    };
    let limits = Limits {
        timeout: Duration::from_secs(1 + u64::from(*t)),
        max_window,
    };
    let file_size = match s % 4 {
        0 => None,
        1 => Some(0),
        2 => Some(u64::MAX),
        _ => Some(u64::from(*s) << 24),
    };
    let Ok(first) = Packet::decode(bytes) else {
        return;
    };
    let mut encoded = Vec::new();
    first.encode(&mut encoded);
    let second = Packet::decode(&encoded).expect("a re-encoded packet decodes");
    assert_eq!(second, first, "decode → encode → decode is the identity");
    let mut again = Vec::new();
    second.encode(&mut again);
    assert_eq!(again, encoded, "encoding is stable");

    let (Packet::Rrq(req) | Packet::Wrq(req)) = &first else {
        return;
    };
    let (agreed, oack) = packet::negotiate(&req.options, file_size, limits);
    assert_eq!(agreed.oack, !oack.is_empty());
    // What the client asked for: the first acceptable value of each option.
    let asked = |name: &str, ok: &dyn Fn(u64) -> bool| -> Option<u64> {
        req.options
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .find_map(|(_, v)| v.trim().parse::<u64>().ok().filter(|v| ok(*v)))
    };
    let mut names: Vec<&str> = Vec::new();
    for (name, value) in &oack {
        assert!(
            !names.contains(&name.as_str()),
            "{name} is in the OACK once"
        );
        names.push(name);
        let v: u64 = value.parse().expect("OACK values are numbers");
        assert_eq!(v.to_string(), *value, "OACK values are canonical numbers");
        match name.as_str() {
            "blksize" => {
                let a = asked("blksize", &|v| v >= 8).expect("blksize was asked for");
                assert!((8..=65464).contains(&v) && v <= a, "blksize {v} for {a}");
                assert_eq!(u64::from(agreed.block_size), v);
            }
            "timeout" => {
                let a = asked("timeout", &|v| (1..=255).contains(&v)).expect("timeout asked");
                assert_eq!(v, a, "timeout is granted as asked (RFC 2349)");
                assert_eq!(agreed.timeout, Duration::from_secs(v));
            }
            "tsize" => {
                assert!(asked("tsize", &|_| true).is_some(), "tsize was asked for");
                assert_eq!(Some(v), file_size, "tsize is the file's size");
                assert_eq!(agreed.transfer_size, Some(v));
            }
            "windowsize" => {
                let a = asked("windowsize", &|v| (1..=65535).contains(&v)).expect("asked");
                let cap = u64::from(max_window.max(1));
                assert!(
                    (1..=a.min(cap)).contains(&v),
                    "windowsize {v} for {a}, cap {cap}"
                );
                assert_eq!(u64::from(agreed.window_size), v);
            }
            other => panic!("OACK grants an option nobody negotiates: {other}"),
        }
    }
    if !names.contains(&"blksize") {
        assert_eq!(agreed.block_size, packet::DEFAULT_BLOCK_SIZE);
    }
    if !names.contains(&"windowsize") {
        assert_eq!(agreed.window_size, 1);
    }
    if !names.contains(&"timeout") {
        assert_eq!(agreed.timeout, limits.timeout);
    }
    if !names.contains(&"tsize") {
        assert_eq!(agreed.transfer_size, None);
    }
    let window_bytes = usize::from(agreed.window_size) * usize::from(agreed.block_size);
    assert!(
        agreed.window_size == 1 || window_bytes <= packet::MAX_WINDOW_BYTES,
        "a window of {} × {} bytes",
        agreed.window_size,
        agreed.block_size
    );
    // The OACK as sent decodes to the same options at the client.
    let mut wire_oack = Vec::new();
    Packet::Oack(oack.clone()).encode(&mut wire_oack);
    assert_eq!(Packet::decode(&wire_oack), Ok(Packet::Oack(oack)));
}

// ---- the path jail ------------------------------------------------------------------------

/// `jail::sanitize`: the relative path a requested name maps to, or why it is refused.
pub fn jail_sanitize(requested: &str) -> Result<PathBuf, String> {
    crate::jail::sanitize(requested).map_err(|e| e.to_string())
}

/// `jail::resolve` against a canonical `root`.
pub fn jail_resolve(root: &Path, requested: &str) -> Result<PathBuf, String> {
    crate::jail::resolve(root, requested).map_err(|e| e.to_string())
}

// ---- config and inventory -----------------------------------------------------------------

/// One problem a loader reported: its position and the whole message as printed.
#[derive(Debug, Clone)]
pub struct Positioned {
    pub line: usize,
    pub col: usize,
    pub text: String,
}

fn positioned(p: crate::yaml::Problems) -> Vec<Positioned> {
    p.0.iter()
        .map(|x| Positioned {
            line: x.pos.line,
            col: x.pos.col,
            text: x.to_string(),
        })
        .collect()
}

/// `stemcell.yaml` from text. On success, panics if the config holds what its validator
/// promises to refuse (the DHCP settings must then pass `DhcpSettings::validate`).
pub fn load_config(file: &Path, text: &str) -> Result<(), Vec<Positioned>> {
    let c = Config::parse(file, text).map_err(positioned)?;
    for s in &c.dhcp.subnets {
        assert!(s.net.contains(s.pool_start) && s.net.contains(s.pool_end));
        assert!(s.pool_start <= s.pool_end);
        assert!(s.lease_time >= Duration::from_secs(60));
        if let Some(d) = &s.domain {
            assert!(valid_hostname(d), "domain {d:?}");
        }
    }
    if c.dhcp.mode != Mode::Off && c.interface.is_some() {
        if let Err(e) = c.dhcp_settings(SERVER, HTTP_URL) {
            panic!("the config validator passed DHCP settings that DHCP refuses: {e}");
        }
    }
    assert!(c.stemcell.cmdline.chars().all(cmdline_char));
    if let Some(t) = &c.tftp {
        assert!(
            (1..=64).contains(&t.max_window),
            "max_window {}",
            t.max_window
        );
    }
    if let Some(u) = &c.http.url {
        assert!(u.starts_with("http://") || u.starts_with("https://"), "{u}");
    }
    Ok(())
}

/// `inventory.yaml` from text (templates and OS specs looked up in the given folders; with
/// `lab_subnets`, reservations are checked against the lab's subnet). On success, panics if
/// the inventory holds anything its validator promises to refuse.
pub fn load_inventory(
    file: &Path,
    text: &str,
    kickstarts: &Path,
    os_specs: &Path,
    lab_subnets: bool,
) -> Result<(), Vec<Positioned>> {
    let ctx = context(kickstarts, os_specs, lab_subnets);
    let inv = Inventory::parse(file, text, &ctx).map_err(positioned)?;
    inventory_invariants(&inv, &ctx);
    Ok(())
}

fn context(kickstarts: &Path, os_specs: &Path, lab_subnets: bool) -> Context {
    Context {
        kickstarts: kickstarts.to_path_buf(),
        os_specs: os_specs.to_path_buf(),
        subnets: if lab_subnets {
            vec![subnet(
                "198.18.0.0/24",
                [198, 18, 0, 100],
                [198, 18, 0, 199],
                3600,
            )]
        } else {
            Vec::new()
        },
    }
}

fn all_values_safe(v: &Value) -> bool {
    match v {
        Value::String(s) => s.chars().all(value_char),
        Value::Array(a) => a.iter().all(all_values_safe),
        Value::Object(o) => o.values().all(all_values_safe),
        Value::Null | Value::Bool(_) | Value::Number(_) => true,
    }
}

fn vars_safe(vars: &Vars) -> bool {
    vars.iter()
        .all(|(k, v)| crate::values::valid_var_name(k) && all_values_safe(v))
}

fn inventory_invariants(inv: &Inventory, ctx: &Context) {
    assert_eq!(inv.machines.len(), inv.order.len());
    assert!(
        vars_safe(&inv.defaults.vars),
        "defaults.vars hold unsafe values"
    );
    for (name, role) in &inv.roles {
        assert!(valid_name(name), "role name {name:?}");
        assert!(
            vars_safe(&role.vars),
            "role {name:?} vars hold unsafe values"
        );
        assert!(
            safe_relative(&role.template),
            "template {:?}",
            role.template
        );
        if let Some(c) = &role.cmdline {
            assert!(c.chars().all(|c| cmdline_char(c) || c == '{' || c == '}'));
        }
    }
    let mut hostnames = std::collections::HashSet::new();
    let mut ips = std::collections::HashSet::new();
    for mac in &inv.order {
        let m = inv
            .machines
            .get(mac)
            .expect("every listed MAC is a machine");
        assert!(inv.roles.contains_key(&m.role), "role {:?} exists", m.role);
        assert!(valid_hostname(&m.hostname), "hostname {:?}", m.hostname);
        assert!(
            hostnames.insert(m.hostname.to_ascii_lowercase()),
            "hostname {:?} twice",
            m.hostname
        );
        assert!(vars_safe(&m.vars), "machine {mac} vars hold unsafe values");
        assert!(vars_safe(&inv.merged_vars(m)));
        if let Some(ip) = m.ip {
            assert!(ips.insert(ip), "reserved IP {ip} twice");
            if let Some(s) = ctx.subnets.first() {
                assert!(s.net.contains(ip) && !s.in_pool(ip), "reservation {ip}");
                assert!(ip != s.net.network() && ip != s.net.broadcast());
            }
        }
    }
}

// ---- install templates with hostile values --------------------------------------------------

/// Characters the inventory refuses in values because a shell (or a kernel command line)
/// gives them meaning even inside double quotes or across lines.
const META: &[char] = &[
    '"', '\'', '$', '`', '\\', ';', '&', '|', '<', '>', '\r', '\0',
];

/// A value written into YAML in one of four styles. Style 0 (double-quoted with every
/// non-printable escaped) is exact: the scalar read back is `v` itself.
fn yaml_scalar(v: &str, style: u8) -> String {
    match style % 4 {
        0 => {
            let mut s = String::from("\"");
            for c in v.chars() {
                match c {
                    '"' => s.push_str("\\\""),
                    '\\' => s.push_str("\\\\"),
                    ' '..='~' => s.push(c),
                    c if u32::from(c) <= 0xffff => s.push_str(&format!("\\u{:04x}", u32::from(c))),
                    c => s.push_str(&format!("\\U{:08x}", u32::from(c))),
                }
            }
            s.push('"');
            s
        }
        1 => v.to_string(),
        2 => format!("'{}'", v.replace('\'', "''")),
        _ => {
            let mut s = String::from("|-\n");
            for line in v.split('\n') {
                s.push_str("        ");
                s.push_str(line);
                s.push('\n');
            }
            s
        }
    }
}

/// The same values with every character of every string replaced by `x`: what a template
/// renders with harmless values of the same shape (lengths, types, definedness).
fn neutral(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String("x".repeat(s.chars().count())),
        Value::Array(a) => Value::Array(a.iter().map(neutral).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), neutral(v))).collect()),
        other => other.clone(),
    }
}

fn neutral_vars(vars: &Vars) -> Vars {
    vars.iter().map(|(k, v)| (k.clone(), neutral(v))).collect()
}

const WEB: &str = "52:54:00:12:34:56";
const DEB: &str = "52:54:00:12:34:57";
const CMDLINE: &str = "console={{ vars.v1 }} BOOTIF={{ mac }} url={{ install_url }}";

/// Install-template rendering with hostile values. `values` (with a YAML style each) are
/// placed in every place an inventory value reaches a template: defaults, role and machine
/// vars, lists the templates loop over, and a role's kernel command line.
///
/// - A value written exactly (style 0) with a character outside the allowed set makes the
///   inventory fail to load; with only allowed characters everywhere it loads.
/// - Whatever loads holds only allowed characters, and rendering the real templates with
///   it differs from rendering with harmless values of the same shape only inside lines,
///   never by a quote, `$`, backtick, backslash, `;`, `&`, `|`, `<`, `>` or a line.
/// - `render::cmdline` refuses every character a kernel command line must not get, and
///   renders exactly the expected line otherwise.
/// - A role `cmdline` template taken from `cmdline` (if the inventory accepts it) renders
///   only command-line characters.
pub fn render_hostile_vars(
    values: &[(String, u8)],
    cmdline: &str,
    kickstarts: &Path,
    os_specs: &Path,
) {
    let benign = [
        "ttyS0,115200",
        "x",
        "y",
        "/dev/vda",
        "ttyS0",
        "ssh-ed25519 AAAA root@lab",
        "deb http://deb.example/debian bookworm main",
        "15min",
    ];
    let slot = |i: usize| -> (String, u8) {
        values
            .get(i)
            .cloned()
            .unwrap_or_else(|| (benign[i].to_string(), 0))
    };
    let s: Vec<(String, u8)> = (0..benign.len()).map(slot).collect();
    let y = |i: usize| yaml_scalar(&s[i].0, s[i].1);
    let text = format!(
        "defaults:
  unknown: discover
  vars:
    v0: {v0}
roles:
  web:
    template: base.sh.j2
    kernel: http://198.18.0.1:8080/assets/vmlinuz
    cmdline: \"{CMDLINE}\"
    vars:
      v1: {v1}
  deb:
    template: debian.sh.j2
    os: debian-12
machines:
  \"{WEB}\":
    hostname: web01
    role: web
    vars:
      v2: {v2}
      disk: {v3}
      extra_steps:
        - {v5}
        - {v6}
  \"{DEB}\":
    hostname: deb01
    role: deb
    vars:
      console: {v4}
      ssh_keys:
        - {v5}
      apt_sources:
        - {v6}
      puppet_interval: {v7}
",
        v0 = y(0),
        v1 = y(1),
        v2 = y(2),
        v3 = y(3),
        v4 = y(4),
        v5 = y(5),
        v6 = y(6),
        v7 = y(7),
    );
    let ctx = context(kickstarts, os_specs, false);
    let file = Path::new("inventory.yaml");
    let loaded = Inventory::parse(file, &text, &ctx);
    let exact_bad = s
        .iter()
        .any(|(v, st)| st % 4 == 0 && !v.chars().all(value_char));
    let all_exact_good = s
        .iter()
        .all(|(v, st)| st % 4 == 0 && v.chars().all(value_char));
    if exact_bad {
        assert!(
            loaded.is_err(),
            "an unsafe value was accepted: {s:?}\n{text}"
        );
    }
    // vars.disk is also the machine's disk rule: it must be a device path (/dev/NAME,
    // /dev/disk/by-path/…, /dev/disk/by-id/…), else the load says so.
    if all_exact_good && crate::inventory::legacy_disk_ok(&s[3].0) {
        if let Err(e) = &loaded {
            panic!("safe values were refused: {e}\n{text}");
        }
    }
    if let Ok(inv) = &loaded {
        inventory_invariants(inv, &ctx);
        render_all(inv, kickstarts);
    }

    // A role command line from the input, on its own (its refusal must not hide the rest).
    let text = format!(
        "roles:
  r:
    template: base.sh.j2
    kernel: vmlinuz
    cmdline: {c}
    vars:
      v1: {v1}
machines:
  \"{WEB}\":
    role: r
",
        c = yaml_scalar(cmdline, 0),
        v1 = y(1),
    );
    if let Ok(inv) = Inventory::parse(file, &text, &ctx) {
        let m = inv.machines.values().next().expect("one machine");
        let role = inv.role_of(m).expect("its role");
        let vars = InstallVars::new(&inv, m, HTTP_URL, "tok");
        if let Some(t) = role.cmdline.as_deref() {
            if let Ok(out) = render::cmdline(t, &vars) {
                // A `;` (cloud-init's ds=nocloud;s=…) only when the operator wrote one in
                // the template itself: no value can bring one.
                assert!(
                    out.chars()
                        .all(|c| cmdline_char(c) || (c == ';' && t.contains(';'))),
                    "cmdline {t:?} rendered {out:?}"
                );
            }
        }
    }
}

fn built_os() -> crate::images::BuiltOs {
    crate::images::BuiltOs {
        name: "debian-12".into(),
        sha256: "0".repeat(64),
        size: 123_456_789,
        file: format!("{}.tar.zst", "0".repeat(64)),
    }
}

fn render_all(inv: &Inventory, kickstarts: &Path) {
    let mut calm = inv.clone();
    calm.defaults.vars = neutral_vars(&inv.defaults.vars);
    for r in calm.roles.values_mut() {
        r.vars = neutral_vars(&r.vars);
    }
    for m in calm.machines.values_mut() {
        m.vars = neutral_vars(&m.vars);
    }
    let os = built_os();
    for mac in &inv.order {
        let (m, mc) = (&inv.machines[mac], &calm.machines[mac]);
        let role = inv.role_of(m).expect("a machine's role exists");
        let vars = |i: &Inventory, m| {
            InstallVars::new(i, m, HTTP_URL, "tok")
                .with_machine_key("key")
                .with_os(&os)
        };
        let (hot, cold) = (vars(inv, m), vars(&calm, mc));
        let a = render::install_script(kickstarts, &role.template, &hot);
        let b = render::install_script(kickstarts, &role.template, &cold);
        match (&a, &b) {
            (Ok(a), Ok(b)) => compare_scripts(a, b),
            (Err(_), Err(_)) => {}
            _ => panic!(
                "{}: renders with the values but not with harmless ones of the same shape, or the other way round: {:?} / {:?}",
                role.template,
                a.as_ref().err(),
                b.as_ref().err()
            ),
        }
        if let Some(t) = &role.cmdline {
            let got = render::cmdline(t, &hot);
            assert!(t == CMDLINE, "the only role with a command line");
            match hot.vars.get("v1") {
                Some(Value::String(v1)) => {
                    let want = format!("console={v1} BOOTIF={} url={}", hot.mac, hot.install_url);
                    if want.chars().all(cmdline_char) {
                        assert_eq!(got.ok(), Some(want), "cmdline with v1 = {v1:?}");
                    } else {
                        assert!(got.is_err(), "cmdline took {v1:?}");
                    }
                }
                _ => {
                    if let Ok(out) = got {
                        assert!(out.chars().all(cmdline_char), "{out:?}");
                    }
                }
            }
        }
    }
}

/// The script rendered with hostile values has the same lines as with harmless ones, and
/// each line the same count of every metacharacter.
fn compare_scripts(hot: &str, cold: &str) {
    let (h, c): (Vec<&str>, Vec<&str>) = (hot.split('\n').collect(), cold.split('\n').collect());
    assert_eq!(h.len(), c.len(), "a value added or removed lines");
    for (a, b) in h.iter().zip(&c) {
        if a == b {
            continue;
        }
        for m in META {
            assert_eq!(
                a.matches(*m).count(),
                b.matches(*m).count(),
                "a value brought {m:?} into the script:\n{a}\n(harmless: {b})"
            );
        }
    }
}
