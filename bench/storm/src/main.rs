//! Boot-storm generator for `bench/run.sh`: N machines netboot at once, as BIOS PXE firmware
//! and then iPXE would, against a real stemcell.
//!
//! Run it inside the client namespace that bench/run.sh makes. It is the machines *and* their
//! DHCP relays: every DHCP packet carries giaddr = one of `--relay` (machine i uses relay
//! i mod R), so thousands of MACs share a few sockets and the server answers each relay
//! unicast on port 67; replies are routed to their machine by xid. The client namespace
//! routes the relays' whole subnet to itself (`ip route add local SUBNET dev lo`), so each
//! machine speaks TFTP and HTTP from the address it was leased, as a real machine would.
//!
//! Each machine, started at a random moment within `--ramp` seconds:
//!  1. PXE DHCP: DISCOVER/OFFER/REQUEST/ACK with option 60 PXEClient, 93 = 0 (BIOS), 94, 97;
//!     the ACK must name the BIOS boot file (`--bootfile`, undionly.kpxe).
//!  2. TFTP: that file from its leased address, lockstep with blksize 1432 and tsize (what
//!     iPXE's ROM asks for); its size must match tsize (and its bytes `--tftp-file`, if given).
//!  3. iPXE DHCP: DORA again with user class "iPXE"; the boot file must be
//!     http://SERVER/boot/MAC.ipxe and the address the one leased in step 1.
//!  4. HTTP, one keep-alive connection from the leased address: the boot script, then the
//!     kernel and initrd it names, each status 200 and checked against Content-Length.
//!
//! Retransmissions as firmware does them: DHCP after 4, 8, 16 s; TFTP after 2 s, 5 times.
//! A machine fails on an ERROR packet, a NAK, a wrong boot file, an HTTP status other than
//! 200, a short body, or when it runs out of retries or past `--deadline`.
//!
//! Prints one JSON object (the shape bench/storm.py printed, plus the retransmission counts
//! and the total's per-phase row): machines, completed, failed, failures by reason, ramp, wall
//! (when the last machine finished, from the storm's start), per-machine p50/p99/max and
//! per-phase p50/p99.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::sync::mpsc;

const MAGIC: [u8; 4] = [0x63, 0x82, 0x53, 0x63];
const DHCP_TIMEOUTS: [u64; 3] = [4, 8, 16];
const TFTP_TIMEOUT: Duration = Duration::from_secs(2);
const TFTP_TRIES: usize = 6; // the first send and 5 retransmissions
const BLKSIZE: usize = 1432;
const PHASES: [&str; 5] = ["dhcp_pxe", "tftp", "dhcp_ipxe", "script", "kernel_initrd"];

struct Args {
    macs: String,
    server: Ipv4Addr,
    relays: Vec<Ipv4Addr>,
    ramp: f64,
    deadline: f64,
    bootfile: String,
    tftp_file: Option<Vec<u8>>,
    n: usize,
}

fn usage(msg: &str) -> ! {
    eprintln!("storm: {msg}");
    eprintln!(
        "usage: storm --macs FILE --server IP --relay IP[,IP...] [--ramp SECS] [--deadline SECS] \
         [--bootfile NAME] [--tftp-file PATH] [-n N]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = std::env::args().skip(1);
    let (mut macs, mut server, mut relays) = (None, None, Vec::new());
    let (mut ramp, mut deadline, mut bootfile, mut tftp_file, mut n) =
        (3.0, 120.0, "undionly.kpxe".to_string(), None, 0);
    while let Some(k) = a.next() {
        let v = a
            .next()
            .unwrap_or_else(|| usage(&format!("{k} needs a value")));
        let bad = |what: &str| -> ! { usage(&format!("{k} {v:?}: not {what}")) };
        match k.as_str() {
            "--macs" => macs = Some(v),
            "--server" => server = Some(v.parse().unwrap_or_else(|_| bad("an IPv4 address"))),
            "--relay" => {
                for r in v.split(',') {
                    relays.push(r.parse().unwrap_or_else(|_| bad("IPv4 addresses")));
                }
            }
            "--ramp" => ramp = v.parse().unwrap_or_else(|_| bad("a number")),
            "--deadline" => deadline = v.parse().unwrap_or_else(|_| bad("a number")),
            "--bootfile" => bootfile = v,
            "--tftp-file" => {
                tftp_file = Some(
                    std::fs::read(&v).unwrap_or_else(|e| usage(&format!("--tftp-file {v}: {e}"))),
                )
            }
            "-n" => n = v.parse().unwrap_or_else(|_| bad("a count")),
            _ => usage(&format!("unknown option {k}")),
        }
    }
    Args {
        macs: macs.unwrap_or_else(|| usage("--macs is required")),
        server: server.unwrap_or_else(|| usage("--server is required")),
        relays: if relays.is_empty() {
            usage("--relay is required")
        } else {
            relays
        },
        ramp,
        deadline,
        bootfile,
        tftp_file,
        n,
    }
}

/// splitmix64: xids, uuids and start times (no cryptographic need).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Default)]
struct Counters {
    dhcp_resent: AtomicU64,
    tftp_resent: AtomicU64,
    stray: AtomicU64,
}

// ---- DHCP ----------------------------------------------------------------------------------

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut m = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut m {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(m)
}

#[allow(clippy::too_many_arguments)]
fn build_dhcp(
    xid: u32,
    mac: &[u8; 6],
    giaddr: Ipv4Addr,
    msgtype: u8,
    ipxe: bool,
    requested: Option<Ipv4Addr>,
    server: Option<Ipv4Addr>,
    uuid: &[u8; 16],
) -> Vec<u8> {
    let mut p = vec![0u8; 236];
    p[..4].copy_from_slice(&[1, 1, 6, 1]); // BOOTREQUEST, Ethernet, hlen 6, hops 1 (a relay)
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[8..10].copy_from_slice(&4u16.to_be_bytes()); // secs
    p[10..12].copy_from_slice(&0x8000u16.to_be_bytes()); // broadcast, as PXE ROMs set it
    p[24..28].copy_from_slice(&giaddr.octets());
    p[28..34].copy_from_slice(mac);
    p.extend_from_slice(&MAGIC);
    let mut opt = |c: u8, v: &[u8]| {
        p.push(c);
        p.push(v.len() as u8);
        p.extend_from_slice(v);
    };
    opt(53, &[msgtype]);
    opt(57, &1260u16.to_be_bytes());
    opt(93, &[0, 0]);
    opt(94, &[1, 2, 1]);
    let mut u = [0u8; 17];
    u[1..].copy_from_slice(uuid);
    opt(97, &u);
    opt(60, b"PXEClient:Arch:00000:UNDI:002001");
    if ipxe {
        opt(77, b"iPXE");
        opt(175, &[0xb1, 0x05, 0x01, 0x10, 0xec, 0x80, 0x00]); // iPXE's encapsulated options
    }
    if let Some(r) = requested {
        opt(50, &r.octets());
    }
    if let Some(s) = server {
        opt(54, &s.octets());
    }
    opt(
        55,
        &[
            1, 3, 6, 12, 15, 17, 43, 60, 66, 67, 128, 129, 130, 131, 132, 133, 134, 135, 175,
        ],
    );
    p.push(255);
    p
}

#[derive(Debug, Clone)]
struct Reply {
    xid: u32,
    msgtype: u8,
    yiaddr: Ipv4Addr,
    siaddr: Ipv4Addr,
    file: String,
    server: Option<Ipv4Addr>,
}

fn ip_at(b: &[u8], i: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[i], b[i + 1], b[i + 2], b[i + 3])
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn parse_dhcp(d: &[u8]) -> Option<Reply> {
    if d.len() < 240 || d[236..240] != MAGIC || d[0] != 2 {
        return None;
    }
    let mut r = Reply {
        xid: u32::from_be_bytes(d[4..8].try_into().ok()?),
        msgtype: 0,
        yiaddr: ip_at(d, 16),
        siaddr: ip_at(d, 20),
        file: cstr(&d[108..236]),
        server: None,
    };
    let mut i = 240;
    while i < d.len() {
        let c = d[i];
        if c == 255 {
            break;
        }
        if c == 0 {
            i += 1;
            continue;
        }
        let n = *d.get(i + 1)? as usize;
        let v = d.get(i + 2..i + 2 + n)?;
        match c {
            53 if n == 1 => r.msgtype = v[0],
            54 if n == 4 => r.server = Some(ip_at(v, 0)),
            67 => r.file = cstr(v),
            _ => {}
        }
        i += 2 + n;
    }
    Some(r)
}

/// A relay: one socket on giaddr:67 that sends its machines' packets and routes the server's
/// replies to them by xid.
struct Relay {
    addr: Ipv4Addr,
    sock: UdpSocket,
    waiting: Mutex<HashMap<u32, mpsc::UnboundedSender<Reply>>>,
}

impl Relay {
    async fn receive(self: Arc<Self>, counters: Arc<Counters>) {
        let mut buf = vec![0u8; 2048];
        loop {
            let Ok((n, _)) = self.sock.recv_from(&mut buf).await else {
                continue;
            };
            let tx = parse_dhcp(&buf[..n]).and_then(|p| {
                let tx = self.waiting.lock().unwrap().get(&p.xid).cloned();
                tx.map(|tx| (tx, p))
            });
            match tx {
                Some((tx, p)) => {
                    let _ = tx.send(p);
                }
                None => {
                    counters.stray.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Removes an exchange's xid from its relay's table however the exchange ends.
struct Registered<'a>(&'a Relay, u32);
impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0.waiting.lock().unwrap().remove(&self.1);
    }
}

struct Machine {
    mac: String,
    chaddr: [u8; 6],
    uuid: [u8; 16],
    xid_seed: u64,
}

/// DORA through the relay; returns the ACK.
async fn dhcp_exchange(
    relay: &Relay,
    server: Ipv4Addr,
    m: &Machine,
    ipxe: bool,
    counters: &Counters,
) -> Result<Reply, String> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut rng = Rng(m.xid_seed ^ (ipxe as u64) << 63);
    let xid = loop {
        let x = rng.next() as u32;
        let mut w = relay.waiting.lock().unwrap();
        if let std::collections::hash_map::Entry::Vacant(e) = w.entry(x) {
            e.insert(tx);
            break x;
        }
    };
    let _reg = Registered(relay, xid);
    let dest = SocketAddr::V4(SocketAddrV4::new(server, 67));
    let mut ask = async |packet: Vec<u8>, want: u8| -> Result<Reply, String> {
        for (i, t) in DHCP_TIMEOUTS.iter().enumerate() {
            if i > 0 {
                counters.dhcp_resent.fetch_add(1, Ordering::Relaxed);
            }
            relay
                .sock
                .send_to(&packet, dest)
                .await
                .map_err(|e| format!("DHCP send: {e}"))?;
            let end = tokio::time::Instant::now() + Duration::from_secs(*t);
            while let Ok(p) = tokio::time::timeout_at(end, rx.recv()).await {
                let p = p.expect("the sender lives in the relay's table");
                if p.msgtype == 6 {
                    return Err("DHCP NAK".into());
                }
                if p.msgtype == want {
                    return Ok(p);
                }
            }
        }
        Err(format!(
            "DHCP {}: no answer after 3 tries",
            if want == 2 { "OFFER" } else { "ACK" }
        ))
    };
    let offer = ask(
        build_dhcp(xid, &m.chaddr, relay.addr, 1, ipxe, None, None, &m.uuid),
        2,
    )
    .await?;
    ask(
        build_dhcp(
            xid,
            &m.chaddr,
            relay.addr,
            3,
            ipxe,
            Some(offer.yiaddr),
            offer.server,
            &m.uuid,
        ),
        5,
    )
    .await
}

// ---- TFTP ----------------------------------------------------------------------------------

fn udp_bound(ip: Ipv4Addr, rcvbuf: usize) -> std::io::Result<UdpSocket> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    force_rcvbuf(&s, rcvbuf);
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::V4(SocketAddrV4::new(ip, 0)).into())?;
    UdpSocket::from_std(s.into())
}

/// SO_RCVBUFFORCE (we are root in our namespace), else SO_RCVBUF: the generator's own
/// sockets get room for the server's bursts, so that a drop is the server's, not ours.
fn force_rcvbuf(s: &socket2::Socket, size: usize) {
    use std::os::fd::AsRawFd;
    let v = size as libc::c_int;
    // SAFETY: a valid socket and a c_int option value of the right length.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &v as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        let _ = s.set_recv_buffer_size(size);
    }
}

async fn tftp_get(
    local: Ipv4Addr,
    server: Ipv4Addr,
    name: &str,
    want: Option<&[u8]>,
    counters: &Counters,
) -> Result<usize, String> {
    let sock = udp_bound(local, 1 << 20).map_err(|e| format!("TFTP bind {local}: {e}"))?;
    let mut rrq = vec![0, 1];
    for part in [name, "octet", "blksize", &BLKSIZE.to_string(), "tsize", "0"] {
        rrq.extend_from_slice(part.as_bytes());
        rrq.push(0);
    }
    let mut last = rrq;
    let mut peer: Option<SocketAddr> = None;
    let dest = SocketAddr::V4(SocketAddrV4::new(server, 69));
    let (mut blksize, mut tsize, mut expect, mut first) = (512usize, None::<usize>, 1u32, true);
    let mut body: Vec<u8> = Vec::with_capacity(want.map_or(0, <[u8]>::len));
    let mut buf = vec![0u8; 65536];
    loop {
        let mut got = None;
        for i in 0..TFTP_TRIES {
            if i > 0 {
                counters.tftp_resent.fetch_add(1, Ordering::Relaxed);
            }
            sock.send_to(&last, peer.unwrap_or(dest))
                .await
                .map_err(|e| format!("TFTP send: {e}"))?;
            // Wait out the time-out, ignoring packets from other ports.
            let end = tokio::time::Instant::now() + TFTP_TIMEOUT;
            while let Ok(r) = tokio::time::timeout_at(end, sock.recv_from(&mut buf)).await {
                let (n, from) = r.map_err(|e| format!("TFTP socket error: {e}"))?;
                if peer.is_none_or(|p| p == from) {
                    got = Some((n, from));
                    break;
                }
            }
            if got.is_some() {
                break;
            }
        }
        let Some((n, from)) = got else {
            return Err(format!(
                "TFTP: no answer after {TFTP_TRIES} tries (block {expect})"
            ));
        };
        peer.get_or_insert(from);
        let d = &buf[..n];
        if n < 4 {
            return Err(format!("TFTP: a {n}-byte packet"));
        }
        match u16::from_be_bytes([d[0], d[1]]) {
            5 => {
                return Err(format!(
                    "TFTP error {}: {}",
                    u16::from_be_bytes([d[2], d[3]]),
                    cstr(&d[4..])
                ))
            }
            6 if first => {
                let f: Vec<String> = d[2..]
                    .split(|&c| c == 0)
                    .map(|s| String::from_utf8_lossy(s).to_lowercase())
                    .collect();
                for kv in f.chunks(2) {
                    if let [k, v] = kv {
                        match k.as_str() {
                            "blksize" => blksize = v.parse().map_err(|_| "TFTP: OACK blksize")?,
                            "tsize" => tsize = Some(v.parse().map_err(|_| "TFTP: OACK tsize")?),
                            _ => {}
                        }
                    }
                }
                first = false;
                last = vec![0, 4, 0, 0];
            }
            3 => {
                first = false;
                if u16::from_be_bytes([d[2], d[3]]) == expect as u16 {
                    body.extend_from_slice(&d[4..]);
                    last = vec![0, 4, d[2], d[3]];
                    if n - 4 < blksize {
                        sock.send_to(&last, from)
                            .await
                            .map_err(|e| format!("TFTP send: {e}"))?;
                        break;
                    }
                    expect += 1;
                } // else a duplicate: the loop re-sends the last ACK
            }
            op => return Err(format!("TFTP: unexpected opcode {op}")),
        }
    }
    if let Some(t) = tsize {
        if t != body.len() {
            return Err(format!("TFTP: got {} bytes, tsize said {t}", body.len()));
        }
    }
    if let Some(w) = want {
        if w != body.as_slice() {
            return Err("TFTP: the file's bytes differ from --tftp-file".into());
        }
    }
    Ok(body.len())
}

// ---- HTTP ----------------------------------------------------------------------------------

struct Http {
    conn: TcpStream,
    buf: Vec<u8>, // bytes read past the last response
}

impl Http {
    /// GET `path` on the keep-alive connection; the body if it is small (a script), else its
    /// length only.
    async fn get(&mut self, host: &str, path: &str) -> Result<(Option<String>, usize), String> {
        let short = path.split('?').next().unwrap_or(path);
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: iPXE/1.0.0+ (storm)\r\n\
             Connection: keep-alive\r\n\r\n"
        );
        self.conn
            .write_all(req.as_bytes())
            .await
            .map_err(|e| format!("HTTP {short}: write: {e}"))?;
        let mut chunk = vec![0u8; 1 << 16];
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if self.buf.len() > 65536 {
                return Err(format!("HTTP {short}: a header over 64 KiB"));
            }
            let n = self
                .conn
                .read(&mut chunk)
                .await
                .map_err(|e| format!("HTTP {short}: read: {e}"))?;
            if n == 0 {
                return Err(format!("HTTP {short}: connection closed before the header"));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end);
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("HTTP {short}: no status line"))?;
        let len: usize = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .ok_or_else(|| format!("HTTP {short}: no Content-Length"))?;
        let keep = len < 65536;
        let mut text = Vec::new();
        let mut got = self.buf.len().min(len);
        if keep {
            text.extend_from_slice(&self.buf[..got]);
        }
        self.buf.drain(..got);
        while got < len {
            let want = chunk.len().min(len - got);
            let n = if keep {
                self.conn.read(&mut chunk[..want]).await
            } else {
                self.discard(&mut chunk[..want]).await
            }
            .map_err(|e| format!("HTTP {short}: read: {e}"))?;
            if n == 0 {
                return Err(format!(
                    "HTTP {short}: connection closed after {got} of {len} bytes"
                ));
            }
            if keep {
                text.extend_from_slice(&chunk[..n]);
            }
            got += n;
        }
        if status != 200 {
            return Err(format!("HTTP {short}: status {status}"));
        }
        Ok((
            keep.then(|| String::from_utf8_lossy(&text).into_owned()),
            got,
        ))
    }
}

impl Http {
    /// Receives up to `buf.len()` bytes of a body and throws them away without copying them
    /// (`MSG_TRUNC` on a TCP socket): a real machine copies its kernel into memory, but the
    /// generator's copies of 5,000 kernels would cost as much CPU as the server's sending them,
    /// on the same cores. Returns how many bytes were received (0: the peer closed).
    async fn discard(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::fd::AsRawFd;
        let fd = self.conn.as_raw_fd();
        loop {
            self.conn.readable().await?;
            let r = self.conn.try_io(tokio::io::Interest::READABLE, || {
                // SAFETY: a valid descriptor and buffer; with MSG_TRUNC the kernel only
                // counts the bytes it drops.
                let n = unsafe {
                    libc::recv(
                        fd,
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_TRUNC | libc::MSG_DONTWAIT,
                    )
                };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match r {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }
}

/// (host, port, path) of an http:// URL.
fn split_url(u: &str) -> Option<(String, u16, String)> {
    let rest = u.strip_prefix("http://")?;
    let (hostport, path) = rest.split_at(rest.find('/')?);
    let (host, port) = match hostport.split_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (hostport, 80),
    };
    Some((host.to_string(), port, path.to_string()))
}

/// The URL on the script's first line that starts with `cmd`.
fn script_url(script: &str, cmd: &str) -> Option<String> {
    script
        .lines()
        .map(str::trim)
        .filter(|l| l.split_whitespace().next() == Some(cmd))
        .find_map(|l| l.split_whitespace().find(|w| w.starts_with("http://")))
        .map(str::to_string)
}

// ---- one machine ---------------------------------------------------------------------------

struct Outcome {
    result: Result<(), String>,
    phases: [Option<f64>; 5],
    total: f64,
    end: f64, // since the storm's start
}

async fn boot(
    m: &Machine,
    relay: &Relay,
    args: &Args,
    counters: &Counters,
    phases: &mut [Option<f64>; 5],
) -> Result<(), String> {
    let t = Instant::now();
    let ack = dhcp_exchange(relay, args.server, m, false, counters).await?;
    if ack.file != args.bootfile {
        return Err(format!(
            "PXE DHCP: boot file {:?}, expected {:?}",
            ack.file, args.bootfile
        ));
    }
    let ip = ack.yiaddr;
    let tftp_server = if ack.siaddr.is_unspecified() {
        args.server
    } else {
        ack.siaddr
    };
    phases[0] = Some(t.elapsed().as_secs_f64());

    let t = Instant::now();
    tftp_get(
        ip,
        tftp_server,
        &ack.file,
        args.tftp_file.as_deref(),
        counters,
    )
    .await?;
    phases[1] = Some(t.elapsed().as_secs_f64());

    let t = Instant::now();
    let ack2 = dhcp_exchange(relay, args.server, m, true, counters).await?;
    let url = ack2.file;
    let (host, port, path) = split_url(&url)
        .filter(|_| url.ends_with(&format!("/boot/{}.ipxe", m.mac)))
        .ok_or_else(|| {
            format!("iPXE DHCP: boot file {url:?} is not this machine's boot script URL")
        })?;
    if ack2.yiaddr != ip {
        return Err(format!(
            "iPXE DHCP: address changed from {ip} to {}",
            ack2.yiaddr
        ));
    }
    phases[2] = Some(t.elapsed().as_secs_f64());

    let t = Instant::now();
    let to: SocketAddr = format!("{host}:{port}")
        .parse()
        .map_err(|_| format!("boot script URL {url:?}: the host is not an address"))?;
    let s = TcpSocket::new_v4().map_err(|e| format!("TCP socket: {e}"))?;
    s.bind(SocketAddr::V4(SocketAddrV4::new(ip, 0)))
        .map_err(|e| format!("TCP bind {ip}: {e}"))?;
    let conn = s
        .connect(to)
        .await
        .map_err(|e| format!("HTTP connect {to}: {e}"))?;
    let _ = conn.set_nodelay(true);
    let mut http = Http {
        conn,
        buf: Vec::new(),
    };
    let script = http.get(&host, &path).await?.0.unwrap_or_default();
    phases[3] = Some(t.elapsed().as_secs_f64());
    let (Some(k), Some(r)) = (script_url(&script, "kernel"), script_url(&script, "initrd")) else {
        return Err("boot script names no kernel/initrd (not an install script)".into());
    };
    let t = Instant::now();
    for u in [k, r] {
        let (_, _, p) = split_url(&u).ok_or_else(|| format!("boot script: bad URL {u:?}"))?;
        http.get(&host, &p).await?;
    }
    phases[4] = Some(t.elapsed().as_secs_f64());
    Ok(())
}

async fn machine(
    m: Machine,
    relay: Arc<Relay>,
    args: Arc<Args>,
    counters: Arc<Counters>,
    start: Duration,
    t0: tokio::time::Instant,
) -> Outcome {
    tokio::time::sleep_until(t0 + start).await;
    let began = Instant::now();
    let mut phases = [None; 5];
    let r = tokio::time::timeout(
        Duration::from_secs_f64(args.deadline),
        boot(&m, &relay, &args, &counters, &mut phases),
    )
    .await;
    let result = match r {
        Ok(r) => r,
        Err(_) => {
            let done: Vec<&str> = PHASES
                .iter()
                .zip(&phases)
                .filter(|(_, p)| p.is_some())
                .map(|(n, _)| *n)
                .collect();
            Err(format!(
                "past the {} s deadline (phases done: {})",
                args.deadline,
                if done.is_empty() {
                    "none".to_string()
                } else {
                    done.join(",")
                }
            ))
        }
    };
    Outcome {
        result,
        phases,
        total: began.elapsed().as_secs_f64(),
        end: t0.elapsed().as_secs_f64(),
    }
}

// ---- report --------------------------------------------------------------------------------

/// Nearest-rank percentile.
fn pct(v: &mut [f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let k = ((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    Some(v[k])
}

fn num(v: Option<f64>) -> String {
    v.map_or("null".into(), |x| format!("{x:.4}"))
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain get/setrlimit on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max.min(1 << 20);
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    raise_nofile();
    let text = std::fs::read_to_string(&args.macs)
        .unwrap_or_else(|e| usage(&format!("--macs {}: {e}", args.macs)));
    let mut macs: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if args.n > 0 {
        macs.truncate(args.n);
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ (std::process::id() as u64) << 32;
    let mut rng = Rng(seed);
    let mut machines = Vec::with_capacity(macs.len());
    for (i, mac) in macs.iter().enumerate() {
        let chaddr = parse_mac(mac)
            .unwrap_or_else(|| usage(&format!("{}:{}: {mac:?} is not a MAC", args.macs, i + 1)));
        let mut uuid = [0u8; 16];
        uuid[..8].copy_from_slice(&rng.next().to_le_bytes());
        uuid[8..].copy_from_slice(&rng.next().to_le_bytes());
        machines.push(Machine {
            mac: mac.to_string(),
            chaddr,
            uuid,
            xid_seed: rng.next(),
        });
    }
    let mut starts: Vec<f64> = (0..machines.len())
        .map(|_| rng.unit() * args.ramp)
        .collect();
    starts.sort_by(f64::total_cmp);

    let counters = Arc::new(Counters::default());
    let mut relays = Vec::new();
    for &addr in &args.relays {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
            .and_then(|s| {
                force_rcvbuf(&s, 16 << 20);
                s.set_nonblocking(true)?;
                s.bind(&SocketAddr::V4(SocketAddrV4::new(addr, 67)).into())?;
                Ok(s)
            })
            .unwrap_or_else(|e| usage(&format!("relay socket {addr}:67: {e}")));
        let relay = Arc::new(Relay {
            addr,
            sock: UdpSocket::from_std(s.into()).expect("a tokio runtime"),
            waiting: Mutex::new(HashMap::new()),
        });
        tokio::spawn(relay.clone().receive(counters.clone()));
        relays.push(relay);
    }
    let args = Arc::new(args);
    let t0 = tokio::time::Instant::now();
    let tasks: Vec<_> = machines
        .into_iter()
        .zip(&starts)
        .enumerate()
        .map(|(i, (m, &s))| {
            tokio::spawn(machine(
                m,
                relays[i % relays.len()].clone(),
                args.clone(),
                counters.clone(),
                Duration::from_secs_f64(s),
                t0,
            ))
        })
        .collect();
    let mut outcomes = Vec::with_capacity(tasks.len());
    for t in tasks {
        outcomes.push(t.await.expect("a machine's task panicked"));
    }
    let wall = outcomes.iter().map(|o| o.end).fold(0.0, f64::max);

    let mut failures: HashMap<&str, usize> = HashMap::new();
    for o in &outcomes {
        if let Err(e) = &o.result {
            *failures.entry(e.as_str()).or_default() += 1;
        }
    }
    let mut failures: Vec<_> = failures.into_iter().collect();
    failures.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let ok: Vec<&Outcome> = outcomes.iter().filter(|o| o.result.is_ok()).collect();
    let mut totals: Vec<f64> = ok.iter().map(|o| o.total).collect();
    let mut phases = Vec::new();
    for (i, name) in PHASES.iter().enumerate() {
        let mut v: Vec<f64> = ok.iter().filter_map(|o| o.phases[i]).collect();
        phases.push(format!(
            "{}: {{\"p50\": {}, \"p99\": {}}}",
            json_str(name),
            num(pct(&mut v, 50.0)),
            num(pct(&mut v, 99.0))
        ));
    }
    let max = totals.iter().copied().reduce(f64::max);
    // The generator's own CPU time: beside the server's (run.sh measures it), it says which
    // of the two the storm was waiting for.
    // SAFETY: getrusage fills the struct it is given.
    let cpu = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        secs(u.ru_utime) + secs(u.ru_stime)
    };
    println!(
        "{{\"machines\": {}, \"completed\": {}, \"failed\": {}, \"failures\": [{}], \"ramp\": {}, \
         \"wall\": {}, \"p50\": {}, \"p99\": {}, \"max\": {}, \"phases\": {{{}}}, \
         \"relays\": {}, \"dhcp_retransmissions\": {}, \"tftp_retransmissions\": {}, \
         \"stray_dhcp_replies\": {}, \"cpu\": {}}}",
        outcomes.len(),
        ok.len(),
        outcomes.len() - ok.len(),
        failures
            .iter()
            .take(8)
            .map(|(r, n)| format!("[{}, {n}]", json_str(r)))
            .collect::<Vec<_>>()
            .join(", "),
        num(starts.last().copied().or(Some(0.0))),
        num(Some(wall)),
        num(pct(&mut totals, 50.0)),
        num(pct(&mut totals, 99.0)),
        num(max),
        phases.join(", "),
        relays.len(),
        counters.dhcp_resent.load(Ordering::Relaxed),
        counters.tftp_resent.load(Ordering::Relaxed),
        counters.stray.load(Ordering::Relaxed),
        num(Some(cpu)),
    );
}
