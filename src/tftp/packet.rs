//! The TFTP wire format: decoding and encoding of packets (RFC 1350 §5, RFC 2347 §2–3), and
//! option negotiation for a read request (RFC 2348, RFC 2349, RFC 7440) as a pure function.
//!
//! Everything here takes bytes or values and returns values; no sockets, no files. Bytes read
//! off the wire are untrusted: decoding never panics, it returns a [`DecodeError`].

use std::time::Duration;

/// Opcodes (RFC 1350 §5, RFC 2347 §2).
const OP_RRQ: u16 = 1;
const OP_WRQ: u16 = 2;
const OP_DATA: u16 = 3;
const OP_ACK: u16 = 4;
const OP_ERROR: u16 = 5;
const OP_OACK: u16 = 6;

/// The block size without the blksize option (RFC 1350).
pub(crate) const DEFAULT_BLOCK_SIZE: u16 = 512;
/// The smallest and largest block sizes a client may ask for (RFC 2348).
pub(crate) const MIN_BLOCK_SIZE: u16 = 8;
pub(crate) const MAX_BLOCK_SIZE: u16 = 65464;
/// Bytes before the payload of a DATA packet: opcode and block number.
pub(crate) const DATA_HEADER_LEN: usize = 4;
/// The most bytes of data in flight in one window. A client's receive buffer (Linux defaults
/// to about 208 KiB, counted with per-datagram overhead) drops what does not fit, and a drop
/// costs a whole retransmission timeout, so large blocks get a smaller window (RFC 7440 §4
/// lets the server answer with a smaller windowsize).
pub(crate) const MAX_WINDOW_BYTES: usize = 128 * 1024;

/// A TFTP error code (RFC 1350 §5, appendix; code 8 from RFC 2347).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ErrorCode {
    /// 0: not defined, see the message.
    NotDefined,
    /// 1: file not found.
    FileNotFound,
    /// 2: access violation.
    AccessViolation,
    /// 3: disk full or allocation exceeded.
    DiskFull,
    /// 4: illegal TFTP operation.
    IllegalOperation,
    /// 5: unknown transfer ID.
    UnknownTransferId,
    /// 6: file already exists.
    FileExists,
    /// 7: no such user.
    NoSuchUser,
    /// 8: the client refuses the options in the OACK (RFC 2347); firmware also sends it to
    /// end a transfer once it has learned the file size.
    OptionsRefused,
    /// Any other code a peer sent.
    Other(u16),
}

impl ErrorCode {
    pub(crate) fn to_u16(self) -> u16 {
        match self {
            ErrorCode::NotDefined => 0,
            ErrorCode::FileNotFound => 1,
            ErrorCode::AccessViolation => 2,
            ErrorCode::DiskFull => 3,
            ErrorCode::IllegalOperation => 4,
            ErrorCode::UnknownTransferId => 5,
            ErrorCode::FileExists => 6,
            ErrorCode::NoSuchUser => 7,
            ErrorCode::OptionsRefused => 8,
            ErrorCode::Other(code) => code,
        }
    }

    pub(crate) fn from_u16(code: u16) -> ErrorCode {
        match code {
            0 => ErrorCode::NotDefined,
            1 => ErrorCode::FileNotFound,
            2 => ErrorCode::AccessViolation,
            3 => ErrorCode::DiskFull,
            4 => ErrorCode::IllegalOperation,
            5 => ErrorCode::UnknownTransferId,
            6 => ErrorCode::FileExists,
            7 => ErrorCode::NoSuchUser,
            8 => ErrorCode::OptionsRefused,
            other => ErrorCode::Other(other),
        }
    }
}

/// The transfer mode of a request (RFC 1350 §5). Names are compared case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mode {
    Octet,
    Netascii,
    Mail,
    /// Anything else, as sent.
    Other(String),
}

impl Mode {
    fn from_wire(s: &str) -> Mode {
        if s.eq_ignore_ascii_case("octet") {
            Mode::Octet
        } else if s.eq_ignore_ascii_case("netascii") {
            Mode::Netascii
        } else if s.eq_ignore_ascii_case("mail") {
            Mode::Mail
        } else {
            Mode::Other(s.to_owned())
        }
    }

    fn as_wire(&self) -> &str {
        match self {
            Mode::Octet => "octet",
            Mode::Netascii => "netascii",
            Mode::Mail => "mail",
            Mode::Other(s) => s,
        }
    }
}

/// A read or write request: file name, mode and options (name, value) in the order sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) filename: String,
    pub(crate) mode: Mode,
    pub(crate) options: Vec<(String, String)>,
}

/// One TFTP packet. DATA borrows its payload from the buffer it was decoded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Packet<'a> {
    Rrq(Request),
    Wrq(Request),
    Data { block: u16, data: &'a [u8] },
    Ack(u16),
    Error { code: ErrorCode, message: String },
    Oack(Vec<(String, String)>),
}

/// Why bytes are not a TFTP packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("packet too short ({0} bytes)")]
    TooShort(usize),
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    #[error("{0} is not terminated by NUL")]
    Unterminated(&'static str),
    #[error("ACK has {0} trailing bytes")]
    TrailingBytes(usize),
}

impl<'a> Packet<'a> {
    /// Decodes one datagram. Lenient where RFC 1350 peers differ (an option name without a
    /// value is ignored; an ERROR message without its NUL is taken whole), strict where the
    /// meaning would be unclear (a request without its NULs).
    pub(crate) fn decode(buf: &'a [u8]) -> Result<Packet<'a>, DecodeError> {
        let Some((op, body)) = split_u16(buf) else {
            return Err(DecodeError::TooShort(buf.len()));
        };
        match op {
            OP_RRQ => decode_request(body).map(Packet::Rrq),
            OP_WRQ => decode_request(body).map(Packet::Wrq),
            OP_DATA => {
                let (block, data) = split_u16(body).ok_or(DecodeError::TooShort(buf.len()))?;
                Ok(Packet::Data { block, data })
            }
            OP_ACK => {
                let (block, rest) = split_u16(body).ok_or(DecodeError::TooShort(buf.len()))?;
                // Some clients pad short packets; an ACK is still an ACK.
                if rest.iter().any(|&b| b != 0) {
                    return Err(DecodeError::TrailingBytes(rest.len()));
                }
                Ok(Packet::Ack(block))
            }
            OP_ERROR => {
                let (code, rest) = split_u16(body).ok_or(DecodeError::TooShort(buf.len()))?;
                let message = match rest.iter().position(|&b| b == 0) {
                    Some(end) => &rest[..end],
                    None => rest,
                };
                Ok(Packet::Error {
                    code: ErrorCode::from_u16(code),
                    message: String::from_utf8_lossy(message).into_owned(),
                })
            }
            OP_OACK => Ok(Packet::Oack(decode_options(body))),
            other => Err(DecodeError::UnknownOpcode(other)),
        }
    }

    /// Appends the encoded packet to `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Packet::Rrq(req) => encode_request(OP_RRQ, req, out),
            Packet::Wrq(req) => encode_request(OP_WRQ, req, out),
            Packet::Data { block, data } => {
                out.extend_from_slice(&data_header(*block));
                out.extend_from_slice(data);
            }
            Packet::Ack(block) => {
                out.extend_from_slice(&OP_ACK.to_be_bytes());
                out.extend_from_slice(&block.to_be_bytes());
            }
            Packet::Error { code, message } => encode_error(*code, message, out),
            Packet::Oack(options) => {
                out.extend_from_slice(&OP_OACK.to_be_bytes());
                encode_options(options, out);
            }
        }
    }
}

/// The four bytes before the payload of DATA block `block`.
pub(crate) fn data_header(block: u16) -> [u8; DATA_HEADER_LEN] {
    let [o1, o2] = OP_DATA.to_be_bytes();
    let [b1, b2] = block.to_be_bytes();
    [o1, o2, b1, b2]
}

/// Appends an ERROR packet. A NUL inside `message` would end it early on the wire, so the
/// message is cut there.
pub(crate) fn encode_error(code: ErrorCode, message: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&OP_ERROR.to_be_bytes());
    out.extend_from_slice(&code.to_u16().to_be_bytes());
    let message = message.split('\0').next().unwrap_or_default();
    out.extend_from_slice(message.as_bytes());
    out.push(0);
}

fn encode_request(op: u16, req: &Request, out: &mut Vec<u8>) {
    out.extend_from_slice(&op.to_be_bytes());
    push_str(&req.filename, out);
    push_str(req.mode.as_wire(), out);
    encode_options(&req.options, out);
}

fn encode_options(options: &[(String, String)], out: &mut Vec<u8>) {
    for (name, value) in options {
        push_str(name, out);
        push_str(value, out);
    }
}

fn push_str(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(s.split('\0').next().unwrap_or_default().as_bytes());
    out.push(0);
}

fn split_u16(buf: &[u8]) -> Option<(u16, &[u8])> {
    match buf {
        [a, b, rest @ ..] => Some((u16::from_be_bytes([*a, *b]), rest)),
        _ => None,
    }
}

/// Splits off one NUL-terminated string; `None` if there is no NUL.
fn split_cstr(buf: &[u8]) -> Option<(String, &[u8])> {
    let end = buf.iter().position(|&b| b == 0)?;
    let s = String::from_utf8_lossy(&buf[..end]).into_owned();
    Some((s, &buf[end + 1..]))
}

fn decode_request(body: &[u8]) -> Result<Request, DecodeError> {
    let (filename, rest) = split_cstr(body).ok_or(DecodeError::Unterminated("file name"))?;
    let (mode, rest) = split_cstr(rest).ok_or(DecodeError::Unterminated("mode"))?;
    Ok(Request {
        filename,
        mode: Mode::from_wire(&mode),
        options: decode_options(rest),
    })
}

/// Option pairs until the bytes run out; an incomplete last pair is dropped (some clients pad
/// requests with NULs).
fn decode_options(mut rest: &[u8]) -> Vec<(String, String)> {
    let mut options = Vec::new();
    while let Some((name, after_name)) = split_cstr(rest) {
        let Some((value, after_value)) = split_cstr(after_name) else {
            break;
        };
        if !name.is_empty() {
            options.push((name, value));
        }
        rest = after_value;
    }
    options
}

/// What the server asks of a transfer beyond the client's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// The retransmission timeout when the client does not ask for one.
    pub(crate) timeout: Duration,
    /// The largest windowsize granted (RFC 7440).
    pub(crate) max_window: u16,
}

/// The options a transfer runs with, as agreed with the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TransferOptions {
    /// Bytes of data per DATA packet (512 unless blksize was agreed).
    pub(crate) block_size: u16,
    /// DATA packets sent before waiting for an ACK (1 unless windowsize was agreed).
    pub(crate) window_size: u16,
    /// The retransmission timeout.
    pub(crate) timeout: Duration,
    /// The file size announced in the OACK (tsize), if any.
    pub(crate) transfer_size: Option<u64>,
    /// Whether an OACK was (or would be) sent, i.e. any option was accepted.
    pub(crate) oack: bool,
}

impl TransferOptions {
    /// The options of a plain RFC 1350 transfer.
    pub(crate) fn plain(timeout: Duration) -> TransferOptions {
        TransferOptions {
            block_size: DEFAULT_BLOCK_SIZE,
            window_size: 1,
            timeout,
            transfer_size: None,
            oack: false,
        }
    }
}

/// Decides the options of a read request: which of the client's options are accepted, with
/// which values, and the OACK to send (empty: no OACK, data starts at block 1).
///
/// `file_size` is announced for tsize only when known (octet mode; RFC 2349 §2 leaves
/// netascii's size undefined). Unknown options and options with invalid values are left out
/// of the OACK, which RFC 2347 §3 says means they are refused; a duplicate keeps the first.
pub(crate) fn negotiate(
    requested: &[(String, String)],
    file_size: Option<u64>,
    limits: Limits,
) -> (TransferOptions, Vec<(String, String)>) {
    let mut agreed = TransferOptions::plain(limits.timeout);
    let mut oack: Vec<(String, String)> = Vec::new();
    let mut window_asked: Option<u16> = None;
    for (name, value) in requested {
        let name = name.to_ascii_lowercase();
        if oack.iter().any(|(n, _)| *n == name) || (name == "windowsize" && window_asked.is_some())
        {
            continue;
        }
        let Ok(value) = value.trim().parse::<u64>() else {
            continue;
        };
        match name.as_str() {
            // RFC 2348: 8..=65464; the server may answer with a smaller size.
            "blksize" if value >= u64::from(MIN_BLOCK_SIZE) => {
                let size =
                    u16::try_from(value.min(u64::from(MAX_BLOCK_SIZE))).unwrap_or(MAX_BLOCK_SIZE);
                agreed.block_size = size;
                oack.push((name, size.to_string()));
            }
            // RFC 2349 §2: 1..=255 seconds, acknowledged as asked or not at all.
            "timeout" if (1..=255).contains(&value) => {
                agreed.timeout = Duration::from_secs(value);
                oack.push((name, value.to_string()));
            }
            // RFC 2349 §3: a read request carries 0 and the server answers with the size.
            "tsize" => {
                if let Some(size) = file_size {
                    agreed.transfer_size = Some(size);
                    oack.push((name, size.to_string()));
                }
            }
            // RFC 7440: 1..=65535; the server may answer with a smaller window. Decided
            // below, once blksize is known.
            "windowsize" if (1..=65535).contains(&value) => {
                window_asked = u16::try_from(value).ok();
            }
            _ => {}
        }
    }
    if let Some(asked) = window_asked {
        let by_bytes = (MAX_WINDOW_BYTES / usize::from(agreed.block_size)).max(1);
        let by_bytes = u16::try_from(by_bytes).unwrap_or(u16::MAX);
        let window = asked.min(limits.max_window.max(1)).min(by_bytes);
        agreed.window_size = window;
        oack.push(("windowsize".to_owned(), window.to_string()));
    }
    agreed.oack = !oack.is_empty();
    (agreed, oack)
}

/// Netascii encoding of a file (RFC 764 as used by RFC 1350): LF becomes CR LF and CR becomes
/// CR NUL. `pending` carries the second byte of a pair that did not fit in the last `dst`.
/// Returns (bytes consumed from `src`, bytes written to `dst`).
pub(crate) fn netascii_encode(
    pending: &mut Option<u8>,
    src: &[u8],
    dst: &mut [u8],
) -> (usize, usize) {
    let mut written = 0;
    if let Some(byte) = *pending {
        let Some(slot) = dst.first_mut() else {
            return (0, 0);
        };
        *slot = byte;
        written = 1;
        *pending = None;
    }
    let mut consumed = 0;
    for &byte in src {
        if written == dst.len() {
            break;
        }
        let (first, second) = match byte {
            b'\n' => (b'\r', Some(b'\n')),
            b'\r' => (b'\r', Some(0)),
            other => (other, None),
        };
        dst[written] = first;
        written += 1;
        consumed += 1;
        if let Some(second) = second {
            match dst.get_mut(written) {
                Some(slot) => {
                    *slot = second;
                    written += 1;
                }
                None => {
                    *pending = Some(second);
                    break;
                }
            }
        }
    }
    (consumed, written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn limits() -> Limits {
        Limits {
            timeout: Duration::from_secs(1),
            max_window: 64,
        }
    }

    #[test]
    fn decodes_rrq_with_options_case_insensitive_mode() {
        let bytes = b"\x00\x01pxelinux.0\x00OcTeT\x00blksize\x001468\x00tsize\x000\x00";
        let packet = Packet::decode(bytes).unwrap();
        assert_eq!(
            packet,
            Packet::Rrq(Request {
                filename: "pxelinux.0".into(),
                mode: Mode::Octet,
                options: opts(&[("blksize", "1468"), ("tsize", "0")]),
            })
        );
    }

    #[test]
    fn decodes_wrq_ack_data_error_oack() {
        assert!(matches!(
            Packet::decode(b"\x00\x02f\x00netascii\x00"),
            Ok(Packet::Wrq(Request {
                mode: Mode::Netascii,
                ..
            }))
        ));
        assert_eq!(Packet::decode(b"\x00\x04\xff\xfe"), Ok(Packet::Ack(0xfffe)));
        assert_eq!(
            Packet::decode(b"\x00\x03\x00\x01abc"),
            Ok(Packet::Data {
                block: 1,
                data: b"abc"
            })
        );
        assert_eq!(
            Packet::decode(b"\x00\x03\x00\x07"),
            Ok(Packet::Data {
                block: 7,
                data: b""
            })
        );
        assert_eq!(
            Packet::decode(b"\x00\x05\x00\x08User aborted\x00"),
            Ok(Packet::Error {
                code: ErrorCode::OptionsRefused,
                message: "User aborted".into()
            })
        );
        assert_eq!(
            Packet::decode(b"\x00\x06tsize\x00123\x00"),
            Ok(Packet::Oack(opts(&[("tsize", "123")])))
        );
    }

    #[test]
    fn error_without_nul_or_message_is_still_an_error() {
        assert_eq!(
            Packet::decode(b"\x00\x05\x00\x08no nul"),
            Ok(Packet::Error {
                code: ErrorCode::OptionsRefused,
                message: "no nul".into()
            })
        );
        assert_eq!(
            Packet::decode(b"\x00\x05\x00\x63"),
            Ok(Packet::Error {
                code: ErrorCode::Other(99),
                message: String::new()
            })
        );
    }

    #[test]
    fn malformed_packets_are_errors() {
        assert_eq!(Packet::decode(b""), Err(DecodeError::TooShort(0)));
        assert_eq!(Packet::decode(b"\x00"), Err(DecodeError::TooShort(1)));
        assert_eq!(
            Packet::decode(b"\x00\x04\x00"),
            Err(DecodeError::TooShort(3))
        );
        assert_eq!(
            Packet::decode(b"\x00\x03\x00"),
            Err(DecodeError::TooShort(3))
        );
        assert_eq!(
            Packet::decode(b"\x00\x05\x00"),
            Err(DecodeError::TooShort(3))
        );
        assert_eq!(
            Packet::decode(b"\x00\x07x"),
            Err(DecodeError::UnknownOpcode(7))
        );
        assert_eq!(
            Packet::decode(b"\x00\x00"),
            Err(DecodeError::UnknownOpcode(0))
        );
        assert_eq!(
            Packet::decode(b"\x00\x01file"),
            Err(DecodeError::Unterminated("file name"))
        );
        assert_eq!(
            Packet::decode(b"\x00\x01file\x00octet"),
            Err(DecodeError::Unterminated("mode"))
        );
        assert_eq!(
            Packet::decode(b"\x00\x04\x00\x01x"),
            Err(DecodeError::TrailingBytes(1))
        );
    }

    #[test]
    fn padded_ack_and_padded_request_are_accepted() {
        assert_eq!(
            Packet::decode(b"\x00\x04\x00\x01\x00\x00"),
            Ok(Packet::Ack(1))
        );
        let packet = Packet::decode(b"\x00\x01f\x00octet\x00blksize\x00512\x00\x00\x00\x00");
        assert_eq!(
            packet,
            Ok(Packet::Rrq(Request {
                filename: "f".into(),
                mode: Mode::Octet,
                options: opts(&[("blksize", "512")]),
            }))
        );
        // An option name without its value is dropped.
        let packet = Packet::decode(b"\x00\x01f\x00octet\x00tsize\x000\x00blksize\x00");
        assert!(matches!(packet, Ok(Packet::Rrq(r)) if r.options == opts(&[("tsize", "0")])));
    }

    #[test]
    fn non_utf8_names_do_not_panic() {
        let packet = Packet::decode(b"\x00\x01\xff\xfe\x00\xc3\x00").unwrap();
        assert!(matches!(packet, Packet::Rrq(r) if r.filename == "\u{fffd}\u{fffd}"));
    }

    /// A deterministic stand-in for a fuzz target: every prefix and mutation of valid packets
    /// decodes without panicking, and whatever decodes re-encodes to something that decodes
    /// to the same packet.
    #[test]
    fn decode_encode_decode_is_stable_on_mutations() {
        let seeds: [&[u8]; 6] = [
            b"\x00\x01pxelinux.0\x00octet\x00blksize\x001468\x00tsize\x000\x00windowsize\x0016\x00",
            b"\x00\x02f\x00netascii\x00",
            b"\x00\x03\x00\x01abcdef",
            b"\x00\x04\x12\x34",
            b"\x00\x05\x00\x08aborted\x00",
            b"\x00\x06blksize\x001428\x00",
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for seed in seeds {
            for cut in 0..=seed.len() {
                check_roundtrip(&seed[..cut]);
            }
            for _ in 0..2000 {
                let mut bytes = seed.to_vec();
                let flips = 1 + next() % 4;
                for _ in 0..flips {
                    let at = (next() % bytes.len() as u64) as usize;
                    bytes[at] = next() as u8;
                }
                if next() % 3 == 0 {
                    let keep = (next() % (bytes.len() as u64 + 1)) as usize;
                    bytes.truncate(keep);
                }
                check_roundtrip(&bytes);
            }
        }
    }

    fn check_roundtrip(bytes: &[u8]) {
        if let Ok(packet) = Packet::decode(bytes) {
            let mut encoded = Vec::new();
            packet.encode(&mut encoded);
            let again = Packet::decode(&encoded).expect("re-encoded packet decodes");
            // Lossy UTF-8 may replace bytes once; after that the packet is a fixed point.
            let mut encoded_again = Vec::new();
            again.encode(&mut encoded_again);
            assert_eq!(Packet::decode(&encoded_again).as_ref(), Ok(&again));
        }
    }

    #[test]
    fn encodes_error_and_cuts_at_nul() {
        let mut out = Vec::new();
        encode_error(ErrorCode::AccessViolation, "no\0way", &mut out);
        assert_eq!(out, b"\x00\x05\x00\x02no\x00");
    }

    #[test]
    fn data_header_encodes_block() {
        assert_eq!(data_header(0x0102), [0, 3, 1, 2]);
    }

    #[test]
    fn negotiate_without_options_means_no_oack() {
        let (agreed, oack) = negotiate(&[], Some(10), limits());
        assert_eq!(agreed, TransferOptions::plain(Duration::from_secs(1)));
        assert!(oack.is_empty());
    }

    #[test]
    fn negotiate_accepts_known_options() {
        let requested = opts(&[
            ("BLKSIZE", "1428"),
            ("tsize", "0"),
            ("timeout", "3"),
            ("windowsize", "16"),
            ("utimeout", "1000"),
        ]);
        let (agreed, oack) = negotiate(&requested, Some(5_000_000), limits());
        assert_eq!(
            agreed,
            TransferOptions {
                block_size: 1428,
                window_size: 16,
                timeout: Duration::from_secs(3),
                transfer_size: Some(5_000_000),
                oack: true,
            }
        );
        assert_eq!(
            oack,
            opts(&[
                ("blksize", "1428"),
                ("tsize", "5000000"),
                ("timeout", "3"),
                ("windowsize", "16"),
            ])
        );
    }

    #[test]
    fn negotiate_caps_and_ignores_bad_values() {
        let requested = opts(&[
            ("blksize", "100000"),
            ("timeout", "0"),
            ("windowsize", "0"),
            ("tsize", "abc"),
        ]);
        let (agreed, oack) = negotiate(&requested, Some(1), limits());
        assert_eq!(agreed.block_size, MAX_BLOCK_SIZE);
        assert_eq!(agreed.window_size, 1);
        assert_eq!(agreed.timeout, Duration::from_secs(1));
        assert_eq!(oack, opts(&[("blksize", "65464")]));

        let (agreed, oack) = negotiate(&opts(&[("blksize", "7")]), None, limits());
        assert_eq!(agreed.block_size, 512);
        assert!(oack.is_empty());

        let huge = "9".repeat(40);
        let (_, oack) = negotiate(
            &opts(&[("blksize", &huge), ("timeout", "256")]),
            None,
            limits(),
        );
        assert!(oack.is_empty());
    }

    #[test]
    fn negotiate_caps_window_by_limit_and_bytes() {
        let (agreed, _) = negotiate(&opts(&[("windowsize", "1000")]), None, limits());
        assert_eq!(agreed.window_size, 64);
        let (agreed, _) = negotiate(
            &opts(&[("windowsize", "16"), ("blksize", "65464")]),
            None,
            limits(),
        );
        assert_eq!(agreed.window_size, 2);
        let tight = Limits {
            max_window: 4,
            ..limits()
        };
        let (agreed, oack) = negotiate(&opts(&[("windowsize", "16")]), None, tight);
        assert_eq!(agreed.window_size, 4);
        assert_eq!(oack, opts(&[("windowsize", "4")]));
    }

    #[test]
    fn negotiate_tsize_needs_a_known_size_and_first_duplicate_wins() {
        let (agreed, oack) = negotiate(&opts(&[("tsize", "0")]), None, limits());
        assert_eq!(agreed.transfer_size, None);
        assert!(oack.is_empty());
        let (agreed, _) = negotiate(
            &opts(&[("blksize", "1024"), ("blksize", "2048")]),
            None,
            limits(),
        );
        assert_eq!(agreed.block_size, 1024);
    }

    #[test]
    fn netascii_expands_line_ends_and_carries_across_blocks() {
        let mut pending = None;
        let mut dst = [0u8; 16];
        let (used, wrote) = netascii_encode(&mut pending, b"a\nb\rc", &mut dst);
        assert_eq!((used, wrote), (5, 7));
        assert_eq!(&dst[..wrote], b"a\r\nb\r\0c");

        let mut dst = [0u8; 2];
        let (used, wrote) = netascii_encode(&mut pending, b"a\nb", &mut dst);
        assert_eq!((used, wrote), (2, 2));
        assert_eq!(&dst, b"a\r");
        assert_eq!(pending, Some(b'\n'));
        let (used, wrote) = netascii_encode(&mut pending, b"b", &mut dst);
        assert_eq!((used, wrote), (1, 2));
        assert_eq!(&dst, b"\nb");
        assert_eq!(pending, None);

        let (used, wrote) = netascii_encode(&mut pending, b"abc", &mut []);
        assert_eq!((used, wrote), (0, 0));
    }
}
