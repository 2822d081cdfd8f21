//! The DHCPv6 wire format (RFC 8415 §8 and §21, RFC 5970 boot options): decode a client
//! message, encode a server message.
//!
//! Strict, like [`crate::dhcp::wire`]: a message whose options do not add up (an option
//! running past the end, an IA_NA shorter than its fixed part) is refused with an error
//! saying which option and at which byte, never half-read. Options are kept as raw bytes in
//! the order seen and each consumer checks the length of what it reads. Relay messages
//! (RELAY-FORW) are refused: stemcell answers on one link, without relays. dhcproto's v6
//! module stays in the tests as an independent decoder of what we send.

use std::net::Ipv6Addr;

use serde::Serialize;

/// Fixed header: message type and a 3-byte transaction id.
const HEADER_LEN: usize = 4;

/// Option codes used here (RFC 8415 §21, RFC 5970, RFC 3646).
pub(crate) mod code {
    pub(crate) const CLIENT_ID: u16 = 1;
    pub(crate) const SERVER_ID: u16 = 2;
    pub(crate) const IA_NA: u16 = 3;
    pub(crate) const IA_ADDR: u16 = 5;
    #[cfg(test)]
    pub(crate) const ORO: u16 = 6;
    #[cfg(test)]
    pub(crate) const ELAPSED_TIME: u16 = 8;
    pub(crate) const STATUS_CODE: u16 = 13;
    pub(crate) const USER_CLASS: u16 = 15;
    pub(crate) const VENDOR_CLASS: u16 = 16;
    pub(crate) const DNS_SERVERS: u16 = 23;
    pub(crate) const BOOTFILE_URL: u16 = 59;
    pub(crate) const CLIENT_ARCH: u16 = 61;
    #[cfg(test)]
    pub(crate) const NII: u16 = 62;
}

/// Status codes (RFC 8415 §21.13).
pub(crate) mod status {
    pub(crate) const SUCCESS: u16 = 0;
    pub(crate) const NO_ADDRS_AVAIL: u16 = 2;
    pub(crate) const NOT_ON_LINK: u16 = 4;
}

/// DHCPv6 message types (RFC 8415 §7.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum MessageType {
    Solicit,
    Advertise,
    Request,
    Confirm,
    Renew,
    Rebind,
    Reply,
    Release,
    Decline,
    InformationRequest,
    Other(u8),
}

impl MessageType {
    pub(crate) fn from_u8(b: u8) -> MessageType {
        match b {
            1 => MessageType::Solicit,
            2 => MessageType::Advertise,
            3 => MessageType::Request,
            4 => MessageType::Confirm,
            5 => MessageType::Renew,
            6 => MessageType::Rebind,
            7 => MessageType::Reply,
            8 => MessageType::Release,
            9 => MessageType::Decline,
            11 => MessageType::InformationRequest,
            n => MessageType::Other(n),
        }
    }

    pub(crate) fn to_u8(self) -> u8 {
        match self {
            MessageType::Solicit => 1,
            MessageType::Advertise => 2,
            MessageType::Request => 3,
            MessageType::Confirm => 4,
            MessageType::Renew => 5,
            MessageType::Rebind => 6,
            MessageType::Reply => 7,
            MessageType::Release => 8,
            MessageType::Decline => 9,
            MessageType::InformationRequest => 11,
            MessageType::Other(n) => n,
        }
    }
}

impl std::fmt::Display for MessageType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            MessageType::Solicit => "SOLICIT",
            MessageType::Advertise => "ADVERTISE",
            MessageType::Request => "REQUEST",
            MessageType::Confirm => "CONFIRM",
            MessageType::Renew => "RENEW",
            MessageType::Rebind => "REBIND",
            MessageType::Reply => "REPLY",
            MessageType::Release => "RELEASE",
            MessageType::Decline => "DECLINE",
            MessageType::InformationRequest => "INFORMATION-REQUEST",
            MessageType::Other(n) => return write!(f, "DHCPv6 message type {n}"),
        };
        write!(f, "DHCPv6 {s}")
    }
}

/// Why a datagram is not a DHCPv6 client message we can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WireError {
    #[error("{len} bytes: shorter than the 4-byte DHCPv6 header")]
    TooShort { len: usize },
    #[error("relay message (type {0}): stemcell answers on its own link only, not through relays")]
    Relayed(u8),
    #[error("option {code} at byte {at}: its header needs 4 bytes, {left} left")]
    OptionHeader { code: u16, at: usize, left: usize },
    #[error("option {code} at byte {at}: length {len} runs past the end ({left} bytes left)")]
    OptionLength {
        code: u16,
        at: usize,
        len: usize,
        left: usize,
    },
    #[error("IA_NA at byte {at}: {len} bytes, shorter than its 12-byte fixed part")]
    ShortIa { at: usize, len: usize },
    #[error("IA_NA at byte {at}: {inner}")]
    InIa { at: usize, inner: Box<WireError> },
}

/// Options as raw bytes, in the order seen (repeats kept: a client may send several IA_NA).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Options(pub(crate) Vec<(u16, Vec<u8>)>);

impl Options {
    pub(crate) fn get(&self, code: u16) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_slice())
    }

    pub(crate) fn all(&self, code: u16) -> impl Iterator<Item = &[u8]> {
        self.0
            .iter()
            .filter(move |(c, _)| *c == code)
            .map(|(_, v)| v.as_slice())
    }

    pub(crate) fn push(&mut self, code: u16, value: Vec<u8>) {
        self.0.push((code, value));
    }

    /// Every option, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u16, &[u8])> {
        self.0.iter().map(|(c, v)| (*c, v.as_slice()))
    }
}

/// Parse a run of options starting at byte `base` of the message (for error positions).
fn parse_options(b: &[u8], base: usize) -> Result<Options, WireError> {
    let mut out = Options::default();
    let mut i = 0;
    while i < b.len() {
        let left = b.len() - i;
        if left < 4 {
            let code = if left >= 2 {
                u16::from_be_bytes([b[i], b[i + 1]])
            } else {
                u16::from(b[i]) << 8
            };
            return Err(WireError::OptionHeader {
                code,
                at: base + i,
                left,
            });
        }
        let code = u16::from_be_bytes([b[i], b[i + 1]]);
        let len = usize::from(u16::from_be_bytes([b[i + 2], b[i + 3]]));
        if len > left - 4 {
            return Err(WireError::OptionLength {
                code,
                at: base + i,
                len,
                left: left - 4,
            });
        }
        out.push(code, b[i + 4..i + 4 + len].to_vec());
        i += 4 + len;
    }
    Ok(out)
}

/// An identity association for non-temporary addresses (RFC 8415 §21.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IaNa {
    pub(crate) iaid: u32,
    pub(crate) t1: u32,
    pub(crate) t2: u32,
    /// Addresses the client named (IA Address options), with their options.
    pub(crate) addrs: Vec<Ipv6Addr>,
}

/// A decoded client message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    pub(crate) msg_type: MessageType,
    pub(crate) xid: [u8; 3],
    pub(crate) options: Options,
    /// The IA_NA options, parsed (each one's bytes were checked).
    pub(crate) ia_na: Vec<IaNa>,
}

impl Message {
    pub(crate) fn xid_u32(&self) -> u32 {
        u32::from_be_bytes([0, self.xid[0], self.xid[1], self.xid[2]])
    }

    /// A message to send: type, transaction id and no options yet.
    pub(crate) fn new(msg_type: MessageType, xid: [u8; 3]) -> Message {
        Message {
            msg_type,
            xid,
            options: Options::default(),
            ia_na: Vec::new(),
        }
    }

    /// The bytes on the wire: header, then the options in order. IA_NA options to send are
    /// added with [`encode_ia_na`] as plain options.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.push(self.msg_type.to_u8());
        out.extend_from_slice(&self.xid);
        for (c, v) in self.options.iter() {
            put_option(&mut out, c, v);
        }
        out
    }
}

fn put_option(out: &mut Vec<u8>, code: u16, value: &[u8]) {
    out.extend_from_slice(&code.to_be_bytes());
    // Values are built here from bounded parts (addresses, URLs checked by the config).
    let len = u16::try_from(value.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&value[..usize::from(len)]);
}

/// An IA_NA option's value: IAID, T1, T2, then one IA Address (preferred and valid
/// lifetimes) or a status code.
pub(crate) fn encode_ia_na(
    iaid: u32,
    t1: u32,
    t2: u32,
    addr: Option<(Ipv6Addr, u32, u32)>,
    status: Option<(u16, &str)>,
) -> Vec<u8> {
    let mut v = Vec::with_capacity(64);
    v.extend_from_slice(&iaid.to_be_bytes());
    v.extend_from_slice(&t1.to_be_bytes());
    v.extend_from_slice(&t2.to_be_bytes());
    if let Some((a, preferred, valid)) = addr {
        let mut ia = Vec::with_capacity(24);
        ia.extend_from_slice(&a.octets());
        ia.extend_from_slice(&preferred.to_be_bytes());
        ia.extend_from_slice(&valid.to_be_bytes());
        put_option(&mut v, code::IA_ADDR, &ia);
    }
    if let Some((s, msg)) = status {
        put_option(&mut v, code::STATUS_CODE, &encode_status(s, msg));
    }
    v
}

pub(crate) fn encode_status(status: u16, msg: &str) -> Vec<u8> {
    let mut v = status.to_be_bytes().to_vec();
    v.extend_from_slice(msg.as_bytes());
    v
}

/// Decode one datagram sent to the DHCPv6 server port.
pub(crate) fn decode(b: &[u8]) -> Result<Message, WireError> {
    if b.len() < HEADER_LEN {
        return Err(WireError::TooShort { len: b.len() });
    }
    let t = b[0];
    if t == 12 || t == 13 {
        return Err(WireError::Relayed(t));
    }
    let options = parse_options(&b[HEADER_LEN..], HEADER_LEN)?;
    // Where each option's value starts, for IA_NA error positions.
    let mut ia_na = Vec::new();
    let mut at = HEADER_LEN;
    for (c, v) in options.iter() {
        if c == code::IA_NA {
            ia_na.push(decode_ia_na(v, at)?);
        }
        at += 4 + v.len();
    }
    Ok(Message {
        msg_type: MessageType::from_u8(t),
        xid: [b[1], b[2], b[3]],
        options,
        ia_na,
    })
}

fn decode_ia_na(v: &[u8], at: usize) -> Result<IaNa, WireError> {
    if v.len() < 12 {
        return Err(WireError::ShortIa { at, len: v.len() });
    }
    let word = |i: usize| u32::from_be_bytes([v[i], v[i + 1], v[i + 2], v[i + 3]]);
    let inner = parse_options(&v[12..], at + 4 + 12).map_err(|e| WireError::InIa {
        at,
        inner: Box::new(e),
    })?;
    // An IA Address shorter than its address is not one; skipped, not fatal (the client
    // only hints which address it would like).
    let addrs = inner
        .all(code::IA_ADDR)
        .filter_map(|a| <[u8; 16]>::try_from(a.get(..16)?).ok())
        .map(Ipv6Addr::from)
        .collect();
    Ok(IaNa {
        iaid: word(0),
        t1: word(4),
        t2: word(8),
        addrs,
    })
}

/// RFC 3315 §22.15 / RFC 8415 §21.16 user class and §21.17 vendor class data: a list of
/// (2-byte length, bytes) items. Malformed lists yield the items before the fault.
pub(crate) fn class_items(b: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 2 <= b.len() {
        let n = usize::from(u16::from_be_bytes([b[i], b[i + 1]]));
        let Some(item) = b.get(i + 2..i + 2 + n) else {
            break;
        };
        out.push(item);
        i += 2 + n;
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A client message from its parts (options as given, IA_NA too).
    pub(crate) fn message_bytes(t: u8, xid: [u8; 3], opts: &[(u16, &[u8])]) -> Vec<u8> {
        let mut out = vec![t, xid[0], xid[1], xid[2]];
        for (c, v) in opts {
            put_option(&mut out, *c, v);
        }
        out
    }

    /// What OVMF (EDK2 2022.11, Debian's ovmf) sent on a real link: a SOLICIT with a
    /// DUID-LLT client id, elapsed time, IA_NA without addresses, ORO 59 60 23 16,
    /// option 62 (UNDI 3.16), option 61 (arch 7) and vendor class "PXEClient:…".
    pub(crate) fn ovmf_solicit(mac: [u8; 6], vendor: &str) -> Vec<u8> {
        let mut duid = vec![0, 1, 0, 1, 0x31, 0xe9, 0x3c, 0xf4];
        duid.extend_from_slice(&mac);
        let ia = encode_ia_na(0x5e3e_6677, u32::MAX, u32::MAX, None, None);
        let oro: Vec<u8> = [59u16, 60, 23, 16]
            .iter()
            .flat_map(|c| c.to_be_bytes())
            .collect();
        let mut vc = 343u32.to_be_bytes().to_vec();
        vc.extend_from_slice(&(vendor.len() as u16).to_be_bytes());
        vc.extend_from_slice(vendor.as_bytes());
        message_bytes(
            1,
            [0xb9, 0xa2, 0x77],
            &[
                (code::CLIENT_ID, &duid),
                (code::ELAPSED_TIME, &[0, 0]),
                (code::IA_NA, &ia),
                (code::ORO, &oro),
                (code::NII, &[1, 3, 16]),
                (code::CLIENT_ARCH, &[0, 7]),
                (code::VENDOR_CLASS, &vc),
            ],
        )
    }

    #[test]
    fn ovmfs_solicit_decodes() {
        let b = ovmf_solicit(
            [0x52, 0x54, 0, 0x5e, 0, 0x66],
            "PXEClient:Arch:00007:UNDI:003016",
        );
        let m = decode(&b).unwrap();
        assert_eq!(m.msg_type, MessageType::Solicit);
        assert_eq!(m.xid_u32(), 0xb9a277);
        assert_eq!(m.ia_na.len(), 1);
        assert_eq!(m.ia_na[0].iaid, 0x5e3e_6677);
        assert!(m.ia_na[0].addrs.is_empty());
        assert_eq!(m.options.get(code::CLIENT_ARCH), Some(&[0u8, 7][..]));
        // dhcproto reads the same message the same way.
        use dhcproto::{v6, Decodable};
        let d = v6::Message::decode(&mut dhcproto::Decoder::new(&b)).unwrap();
        assert_eq!(d.msg_type(), v6::MessageType::Solicit);
        assert_eq!(d.xid(), [0xb9, 0xa2, 0x77]);
    }

    #[test]
    fn errors_say_which_option_and_where() {
        let mut b = ovmf_solicit([0x52, 0x54, 0, 0x5e, 0, 0x66], "PXEClient");
        b.truncate(b.len() - 3);
        let e = decode(&b).unwrap_err().to_string();
        assert!(e.starts_with("option 16 at byte "), "{e}");
        assert!(e.contains("runs past the end"), "{e}");
        assert_eq!(
            decode(&[1, 2, 3]).unwrap_err(),
            WireError::TooShort { len: 3 }
        );
        assert_eq!(decode(&[12, 0, 0, 0]).unwrap_err(), WireError::Relayed(12));
        // An option header cut short.
        let e = decode(&[1, 0, 0, 1, 0, 1, 0]).unwrap_err();
        assert_eq!(
            e,
            WireError::OptionHeader {
                code: 1,
                at: 4,
                left: 3
            }
        );
        // An IA_NA shorter than IAID+T1+T2.
        let b = message_bytes(1, [0, 0, 1], &[(code::IA_NA, &[0; 8])]);
        assert_eq!(
            decode(&b).unwrap_err(),
            WireError::ShortIa { at: 4, len: 8 }
        );
        // An IA_NA whose inner option runs past its end.
        let mut ia = vec![0; 12];
        ia.extend_from_slice(&[0, 5, 0, 24, 1, 2]);
        let b = message_bytes(
            3,
            [0, 0, 1],
            &[
                (code::CLIENT_ID, &[0, 3, 0, 1, 1, 2, 3, 4, 5, 6]),
                (code::IA_NA, &ia),
            ],
        );
        let e = decode(&b).unwrap_err().to_string();
        assert_eq!(
            e,
            "IA_NA at byte 18: option 5 at byte 34: length 24 runs past the end (2 bytes left)"
        );
    }

    #[test]
    fn an_ia_na_round_trips_through_dhcproto() {
        let a: Ipv6Addr = "fd00:5ce1::5054:ff:fe5e:66".parse().unwrap();
        let mut m = Message::new(MessageType::Reply, [1, 2, 3]);
        m.options
            .push(code::SERVER_ID, vec![0, 3, 0, 1, 2, 0, 0, 0, 0, 1]);
        m.options.push(
            code::IA_NA,
            encode_ia_na(7, 1800, 2880, Some((a, 3600, 3600)), None),
        );
        m.options.push(
            code::BOOTFILE_URL,
            b"tftp://[fd00:5ce1::1]/snponly.efi".to_vec(),
        );
        let b = m.encode();
        use dhcproto::{v6, Decodable};
        let d = v6::Message::decode(&mut dhcproto::Decoder::new(&b)).unwrap();
        assert_eq!(d.msg_type(), v6::MessageType::Reply);
        let ia = d
            .opts()
            .iter()
            .find_map(|o| match o {
                v6::DhcpOption::IANA(ia) => Some(ia.clone()),
                _ => None,
            })
            .expect("an IA_NA");
        assert_eq!((ia.id, ia.t1, ia.t2), (7, 1800, 2880));
        let addr = ia
            .opts
            .iter()
            .find_map(|o| match o {
                v6::DhcpOption::IAAddr(a) => Some(a.clone()),
                _ => None,
            })
            .expect("an IA address");
        assert_eq!(addr.addr, a);
        assert_eq!((addr.preferred_life, addr.valid_life), (3600, 3600));
        // And ours reads back what it wrote.
        let again = decode(&b).unwrap();
        assert_eq!(again.ia_na[0].addrs, vec![a]);
    }

    #[test]
    fn class_items_split_and_stop_at_a_fault() {
        assert_eq!(
            class_items(&[0, 4, b'i', b'P', b'X', b'E', 0, 9, b'x']),
            vec![&b"iPXE"[..]]
        );
        assert!(class_items(&[0]).is_empty());
    }
}
