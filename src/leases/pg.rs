//! The lease store on PostgreSQL, for several servers sharing leases.
//!
//! Each server keeps the [`Allocator`] in memory as a mirror of the database, so offers
//! stay quick local decisions; the database is the authority on binds. A bind is an
//! upsert on `stemcell_lease4` (primary key: the address) that takes the row only if it
//! is free, already this MAC's, released or expired; zero rows back means another server
//! won the address, and the client is told DHCPNAK (it starts over at once). The ACK of a
//! bind that did land leaves only after its transaction committed, as with the journal.
//!
//! One writer task owns the connection and commits every change that queued up while the
//! previous commit ran as one statement over arrays, committed by itself (group commit: one
//! round trip, one WAL flush, one announcement per hundred rows for all of them). A second connection LISTENs: every change any
//! writer makes is announced by a trigger, and the mirror applies the others' changes.
//! After a reconnect the mirror is reloaded from the table, so nothing announced during
//! the gap is missed.
//!
//! While the database cannot be reached: no new offers (the event says why), a bind
//! fails (no ACK; a renewal is still told what its committed lease allows, see
//! [`Binding::on_disk`]), releases and declines wait in memory (bounded) and are written
//! when it is back. Both connections retry every second by themselves.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ipnetwork::Ipv4Network;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{Client, Statement};

use super::{
    AllocError, Allocator, Binding, Durable, DurableInner, Lease, LeaseStore, Record, RecordState,
    Refused, UnixTime,
};
use crate::journal::JournalStats;
use crate::mac::MacAddr;
use crate::pg::{self, PgConfig, PgError};

/// Changes waiting for the database beyond which releases and declines are dropped
/// (counted): they only free addresses early, the leases expire by themselves.
const BACKLOG_MAX: usize = 100_000;
/// Most changes committed in one batch.
const BATCH_MAX: usize = 2048;
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// A batch of changes in one statement (one trigger firing, one round trip). A row is
/// taken only if it is free, already this MAC's, released or expired: the rows returned
/// are the changes that took.
const UPSERT: &str = "INSERT INTO stemcell_lease4 AS l (ip, mac, state, expires, server, updated) \
     SELECT ip, mac, state, expires, $5, now() \
     FROM unnest($1::inet[], $2::text[], $3::text[], $4::int8[]) AS t(ip, mac, state, expires) \
     ON CONFLICT (ip) DO UPDATE SET mac = EXCLUDED.mac, state = EXCLUDED.state, \
     expires = EXCLUDED.expires, server = EXCLUDED.server, updated = now() \
     WHERE l.mac = EXCLUDED.mac OR l.state = 'released' OR l.expires <= $6 \
     RETURNING l.ip";

struct Op {
    /// None: a flush (answered once everything before it is committed).
    rec: Option<Record>,
    now: UnixTime,
    ack: Option<oneshot::Sender<io::Result<()>>>,
}

#[derive(Default)]
struct Stats {
    errors: AtomicU64,
    backlog: AtomicU64,
    dropped: AtomicU64,
    up: AtomicBool,
    /// Why the database is unreachable, while it is.
    why: Mutex<String>,
}

impl Stats {
    fn down(&self, why: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::error!(error = %why, "lease database unreachable; no new leases until it is back");
        }
        *self.why.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }
    fn up(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!("lease database reachable");
        }
    }
}

/// The lease store shared through PostgreSQL (see the module documentation).
pub(crate) struct PgLeaseStore {
    alloc: Arc<Mutex<Allocator>>,
    tx: mpsc::UnboundedSender<Op>,
    stats: Arc<Stats>,
}

fn lock(a: &Mutex<Allocator>) -> MutexGuard<'_, Allocator> {
    a.lock().unwrap_or_else(|e| e.into_inner())
}

fn state_str(s: RecordState) -> &'static str {
    match s {
        RecordState::Bound => "bound",
        RecordState::Released => "released",
        RecordState::Declined => "declined",
    }
}

fn parse_state(s: &str) -> Option<RecordState> {
    Some(match s {
        "bound" => RecordState::Bound,
        "released" => RecordState::Released,
        "declined" => RecordState::Declined,
        _ => return None,
    })
}

impl PgLeaseStore {
    /// Connect, migrate, load every lease into `alloc` and start the writer and the
    /// listener. Fails (with what is wrong) if the database cannot be used now.
    pub(crate) async fn open(cfg: &PgConfig, alloc: Allocator) -> Result<PgLeaseStore, PgError> {
        let settings = cfg.settings()?;
        let server: Arc<str> = pg::server_id().into();
        let mut first = pg::connect(&settings, None).await?;
        pg::migrate(&mut first).await?;
        drop(first);
        let writer = Conn::open(&settings).await?;
        let alloc = Arc::new(Mutex::new(alloc));
        let (listener, notes) = pg::listen(&settings, pg::LEASE_CHANNEL).await?;
        let loaded = load(&listener, &alloc).await?;
        tracing::info!(leases = loaded, server = %server, "lease database loaded");
        let stats = Arc::new(Stats::default());
        stats.up.store(true, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(listen_loop(
            settings.clone(),
            server.clone(),
            alloc.clone(),
            Some((listener, notes)),
        ));
        tokio::spawn(write_loop(
            settings,
            server,
            alloc.clone(),
            stats.clone(),
            rx,
            Some(writer),
        ));
        Ok(PgLeaseStore { alloc, tx, stats })
    }

    /// Queue the allocator's pending records; the last one acknowledged if `ack`.
    fn persist(&self, alloc: &mut Allocator, now: UnixTime, ack: bool) -> Durable {
        let records = alloc.take_records();
        let n = records.len();
        let mut out = Durable::done();
        for (i, r) in records.into_iter().enumerate() {
            let last = ack && i + 1 == n;
            let (tx, rx) = if last {
                let (t, r) = oneshot::channel();
                (Some(t), Some(r))
            } else {
                (None, None)
            };
            if self
                .tx
                .send(Op {
                    rec: Some(r),
                    now,
                    ack: tx,
                })
                .is_ok()
            {
                self.stats.backlog.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(rx) = rx {
                out = Durable(DurableInner::Db(rx), None);
            }
        }
        out
    }

    fn unavailable(&self) -> Option<String> {
        (!self.stats.up.load(Ordering::Relaxed)).then(|| {
            self.stats
                .why
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        })
    }
}

/// Every row into the mirror; how many.
async fn load(client: &Client, alloc: &Mutex<Allocator>) -> Result<usize, PgError> {
    let rows = client
        .query("SELECT ip, mac, state, expires FROM stemcell_lease4", &[])
        .await?;
    let mut a = lock(alloc);
    let mut n = 0;
    for row in rows {
        if let Some(r) = row_record(
            row.get::<_, IpAddr>(0),
            row.get::<_, &str>(1),
            row.get::<_, &str>(2),
            row.get::<_, i64>(3),
        ) {
            if a.apply(&r) {
                n += 1;
            }
        }
    }
    Ok(n)
}

fn row_record(ip: IpAddr, mac: &str, state: &str, expires: i64) -> Option<Record> {
    let IpAddr::V4(ip) = ip else { return None };
    let parsed = (mac.parse::<MacAddr>().ok(), parse_state(state));
    let (Some(mac), Some(state)) = parsed else {
        tracing::warn!(%ip, mac, state, "lease row not understood; ignored");
        return None;
    };
    Some(Record {
        ip,
        mac,
        state,
        expires: expires.max(0) as u64,
    })
}

/// One announced row (`ip mac state expires server`) and who wrote it.
fn announced(line: &str) -> Option<(Record, &str)> {
    let mut f = line.split(' ');
    let (ip, mac, state, expires, server) = (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
    let ip: Ipv4Addr = ip.parse().ok()?;
    let r = row_record(IpAddr::V4(ip), mac, state, expires.parse().ok()?)?;
    Some((r, server))
}

/// Apply the other servers' announced changes to the mirror, reconnecting (and reloading)
/// whenever the connection drops.
async fn listen_loop(
    settings: tokio_postgres::Config,
    server: Arc<str>,
    alloc: Arc<Mutex<Allocator>>,
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
                match pg::listen(&settings, pg::LEASE_CHANNEL).await {
                    Ok((c, n)) => match load(&c, &alloc).await {
                        Ok(k) => {
                            tracing::info!(leases = k, "lease mirror reloaded from the database");
                            (c, n)
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "lease mirror reload failed");
                            continue;
                        }
                    },
                    Err(e) => {
                        tracing::debug!(error = %e, "lease listener cannot connect");
                        continue;
                    }
                }
            }
        };
        // The receiver ends when the connection's task ends (the connection dropped).
        while let Some(n) = notes.recv().await {
            let mut a = lock(&alloc);
            for line in n.payload().lines() {
                match announced(line) {
                    Some((_, w)) if w == &*server => {}
                    Some((r, _)) => {
                        a.apply(&r);
                    }
                    None => tracing::warn!(line, "lease announcement not understood"),
                }
            }
        }
        drop(client);
    }
}

/// The writer's connection and its prepared upsert.
struct Conn {
    client: Client,
    upsert: Statement,
}

impl Conn {
    async fn open(settings: &tokio_postgres::Config) -> Result<Conn, PgError> {
        let client = pg::connect(settings, None).await?;
        let upsert = client.prepare(UPSERT).await?;
        Ok(Conn { client, upsert })
    }
}

/// Commit queued changes in batches; keep what may wait while the database is away.
async fn write_loop(
    settings: tokio_postgres::Config,
    server: Arc<str>,
    alloc: Arc<Mutex<Allocator>>,
    stats: Arc<Stats>,
    mut rx: mpsc::UnboundedReceiver<Op>,
    mut client: Option<Conn>,
) {
    let mut backlog: VecDeque<Op> = VecDeque::new();
    let mut last_try = Instant::now();
    loop {
        let mut batch: Vec<Op> = Vec::new();
        if backlog.is_empty() && client.is_some() {
            match rx.recv().await {
                Some(op) => batch.push(op),
                None => return,
            }
        } else {
            // Down, or changes waiting: wake at least every second to reconnect (no new
            // change may come while offers are refused).
            match tokio::time::timeout(RETRY_EVERY, rx.recv()).await {
                Ok(Some(op)) => batch.push(op),
                Ok(None) => return,
                Err(_) => {}
            }
            batch.extend(backlog.drain(..));
        }
        while batch.len() < BATCH_MAX {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        if client.as_ref().is_none_or(|c| c.client.is_closed()) {
            client = None;
            if last_try.elapsed() >= RETRY_EVERY || stats.up.load(Ordering::Relaxed) {
                last_try = Instant::now();
                match Conn::open(&settings).await {
                    Ok(c) => client = Some(c),
                    Err(e) => stats.down(e.to_string()),
                }
            }
        }
        if batch.is_empty() {
            if client.is_some() {
                stats.up();
            }
            continue;
        }
        let result = match &client {
            Some(c) => commit(c, &server, &batch)
                .await
                .map_err(|e| pg::describe(&e)),
            None => Err(stats.why.lock().unwrap_or_else(|e| e.into_inner()).clone()),
        };
        match result {
            Ok(won) => {
                stats.up();
                let mut lost = Vec::new();
                let mut won = won.into_iter();
                for op in batch {
                    stats
                        .backlog
                        .fetch_sub(u64::from(op.rec.is_some()), Ordering::Relaxed);
                    let ok = match &op.rec {
                        Some(r) => {
                            let ok = won.next().unwrap_or(false);
                            if !ok {
                                lost.push(r.ip);
                            }
                            ok || r.state != RecordState::Bound
                        }
                        None => true,
                    };
                    if let Some(ack) = op.ack {
                        let _ = ack.send(if ok {
                            Ok(())
                        } else {
                            Err(io::Error::new(
                                io::ErrorKind::AddrInUse,
                                "another server sharing the lease database holds the address",
                            ))
                        });
                    }
                }
                if !lost.is_empty() {
                    if let Some(c) = &client {
                        refresh(&c.client, &alloc, &lost).await;
                    }
                }
            }
            Err(why) => {
                client = None;
                stats.down(why.clone());
                for op in batch {
                    match op.ack {
                        Some(ack) => {
                            stats
                                .backlog
                                .fetch_sub(u64::from(op.rec.is_some()), Ordering::Relaxed);
                            let _ =
                                ack.send(Err(io::Error::other(format!("lease database: {why}"))));
                        }
                        // A bind nobody waits for anymore is not retried either: its
                        // client was not answered, the address is only held locally.
                        None if op
                            .rec
                            .as_ref()
                            .is_some_and(|r| r.state == RecordState::Bound) =>
                        {
                            stats.backlog.fetch_sub(1, Ordering::Relaxed);
                        }
                        None if backlog.len() < BACKLOG_MAX => backlog.push_back(op),
                        None => {
                            stats.backlog.fetch_sub(1, Ordering::Relaxed);
                            stats.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
    }
}

/// The whole batch, committed; for each record, whether this server's write took. One
/// statement (it commits by itself: no BEGIN and COMMIT round trips); a statement may not
/// change one row twice, so an address that comes again starts the next statement (all
/// pipelined, in order, each committed before its answer).
async fn commit(
    conn: &Conn,
    server: &str,
    batch: &[Op],
) -> Result<Vec<bool>, tokio_postgres::Error> {
    let client = &conn.client;
    let recs: Vec<&Record> = batch.iter().filter_map(|op| op.rec.as_ref()).collect();
    if recs.is_empty() {
        // A flush: the connection answering is enough (everything before it committed).
        client.simple_query("").await?;
        return Ok(Vec::new());
    }
    let now = batch
        .iter()
        .map(|op| op.now)
        .max()
        .unwrap_or(0)
        .min(i64::MAX as u64) as i64;
    let mut parts: Vec<&[&Record]> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut start = 0;
    for (i, r) in recs.iter().enumerate() {
        if !seen.insert(r.ip) {
            parts.push(&recs[start..i]);
            seen.clear();
            seen.insert(r.ip);
            start = i;
        }
    }
    parts.push(&recs[start..]);
    let results = futures_util::future::join_all(parts.iter().map(|part| {
        let ips: Vec<IpAddr> = part.iter().map(|r| IpAddr::V4(r.ip)).collect();
        let macs: Vec<String> = part.iter().map(|r| r.mac.to_string()).collect();
        let states: Vec<&str> = part.iter().map(|r| state_str(r.state)).collect();
        let expires: Vec<i64> = part
            .iter()
            .map(|r| r.expires.min(i64::MAX as u64) as i64)
            .collect();
        async move {
            client
                .query(
                    &conn.upsert,
                    &[&ips, &macs, &states, &expires, &server, &now],
                )
                .await
        }
    }))
    .await;
    let mut won = Vec::with_capacity(recs.len());
    for (part, rows) in parts.iter().zip(results) {
        // A failed statement fails the batch: its waiters get no ACK. Statements before it
        // may have committed; their clients hear nothing, retry, and find their lease.
        let rows = rows?;
        let took: std::collections::HashSet<IpAddr> =
            rows.iter().map(|row| row.get::<_, IpAddr>(0)).collect();
        won.extend(part.iter().map(|r| took.contains(&IpAddr::V4(r.ip))));
    }
    Ok(won)
}

/// The database's rows for addresses another server won, into the mirror.
async fn refresh(client: &Client, alloc: &Mutex<Allocator>, ips: &[Ipv4Addr]) {
    for ip in ips {
        let row = client
            .query_opt(
                "SELECT ip, mac, state, expires FROM stemcell_lease4 WHERE ip = $1",
                &[&IpAddr::V4(*ip)],
            )
            .await;
        if let Ok(Some(row)) = row {
            if let Some(r) = row_record(
                row.get::<_, IpAddr>(0),
                row.get::<_, &str>(1),
                row.get::<_, &str>(2),
                row.get::<_, i64>(3),
            ) {
                lock(alloc).apply(&r);
            }
        }
    }
}

impl LeaseStore for PgLeaseStore {
    fn offer(
        &self,
        net: Ipv4Network,
        mac: MacAddr,
        reserved: Option<Ipv4Addr>,
        requested: Option<Ipv4Addr>,
        now: UnixTime,
        listed: bool,
    ) -> Result<Ipv4Addr, AllocError> {
        if let Some(why) = self.unavailable() {
            return Err(AllocError::Unavailable(why));
        }
        let mut a = lock(&self.alloc);
        let r = a.offer_as(net, mac, reserved, requested, now, listed);
        if a.has_records() {
            let _ = self.persist(&mut a, now, false);
        }
        r
    }

    fn bind(
        &self,
        mac: MacAddr,
        ip: Ipv4Addr,
        reserved: Option<Ipv4Addr>,
        lease_secs: u64,
        now: UnixTime,
    ) -> Result<(Lease, Durable), Refused> {
        let mut a = lock(&self.alloc);
        let on_disk = a.on_disk_until(mac, ip, now);
        let lease = a.bind(mac, ip, reserved, lease_secs, now)?;
        let mut d = self.persist(&mut a, now, true);
        d.1 = Some(Binding {
            mac,
            ip,
            expires: lease.expires,
            on_disk,
        });
        Ok((lease, d))
    }

    fn release(&self, mac: MacAddr, ip: Ipv4Addr, now: UnixTime) -> bool {
        let mut a = lock(&self.alloc);
        let changed = a.release(mac, ip, now);
        let _ = self.persist(&mut a, now, false);
        changed
    }

    fn decline(&self, mac: MacAddr, ip: Ipv4Addr, now: UnixTime) -> bool {
        let mut a = lock(&self.alloc);
        let changed = a.decline(mac, ip, now);
        let _ = self.persist(&mut a, now, false);
        changed
    }

    fn forget_offer(&self, mac: MacAddr, net: Ipv4Network, now: UnixTime) {
        lock(&self.alloc).forget_offer(mac, net, now);
    }

    fn lease_of(&self, mac: MacAddr, now: UnixTime) -> Option<Lease> {
        lock(&self.alloc).lease_of(mac, now)
    }

    fn leases(&self, now: UnixTime) -> Vec<Lease> {
        lock(&self.alloc).leases(now)
    }

    fn lease_at(&self, ip: Ipv4Addr, now: UnixTime) -> Option<Lease> {
        lock(&self.alloc).lease_at(ip, now)
    }

    fn flush(&self) -> Durable {
        let (tx, rx) = oneshot::channel();
        if self
            .tx
            .send(Op {
                rec: None,
                now: 0,
                ack: Some(tx),
            })
            .is_err()
        {
            return Durable::done();
        }
        Durable(DurableInner::Db(rx), None)
    }

    fn committed(&self, b: &Binding) {
        lock(&self.alloc).committed(b.mac, b.ip, b.expires);
    }

    fn journal_stats(&self) -> Option<JournalStats> {
        Some(JournalStats {
            write_errors: self.stats.errors.load(Ordering::Relaxed),
            // Changes waiting, at about a hundred bytes each.
            backlog_bytes: self.stats.backlog.load(Ordering::Relaxed) * 100,
            dropped_lines: self.stats.dropped.load(Ordering::Relaxed),
        })
    }
}
