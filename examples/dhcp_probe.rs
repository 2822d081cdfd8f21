//! tests/netns/dhcp.sh's PXE probe: a firmware-like DHCP client that binds nothing and
//! prints every reply it sees, so a test can check stemcell's offers beside another DHCP
//! server's. Run inside a network namespace made by the script; never on a real network.
//!
//! `dhcp_probe IFACE MAC discover ARCH [ipxe] [WAIT_MS]`: broadcast a DISCOVER as PXE
//! firmware does (option 60 "PXEClient:Arch:NNNNN:UNDI:003016", option 93 ARCH, option 97,
//! broadcast flag, plus user class "iPXE" with `ipxe`) from port 68 on IFACE, and print every
//! reply with the same xid as `REPLY <source> <json>` until WAIT_MS (default 1500) has passed.
//! `dhcp_probe IFACE MAC request4011 ARCH SERVER`: unicast the REQUEST UEFI firmware sends to
//! a proxyDHCP server's port 4011, from IFACE's address, and print the reply.
//! Prints `NO REPLY` and exits 1 when nothing answered.
//!
//! An example, not a `[[bin]]`: it must not ship with stemcell. tests/dhcp_clients.rs builds
//! it with `cargo build --example dhcp_probe` (tests/common: `helper`).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use dhcproto::v4::{Architecture, DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use socket2::{Domain, Protocol, Socket, Type};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match probe(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dhcp_probe {args:?}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn probe(a: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let [iface, mac, action, arch, rest @ ..] = a else {
        return Err(
            "usage: IFACE MAC discover ARCH [ipxe] [WAIT_MS] | IFACE MAC request4011 ARCH SERVER"
                .into(),
        );
    };
    let mac: Vec<u8> = mac
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<_, _>>()?;
    if mac.len() != 6 {
        return Err("MAC must have six bytes".into());
    }
    let arch: u16 = arch.parse()?;
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    // Several probes may run side by side on one interface: each sees every broadcast
    // and keeps the replies with its own xid.
    sock.set_reuse_address(true)?;
    sock.set_broadcast(true)?;
    sock.bind_device(Some(iface.as_bytes()))?;
    sock.bind(&SocketAddr::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68)).into())?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let sock: std::net::UdpSocket = sock.into();

    let xid = u32::from_be_bytes([mac[3], mac[4], mac[5], 0]) ^ u32::from(arch);
    let mut m = Message::default();
    m.set_opcode(Opcode::BootRequest)
        .set_xid(xid)
        .set_chaddr(&mac)
        .set_flags(Flags::default().set_broadcast());
    let o = m.opts_mut();
    o.insert(DhcpOption::ClassIdentifier(
        format!("PXEClient:Arch:{arch:05}:UNDI:003016").into_bytes(),
    ));
    o.insert(DhcpOption::ClientSystemArchitecture(Architecture(arch)));
    let mut uuid = vec![0u8];
    uuid.extend(1u8..=16);
    o.insert(DhcpOption::ClientMachineIdentifier(uuid));
    let mut wait = Duration::from_millis(1500);
    let dest = match action.as_str() {
        "discover" => {
            o.insert(DhcpOption::MessageType(MessageType::Discover));
            for r in rest {
                match r.as_str() {
                    "ipxe" => {
                        o.insert(DhcpOption::UserClass(b"iPXE".to_vec()));
                    }
                    ms => wait = Duration::from_millis(ms.parse()?),
                }
            }
            SocketAddrV4::new(Ipv4Addr::BROADCAST, 67)
        }
        "request4011" => {
            let server: Ipv4Addr = rest.first().ok_or("SERVER needed")?.parse()?;
            o.insert(DhcpOption::MessageType(MessageType::Request));
            SocketAddrV4::new(server, 4011)
        }
        x => return Err(format!("unknown action {x}").into()),
    };
    let mut buf = Vec::new();
    m.encode(&mut Encoder::new(&mut buf))?;
    sock.send_to(&buf, dest)?;
    let deadline = Instant::now() + wait;
    let mut rx = [0u8; 1500];
    let mut replies = 0;
    while Instant::now() < deadline {
        let Ok((n, src)) = sock.recv_from(&mut rx) else {
            continue;
        };
        let Ok(r) = Message::decode(&mut Decoder::new(&rx[..n])) else {
            continue;
        };
        if r.opcode() != Opcode::BootReply || r.xid() != xid {
            continue;
        }
        replies += 1;
        println!("REPLY {src} {}", describe(&r));
        if action == "request4011" {
            break;
        }
    }
    if replies == 0 {
        println!("NO REPLY");
        return Err("no reply".into());
    }
    Ok(())
}

/// One reply as a line of JSON, decoded by dhcproto (independent of stemcell's decoder).
fn describe(r: &Message) -> serde_json::Value {
    let bytes = |c: OptionCode| match r.opts().get(c) {
        Some(DhcpOption::VendorExtensions(b)) | Some(DhcpOption::ClientMachineIdentifier(b)) => {
            serde_json::Value::String(format!("{b:?}"))
        }
        Some(other) => serde_json::Value::String(format!("{other:?}")),
        None => serde_json::Value::Null,
    };
    let text = |c: OptionCode| match r.opts().get(c) {
        Some(DhcpOption::ClassIdentifier(b)) | Some(DhcpOption::BootfileName(b)) => {
            Some(String::from_utf8_lossy(b).into_owned())
        }
        _ => None,
    };
    let server_id = match r.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(ip.to_string()),
        _ => None,
    };
    let file = r
        .fname()
        .map(|f| String::from_utf8_lossy(f.split(|&b| b == 0).next().unwrap_or(f)).into_owned());
    serde_json::json!({
        "type": format!("{:?}", r.opts().msg_type()),
        "yiaddr": r.yiaddr().to_string(),
        "siaddr": r.siaddr().to_string(),
        "file": file,
        "opt54": server_id,
        "opt60": text(OptionCode::ClassIdentifier),
        "opt67": text(OptionCode::BootfileName),
        "opt43": bytes(OptionCode::VendorExtensions),
        "opt97": bytes(OptionCode::ClientMachineIdentifier),
    })
}
