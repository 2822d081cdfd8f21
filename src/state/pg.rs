//! The machine-state store's PostgreSQL sink, for several servers sharing machine state.
//!
//! Each server keeps its machines in memory as a mirror of the database (pages, the API
//! and token checks stay local reads). Writes are the journal's lines, given to a writer
//! task: a record is an upsert on `stemcell_machine`, an event an insert on
//! `stemcell_event` (the newest [`EVENTS_KEPT`] of a machine are kept), a forget deletes
//! both. Everything that queued while the previous commit ran is committed in one
//! transaction; a durable line's commit resolves after it.
//!
//! A trigger announces every change on [`pg::MACHINE_CHANNEL`] with the MAC and the
//! writer; a listening task re-reads that machine (record and events) and replaces its
//! entry, then tells the live pages. A machine with lines of this server still on their
//! way to the database is not replaced (this server's memory is newer); it is re-read once
//! they are committed. After the listener reconnects, every machine is re-read, so nothing
//! announced during the gap is missed. The same task answers [`PgSink::refresh`]: a token
//! that misses is checked again against the database before it is refused (the
//! announcement of another server's arm may not have arrived yet).
//!
//! While the database cannot be reached, durable lines fail at once with the reason (the
//! callers answer with an error) and are kept to be written later, like every other line
//! (bounded: beyond [`BACKLOG_MAX`] lines are dropped, counted, and the records are
//! written again whole once it is back). Both connections retry every second.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_postgres::{Client, Statement};

use super::{Change, Entry, Event, Inner, Line, Record, EVENTS_KEPT};
use crate::journal::{Commit, JournalStats};
use crate::mac::MacAddr;
use crate::pg::{self, PgConfig, PgError};

/// Lines waiting for the database beyond which lines are dropped (counted).
const BACKLOG_MAX: usize = 100_000;
/// Most lines committed in one transaction.
const BATCH_MAX: usize = 1024;
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// How long a token check waits for the database's copy of a machine.
const REFRESH_WAIT: Duration = Duration::from_secs(5);

const UPSERT: &str = "INSERT INTO stemcell_machine (mac, record, server, updated) \
     VALUES ($1, $2::text::jsonb, $3, now()) \
     ON CONFLICT (mac) DO UPDATE SET record = EXCLUDED.record, server = EXCLUDED.server, \
     updated = now()";
const INSERT_EVENT: &str =
    "INSERT INTO stemcell_event (mac, event, server) VALUES ($1, $2::text::jsonb, $3)";
const TRIM_EVENTS: &str = "DELETE FROM stemcell_event WHERE mac = $1 AND id <= \
     (SELECT id FROM stemcell_event WHERE mac = $1 ORDER BY id DESC OFFSET $2 LIMIT 1)";
const FORGET_MACHINE: &str = "DELETE FROM stemcell_machine WHERE mac = $1";
const FORGET_EVENTS: &str = "DELETE FROM stemcell_event WHERE mac = $1";

type Ack = oneshot::Sender<Result<(), String>>;

enum Op {
    /// A line to commit; its ack if someone waits for it.
    Line(Line, Option<Ack>),
    /// Answered once everything before it is committed.
    Flush(Ack),
    /// Re-read one machine into the mirror; answered when done (or given up).
    Reread(MacAddr, Option<oneshot::Sender<()>>),
    /// Re-read every machine (the listener reconnected: announcements may be missed).
    ReloadAll,
}

fn line_mac(l: &Line) -> MacAddr {
    match l {
        Line::Record(r) => r.mac,
        Line::Event { mac, .. } | Line::Forget { mac } => *mac,
    }
}

#[derive(Default)]
struct Shared {
    errors: AtomicU64,
    backlog: AtomicU64,
    dropped: AtomicU64,
    lost: AtomicBool,
    up: AtomicBool,
    why: Mutex<String>,
    /// This server's lines per machine not yet committed (counted under the mirror's
    /// lock, by the store, as each line is made).
    pending: Mutex<HashMap<MacAddr, u32>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn down(&self, why: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::error!(error = %why, "machine database unreachable; installs cannot start or finish until it is back");
        }
        *lock(&self.why) = why;
    }
    fn up(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!("machine database reachable");
        }
    }
    fn settle(&self, mac: MacAddr) -> bool {
        let mut pending = lock(&self.pending);
        match pending.get_mut(&mac) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                pending.remove(&mac);
                true
            }
            None => true,
        }
    }
}

/// The writer's handle.
pub(super) struct PgSink {
    tx: mpsc::UnboundedSender<Op>,
    shared: Arc<Shared>,
}

/// What the trigger announces.
#[derive(Deserialize)]
struct Announced {
    mac: String,
    server: String,
}

/// The mirror the tasks keep current.
#[derive(Clone)]
pub(super) struct Mirror {
    pub(super) inner: Arc<Mutex<Inner>>,
    pub(super) changes: broadcast::Sender<Change>,
}

impl PgSink {
    /// Connect, migrate, read the shared discovery key (made by the first server) and
    /// every machine, and start the writer and the listener. `mirror` is given the
    /// machines and returns the shared map the tasks keep current.
    pub(super) async fn open(
        cfg: &PgConfig,
        mirror: impl FnOnce(HashMap<MacAddr, Entry>) -> Mirror,
    ) -> Result<(PgSink, [u8; 32]), PgError> {
        let settings = cfg.settings()?;
        let server: Arc<str> = pg::server_id().into();
        let mut first = pg::connect(&settings, None).await?;
        pg::migrate(&mut first).await?;
        let key = shared_key(&first).await?;
        drop(first);
        let writer = Conn::open(&settings).await?;
        let (listener, notes) = pg::listen(&settings, pg::MACHINE_CHANNEL).await?;
        let machines = load_all(&writer.client).await?;
        tracing::info!(machines = machines.len(), server = %server, "machine database loaded");
        let mirror = mirror(machines);
        let shared = Arc::new(Shared::default());
        shared.up.store(true, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(listen_loop(
            settings.clone(),
            server.clone(),
            tx.downgrade(),
            Some((listener, notes)),
        ));
        tokio::spawn(write_loop(
            settings,
            server,
            mirror,
            shared.clone(),
            rx,
            Some(writer),
        ));
        Ok((PgSink { tx, shared }, key))
    }

    /// Queue a line; with `durable`, the commit resolves once it is in the database.
    /// Call it under the mirror's lock (it counts the line as pending for its machine).
    pub(super) fn append(&self, line: Line, durable: bool) -> Commit {
        *lock(&self.shared.pending)
            .entry(line_mac(&line))
            .or_insert(0) += 1;
        self.shared.backlog.fetch_add(1, Ordering::Relaxed);
        let (ack, rx) = if durable {
            let (t, r) = oneshot::channel();
            (Some(t), Some(r))
        } else {
            (None, None)
        };
        if let Err(e) = self.tx.send(Op::Line(line, ack)) {
            // The writer is gone (shutdown): the line is not counted as pending.
            if let Op::Line(l, _) = e.0 {
                self.shared.settle(line_mac(&l));
            }
        }
        Commit::from_receiver(rx)
    }

    /// Resolves once everything queued so far is committed.
    pub(super) fn flush(&self) -> Commit {
        let (t, r) = oneshot::channel();
        let _ = self.tx.send(Op::Flush(t));
        Commit::from_receiver(Some(r))
    }

    pub(super) fn stats(&self) -> JournalStats {
        JournalStats {
            write_errors: self.shared.errors.load(Ordering::Relaxed),
            // Lines waiting, at about two hundred bytes each.
            backlog_bytes: self.shared.backlog.load(Ordering::Relaxed) * 200,
            dropped_lines: self.shared.dropped.load(Ordering::Relaxed),
        }
    }

    /// Whether the last write reached the database.
    pub(super) fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Relaxed)
    }

    /// Whether lines were dropped since the last call: the owner writes its records again.
    pub(super) fn take_lost(&self) -> bool {
        self.shared.lost.swap(false, Ordering::Relaxed)
    }

    /// Re-read `mac` from the database into the mirror (after every line of ours queued
    /// so far is committed). Gives up quietly when the database cannot answer in time.
    pub(super) async fn refresh(&self, mac: MacAddr) {
        let (t, r) = oneshot::channel();
        if self.tx.send(Op::Reread(mac, Some(t))).is_ok() {
            let _ = tokio::time::timeout(REFRESH_WAIT, r).await;
        }
    }
}

/// The discovery key every server sharing the database uses (the first one makes it).
async fn shared_key(client: &Client) -> Result<[u8; 32], PgError> {
    let mut k = [0u8; 32];
    getrandom::fill(&mut k).map_err(|e| PgError::Connect(e.to_string()))?;
    client
        .execute(
            "INSERT INTO stemcell_secret (name, value) VALUES ('discovery', $1) \
             ON CONFLICT (name) DO NOTHING",
            &[&&k[..]],
        )
        .await?;
    let row = client
        .query_one(
            "SELECT value FROM stemcell_secret WHERE name = 'discovery'",
            &[],
        )
        .await?;
    let v: Vec<u8> = row.get(0);
    if v.len() != 32 {
        return Err(PgError::Connect(format!(
            "stemcell_secret 'discovery' is {} bytes, not 32: delete the row to make a new key",
            v.len()
        )));
    }
    k.copy_from_slice(&v);
    Ok(k)
}

fn parse_record(mac: &str, json: &str) -> Option<Record> {
    match serde_json::from_str::<Record>(json) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(mac, error = %e, "machine row not understood; ignored");
            None
        }
    }
}

fn parse_event(mac: &str, json: &str) -> Option<Event> {
    match serde_json::from_str::<Event>(json) {
        Ok(e) => Some(e),
        Err(e) => {
            tracing::warn!(mac, error = %e, "event row not understood; ignored");
            None
        }
    }
}

fn empty() -> Entry {
    Entry {
        record: None,
        events: VecDeque::new(),
        seq: 0,
    }
}

/// Every machine and its kept events.
async fn load_all(client: &Client) -> Result<HashMap<MacAddr, Entry>, PgError> {
    let mut out: HashMap<MacAddr, Entry> = HashMap::new();
    for row in client
        .query("SELECT mac, record::text FROM stemcell_machine", &[])
        .await?
    {
        let mac: &str = row.get(0);
        let (Ok(m), Some(r)) = (mac.parse::<MacAddr>(), parse_record(mac, row.get(1))) else {
            continue;
        };
        out.entry(m).or_insert_with(empty).record = Some(r);
    }
    for row in client
        .query(
            "SELECT mac, event::text FROM stemcell_event ORDER BY id",
            &[],
        )
        .await?
    {
        let mac: &str = row.get(0);
        let (Ok(m), Some(ev)) = (mac.parse::<MacAddr>(), parse_event(mac, row.get(1))) else {
            continue;
        };
        let e = out.entry(m).or_insert_with(empty);
        if e.events.len() >= EVENTS_KEPT {
            e.events.pop_front();
        }
        e.events.push_back(ev);
    }
    Ok(out)
}

/// One machine's row and kept events (None: the database has neither).
async fn load_one(client: &Client, mac: MacAddr) -> Result<Option<Entry>, PgError> {
    let m = mac.to_string();
    let record = client
        .query_opt(
            "SELECT record::text FROM stemcell_machine WHERE mac = $1",
            &[&m],
        )
        .await?
        .and_then(|row| parse_record(&m, row.get(0)));
    let limit = EVENTS_KEPT as i64;
    let rows = client
        .query(
            "SELECT event::text FROM (SELECT id, event FROM stemcell_event WHERE mac = $1 \
             ORDER BY id DESC LIMIT $2) newest ORDER BY id",
            &[&m, &limit],
        )
        .await?;
    let events: VecDeque<Event> = rows
        .iter()
        .filter_map(|row| parse_event(&m, row.get(0)))
        .collect();
    if record.is_none() && events.is_empty() {
        return Ok(None);
    }
    Ok(Some(Entry {
        record,
        events,
        seq: 0,
    }))
}

/// Put the database's copy of one machine into the mirror, unless lines of ours for it
/// were made after the read (the mirror is newer; `false`: read it again once they are
/// committed). Tells the pages if it changed.
fn replace(mirror: &Mirror, shared: &Shared, mac: MacAddr, entry: Option<Entry>) -> bool {
    let mut inner = lock(&mirror.inner);
    if lock(&shared.pending).contains_key(&mac) {
        return false;
    }
    let changed = match (inner.machines.get(&mac), &entry) {
        (None, None) => false,
        (Some(old), Some(new)) => old.record != new.record || old.events != new.events,
        _ => true,
    };
    match entry {
        Some(e) => {
            inner.machines.insert(mac, e);
        }
        None => {
            inner.machines.remove(&mac);
        }
    }
    drop(inner);
    if changed {
        let _ = mirror.changes.send(Change { mac });
    }
    true
}

/// Every machine's database copy into the mirror; the machines skipped (lines of ours
/// pending) are returned, to be read again.
fn replace_all(mirror: &Mirror, shared: &Shared, mut all: HashMap<MacAddr, Entry>) -> Vec<MacAddr> {
    let mut inner = lock(&mirror.inner);
    let pending = lock(&shared.pending);
    let macs: HashSet<MacAddr> = inner.machines.keys().chain(all.keys()).copied().collect();
    let mut changed = Vec::new();
    let mut skipped = Vec::new();
    for mac in macs {
        if pending.contains_key(&mac) {
            skipped.push(mac);
            continue;
        }
        let new = all.remove(&mac);
        let differs = match (inner.machines.get(&mac), &new) {
            (None, None) => false,
            (Some(old), Some(new)) => old.record != new.record || old.events != new.events,
            _ => true,
        };
        if !differs {
            continue;
        }
        match new {
            Some(e) => inner.machines.insert(mac, e),
            None => inner.machines.remove(&mac),
        };
        changed.push(mac);
    }
    drop(pending);
    drop(inner);
    for mac in changed {
        let _ = mirror.changes.send(Change { mac });
    }
    skipped
}

/// Hand the other servers' announced changes to the writer (which re-reads them),
/// reconnecting whenever the connection drops; after a reconnect every machine is
/// re-read, since announcements during the gap are lost.
async fn listen_loop(
    settings: tokio_postgres::Config,
    server: Arc<str>,
    writer: mpsc::WeakUnboundedSender<Op>,
    mut conn: Option<(
        Client,
        mpsc::UnboundedReceiver<tokio_postgres::Notification>,
    )>,
) {
    loop {
        let (client, mut notes) = match conn.take() {
            Some(c) => c,
            None => {
                tokio::time::sleep(RETRY_EVERY).await;
                match pg::listen(&settings, pg::MACHINE_CHANNEL).await {
                    Ok(c) => {
                        let Some(w) = writer.upgrade() else { return };
                        let _ = w.send(Op::ReloadAll);
                        c
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "machine listener cannot connect");
                        continue;
                    }
                }
            }
        };
        // The receiver ends when the connection's task ends (the connection dropped).
        while let Some(n) = notes.recv().await {
            let Ok(a) = serde_json::from_str::<Announced>(n.payload()) else {
                tracing::warn!(payload = n.payload(), "machine announcement not understood");
                continue;
            };
            if *a.server == *server {
                continue;
            }
            let Ok(mac) = a.mac.parse::<MacAddr>() else {
                continue;
            };
            let Some(w) = writer.upgrade() else { return };
            let _ = w.send(Op::Reread(mac, None));
        }
        drop(client);
        tracing::warn!("machine listener lost its connection; reconnecting");
    }
}

/// The writer's connection and its prepared statements.
struct Conn {
    client: Client,
    upsert: Statement,
    event: Statement,
    trim: Statement,
    forget_machine: Statement,
    forget_events: Statement,
}

impl Conn {
    async fn open(settings: &tokio_postgres::Config) -> Result<Conn, PgError> {
        let client = pg::connect(settings, None).await?;
        Ok(Conn {
            upsert: client.prepare(UPSERT).await?,
            event: client.prepare(INSERT_EVENT).await?,
            trim: client.prepare(TRIM_EVENTS).await?,
            forget_machine: client.prepare(FORGET_MACHINE).await?,
            forget_events: client.prepare(FORGET_EVENTS).await?,
            client,
        })
    }
}

/// Commit queued lines in batches, keeping them while the database is away, and re-read
/// machines between batches (so a re-read never races a line of ours in flight).
async fn write_loop(
    settings: tokio_postgres::Config,
    server: Arc<str>,
    mirror: Mirror,
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Op>,
    mut client: Option<Conn>,
) {
    let mut backlog: VecDeque<(Line, Option<Ack>)> = VecDeque::new();
    let mut last_try = Instant::now();
    // Machines to re-read once no line of ours for them is pending.
    let mut stale: HashSet<MacAddr> = HashSet::new();
    let mut reload_all = false;
    loop {
        // The backlog first: lines are committed in the order they were made.
        let mut lines: Vec<(Line, Option<Ack>)> = backlog.drain(..).collect();
        let mut flushes: Vec<Ack> = Vec::new();
        let mut rereads: Vec<(MacAddr, Option<oneshot::Sender<()>>)> = Vec::new();
        let idle = lines.is_empty() && stale.is_empty() && !reload_all;
        let first = if idle {
            match rx.recv().await {
                Some(op) => Some(op),
                None => return,
            }
        } else {
            // Something is due: retry it within a second even if nothing new comes.
            tokio::time::timeout(RETRY_EVERY, rx.recv())
                .await
                .ok()
                .flatten()
        };
        let mut next = first;
        let mut n = 0;
        while let Some(op) = next {
            match op {
                Op::Line(l, a) => lines.push((l, a)),
                Op::Flush(a) => flushes.push(a),
                Op::Reread(m, d) => rereads.push((m, d)),
                Op::ReloadAll => reload_all = true,
            }
            n += 1;
            next = if n < BATCH_MAX {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if client.as_ref().is_none_or(|c| c.client.is_closed()) {
            client = None;
            if last_try.elapsed() >= RETRY_EVERY || shared.up.load(Ordering::Relaxed) {
                last_try = Instant::now();
                match Conn::open(&settings).await {
                    Ok(c) => client = Some(c),
                    Err(e) => shared.down(e.to_string()),
                }
            }
        }
        if !lines.is_empty() || !flushes.is_empty() {
            let result = match &client {
                Some(c) => commit(c, &server, &lines)
                    .await
                    .map_err(|e| pg::describe(&e)),
                None => Err(lock(&shared.why).clone()),
            };
            match result {
                Ok(()) => {
                    shared.up();
                    for (l, ack) in lines {
                        shared.backlog.fetch_sub(1, Ordering::Relaxed);
                        shared.settle(line_mac(&l));
                        if let Some(ack) = ack {
                            let _ = ack.send(Ok(()));
                        }
                    }
                    for f in flushes {
                        let _ = f.send(Ok(()));
                    }
                }
                Err(why) => {
                    client = None;
                    shared.down(why.clone());
                    let why = format!("machine database: {why}");
                    for f in flushes {
                        let _ = f.send(Err(why.clone()));
                    }
                    // Kept, in order, to be written when the database is back; whoever
                    // waited is told now.
                    for (l, ack) in lines {
                        if let Some(ack) = ack {
                            let _ = ack.send(Err(why.clone()));
                        }
                        if backlog.len() < BACKLOG_MAX {
                            backlog.push_back((l, None));
                        } else {
                            shared.backlog.fetch_sub(1, Ordering::Relaxed);
                            shared.dropped.fetch_add(1, Ordering::Relaxed);
                            shared.lost.store(true, Ordering::Relaxed);
                            shared.settle(line_mac(&l));
                        }
                    }
                }
            }
        } else if client.is_some() {
            shared.up();
        }
        // Re-reads come after the commit: the database then holds every line of ours
        // made before them.
        let Some(c) = &client else {
            // Nobody waits for a database that is away (dropping `done` answers them).
            stale.extend(rereads.into_iter().map(|(m, _)| m));
            continue;
        };
        let mut failed = false;
        if reload_all {
            match load_all(&c.client).await {
                Ok(all) => {
                    reload_all = false;
                    let n = all.len();
                    stale.extend(replace_all(&mirror, &shared, all));
                    tracing::info!(machines = n, "machine mirror reloaded from the database");
                }
                Err(e) => {
                    tracing::debug!(error = %e, "machine mirror reload failed");
                    failed = true;
                }
            }
        }
        {
            let pending = lock(&shared.pending);
            stale.retain(|m| {
                if pending.contains_key(m) {
                    return true;
                }
                rereads.push((*m, None));
                false
            });
        }
        // One read a machine, however many asked (a flood of wrong tokens for one
        // machine is one query a batch).
        let mut waiting: HashMap<MacAddr, Vec<oneshot::Sender<()>>> = HashMap::new();
        for (mac, done) in rereads {
            let w = waiting.entry(mac).or_default();
            w.extend(done);
        }
        for (mac, done) in waiting {
            if !failed {
                match load_one(&c.client, mac).await {
                    Ok(e) => {
                        if !replace(&mirror, &shared, mac, e) {
                            stale.insert(mac);
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, %mac, "machine re-read failed");
                        failed = true;
                    }
                }
            }
            if failed {
                stale.insert(mac);
            }
            for d in done {
                let _ = d.send(());
            }
        }
        if failed && c.client.is_closed() {
            client = None;
        }
    }
}

/// One transaction for the whole batch, its statements pipelined in order.
async fn commit(
    conn: &Conn,
    server: &str,
    lines: &[(Line, Option<Ack>)],
) -> Result<(), tokio_postgres::Error> {
    let client = &conn.client;
    if lines.is_empty() {
        // A flush: the connection answering is enough (everything before it committed).
        client.simple_query("").await?;
        return Ok(());
    }
    // (statement, mac, JSON) in order.
    let mut steps: Vec<(&Statement, String, Option<String>)> = Vec::new();
    let mut trimmed: HashSet<MacAddr> = HashSet::new();
    for (l, _) in lines {
        match l {
            Line::Record(r) => steps.push((
                &conn.upsert,
                r.mac.to_string(),
                Some(serde_json::to_string(r).unwrap_or_default()),
            )),
            Line::Event { mac, event } => {
                steps.push((
                    &conn.event,
                    mac.to_string(),
                    Some(serde_json::to_string(event).unwrap_or_default()),
                ));
                trimmed.insert(*mac);
            }
            Line::Forget { mac } => {
                trimmed.remove(mac);
                steps.push((&conn.forget_machine, mac.to_string(), None));
                steps.push((&conn.forget_events, mac.to_string(), None));
            }
        }
    }
    let kept = EVENTS_KEPT as i64;
    let trims: Vec<String> = trimmed.iter().map(|m| m.to_string()).collect();
    client.batch_execute("BEGIN").await?;
    let written = futures_util::future::join_all(steps.iter().map(|(stmt, mac, json)| {
        let stmt: &Statement = stmt;
        async move {
            match json {
                Some(j) => client.execute(stmt, &[mac, j, &server]).await,
                None => client.execute(stmt, &[mac]).await,
            }
        }
    }))
    .await;
    let trim = futures_util::future::join_all(
        trims
            .iter()
            .map(|mac| async move { client.execute(&conn.trim, &[mac, &kept]).await }),
    )
    .await;
    if let Some(Err(e)) = written.into_iter().chain(trim).find(|r| r.is_err()) {
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(e);
    }
    client.batch_execute("COMMIT").await?;
    Ok(())
}
