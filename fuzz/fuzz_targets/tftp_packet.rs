//! Arbitrary bytes → TFTP packet decode; decode → encode → decode is the identity; a read
//! request's options are negotiated against the server's caps (the first three bytes) and
//! never granted outside RFC 2348/2349/7440 or those caps. The properties are checked in
//! `stemcell::fuzzing::tftp_packet`, where the packet types live.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    stemcell::fuzzing::tftp_packet(data);
});
