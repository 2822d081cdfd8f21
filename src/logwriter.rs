//! Where `serve`'s log lines go: stderr, through one writer thread.
//!
//! Written directly, every log line is a write(2) under stderr's lock; under a load of
//! boot scripts (one line each) that was a system call and often a futex per request.
//! Here a line is copied into a shared buffer, and the thread writes whatever gathered in
//! [`GATHER`] in one write. The thread is woken only when the buffer goes from empty to not
//! empty, so an idle server has no wake-ups. Nothing is dropped: when the buffer holds
//! [`MAX_BUFFERED`] bytes (stderr blocked), the logging thread waits for room. Dropping the
//! [`Guard`] writes out what is buffered and sends later lines straight to stderr.

use std::io::Write;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How long the thread lets lines gather after the first one.
const GATHER: Duration = Duration::from_millis(2);

/// Bytes buffered before a logging thread waits.
const MAX_BUFFERED: usize = 4 << 20;

struct State {
    buf: Vec<u8>,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    /// The buffer got its first bytes, or the guard was dropped.
    wake: Condvar,
    /// The thread took the buffer.
    room: Condvar,
}

static LOG: Shared = Shared {
    state: Mutex::new(State {
        buf: Vec::new(),
        closed: true,
    }),
    wake: Condvar::new(),
    room: Condvar::new(),
};

fn lock() -> MutexGuard<'static, State> {
    LOG.state.lock().unwrap_or_else(|e| e.into_inner())
}

/// One log line's writer (tracing's fmt layer writes each event in one call).
pub(crate) struct Line;

impl Write for Line {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut st = lock();
        while st.buf.len() >= MAX_BUFFERED && !st.closed {
            st = LOG.room.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        if st.closed {
            drop(st);
            return std::io::stderr().write_all(data).map(|()| data.len());
        }
        let first = st.buf.is_empty();
        st.buf.extend_from_slice(data);
        drop(st);
        if first {
            LOG.wake.notify_one();
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes out what is buffered when dropped; later lines go straight to stderr.
pub(crate) struct Guard(Option<std::thread::JoinHandle<()>>);

/// Start the writer thread (once); log lines written with [`Line`] go through it.
pub(crate) fn start() -> std::io::Result<Guard> {
    lock().closed = false;
    let thread = std::thread::Builder::new()
        .name("log".into())
        .spawn(run)
        .inspect_err(|_| lock().closed = true)?;
    Ok(Guard(Some(thread)))
}

fn run() {
    let mut spare = Vec::new();
    loop {
        let mut st = lock();
        while st.buf.is_empty() && !st.closed {
            st = LOG.wake.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        let closed = st.closed;
        if !closed {
            drop(st);
            std::thread::sleep(GATHER);
            st = lock();
        }
        let mut out = std::mem::replace(&mut st.buf, spare);
        drop(st);
        LOG.room.notify_all();
        // Nowhere else to say it if stderr fails.
        let _ = std::io::stderr().write_all(&out);
        out.clear();
        spare = out;
        if closed {
            return;
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        lock().closed = true;
        LOG.wake.notify_all();
        LOG.room.notify_all();
        if let Some(t) = self.0.take() {
            let _ = t.join();
        }
    }
}
