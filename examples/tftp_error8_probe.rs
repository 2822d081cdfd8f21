//! tests/tftp_clients.rs's firmware-like TFTP client: asks for PROBE_FILE's size (tsize)
//! from 127.0.0.1:69, then aborts with error 8 as UEFI firmware does after its size probe,
//! and counts what still arrives in the next 3 s. Prints
//! `PROBE oack=... packets_after_error=N`. Run inside the test's network namespace.
//!
//! An example, not a `[[bin]]`: it must not ship with stemcell. The test builds it with
//! `cargo build --example tftp_error8_probe` (tests/common: `helper`).

use std::time::{Duration, Instant};

fn main() {
    use std::net::UdpSocket;
    let file = std::env::var("PROBE_FILE").expect("PROBE_FILE");
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut rrq = vec![0, 1];
    for part in [file.as_str(), "octet", "tsize", "0", "blksize", "1408"] {
        rrq.extend_from_slice(part.as_bytes());
        rrq.push(0);
    }
    sock.send_to(&rrq, "127.0.0.1:69").unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = sock.recv_from(&mut buf).expect("an OACK");
    assert_eq!(&buf[..2], &[0, 6], "expected OACK, got {:?}", &buf[..n]);
    let oack = String::from_utf8_lossy(&buf[2..n]).to_string();
    let mut err = vec![0, 5, 0, 8];
    err.extend_from_slice(b"size probe done\0");
    sock.send_to(&err, from).unwrap();
    // The server resends an unanswered packet after 1 s, up to 5 times: wait 3 s.
    let t0 = Instant::now();
    let mut after = 0;
    while t0.elapsed() < Duration::from_secs(3) {
        if sock.recv_from(&mut buf).is_ok() {
            after += 1;
        }
    }
    println!("PROBE oack={oack:?} packets_after_error={after}");
}
