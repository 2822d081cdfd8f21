//! Arbitrary bytes → our DHCP decoder → the pure decision (proxy or authoritative, chosen by
//! the first byte; see `stemcell::fuzzing::dhcp_decide`, which also checks the addresses
//! and leases a reply promises). Every reply the server would send must then:
//! - decode again with our decoder and re-encode to the same bytes;
//! - decode with dhcproto, an independent implementation, to the same header and the same
//!   options (dhcproto stops at the first option it cannot parse, so a malformed option of
//!   ours would show up as missing ones);
//! - re-encode with dhcproto to a message our decoder reads as the same;
//! - fit in 576 bytes as the client gets it (without option 82, which the relay removes)
//!   unless the client allowed more (RFC 2131 §2, RFC 2132 §9.10).
#![no_main]

use std::collections::BTreeMap;

use dhcproto::v4::Message;
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use libfuzzer_sys::fuzz_target;
use stemcell::fuzzing::{self, DhcpView, SentReply};

/// Relay agent information: dhcproto reads it as sub-options, sorted and deduplicated,
/// dropping malformed ones; we echo the relay's bytes verbatim (RFC 3046 §2.2, checked in
/// `dhcp_decide`). The two cannot be compared byte for byte.
const RELAY_AGENT_INFO: u8 = 82;
const MAX_MESSAGE_SIZE: u8 = 57;

fuzz_target!(|data: &[u8]| {
    // The decoder alone must never panic, whatever the first byte.
    let _ = fuzzing::dhcp_decode(data);
    let Some(case) = fuzzing::dhcp_decide(data) else {
        return;
    };
    for reply in &case.replies {
        check(&case.request, reply);
    }
});

fn check(request: &DhcpView, reply: &SentReply) {
    let bytes = &reply.bytes;
    let ours = fuzzing::dhcp_decode(bytes).expect("our reply decodes with our decoder");
    assert_eq!(
        fuzzing::dhcp_reencode(bytes).as_ref(),
        Some(bytes),
        "decode → encode gives our reply's bytes back"
    );
    assert!(bytes.len() >= 300, "BOOTP minimum (RFC 1542 §3.3)");
    // The relay removes option 82 before the reply goes on to the client (RFC 3046 §2.2).
    let to_client = bytes.len() - ours.option(RELAY_AGENT_INFO).map_or(0, |o| o.len() + 2);
    if to_client > 576 {
        let allowed = request
            .option(MAX_MESSAGE_SIZE)
            .and_then(|m| <[u8; 2]>::try_from(m).ok())
            .map(u16::from_be_bytes)
            .unwrap_or(576);
        assert!(
            to_client <= usize::from(allowed),
            "a {to_client}-byte reply to a client that accepts {allowed}"
        );
    }

    let m = Message::decode(&mut Decoder::new(bytes)).expect("dhcproto decodes our reply");
    assert_eq!(
        header(&m),
        header_of(&ours),
        "dhcproto reads the same header"
    );
    assert_eq!(
        options_of_dhcproto(&m),
        options_of(&ours),
        "dhcproto reads the same options"
    );
    let again = m.to_vec().expect("dhcproto re-encodes our reply");
    let back = fuzzing::dhcp_decode(&again).expect("dhcproto's encoding decodes with ours");
    assert_eq!(
        header_of(&back),
        header_of(&ours),
        "the same header after dhcproto"
    );
    assert_eq!(
        options_of(&back),
        options_of(&ours),
        "the same options after dhcproto"
    );
}

type Header = (
    u8,
    u8,
    u8,
    u8,
    u32,
    u16,
    u16,
    [u32; 4],
    Vec<u8>,
    Vec<u8>,
    Vec<u8>,
);

fn header_of(v: &DhcpView) -> Header {
    (
        v.op,
        v.htype,
        v.hlen,
        v.hops,
        v.xid,
        v.secs,
        v.flags,
        [v.ciaddr, v.yiaddr, v.siaddr, v.giaddr].map(u32::from),
        v.chaddr[..usize::from(v.hlen).min(16)].to_vec(),
        v.sname.clone(),
        v.file.clone(),
    )
}

/// dhcproto hands `sname` and `file` back with their NUL.
fn until_nul(f: Option<&[u8]>) -> Vec<u8> {
    let f = f.unwrap_or_default();
    f[..f.iter().position(|&b| b == 0).unwrap_or(f.len())].to_vec()
}

fn header(m: &Message) -> Header {
    (
        u8::from(m.opcode()),
        u8::from(m.htype()),
        m.hlen(),
        m.hops(),
        m.xid(),
        m.secs(),
        u16::from(m.flags()),
        [m.ciaddr(), m.yiaddr(), m.siaddr(), m.giaddr()].map(u32::from),
        m.chaddr().to_vec(),
        until_nul(m.sname()),
        until_nul(m.fname()),
    )
}

fn options_of(v: &DhcpView) -> BTreeMap<u8, Vec<u8>> {
    v.options
        .iter()
        .filter(|(c, _)| *c != RELAY_AGENT_INFO)
        .cloned()
        .collect()
}

/// Each option dhcproto decoded, encoded again on its own, its chunks joined (RFC 3396).
fn options_of_dhcproto(m: &Message) -> BTreeMap<u8, Vec<u8>> {
    let mut out = BTreeMap::new();
    for (code, opt) in m.opts().iter() {
        let code = u8::from(*code);
        if code == RELAY_AGENT_INFO {
            continue;
        }
        let mut buf = Vec::new();
        opt.encode(&mut Encoder::new(&mut buf))
            .expect("dhcproto encodes what it decoded");
        let mut data = Vec::new();
        let mut rest = &buf[..];
        while let [c, len, tail @ ..] = rest {
            assert_eq!(*c, code, "one option encodes as chunks of its own code");
            let len = usize::from(*len);
            data.extend_from_slice(&tail[..len]);
            rest = &tail[len..];
        }
        assert!(rest.is_empty(), "an option encodes as whole chunks");
        out.insert(code, data);
    }
    out
}
