//! The socket loop: frames bytes, asks [`DhcpServer::handle`], sends what it says.
//!
//! Sockets are bound to the configured interface only (SO_BINDTODEVICE), on 0.0.0.0 so
//! that broadcasts arrive, with SO_BROADCAST so that replies to clients without an address
//! can go to 255.255.255.255 (on a device-bound socket that leaves through that device).
//! The packet path holds no lock across an await and does no file I/O: a lease change is
//! a channel send to the journal's writer thread, and an ACK that must wait for its sync
//! waits in its own task, so the receive loop goes on.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::decide::{DhcpServer, Outcome, Port};
use super::wire;
use super::{Counters, DhcpError, DhcpSettings, Mode, DHCP_SERVER_PORT, PXE_PORT};
use crate::leases::UnixTime;

/// A UDP socket on 0.0.0.0:`port` that only sees `interface`: SO_BROADCAST,
/// SO_BINDTODEVICE, non-blocking, as a tokio socket. No SO_REUSEADDR: a second DHCP
/// server on the same interface must fail to start, not answer beside the first. Call inside a tokio
/// runtime. Port 67 needs root or CAP_NET_BIND_SERVICE; SO_BINDTODEVICE needs
/// CAP_NET_RAW on older kernels.
pub(crate) fn bind(interface: &str, port: u16) -> io::Result<UdpSocket> {
    if interface.trim().is_empty() {
        return Err(DhcpError::NoInterface.into());
    }
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_broadcast(true)?;
    // Boot storms arrive in bursts; a larger queue drops fewer of them. The kernel caps
    // this at net.core.rmem_max, which is fine.
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind_device(Some(interface.as_bytes()))?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).into())?;
    UdpSocket::from_std(s.into())
}

/// The sockets DHCP serves on: port 67, and port 4011 for proxyDHCP.
pub(crate) struct Sockets {
    pub(crate) dhcp: UdpSocket,
    pub(crate) pxe: Option<UdpSocket>,
}

impl Sockets {
    /// Bind what `settings` needs: 67 always, 4011 in proxy mode.
    pub(crate) fn bind(settings: &DhcpSettings) -> Result<Sockets, DhcpError> {
        if settings.mode == Mode::Off {
            return Err(DhcpError::Settings("DHCP is off; nothing to bind".into()));
        }
        let one = |port| {
            bind(&settings.interface, port).map_err(|source| {
                if settings.interface.trim().is_empty() {
                    DhcpError::NoInterface
                } else {
                    DhcpError::Bind {
                        interface: settings.interface.clone(),
                        port,
                        source,
                    }
                }
            })
        };
        let dhcp = one(DHCP_SERVER_PORT)?;
        let pxe = match settings.mode {
            Mode::Proxy => Some(one(PXE_PORT)?),
            _ => None,
        };
        Ok(Sockets { dhcp, pxe })
    }
}

fn now_unix() -> UnixTime {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Serve until `shutdown` is cancelled, then wait for ACKs still waiting on the journal.
/// Malformed packets and send errors are counted and logged, never fatal.
pub(crate) async fn serve(
    server: Arc<DhcpServer>,
    sockets: Sockets,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let tracker = TaskTracker::new();
    let settings = server.settings();
    let dhcp = Arc::new(sockets.dhcp);
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4);
    tracing::info!(
        interface = %settings.interface,
        addr = %dhcp.local_addr()?,
        mode = ?settings.mode,
        "DHCP listening on UDP"
    );
    for _ in 0..workers {
        tracker.spawn(recv_loop(
            server.clone(),
            dhcp.clone(),
            Port::Dhcp,
            shutdown.clone(),
            tracker.clone(),
        ));
    }
    if let Some(pxe) = sockets.pxe {
        let pxe = Arc::new(pxe);
        tracing::info!(interface = %settings.interface, addr = %pxe.local_addr()?, "PXE boot server listening on UDP");
        tracker.spawn(recv_loop(
            server.clone(),
            pxe,
            Port::Pxe,
            shutdown.clone(),
            tracker.clone(),
        ));
    }
    shutdown.cancelled().await;
    tracker.close();
    tracker.wait().await;
    tracing::info!("DHCP stopped");
    Ok(())
}

async fn recv_loop(
    server: Arc<DhcpServer>,
    sock: Arc<UdpSocket>,
    port: Port,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let mut buf = vec![0u8; 4096];
    loop {
        let r = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            r = sock.recv_from(&mut buf) => r,
        };
        let (n, src) = match r {
            Ok(x) => x,
            Err(e) => {
                // UDP receive errors are transient (e.g. a queued ICMP error); pause so a
                // persistent one cannot spin.
                tracing::debug!(error = %e, "DHCP receive error");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let SocketAddr::V4(src) = src else { continue };
        let counters = server.counters();
        Counters::bump(&counters.received);
        let packet = match wire::decode(&buf[..n]) {
            Ok(p) => p,
            Err(e) => {
                Counters::bump(&counters.malformed);
                tracing::debug!(src = %src, len = n, error = %e, "malformed DHCP packet");
                continue;
            }
        };
        if packet.truncated {
            Counters::bump(&counters.malformed);
            tracing::debug!(src = %src, xid = packet.xid, "DHCP option runs past the end of the packet; using the options before it");
        }
        let Outcome {
            reply,
            durable,
            event,
            ignored,
        } = server.handle(&packet, src, port, now_unix());
        if let Some(why) = ignored {
            Counters::bump(&counters.ignored);
            tracing::debug!(src = %src, xid = packet.xid, reason = why, "DHCP request ignored");
        }
        let Some(out) = reply else {
            if let Some((mac, ev)) = event {
                server.observer().event(mac, ev);
            }
            continue;
        };
        let bytes = out.reply.encode();
        if durable.is_done() {
            send(&server, &sock, &bytes, out.to).await;
            if let Some((mac, ev)) = event {
                server.observer().event(mac, ev);
            }
        } else {
            let (server, sock) = (server.clone(), sock.clone());
            tracker.spawn(async move {
                let binding = durable.binding();
                match durable.wait().await {
                    Ok(()) => {
                        if let Some(b) = &binding {
                            server.leases().committed(b);
                        }
                        send(&server, &sock, &bytes, out.to).await;
                        if let Some((mac, ev)) = event {
                            server.observer().event(mac, ev);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                        // Another server sharing the lease database won the address: a
                        // NAK sends the client back to DISCOVER at once.
                        Counters::bump(&server.counters().lost_races);
                        let reason = format!("{e}");
                        let to = if out.reply.giaddr.is_unspecified() {
                            SocketAddrV4::new(std::net::Ipv4Addr::BROADCAST, 68)
                        } else {
                            out.to
                        };
                        tracing::warn!(to = %to, error = %e, "lease lost to another server; DHCPNAK");
                        send(&server, &sock, &out.reply.into_nak(&reason).encode(), to).await;
                        if let Some((mac, mut ev)) = event {
                            ev.sent = Some(wire::MessageType::Nak);
                            ev.refusal = Some(super::Refusal::Nak { reason });
                            server.observer().event(mac, ev);
                        }
                    }
                    Err(e) => {
                        Counters::bump(&server.counters().journal_errors);
                        let now = now_unix();
                        // A renewal whose extension cannot be written: the lease already
                        // on disk still runs, so the client may be told that much (and
                        // no more); it keeps its address and asks again at T1.
                        match binding.and_then(|b| b.on_disk.filter(|&t| t > now).map(|t| (b, t))) {
                            Some((b, until)) => {
                                let mut reply = out.reply;
                                reply.set_lease_time(until - now);
                                Counters::bump(&server.counters().acked_on_disk);
                                tracing::warn!(error = %e, mac = %b.mac, ip = %b.ip, lease_secs = until - now,
                                    "lease extension not durable; ACK with the lease time already on disk");
                                send(&server, &sock, &reply.encode(), out.to).await;
                                if let Some((mac, ev)) = event {
                                    server.observer().event(mac, ev);
                                }
                            }
                            None => {
                                tracing::error!(error = %e, to = %out.to, "lease not durable; ACK not sent");
                                if let Some((mac, mut ev)) = event {
                                    ev.sent = None;
                                    ev.refusal = Some(super::Refusal::NoAddress {
                                        reason: format!("the lease could not be stored, no ACK sent ({e})"),
                                    });
                                    server.observer().event(mac, ev);
                                }
                            }
                        }
                    }
                }
            });
        }
    }
}

async fn send(server: &DhcpServer, sock: &UdpSocket, bytes: &[u8], to: SocketAddrV4) {
    match sock.send_to(bytes, to).await {
        Ok(_) => Counters::bump(&server.counters().sent),
        Err(e) => {
            Counters::bump(&server.counters().send_errors);
            tracing::warn!(to = %to, error = %e, "cannot send DHCP reply");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::wire::{decode, tests::request_bytes, MessageType};
    use crate::dhcp::{BootFiles, DhcpEvent, DhcpObserver, Directory, Host};
    use crate::leases::JournalStore;
    use crate::mac::MacAddr;
    use std::sync::atomic::Ordering;
    use std::sync::Mutex;

    struct AnyHost;
    impl Directory for AnyHost {
        fn lookup(&self, _: MacAddr) -> Option<Host> {
            None
        }
        fn answer_unknown(&self) -> bool {
            true
        }
    }

    #[derive(Default)]
    struct Events(Mutex<Vec<DhcpEvent>>);
    impl DhcpObserver for Events {
        fn event(&self, _: MacAddr, ev: DhcpEvent) {
            self.0.lock().unwrap().push(ev);
        }
    }

    /// Real sockets on loopback: the port-4011 path answers unicast to the source, a
    /// garbage datagram is counted and does not stop the loop, and shutdown returns.
    #[tokio::test]
    async fn pxe_port_round_trip_on_loopback() {
        let settings = DhcpSettings {
            mode: Mode::Proxy,
            server_ip: Ipv4Addr::new(198, 18, 0, 1),
            interface: "lo".into(),
            http_url: "http://198.18.0.1:8080".into(),
            boot_files: BootFiles::default(),
            subnets: vec![],
        };
        let events = Arc::new(Events::default());
        let server = Arc::new(
            DhcpServer::new(
                settings,
                Arc::new(AnyHost),
                events.clone(),
                Arc::new(JournalStore::in_memory(vec![])),
            )
            .unwrap(),
        );
        let dhcp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let pxe = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let pxe_addr = pxe.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(
            server.clone(),
            Sockets {
                dhcp,
                pxe: Some(pxe),
            },
            shutdown.clone(),
        ));

        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(b"garbage", pxe_addr).await.unwrap();
        let req = request_bytes(
            3,
            [0x52, 0x54, 0, 0, 0, 9],
            &[(60, b"PXEClient:Arch:00007:UNDI:003016"), (93, &[0, 7])],
        );
        client.send_to(&req, pxe_addr).await.unwrap();
        let mut buf = [0u8; 1500];
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
            .await
            .expect("a reply within 5 s")
            .unwrap();
        assert_eq!(from, pxe_addr);
        let r = decode(&buf[..n]).unwrap();
        assert_eq!(r.op, wire::BOOTREPLY);
        assert_eq!(r.options.message_type(), Some(MessageType::Ack));
        assert_eq!(r.options.get(67), Some(&b"snponly.efi"[..]));
        assert_eq!(server.counters().malformed.load(Ordering::Relaxed), 1);
        assert_eq!(server.counters().sent.load(Ordering::Relaxed), 1);
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("serve stops on shutdown")
            .unwrap()
            .unwrap();
        let evs = events.0.lock().unwrap();
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].sent, Some(MessageType::Ack));
        assert_eq!(evs[0].port, 4011);
    }

    #[tokio::test]
    async fn bind_refuses_an_empty_interface() {
        let e = bind("", 6767).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("no interface configured"));
    }
}
