//! Bounds per client address, given back when the work ends: HTTP connections and TFTP
//! transfers. A slot is a client's (address, port); one address holds at most `max` of
//! them, and a port that already holds one is told so (for TFTP, a request resent while
//! its transfer runs).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

/// The slots taken, by client address: the source ports holding them.
#[derive(Default)]
pub(crate) struct PerClient(Mutex<HashMap<IpAddr, Vec<u16>>>);

/// A taken slot, given back when dropped.
pub(crate) struct Slot {
    table: Arc<PerClient>,
    peer: SocketAddr,
}

/// Why no slot was taken.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NoSlot {
    /// This address and port already hold one.
    Held,
    /// The address holds its most slots.
    Full,
}

impl PerClient {
    pub(crate) fn take(
        table: &Arc<PerClient>,
        peer: SocketAddr,
        max: usize,
    ) -> Result<Slot, NoSlot> {
        let mut m = table.0.lock().unwrap_or_else(|e| e.into_inner());
        let ports = m.entry(peer.ip()).or_default();
        if ports.contains(&peer.port()) {
            return Err(NoSlot::Held);
        }
        if ports.len() >= max {
            return Err(NoSlot::Full);
        }
        ports.push(peer.port());
        Ok(Slot {
            table: table.clone(),
            peer,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self.table.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ports) = m.get_mut(&self.peer.ip()) {
            ports.retain(|&p| p != self.peer.port());
            if ports.is_empty() {
                m.remove(&self.peer.ip());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_client_slots_are_bounded_and_released() {
        let t = Arc::new(PerClient::default());
        let at = |ip: &str, port| SocketAddr::new(ip.parse().unwrap(), port);
        let a = PerClient::take(&t, at("198.18.0.7", 1), 2).unwrap();
        let _b = PerClient::take(&t, at("198.18.0.7", 2), 2).unwrap();
        assert_eq!(
            PerClient::take(&t, at("198.18.0.7", 3), 2).err(),
            Some(NoSlot::Full)
        );
        assert!(PerClient::take(&t, at("198.18.0.8", 1), 2).is_ok());
        assert_eq!(
            PerClient::take(&t, at("198.18.0.7", 2), 9).err(),
            Some(NoSlot::Held)
        );
        drop(a);
        assert!(PerClient::take(&t, at("198.18.0.7", 3), 2).is_ok());
    }
}
