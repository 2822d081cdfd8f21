//! What happened to each machine: its lifecycle, its install token, and its event history.
//!
//! Owns the state directory's `machines.journal`. Lifecycle changes that a machine's next
//! boot depends on (armed with a token, installed, failed, re-armed) are durable before the
//! caller answers; events are written in order but not waited for. A restart replays the
//! journal, so nothing acknowledged is lost. The inventory (intent) is not stored here: a
//! listed machine without a record is simply `pending`.
//!
//! Tokens live until `done` or a re-arm: no expiry can strand a long install.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::journal::Journal;
use crate::mac::MacAddr;

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
        }
    }
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
    /// What the machine was installed from (role, template, variables), to tell drift.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) installed_from: Option<String>,
    #[serde(default)]
    pub(crate) facts: Facts,
}

impl Record {
    fn new(mac: MacAddr, state: Lifecycle, now: u64) -> Record {
        Record {
            mac,
            state,
            token: None,
            reason: None,
            first_seen: now,
            last_seen: now,
            install_started: None,
            installed_at: None,
            installed_from: None,
            facts: Facts::default(),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Line {
    Record(Record),
    Event { mac: MacAddr, event: Event },
}

struct Entry {
    record: Option<Record>,
    events: VecDeque<Event>,
}

struct Inner {
    machines: HashMap<MacAddr, Entry>,
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
    #[error("state journal: {0}")]
    Io(#[from] std::io::Error),
}

/// A machine changed (an event was added or its record changed): for live pages.
#[derive(Clone, Debug)]
pub(crate) struct Change {
    pub(crate) mac: MacAddr,
}

pub(crate) struct Store {
    inner: Mutex<Inner>,
    journal: Journal,
    changes: tokio::sync::broadcast::Sender<Change>,
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

/// Replay journal lines into entries; returns how many lines could not be read.
fn replay(lines: &[String]) -> (HashMap<MacAddr, Entry>, usize) {
    let mut machines: HashMap<MacAddr, Entry> = HashMap::new();
    let mut bad = 0usize;
    for l in lines {
        match serde_json::from_str::<Line>(l) {
            Ok(Line::Record(r)) => {
                let mac = r.mac;
                machines
                    .entry(mac)
                    .or_insert_with(|| Entry {
                        record: None,
                        events: VecDeque::new(),
                    })
                    .record = Some(r);
            }
            Ok(Line::Event { mac, event }) => {
                let e = machines.entry(mac).or_insert_with(|| Entry {
                    record: None,
                    events: VecDeque::new(),
                });
                if e.events.len() >= EVENTS_KEPT {
                    e.events.pop_front();
                }
                e.events.push_back(event);
            }
            Err(_) => bad += 1,
        }
    }
    (machines, bad)
}

/// The records in a state directory, read without taking it over (for `render` beside a
/// running server).
pub(crate) fn read_records(state_dir: &Path) -> std::io::Result<HashMap<MacAddr, Record>> {
    let path = state_dir.join("machines.journal");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    Ok(replay(&lines)
        .0
        .into_iter()
        .filter_map(|(m, e)| e.record.map(|r| (m, r)))
        .collect())
}

impl Store {
    pub(crate) fn open(state_dir: &Path) -> std::io::Result<Store> {
        let (journal, lines) = Journal::open(&state_dir.join("machines.journal"))?;
        let (machines, bad) = replay(&lines);
        if bad > 0 {
            tracing::warn!(path = %journal.path().display(), lines = bad, "skipped unreadable state journal lines");
        }
        let store = Store {
            inner: Mutex::new(Inner {
                machines,
                lines_since_compact: lines.len(),
                live_estimate: 0,
            }),
            journal,
            changes: tokio::sync::broadcast::channel(4096).0,
        };
        store.maybe_compact(&mut store.lock(), true);
        Ok(store)
    }

    /// Wait until every line written so far (events too) is on disk (shutdown).
    pub(crate) async fn flush(&self) -> std::io::Result<()> {
        self.journal.flush().wait().await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn maybe_compact(&self, inner: &mut Inner, force: bool) {
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
        if force && inner.lines_since_compact <= 2 * live + 1000 {
            return;
        }
        let mut lines = Vec::with_capacity(live);
        for (mac, e) in &inner.machines {
            if let Some(r) = &e.record {
                lines.push(serde_json::to_string(&Line::Record(r.clone())).unwrap_or_default());
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
        self.journal.compact(lines);
    }

    /// Write a record (under the lock, so journal order is change order).
    fn put(&self, inner: &mut Inner, r: Record, durable: bool) -> crate::journal::Commit {
        let line = serde_json::to_string(&Line::Record(r.clone())).unwrap_or_default();
        let mac = r.mac;
        inner
            .machines
            .entry(mac)
            .or_insert_with(|| Entry {
                record: None,
                events: VecDeque::new(),
            })
            .record = Some(r);
        inner.lines_since_compact += 1;
        let c = self.journal.append(&line, durable);
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
        let line = serde_json::to_string(&Line::Event {
            mac,
            event: event.clone(),
        })
        .unwrap_or_default();
        let mut inner = self.lock();
        let e = inner.machines.entry(mac).or_insert_with(|| Entry {
            record: None,
            events: VecDeque::new(),
        });
        if e.events.len() >= EVENTS_KEPT {
            e.events.pop_front();
        }
        e.events.push_back(event.clone());
        inner.lines_since_compact += 1;
        self.journal.append(&line, false);
        self.maybe_compact(&mut inner, false);
        drop(inner);
        let _ = self.changes.send(Change { mac });
    }

    /// Remember what a machine's packets said, and when it was last seen. Unlisted
    /// machines become `discovered`.
    pub(crate) fn observe(&self, mac: MacAddr, listed: bool, facts: Facts) {
        let now = now_ms();
        let mut inner = self.lock();
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
        let (token, commit) = {
            let mut inner = self.lock();
            let now = now_ms();
            let mut r = inner
                .machines
                .get(&mac)
                .and_then(|e| e.record.clone())
                .unwrap_or_else(|| Record::new(mac, Lifecycle::Pending, now));
            if let (Some(t), Lifecycle::Pending | Lifecycle::Installing) = (&r.token, r.state) {
                return Ok(t.clone());
            }
            if matches!(r.state, Lifecycle::Unknown | Lifecycle::Discovered) {
                r.state = Lifecycle::Pending;
            }
            let t = new_token();
            r.token = Some(t.clone());
            let c = self.put(&mut inner, r, true);
            (t, c)
        };
        commit.wait().await?;
        Ok(token)
    }

    /// Whether `token` is this machine's current install token.
    pub(crate) fn check_token(&self, mac: &MacAddr, token: &str) -> bool {
        match self.record(mac).and_then(|r| r.token) {
            Some(t) => constant_time_eq(t.as_bytes(), token.as_bytes()),
            None => false,
        }
    }

    async fn transition(
        &self,
        mac: MacAddr,
        token: Option<&str>,
        f: impl FnOnce(&mut Record, u64),
    ) -> Result<Record, StateError> {
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

    /// The machine fetched its install script.
    pub(crate) async fn install_started(
        &self,
        mac: MacAddr,
        token: &str,
    ) -> Result<Record, StateError> {
        self.transition(mac, Some(token), |r, now| {
            r.state = Lifecycle::Installing;
            r.install_started = Some(now);
            r.reason = None;
        })
        .await
    }

    /// The install finished: from now on the machine boots from its disk.
    pub(crate) async fn done(
        &self,
        mac: MacAddr,
        token: &str,
        installed_from: String,
    ) -> Result<Record, StateError> {
        self.transition(mac, Some(token), |r, now| {
            r.state = Lifecycle::Installed;
            r.token = None;
            r.installed_at = Some(now);
            r.installed_from = Some(installed_from);
            r.reason = None;
        })
        .await
    }

    /// The install failed (reported by the machine, or its template did not render).
    pub(crate) async fn failed(
        &self,
        mac: MacAddr,
        token: Option<&str>,
        reason: String,
    ) -> Result<Record, StateError> {
        self.transition(mac, token, |r, _| {
            r.state = Lifecycle::Failed;
            r.reason = Some(reason);
        })
        .await
    }

    /// Cancel an armed install: installed again if it ever was, otherwise failed (held
    /// until re-armed).
    pub(crate) async fn cancel(&self, mac: MacAddr) -> Result<Record, StateError> {
        self.transition(mac, None, |r, _| {
            r.token = None;
            if r.installed_at.is_some() {
                r.state = Lifecycle::Installed;
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
            r.reason = None;
        })
        .await
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
            s.install_started(mac(), "nope").await,
            Err(StateError::BadToken)
        ));
        s.install_started(mac(), &t).await.unwrap();
        s.event(mac(), "log", "partitioning");
        s.done(mac(), &t, "web".into()).await.unwrap();
        assert!(!s.check_token(&mac(), &t), "the token dies with done");
        assert!(matches!(
            s.done(mac(), &t, "web".into()).await,
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
        s.journal.flush().wait().await.unwrap();
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.events(&mac()).len(), EVENTS_KEPT);
    }
}
