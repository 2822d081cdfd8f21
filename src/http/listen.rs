//! The HTTP accept loop, with the limits a server on an open network needs.
//!
//! `axum::serve` keeps a connection that sends half a request open forever and retries a
//! dead listening socket forever. Here every connection is HTTP/1.1 (firmware, iPXE, curl
//! and browsers all speak it) with:
//! - a header read time-out, which is also the idle keep-alive time-out (hyper starts it
//!   whenever it waits for a request head);
//! - a cap on the request head: a larger one is answered 431 and closed;
//! - a bound on connections in all and per client address: a connection over either is
//!   closed at once, so one host holding as many half-open connections as it can cannot
//!   starve a boot storm (each machine is its own address).
//!
//! The TLS listener (`http.tls`) goes through the same gate (the bounds count both
//! listeners together) and the same HTTP settings; its handshake must finish within the
//! header time-out, and a connection whose first byte is not a TLS handshake (plain HTTP
//! sent to the TLS port) is answered 400 in plain text and closed.
//!
//! Accept errors that concern one connection or a passing shortage (EMFILE, ENOBUFS…) are
//! logged and waited out; any other means the listening socket is gone, and `serve`
//! returns it, which stops the server (see `server::run`).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::slots::PerClient;

pub(crate) use crate::config::HttpLimits as Limits;

/// An accept error that says nothing about the listening socket itself.
fn passing(e: &io::Error) -> bool {
    use io::ErrorKind as K;
    matches!(
        e.kind(),
        K::ConnectionAborted | K::ConnectionReset | K::Interrupted | K::WouldBlock | K::TimedOut
    ) || matches!(
        e.raw_os_error(),
        // EMFILE, ENFILE, ENOBUFS, ENOMEM, EPROTO, EPERM (a firewall refused it)
        Some(24 | 23 | 105 | 12 | 71 | 1)
    )
}

/// The connection bounds, shared by every listener of one server.
pub(crate) struct Gate {
    limits: Limits,
    total: Arc<Semaphore>,
    per_client: Arc<PerClient>,
}

impl Gate {
    pub(crate) fn new(limits: Limits) -> Arc<Gate> {
        Arc::new(Gate {
            limits,
            total: Arc::new(Semaphore::new(limits.max_connections)),
            per_client: Arc::default(),
        })
    }
}

pub(crate) use super::fast::LocalAddr;

/// In a request's extensions when it came over TLS (the page marks its cookie `Secure`).
#[derive(Clone, Copy)]
pub(crate) struct OverTls;

/// What the first bytes of a TLS port's connection must be: a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// The threads that serve plain connections: one current-thread runtime each, as many as
/// the machine has cores. A connection lives on one thread from accept to close, as in
/// nginx's workers: its socket's readiness, its request and its response never cross
/// threads, where the multi-thread runtime parked and woke a worker (a futex each way)
/// for most requests of a keep-alive connection. What handlers spawn runs there too; the
/// rest of the server (DHCP, TFTP, the journals' writers) keeps the main runtime.
struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    next: std::sync::atomic::AtomicUsize,
    /// Cancelled when the listener is done: each thread's runtime then stops.
    stop: CancellationToken,
}

impl Workers {
    fn start() -> io::Result<Workers> {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get().min(64));
        let stop = CancellationToken::new();
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(rt.handle().clone());
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("http-{i}"))
                .spawn(move || rt.block_on(stop.cancelled()))?;
        }
        Ok(Workers {
            handles,
            next: std::sync::atomic::AtomicUsize::new(0),
            stop,
        })
    }

    /// The next thread, round robin.
    fn pick(&self) -> &tokio::runtime::Handle {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        &self.handles[i % self.handles.len()]
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Serve `router` on `listener` (over TLS with `tls`) until `shutdown`, then give open
/// connections 10 s.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    gate: Arc<Gate>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let limits = gate.limits;
    let total = gate.total.clone();
    let per_client = gate.per_client.clone();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    let mut refused_total = 0u64;
    // Plain connections run on their own threads; TLS ones (the operators') stay here.
    let workers = if tls.is_none() {
        Some(Workers::start()?)
    } else {
        None
    };
    let result = loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) if passing(&e) => {
                tracing::warn!(error = %e, "HTTP accept failed; waiting a moment");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => break Err(e),
        };
        let Ok(permit) = total.clone().try_acquire_owned() else {
            refused_total += 1;
            if refused_total.is_power_of_two() {
                tracing::warn!(peer = %peer, refused = refused_total, limit = limits.max_connections, "HTTP connection refused: too many connections");
            }
            continue;
        };
        let Ok(slot) = PerClient::take(&per_client, peer, limits.max_connections_per_client) else {
            tracing::debug!(peer = %peer, limit = limits.max_connections_per_client, "HTTP connection refused: too many from this address");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let fast_router = router.clone();
        let over_tls = tls.is_some();
        let local = stream.local_addr().ok();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            if let Some(local) = local {
                req.extensions_mut().insert(LocalAddr(local));
            }
            if over_tls {
                req.extensions_mut().insert(OverTls);
            }
            router.clone().oneshot(req.map(axum::body::Body::new))
        });
        let Some(tls) = tls.clone() else {
            // Plain HTTP: machines' files and scripts first (`fast`, sendfile), the rest
            // of the connection by hyper once a request is anything else.
            let conn = super::fast::Conn {
                peer,
                local,
                router: fast_router,
                header_timeout: limits.header_timeout,
                max_head: limits.max_header_bytes.max(8192),
                shutdown: shutdown.clone(),
            };
            let http = http.clone();
            let watcher = graceful.watcher();
            // Registered again with the reactor of the thread that serves it.
            let stream = match stream.into_std() {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(peer = %peer, error = %e, "HTTP connection lost at accept");
                    continue;
                }
            };
            let spawn_on = workers
                .as_ref()
                .map_or_else(tokio::runtime::Handle::current, |w| w.pick().clone());
            spawn_on.spawn(async move {
                let stream = match tokio::net::TcpStream::from_std(stream) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(peer = %peer, error = %e, "HTTP connection lost at accept");
                        return;
                    }
                };
                match super::fast::serve(&conn, stream).await {
                    Ok(Some(rest)) => {
                        let conn =
                            watcher.watch(http.serve_connection(TokioIo::new(rest), service));
                        if let Err(e) = conn.await {
                            tracing::debug!(peer = %peer, error = %e, "HTTP connection ended with an error");
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::debug!(peer = %peer, error = %e, "HTTP connection ended with an error");
                    }
                }
                drop((permit, slot));
            });
            continue;
        };
        // TLS: the handshake happens in the connection's task, bounded by the header
        // time-out, holding its slots; only then is it watched for graceful shutdown.
        let http = http.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let handshake = async {
                let mut first = [0u8; 1];
                if stream.peek(&mut first).await? == 1 && first[0] != TLS_HANDSHAKE {
                    use tokio::io::AsyncWriteExt as _;
                    let mut stream = stream;
                    let msg = "This port speaks TLS: use https://\n";
                    let _ = stream
                        .write_all(format!("HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{msg}", msg.len()).as_bytes())
                        .await;
                    let _ = stream.shutdown().await;
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "plain HTTP on the TLS port",
                    ));
                }
                tls.accept(stream).await
            };
            let stream = match tokio::time::timeout(limits.header_timeout, handshake).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %peer, "TLS handshake timed out");
                    return;
                }
            };
            let conn = watcher.watch(http.serve_connection(TokioIo::new(stream), service));
            if let Err(e) = conn.await {
                tracing::debug!(peer = %peer, error = %e, "HTTPS connection ended with an error");
            }
            drop((permit, slot));
        });
    };
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("HTTP connections still open after 10 s (event streams); closing");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_dead_listener_is_fatal() {
        assert!(passing(&io::Error::from_raw_os_error(24)), "EMFILE waits");
        assert!(passing(&io::Error::from(io::ErrorKind::ConnectionAborted)));
        assert!(
            !passing(&io::Error::from_raw_os_error(22)),
            "EINVAL: destroyed"
        );
        assert!(!passing(&io::Error::from_raw_os_error(9)), "EBADF");
    }
}
