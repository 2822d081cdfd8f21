//! Who is asking: firmware and architecture of a DHCP client, from its options.
//!
//! - option 60 (vendor class): "PXEClient…" for PXE firmware, "HTTPClient…" for UEFI
//!   HTTP boot (UEFI 2.5 §24.7); PXE also spells the architecture there
//!   ("PXEClient:Arch:00007:UNDI:003016").
//! - option 93 (client system architecture, RFC 4578 §2.1, IANA "Processor Architecture
//!   Types"): 0 BIOS, 6 UEFI ia32, 7 and 9 UEFI x64 (9 is "EBC" in RFC 4578, but x64
//!   firmware sends it), 11 UEFI ARM64, 15/16/19 the HTTP-boot variants of ia32/x64/ARM64.
//!   The option is a list of 16-bit values; the first is used.
//! - option 77 (user class, RFC 3004) "iPXE", plain or length-prefixed, or option 175 (iPXE
//!   encapsulated options): the client is iPXE already, so it gets the HTTP boot script.
//! - option 97 (client machine identifier, RFC 4578 §2.3): type 0 and a 16-byte UUID.
//!
//! Fallback for architecture values we have no boot file for, or a malformed option 93:
//! the architecture spelled in the PXE vendor class if it is one we know; else UEFI x64
//! for HTTP-boot clients and BIOS for everyone else (PXE ROMs old enough to omit option
//! 93 are BIOS ROMs). The fallback is logged and shown in the event; the client is never
//! dropped silently.

use serde::Serialize;

use super::wire::{code, Options};

/// CPU and firmware family: what decides the boot file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Arch {
    Bios,
    UefiIa32,
    UefiX64,
    UefiArm64,
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Arch::Bios => "x86 BIOS",
            Arch::UefiIa32 => "x86 (ia32) UEFI",
            Arch::UefiX64 => "x86-64 UEFI",
            Arch::UefiArm64 => "ARM64 UEFI",
        })
    }
}

/// Map an option 93 value: the architecture and whether it is the HTTP-boot variant.
pub(crate) fn arch_from_code(c: u16) -> Option<(Arch, bool)> {
    Some(match c {
        0 => (Arch::Bios, false),
        6 => (Arch::UefiIa32, false),
        7 | 9 => (Arch::UefiX64, false),
        11 => (Arch::UefiArm64, false),
        15 => (Arch::UefiIa32, true),
        16 => (Arch::UefiX64, true),
        19 => (Arch::UefiArm64, true),
        _ => return None,
    })
}

/// Everything known about the client's firmware.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct ClientClass {
    /// Option 60 starts with "PXEClient".
    pub(crate) pxe: bool,
    /// Option 60 starts with "HTTPClient", or option 93 is an HTTP-boot value.
    pub(crate) http_boot: bool,
    /// iPXE (option 77 "iPXE" or option 175 present).
    pub(crate) ipxe: bool,
    /// The architecture used to choose the boot file (after any fallback).
    pub(crate) arch: Arch,
    /// Option 93 as sent (first value), if it was well formed.
    pub(crate) arch_code: Option<u16>,
    /// Set when `arch` is a fallback rather than a known option 93 value: says why.
    pub(crate) arch_fallback: Option<String>,
    /// Option 60, lossily decoded.
    pub(crate) vendor_class: Option<String>,
    /// Option 77: RFC 3004 items joined by ',' (or the plain string).
    pub(crate) user_class: Option<String>,
    /// Option 97 as a UUID string, when well formed (type 0 + 16 bytes).
    pub(crate) uuid: Option<String>,
}

impl ClientClass {
    /// A network-boot client of any kind (these are the ones proxy DHCP answers).
    pub(crate) fn boots(&self) -> bool {
        self.pxe || self.http_boot || self.ipxe
    }
}

/// Classify a client from its options. Pure; never fails.
pub(crate) fn classify(opts: &Options) -> ClientClass {
    let vendor = opts.get(code::VENDOR_CLASS);
    let pxe = vendor.is_some_and(|v| v.starts_with(b"PXEClient"));
    let http_vendor = vendor.is_some_and(|v| v.starts_with(b"HTTPClient"));
    let user_class = opts.get(code::USER_CLASS);
    let ipxe = opts.contains(code::IPXE_ENCAP) || user_class.is_some_and(is_ipxe_user_class);

    let raw_arch = opts.get(code::CLIENT_ARCH);
    let arch_code = raw_arch.and_then(|b| match b {
        [hi, lo, ..] if b.len() % 2 == 0 => Some(u16::from_be_bytes([*hi, *lo])),
        _ => None,
    });
    let known = arch_code.and_then(arch_from_code);
    let (arch, http_arch, fallback) = match known {
        Some((a, h)) => (a, h, None),
        None => {
            let why = match (raw_arch, arch_code) {
                (None, _) => "no option 93".to_string(),
                (Some(b), None) => format!("malformed option 93 ({} bytes)", b.len()),
                (Some(_), Some(c)) => format!("unsupported option 93 value {c}"),
            };
            let from_vendor = vendor.and_then(vendor_class_arch).and_then(arch_from_code);
            match from_vendor {
                Some((a, h)) => (a, h, Some(format!("{why}; using the vendor class"))),
                None if http_vendor => (
                    Arch::UefiX64,
                    true,
                    Some(format!("{why}; assuming x86-64 UEFI")),
                ),
                None => (Arch::Bios, false, Some(format!("{why}; assuming BIOS"))),
            }
        }
    };
    // A plain DHCP client has no architecture to fall back from.
    let boots = pxe || http_vendor || ipxe || raw_arch.is_some();
    ClientClass {
        pxe,
        http_boot: http_vendor || http_arch,
        ipxe,
        arch,
        arch_code,
        arch_fallback: fallback.filter(|_| boots),
        vendor_class: vendor.map(lossy),
        user_class: user_class.map(|u| match rfc3004_items(u) {
            Some(items) => items.iter().map(|i| lossy(i)).collect::<Vec<_>>().join(","),
            None => lossy(u),
        }),
        uuid: opts.get(code::CLIENT_UUID).and_then(format_uuid),
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .chars()
        .filter(|c| !c.is_control())
        .take(255)
        .collect()
}

/// "iPXE" plain (what iPXE sends) or as one of the RFC 3004 length-prefixed items.
fn is_ipxe_user_class(u: &[u8]) -> bool {
    u == b"iPXE" || rfc3004_items(u).is_some_and(|items| items.iter().any(|i| *i == b"iPXE"))
}

/// Split an RFC 3004 user class: (len, data) items covering the whole option exactly.
fn rfc3004_items(mut u: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    while let [len, rest @ ..] = u {
        let len = usize::from(*len);
        if len == 0 || rest.len() < len {
            return None;
        }
        out.push(&rest[..len]);
        u = &rest[len..];
    }
    (!out.is_empty()).then_some(out)
}

/// The number in "PXEClient:Arch:00007:UNDI:003016".
fn vendor_class_arch(v: &[u8]) -> Option<u16> {
    let s = std::str::from_utf8(v).ok()?;
    let rest = s.split_once(":Arch:")?.1;
    rest.get(..5)?.parse().ok()
}

/// Option 97: type 0 then 16 bytes, shown in the usual 8-4-4-4-12 form (bytes in wire
/// order).
fn format_uuid(b: &[u8]) -> Option<String> {
    let [0, u @ ..] = b else { return None };
    if u.len() != 16 {
        return None;
    }
    let h: Vec<String> = u.iter().map(|x| format!("{x:02x}")).collect();
    Some(format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::wire::{decode, tests::request_bytes};

    fn class(opts: &[(u8, &[u8])]) -> ClientClass {
        let p = decode(&request_bytes(1, [0x52, 0x54, 0, 0, 0, 1], opts)).unwrap();
        classify(&p.options)
    }

    const PXE_X64: &[u8] = b"PXEClient:Arch:00007:UNDI:003016";
    const PXE_BIOS: &[u8] = b"PXEClient:Arch:00000:UNDI:002001";

    #[test]
    fn architectures_from_option_93() {
        for (c, arch, http) in [
            (0u16, Arch::Bios, false),
            (6, Arch::UefiIa32, false),
            (7, Arch::UefiX64, false),
            (9, Arch::UefiX64, false),
            (11, Arch::UefiArm64, false),
            (16, Arch::UefiX64, true),
            (19, Arch::UefiArm64, true),
        ] {
            let k = class(&[(60, PXE_X64), (93, &c.to_be_bytes())]);
            assert_eq!((k.arch, k.http_boot), (arch, http), "code {c}");
            assert_eq!(k.arch_code, Some(c));
            assert!(k.arch_fallback.is_none());
            assert!(k.pxe);
        }
    }

    #[test]
    fn a_list_of_architectures_uses_the_first() {
        let k = class(&[(60, PXE_X64), (93, &[0, 7, 0, 0])]);
        assert_eq!(k.arch, Arch::UefiX64);
    }

    #[test]
    fn unknown_architecture_falls_back_and_says_so() {
        // 10 = ARM32 UEFI: no boot file for it; the vendor class says 00007.
        let k = class(&[(60, PXE_X64), (93, &[0, 10])]);
        assert_eq!(k.arch, Arch::UefiX64);
        assert_eq!(k.arch_code, Some(10));
        assert!(k
            .arch_fallback
            .unwrap()
            .contains("unsupported option 93 value 10"));
        // Nothing to go on: BIOS.
        let k = class(&[(60, b"PXEClient"), (93, &[0x12, 0x34])]);
        assert_eq!(k.arch, Arch::Bios);
        assert!(k.arch_fallback.is_some());
        // Old ROM without option 93: the vendor class has the architecture.
        let k = class(&[(60, PXE_BIOS)]);
        assert_eq!(k.arch, Arch::Bios);
        assert_eq!(k.arch_code, None);
    }

    #[test]
    fn malformed_option_93_does_not_hide_option_60() {
        let k = class(&[(93, &[7]), (60, PXE_X64)]);
        assert!(k.pxe);
        assert_eq!(k.arch, Arch::UefiX64);
        assert_eq!(k.arch_code, None);
        assert!(k.arch_fallback.unwrap().contains("malformed option 93"));
    }

    #[test]
    fn http_boot_clients() {
        let k = class(&[(60, b"HTTPClient:Arch:00016:UNDI:003001"), (93, &[0, 16])]);
        assert!(k.http_boot && !k.pxe);
        assert_eq!(k.arch, Arch::UefiX64);
        let k = class(&[(60, b"HTTPClient")]);
        assert!(k.http_boot);
        assert_eq!(k.arch, Arch::UefiX64);
    }

    #[test]
    fn ipxe_by_user_class_or_option_175() {
        assert!(class(&[(77, b"iPXE")]).ipxe);
        assert!(class(&[(77, b"\x04iPXE")]).ipxe);
        assert!(class(&[(77, b"\x03abc\x04iPXE")]).ipxe);
        assert_eq!(
            class(&[(77, b"\x03abc\x04iPXE")]).user_class.as_deref(),
            Some("abc,iPXE")
        );
        assert!(class(&[(175, &[0xb1, 1, 1])]).ipxe);
        assert!(!class(&[(77, b"iPXEx")]).ipxe);
        assert!(!class(&[(77, b"\x05iPXE")]).ipxe);
        assert!(!class(&[(60, PXE_BIOS)]).ipxe);
    }

    #[test]
    fn plain_dhcp_clients_are_not_boot_clients() {
        let k = class(&[(60, b"udhcp 1.36.1")]);
        assert!(!k.boots());
        assert_eq!(k.arch_fallback, None);
        assert_eq!(k.vendor_class.as_deref(), Some("udhcp 1.36.1"));
        assert!(!class(&[]).boots());
    }

    #[test]
    fn uuid_from_option_97() {
        let mut v = vec![0u8];
        v.extend(0u8..16);
        let k = class(&[(97, &v)]);
        assert_eq!(
            k.uuid.as_deref(),
            Some("00010203-0405-0607-0809-0a0b0c0d0e0f")
        );
        assert_eq!(class(&[(97, &v[..10])]).uuid, None);
        v[0] = 1;
        assert_eq!(class(&[(97, &v)]).uuid, None);
    }
}
