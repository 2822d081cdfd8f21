//! What happened to each machine: its lifecycle, its install token, and its event history.
//!
//! Owns the state directory's `machines.journal`. Lifecycle changes that a machine's next
//! boot depends on (armed with a token, installed, failed, re-armed) are durable before the
//! caller answers; events are written in order but not waited for. A restart replays the
//! journal, so nothing acknowledged is lost. The inventory (intent) is not stored here: a
//! listed machine without a record is simply `pending`.
//!
//! Tokens live until `done` or a re-arm: no expiry can strand a long install. A machine
//! key, issued with each install and written onto the installed system, lets that system
//! report afterwards (booted, Puppet's outcome); it is not the install token, which dies
//! at `done`.
//!
//! After `installed` come the states the installed system reports: `booted` (it phoned
//! home), then `configured` or `config-failed` (Puppet's outcome, on every run).
//! `stalled` is never stored: it is how an installed machine that has not phoned home
//! within the configured time looks (see [`effective_at`]).
//!
//! With `store.postgres` the lines go to a database several servers share instead of the
//! journal, and this store's map becomes a mirror the others' changes are read into (see
//! [`pg`]); the rest of this module does not change.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::journal::{Commit, Journal, JournalStats};
use crate::mac::MacAddr;
use crate::pg::{PgConfig, PgError};

mod pg;

/// Events kept per machine (older ones are dropped, oldest first).
pub(crate) const EVENTS_KEPT: usize = 200;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Lifecycle {
    /// Not in the inventory and not seen.
    Unknown,
    /// Not in the inventory, but it netbooted and told us what it is.
    Discovered,
    /// In the inventory; its next netboot installs it.
    Pending,
    /// Fetched its install script; the install is running.
    Installing,
    /// Reported `done`: boots from its disk until re-armed.
    Installed,
    /// Reported `failed` (or its template failed): not reinstalled until re-armed.
    Failed,
    /// The installed system booted and phoned home.
    Booted,
    /// Puppet applied the machine's role (its last run had no failures).
    Configured,
    /// Puppet ran and failed (its errors are the machine's events).
    #[serde(rename = "config-failed")]
    ConfigFailed,
    /// Installed, but the system never phoned home in time (computed, never stored).
    Stalled,
}

impl Lifecycle {
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            Lifecycle::Unknown => "unknown",
            Lifecycle::Discovered => "discovered",
            Lifecycle::Pending => "pending",
            Lifecycle::Installing => "installing",
            Lifecycle::Installed => "installed",
            Lifecycle::Failed => "failed",
            Lifecycle::Booted => "booted",
            Lifecycle::Configured => "configured",
            Lifecycle::ConfigFailed => "config-failed",
            Lifecycle::Stalled => "stalled",
        }
    }

    /// Installed on its disk (whatever the installed system reported since).
    pub(crate) fn on_disk(&self) -> bool {
        matches!(
            self,
            Lifecycle::Installed
                | Lifecycle::Booted
                | Lifecycle::Configured
                | Lifecycle::ConfigFailed
                | Lifecycle::Stalled
        )
    }
}

/// One configuration-management run, as the installed system reported it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ConfigRun {
    /// When it was reported (ms since the epoch).
    pub(crate) at: u64,
    /// Puppet's exit code (`--detailed-exitcodes`: 0 no change, 2 changes, 4/6 failures).
    pub(crate) exit: i32,
    pub(crate) changed: u64,
    pub(crate) failed: u64,
    pub(crate) total: u64,
    /// Puppet's own run time.
    pub(crate) millis: u64,
    /// The Puppet bundle (sha256) the run applied, or the server it asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) bundle: Option<String>,
    /// The OS image (sha256) the machine was installed from, as it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) os: Option<String>,
    /// sha256 of its installed package list (`dpkg-query -W`, sorted): two machines with
    /// the same digest run the same packages at the same versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) packages: Option<String>,
}

impl ConfigRun {
    pub(crate) fn succeeded(&self) -> bool {
        self.failed == 0 && matches!(self.exit, 0 | 2)
    }
}

/// When each phase of the last install began (ms since the epoch), for its timeline.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Phases {
    /// The boot script sent the machine to install (firmware and iPXE are done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) netboot: Option<u64>,
    /// The stem cell fetched its install script.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) stemcell: Option<u64>,
    /// The install began streaming the OS image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) image: Option<u64>,
    /// `done`: the disk is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) installed: Option<u64>,
    /// The installed system phoned home.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) booted: Option<u64>,
    /// The first configuration run after the install ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) configured: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Event {
    /// Milliseconds since the Unix epoch.
    pub(crate) at: u64,
    /// dhcp, tftp, boot, file, install, log, done, failed, rearm, discover, error
    pub(crate) kind: String,
    pub(crate) message: String,
}

/// What a machine's own packets said about it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Facts {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) arch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) vendor_class: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) uuid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ip: Option<String>,
    /// The NIC (MAC) it last netbooted from: one of its `interfaces:`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) boot_nic: Option<String>,
    /// What the stem cell reported in discovery (cpus, memory, disks, nics, DMI…).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub(crate) hardware: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) mac: MacAddr,
    pub(crate) state: Lifecycle,
    /// The install token while armed; `None` once installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) token: Option<String>,
    /// The last install's token after `done` or `failed`: it authorises nothing, but a
    /// repeat of the same final callback (its answer was lost) is answered again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) spent_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<String>,
    #[serde(default)]
    pub(crate) first_seen: u64,
    #[serde(default)]
    pub(crate) last_seen: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) install_started: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) installed_at: Option<u64>,
    /// What the machine was installed from (role, template, variables, OS image), taken
    /// when its install script was served, to tell drift.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) installed_from: Option<String>,
    /// The OS image (sha256) its install script named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) os_image: Option<String>,
    /// The installed system's credential for reports; a new one with every install.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) machine_key: Option<String>,
    #[serde(default)]
    pub(crate) phases: Phases,
    /// Boots into the installer (its kernel fetched) since the machine was armed, without
    /// `done` or `failed`: past `installer_boots` the install is stopped.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) installer_boots: u32,
    /// The last configuration run, and the last successful one (for drift).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) last_run: Option<ConfigRun>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) last_good_run: Option<ConfigRun>,
    #[serde(default)]
    pub(crate) facts: Facts,
}

impl Record {
    fn new(mac: MacAddr, state: Lifecycle, now: u64) -> Record {
        Record {
            mac,
            state,
            token: None,
            spent_token: None,
            reason: None,
            first_seen: now,
            last_seen: now,
            install_started: None,
            installed_at: None,
            installed_from: None,
            os_image: None,
            machine_key: None,
            phases: Phases::default(),
            installer_boots: 0,
            last_run: None,
            last_good_run: None,
            facts: Facts::default(),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Line {
    Record(Box<Record>),
    Event {
        mac: MacAddr,
        event: Event,
    },
    /// An unlisted machine's record and events were dropped to keep within the bound.
    Forget {
        mac: MacAddr,
    },
}

/// Unlisted machines remembered at most (records, or events of machines with no record):
/// a flood of invented MACs must not grow memory and the journal without bound. The
/// oldest-remembered unlisted machine is forgotten first; listed machines never are.
pub(crate) const UNLISTED_KEPT: usize = 10_000;

struct Entry {
    record: Option<Record>,
    events: VecDeque<Event>,
    /// The journal's number for the last line of `record` (`Journal::flush_to`).
    seq: u64,
}

struct Inner {
    machines: HashMap<MacAddr, Entry>,
    /// Entries created for unlisted machines, oldest first (see [`UNLISTED_KEPT`]).
    unlisted: VecDeque<MacAddr>,
    lines_since_compact: usize,
    /// Live lines (records + kept events) when last counted; counting walks every machine,
    /// so it is redone only when the journal has outgrown this estimate.
    live_estimate: usize,
}

/// Why a lifecycle change was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StateError {
    #[error("wrong or missing install token")]
    BadToken,
    #[error("wrong or missing machine key")]
    BadKey,
    #[error("{0}")]
    NotNow(&'static str),
    #[error("machine state not stored: {0}")]
    Io(#[from] std::io::Error),
}

/// A machine changed (an event was added or its record changed): for live pages.
#[derive(Clone, Debug)]
pub(crate) struct Change {
    pub(crate) mac: MacAddr,
}

/// Where the lines go: the state directory's journal, or a database several servers
/// share (see [`pg`]).
enum Sink {
    Journal(Journal),
    Pg(pg::PgSink),
}

impl Sink {
    /// Write a line (under the store's lock, so the order of lines is the order of
    /// changes); with `durable`, the commit resolves once it is stored.
    fn append(&self, line: Line, durable: bool) -> Commit {
        match self {
            Sink::Journal(j) => {
                j.append(&serde_json::to_string(&line).unwrap_or_default(), durable)
            }
            Sink::Pg(p) => p.append(line, durable),
        }
    }

    fn flush(&self) -> Commit {
        match self {
            Sink::Journal(j) => j.flush(),
            Sink::Pg(p) => p.flush(),
        }
    }

    /// Resolves once the line numbered `seq` (a [`Commit::seq`]) is stored: at once if the
    /// journal synced it already; the database writer has no numbers, so it flushes.
    fn flush_to(&self, seq: u64) -> Commit {
        match self {
            Sink::Journal(j) => j.flush_to(seq),
            Sink::Pg(p) => p.flush(),
        }
    }

    fn stats(&self) -> JournalStats {
        match self {
            Sink::Journal(j) => j.stats(),
            Sink::Pg(p) => p.stats(),
        }
    }

    /// Re-read a machine from where other servers write it too (the journal is this
    /// server's alone: nothing to do).
    async fn refresh(&self, mac: MacAddr) {
        if let Sink::Pg(p) = self {
            p.refresh(mac).await;
        }
    }
}

pub(crate) struct Store {
    /// Keys discovery tokens: a discovering stem cell's report must carry the token its
    /// boot script named, so nobody can invent machines with a POST.
    discovery_key: [u8; 32],
    inner: Arc<Mutex<Inner>>,
    sink: Sink,
    changes: tokio::sync::broadcast::Sender<Change>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A fresh random install token (128 bits, hex).
pub(crate) fn new_token() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the OS random source failed");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Compare secrets without an early exit on the first differing byte.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One journal line, parsed (the reason is what [`crate::journal`] reports if it is not).
fn parse_line(line: &str) -> Result<Line, String> {
    serde_json::from_str::<Line>(line).map_err(|e| format!("not a machine record: {e}"))
}

/// Replay journal records into entries.
fn replay(lines: Vec<Line>) -> HashMap<MacAddr, Entry> {
    let mut machines: HashMap<MacAddr, Entry> = HashMap::new();
    for l in lines {
        match l {
            Line::Record(r) => {
                let r = *r;
                let mac = r.mac;
                machines
                    .entry(mac)
                    .or_insert_with(|| Entry {
                        record: None,
                        events: VecDeque::new(),
                        seq: 0,
                    })
                    .record = Some(r);
            }
            Line::Event { mac, event } => {
                let e = machines.entry(mac).or_insert_with(|| Entry {
                    record: None,
                    events: VecDeque::new(),
                    seq: 0,
                });
                if e.events.len() >= EVENTS_KEPT {
                    e.events.pop_front();
                }
                e.events.push_back(event);
            }
            Line::Forget { mac } => {
                machines.remove(&mac);
            }
        }
    }
    machines
}

/// The state directory's discovery key, made on first use (owner-only), so tokens stay
/// valid across restarts.
fn discovery_key(state_dir: &Path) -> std::io::Result<[u8; 32]> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = state_dir.join("discovery.key");
    match std::fs::read(&path) {
        Ok(b) if b.len() == 32 => {
            let mut k = [0u8; 32];
            k.copy_from_slice(&b);
            return Ok(k);
        }
        Ok(_) => {
            tracing::warn!(path = %path.display(), "discovery key is damaged; making a new one");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut k = [0u8; 32];
    getrandom::fill(&mut k).map_err(|e| std::io::Error::other(e.to_string()))?;
    std::fs::create_dir_all(state_dir)?;
    let tmp = state_dir.join("discovery.key.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&k)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(k)
}

/// The records in a state directory, read without taking it over (for `render` beside a
/// running server).
pub(crate) fn read_records(state_dir: &Path) -> std::io::Result<HashMap<MacAddr, Record>> {
    let path = state_dir.join("machines.journal");
    let lines = crate::journal::read(&path, parse_line)?;
    Ok(replay(lines)
        .into_iter()
        .filter_map(|(m, e)| e.record.map(|r| (m, r)))
        .collect())
}

impl Inner {
    fn new(machines: HashMap<MacAddr, Entry>, lines: usize) -> Inner {
        // The bound on unlisted machines holds across restarts: the remembered ones queue
        // up again, oldest seen first.
        let mut seen: Vec<(u64, MacAddr)> = machines
            .iter()
            .filter(|(_, e)| {
                e.record
                    .as_ref()
                    .is_none_or(|r| matches!(r.state, Lifecycle::Discovered | Lifecycle::Unknown))
            })
            .map(|(m, e)| (e.record.as_ref().map_or(0, |r| r.last_seen), *m))
            .collect();
        seen.sort_unstable();
        Inner {
            machines,
            unlisted: seen.into_iter().map(|(_, m)| m).collect(),
            lines_since_compact: lines,
            live_estimate: 0,
        }
    }
}

impl Store {
    pub(crate) fn open(state_dir: &Path) -> std::io::Result<Store> {
        let (journal, lines) = Journal::open(&state_dir.join("machines.journal"), parse_line)?;
        let n = lines.len();
        let machines = replay(lines);
        let store = Store {
            discovery_key: discovery_key(state_dir)?,
            inner: Arc::new(Mutex::new(Inner::new(machines, n))),
            sink: Sink::Journal(journal),
            changes: tokio::sync::broadcast::channel(4096).0,
        };
        store.maybe_compact(&mut store.lock(), true);
        Ok(store)
    }

    /// The store in a PostgreSQL database that several servers share (`store.postgres`):
    /// connects, migrates, and loads every machine. The discovery key is the database's
    /// (made by the first server), so a discovery token from any server is good at all.
    pub(crate) async fn open_pg(cfg: &PgConfig) -> Result<Store, PgError> {
        let changes = tokio::sync::broadcast::channel(4096).0;
        let mut shared = None;
        let (sink, key) = pg::PgSink::open(cfg, |machines| {
            let inner = Arc::new(Mutex::new(Inner::new(machines, 0)));
            shared = Some(inner.clone());
            pg::Mirror {
                inner,
                changes: changes.clone(),
            }
        })
        .await?;
        let inner = shared.expect("the mirror is made by open");
        Ok(Store {
            discovery_key: key,
            inner,
            sink: Sink::Pg(sink),
            changes,
        })
    }

    /// The token a discovering stem cell for `mac` must show (stateless: a keyed hash).
    pub(crate) fn discovery_token(&self, mac: &MacAddr) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(self.discovery_key);
        h.update(mac.0);
        h.finalize()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    pub(crate) fn check_discovery_token(&self, mac: &MacAddr, token: &str) -> bool {
        constant_time_eq(self.discovery_token(mac).as_bytes(), token.as_bytes())
    }

    /// Wait until every line written so far (events too) is on disk (shutdown).
    pub(crate) async fn flush(&self) -> std::io::Result<()> {
        self.sink.flush().wait().await
    }

    /// The journal's (or the database writer's) errors and backlog (`/metrics`).
    pub(crate) fn journal_stats(&self) -> JournalStats {
        self.sink.stats()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn maybe_compact(&self, inner: &mut Inner, force: bool) {
        let journal = match &self.sink {
            Sink::Journal(j) => j,
            Sink::Pg(p) => {
                // A database keeps no history to compact; records dropped while it was
                // away are written again whole (events dropped are gone).
                if p.is_up() && p.take_lost() {
                    for e in inner.machines.values() {
                        if let Some(r) = &e.record {
                            p.append(Line::Record(Box::new(r.clone())), false);
                        }
                    }
                }
                return;
            }
        };
        // Lines the journal had to drop (a long full disk) are superseded by a snapshot,
        // whatever the sizes say.
        let lost = journal.take_lost();
        let force = force || lost;
        // Cheap test first: most events end here without touching the machine map.
        if !force && inner.lines_since_compact <= 4 * inner.live_estimate + 10_000 {
            return;
        }
        let live: usize = inner
            .machines
            .values()
            .map(|e| e.events.len() + usize::from(e.record.is_some()))
            .sum();
        inner.live_estimate = live;
        if !force && inner.lines_since_compact <= 4 * live + 10_000 {
            return;
        }
        if force && !lost && inner.lines_since_compact <= 2 * live + 1000 {
            return;
        }
        let mut lines = Vec::with_capacity(live);
        for (mac, e) in &inner.machines {
            if let Some(r) = &e.record {
                lines.push(
                    serde_json::to_string(&Line::Record(Box::new(r.clone()))).unwrap_or_default(),
                );
            }
            for ev in &e.events {
                lines.push(
                    serde_json::to_string(&Line::Event {
                        mac: *mac,
                        event: ev.clone(),
                    })
                    .unwrap_or_default(),
                );
            }
        }
        inner.lines_since_compact = lines.len();
        journal.compact(lines);
    }

    /// Write a record (under the lock, so journal order is change order).
    fn put(&self, inner: &mut Inner, r: Record, durable: bool) -> Commit {
        let line = Line::Record(Box::new(r.clone()));
        let mac = r.mac;
        let c = self.sink.append(line, durable);
        let e = inner.machines.entry(mac).or_insert_with(|| Entry {
            record: None,
            events: VecDeque::new(),
            seq: 0,
        });
        e.record = Some(r);
        e.seq = c.seq();
        inner.lines_since_compact += 1;
        self.maybe_compact(inner, false);
        let _ = self.changes.send(Change { mac });
        c
    }

    /// Every change from now on (lagging receivers skip ahead; pages then re-read).
    pub(crate) fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    pub(crate) fn record(&self, mac: &MacAddr) -> Option<Record> {
        self.lock().machines.get(mac).and_then(|e| e.record.clone())
    }

    pub(crate) fn records(&self) -> Vec<Record> {
        self.lock()
            .machines
            .values()
            .filter_map(|e| e.record.clone())
            .collect()
    }

    pub(crate) fn events(&self, mac: &MacAddr) -> Vec<Event> {
        self.lock()
            .machines
            .get(mac)
            .map(|e| e.events.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn last_event(&self, mac: &MacAddr) -> Option<Event> {
        self.lock()
            .machines
            .get(mac)
            .and_then(|e| e.events.back().cloned())
    }

    /// Append an event to a machine's history (not waited for).
    pub(crate) fn event(&self, mac: MacAddr, kind: &str, message: impl Into<String>) {
        let event = Event {
            at: now_ms(),
            kind: kind.to_string(),
            message: message.into(),
        };
        let line = Line::Event {
            mac,
            event: event.clone(),
        };
        let mut inner = self.lock();
        if !inner.machines.contains_key(&mac) {
            self.remember_unlisted(&mut inner, mac);
        }
        let e = inner.machines.entry(mac).or_insert_with(|| Entry {
            record: None,
            events: VecDeque::new(),
            seq: 0,
        });
        if e.events.len() >= EVENTS_KEPT {
            e.events.pop_front();
        }
        e.events.push_back(event.clone());
        inner.lines_since_compact += 1;
        self.sink.append(line, false);
        self.maybe_compact(&mut inner, false);
        drop(inner);
        let _ = self.changes.send(Change { mac });
    }

    /// A new entry for a machine that may be unlisted: queue it, and forget the oldest
    /// unlisted machine beyond the bound (one with an install history is kept).
    fn remember_unlisted(&self, inner: &mut Inner, mac: MacAddr) {
        inner.unlisted.push_back(mac);
        while inner.unlisted.len() > UNLISTED_KEPT {
            let Some(old) = inner.unlisted.pop_front() else {
                break;
            };
            let forgettable = inner.machines.get(&old).is_some_and(|e| match &e.record {
                None => true,
                Some(r) => {
                    matches!(r.state, Lifecycle::Discovered | Lifecycle::Unknown)
                        && r.installed_at.is_none()
                        && r.token.is_none()
                }
            });
            if forgettable {
                inner.machines.remove(&old);
                inner.lines_since_compact += 1;
                self.sink.append(Line::Forget { mac: old }, false);
            }
        }
    }

    /// Remember what a machine's packets said, and when it was last seen. Unlisted
    /// machines become `discovered`.
    pub(crate) fn observe(&self, mac: MacAddr, listed: bool, facts: Facts) {
        let now = now_ms();
        let mut inner = self.lock();
        if !listed && !inner.machines.contains_key(&mac) {
            self.remember_unlisted(&mut inner, mac);
        }
        // Seen again within a minute with nothing new (every boot script of a known
        // machine): only `last_seen` moves, without copying the record three times.
        if let Some(r) = inner.machines.get_mut(&mac).and_then(|e| e.record.as_mut()) {
            let same = |new: &Option<String>, old: &Option<String>| new.is_none() || new == old;
            if (listed || r.state != Lifecycle::Unknown)
                && (facts.hardware.is_empty() || facts.hardware == r.facts.hardware)
                && same(&facts.arch, &r.facts.arch)
                && same(&facts.vendor_class, &r.facts.vendor_class)
                && same(&facts.uuid, &r.facts.uuid)
                && same(&facts.ip, &r.facts.ip)
                && same(&facts.boot_nic, &r.facts.boot_nic)
                && now.saturating_sub(r.last_seen) <= 60_000
            {
                r.last_seen = now;
                return;
            }
        }
        let mut r = inner
            .machines
            .get(&mac)
            .and_then(|e| e.record.clone())
            .unwrap_or_else(|| {
                Record::new(
                    mac,
                    if listed {
                        Lifecycle::Pending
                    } else {
                        Lifecycle::Discovered
                    },
                    now,
                )
            });
        let before = r.clone();
        r.last_seen = now;
        if !listed && r.state == Lifecycle::Unknown {
            r.state = Lifecycle::Discovered;
        }
        if !facts.hardware.is_empty() {
            r.facts.hardware = facts.hardware;
        }
        for (slot, new) in [
            (&mut r.facts.arch, facts.arch),
            (&mut r.facts.vendor_class, facts.vendor_class),
            (&mut r.facts.uuid, facts.uuid),
            (&mut r.facts.ip, facts.ip),
            (&mut r.facts.boot_nic, facts.boot_nic),
        ] {
            if new.is_some() {
                *slot = new;
            }
        }
        // Seeing a machine again within a few seconds changes nothing worth a journal line.
        let changed = Record {
            last_seen: before.last_seen,
            ..r.clone()
        } != before;
        if changed || now.saturating_sub(before.last_seen) > 60_000 {
            self.put(&mut inner, r, false);
        } else if let Some(e) = inner.machines.get_mut(&mac) {
            e.record = Some(r);
        }
    }

    /// The install token of a listed machine that is due to install, creating (durably)
    /// one if it has none yet.
    pub(crate) async fn arm(&self, mac: MacAddr) -> Result<String, StateError> {
        // Another server sharing the database may have armed it already: its token is
        // the one to hand out, not a new one.
        let armed = self.record(&mac).is_some_and(|r| {
            r.token.is_some() && matches!(r.state, Lifecycle::Pending | Lifecycle::Installing)
        });
        if !armed {
            self.sink.refresh(mac).await;
        }
        let (token, commit) = 'arm: {
            let mut inner = self.lock();
            let now = now_ms();
            let mut r = inner
                .machines
                .get(&mac)
                .and_then(|e| e.record.clone())
                .unwrap_or_else(|| Record::new(mac, Lifecycle::Pending, now));
            if let (Some(t), Lifecycle::Pending | Lifecycle::Installing) = (&r.token, r.state) {
                let t = t.clone();
                // A re-armed machine already has its token: its first netboot since still
                // starts the timeline (the re-arm cleared it), or the page and the API
                // would show the reinstall without its firmware phase.
                if r.state == Lifecycle::Pending && r.phases.netboot.is_none() {
                    r.phases.netboot = Some(now);
                    self.put(&mut inner, r, false);
                }
                // The token may still be on its way to disk (another request made it, or
                // its write failed on a full disk): it is handed out only once durable.
                // Once its line is synced there is nothing to wait for (every boot script
                // of a pending machine used to wait for a sync of the events since).
                let seq = inner.machines.get(&mac).map_or(u64::MAX, |e| e.seq);
                break 'arm (t, self.sink.flush_to(seq));
            }
            if matches!(r.state, Lifecycle::Unknown | Lifecycle::Discovered) {
                r.state = Lifecycle::Pending;
            }
            let t = new_token();
            r.token = Some(t.clone());
            r.spent_token = None;
            r.machine_key = Some(new_token());
            r.installer_boots = 0;
            r.phases = Phases {
                netboot: Some(now),
                ..Phases::default()
            };
            let c = self.put(&mut inner, r, true);
            (t, c)
        };
        commit.wait().await?;
        Ok(token)
    }

    /// An armed machine fetched its installer's kernel (a whole-file GET): one more boot into
    /// the installer. Within `limit` boots this says `true` (serve it). The boot after
    /// `limit` without `done` or `failed` stops the install: the machine is failed with the
    /// reason (durably), its token dies, and its boot script waits for a re-arm; `false`.
    /// A machine that is not armed (discovery, installed) is not counted.
    pub(crate) async fn installer_booted(
        &self,
        mac: MacAddr,
        limit: u32,
    ) -> Result<bool, StateError> {
        let (allowed, commit) = {
            let mut inner = self.lock();
            let Some(mut r) = inner.machines.get(&mac).and_then(|e| e.record.clone()) else {
                return Ok(true);
            };
            if r.token.is_none() || !matches!(r.state, Lifecycle::Pending | Lifecycle::Installing) {
                return Ok(true);
            }
            r.installer_boots = r.installer_boots.saturating_add(1);
            if r.installer_boots <= limit {
                self.put(&mut inner, r, false);
                return Ok(true);
            }
            let reason = format!(
                "the installer was booted {limit} times since the machine was armed and never \
                 reported done or failed: stopped, so that it cannot reinstall forever (does \
                 its recipe post done_url at its end?); re-arm it to try again"
            );
            r.state = Lifecycle::Failed;
            r.reason = Some(reason.clone());
            if let Some(t) = r.token.take() {
                r.spent_token = Some(t);
            }
            let c = self.put(&mut inner, r, true);
            drop(inner);
            self.event(mac, "failed", reason);
            (false, c)
        };
        commit.wait().await?;
        Ok(allowed)
    }

    /// As [`Store::check_token`], and a token that misses is looked up once more in the
    /// database other servers share before it is refused: another server may have armed
    /// the machine, and its announcement not have arrived yet. (The journal: no second
    /// look.)
    pub(crate) async fn check_token_fresh(&self, mac: &MacAddr, token: &str) -> bool {
        if self.check_token(mac, token) {
            return true;
        }
        if token.is_empty() {
            return false;
        }
        self.sink.refresh(*mac).await;
        self.check_token(mac, token)
    }

    /// As [`Store::knows_token`], with the second look of [`Store::check_token_fresh`].
    pub(crate) async fn knows_token_fresh(&self, mac: &MacAddr, token: &str) -> bool {
        if self.knows_token(mac, token) {
            return true;
        }
        if token.is_empty() {
            return false;
        }
        self.sink.refresh(*mac).await;
        self.knows_token(mac, token)
    }

    /// As [`Store::check_key`], with the second look of [`Store::check_token_fresh`].
    pub(crate) async fn check_key_fresh(&self, mac: &MacAddr, key: &str) -> bool {
        if self.check_key(mac, key) {
            return true;
        }
        if key.is_empty() {
            return false;
        }
        self.sink.refresh(*mac).await;
        self.check_key(mac, key)
    }

    /// Whether `token` is this machine's current install token.
    pub(crate) fn check_token(&self, mac: &MacAddr, token: &str) -> bool {
        match self.record(mac).and_then(|r| r.token) {
            Some(t) => constant_time_eq(t.as_bytes(), token.as_bytes()),
            None => false,
        }
    }

    /// Whether `token` is this machine's current install token or its spent one (the
    /// callbacks' address check applies to both; neither says what the token may do).
    pub(crate) fn knows_token(&self, mac: &MacAddr, token: &str) -> bool {
        self.record(mac).is_some_and(|r| {
            [r.token.as_deref(), r.spent_token.as_deref()]
                .into_iter()
                .flatten()
                .any(|t| constant_time_eq(t.as_bytes(), token.as_bytes()))
        })
    }

    async fn transition(
        &self,
        mac: MacAddr,
        token: Option<&str>,
        f: impl FnOnce(&mut Record, u64),
    ) -> Result<Record, StateError> {
        // An operator's change, or a token this server has not seen: start from the
        // shared database's copy (another server may have changed the machine).
        if !token.is_some_and(|t| self.check_token(&mac, t)) {
            self.sink.refresh(mac).await;
        }
        let (r, commit) = {
            let mut inner = self.lock();
            let now = now_ms();
            let mut r = inner
                .machines
                .get(&mac)
                .and_then(|e| e.record.clone())
                .unwrap_or_else(|| Record::new(mac, Lifecycle::Pending, now));
            if let Some(token) = token {
                match &r.token {
                    Some(t) if constant_time_eq(t.as_bytes(), token.as_bytes()) => {}
                    _ => return Err(StateError::BadToken),
                }
            }
            f(&mut r, now);
            let c = self.put(&mut inner, r.clone(), true);
            (r, c)
        };
        commit.wait().await?;
        Ok(r)
    }

    /// The machine fetched its install script, rendered from `installed_from` (the drift
    /// baseline is what was served, not what the inventory says when `done` arrives).
    pub(crate) async fn install_started(
        &self,
        mac: MacAddr,
        token: &str,
        installed_from: String,
        os_image: Option<String>,
    ) -> Result<Record, StateError> {
        self.transition(mac, Some(token), |r, now| {
            r.state = Lifecycle::Installing;
            r.install_started = Some(now);
            r.installed_from = Some(installed_from);
            r.os_image = os_image;
            r.phases.stemcell = Some(now);
            r.phases.image = None;
            r.reason = None;
            if r.machine_key.is_none() {
                r.machine_key = Some(new_token());
            }
        })
        .await
    }

    /// The install began streaming its OS image (a phase of its timeline; not durable).
    pub(crate) fn image_started(&self, mac: MacAddr) {
        let mut inner = self.lock();
        let Some(mut r) = inner.machines.get(&mac).and_then(|e| e.record.clone()) else {
            return;
        };
        if r.state == Lifecycle::Installing && r.phases.image.is_none() {
            r.phases.image = Some(now_ms());
            self.put(&mut inner, r, false);
        }
    }

    /// Whether `key` is this machine's current machine key.
    pub(crate) fn check_key(&self, mac: &MacAddr, key: &str) -> bool {
        match self.record(mac).and_then(|r| r.machine_key) {
            Some(k) => constant_time_eq(k.as_bytes(), key.as_bytes()),
            None => false,
        }
    }

    /// The installed system phoned home (at every boot).
    pub(crate) async fn booted(&self, mac: MacAddr, key: &str) -> Result<Record, StateError> {
        self.reported(mac, key, |r, now| {
            if r.phases.booted.is_none() {
                r.phases.booted = Some(now);
            }
            if r.state == Lifecycle::Installed {
                r.state = Lifecycle::Booted;
            }
        })
        .await
    }

    /// A configuration run's outcome.
    pub(crate) async fn config_run(
        &self,
        mac: MacAddr,
        key: &str,
        run: ConfigRun,
    ) -> Result<Record, StateError> {
        self.reported(mac, key, |r, now| {
            if r.phases.booted.is_none() {
                r.phases.booted = Some(now);
            }
            if r.phases.configured.is_none() {
                r.phases.configured = Some(now);
            }
            r.state = if run.succeeded() {
                r.last_good_run = Some(run.clone());
                Lifecycle::Configured
            } else {
                Lifecycle::ConfigFailed
            };
            r.last_run = Some(run);
        })
        .await
    }

    /// A report from the installed system: checked against the machine key, and only
    /// while the machine is on its disk (a machine that is reinstalling reports nothing).
    async fn reported(
        &self,
        mac: MacAddr,
        key: &str,
        f: impl FnOnce(&mut Record, u64),
    ) -> Result<Record, StateError> {
        if !self.check_key(&mac, key) {
            self.sink.refresh(mac).await;
        }
        let (r, commit) = {
            let mut inner = self.lock();
            let Some(mut r) = inner.machines.get(&mac).and_then(|e| e.record.clone()) else {
                return Err(StateError::BadKey);
            };
            match &r.machine_key {
                Some(k) if constant_time_eq(k.as_bytes(), key.as_bytes()) => {}
                _ => return Err(StateError::BadKey),
            }
            if !r.state.on_disk() {
                return Err(StateError::NotNow(
                    "the machine is not installed (it is being reinstalled, or its install failed)",
                ));
            }
            f(&mut r, now_ms());
            let c = self.put(&mut inner, r.clone(), true);
            (r, c)
        };
        commit.wait().await?;
        Ok(r)
    }

    /// The install finished: from now on the machine boots from its disk. A repeat with the
    /// same token (its first answer was lost) is answered again and changes nothing.
    /// Returns the record and whether this call changed it (false for a repeat).
    pub(crate) async fn done(
        &self,
        mac: MacAddr,
        token: &str,
    ) -> Result<(Record, bool), StateError> {
        if !self.knows_token(&mac, token) {
            self.sink.refresh(mac).await;
        }
        if let Some(r) = self.repeated(&mac, token, |s| s.on_disk()) {
            // The first answer may have been a failed write that is still pending: repeat
            // the success only once it is durable.
            self.sink.flush().wait().await?;
            return Ok((r, false));
        }
        self.transition(mac, Some(token), |r, now| {
            r.state = Lifecycle::Installed;
            r.installer_boots = 0;
            r.spent_token = r.token.take();
            r.installed_at = Some(now);
            r.phases.installed = Some(now);
            r.last_run = None;
            r.reason = None;
        })
        .await
        .map(|r| (r, true))
    }

    /// The install failed (reported by the machine, or its template did not render).
    pub(crate) async fn failed(
        &self,
        mac: MacAddr,
        token: Option<&str>,
        reason: String,
    ) -> Result<(Record, bool), StateError> {
        if token.is_some_and(|t| !self.knows_token(&mac, t)) {
            self.sink.refresh(mac).await;
        }
        if let Some(r) = token.and_then(|t| self.repeated(&mac, t, |s| s == Lifecycle::Failed)) {
            self.sink.flush().wait().await?;
            return Ok((r, false));
        }
        self.transition(mac, token, |r, _| {
            r.state = Lifecycle::Failed;
            r.reason = Some(reason);
            // The token dies: a failed install cannot later report itself installed.
            if let Some(t) = r.token.take() {
                r.spent_token = Some(t);
            }
        })
        .await
        .map(|r| (r, true))
    }

    /// The record, when `token` is the install's spent token and the machine is already in
    /// the state the repeated callback would put it in.
    fn repeated(
        &self,
        mac: &MacAddr,
        token: &str,
        already: impl Fn(Lifecycle) -> bool,
    ) -> Option<Record> {
        let r = self.record(mac)?;
        let spent = r.spent_token.as_deref()?;
        (already(r.state) && constant_time_eq(spent.as_bytes(), token.as_bytes())).then_some(r)
    }

    /// Cancel an armed install: installed again if it ever was, otherwise failed (held
    /// until re-armed).
    pub(crate) async fn cancel(&self, mac: MacAddr) -> Result<Record, StateError> {
        self.transition(mac, None, |r, _| {
            r.token = None;
            if r.installed_at.is_some() {
                r.state = match &r.last_run {
                    Some(run) if run.succeeded() => Lifecycle::Configured,
                    Some(_) => Lifecycle::ConfigFailed,
                    None if r.phases.booted.is_some() => Lifecycle::Booted,
                    None => Lifecycle::Installed,
                };
                r.reason = None;
            } else {
                r.state = Lifecycle::Failed;
                r.reason = Some("install cancelled by an operator".into());
            }
        })
        .await
    }

    /// Re-arm: the next netboot installs again, with a new token.
    pub(crate) async fn rearm(&self, mac: MacAddr) -> Result<Record, StateError> {
        self.transition(mac, None, |r, _| {
            r.state = Lifecycle::Pending;
            r.token = Some(new_token());
            r.spent_token = None;
            // The old system's key dies: whatever still runs on the disk cannot report.
            r.machine_key = Some(new_token());
            r.phases = Phases::default();
            r.reason = None;
            r.installer_boots = 0;
        })
        .await
    }
}

/// The lifecycle at `now`: as [`effective`], and an installed machine that has not phoned
/// home within `stall_after` of its install is `stalled`.
pub(crate) fn effective_at(
    record: Option<&Record>,
    listed: bool,
    now: u64,
    stall_after: std::time::Duration,
) -> Lifecycle {
    let state = effective(record, listed);
    match (state, record.and_then(|r| r.installed_at)) {
        (Lifecycle::Installed, Some(at))
            if now.saturating_sub(at) > stall_after.as_millis() as u64 =>
        {
            Lifecycle::Stalled
        }
        _ => state,
    }
}

/// The lifecycle of a machine from its record and whether the inventory lists it.
pub(crate) fn effective(record: Option<&Record>, listed: bool) -> Lifecycle {
    match (record.map(|r| r.state), listed) {
        (None, true) => Lifecycle::Pending,
        (None, false) => Lifecycle::Unknown,
        (Some(Lifecycle::Unknown | Lifecycle::Discovered), true) => Lifecycle::Pending,
        (Some(s), true) => s,
        // A machine taken out of the inventory is no longer installed by us.
        (Some(_), false) => Lifecycle::Discovered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac() -> MacAddr {
        "52:54:00:00:00:01".parse().unwrap()
    }

    #[tokio::test]
    async fn a_machine_installs_once_and_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(
            effective(s.record(&mac()).as_ref(), true),
            Lifecycle::Pending
        );
        let t = s.arm(mac()).await.unwrap();
        assert_eq!(
            s.arm(mac()).await.unwrap(),
            t,
            "arming twice keeps the token"
        );
        assert!(matches!(
            s.install_started(mac(), "nope", "web".into(), None).await,
            Err(StateError::BadToken)
        ));
        s.install_started(mac(), &t, "web".into(), None)
            .await
            .unwrap();
        s.event(mac(), "log", "partitioning");
        s.done(mac(), &t).await.unwrap();
        assert!(!s.check_token(&mac(), &t), "the token dies with done");
        let (again, changed) = s
            .done(mac(), &t)
            .await
            .expect("a repeated done is answered again");
        assert_eq!((again.state, changed), (Lifecycle::Installed, false));
        assert!(matches!(
            s.failed(mac(), Some(&t), "late".into()).await,
            Err(StateError::BadToken)
        ));
        assert!(matches!(
            s.done(mac(), "wrong-token").await,
            Err(StateError::BadToken)
        ));
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(
            effective(s.record(&mac()).as_ref(), true),
            Lifecycle::Installed
        );
        assert_eq!(s.events(&mac())[0].message, "partitioning");
        let r = s.rearm(mac()).await.unwrap();
        assert_eq!(r.state, Lifecycle::Pending);
        assert!(s.check_token(&mac(), r.token.as_deref().unwrap()));
        assert_ne!(r.token.as_deref(), Some(t.as_str()));
        assert_eq!(
            r.phases,
            Phases::default(),
            "a re-arm starts a new timeline"
        );
        // Regression: the netboot after a re-arm kept the re-arm's token and never started
        // the timeline, so the reinstall had no firmware phase.
        assert_eq!(s.arm(mac()).await.unwrap(), r.token.clone().unwrap());
        let first = s.record(&mac()).unwrap().phases.netboot;
        assert!(
            first.is_some(),
            "the netboot after a re-arm starts the timeline"
        );
        s.arm(mac()).await.unwrap();
        assert_eq!(
            s.record(&mac()).unwrap().phases.netboot,
            first,
            "a second netboot keeps it"
        );
    }

    #[tokio::test]
    async fn the_installed_system_reports_with_its_machine_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let t = s.arm(mac()).await.unwrap();
        let r = s
            .install_started(mac(), &t, "web".into(), Some("ab".repeat(32)))
            .await
            .unwrap();
        let key = r
            .machine_key
            .clone()
            .expect("a machine key with every install");
        assert_ne!(key, t, "the machine key is not the install token");
        assert!(
            matches!(s.booted(mac(), &key).await, Err(StateError::NotNow(_))),
            "nothing on the disk reports before done"
        );
        s.done(mac(), &t).await.unwrap();
        assert!(matches!(s.booted(mac(), &t).await, Err(StateError::BadKey)));
        assert_eq!(
            s.booted(mac(), &key).await.unwrap().state,
            Lifecycle::Booted
        );
        let failed = ConfigRun {
            exit: 6,
            failed: 1,
            total: 9,
            ..ConfigRun::default()
        };
        let r = s.config_run(mac(), &key, failed).await.unwrap();
        assert_eq!(r.state, Lifecycle::ConfigFailed);
        assert!(r.last_good_run.is_none());
        let good = ConfigRun {
            exit: 2,
            changed: 3,
            total: 9,
            bundle: Some("cd".repeat(32)),
            ..ConfigRun::default()
        };
        let r = s.config_run(mac(), &key, good).await.unwrap();
        assert_eq!(r.state, Lifecycle::Configured);
        assert!(r.phases.configured.is_some() && r.phases.booted.is_some());
        // A reboot phones home again without undoing the configuration.
        assert_eq!(
            s.booted(mac(), &key).await.unwrap().state,
            Lifecycle::Configured
        );
        // Survives a restart, and a re-arm kills the old system's key.
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.record(&mac()).unwrap().state, Lifecycle::Configured);
        s.rearm(mac()).await.unwrap();
        assert!(matches!(
            s.booted(mac(), &key).await,
            Err(StateError::BadKey)
        ));
        assert!(!s.check_key(&mac(), &key));
    }

    #[tokio::test]
    async fn a_failed_install_cannot_be_marked_installed_with_its_token() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let t = s.arm(mac()).await.unwrap();
        s.install_started(mac(), &t, "web".into(), None)
            .await
            .unwrap();
        s.failed(mac(), Some(&t), "disk".into()).await.unwrap();
        // Regression: the token outlived `failed`, so `done` could still mark it installed.
        assert!(matches!(s.done(mac(), &t).await, Err(StateError::BadToken)));
        assert_eq!(s.record(&mac()).unwrap().state, Lifecycle::Failed);
        // The same failure reported twice (its answer lost) is fine.
        s.failed(mac(), Some(&t), "disk".into()).await.unwrap();
    }

    #[test]
    fn an_installed_machine_that_never_phones_home_is_stalled() {
        let mut r = Record::new(mac(), Lifecycle::Installed, 0);
        r.installed_at = Some(1_000);
        let after = std::time::Duration::from_secs(60);
        assert_eq!(
            effective_at(Some(&r), true, 1_000 + 59_000, after),
            Lifecycle::Installed
        );
        assert_eq!(
            effective_at(Some(&r), true, 1_000 + 61_000, after),
            Lifecycle::Stalled
        );
        r.state = Lifecycle::Booted;
        assert_eq!(
            effective_at(Some(&r), true, 1_000 + 61_000, after),
            Lifecycle::Booted
        );
    }

    #[tokio::test]
    async fn a_flood_of_invented_macs_is_bounded_and_listed_machines_stay() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let listed = mac();
        let t = s.arm(listed).await.unwrap();
        for i in 0..(UNLISTED_KEPT as u64 + 500) {
            let b = (0x0200_0000_0000u64 + i).to_be_bytes();
            let m = MacAddr([b[2], b[3], b[4], b[5], b[6], b[7]]);
            s.observe(m, false, Facts::default());
            s.event(m, "dhcp", "DHCPDISCOVER: no answer");
        }
        let n = s.lock().machines.len();
        assert!(n <= UNLISTED_KEPT + 1, "{n} machines remembered");
        assert!(s.check_token(&listed, &t), "the listed machine is kept");
        // The newest unlisted ones are the ones remembered; a restart agrees.
        s.flush().await.unwrap();
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert!(s.lock().machines.len() <= UNLISTED_KEPT + 1);
        assert!(s.check_token(&listed, &t));
    }

    #[test]
    fn effective_state_follows_the_inventory() {
        assert_eq!(effective(None, false), Lifecycle::Unknown);
        let mut r = Record::new(mac(), Lifecycle::Discovered, 0);
        assert_eq!(effective(Some(&r), true), Lifecycle::Pending);
        r.state = Lifecycle::Installed;
        assert_eq!(effective(Some(&r), true), Lifecycle::Installed);
        assert_eq!(effective(Some(&r), false), Lifecycle::Discovered);
    }

    #[test]
    fn tokens_are_random_and_compared_whole() {
        assert_ne!(new_token(), new_token());
        assert_eq!(new_token().len(), 32);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[tokio::test]
    async fn events_are_capped_and_compaction_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        for i in 0..(EVENTS_KEPT + 20) {
            s.event(mac(), "log", format!("line {i}"));
        }
        let ev = s.events(&mac());
        assert_eq!(ev.len(), EVENTS_KEPT);
        assert_eq!(ev[0].message, "line 20");
        s.sink.flush().wait().await.unwrap();
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.events(&mac()).len(), EVENTS_KEPT);
    }
}
