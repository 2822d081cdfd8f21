//! An append-only, line-oriented journal with group commit and compaction.
//!
//! Owns the durability of small records (machine lifecycle, leases): a caller appends a
//! line and, when it must be durable before answering (an ACK, a `done`), awaits the
//! commit. One writer thread batches every line that arrived while the previous `fdatasync`
//! ran, so many waiting callers share one sync. Compaction replaces the file with a
//! snapshot through write-temp-then-rename, so a crash at any point leaves either the old
//! journal or the new one, never a mix.
//!
//! It knows nothing of what the lines mean: replay hands them back to the owner.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;

use tokio::sync::oneshot;

enum Op {
    Append {
        line: Vec<u8>,
        ack: Option<oneshot::Sender<Result<(), String>>>,
    },
    Compact {
        contents: Vec<u8>,
    },
    Flush(oneshot::Sender<Result<(), String>>),
}

/// Handle to a journal's writer thread. Cheap to clone; the thread ends when the last
/// handle is dropped, after writing what it was given.
#[derive(Clone)]
pub(crate) struct Journal {
    tx: mpsc::Sender<Op>,
    path: PathBuf,
}

/// A pending commit: await it for durability.
pub(crate) struct Commit(Option<oneshot::Receiver<Result<(), String>>>);

impl Commit {
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

impl Journal {
    /// Open (creating) the journal at `path`, returning the handle and every complete line
    /// already in it. A torn last line (a crash mid-write) is dropped and truncated away.
    pub(crate) fn open(path: &Path) -> io::Result<(Journal, Vec<String>)> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut lines = Vec::new();
        let mut good_len: u64 = 0;
        if let Ok(f) = File::open(path) {
            let mut r = BufReader::new(f);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                let n = r.read_until(b'\n', &mut buf)?;
                if n == 0 {
                    break;
                }
                if buf.last() != Some(&b'\n') {
                    tracing::warn!(path = %path.display(), "journal ends in a torn line; dropping it");
                    break;
                }
                good_len += n as u64;
                match std::str::from_utf8(&buf[..n - 1]) {
                    Ok(s) if !s.trim().is_empty() => lines.push(s.to_string()),
                    Ok(_) => {}
                    Err(_) => {
                        tracing::warn!(path = %path.display(), "journal line is not UTF-8; skipping it")
                    }
                }
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)?;
        if file.metadata()?.len() != good_len {
            file.set_len(good_len)?;
        }
        let (tx, rx) = mpsc::channel();
        let p = path.to_path_buf();
        thread::Builder::new()
            .name("journal".into())
            .spawn(move || writer(p, file, rx))?;
        Ok((
            Journal {
                tx,
                path: path.to_path_buf(),
            },
            lines,
        ))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Append one line (without its newline). With `durable`, the returned commit resolves
    /// once the line is synced; without, it resolves at once (the line is still written in
    /// order, just not waited for).
    pub(crate) fn append(&self, line: &str, durable: bool) -> Commit {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        if durable {
            // If the writer is gone the sender is dropped with the op, so `wait` reports
            // "journal writer stopped".
            let (ack, rx) = oneshot::channel();
            let _ = self.tx.send(Op::Append {
                line: bytes,
                ack: Some(ack),
            });
            Commit(Some(rx))
        } else {
            let _ = self.tx.send(Op::Append {
                line: bytes,
                ack: None,
            });
            Commit(None)
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
        let _ = self.tx.send(Op::Compact { contents });
    }

    /// Resolves once everything sent so far is synced.
    pub(crate) fn flush(&self) -> Commit {
        let (ack, rx) = oneshot::channel();
        let _ = self.tx.send(Op::Flush(ack));
        Commit(Some(rx))
    }
}

fn writer(path: PathBuf, mut file: File, rx: mpsc::Receiver<Op>) {
    let mut batch: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut acks: Vec<oneshot::Sender<Result<(), String>>> = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        let mut compact: Option<Vec<u8>> = None;
        // Take everything already queued: one write and one sync for the whole batch.
        while let Some(op) = next.take() {
            match op {
                Op::Append { line, ack } => {
                    batch.extend_from_slice(&line);
                    if let Some(a) = ack {
                        acks.push(a);
                    }
                }
                Op::Flush(a) => acks.push(a),
                Op::Compact { contents } => {
                    // Everything before the snapshot is superseded by it.
                    batch.clear();
                    compact = Some(contents);
                }
            }
            if acks.len() >= 4096 || batch.len() >= 4 << 20 {
                break;
            }
            next = rx.try_recv().ok();
        }
        let result = (|| -> io::Result<()> {
            if let Some(contents) = compact.take() {
                let tmp = path.with_extension("compact.tmp");
                {
                    let mut t = File::create(&tmp)?;
                    t.write_all(&contents)?;
                    t.sync_data()?;
                }
                fs::rename(&tmp, &path)?;
                if let Some(dir) = path.parent() {
                    if let Ok(d) = File::open(dir) {
                        let _ = d.sync_all();
                    }
                }
                file = OpenOptions::new().append(true).read(true).open(&path)?;
            }
            if !batch.is_empty() {
                file.write_all(&batch)?;
            }
            if !acks.is_empty() {
                file.sync_data()?;
            }
            Ok(())
        })();
        batch.clear();
        if let Err(e) = &result {
            tracing::error!(path = %path.display(), error = %e, "journal write failed");
        }
        for a in acks.drain(..) {
            let _ = a.send(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        }
    }
    let _ = file.sync_data();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_survive_reopen_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.log");
        let (j, lines) = Journal::open(&p).unwrap();
        assert!(lines.is_empty());
        j.append("a", false);
        j.append("b", true).wait().await.unwrap();
        j.compact(["snap".to_string()]);
        j.append("c", true).wait().await.unwrap();
        drop(j);
        let (_j, lines) = Journal::open(&p).unwrap();
        assert_eq!(lines, vec!["snap", "c"]);
    }

    #[tokio::test]
    async fn torn_last_line_is_dropped_and_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.log");
        fs::write(&p, b"one\ntwo\nthr").unwrap();
        let (j, lines) = Journal::open(&p).unwrap();
        assert_eq!(lines, vec!["one", "two"]);
        j.append("three", true).wait().await.unwrap();
        drop(j);
        assert_eq!(fs::read_to_string(&p).unwrap(), "one\ntwo\nthree\n");
    }

    #[tokio::test]
    async fn many_concurrent_durable_appends_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.log");
        let (j, _) = Journal::open(&p).unwrap();
        let mut waits = Vec::new();
        for i in 0..2000 {
            waits.push(j.append(&format!("line {i}"), true));
        }
        for w in waits {
            w.wait().await.unwrap();
        }
        drop(j);
        let (_j, lines) = Journal::open(&p).unwrap();
        assert_eq!(lines.len(), 2000);
        assert_eq!(lines[1999], "line 1999");
    }
}
