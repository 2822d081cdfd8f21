//! An append-only, line-oriented journal with group commit and compaction.
//!
//! Owns the durability of small records (machine lifecycle, leases): a caller appends a
//! line and, when it must be durable before answering (an ACK, a `done`), awaits the
//! commit. One writer thread batches every line that arrived while the previous `fdatasync`
//! ran, so many waiting callers share one sync; under load syncs start at most every
//! [`SYNC_INTERVAL`], so each carries more lines. Compaction replaces the file with a
//! snapshot through write-temp-then-rename, so a crash at any point leaves either the old
//! journal or the new one, never a mix.
//!
//! Opening checks every record with the owner's parser. A damaged tail (a crash mid-write,
//! or a disk that lost the last block) is copied aside to `<file>.corrupt-<time>` and cut
//! off, with a warning naming the offset; a damaged record with good records after it is a
//! hard error, because dropping it (or what follows) would lose acknowledged state.
//!
//! A write or sync that fails (a full disk) fails the commits waiting on it, so nothing
//! is answered as durable that is not, but the lines are kept in memory, in order, and
//! retried every second until they land: the file never gets a torn line in its middle
//! (a failed write is cut back to the last good length), and nothing is lost while the
//! backlog stays under [`BACKLOG_MAX`]. Beyond it new lines are dropped, counted, and the
//! owner is told ([`Journal::take_lost`]) so it can write a full snapshot instead.
//!
//! It knows nothing of what the lines mean: replay hands them back to the owner.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

/// Bytes of unwritten lines kept in memory while the disk refuses them.
pub(crate) const BACKLOG_MAX: usize = 32 << 20;

/// How often a failing journal retries its backlog.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// How long lines nobody waits for may gather before the writer wakes for them: one
/// write (and one thread wake-up) for many events instead of one each. A durable append
/// never waits for it.
const LINGER: Duration = Duration::from_millis(5);

/// The least time from one sync's start to the next's. Under load the writer would sync
/// back to back, each sync carrying the few lines that arrived during the last one; syncs
/// cost CPU (and the device's flushes) per call, not per line. Waiting out the rest of
/// this interval gathers more lines per sync. A durable append after a quiet moment is
/// synced at once: only an append that arrives within this time of the last sync waits,
/// and never longer than this.
const SYNC_INTERVAL: Duration = Duration::from_millis(1);

/// Ops waiting for the writer, in order.
#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    wake: Condvar,
}

#[derive(Default)]
struct QueueState {
    ops: VecDeque<Op>,
    /// The writer waits with nothing queued: the next op must wake it.
    parked: bool,
    /// Something is waited for (a durable append, a flush, a compaction, a long queue).
    urgent: bool,
    /// Every handle is gone: write what is queued and stop.
    closed: bool,
    /// The writer has stopped (or panicked): ops are dropped, so their waiters hear so.
    dead: bool,
}

/// What [`Queue::recv_timeout`] got instead of an op.
enum Recv {
    Timeout,
    Closed,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, op: Op, urgent: bool) {
        let mut s = self.lock();
        if s.dead {
            return;
        }
        s.ops.push_back(op);
        let urgent = urgent || s.ops.len() >= 1024;
        s.urgent |= urgent;
        let wake = urgent || s.parked;
        s.parked = false;
        drop(s);
        if wake {
            self.wake.notify_one();
        }
    }

    fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }

    fn try_recv(&self) -> Option<Op> {
        self.lock().ops.pop_front()
    }

    /// The next op, waiting as long as it takes; `None` once closed and empty. Woken for
    /// lines nobody waits for, it lets more gather for [`LINGER`] first.
    fn recv(&self) -> Option<Op> {
        let mut s = self.lock();
        loop {
            if let Some(op) = s.ops.pop_front() {
                return Some(op);
            }
            if s.closed {
                return None;
            }
            s.parked = true;
            s.urgent = false;
            s = self.wake.wait(s).unwrap_or_else(|e| e.into_inner());
            s.parked = false;
            if !s.urgent && !s.closed && !s.ops.is_empty() {
                s = self
                    .wake
                    .wait_timeout_while(s, LINGER, |s| !s.urgent && !s.closed)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
    }

    fn recv_timeout(&self, d: Duration) -> Result<Op, Recv> {
        let mut s = self.lock();
        if let Some(op) = s.ops.pop_front() {
            return Ok(op);
        }
        if s.closed {
            return Err(Recv::Closed);
        }
        s.parked = true;
        s = self
            .wake
            .wait_timeout(s, d)
            .unwrap_or_else(|e| e.into_inner())
            .0;
        s.parked = false;
        match s.ops.pop_front() {
            Some(op) => Ok(op),
            None if s.closed => Err(Recv::Closed),
            None => Err(Recv::Timeout),
        }
    }
}

/// The handles' side of the queue: when the last handle drops it, the writer finishes.
struct Sender(Arc<Queue>);

impl Sender {
    fn send(&self, op: Op, urgent: bool) {
        self.0.send(op, urgent);
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// A journal that cannot be used as it is.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JournalError {
    #[error(
        "{path}: record at byte {offset} (line {line}) is damaged ({reason}) and {after} good \
         record(s) follow it; refusing to start rather than drop acknowledged state. Inspect \
         the file, then repair or remove that line"
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        line: usize,
        reason: String,
        after: usize,
    },
}

enum Op {
    Append {
        line: Vec<u8>,
        ack: Option<oneshot::Sender<Result<(), String>>>,
        seq: u64,
    },
    Compact {
        contents: Vec<u8>,
        seq: u64,
    },
    Flush(oneshot::Sender<Result<(), String>>),
}

/// What a journal's writer has been through (for `/metrics`).
#[derive(Debug, Default)]
struct Stats {
    write_errors: AtomicU64,
    backlog_bytes: AtomicU64,
    dropped_lines: AtomicU64,
    lost: AtomicBool,
    /// Every append and compaction up to this sequence number is on disk (synced).
    synced: AtomicU64,
}

/// A copy of a journal's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct JournalStats {
    /// Writes or syncs that failed (each retry counts).
    pub(crate) write_errors: u64,
    /// Bytes waiting in memory to be written.
    pub(crate) backlog_bytes: u64,
    /// Lines dropped because the backlog was full (the owner then writes a snapshot).
    pub(crate) dropped_lines: u64,
}

/// Handle to a journal's writer thread. Cheap to clone; the thread ends when the last
/// handle is dropped, after writing what it was given.
#[derive(Clone)]
pub(crate) struct Journal {
    tx: Arc<Sender>,
    stats: Arc<Stats>,
    /// The last sequence number given, held while its op is sent: the writer sees them in
    /// order.
    seq: Arc<std::sync::Mutex<u64>>,
}

/// A pending commit: await it for durability. [`Commit::seq`] names its line for
/// [`Journal::flush_to`].
pub(crate) struct Commit(Option<oneshot::Receiver<Result<(), String>>>, u64);

impl Commit {
    /// A commit answered by another writer (`None`: nothing to wait for). It has no line
    /// number: [`Journal::flush_to`] of it always waits.
    pub(crate) fn from_receiver(rx: Option<oneshot::Receiver<Result<(), String>>>) -> Commit {
        Commit(rx, u64::MAX)
    }

    /// The number of the line this commit is for (see [`Journal::flush_to`]).
    pub(crate) fn seq(&self) -> u64 {
        self.1
    }

    /// Wait until the line is on disk (`fdatasync` returned). A non-durable append resolves
    /// at once; a durable one whose writer has stopped is an error, never a silent success.
    pub(crate) async fn wait(self) -> io::Result<()> {
        match self.0 {
            None => Ok(()),
            Some(rx) => match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(io::Error::other(e)),
                Err(_) => Err(io::Error::other("journal writer stopped")),
            },
        }
    }
}

/// The first damaged record of a scan.
struct Damage {
    offset: u64,
    line: usize,
    reason: String,
    /// Good records after it.
    after: usize,
}

/// Every record of `bytes` parsed, and the first damaged one if any.
fn scan<T>(
    bytes: &[u8],
    mut parse: impl FnMut(&str) -> Result<T, String>,
) -> (Vec<T>, Option<Damage>) {
    let mut out = Vec::new();
    let mut damage: Option<Damage> = None;
    let mut offset = 0usize;
    let mut line = 0usize;
    while offset < bytes.len() {
        line += 1;
        let rest = &bytes[offset..];
        let (body, len, reason) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], i + 1, None),
            None => (
                rest,
                rest.len(),
                Some("torn record: no newline at the end of the file".to_string()),
            ),
        };
        let reason = reason.or_else(|| match std::str::from_utf8(body) {
            Err(e) => Some(format!("not UTF-8 at byte {} of the line", e.valid_up_to())),
            Ok(s) if s.trim().is_empty() => None,
            Ok(s) => match parse(s) {
                Ok(t) => {
                    if damage.is_none() {
                        out.push(t);
                    }
                    None
                }
                Err(e) => Some(e),
            },
        });
        let blank = body.iter().all(u8::is_ascii_whitespace) && len == body.len() + 1;
        match (&mut damage, reason) {
            (None, Some(reason)) => {
                damage = Some(Damage {
                    offset: offset as u64,
                    line,
                    reason,
                    after: 0,
                })
            }
            (Some(d), None) if !blank => d.after += 1,
            _ => {}
        }
        offset += len;
    }
    (out, damage)
}

/// Read a journal without taking it over (`render` beside a running server): a damaged
/// tail is ignored with a warning, damage in the middle is an error.
pub(crate) fn read<T>(
    path: &Path,
    parse: impl FnMut(&str) -> Result<T, String>,
) -> io::Result<Vec<T>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let (records, damage) = scan(&bytes, parse);
    match damage {
        Some(d) if d.after > 0 => Err(corrupt(path, d)),
        Some(d) => {
            // Beside a running server this is usually a line being written: not a warning.
            tracing::debug!(path = %path.display(), offset = d.offset, reason = %d.reason, "journal tail is damaged or being written; reading the records before it");
            Ok(records)
        }
        None => Ok(records),
    }
}

fn corrupt(path: &Path, d: Damage) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        JournalError::Corrupt {
            path: path.to_path_buf(),
            offset: d.offset,
            line: d.line,
            reason: d.reason,
            after: d.after,
        },
    )
}

/// Copy `bytes` (a damaged tail) to a new `<path>.corrupt-<unix time>` file, synced.
fn set_aside(path: &Path, bytes: &[u8]) -> io::Result<PathBuf> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    for n in 0u32.. {
        let suffix = if n == 0 {
            format!("{name}.corrupt-{secs}")
        } else {
            format!("{name}.corrupt-{secs}.{n}")
        };
        let aside = path.with_file_name(suffix);
        // Owner-only, as the journal is: a damaged record may still hold a token.
        let opened = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&aside);
        match opened {
            Ok(mut f) => {
                f.write_all(bytes)?;
                f.sync_all()?;
                sync_dir(path);
                return Ok(aside);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    unreachable!("u32 names ran out")
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

impl Journal {
    /// Open (creating) the journal at `path`, returning the handle and every record in it,
    /// parsed by `parse` (an `Err` is the reason the line is damaged). A damaged tail is
    /// set aside and cut off with a warning; damage followed by good records is an
    /// `InvalidData` error carrying a [`JournalError`] that names the file and offset.
    pub(crate) fn open<T>(
        path: &Path,
        parse: impl FnMut(&str) -> Result<T, String>,
    ) -> io::Result<(Journal, Vec<T>)> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let (records, damage) = scan(&bytes, parse);
        let mut good_len = bytes.len() as u64;
        if let Some(d) = damage {
            if d.after > 0 {
                return Err(corrupt(path, d));
            }
            let aside = set_aside(path, &bytes[d.offset as usize..])?;
            tracing::warn!(
                path = %path.display(),
                offset = d.offset,
                line = d.line,
                reason = %d.reason,
                bytes = bytes.len() as u64 - d.offset,
                saved = %aside.display(),
                "journal ends in a damaged record; recovered to the last good record and set the rest aside"
            );
            good_len = d.offset;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)?;
        if file.metadata()?.len() != good_len {
            file.set_len(good_len)?;
            file.sync_all()?;
        }
        Ok((Journal::spawn(path, file, good_len)?, records))
    }

    /// Start the writer thread for `file`, whose first `good_len` bytes are good records.
    fn spawn(path: &Path, file: File, good_len: u64) -> io::Result<Journal> {
        // What an earlier run wrote may not have been synced: once it is, every line read
        // back counts as durable (`flush_to`).
        file.sync_data()?;
        let rx = Arc::new(Queue::default());
        let tx = Arc::new(Sender(rx.clone()));
        let stats = Arc::new(Stats::default());
        let w = Writer {
            path: path.to_path_buf(),
            file,
            good_len,
            pending: Vec::new(),
            snapshot: None,
            stats: stats.clone(),
            failing_since: None,
            last_report: None,
            last_attempt: None,
            taken: 0,
            hole: None,
        };
        thread::Builder::new()
            .name("journal".into())
            .spawn(move || w.run(rx))?;
        Ok(Journal {
            tx,
            stats,
            seq: Arc::default(),
        })
    }

    /// The writer's counters.
    pub(crate) fn stats(&self) -> JournalStats {
        JournalStats {
            write_errors: self.stats.write_errors.load(Ordering::Relaxed),
            backlog_bytes: self.stats.backlog_bytes.load(Ordering::Relaxed),
            dropped_lines: self.stats.dropped_lines.load(Ordering::Relaxed),
        }
    }

    /// Whether lines were dropped since the last call (the backlog was full): the owner
    /// must then [`Journal::compact`] with its whole state, which supersedes them.
    pub(crate) fn take_lost(&self) -> bool {
        self.stats.lost.swap(false, Ordering::Relaxed)
    }

    /// Append one line (without its newline). With `durable`, the returned commit resolves
    /// once the line is synced; without, it resolves at once (the line is still written in
    /// order, just not waited for).
    pub(crate) fn append(&self, line: &str, durable: bool) -> Commit {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        let mut seq = self.seq.lock().unwrap_or_else(|e| e.into_inner());
        *seq += 1;
        if durable {
            // If the writer is gone the sender is dropped with the op, so `wait` reports
            // "journal writer stopped".
            let (ack, rx) = oneshot::channel();
            self.tx.send(
                Op::Append {
                    line: bytes,
                    ack: Some(ack),
                    seq: *seq,
                },
                true,
            );
            Commit(Some(rx), *seq)
        } else {
            self.tx.send(
                Op::Append {
                    line: bytes,
                    ack: None,
                    seq: *seq,
                },
                false,
            );
            Commit(None, *seq)
        }
    }

    /// Replace the whole journal with `lines` (a snapshot of the live records). Ordered with
    /// appends: send it under the same lock that orders your appends.
    pub(crate) fn compact(&self, lines: impl IntoIterator<Item = String>) {
        let mut contents = Vec::new();
        for l in lines {
            contents.extend_from_slice(l.as_bytes());
            contents.push(b'\n');
        }
        let mut seq = self.seq.lock().unwrap_or_else(|e| e.into_inner());
        *seq += 1;
        self.tx.send(
            Op::Compact {
                contents,
                seq: *seq,
            },
            true,
        );
    }

    /// Resolves once everything sent so far is synced.
    pub(crate) fn flush(&self) -> Commit {
        let (ack, rx) = oneshot::channel();
        self.tx.send(Op::Flush(ack), true);
        Commit(Some(rx), 0)
    }

    /// Resolves once the append numbered `seq` ([`Commit::seq`]) is synced: at once when
    /// it already is (no sync to wait for), else as [`Journal::flush`].
    pub(crate) fn flush_to(&self, seq: u64) -> Commit {
        if self.stats.synced.load(Ordering::Acquire) >= seq {
            return Commit(None, seq);
        }
        self.flush()
    }
}

struct Writer {
    path: PathBuf,
    file: File,
    /// Length of the file's good, complete records: a failed write is cut back to it.
    good_len: u64,
    /// Lines not yet written (a full disk), in order, after `snapshot` if there is one.
    pending: Vec<u8>,
    /// A compaction not yet written.
    snapshot: Option<Vec<u8>>,
    stats: Arc<Stats>,
    failing_since: Option<Instant>,
    last_report: Option<Instant>,
    last_attempt: Option<Instant>,
    /// The highest sequence number taken into `pending` or `snapshot`.
    taken: u64,
    /// The first line dropped since the last snapshot: nothing from it on counts as synced.
    hole: Option<u64>,
}

type Ack = oneshot::Sender<Result<(), String>>;

impl Writer {
    fn run(mut self, rx: Arc<Queue>) {
        /// However the writer ends, later ops (and their waiters) are dropped, not kept.
        struct Dead(Arc<Queue>);
        impl Drop for Dead {
            fn drop(&mut self) {
                let mut s = self.0.lock();
                s.dead = true;
                s.ops.clear();
            }
        }
        let _dead = Dead(rx.clone());
        let mut acks: Vec<Ack> = Vec::new();
        let mut last_sync: Option<Instant> = None;
        loop {
            let first = if self.failing_since.is_some() {
                match rx.recv_timeout(RETRY_EVERY) {
                    Ok(op) => Some(op),
                    Err(Recv::Timeout) => None,
                    Err(Recv::Closed) => break,
                }
            } else {
                match rx.recv() {
                    Some(op) => Some(op),
                    None => break,
                }
            };
            // Take everything already queued: one write and one sync for the whole batch.
            let before = self.pending.len();
            let full = |w: &Writer, acks: &Vec<Ack>| {
                acks.len() >= 4096 || w.pending.len().saturating_sub(before) >= 4 << 20
            };
            let mut next = first;
            while let Some(op) = next.take() {
                self.take(op, &mut acks);
                if full(&self, &acks) {
                    break;
                }
                next = rx.try_recv();
            }
            // A sync soon after the last one: let more lines join it first.
            if !acks.is_empty() && self.failing_since.is_none() && !full(&self, &acks) {
                if let Some(wait) = last_sync.and_then(|t| SYNC_INTERVAL.checked_sub(t.elapsed())) {
                    thread::sleep(wait);
                    while let Some(op) = rx.try_recv() {
                        self.take(op, &mut acks);
                        if full(&self, &acks) {
                            break;
                        }
                    }
                }
            }
            // While writes fail, lines nobody waits for are retried once a second, not with
            // every line that arrives (each try may write megabytes only to cut them off).
            if self.failing_since.is_some()
                && acks.is_empty()
                && self.last_attempt.is_some_and(|t| t.elapsed() < RETRY_EVERY)
            {
                continue;
            }
            self.last_attempt = Some(Instant::now());
            let sync = !acks.is_empty() || self.failing_since.is_some();
            if sync {
                last_sync = Some(Instant::now());
            }
            let result = self.write(sync);
            self.report(&result);
            for a in acks.drain(..) {
                let _ = a.send(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
            }
        }
        let result = self.write(true);
        self.report(&result);
    }

    fn take(&mut self, op: Op, acks: &mut Vec<Ack>) {
        match op {
            Op::Append { line, ack, seq } => {
                let backlog = self.pending.len() + self.snapshot.as_ref().map_or(0, Vec::len);
                if self.failing_since.is_some() && backlog + line.len() > BACKLOG_MAX {
                    // The disk has refused writes for long enough to fill the backlog: drop
                    // the line (its waiter hears so) and have the owner write a snapshot.
                    self.stats.dropped_lines.fetch_add(1, Ordering::Relaxed);
                    self.stats.lost.store(true, Ordering::Relaxed);
                    self.hole.get_or_insert(seq);
                    if let Some(a) = ack {
                        let _ = a.send(Err("journal backlog is full (disk full?)".into()));
                    }
                    return;
                }
                self.pending.extend_from_slice(&line);
                self.taken = self.taken.max(seq);
                if let Some(a) = ack {
                    acks.push(a);
                }
            }
            Op::Flush(a) => acks.push(a),
            Op::Compact { contents, seq } => {
                // Everything before the snapshot is superseded by it.
                self.pending.clear();
                self.snapshot = Some(contents);
                self.taken = self.taken.max(seq);
                self.hole = None;
            }
        }
    }

    /// Write the snapshot and the pending lines; sync if asked. On failure the file is cut
    /// back to its last good length and everything stays pending.
    fn write(&mut self, sync: bool) -> io::Result<()> {
        let r = self.try_write(sync);
        if sync && r.is_ok() {
            let upto = self.hole.map_or(self.taken, |h| h - 1);
            self.stats.synced.fetch_max(upto, Ordering::Release);
        }
        let backlog = self.pending.len() + self.snapshot.as_ref().map_or(0, Vec::len);
        self.stats
            .backlog_bytes
            .store(backlog as u64, Ordering::Relaxed);
        if r.is_err() {
            self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn try_write(&mut self, sync: bool) -> io::Result<()> {
        if let Some(contents) = &self.snapshot {
            let tmp = self.path.with_extension("compact.tmp");
            let written = (|| -> io::Result<()> {
                let mut t = File::create(&tmp)?;
                t.write_all(contents)?;
                t.sync_data()
            })();
            if let Err(e) = written {
                // Give the space back: a full disk needs every byte.
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
            fs::rename(&tmp, &self.path)?;
            sync_dir(&self.path);
            self.file = OpenOptions::new()
                .append(true)
                .read(true)
                .open(&self.path)?;
            self.good_len = contents.len() as u64;
            self.snapshot = None;
        }
        if self.pending.is_empty() && !sync {
            return Ok(());
        }
        let written = (|| -> io::Result<()> {
            if !self.pending.is_empty() {
                self.file.write_all(&self.pending)?;
            }
            if sync {
                self.file.sync_data()?;
            }
            Ok(())
        })();
        match written {
            Ok(()) => {
                self.good_len += self.pending.len() as u64;
                self.pending.clear();
                Ok(())
            }
            Err(e) => {
                // Cut off whatever part of the batch reached the file: the next attempt
                // writes it again whole, so no torn line ends up in the middle.
                if let Err(t) = self.file.set_len(self.good_len) {
                    tracing::error!(path = %self.path.display(), error = %t, "cannot cut a failed journal write back");
                }
                Err(e)
            }
        }
    }

    /// Log the first failure, a reminder each minute while it lasts, and the recovery.
    fn report(&mut self, result: &io::Result<()>) {
        let backlog = self.stats.backlog_bytes.load(Ordering::Relaxed);
        match (result, self.failing_since) {
            (Err(e), None) => {
                let now = Instant::now();
                self.failing_since = Some(now);
                self.last_report = Some(now);
                tracing::error!(path = %self.path.display(), error = %e, backlog_bytes = backlog,
                    "journal write failed; nothing waiting on it is acknowledged, the lines are kept in memory and retried every second");
            }
            (Err(e), Some(since)) => {
                if self
                    .last_report
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
                {
                    self.last_report = Some(Instant::now());
                    tracing::error!(path = %self.path.display(), error = %e, backlog_bytes = backlog,
                        failing_secs = since.elapsed().as_secs(),
                        dropped_lines = self.stats.dropped_lines.load(Ordering::Relaxed),
                        "journal writes still fail");
                }
            }
            (Ok(()), Some(since)) => {
                self.failing_since = None;
                tracing::warn!(path = %self.path.display(), failing_secs = since.elapsed().as_secs(),
                    dropped_lines = self.stats.dropped_lines.load(Ordering::Relaxed),
                    "journal writes work again; the backlog is on disk");
            }
            (Ok(()), None) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(s: &str) -> Result<String, String> {
        Ok(s.to_string())
    }

    /// Records are `r<n>`; anything else is damaged.
    fn strict(s: &str) -> Result<String, String> {
        if s.starts_with('r') && s[1..].parse::<u32>().is_ok() {
            Ok(s.to_string())
        } else {
            Err(format!("not a record: {s:?}"))
        }
    }

    fn set_aside_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<(String, Vec<u8>)> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn lines_survive_reopen_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.log");
        let (j, lines) = Journal::open(&p, any).unwrap();
        assert!(lines.is_empty());
        j.append("a", false);
        j.append("b", true).wait().await.unwrap();
        j.compact(["snap".to_string()]);
        j.append("c", true).wait().await.unwrap();
        drop(j);
        let (_j, lines) = Journal::open(&p, any).unwrap();
        assert_eq!(lines, vec!["snap", "c"]);
    }

    #[tokio::test]
    async fn torn_last_line_is_set_aside_and_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.log");
        fs::write(&p, b"r1\nr2\nr3").unwrap();
        let (j, lines) = Journal::open(&p, strict).unwrap();
        assert_eq!(lines, vec!["r1", "r2"]);
        j.append("r4", true).wait().await.unwrap();
        drop(j);
        assert_eq!(fs::read_to_string(&p).unwrap(), "r1\nr2\nr4\n");
        let aside = set_aside_files(dir.path());
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert!(aside[0].0.starts_with("j.log.corrupt-"), "{}", aside[0].0);
        assert_eq!(aside[0].1, b"r3");
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join(&aside[0].0))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "owner-only: it may hold a token");
    }

    #[tokio::test]
    async fn a_damaged_last_record_and_trailing_zeros_are_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.log");
        // A complete but garbled last record, then the zeros a crash can leave in a block
        // whose size was recorded before its data.
        let mut bytes = b"r1\nr2\nr\xff3\n".to_vec();
        bytes.extend_from_slice(&[0u8; 100]);
        fs::write(&p, &bytes).unwrap();
        let (j, lines) = Journal::open(&p, strict).unwrap();
        assert_eq!(lines, vec!["r1", "r2"]);
        drop(j);
        assert_eq!(fs::read(&p).unwrap(), b"r1\nr2\n");
        let aside = set_aside_files(dir.path());
        assert_eq!(aside.len(), 1);
        assert_eq!(aside[0].1, &bytes[6..], "the whole damaged tail is kept");
        // A second recovery does not overwrite the first one's file.
        fs::write(&p, b"r1\nxx\n").unwrap();
        let (_j, lines) = Journal::open(&p, strict).unwrap();
        assert_eq!(lines, vec!["r1"]);
        let aside = set_aside_files(dir.path());
        assert_eq!(aside.len(), 2, "{aside:?}");
        assert!(aside.iter().any(|(_, b)| b == b"xx\n"));
    }

    #[test]
    fn damage_with_good_records_after_it_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.log");
        let bytes = b"r1\nr2\ngarbage\nr4\n\nr5\n";
        fs::write(&p, bytes).unwrap();
        let e = Journal::open(&p, strict).err().expect("must refuse");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let msg = e.to_string();
        assert!(msg.contains(&p.display().to_string()), "{msg}");
        assert!(msg.contains("byte 6 (line 3)"), "{msg}");
        assert!(msg.contains("not a record: \"garbage\""), "{msg}");
        assert!(msg.contains("2 good record(s) follow"), "{msg}");
        // Nothing was changed or set aside.
        assert_eq!(fs::read(&p).unwrap(), bytes);
        assert!(set_aside_files(dir.path()).is_empty());
        // The read-only reader refuses too; a damaged tail it only skips.
        assert!(read(&p, strict).is_err());
        fs::write(&p, b"r1\nr2\ngarbage").unwrap();
        assert_eq!(read(&p, strict).unwrap(), vec!["r1", "r2"]);
        assert_eq!(fs::read(&p).unwrap(), b"r1\nr2\ngarbage");
    }

    /// `flush_to` waits for a sync only while the line is not yet synced: a pending
    /// machine's boot script, whose token is long on disk, waits for nothing.
    #[tokio::test]
    async fn flush_to_waits_only_for_lines_not_yet_synced() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.log");
        fs::write(&p, b"old\n").unwrap();
        let (j, _) = Journal::open(&p, any).unwrap();
        // What the file held at open was synced then.
        assert!(j.flush_to(0).0.is_none());
        let c = j.append("token", false);
        let seq = c.seq();
        assert!(seq > 0);
        c.wait().await.unwrap();
        assert!(
            j.flush_to(seq).0.is_some(),
            "a line written without a sync is not durable yet"
        );
        j.flush_to(seq).wait().await.unwrap();
        assert!(j.flush_to(seq).0.is_none(), "synced: nothing to wait for");
        let later = j.append("event", false).seq();
        assert!(later > seq);
        assert!(j.flush_to(seq).0.is_none());
        assert!(j.flush_to(later).0.is_some());
        j.append("durable", true).wait().await.unwrap();
        assert!(j.flush_to(later).0.is_none());
    }

    /// Lines nobody waits for gather before the writer wakes, but land whole and in order
    /// with the durable ones around them.
    #[tokio::test]
    async fn lines_nobody_waits_for_land_in_order_with_durable_ones() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.log");
        let (j, _) = Journal::open(&p, any).unwrap();
        let mut want = Vec::new();
        for i in 0..3000 {
            want.push(format!("e{i}"));
            j.append(&want[i], false);
        }
        want.push("durable".into());
        j.append("durable", true).wait().await.unwrap();
        for i in 0..10 {
            want.push(format!("after{i}"));
            j.append(&want[want.len() - 1], false);
        }
        j.flush().wait().await.unwrap();
        drop(j);
        let (_j, lines) = Journal::open(&p, any).unwrap();
        assert_eq!(lines, want);
    }

    #[tokio::test]
    async fn many_concurrent_durable_appends_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.log");
        let (j, _) = Journal::open(&p, any).unwrap();
        let mut waits = Vec::new();
        for i in 0..2000 {
            waits.push(j.append(&format!("line {i}"), true));
        }
        for w in waits {
            w.wait().await.unwrap();
        }
        drop(j);
        let (_j, lines) = Journal::open(&p, any).unwrap();
        assert_eq!(lines.len(), 2000);
        assert_eq!(lines[1999], "line 1999");
    }

    fn writer_on(path: &Path, file: File, good_len: u64) -> Writer {
        Writer {
            path: path.to_path_buf(),
            file,
            good_len,
            pending: Vec::new(),
            snapshot: None,
            stats: Arc::new(Stats::default()),
            failing_since: None,
            last_report: None,
            last_attempt: None,
            taken: 0,
            hole: None,
        }
    }

    fn append(
        w: &mut Writer,
        line: &str,
        acks: &mut Vec<Ack>,
    ) -> oneshot::Receiver<Result<(), String>> {
        let (tx, rx) = oneshot::channel();
        w.take(
            Op::Append {
                line: format!("{line}\n").into_bytes(),
                ack: Some(tx),
                seq: w.taken + 1,
            },
            acks,
        );
        rx
    }

    /// A disk that refuses writes (`/dev/full` answers ENOSPC): the waiter is told, the
    /// lines stay in memory in order, and once writes work they land whole.
    #[test]
    fn a_full_disk_fails_the_commit_keeps_the_lines_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.log");
        fs::write(&p, b"r1\n").unwrap();
        let full = OpenOptions::new().append(true).open("/dev/full").unwrap();
        let mut w = writer_on(&p, full, 3);
        let mut acks = Vec::new();
        let mut rx1 = append(&mut w, "r2", &mut acks);
        let r = w.write(true);
        assert_eq!(r.as_ref().unwrap_err().raw_os_error(), Some(libc_enospc()));
        w.report(&r);
        assert!(w.failing_since.is_some());
        for a in acks.drain(..) {
            let _ = a.send(r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        }
        assert!(
            rx1.try_recv().unwrap().is_err(),
            "no success for an unwritten line"
        );
        let mut rx2 = append(&mut w, "r3", &mut acks);
        let r = w.write(true);
        assert!(r.is_err());
        assert_eq!(w.stats.write_errors.load(Ordering::Relaxed), 2);
        assert_eq!(w.stats.backlog_bytes.load(Ordering::Relaxed), 6);
        drop(acks.drain(..));
        assert!(rx2.try_recv().is_err());
        // Space is back.
        w.file = OpenOptions::new().append(true).open(&p).unwrap();
        let r = w.write(true);
        r.unwrap();
        w.report(&Ok(()));
        assert!(w.failing_since.is_none());
        assert_eq!(w.stats.backlog_bytes.load(Ordering::Relaxed), 0);
        assert_eq!(fs::read_to_string(&p).unwrap(), "r1\nr2\nr3\n");
        assert_eq!(w.good_len, 9);
    }

    /// A backlog past its bound drops new lines, says so, and asks the owner for a snapshot;
    /// a snapshot supersedes the backlog.
    #[test]
    fn a_full_backlog_drops_lines_and_asks_for_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.log");
        let full = OpenOptions::new().append(true).open("/dev/full").unwrap();
        let mut w = writer_on(&p, full, 0);
        let mut acks = Vec::new();
        let big = "x".repeat(BACKLOG_MAX - 10);
        let _rx = append(&mut w, &big, &mut acks);
        let r = w.write(true);
        w.report(&r);
        let mut rx = append(&mut w, "r2 that does not fit", &mut acks);
        assert!(rx
            .try_recv()
            .unwrap()
            .unwrap_err()
            .contains("backlog is full"));
        assert_eq!(w.stats.dropped_lines.load(Ordering::Relaxed), 1);
        assert!(w.stats.lost.load(Ordering::Relaxed));
        w.take(
            Op::Compact {
                contents: b"snap\n".to_vec(),
                seq: 99,
            },
            &mut acks,
        );
        assert!(w.pending.is_empty());
        w.file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&p)
            .unwrap();
        assert_eq!(w.stats.synced.load(Ordering::Relaxed), 0);
        w.write(true).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "snap\n");
        // The snapshot supersedes the dropped line: everything up to it is durable.
        assert_eq!(w.stats.synced.load(Ordering::Relaxed), 99);
    }

    fn libc_enospc() -> i32 {
        28
    }
}
