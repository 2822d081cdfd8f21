//! The DHCPv4 wire format: decode a BOOTREQUEST, encode a BOOTREPLY (RFC 2131 §2,
//! RFC 2132 options, RFC 3396 long options, RFC 2132 §9.3 option overload).
//!
//! Why not `dhcproto`'s decoder: dhcproto 0.15 stops reading options at the first one it
//! cannot parse and silently drops every option after it (`DhcpOptions::decode` loops on
//! `while let Ok(..)`); a firmware that sends option 93 with one byte instead of two
//! would lose its option 60 and 77 too. Here options are kept as raw bytes and each
//! consumer checks the length of what it reads, so one bad option costs only itself.
//! The encoder puts option 53 first (some PXE ROMs expect it) and pads replies to the
//! 300-byte BOOTP minimum (RFC 1542 §3.3). dhcproto stays in the tests as an independent
//! decoder of what we send.

use std::net::Ipv4Addr;

use serde::Serialize;

pub(crate) const BOOTREQUEST: u8 = 1;
pub(crate) const BOOTREPLY: u8 = 2;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// Fixed BOOTP header before the magic cookie.
const HEADER_LEN: usize = 236;
/// RFC 1542 §3.3: some relays and old clients drop shorter BOOTP messages.
const MIN_LEN: usize = 300;
pub(crate) const FLAG_BROADCAST: u16 = 0x8000;

/// Option codes used here.
pub(crate) mod code {
    pub(crate) const PAD: u8 = 0;
    pub(crate) const SUBNET_MASK: u8 = 1;
    pub(crate) const ROUTER: u8 = 3;
    pub(crate) const DNS: u8 = 6;
    pub(crate) const HOSTNAME: u8 = 12;
    pub(crate) const DOMAIN_NAME: u8 = 15;
    pub(crate) const VENDOR_SPECIFIC: u8 = 43;
    pub(crate) const REQUESTED_IP: u8 = 50;
    pub(crate) const LEASE_TIME: u8 = 51;
    pub(crate) const OVERLOAD: u8 = 52;
    pub(crate) const MESSAGE_TYPE: u8 = 53;
    pub(crate) const SERVER_ID: u8 = 54;
    pub(crate) const MESSAGE: u8 = 56;
    pub(crate) const RENEWAL_TIME: u8 = 58;
    pub(crate) const REBINDING_TIME: u8 = 59;
    pub(crate) const VENDOR_CLASS: u8 = 60;
    pub(crate) const TFTP_SERVER_NAME: u8 = 66;
    pub(crate) const BOOTFILE_NAME: u8 = 67;
    pub(crate) const USER_CLASS: u8 = 77;
    pub(crate) const RELAY_AGENT_INFO: u8 = 82;
    pub(crate) const CLIENT_ARCH: u8 = 93;
    pub(crate) const CLIENT_UUID: u8 = 97;
    pub(crate) const IPXE_ENCAP: u8 = 175;
    pub(crate) const END: u8 = 255;
}

/// DHCP message types (option 53, RFC 2132 §9.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum MessageType {
    Discover,
    Offer,
    Request,
    Decline,
    Ack,
    Nak,
    Release,
    Inform,
    Other(u8),
}

impl MessageType {
    pub(crate) fn from_u8(b: u8) -> MessageType {
        match b {
            1 => MessageType::Discover,
            2 => MessageType::Offer,
            3 => MessageType::Request,
            4 => MessageType::Decline,
            5 => MessageType::Ack,
            6 => MessageType::Nak,
            7 => MessageType::Release,
            8 => MessageType::Inform,
            n => MessageType::Other(n),
        }
    }

    pub(crate) fn to_u8(self) -> u8 {
        match self {
            MessageType::Discover => 1,
            MessageType::Offer => 2,
            MessageType::Request => 3,
            MessageType::Decline => 4,
            MessageType::Ack => 5,
            MessageType::Nak => 6,
            MessageType::Release => 7,
            MessageType::Inform => 8,
            MessageType::Other(n) => n,
        }
    }
}

impl std::fmt::Display for MessageType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MessageType::Other(n) => write!(f, "DHCP message type {n}"),
            m => write!(f, "DHCP{}", format!("{m:?}").to_uppercase()),
        }
    }
}

/// Options as raw bytes, in the order first seen; an option split over several
/// instances is concatenated (RFC 3396).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Options(Vec<(u8, Vec<u8>)>);

impl Options {
    pub(crate) fn get(&self, code: u8) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_slice())
    }

    pub(crate) fn contains(&self, code: u8) -> bool {
        self.0.iter().any(|(c, _)| *c == code)
    }

    /// An option that must hold exactly one IPv4 address.
    pub(crate) fn ipv4(&self, code: u8) -> Option<Ipv4Addr> {
        let b: [u8; 4] = self.get(code)?.try_into().ok()?;
        Some(Ipv4Addr::from(b))
    }

    pub(crate) fn message_type(&self) -> Option<MessageType> {
        match self.get(code::MESSAGE_TYPE)? {
            [b] => Some(MessageType::from_u8(*b)),
            _ => None,
        }
    }

    /// Every option in the order first seen (the fuzz targets compare decoders with it).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u8, &[u8])> {
        self.0.iter().map(|(c, v)| (*c, v.as_slice()))
    }

    fn append(&mut self, code: u8, data: &[u8]) {
        match self.0.iter_mut().find(|(c, _)| *c == code) {
            Some((_, v)) => v.extend_from_slice(data),
            None => self.0.push((code, data.to_vec())),
        }
    }

    /// Parse an options area. Returns false if an option ran past the end (the options
    /// before it are kept).
    fn parse_area(&mut self, mut b: &[u8]) -> bool {
        loop {
            match b {
                [] => return true,
                [code::END, ..] => return true,
                [code::PAD, rest @ ..] => b = rest,
                [c, len, rest @ ..] => {
                    let len = usize::from(*len);
                    if rest.len() < len {
                        return false;
                    }
                    self.append(*c, &rest[..len]);
                    b = &rest[len..];
                }
                [_] => return false,
            }
        }
    }
}

/// A received DHCP message (the fields a server reads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Packet {
    pub(crate) op: u8,
    pub(crate) htype: u8,
    pub(crate) hlen: u8,
    pub(crate) hops: u8,
    pub(crate) xid: u32,
    pub(crate) secs: u16,
    pub(crate) flags: u16,
    pub(crate) ciaddr: Ipv4Addr,
    pub(crate) yiaddr: Ipv4Addr,
    pub(crate) siaddr: Ipv4Addr,
    pub(crate) giaddr: Ipv4Addr,
    pub(crate) chaddr: [u8; 16],
    pub(crate) options: Options,
    /// An option ran past the end of the packet; the ones before it were kept.
    pub(crate) truncated: bool,
}

/// Why bytes are not a DHCP message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("{0} bytes is too short for a BOOTP header")]
    TooShort(usize),
    #[error("no DHCP magic cookie (plain BOOTP)")]
    NoMagicCookie,
}

fn ip_at(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

/// Decode a DHCP message. Only the fixed header and the magic cookie are required;
/// options are checked by whoever reads them.
pub(crate) fn decode(b: &[u8]) -> Result<Packet, DecodeError> {
    if b.len() < HEADER_LEN + MAGIC.len() {
        return Err(DecodeError::TooShort(b.len()));
    }
    if b[HEADER_LEN..HEADER_LEN + 4] != MAGIC {
        return Err(DecodeError::NoMagicCookie);
    }
    let mut chaddr = [0u8; 16];
    chaddr.copy_from_slice(&b[28..44]);
    let mut options = Options::default();
    let mut complete = options.parse_area(&b[HEADER_LEN + 4..]);
    // RFC 2132 §9.3: the file (1) and sname (2) fields may carry more options.
    if let Some(&[overload]) = options.get(code::OVERLOAD) {
        if overload & 1 != 0 {
            complete &= options.parse_area(&b[108..236]);
        }
        if overload & 2 != 0 {
            complete &= options.parse_area(&b[44..108]);
        }
    }
    Ok(Packet {
        op: b[0],
        htype: b[1],
        hlen: b[2],
        hops: b[3],
        xid: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        secs: u16::from_be_bytes([b[8], b[9]]),
        flags: u16::from_be_bytes([b[10], b[11]]),
        ciaddr: ip_at(b, 12),
        yiaddr: ip_at(b, 16),
        siaddr: ip_at(b, 20),
        giaddr: ip_at(b, 24),
        chaddr,
        options,
        truncated: !complete,
    })
}

/// A BOOTREPLY under construction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) xid: u32,
    pub(crate) flags: u16,
    pub(crate) htype: u8,
    pub(crate) hlen: u8,
    pub(crate) ciaddr: Ipv4Addr,
    pub(crate) yiaddr: Ipv4Addr,
    pub(crate) siaddr: Ipv4Addr,
    pub(crate) giaddr: Ipv4Addr,
    pub(crate) chaddr: [u8; 16],
    pub(crate) sname: String,
    pub(crate) file: String,
    options: Vec<(u8, Vec<u8>)>,
}

impl Reply {
    /// A reply to `req` of type `msg`: xid, flags, giaddr and chaddr copied; option 53 set.
    pub(crate) fn to(req: &Packet, msg: MessageType) -> Reply {
        let mut r = Reply {
            xid: req.xid,
            flags: req.flags,
            htype: req.htype,
            hlen: req.hlen,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: req.giaddr,
            chaddr: req.chaddr,
            sname: String::new(),
            file: String::new(),
            options: Vec::with_capacity(16),
        };
        r.set(code::MESSAGE_TYPE, vec![msg.to_u8()]);
        r
    }

    /// This ACK turned into a DHCPNAK saying `reason` (RFC 2131 table 3: no address, no
    /// parameters; the server identifier and relay information kept), for when the lease
    /// it announced could not be committed because another server holds the address.
    pub(crate) fn into_nak(mut self, reason: &str) -> Reply {
        self.options
            .retain(|(c, _)| matches!(*c, code::SERVER_ID | code::RELAY_AGENT_INFO));
        self.options
            .insert(0, (code::MESSAGE_TYPE, vec![MessageType::Nak.to_u8()]));
        self.options
            .push((code::MESSAGE, reason.as_bytes().to_vec()));
        self.ciaddr = Ipv4Addr::UNSPECIFIED;
        self.yiaddr = Ipv4Addr::UNSPECIFIED;
        self.siaddr = Ipv4Addr::UNSPECIFIED;
        self.sname.clear();
        self.file.clear();
        if !self.giaddr.is_unspecified() {
            // RFC 2131 §4.3.2: the relay must broadcast a NAK.
            self.flags |= FLAG_BROADCAST;
        }
        self
    }

    /// Set an option (replacing an earlier value of the same code).
    pub(crate) fn set(&mut self, code: u8, data: Vec<u8>) {
        match self.options.iter_mut().find(|(c, _)| *c == code) {
            Some((_, v)) => *v = data,
            None => self.options.push((code, data)),
        }
    }

    pub(crate) fn set_ip(&mut self, code: u8, ip: Ipv4Addr) {
        self.set(code, ip.octets().to_vec());
    }

    pub(crate) fn set_ips(&mut self, code: u8, ips: &[Ipv4Addr]) {
        self.set(code, ips.iter().flat_map(|i| i.octets()).collect());
    }

    pub(crate) fn set_u32(&mut self, code: u8, v: u32) {
        self.set(code, v.to_be_bytes().to_vec());
    }

    /// The lease time (option 51) with the renewal and rebinding times (58, 59) that go
    /// with it: half and seven eighths of it (RFC 2131 §4.4.5).
    pub(crate) fn set_lease_time(&mut self, secs: u64) {
        let l = u32::try_from(secs).unwrap_or(u32::MAX - 1);
        self.set_u32(code::LEASE_TIME, l);
        self.set_u32(code::RENEWAL_TIME, l / 2);
        self.set_u32(code::REBINDING_TIME, (u64::from(l) * 7 / 8) as u32);
    }

    #[cfg(test)]
    pub(crate) fn get(&self, code: u8) -> Option<&[u8]> {
        self.options
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_slice())
    }

    #[cfg(test)]
    pub(crate) fn message_type(&self) -> Option<MessageType> {
        match self.get(code::MESSAGE_TYPE)? {
            [b] => Some(MessageType::from_u8(*b)),
            _ => None,
        }
    }

    /// The wire bytes. Options longer than 255 bytes are split (RFC 3396); relay agent
    /// information (82) goes last (RFC 3046 §2.1); a `file` or `sname` too long for its
    /// field is left out of the header (callers also send it as option 67/66).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(576);
        b.push(BOOTREPLY);
        b.push(self.htype);
        b.push(self.hlen);
        b.push(0); // hops
        b.extend_from_slice(&self.xid.to_be_bytes());
        b.extend_from_slice(&0u16.to_be_bytes()); // secs
        b.extend_from_slice(&self.flags.to_be_bytes());
        for a in [self.ciaddr, self.yiaddr, self.siaddr, self.giaddr] {
            b.extend_from_slice(&a.octets());
        }
        b.extend_from_slice(&self.chaddr);
        put_field(&mut b, self.sname.as_bytes(), 64);
        put_field(&mut b, self.file.as_bytes(), 128);
        b.extend_from_slice(&MAGIC);
        let relay = self
            .options
            .iter()
            .filter(|(c, _)| *c == code::RELAY_AGENT_INFO);
        for (c, v) in self
            .options
            .iter()
            .filter(|(c, _)| *c != code::RELAY_AGENT_INFO)
            .chain(relay)
        {
            if v.is_empty() {
                b.push(*c);
                b.push(0);
            }
            for chunk in v.chunks(255) {
                b.push(*c);
                b.push(chunk.len() as u8);
                b.extend_from_slice(chunk);
            }
        }
        b.push(code::END);
        if b.len() < MIN_LEN {
            b.resize(MIN_LEN, code::PAD);
        }
        b
    }
}

/// A NUL-terminated string field of `width` bytes; left empty if it does not fit.
fn put_field(b: &mut Vec<u8>, s: &[u8], width: usize) {
    let start = b.len();
    if s.len() < width && !s.contains(&0) {
        b.extend_from_slice(s);
    }
    b.resize(start + width, 0);
}

/// PXE vendor options (option 43, PXE 2.1 §2.4): discovery control 8 = "boot the file
/// named in this reply; no boot server discovery".
pub(crate) fn pxe_vendor_options() -> Vec<u8> {
    const PXE_DISCOVERY_CONTROL: u8 = 6;
    vec![PXE_DISCOVERY_CONTROL, 1, 8, code::END]
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A request built by hand, options given raw.
    pub(crate) fn request_bytes(msg: u8, mac: [u8; 6], opts: &[(u8, &[u8])]) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN];
        b[0] = BOOTREQUEST;
        b[1] = 1;
        b[2] = 6;
        b[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        b[28..34].copy_from_slice(&mac);
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&[code::MESSAGE_TYPE, 1, msg]);
        for (c, v) in opts {
            b.push(*c);
            b.push(v.len() as u8);
            b.extend_from_slice(v);
        }
        b.push(code::END);
        b
    }

    #[test]
    fn decodes_header_and_options() {
        let mut b = request_bytes(
            1,
            [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            &[(60, b"PXEClient:Arch:00007:UNDI:003016"), (93, &[0, 7])],
        );
        b[24..28].copy_from_slice(&[198, 18, 1, 1]);
        let p = decode(&b).unwrap();
        assert_eq!(p.op, BOOTREQUEST);
        assert_eq!(p.xid, 0x1234_5678);
        assert_eq!(p.giaddr, Ipv4Addr::new(198, 18, 1, 1));
        assert_eq!(p.options.message_type(), Some(MessageType::Discover));
        assert_eq!(p.options.get(93), Some(&[0u8, 7][..]));
        assert!(!p.truncated);
    }

    #[test]
    fn malformed_option_93_keeps_option_60_after_it() {
        // Option 93 with one byte instead of two, followed by option 60.
        let b = request_bytes(
            1,
            [0x52, 0x54, 0, 0, 0, 1],
            &[(93, &[7]), (60, b"PXEClient:Arch:00007:UNDI:003016")],
        );
        let p = decode(&b).unwrap();
        assert_eq!(p.options.get(93), Some(&[7u8][..]));
        assert_eq!(
            p.options.get(60),
            Some(&b"PXEClient:Arch:00007:UNDI:003016"[..])
        );

        // What dhcproto 0.15 does with the same bytes: the message decodes, but every
        // option from the bad one on is gone. This is why we decode options ourselves.
        use dhcproto::{Decodable, Decoder};
        let m = dhcproto::v4::Message::decode(&mut Decoder::new(&b)).unwrap();
        assert!(m
            .opts()
            .get(dhcproto::v4::OptionCode::ClassIdentifier)
            .is_none());
        assert!(m
            .opts()
            .get(dhcproto::v4::OptionCode::MessageType)
            .is_some());
    }

    #[test]
    fn truncated_option_and_short_packets() {
        let mut b = request_bytes(1, [0x52, 0x54, 0, 0, 0, 1], &[(60, b"PXEClient")]);
        b.pop(); // END
        b.extend_from_slice(&[77, 40, b'i']); // claims 40 bytes, has 1
        let p = decode(&b).unwrap();
        assert!(p.truncated);
        assert_eq!(p.options.get(60), Some(&b"PXEClient"[..]));
        assert_eq!(decode(&b[..100]), Err(DecodeError::TooShort(100)));
        let mut bootp = b.clone();
        bootp[HEADER_LEN] = 0;
        assert_eq!(decode(&bootp), Err(DecodeError::NoMagicCookie));
    }

    #[test]
    fn split_options_are_concatenated_and_overload_is_read() {
        let mut b = request_bytes(
            1,
            [0x52, 0x54, 0, 0, 0, 1],
            &[(60, b"PXE"), (60, b"Client")],
        );
        let p = decode(&b).unwrap();
        assert_eq!(p.options.get(60), Some(&b"PXEClient"[..]));
        // Option 52 = 1: more options in the file field.
        b.pop();
        b.extend_from_slice(&[52, 1, 1, 255]);
        b[108..112].copy_from_slice(&[93, 2, 0, 9]);
        b[112] = 255;
        let p = decode(&b).unwrap();
        assert_eq!(p.options.get(93), Some(&[0u8, 9][..]));
    }

    #[test]
    fn random_bytes_never_panic() {
        // A tiny deterministic fuzz: every prefix and many byte flips of a real packet.
        let base = request_bytes(
            3,
            [0x52, 0x54, 0, 0, 0, 1],
            &[
                (50, &[198, 18, 0, 100]),
                (54, &[198, 18, 0, 1]),
                (77, b"\x04iPXE"),
            ],
        );
        for n in 0..base.len() {
            let _ = decode(&base[..n]);
        }
        let mut x: u32 = 12345;
        for _ in 0..20_000 {
            let mut b = base.clone();
            for _ in 0..4 {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let at = (x as usize >> 8) % b.len();
                b[at] = (x >> 16) as u8;
            }
            if let Ok(p) = decode(&b) {
                let _ = p.options.message_type();
                let _ = p.options.ipv4(50);
            }
        }
    }

    #[test]
    fn encoded_reply_decodes_with_dhcproto() {
        let req = decode(&request_bytes(1, [0x52, 0x54, 0, 0x12, 0x34, 0x56], &[])).unwrap();
        let mut r = Reply::to(&req, MessageType::Offer);
        r.yiaddr = Ipv4Addr::new(198, 18, 0, 100);
        r.siaddr = Ipv4Addr::new(198, 18, 0, 1);
        r.sname = "198.18.0.1".into();
        r.file = "undionly.kpxe".into();
        r.set_ip(code::SERVER_ID, Ipv4Addr::new(198, 18, 0, 1));
        r.set(code::VENDOR_SPECIFIC, pxe_vendor_options());
        let long = "x".repeat(300);
        r.set(code::MESSAGE, long.clone().into_bytes());
        let b = r.encode();
        assert!(b.len() >= MIN_LEN);
        // Option 53 comes first.
        assert_eq!(&b[240..243], &[53, 1, 2]);
        use dhcproto::v4::{DhcpOption, OptionCode};
        use dhcproto::{Decodable, Decoder};
        let m = dhcproto::v4::Message::decode(&mut Decoder::new(&b)).unwrap();
        assert_eq!(m.xid(), 0x1234_5678);
        assert_eq!(m.yiaddr(), Ipv4Addr::new(198, 18, 0, 100));
        // dhcproto hands back the field up to and including its NUL terminator.
        assert_eq!(
            m.fname().map(|f| f.split(|&b| b == 0).next().unwrap_or(f)),
            Some(&b"undionly.kpxe"[..])
        );
        assert_eq!(m.opts().msg_type(), Some(dhcproto::v4::MessageType::Offer));
        assert_eq!(
            m.opts().get(OptionCode::Message),
            Some(&DhcpOption::Message(long))
        );
        assert_eq!(
            m.opts().get(OptionCode::VendorExtensions),
            Some(&DhcpOption::VendorExtensions(vec![6, 1, 8, 255]))
        );
        // And with our own decoder (a BOOTREPLY decodes like any message).
        let back = decode(&b).unwrap();
        assert_eq!(back.op, BOOTREPLY);
        assert_eq!(
            back.options.get(code::VENDOR_SPECIFIC),
            Some(&[6u8, 1, 8, 255][..])
        );
    }

    #[test]
    fn too_long_file_stays_out_of_the_header() {
        let req = decode(&request_bytes(1, [0x52, 0x54, 0, 0, 0, 1], &[])).unwrap();
        let mut r = Reply::to(&req, MessageType::Offer);
        r.file = "h".repeat(200);
        let b = r.encode();
        assert!(b[108..236].iter().all(|&x| x == 0));
    }
}
