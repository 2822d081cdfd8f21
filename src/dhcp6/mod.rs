//! DHCPv6 for network boot over IPv6 (RFC 8415, RFC 5970): an authoritative DHCPv6 server
//! for one /64 on the configured interface that gives every client an address and
//! network-boot clients their boot-file URL (option 59).
//!
//! What UEFI firmware does over IPv6 (EDK2's OVMF, captured on a real link; docs/firmware.md
//! "IPv6 (DHCPv6)"): PXE sends a SOLICIT to ff02::1:2 with an IA_NA, option 61 (arch),
//! option 62 (UNDI), vendor class "PXEClient:…" and an option request for 59, 60, 23 and
//! 16; it needs an address in the ADVERTISE and a `tftp://[addr]/file` URL, then REQUESTs
//! and fetches the file over TFTP on IPv6. HTTP boot sends the same with "HTTPClient" and
//! wants an `http://` URL and the vendor class echoed. iPXE asks with user class "iPXE".
//!
//! Addresses are computed, not allocated: a NIC always gets the modified EUI-64 address of
//! its MAC in the configured /64 (the address SLAAC would give it). Nothing is stored, so
//! nothing can be lost: after a restart every machine gets the same address again, and
//! TFTP transfers from that address are attributed to the machine by its MAC.
//!
//! Only authoritative: a DHCPv6 "proxy" beside a site's DHCPv6 server is not offered (the
//! config refuses `dhcp.ipv6` in proxy mode; docs/firmware.md says why).
//!
//! Layout: [`wire`] decodes and encodes; [`decide`] turns one message into a reply or
//! nothing (pure); [`serve`] is the socket loop on UDP port 547.

pub(crate) mod decide;
pub(crate) mod serve;
pub(crate) mod wire;

use std::net::Ipv6Addr;
use std::time::Duration;

use ipnetwork::Ipv6Network;
use serde::Serialize;

use crate::dhcp::{BootFiles, ClientClass};
use crate::mac::MacAddr;

pub(crate) use decide::Dhcp6Server;
pub(crate) use serve::{bind, serve};
pub(crate) use wire::MessageType;

/// The DHCPv6 server port (RFC 8415 §7.2).
pub(crate) const SERVER_PORT: u16 = 547;
/// All_DHCP_Relay_Agents_and_Servers (RFC 8415 §7.1).
pub(crate) const ALL_SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);

/// Everything the DHCPv6 service needs, as plain values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dhcp6Settings {
    /// The one interface DHCPv6 answers on.
    pub(crate) interface: String,
    /// Our address on `interface`: the TFTP server in `tftp://` URLs, and HTTP's host.
    pub(crate) server_ip: Ipv6Addr,
    /// The /64 addresses are handed out in.
    pub(crate) prefix: Ipv6Network,
    pub(crate) lease_time: Duration,
    pub(crate) dns: Vec<Ipv6Addr>,
    /// What machines are told for HTTP over IPv6, e.g. "http://[fd00:5ce1::1]:8080".
    pub(crate) http_url: String,
    /// Whether TFTP answers on `server_ip` (PXE clients need it: EDK2 takes only tftp://).
    pub(crate) tftp: bool,
    pub(crate) boot_files: BootFiles,
}

/// Why the settings cannot run (the config validator says this with file positions).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Dhcp6Error {
    #[error("invalid DHCPv6 settings: {0}")]
    Settings(String),
    #[error("cannot bind UDP port {port} on interface {interface} for DHCPv6: {source}")]
    Bind {
        interface: String,
        port: u16,
        source: std::io::Error,
    },
}

impl Dhcp6Settings {
    pub(crate) fn validate(&self) -> Result<(), Dhcp6Error> {
        let bad = |m: String| Err(Dhcp6Error::Settings(m));
        if self.interface.trim().is_empty() {
            return bad(
                "no interface: DHCPv6 answers only on an interface the config names".into(),
            );
        }
        if self.prefix.prefix() != 64 {
            return bad(format!(
                "prefix {} is not a /64: addresses are the NICs' EUI-64 interface ids in one /64",
                self.prefix
            ));
        }
        if !self.prefix.contains(self.server_ip) {
            return bad(format!(
                "server_ip {} is not inside prefix {}",
                self.server_ip, self.prefix
            ));
        }
        if self.lease_time < Duration::from_secs(60) {
            return bad(format!(
                "lease time {:?} is under a minute",
                self.lease_time
            ));
        }
        Ok(())
    }

    /// The address a NIC gets: its modified EUI-64 interface id in the prefix.
    pub(crate) fn address_of(&self, mac: MacAddr) -> Ipv6Addr {
        let mut o = self.prefix.network().octets();
        o[8..].copy_from_slice(&eui64(mac));
        Ipv6Addr::from(o)
    }
}

/// RFC 4291 appendix A: the modified EUI-64 interface id of a MAC.
pub(crate) fn eui64(mac: MacAddr) -> [u8; 8] {
    let m = mac.0;
    [m[0] ^ 0x02, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]]
}

/// The MAC inside a modified EUI-64 interface id (link-local addresses, and the addresses
/// this server hands out), if the address has one.
pub(crate) fn mac_of_eui64(ip: Ipv6Addr) -> Option<MacAddr> {
    let o = ip.octets();
    (o[11] == 0xff && o[12] == 0xfe)
        .then(|| MacAddr([o[8] ^ 0x02, o[9], o[10], o[13], o[14], o[15]]))
}

/// What happened with one client message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Dhcp6Event {
    pub(crate) received: MessageType,
    pub(crate) sent: Option<MessageType>,
    pub(crate) xid: u32,
    /// The address advertised or bound.
    pub(crate) ip: Option<Ipv6Addr>,
    /// The boot-file URL given.
    pub(crate) boot_file: Option<String>,
    pub(crate) class: ClientClass,
    pub(crate) known: bool,
    /// Why the client got no reply, no address or no boot file.
    pub(crate) refusal: Option<String>,
}

/// Where DHCPv6 reports what it did (the main crate's machine events); must not block.
pub(crate) trait Dhcp6Observer: Send + Sync {
    fn event(&self, mac: MacAddr, ev: Dhcp6Event);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nics_address_is_its_eui64_in_the_prefix_and_back() {
        let s = decide::tests::settings();
        let mac: MacAddr = "52:54:00:5e:00:66".parse().unwrap();
        let a = s.address_of(mac);
        assert_eq!(a, "fd00:5ce1::5054:ff:fe5e:66".parse::<Ipv6Addr>().unwrap());
        assert_eq!(mac_of_eui64(a), Some(mac));
        // The same as the NIC's own link-local interface id (what OVMF sent from).
        assert_eq!(
            mac_of_eui64("fe80::5054:ff:fe5e:66".parse().unwrap()),
            Some(mac)
        );
        assert_eq!(mac_of_eui64("fd00:5ce1::1".parse().unwrap()), None);
    }

    #[test]
    fn settings_say_what_is_wrong() {
        let mut s = decide::tests::settings();
        assert!(s.validate().is_ok());
        s.prefix = "fd00:5ce1::/48".parse().unwrap();
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("is not a /64"));
        s = decide::tests::settings();
        s.server_ip = "fd00:1::1".parse().unwrap();
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("server_ip fd00:1::1 is not inside prefix fd00:5ce1::/64"));
        s = decide::tests::settings();
        s.interface = String::new();
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("no interface"));
    }
}
