//! Address allocation and the lease store.
//!
//! Owns which address each client holds in authoritative DHCP: a pure allocator
//! ([`Allocator`], every decision takes `now`, no I/O) and the store behind the
//! [`LeaseStore`] trait that DHCP calls. The default store, [`JournalStore`], keeps the
//! allocator in memory and writes one JSON line per lease change to an append-only
//! journal (`state_dir/leases.journal`); an ACK may leave only after its line is synced,
//! so the caller gets a [`Durable`] to await. [`PgLeaseStore`] (`store.postgres`) keeps the
//! same contract on a PostgreSQL database several servers share.
//!
//! It knows nothing of DHCP packets: the DHCP module decides which message means what
//! (RFC 2131 §4.3) and calls `offer`, `bind`, `release`, `decline` or `forget_offer`.
//!
//! Allocation cost is O(log n) amortised per request, whatever the pool size: never-used
//! addresses come from a cursor that only moves forward, freed ones from an ordered set
//! (the address free the longest goes first, so a returning client's old address stays
//! available as long as possible), and expiries from an ordered index that is drained
//! lazily on each mutating call.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use crate::journal::{Commit, Journal, JournalStats};
use crate::mac::MacAddr;

mod pg;
pub(crate) use pg::PgLeaseStore;

/// Seconds since the Unix epoch. Injected everywhere so decisions are testable.
pub(crate) type UnixTime = u64;

/// How long an offered address is held for its client before it may be offered to
/// another (RFC 2131 §4.3.1 asks servers to reserve offered addresses).
pub(crate) const OFFER_HOLD_SECS: u64 = 30;

/// How long a declined address (another host answered ARP for it) stays out of the pool.
pub(crate) const DECLINE_QUARANTINE_SECS: u64 = 600;

/// Compact the journal when it has more lines than this many per live entry…
pub(crate) const COMPACT_FACTOR: usize = 4;
/// …plus this many.
pub(crate) const COMPACT_SLACK: usize = 10_000;

/// One subnet's dynamic range as the allocator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PoolRange {
    /// The subnet; reservations and journal entries must lie inside it.
    pub(crate) net: Ipv4Network,
    /// First and last address handed out dynamically (inclusive).
    pub(crate) start: Ipv4Addr,
    pub(crate) end: Ipv4Addr,
    /// Addresses inside the range never handed out (the server's own, the router's).
    pub(crate) exclude: Vec<Ipv4Addr>,
}

/// What a lease looks like from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum LeaseState {
    /// Offered and held for a short while, not yet requested.
    Offered,
    /// Acknowledged; the client owns it until `expires`.
    Bound,
    /// Given back by the client; remembered so it can have it again.
    Released,
    /// Ran out (or an offer was never taken); remembered for the same reason.
    Expired,
    /// A client reported it in use by someone else; out of the pool until `expires`.
    Declined,
}

/// A lease (or the memory of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct Lease {
    pub(crate) ip: Ipv4Addr,
    pub(crate) mac: MacAddr,
    pub(crate) state: LeaseState,
    /// End of the lease, offer hold or quarantine; for released/expired, when it ended.
    pub(crate) expires: UnixTime,
}

/// Why no address could be offered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AllocError {
    #[error("no pool is configured for subnet {0}")]
    NoSuchSubnet(Ipv4Network),
    #[error("address pool of subnet {0} is exhausted")]
    PoolExhausted(Ipv4Network),
    #[error("reserved address {0} is quarantined after a DHCPDECLINE")]
    ReservedQuarantined(Ipv4Addr),
    #[error("reserved address {0} is held by another client ({1})")]
    ReservedHeld(Ipv4Addr, MacAddr),
    #[error("the lease database is unavailable: {0}")]
    Unavailable(String),
}

/// Why a requested address is refused (the DHCP module answers with a DHCPNAK).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    #[error("{0} is not in any configured subnet")]
    NotOurSubnet(Ipv4Addr),
    #[error("{0} is not in the dynamic pool")]
    NotInPool(Ipv4Addr),
    #[error("this client has the reserved address {0}")]
    Reserved(Ipv4Addr),
    #[error("{0} is leased to another client")]
    InUse(Ipv4Addr),
    #[error("{0} is quarantined after a DHCPDECLINE")]
    Quarantined(Ipv4Addr),
}

/// A journal record: one line per lease change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) ip: Ipv4Addr,
    pub(crate) mac: MacAddr,
    pub(crate) state: RecordState,
    /// Lease end (bound), quarantine end (declined), release time (released).
    #[serde(default)]
    pub(crate) expires: UnixTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RecordState {
    Bound,
    Released,
    Declined,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Offered {
        until: UnixTime,
    },
    Bound {
        expires: UnixTime,
    },
    Declined {
        until: UnixTime,
    },
    /// `seq` is the key in the pool's free set (None: not handed out dynamically,
    /// e.g. a reservation or an address outside the range after a config change).
    Free {
        seq: Option<u64>,
        released: bool,
        since: UnixTime,
    },
}

impl State {
    fn deadline(self) -> Option<UnixTime> {
        match self {
            State::Offered { until } | State::Declined { until } => Some(until),
            State::Bound { expires } => Some(expires),
            State::Free { .. } => None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The client this address belongs (or last belonged) to.
    mac: MacAddr,
    pool: usize,
    state: State,
    /// While bound to `mac` without a break: the lease end known to be on disk (replayed,
    /// or its commit reported by [`Allocator::committed`]); 0 when none is known.
    on_disk: UnixTime,
}

#[derive(Debug)]
struct Pool {
    range: PoolRange,
    start: u32,
    end: u32,
    exclude: HashSet<u32>,
    /// Next address never seen before; only moves forward.
    next_fresh: u64,
    /// Freed addresses, oldest first.
    free: BTreeSet<(u64, u32)>,
}

impl Pool {
    fn in_range(&self, ip: u32) -> bool {
        ip >= self.start && ip <= self.end && !self.exclude.contains(&ip)
    }
}

/// The pure allocator: every address's state, indexed for O(log n) allocation.
#[derive(Debug)]
pub(crate) struct Allocator {
    pools: Vec<Pool>,
    entries: HashMap<u32, Entry>,
    by_mac: HashMap<(usize, MacAddr), u32>,
    /// Addresses offered (not bound) to clients the inventory does not list: when a pool
    /// runs out, a listed machine may take one of these, so a flood of invented MACs that
    /// never complete DORA cannot keep the machines stemcell installs from an address.
    lowly: HashSet<u32>,
    /// (deadline, ip) for offered, bound and declined entries.
    expiry: BTreeSet<(UnixTime, u32)>,
    seq: u64,
    offer_hold: u64,
    quarantine: u64,
    /// Durable changes since the last `take_records`.
    records: Vec<Record>,
}

fn same_net(a: Ipv4Network, b: Ipv4Network) -> bool {
    a.network() == b.network() && a.prefix() == b.prefix()
}

impl Allocator {
    pub(crate) fn new(ranges: Vec<PoolRange>) -> Allocator {
        let pools = ranges
            .into_iter()
            .map(|r| {
                let start = u32::from(r.start);
                let end = u32::from(r.end);
                let mut exclude: HashSet<u32> = r.exclude.iter().map(|&a| u32::from(a)).collect();
                // Never the network or broadcast address of a real subnet.
                if r.net.prefix() < 31 {
                    exclude.insert(u32::from(r.net.network()));
                    exclude.insert(u32::from(r.net.broadcast()));
                }
                Pool {
                    range: r,
                    start,
                    end,
                    exclude,
                    next_fresh: u64::from(start),
                    free: BTreeSet::new(),
                }
            })
            .collect();
        Allocator {
            pools,
            entries: HashMap::new(),
            by_mac: HashMap::new(),
            lowly: HashSet::new(),
            expiry: BTreeSet::new(),
            seq: 0,
            offer_hold: OFFER_HOLD_SECS,
            quarantine: DECLINE_QUARANTINE_SECS,
            records: Vec::new(),
        }
    }

    /// Number of addresses with state (live leases, offers, memories, quarantines).
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn pool_of_net(&self, net: Ipv4Network) -> Option<usize> {
        self.pools.iter().position(|p| same_net(p.range.net, net))
    }

    fn pool_of_ip(&self, ip: Ipv4Addr) -> Option<usize> {
        self.pools.iter().position(|p| p.range.net.contains(ip))
    }

    /// Move every offer, lease and quarantine that ended at or before `now` to free.
    fn reclaim(&mut self, now: UnixTime) {
        while let Some(&(t, ip)) = self.expiry.first() {
            if t > now {
                break;
            }
            self.expiry.pop_first();
            if let Some(e) = self.entries.get(&ip).copied() {
                if e.state.deadline() == Some(t) {
                    self.set_free(ip, e.mac, e.pool, false, t);
                }
            }
        }
    }

    /// Take `ip` out of the expiry index and the free set (its state is about to change).
    fn unindex(&mut self, ip: u32, e: &Entry) {
        self.lowly.remove(&ip);
        if let Some(t) = e.state.deadline() {
            self.expiry.remove(&(t, ip));
        }
        if let State::Free { seq: Some(s), .. } = e.state {
            self.pools[e.pool].free.remove(&(s, ip));
        }
    }

    fn set_state(&mut self, ip: u32, mac: MacAddr, pool: usize, state: State) {
        let mut on_disk = 0;
        if let Some(old) = self.entries.get(&ip).copied() {
            if old.mac == mac
                && matches!(old.state, State::Bound { .. })
                && matches!(state, State::Bound { .. })
            {
                on_disk = old.on_disk;
            }
            self.unindex(ip, &old);
            if old.mac != mac && self.by_mac.get(&(old.pool, old.mac)) == Some(&ip) {
                self.by_mac.remove(&(old.pool, old.mac));
            }
        }
        if let Some(t) = state.deadline() {
            self.expiry.insert((t, ip));
        }
        self.entries.insert(
            ip,
            Entry {
                mac,
                pool,
                state,
                on_disk,
            },
        );
    }

    fn set_free(&mut self, ip: u32, mac: MacAddr, pool: usize, released: bool, since: UnixTime) {
        if let Some(old) = self.entries.get(&ip).copied() {
            self.unindex(ip, &old);
            if old.mac != mac && self.by_mac.get(&(old.pool, old.mac)) == Some(&ip) {
                self.by_mac.remove(&(old.pool, old.mac));
            }
        }
        let seq = if self.pools[pool].in_range(ip) {
            self.seq += 1;
            self.pools[pool].free.insert((self.seq, ip));
            Some(self.seq)
        } else {
            None
        };
        let state = State::Free {
            seq,
            released,
            since,
        };
        self.entries.insert(
            ip,
            Entry {
                mac,
                pool,
                state,
                on_disk: 0,
            },
        );
    }

    /// Whether `mac` may take `ip` now (call after `reclaim`).
    fn available_to(&self, ip: u32, mac: MacAddr, now: UnixTime) -> Result<(), Refused> {
        match self.entries.get(&ip) {
            None => Ok(()),
            Some(e) => match e.state {
                State::Free { .. } => Ok(()),
                State::Declined { until } if until > now => {
                    Err(Refused::Quarantined(Ipv4Addr::from(ip)))
                }
                State::Offered { until } | State::Bound { expires: until }
                    if until > now && e.mac != mac =>
                {
                    Err(Refused::InUse(Ipv4Addr::from(ip)))
                }
                _ => Ok(()),
            },
        }
    }

    /// Hold `ip` for `mac` as an offer, keeping a live lease as it is.
    fn hold(&mut self, ip: u32, mac: MacAddr, pool: usize, now: UnixTime) -> Ipv4Addr {
        let keep = matches!(
            self.entries.get(&ip),
            Some(Entry { mac: m, state: State::Bound { expires }, .. }) if *m == mac && *expires > now
        );
        if !keep {
            self.set_state(
                ip,
                mac,
                pool,
                State::Offered {
                    until: now + self.offer_hold,
                },
            );
        }
        self.remember(pool, mac, ip, now);
        Ipv4Addr::from(ip)
    }

    /// Point `mac` at `ip`; an address it held before in this pool is let go.
    fn remember(&mut self, pool: usize, mac: MacAddr, ip: u32, now: UnixTime) {
        if let Some(old) = self.by_mac.insert((pool, mac), ip) {
            if old != ip {
                if let Some(e) = self.entries.get(&old).copied() {
                    if e.mac == mac {
                        match e.state {
                            State::Bound { .. } => {
                                self.set_free(old, mac, e.pool, true, now);
                                self.records.push(Record {
                                    ip: Ipv4Addr::from(old),
                                    mac,
                                    state: RecordState::Released,
                                    expires: now,
                                });
                            }
                            State::Offered { .. } => self.set_free(old, mac, e.pool, false, now),
                            _ => {}
                        }
                    }
                }
            }
        }
    }

    /// Choose an address to offer `mac` in subnet `net`: its reservation; else the address
    /// it has or had; else the one it asks for (option 50) if free; else a never-used one;
    /// else the one free the longest.
    #[cfg(test)]
    pub(crate) fn offer(
        &mut self,
        net: Ipv4Network,
        mac: MacAddr,
        reserved: Option<Ipv4Addr>,
        requested: Option<Ipv4Addr>,
        now: UnixTime,
    ) -> Result<Ipv4Addr, AllocError> {
        self.offer_as(net, mac, reserved, requested, now, false)
    }

    /// [`Allocator::offer`], for a client the inventory lists (`listed`) or not. An
    /// unlisted client's offer may be taken over by a listed machine when the pool is out
    /// of addresses.
    pub(crate) fn offer_as(
        &mut self,
        net: Ipv4Network,
        mac: MacAddr,
        reserved: Option<Ipv4Addr>,
        requested: Option<Ipv4Addr>,
        now: UnixTime,
        listed: bool,
    ) -> Result<Ipv4Addr, AllocError> {
        let ip = self.choose(net, mac, reserved, requested, now, listed)?;
        let n = u32::from(ip);
        if !listed
            && matches!(
                self.entries.get(&n).map(|e| e.state),
                Some(State::Offered { .. })
            )
        {
            self.lowly.insert(n);
        }
        Ok(ip)
    }

    fn choose(
        &mut self,
        net: Ipv4Network,
        mac: MacAddr,
        reserved: Option<Ipv4Addr>,
        requested: Option<Ipv4Addr>,
        now: UnixTime,
        listed: bool,
    ) -> Result<Ipv4Addr, AllocError> {
        self.reclaim(now);
        let p = self.pool_of_net(net).ok_or(AllocError::NoSuchSubnet(net))?;
        if let Some(r) = reserved.filter(|r| net.contains(*r)) {
            let ip = u32::from(r);
            return match self.available_to(ip, mac, now) {
                Ok(()) => Ok(self.hold(ip, mac, p, now)),
                Err(Refused::Quarantined(_)) => Err(AllocError::ReservedQuarantined(r)),
                Err(_) => {
                    let other = self.entries.get(&ip).map(|e| e.mac).unwrap_or(mac);
                    Err(AllocError::ReservedHeld(r, other))
                }
            };
        }
        if let Some(&ip) = self.by_mac.get(&(p, mac)) {
            let mine = self.entries.get(&ip).is_some_and(|e| e.mac == mac);
            if mine && self.pools[p].in_range(ip) && self.available_to(ip, mac, now).is_ok() {
                return Ok(self.hold(ip, mac, p, now));
            }
        }
        if let Some(want) = requested {
            let ip = u32::from(want);
            if self.pools[p].in_range(ip) && self.available_to(ip, mac, now).is_ok() {
                return Ok(self.hold(ip, mac, p, now));
            }
        }
        loop {
            let pool = &mut self.pools[p];
            if pool.next_fresh > u64::from(pool.end) {
                break;
            }
            // Cannot overflow: next_fresh <= end <= u32::MAX here.
            let ip = pool.next_fresh as u32;
            pool.next_fresh += 1;
            if pool.in_range(ip) && !self.entries.contains_key(&ip) {
                return Ok(self.hold(ip, mac, p, now));
            }
        }
        if let Some((_, ip)) = self.pools[p].free.first().copied() {
            return Ok(self.hold(ip, mac, p, now));
        }
        if listed {
            // Out of addresses: take the offer of an unlisted client (it can ask again).
            let taken = self
                .lowly
                .iter()
                .copied()
                .find(|ip| self.entries.get(ip).is_some_and(|e| e.pool == p));
            if let Some(ip) = taken {
                return Ok(self.hold(ip, mac, p, now));
            }
        }
        Err(AllocError::PoolExhausted(self.pools[p].range.net))
    }

    /// Bind `ip` to `mac` for `lease_secs` (a DHCPREQUEST in any client state). Refused
    /// when the address is outside our subnets or the pool, held by someone else,
    /// quarantined, or not the client's reservation.
    pub(crate) fn bind(
        &mut self,
        mac: MacAddr,
        ip: Ipv4Addr,
        reserved: Option<Ipv4Addr>,
        lease_secs: u64,
        now: UnixTime,
    ) -> Result<Lease, Refused> {
        self.reclaim(now);
        let p = self.pool_of_ip(ip).ok_or(Refused::NotOurSubnet(ip))?;
        let net = self.pools[p].range.net;
        let n = u32::from(ip);
        match reserved.filter(|r| net.contains(*r)) {
            Some(r) if r != ip => return Err(Refused::Reserved(r)),
            Some(_) => {}
            None if !self.pools[p].in_range(n) => return Err(Refused::NotInPool(ip)),
            None => {}
        }
        self.available_to(n, mac, now)?;
        let expires = now.saturating_add(lease_secs);
        self.set_state(n, mac, p, State::Bound { expires });
        self.remember(p, mac, n, now);
        self.records.push(Record {
            ip,
            mac,
            state: RecordState::Bound,
            expires,
        });
        Ok(Lease {
            ip,
            mac,
            state: LeaseState::Bound,
            expires,
        })
    }

    /// DHCPRELEASE: free `ip` if `mac` holds it. Returns whether anything changed.
    pub(crate) fn release(&mut self, mac: MacAddr, ip: Ipv4Addr, now: UnixTime) -> bool {
        self.reclaim(now);
        let n = u32::from(ip);
        match self.entries.get(&n).copied() {
            Some(e)
                if e.mac == mac
                    && matches!(e.state, State::Bound { .. } | State::Offered { .. }) =>
            {
                self.set_free(n, mac, e.pool, true, now);
                self.records.push(Record {
                    ip,
                    mac,
                    state: RecordState::Released,
                    expires: now,
                });
                true
            }
            _ => false,
        }
    }

    /// DHCPDECLINE: `mac` found `ip` in use by another host. Quarantine it and forget that
    /// the client had it, so its next DISCOVER gets another address.
    pub(crate) fn decline(&mut self, mac: MacAddr, ip: Ipv4Addr, now: UnixTime) -> bool {
        self.reclaim(now);
        let n = u32::from(ip);
        match self.entries.get(&n).copied() {
            Some(e)
                if e.mac == mac
                    && matches!(e.state, State::Bound { .. } | State::Offered { .. }) =>
            {
                let until = now + self.quarantine;
                self.set_state(n, mac, e.pool, State::Declined { until });
                if self.by_mac.get(&(e.pool, mac)) == Some(&n) {
                    self.by_mac.remove(&(e.pool, mac));
                }
                self.records.push(Record {
                    ip,
                    mac,
                    state: RecordState::Declined,
                    expires: until,
                });
                true
            }
            _ => false,
        }
    }

    /// The client took another server's offer: drop our offer in `net` (a live lease
    /// stays). Nothing durable changes.
    pub(crate) fn forget_offer(&mut self, mac: MacAddr, net: Ipv4Network, now: UnixTime) {
        self.reclaim(now);
        let Some(p) = self.pool_of_net(net) else {
            return;
        };
        if let Some(&ip) = self.by_mac.get(&(p, mac)) {
            if let Some(e) = self.entries.get(&ip).copied() {
                if e.mac == mac && matches!(e.state, State::Offered { .. }) {
                    self.set_free(ip, mac, e.pool, false, now);
                }
            }
        }
    }

    /// Replay one journal record. Records outside every configured subnet are dropped
    /// (the config changed); returns whether it was kept.
    pub(crate) fn apply(&mut self, r: &Record) -> bool {
        let Some(p) = self.pool_of_ip(r.ip) else {
            return false;
        };
        let n = u32::from(r.ip);
        match r.state {
            RecordState::Bound => {
                self.set_state(n, r.mac, p, State::Bound { expires: r.expires });
                if let Some(e) = self.entries.get_mut(&n) {
                    e.on_disk = r.expires;
                }
                self.by_mac.insert((p, r.mac), n);
            }
            RecordState::Declined => {
                self.set_state(n, r.mac, p, State::Declined { until: r.expires });
                if self.by_mac.get(&(p, r.mac)) == Some(&n) {
                    self.by_mac.remove(&(p, r.mac));
                }
            }
            RecordState::Released => {
                self.set_free(n, r.mac, p, true, r.expires);
                self.by_mac.insert((p, r.mac), n);
            }
        }
        true
    }

    /// The end of `mac`'s lease on `ip` that is known to be on disk, if it is still bound
    /// to `mac` and that end is after `now`.
    pub(crate) fn on_disk_until(
        &self,
        mac: MacAddr,
        ip: Ipv4Addr,
        now: UnixTime,
    ) -> Option<UnixTime> {
        let e = self.entries.get(&u32::from(ip))?;
        (e.mac == mac && matches!(e.state, State::Bound { .. }) && e.on_disk > now)
            .then_some(e.on_disk)
    }

    /// The binding of `ip` to `mac` until `expires` reached the disk.
    pub(crate) fn committed(&mut self, mac: MacAddr, ip: Ipv4Addr, expires: UnixTime) {
        if let Some(e) = self.entries.get_mut(&u32::from(ip)) {
            if e.mac == mac && matches!(e.state, State::Bound { .. }) {
                e.on_disk = e.on_disk.max(expires);
            }
        }
    }

    /// Durable changes made since the last call, in order.
    pub(crate) fn take_records(&mut self) -> Vec<Record> {
        std::mem::take(&mut self.records)
    }

    /// Whether there are records waiting for `take_records`.
    pub(crate) fn has_records(&self) -> bool {
        !self.records.is_empty()
    }

    /// Every durable fact, one record per address: what a compacted journal holds.
    pub(crate) fn snapshot(&self) -> Vec<Record> {
        let mut out: Vec<Record> = self
            .entries
            .iter()
            .map(|(&ip, e)| {
                let (state, expires) = match e.state {
                    State::Bound { expires } => (RecordState::Bound, expires),
                    State::Declined { until } => (RecordState::Declined, until),
                    // Offers are not durable: remember only whose address it was.
                    State::Offered { .. } => (RecordState::Released, 0),
                    State::Free { since, .. } => (RecordState::Released, since),
                };
                Record {
                    ip: Ipv4Addr::from(ip),
                    mac: e.mac,
                    state,
                    expires,
                }
            })
            .collect();
        out.sort_by_key(|r| u32::from(r.ip));
        out
    }

    fn lease_of_entry(ip: u32, e: &Entry, now: UnixTime) -> Lease {
        let (state, expires) = match e.state {
            State::Offered { until } if until > now => (LeaseState::Offered, until),
            State::Bound { expires } if expires > now => (LeaseState::Bound, expires),
            State::Declined { until } => (LeaseState::Declined, until),
            State::Offered { until } => (LeaseState::Expired, until),
            State::Bound { expires } => (LeaseState::Expired, expires),
            State::Free {
                released, since, ..
            } => (
                if released {
                    LeaseState::Released
                } else {
                    LeaseState::Expired
                },
                since,
            ),
        };
        Lease {
            ip: Ipv4Addr::from(ip),
            mac: e.mac,
            state,
            expires,
        }
    }

    /// The address `mac` holds or last held, the most recently changed first if it has
    /// several subnets (at most one per subnet).
    pub(crate) fn lease_of(&self, mac: MacAddr, now: UnixTime) -> Option<Lease> {
        let mut best: Option<Lease> = None;
        for (p, _) in self.pools.iter().enumerate() {
            if let Some(&ip) = self.by_mac.get(&(p, mac)) {
                if let Some(e) = self.entries.get(&ip).filter(|e| e.mac == mac) {
                    let l = Self::lease_of_entry(ip, e, now);
                    let better = match &best {
                        None => true,
                        Some(b) => rank(l.state) > rank(b.state),
                    };
                    if better {
                        best = Some(l);
                    }
                }
            }
        }
        best
    }

    /// The state of one address.
    pub(crate) fn lease_at(&self, ip: Ipv4Addr, now: UnixTime) -> Option<Lease> {
        let n = u32::from(ip);
        self.entries
            .get(&n)
            .map(|e| Self::lease_of_entry(n, e, now))
    }

    /// Every address with state, sorted by address.
    pub(crate) fn leases(&self, now: UnixTime) -> Vec<Lease> {
        let mut v: Vec<Lease> = self
            .entries
            .iter()
            .map(|(&ip, e)| Self::lease_of_entry(ip, e, now))
            .collect();
        v.sort_by_key(|l| u32::from(l.ip));
        v
    }
}

fn rank(s: LeaseState) -> u8 {
    match s {
        LeaseState::Bound => 4,
        LeaseState::Offered => 3,
        LeaseState::Released | LeaseState::Expired => 2,
        LeaseState::Declined => 1,
    }
}

/// A pending durability promise: await it before sending the ACK that depends on it.
#[must_use = "await the commit before answering"]
pub(crate) struct Durable(DurableInner, Option<Binding>);

/// The binding a [`Durable`] makes durable, and what of it was on disk before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Binding {
    pub(crate) mac: MacAddr,
    pub(crate) ip: Ipv4Addr,
    pub(crate) expires: UnixTime,
    /// The end of this client's lease on this address already on disk (a renewal), if
    /// any: what an ACK may still promise when the extension cannot be written.
    pub(crate) on_disk: Option<UnixTime>,
}

enum DurableInner {
    Done,
    Journal(Commit),
    /// A database commit; `AddrInUse` when another server holds the address.
    Db(tokio::sync::oneshot::Receiver<io::Result<()>>),
}

impl Durable {
    /// Nothing to wait for.
    pub(crate) fn done() -> Durable {
        Durable(DurableInner::Done, None)
    }

    /// The binding being made durable, if this is a bind.
    pub(crate) fn binding(&self) -> Option<Binding> {
        self.1
    }

    /// Whether `wait` would return at once (so the reply can be sent inline).
    pub(crate) fn is_done(&self) -> bool {
        matches!(self.0, DurableInner::Done)
    }

    /// Resolve once the change is on disk.
    pub(crate) async fn wait(self) -> io::Result<()> {
        match self.0 {
            DurableInner::Done => Ok(()),
            DurableInner::Journal(c) => c.wait().await,
            DurableInner::Db(rx) => rx
                .await
                .unwrap_or_else(|_| Err(io::Error::other("lease database writer stopped"))),
        }
    }
}

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            DurableInner::Done => "Durable::Done",
            DurableInner::Journal(_) => "Durable::Journal",
            DurableInner::Db(_) => "Durable::Db",
        })
    }
}

/// What DHCP needs from a lease store. Calls are synchronous and quick (an in-memory
/// decision); durability comes back as a [`Durable`] to await outside any lock.
pub(crate) trait LeaseStore: Send + Sync {
    /// An address to offer `mac` in `net` (see [`Allocator::offer_as`]).
    fn offer(
        &self,
        net: Ipv4Network,
        mac: MacAddr,
        reserved: Option<Ipv4Addr>,
        requested: Option<Ipv4Addr>,
        now: UnixTime,
        listed: bool,
    ) -> Result<Ipv4Addr, AllocError>;

    /// Bind `ip` to `mac`; the ACK may leave once the returned [`Durable`] resolves.
    fn bind(
        &self,
        mac: MacAddr,
        ip: Ipv4Addr,
        reserved: Option<Ipv4Addr>,
        lease_secs: u64,
        now: UnixTime,
    ) -> Result<(Lease, Durable), Refused>;

    /// DHCPRELEASE; whether anything changed.
    fn release(&self, mac: MacAddr, ip: Ipv4Addr, now: UnixTime) -> bool;

    /// DHCPDECLINE; whether anything changed.
    fn decline(&self, mac: MacAddr, ip: Ipv4Addr, now: UnixTime) -> bool;

    /// The client chose another server: drop our offer.
    fn forget_offer(&self, mac: MacAddr, net: Ipv4Network, now: UnixTime);

    /// The lease `mac` holds or last held (for the inventory and the API).
    fn lease_of(&self, mac: MacAddr, now: UnixTime) -> Option<Lease>;

    /// Every address with state, sorted by address.
    fn leases(&self, now: UnixTime) -> Vec<Lease>;

    /// The state of one address (a map lookup: TFTP asks it for every transfer).
    fn lease_at(&self, ip: Ipv4Addr, now: UnixTime) -> Option<Lease>;

    /// Resolves once everything written so far is durable (shutdown).
    fn flush(&self) -> Durable;

    /// A bind's commit succeeded: its lease end is on disk (see [`Binding::on_disk`]).
    fn committed(&self, b: &Binding);

    /// The journal's write errors and backlog, if the store has a journal (`/metrics`).
    fn journal_stats(&self) -> Option<JournalStats>;
}

struct Inner {
    alloc: Allocator,
    journal: Option<Journal>,
    /// Lines in the journal file (for the compaction threshold).
    lines: usize,
}

/// The default lease store: the allocator in memory behind a mutex, every change written
/// to an append-only journal with group commit.
///
/// The mutex orders the in-memory change and its journal append (the append is only a
/// channel send); the wait for the sync happens after the lock is released.
pub(crate) struct JournalStore {
    inner: Mutex<Inner>,
}

impl JournalStore {
    /// Open (or create) the journal at `path` and replay it into a fresh allocator.
    /// A damaged last record is set aside with a warning; a damaged record with good ones
    /// after it is an error naming the file and offset (see [`Journal::open`]). Leases
    /// outside every configured subnet are dropped with a warning. Compacts at once if the
    /// journal is already over the threshold.
    pub(crate) fn open(path: &Path, pools: Vec<PoolRange>) -> io::Result<JournalStore> {
        Self::open_with(path, Allocator::new(pools))
    }

    /// As [`JournalStore::open`], with an allocator configured by the caller.
    pub(crate) fn open_with(path: &Path, mut alloc: Allocator) -> io::Result<JournalStore> {
        let (journal, records) = Journal::open(path, |line| {
            serde_json::from_str::<Record>(line).map_err(|e| format!("not a lease record: {e}"))
        })?;
        let mut dropped = 0usize;
        for r in &records {
            if !alloc.apply(r) {
                dropped += 1;
            }
        }
        if dropped > 0 {
            tracing::warn!(path = %path.display(), leases = dropped, "leases outside every configured subnet; dropped");
        }
        tracing::info!(path = %path.display(), lines = records.len(), addresses = alloc.len(), "lease journal replayed");
        let mut inner = Inner {
            alloc,
            journal: Some(journal),
            lines: records.len(),
        };
        maybe_compact(&mut inner, dropped > 0);
        Ok(JournalStore {
            inner: Mutex::new(inner),
        })
    }

    /// A store with no journal (tests, benchmarks, or a deliberately ephemeral server).
    pub(crate) fn in_memory(pools: Vec<PoolRange>) -> JournalStore {
        Self::from_allocator(Allocator::new(pools))
    }

    pub(crate) fn from_allocator(alloc: Allocator) -> JournalStore {
        JournalStore {
            inner: Mutex::new(Inner {
                alloc,
                journal: None,
                lines: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a consistent-enough map (each operation
        // finishes its own bookkeeping before anything can panic); keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Append the allocator's pending records; the last one durable if `durable`.
fn persist(inner: &mut Inner, durable: bool) -> Durable {
    let records = inner.alloc.take_records();
    let Some(journal) = inner.journal.as_ref() else {
        return Durable::done();
    };
    let n = records.len();
    let mut out = Durable::done();
    for (i, r) in records.iter().enumerate() {
        let line = match serde_json::to_string(r) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "lease record does not serialise");
                continue;
            }
        };
        let c = journal.append(&line, durable && i + 1 == n);
        if durable && i + 1 == n {
            out = Durable(DurableInner::Journal(c), None);
        }
    }
    inner.lines += n;
    // Lines the journal had to drop (a long full disk) are superseded by a snapshot.
    let lost = journal.take_lost();
    maybe_compact(inner, lost);
    out
}

/// Replace the journal with a snapshot when it has grown well past the live state.
/// Called under the lock, so the snapshot is ordered with the appends.
fn maybe_compact(inner: &mut Inner, force: bool) {
    let live = inner.alloc.len();
    if !force && inner.lines <= COMPACT_FACTOR * live + COMPACT_SLACK {
        return;
    }
    let Some(journal) = inner.journal.as_ref() else {
        return;
    };
    let snapshot: Vec<String> = inner
        .alloc
        .snapshot()
        .iter()
        .filter_map(|r| serde_json::to_string(r).ok())
        .collect();
    tracing::debug!(
        from = inner.lines,
        to = snapshot.len(),
        "compacting lease journal"
    );
    inner.lines = snapshot.len();
    journal.compact(snapshot);
}

impl LeaseStore for JournalStore {
    fn offer(
        &self,
        net: Ipv4Network,
        mac: MacAddr,
        reserved: Option<Ipv4Addr>,
        requested: Option<Ipv4Addr>,
        now: UnixTime,
        listed: bool,
    ) -> Result<Ipv4Addr, AllocError> {
        let mut g = self.lock();
        let r = g.alloc.offer_as(net, mac, reserved, requested, now, listed);
        if g.alloc.has_records() {
            // Moving a client off an old lease is durable, but nothing waits on it.
            let _ = persist(&mut g, false);
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
        let mut g = self.lock();
        let on_disk = g.alloc.on_disk_until(mac, ip, now);
        let lease = g.alloc.bind(mac, ip, reserved, lease_secs, now)?;
        let mut d = persist(&mut g, true);
        d.1 = Some(Binding {
            mac,
            ip,
            expires: lease.expires,
            on_disk,
        });
        Ok((lease, d))
    }

    fn release(&self, mac: MacAddr, ip: Ipv4Addr, now: UnixTime) -> bool {
        let mut g = self.lock();
        let changed = g.alloc.release(mac, ip, now);
        let _ = persist(&mut g, false);
        changed
    }

    fn decline(&self, mac: MacAddr, ip: Ipv4Addr, now: UnixTime) -> bool {
        let mut g = self.lock();
        let changed = g.alloc.decline(mac, ip, now);
        let _ = persist(&mut g, false);
        changed
    }

    fn forget_offer(&self, mac: MacAddr, net: Ipv4Network, now: UnixTime) {
        self.lock().alloc.forget_offer(mac, net, now);
    }

    fn lease_of(&self, mac: MacAddr, now: UnixTime) -> Option<Lease> {
        self.lock().alloc.lease_of(mac, now)
    }

    fn lease_at(&self, ip: Ipv4Addr, now: UnixTime) -> Option<Lease> {
        self.lock().alloc.lease_at(ip, now)
    }

    fn flush(&self) -> Durable {
        match &self.lock().journal {
            Some(j) => Durable(DurableInner::Journal(j.flush()), None),
            None => Durable::done(),
        }
    }

    fn leases(&self, now: UnixTime) -> Vec<Lease> {
        self.lock().alloc.leases(now)
    }

    fn journal_stats(&self) -> Option<JournalStats> {
        self.lock().journal.as_ref().map(Journal::stats)
    }

    fn committed(&self, b: &Binding) {
        self.lock().alloc.committed(b.mac, b.ip, b.expires);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> Ipv4Network {
        "198.18.0.0/24".parse().unwrap()
    }

    fn range(start: u8, end: u8) -> PoolRange {
        PoolRange {
            net: net(),
            start: Ipv4Addr::new(198, 18, 0, start),
            end: Ipv4Addr::new(198, 18, 0, end),
            exclude: vec![Ipv4Addr::new(198, 18, 0, 1)],
        }
    }

    fn mac(n: u32) -> MacAddr {
        let b = n.to_be_bytes();
        MacAddr([0x52, 0x54, b[0], b[1], b[2], b[3]])
    }

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, last)
    }

    const T0: UnixTime = 1_700_000_000;

    #[test]
    fn a_flood_of_unlisted_offers_cannot_keep_a_listed_machine_out() {
        let mut a = Allocator::new(vec![range(100, 103)]);
        for i in 0..4 {
            a.offer_as(net(), mac(i), None, None, T0, false).unwrap();
        }
        assert!(
            a.offer_as(net(), mac(50), None, None, T0, false).is_err(),
            "exhausted"
        );
        let got = a
            .offer_as(net(), mac(99), None, None, T0 + 1, true)
            .expect("a listed machine takes an unlisted client's offer");
        let l = a.lease_of(mac(99), T0 + 1).unwrap();
        assert_eq!((l.ip, l.state), (got, LeaseState::Offered));
        // Its offer is no longer up for grabs, and bound leases never are.
        let b = a.bind(mac(99), got, None, 3600, T0 + 2).unwrap();
        assert_eq!(b.ip, got);
        let mut taken = 0;
        for i in 100..110 {
            if let Ok(ip) = a.offer_as(net(), mac(i), None, None, T0 + 3, true) {
                assert_ne!(ip, got, "a bound lease is never taken");
                a.bind(mac(i), ip, None, 3600, T0 + 3).unwrap();
                taken += 1;
            }
        }
        assert_eq!(taken, 3, "only the three unlisted offers were taken");
    }

    #[test]
    fn offers_fresh_addresses_in_order_then_exhausts() {
        let mut a = Allocator::new(vec![range(100, 102)]);
        assert_eq!(a.offer(net(), mac(1), None, None, T0), Ok(ip(100)));
        assert_eq!(a.offer(net(), mac(2), None, None, T0), Ok(ip(101)));
        assert_eq!(a.offer(net(), mac(3), None, None, T0), Ok(ip(102)));
        assert_eq!(
            a.offer(net(), mac(4), None, None, T0),
            Err(AllocError::PoolExhausted(net()))
        );
        // An offer repeated to the same client is the same address, not a new one.
        assert_eq!(a.offer(net(), mac(2), None, None, T0 + 1), Ok(ip(101)));
    }

    #[test]
    fn offer_hold_keeps_two_clients_apart_then_lapses() {
        let mut a = Allocator::new(vec![range(100, 100)]);
        assert_eq!(a.offer(net(), mac(1), None, None, T0), Ok(ip(100)));
        assert!(a.offer(net(), mac(2), None, None, T0 + 1).is_err());
        // After the hold the unrequested offer lapses and the address can go elsewhere.
        assert_eq!(
            a.offer(net(), mac(2), None, None, T0 + OFFER_HOLD_SECS + 1),
            Ok(ip(100))
        );
    }

    #[test]
    fn excluded_network_and_broadcast_addresses_are_never_offered() {
        let mut a = Allocator::new(vec![PoolRange {
            net: net(),
            start: ip(0),
            end: ip(2),
            exclude: vec![ip(1)],
        }]);
        assert_eq!(a.offer(net(), mac(1), None, None, T0), Ok(ip(2)));
        assert!(a.offer(net(), mac(2), None, None, T0).is_err());
    }

    #[test]
    fn a_returning_client_gets_its_previous_address_even_after_expiry() {
        let mut a = Allocator::new(vec![range(100, 110)]);
        let first = a.offer(net(), mac(1), None, None, T0).unwrap();
        a.bind(mac(1), first, None, 60, T0).unwrap();
        for i in 2..6 {
            let x = a.offer(net(), mac(i), None, None, T0).unwrap();
            a.bind(mac(i), x, None, 60, T0).unwrap();
        }
        // Long after expiry, the old address is still its own.
        assert_eq!(a.offer(net(), mac(1), None, None, T0 + 10_000), Ok(first));
    }

    #[test]
    fn expired_addresses_are_reused_oldest_free_first_once_fresh_ones_run_out() {
        let mut a = Allocator::new(vec![range(100, 102)]);
        for i in 0..3u8 {
            let x = a.offer(net(), mac(u32::from(i)), None, None, T0).unwrap();
            a.bind(mac(u32::from(i)), x, None, 100 + u64::from(i) * 10, T0)
                .unwrap();
        }
        assert!(a.offer(net(), mac(9), None, None, T0 + 50).is_err());
        // 100 expired first, so it is reused first.
        assert_eq!(a.offer(net(), mac(9), None, None, T0 + 500), Ok(ip(100)));
        assert_eq!(a.offer(net(), mac(10), None, None, T0 + 500), Ok(ip(101)));
        // The old owner of 100 now gets a different address.
        assert_eq!(a.offer(net(), mac(0), None, None, T0 + 500), Ok(ip(102)));
    }

    #[test]
    fn requested_address_is_honoured_when_free() {
        let mut a = Allocator::new(vec![range(100, 120)]);
        assert_eq!(a.offer(net(), mac(1), None, Some(ip(115)), T0), Ok(ip(115)));
        // Held by mac 1: mac 2 asking for it gets another.
        assert_eq!(a.offer(net(), mac(2), None, Some(ip(115)), T0), Ok(ip(100)));
        // Outside the pool: ignored.
        assert_eq!(a.offer(net(), mac(3), None, Some(ip(5)), T0), Ok(ip(101)));
    }

    #[test]
    fn reservation_wins_and_other_addresses_are_refused() {
        let mut a = Allocator::new(vec![range(100, 120)]);
        let r = ip(21);
        assert_eq!(a.offer(net(), mac(1), Some(r), None, T0), Ok(r));
        assert_eq!(a.bind(mac(1), r, Some(r), 3600, T0).unwrap().ip, r);
        assert_eq!(
            a.bind(mac(1), ip(100), Some(r), 3600, T0),
            Err(Refused::Reserved(r))
        );
        // Someone else asking for the reserved address: outside the pool.
        assert_eq!(
            a.bind(mac(2), r, None, 3600, T0),
            Err(Refused::NotInPool(r))
        );
        // A reservation in another subnet does not apply here: dynamic address.
        let other = Ipv4Addr::new(198, 19, 0, 5);
        assert_eq!(a.offer(net(), mac(3), Some(other), None, T0), Ok(ip(100)));
    }

    #[test]
    fn bind_refusals() {
        let mut a = Allocator::new(vec![range(100, 120)]);
        assert_eq!(
            a.bind(mac(1), Ipv4Addr::new(10, 0, 0, 1), None, 60, T0),
            Err(Refused::NotOurSubnet(Ipv4Addr::new(10, 0, 0, 1)))
        );
        assert_eq!(
            a.bind(mac(1), ip(50), None, 60, T0),
            Err(Refused::NotInPool(ip(50)))
        );
        assert_eq!(
            a.bind(mac(1), ip(1), None, 60, T0),
            Err(Refused::NotInPool(ip(1)))
        );
        a.bind(mac(1), ip(105), None, 60, T0).unwrap();
        assert_eq!(
            a.bind(mac(2), ip(105), None, 60, T0 + 1),
            Err(Refused::InUse(ip(105)))
        );
        // Once the lease has run out, another client may take it (init-reboot after
        // our state was lost, or a client that kept an address too long).
        assert!(a.bind(mac(2), ip(105), None, 60, T0 + 61).is_ok());
        // A free address we have no record of is granted (authoritative server).
        assert!(a.bind(mac(3), ip(110), None, 60, T0).is_ok());
    }

    #[test]
    fn renewal_extends_and_a_new_address_frees_the_old_one() {
        let mut a = Allocator::new(vec![range(100, 120)]);
        a.bind(mac(1), ip(100), None, 60, T0).unwrap();
        let l = a.bind(mac(1), ip(100), None, 60, T0 + 30).unwrap();
        assert_eq!(l.expires, T0 + 90);
        a.take_records();
        a.bind(mac(1), ip(101), None, 60, T0 + 40).unwrap();
        let recs = a.take_records();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].state, RecordState::Released);
        assert_eq!(recs[0].ip, ip(100));
        assert_eq!(
            a.lease_at(ip(100), T0 + 40).unwrap().state,
            LeaseState::Released
        );
    }

    #[test]
    fn decline_quarantines_and_the_client_moves_on() {
        let mut a = Allocator::new(vec![range(100, 101)]);
        let x = a.offer(net(), mac(1), None, None, T0).unwrap();
        a.bind(mac(1), x, None, 600, T0).unwrap();
        assert!(a.decline(mac(1), x, T0 + 1));
        let y = a.offer(net(), mac(1), None, None, T0 + 2).unwrap();
        assert_ne!(x, y);
        a.bind(mac(1), y, None, 3600, T0 + 2).unwrap();
        assert_eq!(
            a.bind(mac(2), x, None, 60, T0 + 3),
            Err(Refused::Quarantined(x))
        );
        // A decline by someone who does not hold the address changes nothing.
        assert!(!a.decline(mac(3), y, T0 + 3));
        // After the quarantine the address is back in the pool.
        assert_eq!(
            a.offer(
                net(),
                mac(4),
                None,
                None,
                T0 + 2 + DECLINE_QUARANTINE_SECS + 1
            ),
            Ok(x)
        );
    }

    #[test]
    fn reserved_address_declined_is_reported() {
        let mut a = Allocator::new(vec![range(100, 101)]);
        let r = ip(21);
        a.bind(mac(1), r, Some(r), 60, T0).unwrap();
        assert!(a.decline(mac(1), r, T0));
        assert_eq!(
            a.offer(net(), mac(1), Some(r), None, T0 + 1),
            Err(AllocError::ReservedQuarantined(r))
        );
    }

    #[test]
    fn release_frees_and_is_remembered() {
        let mut a = Allocator::new(vec![range(100, 100)]);
        a.bind(mac(1), ip(100), None, 600, T0).unwrap();
        assert!(!a.release(mac(2), ip(100), T0));
        assert!(a.release(mac(1), ip(100), T0));
        assert_eq!(a.lease_of(mac(1), T0).unwrap().state, LeaseState::Released);
        assert_eq!(a.offer(net(), mac(2), None, None, T0 + 1), Ok(ip(100)));
    }

    #[test]
    fn forget_offer_frees_an_offer_but_not_a_lease() {
        let mut a = Allocator::new(vec![range(100, 100)]);
        a.offer(net(), mac(1), None, None, T0).unwrap();
        a.forget_offer(mac(1), net(), T0);
        assert_eq!(a.offer(net(), mac(2), None, None, T0), Ok(ip(100)));
        a.bind(mac(2), ip(100), None, 600, T0).unwrap();
        a.forget_offer(mac(2), net(), T0);
        assert!(a.offer(net(), mac(3), None, None, T0).is_err());
    }

    #[test]
    fn subnets_are_separate() {
        let other: Ipv4Network = "198.18.1.0/24".parse().unwrap();
        let mut a = Allocator::new(vec![
            range(100, 100),
            PoolRange {
                net: other,
                start: Ipv4Addr::new(198, 18, 1, 100),
                end: Ipv4Addr::new(198, 18, 1, 100),
                exclude: vec![],
            },
        ]);
        assert_eq!(a.offer(net(), mac(1), None, None, T0), Ok(ip(100)));
        assert_eq!(
            a.offer(other, mac(2), None, None, T0),
            Ok(Ipv4Addr::new(198, 18, 1, 100))
        );
        assert_eq!(
            a.offer("10.0.0.0/8".parse().unwrap(), mac(3), None, None, T0),
            Err(AllocError::NoSuchSubnet("10.0.0.0/8".parse().unwrap()))
        );
    }

    /// Allocation stays cheap with a large pool: 100k clients in a /15, then all of
    /// them expire and 100k new ones reuse the addresses. A linear scan per request
    /// would take minutes here; the indexed allocator takes well under a second.
    #[test]
    fn large_pool_allocates_without_scanning() {
        let big: Ipv4Network = "198.18.0.0/15".parse().unwrap();
        let mut a = Allocator::new(vec![PoolRange {
            net: big,
            start: Ipv4Addr::new(198, 18, 0, 10),
            end: Ipv4Addr::new(198, 19, 134, 169), // 100,000 addresses
            exclude: vec![],
        }]);
        for i in 0..100_000u32 {
            let x = a.offer(big, mac(i), None, None, T0).unwrap();
            a.bind(mac(i), x, None, 60, T0).unwrap();
        }
        assert!(a.offer(big, mac(999_999), None, None, T0).is_err());
        a.take_records();
        for i in 100_000..200_000u32 {
            let x = a.offer(big, mac(i), None, None, T0 + 120).unwrap();
            a.bind(mac(i), x, None, 60, T0 + 120).unwrap();
        }
        assert_eq!(a.len(), 100_000);
    }

    #[tokio::test]
    async fn acked_leases_survive_a_kill_and_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases.journal");
        {
            let s = JournalStore::open(&path, vec![range(100, 120)]).unwrap();
            for i in 0..=20 {
                let x = s.offer(net(), mac(i), None, None, T0, false).unwrap();
                let (_, d) = s.bind(mac(i), x, None, 3600, T0).unwrap();
                d.wait().await.unwrap();
            }
            assert!(s.release(mac(3), ip(103), T0));
            s.decline(mac(4), ip(104), T0);
            // The last durable commit covers everything appended before it.
            let (_, d) = s.bind(mac(5), ip(105), None, 3600, T0 + 1).unwrap();
            d.wait().await.unwrap();
            // Dropped without flush: a kill after the ACKs.
        }
        let s = JournalStore::open(&path, vec![range(100, 120)]).unwrap();
        let l = s.lease_of(mac(7), T0 + 10).unwrap();
        assert_eq!((l.ip, l.state), (ip(107), LeaseState::Bound));
        assert_eq!(l.expires, T0 + 3600);
        assert_eq!(s.lease_of(mac(3), T0).unwrap().state, LeaseState::Released);
        assert_eq!(s.lease_at_for_test(ip(104), T0).state, LeaseState::Declined);
        assert_eq!(s.lease_of(mac(5), T0).unwrap().expires, T0 + 3601);
        // A new client does not get any of the replayed addresses.
        let x = s
            .offer(net(), mac(1000), None, None, T0 + 10, false)
            .unwrap();
        assert_eq!(x, ip(103), "the only free address is the released one");
        let y = s.offer(net(), mac(1001), None, None, T0 + 10, false);
        assert_eq!(y, Err(AllocError::PoolExhausted(net())));
    }

    #[tokio::test]
    async fn journal_is_compacted_and_still_replays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases.journal");
        {
            let s = JournalStore::open(&path, vec![range(100, 101)]).unwrap();
            // Many renewals of two leases: the journal grows, the live state does not.
            for t in 0..(COMPACT_SLACK as u64 + 100) {
                let (_, d) = s.bind(mac(1), ip(100), None, 3600, T0 + t).unwrap();
                drop(d);
                let (_, d) = s.bind(mac(2), ip(101), None, 3600, T0 + t).unwrap();
                if t % 1000 == 0 {
                    d.wait().await.unwrap();
                }
            }
            s.flush().wait().await.unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let n = text.lines().count();
        assert!(n < 1000, "journal has {n} lines after compaction");
        let s = JournalStore::open(&path, vec![range(100, 101)]).unwrap();
        let last = T0 + COMPACT_SLACK as u64 + 99;
        assert_eq!(s.lease_of(mac(1), last).unwrap().expires, last + 3600);
        assert_eq!(s.lease_of(mac(2), last).unwrap().expires, last + 3600);
    }

    const GOOD1: &str = "{\"ip\":\"198.18.0.100\",\"mac\":\"52:54:00:00:00:01\",\"state\":\"bound\",\"expires\":1800000000}\n";
    const FOREIGN: &str = "{\"ip\":\"10.1.2.3\",\"mac\":\"52:54:00:00:00:02\",\"state\":\"bound\",\"expires\":1800000000}\n";

    #[test]
    fn replay_recovers_a_damaged_tail_and_drops_foreign_subnets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases.journal");
        // The last record was cut short by a crash.
        std::fs::write(&path, format!("{GOOD1}{FOREIGN}{}", &GOOD1[..40])).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let s = JournalStore::open(&path, vec![range(100, 120)]).unwrap();
            assert_eq!(s.leases(T0).len(), 1);
            assert_eq!(s.lease_of_for_test(1).ip, ip(100));
            s.flush().wait().await.unwrap();
        });
        // Rewritten without the foreign lease; the torn record was set aside.
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1);
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| {
                let e = e.unwrap();
                e.file_name()
                    .to_string_lossy()
                    .starts_with("leases.journal.corrupt-")
                    .then(|| std::fs::read_to_string(e.path()).unwrap())
            })
            .collect();
        assert_eq!(aside, vec![GOOD1[..40].to_string()]);
    }

    #[test]
    fn a_damaged_record_in_the_middle_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases.journal");
        let text = format!("{GOOD1}not json\n{GOOD1}");
        std::fs::write(&path, &text).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let e = rt
            .block_on(async { JournalStore::open(&path, vec![range(100, 120)]) })
            .err()
            .expect("a damaged record before good ones must not be skipped");
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("byte {} (line 2)", GOOD1.len())),
            "{msg}"
        );
        assert!(msg.contains("not a lease record"), "{msg}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            text,
            "left as it was"
        );
    }

    /// What of a lease is on disk: replayed leases are, a bind is once its commit is
    /// reported, a renewal carries the end already on disk, and a release or a new holder
    /// forgets it.
    #[test]
    fn the_lease_end_on_disk_is_tracked_per_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases.journal");
        std::fs::write(&path, GOOD1).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _g = rt.enter();
        let s = JournalStore::open(&path, vec![range(100, 120)]).unwrap();
        // Replayed: on disk until its recorded end.
        let (_, d) = s.bind(mac(1), ip(100), None, 3600, T0).unwrap();
        let b = d.binding().unwrap();
        assert_eq!(b.on_disk, Some(1_800_000_000));
        assert_eq!(b.expires, T0 + 3600);
        // A new client: nothing on disk until its commit is reported.
        let x = s.offer(net(), mac(2), None, None, T0, false).unwrap();
        let (_, d) = s.bind(mac(2), x, None, 3600, T0).unwrap();
        let b2 = d.binding().unwrap();
        assert_eq!(b2.on_disk, None);
        let (_, d) = s.bind(mac(2), x, None, 3600, T0 + 10).unwrap();
        assert_eq!(d.binding().unwrap().on_disk, None, "not committed yet");
        s.committed(&b2);
        let (_, d) = s.bind(mac(2), x, None, 3600, T0 + 20).unwrap();
        assert_eq!(d.binding().unwrap().on_disk, Some(T0 + 3600));
        // Released: forgotten, also when the same client binds again.
        s.committed(&b);
        assert!(s.release(mac(1), ip(100), T0 + 30));
        let (_, d) = s.bind(mac(1), ip(100), None, 3600, T0 + 40).unwrap();
        assert_eq!(d.binding().unwrap().on_disk, None);
        // Past its end, the end on disk promises nothing.
        let (_, d) = s.bind(mac(2), x, None, 3600, T0 + 3600).unwrap();
        assert_eq!(d.binding().unwrap().on_disk, None);
        drop(d);
    }

    impl JournalStore {
        fn lease_of_for_test(&self, n: u32) -> Lease {
            self.lock().alloc.lease_of(mac(n), T0).unwrap()
        }

        fn lease_at_for_test(&self, ip: Ipv4Addr, now: UnixTime) -> Lease {
            self.lock().alloc.lease_at(ip, now).unwrap()
        }
    }
}
