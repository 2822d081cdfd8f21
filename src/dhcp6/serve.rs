//! The DHCPv6 socket: UDP [::]:547 bound to the configured interface (SO_BINDTODEVICE),
//! joined to ff02::1:2 there; replies go back to the client's link-local address and port.

use std::io;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::dhcp::Counters;

use super::{wire, Dhcp6Error, Dhcp6Observer, Dhcp6Server, ALL_SERVERS, SERVER_PORT};

/// Bind the server socket on `interface` only. Also returns our DUID: DUID-LL of the
/// interface's MAC (RFC 8415 §11.4), or DUID-EN with the documentation enterprise number
/// and the interface name when the interface has no Ethernet address.
pub(crate) fn bind(interface: &str) -> Result<(UdpSocket, Vec<u8>), Dhcp6Error> {
    use socket2::{Domain, Protocol, Socket, Type};
    let err = |source: io::Error| Dhcp6Error::Bind {
        interface: interface.to_string(),
        port: SERVER_PORT,
        source,
    };
    if interface.trim().is_empty() {
        return Err(Dhcp6Error::Settings(
            "no interface: DHCPv6 answers only on an interface the config names".into(),
        ));
    }
    let sys = |f: &str| std::fs::read_to_string(format!("/sys/class/net/{interface}/{f}"));
    let index: u32 = sys("ifindex")
        .map_err(err)?
        .trim()
        .parse()
        .map_err(|_| err(io::Error::other("unreadable ifindex")))?;
    let duid = match sys("address")
        .ok()
        .and_then(|a| a.trim().parse::<crate::mac::MacAddr>().ok())
    {
        Some(mac) => [&[0u8, 3, 0, 1][..], &mac.0].concat(),
        None => [&[0u8, 2, 0, 0, 0xfd, 0xe9][..], interface.as_bytes()].concat(),
    };
    let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    s.set_only_v6(true).map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    s.bind_device(Some(interface.as_bytes())).map_err(err)?;
    s.set_nonblocking(true).map_err(err)?;
    let addr = SocketAddr::from((Ipv6Addr::UNSPECIFIED, SERVER_PORT));
    s.bind(&addr.into()).map_err(err)?;
    s.join_multicast_v6(&ALL_SERVERS, index).map_err(err)?;
    s.set_multicast_if_v6(index).map_err(err)?;
    Ok((UdpSocket::from_std(s.into()).map_err(err)?, duid))
}

/// Serve until `shutdown`. Malformed messages and send errors are logged, never fatal.
pub(crate) async fn serve(
    server: Arc<Dhcp6Server>,
    sock: UdpSocket,
    observer: Arc<dyn Dhcp6Observer>,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    tracing::info!(
        interface = %server.settings().interface,
        addr = %sock.local_addr()?,
        prefix = %server.settings().prefix,
        "DHCPv6 listening on UDP"
    );
    let bump = |c: &AtomicU64| c.fetch_add(1, Ordering::Relaxed);
    let mut buf = vec![0u8; 4096];
    loop {
        let r = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            r = sock.recv_from(&mut buf) => r,
        };
        let (n, src) = match r {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "DHCPv6 receive error");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let SocketAddr::V6(src) = src else { continue };
        bump(&counters.received);
        let m = match wire::decode(&buf[..n]) {
            Ok(m) => m,
            Err(e) => {
                bump(&counters.malformed);
                tracing::debug!(src = %src, len = n, error = %e, "malformed DHCPv6 message");
                continue;
            }
        };
        let o = server.handle(&m, src);
        if let Some(why) = o.ignored {
            bump(&counters.ignored);
            tracing::debug!(src = %src, xid = m.xid_u32(), reason = why, "DHCPv6 message ignored");
        }
        if let Some((reply, to)) = o.reply {
            tracing::debug!(to = %to, xid = m.xid_u32(), received = %m.msg_type, sent = %reply.msg_type, "DHCPv6 reply");
            send(&sock, &reply.encode(), to, &counters).await;
        }
        if let Some((mac, ev)) = o.event {
            observer.event(mac, ev);
        }
    }
    tracing::info!("DHCPv6 stopped");
    Ok(())
}

async fn send(sock: &UdpSocket, bytes: &[u8], to: SocketAddrV6, counters: &Counters) {
    match sock.send_to(bytes, to).await {
        Ok(_) => {
            counters.sent.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            counters.send_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(to = %to, error = %e, "cannot send DHCPv6 reply");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::{Directory, Host};
    use crate::dhcp6::{decide, Dhcp6Event, MessageType};
    use crate::mac::MacAddr;
    use std::sync::Mutex;

    struct Anyone;
    impl Directory for Anyone {
        fn lookup(&self, _: MacAddr) -> Option<Host> {
            None
        }
        fn answer_unknown(&self) -> bool {
            true
        }
    }
    #[derive(Default)]
    struct Events(Mutex<Vec<Dhcp6Event>>);
    impl Dhcp6Observer for Events {
        fn event(&self, _: MacAddr, ev: Dhcp6Event) {
            self.0.lock().unwrap().push(ev);
        }
    }

    /// Real sockets on loopback ([::1]): a garbage datagram is counted and the loop goes
    /// on; a SOLICIT gets an ADVERTISE back to its source; shutdown returns.
    #[tokio::test]
    async fn solicit_round_trip_on_loopback() {
        let Ok(sock) = UdpSocket::bind("[::1]:0").await else {
            eprintln!("no IPv6 loopback here; nothing to test");
            return;
        };
        let addr = sock.local_addr().unwrap();
        let server = Arc::new(
            Dhcp6Server::new(
                decide::tests::settings(),
                vec![0, 3, 0, 1, 2, 0, 0, 0, 0, 1],
                Arc::new(Anyone),
            )
            .unwrap(),
        );
        let events = Arc::new(Events::default());
        let counters = Arc::new(Counters::default());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(
            server,
            sock,
            events.clone(),
            counters.clone(),
            shutdown.clone(),
        ));
        let client = UdpSocket::bind("[::1]:0").await.unwrap();
        client.send_to(b"x", addr).await.unwrap();
        let solicit = wire::tests::ovmf_solicit(
            [0x52, 0x54, 0, 0x5e, 0, 0x66],
            "PXEClient:Arch:00007:UNDI:003016",
        );
        client.send_to(&solicit, addr).await.unwrap();
        let mut buf = [0u8; 1500];
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
            .await
            .expect("a reply within 5 s")
            .unwrap();
        assert_eq!(from, addr);
        let r = wire::decode(&buf[..n]).unwrap();
        assert_eq!(r.msg_type, MessageType::Advertise);
        assert_eq!(counters.malformed.load(Ordering::Relaxed), 1);
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(events.0.lock().unwrap().len(), 1);
    }

    #[test]
    fn bind_refuses_an_empty_interface() {
        let e = bind("").unwrap_err().to_string();
        assert!(e.contains("no interface"), "{e}");
    }
}
