//! Rate limits for DHCP requests: per client MAC and per relay (giaddr), in fixed windows.
//!
//! A firmware boot sends a few dozen packets a minute at most (PXE, iPXE, the stem cell,
//! the installed system); a client or a relay far above that is broken or hostile, and
//! answering it costs journal writes and pool addresses that real machines need. Requests
//! over a limit are dropped unanswered (counted), like any packet not for us; the client's
//! own retries carry on once the window turns. The tables are bounded: past
//! [`TRACKED_MAX`] distinct clients in one window, new ones are not tracked (a flood of
//! invented MACs is then bounded by the relay limit and by the pool, not by memory).

use std::collections::HashMap;
use std::net::Ipv4Addr;

use crate::leases::UnixTime;
use crate::mac::MacAddr;

/// The length of one window, in seconds.
pub(crate) const WINDOW_SECS: u64 = 10;
/// Requests one MAC may make in a window.
pub(crate) const PER_CLIENT: u32 = 40;
/// Requests one relay may forward in a window (a rack's boot storm fits easily).
pub(crate) const PER_RELAY: u32 = 50_000;
/// Distinct clients tracked in one window.
pub(crate) const TRACKED_MAX: usize = 100_000;

/// Why a request was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limited {
    Client,
    Relay,
}

#[derive(Debug, Default)]
pub(crate) struct Limiter {
    window: UnixTime,
    clients: HashMap<MacAddr, u32>,
    relays: HashMap<Ipv4Addr, u32>,
}

impl Limiter {
    /// Count one request from `mac` (through `relay`, if relayed) at `now`.
    pub(crate) fn check(
        &mut self,
        mac: MacAddr,
        relay: Option<Ipv4Addr>,
        now: UnixTime,
    ) -> Result<(), Limited> {
        let window = now / WINDOW_SECS;
        if window != self.window {
            self.window = window;
            self.clients.clear();
            self.relays.clear();
        }
        if let Some(r) = relay {
            let n = self.relays.entry(r).or_default();
            *n += 1;
            if *n > PER_RELAY {
                return Err(Limited::Relay);
            }
        }
        if self.clients.len() >= TRACKED_MAX && !self.clients.contains_key(&mac) {
            return Ok(());
        }
        let n = self.clients.entry(mac).or_default();
        *n += 1;
        if *n > PER_CLIENT {
            return Err(Limited::Client);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u32) -> MacAddr {
        let b = n.to_be_bytes();
        MacAddr([0x52, 0x54, b[0], b[1], b[2], b[3]])
    }

    #[test]
    fn a_chatty_client_is_limited_until_the_window_turns() {
        let mut l = Limiter::default();
        for _ in 0..PER_CLIENT {
            assert_eq!(l.check(mac(1), None, 100), Ok(()));
        }
        assert_eq!(l.check(mac(1), None, 101), Err(Limited::Client));
        assert_eq!(l.check(mac(2), None, 101), Ok(()), "others are not");
        assert_eq!(l.check(mac(1), None, 110), Ok(()), "a new window");
    }

    #[test]
    fn a_relay_is_limited_and_memory_stays_bounded_under_a_flood() {
        let mut l = Limiter::default();
        let relay = Some(Ipv4Addr::new(198, 18, 1, 1));
        let mut refused = 0;
        for i in 0..(PER_RELAY + 10) {
            if l.check(mac(i), relay, 200).is_err() {
                refused += 1;
            }
        }
        assert_eq!(refused, 10);
        assert!(l.clients.len() <= TRACKED_MAX);
    }
}
