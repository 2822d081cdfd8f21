//! TFTP: serves the boot loaders (iPXE binaries) that firmware fetches after DHCP.
//!
//! Owns: read-only TFTP on one UDP socket (RFC 1350) with option negotiation (RFC 2347) for
//! blksize (RFC 2348), timeout and tsize (RFC 2349) and windowsize (RFC 7440, capped by
//! [`TftpConfig::max_window`]); a path jail on the configured root; retransmission, the
//! bound on concurrent transfers, and a [`TransferEvent`] for each request to the rest of
//! the server. Write requests are refused (RFC 1350 error 2). netascii is encoded on the fly;
//! `mail` mode is refused.
//!
//! Leaves to others: which file a machine should ask for (`dhcp`), what a transfer means for
//! a machine's state (the [`TftpObserver`]), and binding the socket (the caller).
//!
//! Decision: our own implementation rather than the async-tftp crate (0.4.2). async-tftp does
//! negotiate windowsize, but its transfer loop only looks for ACKs, so an ERROR from the client
//! (UEFI's tsize probe ends with error 8) is ignored and the OACK is resent until the retries
//! run out; it has no shutdown path, reports nothing about finished transfers, runs on its own
//! executor and reactor (async-executor, async-io) beside tokio, and fills buffers through
//! `unsafe` on uninitialised memory. The protocol is small enough that owning it costs less
//! than patching around those gaps.
//!
//! Shape: [`packet`] is the wire format and option negotiation as pure functions; `jail`
//! judges file names; this file holds the socket loops. Each transfer runs in its own task on
//! its own ephemeral UDP socket, bound to the listening socket's IP and connected to the
//! client (RFC 1350 §4: the server's transfer ID is a new port). Logging: each received
//! request and control packet at debug, DATA blocks and their ACKs at trace (a 50 MB
//! file is 100,000 of them), refused requests and failed transfers at warn.

pub(crate) mod packet;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::jail;
use crate::slots::{NoSlot, PerClient};
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, trace, warn};

use packet::{DecodeError, Limits, Packet, Request};
pub(crate) use packet::{ErrorCode, Mode, TransferOptions};

/// How the TFTP service behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TftpConfig {
    /// The folder served; nothing outside it (after following symlinks) is readable.
    pub(crate) root: PathBuf,
    /// Transfers running at once; a request beyond this is left unanswered (firmware resends
    /// it a moment later; an ERROR would make it give up).
    pub(crate) max_transfers: usize,
    /// Transfers one client address may run at once (firmware fetches one file at a time);
    /// a request beyond this is left unanswered like one beyond `max_transfers`, so one
    /// host cannot hold every slot a boot storm needs.
    pub(crate) max_transfers_per_client: usize,
    /// Retransmission timeout when the client does not ask for one (RFC 2349 timeout).
    pub(crate) timeout: Duration,
    /// Retransmissions of one packet or window before the transfer is given up.
    pub(crate) retries: u32,
    /// The largest windowsize granted (RFC 7440); 1 turns windows off.
    pub(crate) max_window: u16,
}

impl Default for TftpConfig {
    fn default() -> TftpConfig {
        TftpConfig {
            root: PathBuf::from("/srv/tftp"),
            max_transfers: 4096,
            max_transfers_per_client: 8,
            timeout: Duration::from_secs(1),
            retries: 5,
            max_window: 64,
        }
    }
}

/// What a [`TftpFiles`] name stands for: a file anywhere (named by the server's own
/// config, never by the client) or bytes made for this request.
#[derive(Debug)]
pub(crate) enum Served {
    File(PathBuf),
    Bytes(Vec<u8>),
}

/// The future [`TftpFiles::open`] returns: `None` for a name it does not serve.
pub(crate) type Opening<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Option<Result<Served, Refusal>>> + Send + 'a>,
>;

/// Names served from outside the root, asked before the root is: GRUB's chain (shim and
/// GRUB from Debian's packages, its configs and the kernels they load, made per machine).
/// `name` has no leading `/`.
pub(crate) trait TftpFiles: Send + Sync + 'static {
    fn open<'a>(&'a self, name: &'a str, peer: SocketAddr) -> Opening<'a>;
}

/// Receives one event per request the service answered (or refused).
pub(crate) trait TftpObserver: Send + Sync + 'static {
    fn transfer(&self, event: TransferEvent);
}

impl<F> TftpObserver for F
where
    F: Fn(TransferEvent) + Send + Sync + 'static,
{
    fn transfer(&self, event: TransferEvent) {
        self(event)
    }
}

/// What happened to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TransferEvent {
    /// The client's address and port (its transfer ID).
    pub(crate) peer: SocketAddr,
    /// The file name as the client sent it.
    pub(crate) file: String,
    pub(crate) mode: Mode,
    /// The options the transfer ran with (the plain RFC 1350 ones if it never started).
    pub(crate) options: TransferOptions,
    pub(crate) outcome: TransferOutcome,
    /// From the request to the outcome.
    pub(crate) elapsed: Duration,
}

/// How a request ended. `bytes` counts data bytes the client acknowledged (for netascii,
/// after encoding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TransferOutcome {
    Completed {
        bytes: u64,
    },
    /// Refused before any data was sent; the client got an ERROR packet.
    Refused(Refusal),
    /// The client sent an ERROR packet; nothing more was sent to it. Error 8 right after the
    /// OACK is firmware that only wanted the size (tsize).
    AbortedByClient {
        code: ErrorCode,
        message: String,
        bytes: u64,
    },
    /// No acknowledgement after all retransmissions.
    TimedOut {
        bytes: u64,
    },
    /// The server shut down during the transfer.
    Cancelled {
        bytes: u64,
    },
    /// A local error (reading the file, the socket) ended the transfer.
    Failed {
        bytes: u64,
        error: String,
    },
}

/// Why a request was refused. Each maps to the TFTP error code sent to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("file not found")]
    NotFound,
    #[error("path is outside the TFTP root")]
    OutsideRoot,
    #[error("invalid file name")]
    InvalidName,
    #[error("not a regular file")]
    NotAFile,
    #[error("permission denied")]
    PermissionDenied,
    #[error("write requests are not supported")]
    WriteRequest,
    #[error("unsupported transfer mode {0:?}")]
    UnsupportedMode(String),
    #[error("server busy")]
    Busy,
    #[error("this client already runs its most transfers at once")]
    ClientBusy,
    /// A served name refused for the machine's sake (e.g. an install that was stopped).
    #[error("{0}")]
    Denied(String),
    #[error("I/O error: {0}")]
    Io(String),
}

impl From<jail::Refusal> for Refusal {
    fn from(r: jail::Refusal) -> Refusal {
        match r {
            jail::Refusal::NotFound => Refusal::NotFound,
            jail::Refusal::OutsideRoot => Refusal::OutsideRoot,
            jail::Refusal::InvalidName => Refusal::InvalidName,
            jail::Refusal::PermissionDenied => Refusal::PermissionDenied,
            jail::Refusal::Io(e) => Refusal::Io(e),
        }
    }
}

impl Refusal {
    fn from_io(error: &io::Error) -> Refusal {
        jail::Refusal::from_io(error).into()
    }

    /// The TFTP error code for the client.
    pub(crate) fn error_code(&self) -> ErrorCode {
        match self {
            Refusal::NotFound => ErrorCode::FileNotFound,
            Refusal::OutsideRoot
            | Refusal::InvalidName
            | Refusal::NotAFile
            | Refusal::PermissionDenied
            | Refusal::WriteRequest
            | Refusal::Denied(_) => ErrorCode::AccessViolation,
            Refusal::UnsupportedMode(_) => ErrorCode::IllegalOperation,
            Refusal::Busy | Refusal::ClientBusy | Refusal::Io(_) => ErrorCode::NotDefined,
        }
    }

    /// The message for the client; local details (paths, OS errors) stay in the log.
    fn client_message(&self) -> String {
        match self {
            Refusal::Io(_) => "server error".to_owned(),
            Refusal::UnsupportedMode(_) => "unsupported transfer mode".to_owned(),
            other => other.to_string(),
        }
    }
}

/// The size of the listening socket's receive buffer: the largest UDP payload.
const REQUEST_BUFFER: usize = 65536;
/// Reads from the file in chunks of this size (one blocking-pool round trip each).
const FILE_CHUNK: usize = 128 * 1024;
/// The receive buffer of a transfer socket; it only expects ACK and ERROR packets.
const REPLY_BUFFER: usize = 1024;

/// State shared by the listening loop and the transfers.
struct Service {
    root: PathBuf,
    config: TftpConfig,
    observer: Arc<dyn TftpObserver>,
    files: Option<Arc<dyn TftpFiles>>,
    local_ip: IpAddr,
}

/// Serves TFTP on `socket` until `shutdown` is cancelled, then cancels the transfers in
/// flight and returns once they have ended. Errors: the root cannot be resolved, or the
/// socket fails in a way that is not about one packet.
#[cfg(test)]
pub(crate) async fn serve(
    socket: UdpSocket,
    config: TftpConfig,
    observer: Arc<dyn TftpObserver>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    serve_with(socket, config, observer, None, shutdown).await
}

/// [`serve`], with names `files` serves before the root is looked at.
pub(crate) async fn serve_with(
    socket: UdpSocket,
    config: TftpConfig,
    observer: Arc<dyn TftpObserver>,
    files: Option<Arc<dyn TftpFiles>>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let root = tokio::fs::canonicalize(&config.root).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("TFTP root {}: {e}", config.root.display()),
        )
    })?;
    let local = socket.local_addr()?;
    let permits = Arc::new(Semaphore::new(
        config.max_transfers.min(Semaphore::MAX_PERMITS),
    ));
    let service = Arc::new(Service {
        root,
        config,
        observer,
        files,
        local_ip: local.ip(),
    });
    let transfers = shutdown.child_token();
    let running = Arc::new(PerClient::default());
    let tracker = TaskTracker::new();
    info!(addr = %local, root = %service.root.display(), "listening for TFTP on UDP");

    let mut buf = vec![0u8; REQUEST_BUFFER];
    let result = loop {
        let received = tokio::select! {
            biased;
            () = shutdown.cancelled() => break Ok(()),
            received = socket.recv_from(&mut buf) => received,
        };
        match received {
            Ok((len, peer)) => {
                let ctx = Listener {
                    socket: &socket,
                    service: &service,
                    permits: &permits,
                    running: &running,
                    tracker: &tracker,
                    transfers: &transfers,
                };
                ctx.handle_datagram(&buf[..len], peer).await;
            }
            Err(e) if is_transient(&e) => debug!(error = %e, "TFTP receive error ignored"),
            Err(e) => break Err(e),
        }
    };
    transfers.cancel();
    tracker.close();
    tracker.wait().await;
    match &result {
        Ok(()) => info!(addr = %local, "TFTP stopped"),
        Err(e) => tracing::error!(addr = %local, error = %e, "TFTP stopped"),
    }
    result
}

/// Errors of `recv_from` that concern one packet or peer, not the socket.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
    )
}

/// What the listening loop needs to answer one datagram.
struct Listener<'a> {
    socket: &'a UdpSocket,
    service: &'a Arc<Service>,
    permits: &'a Arc<Semaphore>,
    running: &'a Arc<PerClient>,
    tracker: &'a TaskTracker,
    transfers: &'a CancellationToken,
}

impl Listener<'_> {
    async fn handle_datagram(&self, datagram: &[u8], peer: SocketAddr) {
        match Packet::decode(datagram) {
            Ok(Packet::Rrq(request)) => {
                debug!(
                    peer = %peer,
                    file = ?request.filename,
                    mode = ?request.mode,
                    options = ?request.options,
                    "TFTP read request"
                );
                self.handle_read(request, peer).await;
            }
            Ok(Packet::Wrq(request)) => {
                debug!(peer = %peer, file = ?request.filename, "TFTP write request");
                self.refuse(request, peer, Refusal::WriteRequest).await;
            }
            Ok(other) => {
                debug!(peer = %peer, packet = ?PacketKind(&other), "TFTP packet on the listening port dropped");
            }
            Err(DecodeError::UnknownOpcode(op)) => {
                debug!(peer = %peer, opcode = op, "TFTP unknown opcode");
                self.send_error(peer, ErrorCode::IllegalOperation, "unknown opcode")
                    .await;
            }
            Err(e) => debug!(peer = %peer, error = %e, "malformed TFTP packet dropped"),
        }
    }

    async fn handle_read(&self, request: Request, peer: SocketAddr) {
        let max = self.service.config.max_transfers_per_client;
        let slot = match PerClient::take(self.running, peer, max) {
            Ok(slot) => slot,
            Err(NoSlot::Held) => {
                // Starting it again would send the file twice, in a storm twice the load.
                debug!(peer = %peer, file = ?request.filename, "TFTP request resent while its transfer runs; that transfer answers it");
                return;
            }
            Err(NoSlot::Full) => {
                debug!(peer = %peer, file = ?request.filename, limit = max, "TFTP: this client runs its most transfers; request left unanswered for the client to resend");
                return self.unanswered(request, peer, Refusal::ClientBusy);
            }
        };
        let permit = match Arc::clone(self.permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                debug!(peer = %peer, file = ?request.filename, "TFTP busy: request left unanswered for the client to resend");
                return self.unanswered(request, peer, Refusal::Busy);
            }
        };
        let service = Arc::clone(self.service);
        let token = self.transfers.clone();
        self.tracker.spawn(async move {
            let event = run_transfer(&service, request, peer, &token).await;
            drop((permit, slot));
            service.observer.transfer(event);
        });
    }

    /// Firmware gives up on an ERROR but resends an unanswered RRQ a moment later: in a
    /// boot storm, silence is the answer that gets the machine booted.
    fn unanswered(&self, request: Request, peer: SocketAddr, why: Refusal) {
        self.service.observer.transfer(TransferEvent {
            peer,
            file: request.filename,
            mode: request.mode,
            options: TransferOptions::plain(self.service.config.timeout),
            outcome: TransferOutcome::Refused(why),
            elapsed: Duration::ZERO,
        });
    }

    /// Refuses a request from the listening socket (no transfer socket is spent on it).
    async fn refuse(&self, request: Request, peer: SocketAddr, refusal: Refusal) {
        warn!(peer = %peer, file = ?request.filename, reason = %refusal, "TFTP request refused");
        self.send_error(peer, refusal.error_code(), &refusal.client_message())
            .await;
        self.service.observer.transfer(TransferEvent {
            peer,
            file: request.filename,
            mode: request.mode,
            options: TransferOptions::plain(self.service.config.timeout),
            outcome: TransferOutcome::Refused(refusal),
            elapsed: Duration::ZERO,
        });
    }

    async fn send_error(&self, peer: SocketAddr, code: ErrorCode, message: &str) {
        let mut out = Vec::new();
        packet::encode_error(code, message, &mut out);
        if let Err(e) = self.socket.send_to(&out, peer).await {
            debug!(peer = %peer, error = %e, "TFTP error packet not sent");
        }
    }
}

/// A packet's kind for logs, without its payload.
struct PacketKind<'a, 'b>(&'a Packet<'b>);

impl std::fmt::Debug for PacketKind<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Packet::Rrq(_) => f.write_str("RRQ"),
            Packet::Wrq(_) => f.write_str("WRQ"),
            Packet::Data { block, data } => write!(f, "DATA {block} ({} bytes)", data.len()),
            Packet::Ack(block) => write!(f, "ACK {block}"),
            Packet::Error { code, message } => {
                write!(f, "ERROR {} {message:?}", code.to_u16())
            }
            Packet::Oack(options) => write!(f, "OACK {options:?}"),
        }
    }
}

/// Runs one read request from its own socket to its end, and says how it went.
async fn run_transfer(
    service: &Service,
    request: Request,
    peer: SocketAddr,
    token: &CancellationToken,
) -> TransferEvent {
    let started = Instant::now();
    let mut options = TransferOptions::plain(service.config.timeout);
    let outcome = match bind_transfer_socket(service.local_ip, peer).await {
        Err(e) => TransferOutcome::Failed {
            bytes: 0,
            error: format!("transfer socket: {e}"),
        },
        Ok(socket) => {
            let opened = tokio::select! {
                biased;
                () = token.cancelled() => None,
                opened = open(service, &request, peer) => Some(opened),
            };
            match opened {
                None => TransferOutcome::Cancelled { bytes: 0 },
                Some(Err(refusal)) => {
                    warn!(peer = %peer, file = ?request.filename, reason = %refusal, "TFTP request refused");
                    send_error(&socket, refusal.error_code(), &refusal.client_message()).await;
                    TransferOutcome::Refused(refusal)
                }
                Some(Ok((file, size))) => {
                    let file_size = (request.mode == Mode::Octet).then_some(size);
                    let limits = Limits {
                        timeout: service.config.timeout,
                        max_window: service.config.max_window,
                    };
                    let (agreed, oack) = packet::negotiate(&request.options, file_size, limits);
                    options = agreed;
                    debug!(peer = %peer, file = ?request.filename, options = ?options, "TFTP transfer starting");
                    let mut sender = Sender::new(
                        socket,
                        peer,
                        file,
                        size,
                        &options,
                        request.mode == Mode::Netascii,
                        service.config.retries,
                    );
                    sender.run(oack, token).await
                }
            }
        }
    };
    let elapsed = started.elapsed();
    match &outcome {
        TransferOutcome::Completed { bytes } => {
            debug!(peer = %peer, file = ?request.filename, bytes, ?elapsed, "TFTP transfer completed")
        }
        TransferOutcome::AbortedByClient {
            code,
            message,
            bytes,
        } => debug!(
            peer = %peer, file = ?request.filename, code = code.to_u16(), message = ?message,
            bytes, "TFTP transfer aborted by the client"
        ),
        TransferOutcome::TimedOut { bytes } => {
            warn!(peer = %peer, file = ?request.filename, bytes, "TFTP transfer timed out")
        }
        TransferOutcome::Failed { bytes, error } => {
            warn!(peer = %peer, file = ?request.filename, bytes, error = %error, "TFTP transfer failed")
        }
        TransferOutcome::Cancelled { bytes } => {
            debug!(peer = %peer, file = ?request.filename, bytes, "TFTP transfer cancelled")
        }
        TransferOutcome::Refused(_) => {}
    }
    TransferEvent {
        peer,
        file: request.filename,
        mode: request.mode,
        options,
        outcome,
        elapsed,
    }
}

/// A socket for one transfer: a new port on the IP the request came to (when the listener
/// is bound to one), connected to the client so the kernel drops other senders' packets.
async fn bind_transfer_socket(local_ip: IpAddr, peer: SocketAddr) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(SocketAddr::new(local_ip, 0)).await?;
    socket.connect(peer).await?;
    Ok(socket)
}

/// What a transfer reads from.
type Source = Box<dyn std::io::Read + Send>;

/// Finds and opens the requested file: a name the service's [`TftpFiles`] serves, else a
/// file inside the root, in one trip to the blocking pool.
async fn open(
    service: &Service,
    request: &Request,
    peer: SocketAddr,
) -> Result<(Source, u64), Refusal> {
    match &request.mode {
        Mode::Octet | Mode::Netascii => {}
        Mode::Mail => return Err(Refusal::UnsupportedMode("mail".to_owned())),
        Mode::Other(mode) => return Err(Refusal::UnsupportedMode(mode.clone())),
    }
    if let Some(files) = &service.files {
        let name = request.filename.trim_start_matches('/');
        match files.open(name, peer).await {
            None => {}
            Some(Err(refusal)) => return Err(refusal),
            Some(Ok(Served::Bytes(b))) => {
                let len = b.len() as u64;
                return Ok((Box::new(std::io::Cursor::new(b)), len));
            }
            Some(Ok(Served::File(path))) => {
                let opened = tokio::task::spawn_blocking(move || open_file(&path));
                let (file, len) = opened.await.map_err(|e| Refusal::Io(e.to_string()))??;
                return Ok((Box::new(file), len));
            }
        }
    }
    let root = service.root.clone();
    let requested = request.filename.clone();
    let opened = tokio::task::spawn_blocking(move || {
        let path = jail::resolve(&root, &requested)?;
        open_file(&path)
    });
    let (file, len) = opened.await.map_err(|e| Refusal::Io(e.to_string()))??;
    Ok((Box::new(file), len))
}

/// Opens a regular file (not a FIFO, device or folder) and says its size.
fn open_file(path: &Path) -> Result<(std::fs::File, u64), Refusal> {
    // Checked before opening: opening a FIFO would wait for a writer.
    let metadata = std::fs::metadata(path).map_err(|e| Refusal::from_io(&e))?;
    if !metadata.is_file() {
        return Err(Refusal::NotAFile);
    }
    let file = std::fs::File::open(path).map_err(|e| Refusal::from_io(&e))?;
    let metadata = file.metadata().map_err(|e| Refusal::from_io(&e))?;
    if !metadata.is_file() {
        return Err(Refusal::NotAFile);
    }
    Ok((file, metadata.len()))
}

/// Sends an ERROR packet; errors are never retransmitted (RFC 1350 §7), so failure is only
/// logged.
async fn send_error(socket: &UdpSocket, code: ErrorCode, message: &str) {
    let mut out = Vec::new();
    packet::encode_error(code, message, &mut out);
    if let Err(e) = socket.send(&out).await {
        debug!(error = %e, "TFTP error packet not sent");
    }
}

/// What came back while waiting for an acknowledgement.
enum Reply {
    /// The block with this sequence number (and all before it) arrived.
    Acked(u64),
    TimedOut,
    ClientError {
        code: ErrorCode,
        message: String,
    },
    Cancelled,
    SocketError(io::Error),
}

/// The sending side of one read request: a window of blocks read from the file, sent, and
/// resent until acknowledged.
///
/// Blocks are counted by a 64-bit sequence number (1 for the first DATA block); the wire
/// carries its low 16 bits, so block numbers wrap from 65535 to 0 and an ACK is matched
/// against the window it can belong to.
struct Sender {
    socket: UdpSocket,
    peer: SocketAddr,
    reader: ReadAhead,
    /// `Some(carry)` in netascii mode (see [`packet::netascii_encode`]).
    netascii: Option<Option<u8>>,
    block_size: usize,
    window: u64,
    timeout: Duration,
    retries: u32,
    /// Encoded DATA packets; block `seq` lives in `slots[seq % window]`.
    slots: Vec<Vec<u8>>,
    reply: Vec<u8>,
    bytes_acked: u64,
}

impl Sender {
    fn new(
        socket: UdpSocket,
        peer: SocketAddr,
        file: Source,
        size: u64,
        options: &TransferOptions,
        netascii: bool,
        retries: u32,
    ) -> Sender {
        let window = options.window_size.max(1);
        Sender {
            socket,
            peer,
            reader: ReadAhead::new(file, size),
            netascii: netascii.then_some(None),
            block_size: usize::from(options.block_size),
            window: u64::from(window),
            timeout: options.timeout,
            retries,
            slots: vec![Vec::new(); usize::from(window)],
            reply: vec![0u8; REPLY_BUFFER],
            bytes_acked: 0,
        }
    }

    async fn run(
        &mut self,
        oack: Vec<(String, String)>,
        token: &CancellationToken,
    ) -> TransferOutcome {
        let outcome = self.exchange(oack, token).await;
        match &outcome {
            TransferOutcome::TimedOut { .. } => {
                send_error(&self.socket, ErrorCode::NotDefined, "timed out").await
            }
            TransferOutcome::Cancelled { .. } => {
                send_error(&self.socket, ErrorCode::NotDefined, "server shutting down").await
            }
            _ => {}
        }
        outcome
    }

    async fn exchange(
        &mut self,
        oack: Vec<(String, String)>,
        token: &CancellationToken,
    ) -> TransferOutcome {
        // RFC 2347: with an OACK, the client acknowledges it as block 0 before DATA 1.
        if !oack.is_empty() {
            let mut packet = Vec::new();
            Packet::Oack(oack).encode(&mut packet);
            let mut tries = 0;
            loop {
                if let Err(e) = self.socket.send(&packet).await {
                    return self.failed(format!("sending: {e}"));
                }
                debug!(peer = %self.peer, "TFTP OACK sent");
                match self.wait(0, 1, token).await {
                    Reply::Acked(_) => break,
                    Reply::TimedOut if tries < self.retries => tries += 1,
                    other => return self.end(other),
                }
            }
        }

        let mut base: u64 = 1; // the oldest unacknowledged block
        let mut next: u64 = 1; // the first block not read yet
        let mut last: Option<u64> = None; // the short block that ends the file
        let mut tries = 0;
        loop {
            while last.is_none() && next < base + self.window {
                match self.read_block(next).await {
                    Ok(len) if len < self.block_size => last = Some(next),
                    Ok(_) => {}
                    Err(e) => {
                        send_error(&self.socket, ErrorCode::NotDefined, "server error").await;
                        return self.failed(format!("reading the file: {e}"));
                    }
                }
                next += 1;
            }
            for seq in base..next {
                let slot = &self.slots[self.slot(seq)];
                if let Err(e) = self.socket.send(slot).await {
                    return self.failed(format!("sending: {e}"));
                }
                trace!(
                    block = seq as u16,
                    len = slot.len() - packet::DATA_HEADER_LEN,
                    "TFTP DATA sent"
                );
            }
            match self.wait(base, next, token).await {
                Reply::Acked(seq) => {
                    for acked in base..=seq {
                        let len = self.slots[self.slot(acked)].len() - packet::DATA_HEADER_LEN;
                        self.bytes_acked += len as u64;
                    }
                    if last == Some(seq) {
                        return TransferOutcome::Completed {
                            bytes: self.bytes_acked,
                        };
                    }
                    base = seq + 1;
                    tries = 0;
                }
                Reply::TimedOut if tries < self.retries => {
                    tries += 1;
                    debug!(peer = %self.peer, block = base as u16, tries, "TFTP retransmitting");
                }
                other => return self.end(other),
            }
        }
    }

    fn slot(&self, seq: u64) -> usize {
        // `window` fits in u16, so the remainder fits in usize.
        (seq % self.window) as usize
    }

    fn failed(&self, error: String) -> TransferOutcome {
        TransferOutcome::Failed {
            bytes: self.bytes_acked,
            error,
        }
    }

    /// The outcome for a reply that ends the transfer.
    fn end(&self, reply: Reply) -> TransferOutcome {
        let bytes = self.bytes_acked;
        match reply {
            // An ACK never ends a transfer here; only the retries running out does.
            Reply::Acked(_) | Reply::TimedOut => TransferOutcome::TimedOut { bytes },
            Reply::ClientError { code, message } => TransferOutcome::AbortedByClient {
                code,
                message,
                bytes,
            },
            Reply::Cancelled => TransferOutcome::Cancelled { bytes },
            Reply::SocketError(e) => self.failed(format!("receiving: {e}")),
        }
    }

    /// Reads block `seq` into its slot as a DATA packet; returns its payload length.
    async fn read_block(&mut self, seq: u64) -> io::Result<usize> {
        let index = self.slot(seq);
        let slot = &mut self.slots[index];
        slot.clear();
        slot.extend_from_slice(&packet::data_header(seq as u16));
        slot.resize(packet::DATA_HEADER_LEN + self.block_size, 0);
        let dst = &mut slot[packet::DATA_HEADER_LEN..];
        let mut filled = 0;
        while filled < dst.len() {
            let src: &[u8] = match &self.netascii {
                Some(Some(_)) => &[],
                _ => self.reader.fill_buf().await?,
            };
            let (used, written) = match &mut self.netascii {
                None if src.is_empty() => break,
                None => {
                    let n = src.len().min(dst.len() - filled);
                    dst[filled..filled + n].copy_from_slice(&src[..n]);
                    (n, n)
                }
                Some(None) if src.is_empty() => break,
                Some(carry) => packet::netascii_encode(carry, src, &mut dst[filled..]),
            };
            self.reader.consume(used);
            filled += written;
        }
        slot.truncate(packet::DATA_HEADER_LEN + filled);
        Ok(filled)
    }

    /// Waits for an ACK of a block in `base..next`, an ERROR, the timeout or cancellation.
    /// ACKs outside the window (duplicates, stale ones) are ignored rather than answered,
    /// which avoids the Sorcerer's Apprentice bug (RFC 1123 §4.2.3.1).
    async fn wait(&mut self, base: u64, next: u64, token: &CancellationToken) -> Reply {
        let deadline = Instant::now() + self.timeout;
        loop {
            let received = tokio::select! {
                biased;
                () = token.cancelled() => return Reply::Cancelled,
                received = self.socket.recv(&mut self.reply) => received,
                () = tokio::time::sleep_until(deadline) => return Reply::TimedOut,
            };
            let len = match received {
                Ok(len) => len,
                Err(e) => return Reply::SocketError(e),
            };
            match Packet::decode(&self.reply[..len]) {
                Ok(Packet::Ack(block)) => match acked_seq(block, base, next) {
                    Some(seq) => {
                        trace!(block, "TFTP ACK");
                        return Reply::Acked(seq);
                    }
                    None => trace!(block, "TFTP ACK outside the window ignored"),
                },
                Ok(Packet::Error { code, message }) => {
                    debug!(code = code.to_u16(), message = ?message, "TFTP ERROR from the client");
                    return Reply::ClientError { code, message };
                }
                Ok(other) => debug!(packet = ?PacketKind(&other), "TFTP unexpected packet ignored"),
                Err(e) => debug!(error = %e, "malformed TFTP packet dropped"),
            }
        }
    }
}

/// A file read in chunks on tokio's blocking pool, one chunk ahead of the sender, up to the
/// size it had when opened (the size `tsize` announced).
///
/// Reading ahead keeps the transfer task from waiting on the pool: by the time a chunk is
/// needed its read has usually finished, so the task is not woken from another thread.
/// Measured on loopback, waiting on each read (tokio's `File`) made lock-step transfers up to
/// twice as slow, because the wake-ups moved the task away from the client's CPU.
struct ReadAhead {
    chunk: Vec<u8>,
    pos: usize,
    /// The file, while no read is in flight; `None` at the end of the file.
    file: Option<Source>,
    next: Option<ChunkRead>,
    /// Bytes of the file not yet asked for. A chunk is never larger than what is left, so a
    /// boot file smaller than a chunk costs its own size, not a whole chunk: in a boot storm
    /// thousands of transfers run at once (5,000 of undionly.kpxe's 70 KB held 550 MB in
    /// 128 KiB chunks).
    left: u64,
}

/// A chunk being read on the blocking pool; it hands the file back with the bytes.
type ChunkRead = JoinHandle<io::Result<(Source, Vec<u8>)>>;

impl ReadAhead {
    fn new(file: Source, size: u64) -> ReadAhead {
        ReadAhead {
            chunk: Vec::new(),
            pos: 0,
            file: Some(file),
            next: None,
            left: size,
        }
    }

    /// Starts reading the next chunk into `buf`, unless the file has ended.
    fn read_ahead(&mut self, mut buf: Vec<u8>) {
        let Some(mut file) = self.file.take() else {
            return;
        };
        let want = usize::try_from(self.left).map_or(FILE_CHUNK, |left| left.min(FILE_CHUNK));
        if want == 0 {
            return;
        }
        self.left -= want as u64;
        self.next = Some(tokio::task::spawn_blocking(move || {
            buf.resize(want, 0);
            let mut filled = 0;
            while filled < buf.len() {
                match std::io::Read::read(&mut file, &mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            buf.truncate(filled);
            Ok((file, buf))
        }));
    }

    /// The unread bytes of the current chunk; empty at the end of the file.
    async fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.chunk.len() {
            if self.next.is_none() {
                self.read_ahead(Vec::new());
            }
            let Some(next) = self.next.take() else {
                return Ok(&[]);
            };
            let (file, chunk) = next.await.map_err(io::Error::other)??;
            let done = std::mem::replace(&mut self.chunk, chunk);
            self.pos = 0;
            // A short chunk is the end of the file, and so is its announced size.
            if self.chunk.len() == FILE_CHUNK && self.left > 0 {
                self.file = Some(file);
                self.read_ahead(done);
            }
        }
        Ok(&self.chunk[self.pos..])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.chunk.len());
    }
}

/// The sequence number in `base..next` whose low 16 bits are `block`, if any. The window is
/// at most 65535 blocks, so there is at most one.
fn acked_seq(block: u16, base: u64, next: u64) -> Option<u64> {
    let offset = u64::from(block.wrapping_sub(base as u16));
    (base + offset < next).then_some(base + offset)
}

#[cfg(test)]
mod tests;
