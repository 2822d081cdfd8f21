//! Arbitrary bytes → our DHCPv6 decoder → the pure decision (settings chosen by the first
//! byte). The properties (decode → encode → decode is the identity; replies decode, keep
//! the transaction and both ids, and give only the MAC's own address in the prefix and
//! only our URLs) are checked in `stemcell::fuzzing::dhcp6_decode_decide`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    stemcell::fuzzing::dhcp6_decode_decide(data);
});
