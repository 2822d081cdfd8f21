//! In-process tests on real loopback sockets: a server on port 0 and a small TFTP client.

use super::*;
use std::sync::Mutex;
use tokio::task::JoinHandle;

/// Comfortably longer than anything a test waits for on loopback.
const PATIENCE: Duration = Duration::from_secs(10);

struct TestServer {
    addr: SocketAddr,
    root: PathBuf,
    shutdown: CancellationToken,
    task: JoinHandle<io::Result<()>>,
    events: Arc<Mutex<Vec<TransferEvent>>>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    async fn start(config: TftpConfig) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        let observer = move |event: TransferEvent| sink.lock().unwrap().push(event);
        let shutdown = CancellationToken::new();
        let config = TftpConfig {
            root: root.clone(),
            ..config
        };
        let task = tokio::spawn(serve(socket, config, Arc::new(observer), shutdown.clone()));
        TestServer {
            addr,
            root,
            shutdown,
            task,
            events,
            _dir: dir,
        }
    }

    async fn with_defaults() -> TestServer {
        TestServer::start(TftpConfig::default()).await
    }

    fn write(&self, name: &str, contents: &[u8]) {
        let path = self.root.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(path, contents).unwrap();
    }

    /// Waits until `n` events have arrived (transfers report when they end).
    async fn events(&self, n: usize) -> Vec<TransferEvent> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let events = self.events.lock().unwrap().clone();
            if events.len() >= n {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "only {} events: {events:?}",
                events.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(PATIENCE, self.task).await;
        result
            .expect("serve returns")
            .expect("serve task")
            .expect("serve ok");
    }
}

/// Deterministic bytes that do not repeat with any block size.
fn pattern(len: usize) -> Vec<u8> {
    let mut state: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

struct Client {
    socket: UdpSocket,
}

impl Client {
    async fn new() -> Client {
        Client {
            socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        }
    }

    async fn send(&self, packet: &Packet<'_>, to: SocketAddr) {
        let mut out = Vec::new();
        packet.encode(&mut out);
        self.socket.send_to(&out, to).await.unwrap();
    }

    async fn send_raw(&self, bytes: &[u8], to: SocketAddr) {
        self.socket.send_to(bytes, to).await.unwrap();
    }

    async fn rrq(&self, to: SocketAddr, file: &str, mode: Mode, options: &[(&str, &str)]) {
        let request = Request {
            filename: file.to_owned(),
            mode,
            options: options
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        };
        self.send(&Packet::Rrq(request), to).await;
    }

    async fn recv(&self, within: Duration) -> Option<(Vec<u8>, SocketAddr)> {
        let mut buf = vec![0u8; 70_000];
        let received = tokio::time::timeout(within, self.socket.recv_from(&mut buf)).await;
        let (len, from) = received.ok()?.unwrap();
        buf.truncate(len);
        Some((buf, from))
    }

    /// The next packet, described; panics if none comes.
    async fn expect(&self) -> (String, SocketAddr) {
        let (bytes, from) = self.recv(PATIENCE).await.expect("a packet from the server");
        (describe(&bytes), from)
    }

    /// Asserts that nothing arrives for `quiet`.
    async fn expect_silence(&self, quiet: Duration) {
        if let Some((bytes, from)) = self.recv(quiet).await {
            panic!("unexpected packet from {from}: {}", describe(&bytes));
        }
    }
}

/// A short description of a packet, for assertions.
fn describe(bytes: &[u8]) -> String {
    match Packet::decode(bytes) {
        Ok(Packet::Data { block, data }) => format!("DATA {block} {}", data.len()),
        Ok(Packet::Error { code, message }) => format!("ERROR {} {message}", code.to_u16()),
        Ok(Packet::Oack(options)) => {
            let pairs: Vec<String> = options.iter().map(|(n, v)| format!("{n}={v}")).collect();
            format!("OACK {}", pairs.join(" "))
        }
        Ok(Packet::Ack(block)) => format!("ACK {block}"),
        Ok(other) => format!("{:?}", PacketKind(&other)),
        Err(e) => format!("malformed: {e}"),
    }
}

struct Fetched {
    data: Vec<u8>,
    oack: Option<Vec<(String, String)>>,
    data_packets: usize,
}

/// A windowed RRQ client (RFC 1350, 2347, 7440): acknowledges every `windowsize` blocks, the
/// last block, and on a gap the last block received in order.
async fn fetch(
    server: SocketAddr,
    file: &str,
    mode: Mode,
    options: &[(&str, &str)],
) -> Result<Fetched, (u16, String)> {
    let client = Client::new().await;
    client.rrq(server, file, mode, options).await;
    let mut block_size = 512;
    let mut window = 1;
    let mut fetched = Fetched {
        data: Vec::new(),
        oack: None,
        data_packets: 0,
    };
    let mut expected: u16 = 1;
    let mut in_window = 0;
    let mut tid: Option<SocketAddr> = None;
    loop {
        let (bytes, from) = client.recv(PATIENCE).await.expect("the server answers");
        match tid {
            Some(tid) if tid != from => continue,
            Some(_) => {}
            None => {
                assert_eq!(from.ip(), server.ip(), "answers come from the request's IP");
                assert_ne!(from.port(), server.port(), "answers come from a new port");
                tid = Some(from);
            }
        }
        match Packet::decode(&bytes).expect("the server sends valid packets") {
            Packet::Oack(options) => {
                for (name, value) in &options {
                    match name.as_str() {
                        "blksize" => block_size = value.parse().unwrap(),
                        "windowsize" => window = value.parse().unwrap(),
                        _ => {}
                    }
                }
                fetched.oack = Some(options);
                client.send(&Packet::Ack(0), from).await;
            }
            Packet::Error { code, message } => return Err((code.to_u16(), message)),
            Packet::Data { block, data } => {
                fetched.data_packets += 1;
                if block != expected {
                    client
                        .send(&Packet::Ack(expected.wrapping_sub(1)), from)
                        .await;
                    in_window = 0;
                    continue;
                }
                fetched.data.extend_from_slice(data);
                in_window += 1;
                let done = data.len() < block_size;
                if done || in_window == window {
                    client.send(&Packet::Ack(block), from).await;
                    in_window = 0;
                }
                expected = expected.wrapping_add(1);
                if done {
                    return Ok(fetched);
                }
            }
            other => panic!("unexpected {:?}", PacketKind(&other)),
        }
    }
}

fn short_timeouts() -> TftpConfig {
    TftpConfig {
        timeout: Duration::from_millis(200),
        retries: 2,
        ..TftpConfig::default()
    }
}

#[test]
fn acks_match_the_window_across_the_wrap() {
    assert_eq!(acked_seq(0, 0, 1), Some(0));
    assert_eq!(acked_seq(1, 1, 2), Some(1));
    assert_eq!(acked_seq(0, 1, 2), None);
    assert_eq!(acked_seq(2, 1, 2), None);
    assert_eq!(acked_seq(20, 5, 21), Some(20));
    assert_eq!(acked_seq(21, 5, 21), None);
    assert_eq!(acked_seq(4, 5, 21), None);
    // Blocks 65534, 65535, 0, 1 are sequence numbers 65534..65538.
    assert_eq!(acked_seq(65535, 65534, 65538), Some(65535));
    assert_eq!(acked_seq(0, 65534, 65538), Some(65536));
    assert_eq!(acked_seq(1, 65534, 65538), Some(65537));
    assert_eq!(acked_seq(2, 65534, 65538), None);
    assert_eq!(acked_seq(65533, 65534, 65538), None);
    // The second time round.
    assert_eq!(acked_seq(3, 131_072, 131_080), Some(131_075));
}

#[test]
fn refusals_map_to_tftp_error_codes() {
    assert_eq!(Refusal::NotFound.error_code(), ErrorCode::FileNotFound);
    assert_eq!(
        Refusal::OutsideRoot.error_code(),
        ErrorCode::AccessViolation
    );
    assert_eq!(
        Refusal::WriteRequest.error_code(),
        ErrorCode::AccessViolation
    );
    assert_eq!(
        Refusal::UnsupportedMode("mail".into()).error_code(),
        ErrorCode::IllegalOperation
    );
    assert_eq!(Refusal::Busy.error_code(), ErrorCode::NotDefined);
    assert_eq!(
        Refusal::Io("disk on fire".into()).client_message(),
        "server error"
    );
}

#[tokio::test]
async fn serves_files_without_options_including_exact_multiples_of_512() {
    let server = TestServer::with_defaults().await;
    let sizes = [0, 1, 511, 512, 513, 1024, 5000, 2 * FILE_CHUNK];
    for size in sizes {
        server.write(&format!("f{size}"), &pattern(size));
    }
    for size in sizes {
        let fetched = fetch(server.addr, &format!("f{size}"), Mode::Octet, &[])
            .await
            .unwrap();
        assert_eq!(fetched.data, pattern(size), "size {size}");
        assert_eq!(fetched.oack, None);
        assert_eq!(fetched.data_packets, size / 512 + 1, "size {size}");
    }
    let events = server.events(sizes.len()).await;
    for event in &events {
        let size: u64 = event.file[1..].parse().unwrap();
        assert_eq!(event.outcome, TransferOutcome::Completed { bytes: size });
        assert_eq!(
            event.options,
            TransferOptions::plain(Duration::from_secs(1))
        );
        assert_eq!(event.mode, Mode::Octet);
    }
    server.stop().await;
}

#[tokio::test]
async fn negotiates_blksize_tsize_timeout_and_windowsize() {
    let server = TestServer::with_defaults().await;
    let contents = pattern(1_000_000);
    server.write("big.bin", &contents);
    let options = [
        ("blksize", "1428"),
        ("tsize", "0"),
        ("timeout", "2"),
        ("windowsize", "16"),
        ("unknown", "1"),
    ];
    let fetched = fetch(server.addr, "big.bin", Mode::Octet, &options)
        .await
        .unwrap();
    assert!(fetched.data == contents, "contents differ");
    let oack = fetched.oack.unwrap();
    let oack: Vec<(&str, &str)> = oack.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    assert_eq!(
        oack,
        [
            ("blksize", "1428"),
            ("tsize", "1000000"),
            ("timeout", "2"),
            ("windowsize", "16")
        ]
    );
    assert_eq!(fetched.data_packets, 1_000_000 / 1428 + 1);
    let events = server.events(1).await;
    assert_eq!(
        events[0].options,
        TransferOptions {
            block_size: 1428,
            window_size: 16,
            timeout: Duration::from_secs(2),
            transfer_size: Some(1_000_000),
            oack: true,
        }
    );
    assert_eq!(
        events[0].outcome,
        TransferOutcome::Completed { bytes: 1_000_000 }
    );
    server.stop().await;
}

#[tokio::test]
async fn windowsize_is_capped_by_the_config() {
    let server = TestServer::start(TftpConfig {
        max_window: 8,
        ..TftpConfig::default()
    })
    .await;
    server.write("f", &pattern(100_000));
    let fetched = fetch(server.addr, "f", Mode::Octet, &[("windowsize", "200")])
        .await
        .unwrap();
    assert!(fetched.data == pattern(100_000));
    assert_eq!(fetched.oack, Some(vec![("windowsize".into(), "8".into())]));
    server.stop().await;
}

/// UEFI's PXE asks for the size, gets the OACK, and ends the transfer with error 8.
#[tokio::test]
async fn client_error_after_oack_stops_the_transfer_at_once() {
    let server = TestServer::start(short_timeouts()).await;
    server.write("snponly.efi", &pattern(3000));
    let client = Client::new().await;
    client
        .rrq(
            server.addr,
            "snponly.efi",
            Mode::Octet,
            &[("tsize", "0"), ("blksize", "1468")],
        )
        .await;
    let (oack, tid) = client.expect().await;
    assert_eq!(oack, "OACK tsize=3000 blksize=1468");
    let abort = Packet::Error {
        code: ErrorCode::OptionsRefused,
        message: "User aborted the transfer".into(),
    };
    client.send(&abort, tid).await;
    // 1.5 times the retransmission timeout: a server that ignored the error would resend.
    client.expect_silence(Duration::from_millis(300)).await;
    let events = server.events(1).await;
    assert_eq!(
        events[0].outcome,
        TransferOutcome::AbortedByClient {
            code: ErrorCode::OptionsRefused,
            message: "User aborted the transfer".into(),
            bytes: 0
        }
    );
    assert_eq!(events[0].options.transfer_size, Some(3000));
    server.stop().await;
}

#[tokio::test]
async fn client_error_in_the_middle_stops_the_transfer() {
    let server = TestServer::start(short_timeouts()).await;
    server.write("f", &pattern(100_000));
    let client = Client::new().await;
    client
        .rrq(server.addr, "f", Mode::Octet, &[("windowsize", "4")])
        .await;
    let (oack, tid) = client.expect().await;
    assert_eq!(oack, "OACK windowsize=4");
    client.send(&Packet::Ack(0), tid).await;
    for block in 1..=4 {
        assert_eq!(client.expect().await.0, format!("DATA {block} 512"));
    }
    client.send(&Packet::Ack(4), tid).await;
    assert_eq!(client.expect().await.0, "DATA 5 512");
    let abort = Packet::Error {
        code: ErrorCode::DiskFull,
        message: "full".into(),
    };
    client.send(&abort, tid).await;
    // The rest of the window was already on its way; nothing may follow it.
    for block in 6..=8 {
        assert_eq!(client.expect().await.0, format!("DATA {block} 512"));
    }
    client.expect_silence(Duration::from_millis(300)).await;
    let events = server.events(1).await;
    assert!(matches!(
        &events[0].outcome,
        TransferOutcome::AbortedByClient {
            code: ErrorCode::DiskFull,
            bytes: 2048,
            ..
        }
    ));
    server.stop().await;
}

#[tokio::test]
async fn unacknowledged_data_is_retransmitted_then_given_up() {
    let server = TestServer::start(TftpConfig {
        timeout: Duration::from_millis(100),
        retries: 2,
        ..TftpConfig::default()
    })
    .await;
    server.write("f", &pattern(2000));
    let client = Client::new().await;
    client.rrq(server.addr, "f", Mode::Octet, &[]).await;
    for _ in 0..3 {
        assert_eq!(client.expect().await.0, "DATA 1 512");
    }
    assert_eq!(client.expect().await.0, "ERROR 0 timed out");
    client.expect_silence(Duration::from_millis(250)).await;
    let events = server.events(1).await;
    assert_eq!(events[0].outcome, TransferOutcome::TimedOut { bytes: 0 });
    server.stop().await;
}

#[tokio::test]
async fn a_lost_window_is_resent_whole_and_a_partial_ack_resumes_after_it() {
    let server = TestServer::start(short_timeouts()).await;
    server.write("f", &pattern(512 * 10 + 1));
    let client = Client::new().await;
    client
        .rrq(server.addr, "f", Mode::Octet, &[("windowsize", "4")])
        .await;
    let (_, tid) = client.expect().await;
    client.send(&Packet::Ack(0), tid).await;
    for block in 1..=4 {
        assert_eq!(client.expect().await.0, format!("DATA {block} 512"));
    }
    // No ACK: the whole window comes again after the timeout.
    for block in 1..=4 {
        assert_eq!(client.expect().await.0, format!("DATA {block} 512"));
    }
    // Only block 2 arrived "in order": the next window starts at 3.
    client.send(&Packet::Ack(2), tid).await;
    for block in 3..=6 {
        assert_eq!(client.expect().await.0, format!("DATA {block} 512"));
    }
    client.send(&Packet::Ack(6), tid).await;
    for block in 7..=10 {
        assert_eq!(client.expect().await.0, format!("DATA {block} 512"));
    }
    client.send(&Packet::Ack(10), tid).await;
    assert_eq!(client.expect().await.0, "DATA 11 1");
    client.send(&Packet::Ack(11), tid).await;
    let events = server.events(1).await;
    assert_eq!(
        events[0].outcome,
        TransferOutcome::Completed { bytes: 5121 }
    );
    server.stop().await;
}

/// RFC 1123 §4.2.3.1: answering duplicate ACKs doubles every packet from then on.
#[tokio::test]
async fn duplicate_ack_is_not_answered() {
    let server = TestServer::with_defaults().await;
    server.write("f", &pattern(2000));
    let client = Client::new().await;
    client.rrq(server.addr, "f", Mode::Octet, &[]).await;
    let (data, tid) = client.expect().await;
    assert_eq!(data, "DATA 1 512");
    client.send(&Packet::Ack(1), tid).await;
    client.send(&Packet::Ack(1), tid).await;
    assert_eq!(client.expect().await.0, "DATA 2 512");
    client.expect_silence(Duration::from_millis(300)).await;
    client.send(&Packet::Ack(2), tid).await;
    assert_eq!(client.expect().await.0, "DATA 3 512");
    server.stop().await;
}

#[tokio::test]
async fn block_numbers_wrap_to_zero_after_65535() {
    let server = TestServer::with_defaults().await;
    // 65,541 blocks of 8 bytes: the block after 65535 is 0.
    let contents = pattern(8 * 65_540 + 3);
    server.write("wrap", &contents);
    let fetched = fetch(
        server.addr,
        "wrap",
        Mode::Octet,
        &[("blksize", "8"), ("windowsize", "64")],
    )
    .await
    .unwrap();
    assert!(fetched.data == contents, "contents differ");
    assert_eq!(fetched.data_packets, 65_541);
    let events = server.events(1).await;
    assert_eq!(
        events[0].outcome,
        TransferOutcome::Completed {
            bytes: contents.len() as u64
        }
    );
    server.stop().await;
}

#[tokio::test]
async fn netascii_encodes_line_ends_and_leaves_out_tsize() {
    let server = TestServer::with_defaults().await;
    let text = "line one\nline two\r\n".repeat(40);
    server.write("motd", text.as_bytes());
    let fetched = fetch(server.addr, "motd", Mode::Netascii, &[("tsize", "0")])
        .await
        .unwrap();
    let expected = text.replace('\r', "\r\0").replace('\n', "\r\n");
    assert_eq!(String::from_utf8(fetched.data).unwrap(), expected);
    assert_eq!(fetched.oack, None);
    server.stop().await;
}

#[tokio::test]
async fn write_requests_are_refused_with_access_violation() {
    let server = TestServer::with_defaults().await;
    let client = Client::new().await;
    let request = Request {
        filename: "upload".into(),
        mode: Mode::Octet,
        options: Vec::new(),
    };
    client.send(&Packet::Wrq(request), server.addr).await;
    assert_eq!(
        client.expect().await.0,
        "ERROR 2 write requests are not supported"
    );
    let events = server.events(1).await;
    assert_eq!(
        events[0].outcome,
        TransferOutcome::Refused(Refusal::WriteRequest)
    );
    assert!(!server.root.join("upload").exists());
    server.stop().await;
}

#[tokio::test]
async fn unknown_opcodes_get_error_4_and_malformed_packets_are_dropped() {
    let server = TestServer::with_defaults().await;
    server.write("f", b"still served");
    let client = Client::new().await;
    client.send_raw(b"\x00\x09hello", server.addr).await;
    assert_eq!(client.expect().await.0, "ERROR 4 unknown opcode");
    for junk in [
        &b""[..],
        b"\x00",
        b"\x00\x01no-nul",
        b"\x00\x01f\x00octet",
        b"\x00\x04\x00",
    ] {
        client.send_raw(junk, server.addr).await;
    }
    // Stray DATA, ACK, ERROR and OACK on the listening port are ignored too.
    for stray in [
        &b"\x00\x03\x00\x01x"[..],
        b"\x00\x04\x00\x01",
        b"\x00\x05\x00\x00\x00",
        b"\x00\x06\x00",
    ] {
        client.send_raw(stray, server.addr).await;
    }
    client.expect_silence(Duration::from_millis(200)).await;
    let fetched = fetch(server.addr, "f", Mode::Octet, &[]).await.unwrap();
    assert_eq!(fetched.data, b"still served");
    server.stop().await;
}

#[tokio::test]
async fn names_outside_the_root_are_refused() {
    let server = TestServer::with_defaults().await;
    server.write("sub/file", b"inside");
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"outside").unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), server.root.join("escape")).unwrap();
    let cases = [
        ("nope", "1 file not found"),
        ("../secret", "2 path is outside the TFTP root"),
        ("sub/../../secret", "2 path is outside the TFTP root"),
        ("..\\secret", "2 path is outside the TFTP root"),
        ("escape", "2 path is outside the TFTP root"),
        ("sub", "2 not a regular file"),
        ("/", "2 invalid file name"),
    ];
    for (name, expected) in cases {
        let refused = fetch(server.addr, name, Mode::Octet, &[]).await;
        let (code, message) = refused.err().unwrap_or_else(|| panic!("{name} was served"));
        assert_eq!(format!("{code} {message}"), expected, "{name}");
    }
    let absolute = outside.path().join("secret");
    let refused = fetch(server.addr, absolute.to_str().unwrap(), Mode::Octet, &[]).await;
    assert_eq!(refused.err().unwrap().0, 1);
    let refused = fetch(server.addr, "sub/file", Mode::Mail, &[]).await;
    assert_eq!(
        refused.err().unwrap(),
        (4, "unsupported transfer mode".into())
    );

    // Firmware's leading '/' and Windows' backslashes both mean the root.
    for name in ["/sub/file", "\\sub\\file", "sub//./file"] {
        let fetched = fetch(server.addr, name, Mode::Octet, &[]).await.unwrap();
        assert_eq!(fetched.data, b"inside", "{name}");
    }
    let events = server.events(cases.len() + 5).await;
    assert!(
        events
            .iter()
            .any(|e| e.file == "escape"
                && e.outcome == TransferOutcome::Refused(Refusal::OutsideRoot))
    );
    server.stop().await;
}

#[tokio::test]
async fn requests_beyond_the_bound_are_left_for_the_client_to_resend() {
    let server = TestServer::start(TftpConfig {
        max_transfers: 1,
        ..TftpConfig::default()
    })
    .await;
    server.write("f", &pattern(5000));
    let first = Client::new().await;
    first.rrq(server.addr, "f", Mode::Octet, &[]).await;
    let (data, tid) = first.expect().await;
    assert_eq!(data, "DATA 1 512");
    // Over the bound: no ERROR (firmware would give up on it), silence; the client's
    // resend a moment later is served once a slot is free.
    let second = Client::new().await;
    second.rrq(server.addr, "f", Mode::Octet, &[]).await;
    second.expect_silence(Duration::from_millis(300)).await;
    // The first transfer carries on; when it ends its permit is free again.
    let mut block = 1u16;
    loop {
        first.send(&Packet::Ack(block), tid).await;
        block += 1;
        let (data, _) = first.expect().await;
        if data == format!("DATA {block} {}", 5000 % 512) {
            first.send(&Packet::Ack(block), tid).await;
            break;
        }
        assert_eq!(data, format!("DATA {block} 512"));
    }
    server.events(2).await;
    let fetched = fetch(server.addr, "f", Mode::Octet, &[]).await.unwrap();
    assert_eq!(fetched.data, pattern(5000));
    let events = server.events(3).await;
    assert!(events
        .iter()
        .any(|e| e.outcome == TransferOutcome::Refused(Refusal::Busy)));
    server.stop().await;
}

/// One client address holds at most `max_transfers_per_client` transfers (the rest of the
/// server's slots stay free for other machines), and a request resent from the port of a
/// transfer that is running starts nothing new: that transfer answers it.
#[tokio::test]
async fn one_client_address_is_bounded_and_resent_requests_start_nothing() {
    let server = TestServer::start(TftpConfig {
        max_transfers_per_client: 1,
        ..TftpConfig::default()
    })
    .await;
    server.write("f", &pattern(1500));
    let first = Client::new().await;
    first.rrq(server.addr, "f", Mode::Octet, &[]).await;
    let (data, tid) = first.expect().await;
    assert_eq!(data, "DATA 1 512");
    // The same request again from the same port (its DATA was "lost"): no second transfer
    // (which would send DATA 1 at once from a new port); the running one resends after
    // its time-out, from its own port.
    first.rrq(server.addr, "f", Mode::Octet, &[]).await;
    first.expect_silence(Duration::from_millis(500)).await;
    let (again, from) = first.expect().await;
    assert_eq!(
        (again.as_str(), from),
        ("DATA 1 512", tid),
        "the running transfer's retransmission"
    );
    // A second port of the same address: over its bound, silence (not an ERROR).
    let second = Client::new().await;
    second.rrq(server.addr, "f", Mode::Octet, &[]).await;
    second.expect_silence(Duration::from_millis(300)).await;
    for block in 1..=2u16 {
        first.send(&Packet::Ack(block), tid).await;
        assert_eq!(
            first.expect().await.0,
            format!(
                "DATA {} {}",
                block + 1,
                if block == 2 { 1500 - 1024 } else { 512 }
            )
        );
    }
    first.send(&Packet::Ack(3), tid).await;
    // The first transfer ended (one event); the second port's resend is served now.
    let events = server.events(2).await;
    assert!(events
        .iter()
        .any(|e| e.outcome == TransferOutcome::Refused(Refusal::ClientBusy)));
    let fetched = fetch(server.addr, "f", Mode::Octet, &[]).await.unwrap();
    assert_eq!(fetched.data, pattern(1500));
    server.stop().await;
}

#[tokio::test]
async fn shutdown_cancels_transfers_in_flight_and_returns() {
    let server = TestServer::with_defaults().await;
    server.write("f", &pattern(5000));
    let client = Client::new().await;
    client.rrq(server.addr, "f", Mode::Octet, &[]).await;
    let (data, _) = client.expect().await;
    assert_eq!(data, "DATA 1 512");
    let events = Arc::clone(&server.events);
    server.stop().await;
    assert_eq!(client.expect().await.0, "ERROR 0 server shutting down");
    let events = events.lock().unwrap().clone();
    assert_eq!(events[0].outcome, TransferOutcome::Cancelled { bytes: 0 });
}

#[tokio::test]
async fn a_missing_root_is_an_error() {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let config = TftpConfig {
        root: PathBuf::from("/nonexistent/stemcell-tftp-root"),
        ..TftpConfig::default()
    };
    let observer = Arc::new(|_: TransferEvent| {});
    let error = serve(socket, config, observer, CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::NotFound);
    assert!(error.to_string().contains("stemcell-tftp-root"));
}

/// Reads a ReadAhead to its end; returns the bytes and the largest chunk buffer it held.
async fn read_all(mut r: ReadAhead) -> (Vec<u8>, usize) {
    let (mut out, mut held) = (Vec::new(), 0);
    loop {
        let n = {
            let b = r.fill_buf().await.unwrap();
            out.extend_from_slice(b);
            b.len()
        };
        held = held.max(r.chunk.capacity());
        if n == 0 {
            return (out, held);
        }
        r.consume(n);
    }
}

#[tokio::test]
async fn read_ahead_holds_no_more_than_a_small_file_and_stops_at_its_announced_size() {
    // A boot file smaller than a chunk: its buffer is its size (thousands run at once).
    let small = pattern(70_000);
    let (got, held) = read_all(ReadAhead::new(
        Box::new(std::io::Cursor::new(small.clone())),
        70_000,
    ))
    .await;
    assert_eq!(got, small);
    assert!(
        held <= 70_000,
        "a 70,000-byte file held a {held}-byte buffer"
    );
    // Exact multiples of a chunk, and a file that grew after tsize was announced: the
    // transfer sends what it announced.
    for (len, announced) in [
        (2 * FILE_CHUNK, 2 * FILE_CHUNK),
        (3 * FILE_CHUNK + 5, 2 * FILE_CHUNK + 7),
        (0, 0),
    ] {
        let data = pattern(len);
        let (got, _) = read_all(ReadAhead::new(
            Box::new(std::io::Cursor::new(data.clone())),
            announced as u64,
        ))
        .await;
        assert_eq!(
            got,
            data[..announced],
            "file of {len} bytes announced as {announced}"
        );
    }
}
