//! One DHCPv6 client message in, one reply (or nothing) out. Pure: no sockets, no clock.
//!
//! RFC 8415 §18.3 server behaviour, for one link and no relays: SOLICIT → ADVERTISE
//! (preference 255: no other server needs waiting for), REQUEST, RENEW, REBIND → REPLY with
//! the address bound, CONFIRM → REPLY Success or NotOnLink, RELEASE and DECLINE → REPLY
//! Success, INFORMATION-REQUEST → REPLY with the options. Messages naming another server
//! are left to it.

use std::net::SocketAddrV6;
use std::sync::Arc;

use super::wire::{self, code, encode_ia_na, status, Message, MessageType};
use super::{mac_of_eui64, Dhcp6Event, Dhcp6Settings};
use crate::dhcp::classify::arch_from_code;
use crate::dhcp::{Arch, ClientClass, Directory};
use crate::mac::MacAddr;

/// RFC 8415 §21.8: the preference option.
const PREFERENCE: u16 = 7;
/// The enterprise number UEFI uses in its vendor class (Intel, 343).
const UEFI_ENTERPRISE: u32 = 343;

/// The result of one message.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) reply: Option<(Message, SocketAddrV6)>,
    pub(crate) event: Option<(MacAddr, Dhcp6Event)>,
    /// Why the message was ignored without an event.
    pub(crate) ignored: Option<&'static str>,
}

impl Outcome {
    fn ignore(why: &'static str) -> Outcome {
        Outcome {
            reply: None,
            event: None,
            ignored: Some(why),
        }
    }
}

/// The DHCPv6 service's decisions.
pub(crate) struct Dhcp6Server {
    settings: Dhcp6Settings,
    /// Our DUID (option 2).
    duid: Vec<u8>,
    directory: Arc<dyn Directory>,
}

/// Which machine a client is: the MAC in its DUID (DUID-LLT or DUID-LL on Ethernet, as
/// EDK2 sends), else the one in its link-local source address (EUI-64, as iPXE's
/// DUID-UUID carries none).
pub(crate) fn client_mac(m: &Message, src: &SocketAddrV6) -> Option<MacAddr> {
    let duid = m.options.get(code::CLIENT_ID)?;
    let from_duid = match duid {
        [0, 1, 0, 1, _, _, _, _, mac @ ..] | [0, 3, 0, 1, mac @ ..] => MacAddr::from_slice(mac),
        _ => None,
    };
    from_duid.or_else(|| mac_of_eui64(*src.ip()))
}

/// Vendor class (16: enterprise, then items) and user class (15: items) as strings; client
/// architectures (61: a list of 16-bit types).
pub(crate) fn classify(m: &Message) -> ClientClass {
    let vendor: Option<String> = m
        .options
        .get(code::VENDOR_CLASS)
        .and_then(|v| v.get(4..))
        .map(|items| {
            wire::class_items(items)
                .iter()
                .map(|i| String::from_utf8_lossy(i).into_owned())
                .collect::<Vec<_>>()
                .join(",")
        });
    let user: Option<String> = m.options.get(code::USER_CLASS).map(|v| {
        wire::class_items(v)
            .iter()
            .map(|i| String::from_utf8_lossy(i).into_owned())
            .collect::<Vec<_>>()
            .join(",")
    });
    let arch_code = m
        .options
        .get(code::CLIENT_ARCH)
        .and_then(|v| v.get(..2))
        .map(|b| u16::from_be_bytes([b[0], b[1]]));
    let v = vendor.as_deref().unwrap_or("");
    let known = arch_code.and_then(arch_from_code);
    let (arch, arch_fallback) = match known {
        Some((a, _)) => (a, None),
        None => (
            Arch::UefiX64,
            Some(match arch_code {
                Some(c) => format!("unknown option 61 value {c}; assuming x86-64 UEFI"),
                None => "no option 61; assuming x86-64 UEFI".into(),
            }),
        ),
    };
    ClientClass {
        pxe: v.starts_with("PXEClient"),
        http_boot: v.starts_with("HTTPClient") || known.is_some_and(|(_, http)| http),
        ipxe: user
            .as_deref()
            .is_some_and(|u| u.split(',').any(|i| i == "iPXE")),
        arch,
        arch_code,
        arch_fallback,
        vendor_class: vendor,
        user_class: user,
        uuid: None,
    }
}

impl Dhcp6Server {
    pub(crate) fn new(
        settings: Dhcp6Settings,
        duid: Vec<u8>,
        directory: Arc<dyn Directory>,
    ) -> Result<Dhcp6Server, super::Dhcp6Error> {
        settings.validate()?;
        Ok(Dhcp6Server {
            settings,
            duid,
            directory,
        })
    }

    pub(crate) fn settings(&self) -> &Dhcp6Settings {
        &self.settings
    }

    /// The boot-file URL for a network-boot client, or why there is none.
    fn boot_url(&self, class: &ClientClass, mac: MacAddr) -> Result<String, String> {
        let s = &self.settings;
        let f = &s.boot_files;
        if class.ipxe {
            return Ok(format!("{}/boot/{}.ipxe", s.http_url, mac));
        }
        let file = match class.arch {
            Arch::UefiX64 if class.http_boot => Some(&f.uefi_http),
            Arch::UefiX64 => Some(&f.uefi_x64),
            Arch::UefiIa32 => f.uefi_ia32.as_ref(),
            Arch::UefiArm64 => f.arm64.as_ref(),
            // BIOS PXE has no IPv6.
            Arch::Bios => None,
        };
        let Some(file) = file else {
            return Err(format!(
                "no boot file is configured for {} clients",
                class.arch
            ));
        };
        if class.http_boot {
            Ok(format!("{}/tftp/{}", s.http_url, file))
        } else if s.tftp {
            Ok(format!("tftp://[{}]/{}", s.server_ip, file))
        } else {
            Err("PXE over IPv6 needs TFTP (EDK2 takes only tftp:// URLs) and the config has no tftp section".into())
        }
    }

    /// Handle one message from `src` (the client's link-local address and port).
    pub(crate) fn handle(&self, m: &Message, src: SocketAddrV6) -> Outcome {
        use MessageType as T;
        let answered = matches!(
            m.msg_type,
            T::Solicit
                | T::Request
                | T::Confirm
                | T::Renew
                | T::Rebind
                | T::Release
                | T::Decline
                | T::InformationRequest
        );
        if !answered {
            return Outcome::ignore("not a client message a server answers");
        }
        let server_id = m.options.get(code::SERVER_ID);
        let ours = server_id.is_some_and(|id| id == self.duid.as_slice());
        // RFC 8415 §16: which messages must and must not name a server.
        match m.msg_type {
            T::Request | T::Renew | T::Release | T::Decline if !ours => {
                return Outcome::ignore("addressed to another DHCPv6 server")
            }
            T::Solicit | T::Confirm | T::Rebind if server_id.is_some() => {
                return Outcome::ignore("a server id where none belongs")
            }
            T::InformationRequest if server_id.is_some() && !ours => {
                return Outcome::ignore("addressed to another DHCPv6 server")
            }
            _ => {}
        }
        let Some(client_id) = m.options.get(code::CLIENT_ID) else {
            if m.msg_type != T::InformationRequest {
                return Outcome::ignore("no client id");
            }
            return Outcome::ignore(
                "information request without a client id (not a machine we can name)",
            );
        };
        let Some(mac) = client_mac(m, &src) else {
            return Outcome::ignore("no MAC in the client's DUID or link-local address");
        };
        let class = classify(m);
        let host = self.directory.lookup(mac);
        let known = host.is_some();
        let mut ev = Dhcp6Event {
            received: m.msg_type,
            sent: None,
            xid: m.xid_u32(),
            ip: None,
            boot_file: None,
            class: class.clone(),
            known,
            refusal: None,
        };

        let sent = if m.msg_type == T::Solicit {
            T::Advertise
        } else {
            T::Reply
        };
        let mut r = Message::new(sent, m.xid);
        r.options.push(code::SERVER_ID, self.duid.clone());
        r.options.push(code::CLIENT_ID, client_id.to_vec());
        if sent == T::Advertise {
            r.options.push(PREFERENCE, vec![255]);
        }
        let s = &self.settings;
        let ip = s.address_of(mac);
        let secs = u32::try_from(s.lease_time.as_secs()).unwrap_or(u32::MAX);
        let (t1, t2) = (secs / 2, secs / 5 * 4);
        match m.msg_type {
            T::Solicit | T::Request | T::Renew | T::Rebind => {
                for (i, ia) in m.ia_na.iter().enumerate() {
                    // One address per NIC: a second IA gets none.
                    let v = if i == 0 {
                        ev.ip = Some(ip);
                        encode_ia_na(ia.iaid, t1, t2, Some((ip, secs, secs)), None)
                    } else {
                        encode_ia_na(
                            ia.iaid,
                            0,
                            0,
                            None,
                            Some((status::NO_ADDRS_AVAIL, "one address per NIC")),
                        )
                    };
                    r.options.push(code::IA_NA, v);
                }
            }
            T::Confirm => {
                let on_link = m
                    .ia_na
                    .iter()
                    .flat_map(|ia| &ia.addrs)
                    .all(|a| s.prefix.contains(*a));
                let st = if on_link {
                    (status::SUCCESS, "on link")
                } else {
                    ev.refusal = Some("an address it confirmed is not on this link".into());
                    (status::NOT_ON_LINK, "not on this link")
                };
                r.options
                    .push(code::STATUS_CODE, wire::encode_status(st.0, st.1));
            }
            T::Release | T::Decline => {
                if m.msg_type == T::Decline {
                    tracing::warn!(mac = %mac, ip = %ip, "DHCPv6 DECLINE: another node uses this NIC's address");
                }
                ev.ip = m.ia_na.iter().flat_map(|ia| &ia.addrs).next().copied();
                r.options.push(
                    code::STATUS_CODE,
                    wire::encode_status(status::SUCCESS, "noted"),
                );
            }
            _ => {}
        }
        if !s.dns.is_empty() {
            r.options.push(
                code::DNS_SERVERS,
                s.dns.iter().flat_map(|a| a.octets()).collect(),
            );
        }
        let netboot = class.boots();
        let boot = matches!(
            m.msg_type,
            T::Solicit | T::Request | T::Renew | T::Rebind | T::InformationRequest
        );
        if netboot && boot {
            if !known && !self.directory.answer_unknown() {
                ev.refusal = Some(
                    "unknown machine and the inventory's policy for unknown machines is ignore"
                        .into(),
                );
            } else {
                match self.boot_url(&class, mac) {
                    Ok(url) => {
                        r.options.push(code::BOOTFILE_URL, url.clone().into_bytes());
                        if class.http_boot {
                            // UEFI HTTP boot takes an offer only with its class echoed.
                            let mut v = UEFI_ENTERPRISE.to_be_bytes().to_vec();
                            v.extend_from_slice(&10u16.to_be_bytes());
                            v.extend_from_slice(b"HTTPClient");
                            r.options.push(code::VENDOR_CLASS, v);
                        }
                        ev.boot_file = Some(url);
                    }
                    Err(why) => {
                        tracing::warn!(mac = %mac, arch = %class.arch, reason = %why, "DHCPv6: no boot file");
                        ev.refusal = Some(why);
                    }
                }
            }
        }
        ev.sent = Some(sent);
        Outcome {
            reply: Some((r, src)),
            event: Some((mac, ev)),
            ignored: None,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::wire::decode;
    use super::super::wire::tests::{message_bytes, ovmf_solicit};
    use super::*;
    use crate::dhcp::{BootFiles, Host};
    use std::net::Ipv6Addr;
    use std::time::Duration;

    pub(crate) fn settings() -> Dhcp6Settings {
        Dhcp6Settings {
            interface: "br0".into(),
            server_ip: "fd00:5ce1::1".parse().unwrap(),
            prefix: "fd00:5ce1::/64".parse().unwrap(),
            lease_time: Duration::from_secs(3600),
            dns: vec![],
            http_url: "http://[fd00:5ce1::1]:8080".into(),
            tftp: true,
            boot_files: BootFiles::default(),
        }
    }

    struct Dir(bool);
    impl Directory for Dir {
        fn lookup(&self, mac: MacAddr) -> Option<Host> {
            (mac == MAC).then(|| Host {
                hostname: "h".into(),
                ..Default::default()
            })
        }
        fn answer_unknown(&self) -> bool {
            self.0
        }
    }

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0x5e, 0, 0x66]);
    const DUID: [u8; 10] = [0, 3, 0, 1, 0x02, 0, 0, 0, 0, 1];

    fn server(unknown: bool) -> Dhcp6Server {
        Dhcp6Server::new(settings(), DUID.to_vec(), Arc::new(Dir(unknown))).unwrap()
    }

    fn src() -> SocketAddrV6 {
        SocketAddrV6::new("fe80::5054:ff:fe5e:66".parse().unwrap(), 546, 0, 3)
    }

    fn url(m: &Message) -> Option<String> {
        m.options
            .get(code::BOOTFILE_URL)
            .map(|v| String::from_utf8(v.to_vec()).unwrap())
    }

    /// What OVMF's PXE gets: an ADVERTISE with its address, preference 255 and a tftp://
    /// URL, to the link-local address and port it came from; dhcproto agrees.
    #[test]
    fn ovmf_pxe_gets_an_address_and_a_tftp_url() {
        let m = decode(&ovmf_solicit(MAC.0, "PXEClient:Arch:00007:UNDI:003016")).unwrap();
        let o = server(false).handle(&m, src());
        let (r, to) = o.reply.unwrap();
        assert_eq!(to, src());
        assert_eq!(r.msg_type, MessageType::Advertise);
        assert_eq!(r.xid, m.xid);
        assert_eq!(
            url(&r).as_deref(),
            Some("tftp://[fd00:5ce1::1]/snponly.efi")
        );
        let (mac, ev) = o.event.unwrap();
        assert_eq!(mac, MAC);
        assert_eq!(ev.ip, Some("fd00:5ce1::5054:ff:fe5e:66".parse().unwrap()));
        assert!(ev.class.pxe && !ev.class.http_boot);
        assert_eq!(ev.class.arch, Arch::UefiX64);

        use dhcproto::{v6, Decodable};
        let bytes = r.encode();
        let d = v6::Message::decode(&mut dhcproto::Decoder::new(&bytes)).unwrap();
        assert_eq!(d.msg_type(), v6::MessageType::Advertise);
        let mut have_ia = false;
        for o in d.opts().iter() {
            match o {
                v6::DhcpOption::IANA(ia) => {
                    assert_eq!(ia.id, m.ia_na[0].iaid);
                    assert_eq!((ia.t1, ia.t2), (1800, 2880));
                    have_ia = true;
                }
                v6::DhcpOption::ServerId(id) => assert_eq!(id, &DUID.to_vec()),
                v6::DhcpOption::Preference(p) => assert_eq!(*p, 255),
                _ => {}
            }
        }
        assert!(have_ia, "{d:?}");

        // The REQUEST that follows, naming us, gets a REPLY with the same address.
        let mut req = m.clone();
        req.msg_type = MessageType::Request;
        req.options.push(code::SERVER_ID, DUID.to_vec());
        let o = server(false).handle(&req, src());
        let (r, _) = o.reply.unwrap();
        assert_eq!(r.msg_type, MessageType::Reply);
        assert_eq!(
            decode(&r.encode()).unwrap().ia_na[0].addrs,
            vec!["fd00:5ce1::5054:ff:fe5e:66".parse::<Ipv6Addr>().unwrap()]
        );
    }

    #[test]
    fn http_boot_gets_an_http_url_and_its_class_echoed() {
        let m = decode(&ovmf_solicit(MAC.0, "HTTPClient:Arch:00016:UNDI:003016")).unwrap();
        let (r, _) = server(false).handle(&m, src()).reply.unwrap();
        assert_eq!(
            url(&r).as_deref(),
            Some("http://[fd00:5ce1::1]:8080/tftp/snponly.efi")
        );
        let vc = r.options.get(code::VENDOR_CLASS).unwrap();
        assert_eq!(&vc[..4], &343u32.to_be_bytes());
        assert_eq!(&vc[6..], b"HTTPClient");
    }

    #[test]
    fn ipxe_gets_its_boot_script() {
        let duid = [
            0u8, 4, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
        ];
        let ia = encode_ia_na(1, 0, 0, None, None);
        let b = message_bytes(
            1,
            [1, 2, 3],
            &[
                (code::CLIENT_ID, &duid),
                (code::IA_NA, &ia),
                (code::USER_CLASS, &[0, 4, b'i', b'P', b'X', b'E']),
                (code::CLIENT_ARCH, &[0, 7]),
            ],
        );
        let m = decode(&b).unwrap();
        // iPXE's DUID-UUID names no MAC: the link-local address does.
        let o = server(false).handle(&m, src());
        let (r, _) = o.reply.unwrap();
        assert_eq!(
            url(&r).as_deref(),
            Some("http://[fd00:5ce1::1]:8080/boot/52:54:00:5e:00:66.ipxe")
        );
        assert_eq!(o.event.unwrap().0, MAC);
    }

    #[test]
    fn unknown_machines_under_ignore_get_an_address_and_no_boot_file() {
        let other = [0x52, 0x54, 0, 0x5e, 0, 0x99];
        let m = decode(&ovmf_solicit(other, "PXEClient:Arch:00007:UNDI:003016")).unwrap();
        let o = server(false).handle(&m, src());
        let (r, _) = o.reply.unwrap();
        assert!(url(&r).is_none());
        assert_eq!(r.ia_na_count(), 1);
        let ev = o.event.unwrap().1;
        assert!(ev.refusal.unwrap().contains("unknown machine"));
        // Under discover they boot.
        let (r, _) = server(true).handle(&m, src()).reply.unwrap();
        assert!(url(&r).is_some());
    }

    #[test]
    fn messages_for_other_servers_and_without_ids_are_left_alone() {
        let m = decode(&ovmf_solicit(MAC.0, "PXEClient")).unwrap();
        let mut req = m.clone();
        req.msg_type = MessageType::Request;
        req.options
            .push(code::SERVER_ID, vec![0, 3, 0, 1, 9, 9, 9, 9, 9, 9]);
        assert!(server(false).handle(&req, src()).reply.is_none());
        let mut sol = m.clone();
        sol.options.0.retain(|(c, _)| *c != code::CLIENT_ID);
        assert!(server(false).handle(&sol, src()).reply.is_none());
        let mut adv = m;
        adv.msg_type = MessageType::Advertise;
        assert!(server(false).handle(&adv, src()).reply.is_none());
    }

    #[test]
    fn confirm_says_whether_the_address_is_on_this_link() {
        let ia_on = encode_ia_na(
            1,
            0,
            0,
            Some(("fd00:5ce1::5054:ff:fe5e:66".parse().unwrap(), 0, 0)),
            None,
        );
        let ia_off = encode_ia_na(1, 0, 0, Some(("fd00:1::5".parse().unwrap(), 0, 0)), None);
        for (ia, want) in [(ia_on, status::SUCCESS), (ia_off, status::NOT_ON_LINK)] {
            let b = message_bytes(
                4,
                [0, 0, 9],
                &[
                    (code::CLIENT_ID, &[0, 3, 0, 1, 0x52, 0x54, 0, 0x5e, 0, 0x66]),
                    (code::IA_NA, &ia),
                ],
            );
            let (r, _) = server(false)
                .handle(&decode(&b).unwrap(), src())
                .reply
                .unwrap();
            let st = r.options.get(code::STATUS_CODE).unwrap();
            assert_eq!(u16::from_be_bytes([st[0], st[1]]), want);
        }
    }

    #[test]
    fn pxe_without_tftp_is_refused_with_the_reason() {
        let mut s = settings();
        s.tftp = false;
        let srv = Dhcp6Server::new(s, DUID.to_vec(), Arc::new(Dir(false))).unwrap();
        let m = decode(&ovmf_solicit(MAC.0, "PXEClient:Arch:00007:UNDI:003016")).unwrap();
        let o = srv.handle(&m, src());
        assert!(o.event.unwrap().1.refusal.unwrap().contains("needs TFTP"));
    }

    impl Message {
        fn ia_na_count(&self) -> usize {
            self.options.all(code::IA_NA).count()
        }
    }
}
