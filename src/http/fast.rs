//! The plain-HTTP connection loop: what machines fetch most (boot scripts, the stem cell's
//! kernel and initrd, assets, loaders, OS images) is answered here, files with sendfile(2);
//! everything else goes to hyper on the same connection.
//!
//! Why: hyper writes a body it is given as buffers, so a file costs a read into memory and a
//! copy into the socket, twice nginx's CPU per GB sent. sendfile(2) hands the page cache to
//! the socket, which hyper's body API cannot express. So each plain connection starts here:
//! its request heads are read and parsed (httparse, as hyper does), and a GET or HEAD of
//! HTTP/1.1 without a body on one of [`ROUTES`] is answered by the same axum router as
//! always (the same handlers, events, metrics and log lines); the response's head is
//! written here, and a file's body (a [`SendFile`] in the response's extensions) goes out
//! with sendfile. The first request that is anything else (another route, a body, HTTP/1.0,
//! an upgrade, a head too large or one httparse refuses) hands the connection, with every
//! byte read so far, to hyper, which serves it to its end exactly as before: its 400s and
//! 431s, bodies, event streams. A keep-alive or pipelined client (iPXE fetching the kernel
//! then the initrd) stays here across requests: bytes after a head are the next request.
//!
//! The header time-out is the same as hyper's (from the moment a head is awaited, so also
//! the idle keep-alive time-out), and an idle connection closes when the server stops.
//! A file that shrinks while it is sent ends the connection when sendfile meets its end:
//! the client sees fewer bytes than `Content-Length` promised, never bytes from elsewhere.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use axum::Router;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// A response whose body may be sent straight from `file` with sendfile(2): `count`
/// bytes from `start`. Its body is the same bytes, for hyper (which cannot use this).
#[derive(Clone)]
pub(crate) struct SendFile {
    pub(crate) file: Arc<std::fs::File>,
    pub(crate) path: Arc<PathBuf>,
    pub(crate) start: u64,
    pub(crate) count: u64,
}

/// The address a request's connection came in on (a request from this host to one of its
/// own addresses has that address as its peer too). Defined here and re-exported
/// by `listen`: both put it on requests.
#[derive(Clone, Copy)]
pub(crate) struct LocalAddr(pub(crate) SocketAddr);

/// The routes answered here (GET and HEAD): machines' boot scripts and files.
const ROUTES: [&str; 5] = ["/boot/", "/stemcell/", "/assets/", "/tftp/", "/os/"];

/// Bodies up to this size are copied behind their head and sent in one write.
const INLINE_MAX: usize = 16 << 10;

/// Headers a head may have to be parsed here; more (hyper allows 100) go to hyper.
const MAX_HEADERS: usize = 48;

/// One plain connection's settings.
pub(crate) struct Conn {
    pub(crate) peer: SocketAddr,
    pub(crate) local: Option<SocketAddr>,
    pub(crate) router: Router,
    pub(crate) header_timeout: Duration,
    /// A head that is not complete at this size goes to hyper (which answers 431).
    pub(crate) max_head: usize,
    pub(crate) shutdown: CancellationToken,
}

/// What a parsed head is.
enum Head {
    Partial,
    /// Not for this loop: hyper serves it.
    Other,
    Fast {
        req: Box<Request<Body>>,
        len: usize,
        close: bool,
        head_only: bool,
    },
}

fn parse(buf: &[u8], c: &Conn) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut p = httparse::Request::new(&mut headers);
    let len = match p.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::Other,
    };
    let method = match p.method {
        Some("GET") => Method::GET,
        Some("HEAD") => Method::HEAD,
        _ => return Head::Other,
    };
    let Some(path) = p.path else {
        return Head::Other;
    };
    if p.version != Some(1) || !ROUTES.iter().any(|r| path.starts_with(r)) {
        return Head::Other;
    }
    let mut map = HeaderMap::with_capacity(p.headers.len());
    let mut close = false;
    for h in p.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
            return Head::Other;
        };
        if name == header::CONTENT_LENGTH && h.value != b"0"
            || name == header::TRANSFER_ENCODING
            || name == header::EXPECT
            || name == header::UPGRADE
        {
            return Head::Other;
        }
        if name == header::CONNECTION {
            close |= h
                .value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
        let Ok(value) = HeaderValue::from_bytes(h.value) else {
            return Head::Other;
        };
        map.append(name, value);
    }
    let Ok(mut req) = Request::builder()
        .method(method.clone())
        .uri(path)
        .body(Body::empty())
    else {
        return Head::Other;
    };
    *req.headers_mut() = map;
    req.extensions_mut()
        .insert(ConnectInfo::<SocketAddr>(c.peer));
    if let Some(local) = c.local {
        req.extensions_mut().insert(LocalAddr(local));
    }
    Head::Fast {
        req: Box::new(req),
        len,
        close,
        head_only: method == Method::HEAD,
    }
}

/// Serve `stream` until it closes (`None`), or until a request is for hyper: then the
/// stream with the bytes already read in front of it.
pub(crate) async fn serve(c: &Conn, mut stream: TcpStream) -> io::Result<Option<Rewind>> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let deadline = tokio::time::Instant::now() + c.header_timeout;
        let (req, close, head_only) = loop {
            if !buf.is_empty() {
                match parse(&buf, c) {
                    Head::Partial if buf.len() < c.max_head => {}
                    Head::Partial | Head::Other => {
                        return Ok(Some(Rewind {
                            pre: buf.freeze(),
                            inner: stream,
                        }))
                    }
                    Head::Fast {
                        req,
                        len,
                        close,
                        head_only,
                    } => {
                        buf.advance(len);
                        break (req, close, head_only);
                    }
                }
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(4096);
            }
            let read = tokio::select! {
                biased;
                () = c.shutdown.cancelled(), if buf.is_empty() => return Ok(None),
                r = tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)) => r,
            };
            match read {
                Err(_) => {
                    tracing::debug!(peer = %c.peer, "HTTP header time-out");
                    return Ok(None);
                }
                Ok(Ok(0)) => return Ok(None),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
            }
        };
        let resp = match c.router.clone().oneshot(*req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        if !respond(&mut stream, resp, close, head_only).await? || close {
            use tokio::io::AsyncWriteExt as _;
            let _ = stream.shutdown().await;
            return Ok(None);
        }
    }
}

thread_local! {
    static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
}

/// `Date:` as hyper writes it, formatted once a second per thread.
fn push_date(head: &mut Vec<u8>) {
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs || d.1.is_empty() {
            *d = (secs, httpdate::fmt_http_date(now));
        }
        head.extend_from_slice(b"date: ");
        head.extend_from_slice(d.1.as_bytes());
        head.extend_from_slice(b"\r\n");
    });
}

/// Write one response; false when the connection must close (a body cut short).
async fn respond(
    stream: &mut TcpStream,
    resp: axum::response::Response,
    close: bool,
    head_only: bool,
) -> io::Result<bool> {
    let (parts, body) = resp.into_parts();
    let status = parts.status;
    let may_have_body = !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED);
    let file = parts
        .extensions
        .get::<SendFile>()
        .filter(|_| may_have_body)
        .cloned();
    let data = if file.is_some() {
        drop(body);
        Bytes::new()
    } else {
        match axum::body::to_bytes(body, usize::MAX).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "HTTP response body failed");
                return Ok(false);
            }
        }
    };
    // A small body goes out in one write with its head; a large one (the stem cell's
    // kernel from memory) right after it, never copied.
    let inline = !head_only && may_have_body && data.len() <= INLINE_MAX;
    let mut head = Vec::with_capacity(256 + if inline { data.len() } else { 0 });
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if may_have_body && !head_only && !parts.headers.contains_key(header::CONTENT_LENGTH) {
        let len = file.as_ref().map_or(data.len() as u64, |f| f.count);
        head.extend_from_slice(format!("content-length: {len}\r\n").as_bytes());
    }
    if !parts.headers.contains_key(header::DATE) {
        push_date(&mut head);
    }
    if close {
        head.extend_from_slice(b"connection: close\r\n");
    }
    head.extend_from_slice(b"\r\n");
    if head_only {
        write_all(stream, &head, false).await?;
        return Ok(true);
    }
    let Some(f) = file else {
        if inline || !may_have_body || data.is_empty() {
            if inline {
                head.extend_from_slice(&data);
            }
            write_all(stream, &head, false).await?;
        } else {
            write_all(stream, &head, true).await?;
            write_all(stream, &data, false).await?;
        }
        return Ok(true);
    };
    write_all(stream, &head, f.count > 0).await?;
    send_file(stream, &f).await
}

/// Write `data` whole; `more`: the body follows at once (MSG_MORE: one segment, not two).
async fn write_all(stream: &TcpStream, mut data: &[u8], more: bool) -> io::Result<()> {
    use nix::sys::socket::MsgFlags;
    let flags = if more {
        // nix names no MSG_MORE.
        MsgFlags::MSG_NOSIGNAL | MsgFlags::from_bits_retain(nix::libc::MSG_MORE)
    } else {
        MsgFlags::MSG_NOSIGNAL
    };
    while !data.is_empty() {
        stream.writable().await?;
        let sent = stream.try_io(Interest::WRITABLE, || {
            nix::sys::socket::send(stream.as_raw_fd(), data, flags).map_err(io::Error::from)
        });
        match sent {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// sendfile(2) `f`'s range to `stream`; false when the file ended early.
async fn send_file(stream: &TcpStream, f: &SendFile) -> io::Result<bool> {
    let Ok(mut offset) = i64::try_from(f.start) else {
        return Ok(false);
    };
    let mut left = f.count;
    while left > 0 {
        stream.writable().await?;
        let sent = stream.try_io(Interest::WRITABLE, || {
            let chunk = left.min(1 << 30) as usize;
            // The kernel advances `offset`, never the file's own offset.
            nix::sys::sendfile::sendfile64(stream, &*f.file, Some(&mut offset), chunk)
                .map(|n| n as u64)
                .map_err(io::Error::from)
        });
        match sent {
            Ok(0) => {
                tracing::warn!(path = %f.path.display(), missing = left, "file shrank while it was sent; connection closed");
                return Ok(false);
            }
            Ok(n) => left -= n.min(left),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// A connection handed to hyper: the bytes already read, then the socket.
pub(crate) struct Rewind {
    pre: Bytes,
    inner: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
