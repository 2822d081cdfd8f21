//! HTTP on an open network, against the real binary: half-open connections time out and
//! cannot starve other clients, oversized heads get 431, bodies are bounded per route.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

const INVENTORY: &str = "defaults:
  unknown: ignore
roles:
  web:
    template: web.sh.j2
machines:
  \"52:54:00:00:00:01\":
    hostname: web01
    role: web
";

fn site(dir: &std::path::Path, http_extra: &str) {
    lab(dir, INVENTORY);
    let cfg = std::fs::read_to_string(dir.join("stemcell.yaml")).unwrap();
    std::fs::write(
        dir.join("stemcell.yaml"),
        cfg.replace(
            "  listen: 127.0.0.1:0\n",
            &format!("  listen: 127.0.0.1:0\n{http_extra}"),
        ),
    )
    .unwrap();
}

/// A TCP connection to `server` from the loopback address `from` (127.0.0.0/8 is all
/// local: each address is another client).
fn connect_from(from: &str, server: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&format!("{from}:0").parse::<SocketAddr>().unwrap().into())?;
    sock.connect_timeout(&server.into(), Duration::from_secs(5))?;
    Ok(sock.into())
}

/// Whether the server closed `s` within `within` (a read returns 0 or an error).
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 512];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => closed_within(s, within),
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn half_open_connections_are_bounded_per_client_and_time_out() {
    let dir = tempfile::tempdir().unwrap();
    site(
        dir.path(),
        "  header_timeout: 2s\n  max_connections_per_client: 16\n",
    );
    let s = Server::start(dir.path());
    let server: SocketAddr = s.addr.parse().unwrap();
    // One host opens as many half-open requests as it can.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..400 {
        let Ok(mut c) = connect_from("127.0.0.2", server) else {
            refused += 1;
            continue;
        };
        let _ = c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
        held.push(c);
    }
    // Every connection over the bound is closed at once.
    let open_now: usize = held
        .iter_mut()
        .map(|c| usize::from(!closed_within(c, Duration::from_millis(50))))
        .sum();
    assert!(
        open_now <= 16,
        "{open_now} half-open connections from one host stayed open (bound 16, {refused} refused)"
    );
    // Meanwhile a storm of other machines is served.
    let t0 = Instant::now();
    for i in 0..50 {
        let mut c = connect_from(&format!("127.0.1.{}", i + 1), server).unwrap();
        c.write_all(
            b"GET /boot/52:54:00:00:00:01.ipxe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        let mut reply = String::new();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "client {i}: {reply}");
        assert!(reply.contains("#!ipxe"), "client {i}: {reply}");
    }
    assert!(t0.elapsed() < Duration::from_secs(20));
    // And the half-open ones are closed once the header time-out passes.
    let t0 = Instant::now();
    for c in held.iter_mut() {
        assert!(
            closed_within(c, Duration::from_secs(6)),
            "a half-open connection outlived the 2 s header time-out"
        );
    }
    assert!(t0.elapsed() < Duration::from_secs(8));
}

#[test]
fn an_oversized_request_head_gets_431_and_bodies_are_bounded_per_route() {
    let dir = tempfile::tempdir().unwrap();
    site(dir.path(), "");
    let s = Server::start(dir.path());
    let server: SocketAddr = s.addr.parse().unwrap();
    let mut c = TcpStream::connect(server).unwrap();
    let big = "a".repeat(200_000);
    // The write may fail part-way once the server answers and closes: that is fine.
    let _ =
        c.write_all(format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes());
    let mut reply = String::new();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = c.read_to_string(&mut reply);
    assert!(
        reply.starts_with("HTTP/1.1 431"),
        "a 200 kB header must be answered 431, got: {:?}",
        reply.lines().next()
    );
    // A hardware report is small; 100 kB is refused without being read into memory (the
    // body limit is checked before anything else, the token included).
    let r = curl(
        &["-X", "POST", "--data-binary", &"k=v\n".repeat(25_000)],
        &s.url("/discover/52:54:00:00:00:09"),
    );
    assert_eq!(r.status, 413, "{}", r.text());
    // A log batch of the same size is fine (its bound is 1 MiB).
    let boot = curl(&[], &s.url("/boot/52:54:00:00:00:01.ipxe")).text();
    let token = cmdline_value(&boot, "stemcell.token").unwrap();
    let r = curl(
        &["-X", "POST", "--data-binary", &"log line\n".repeat(11_000)],
        &s.url(&format!("/install/52:54:00:00:00:01/log?token={token}")),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}
