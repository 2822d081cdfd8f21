//! Ethernet MAC addresses as operators and firmware spell them.
//!
//! Owns parsing of every common spelling (colons, dashes, Cisco dots, bare hex, any case)
//! into one canonical value, and the spellings stemcell writes back out: lower-case with
//! colons for humans and keys, and PXELINUX's `01-aa-bb-…` for the kernel's `BOOTIF=`.

use std::fmt;
use std::str::FromStr;

/// A 48-bit Ethernet hardware address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct MacAddr(pub [u8; 6]);

/// Why a string is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {input:?}: expected six hex octets such as 52:54:00:12:34:56, 52-54-00-12-34-56, 5254.0012.3456 or 525400123456")]
pub(crate) struct MacParseError {
    pub(crate) input: String,
}

impl MacAddr {
    /// `01-aa-bb-cc-dd-ee-ff`: the form PXELINUX and Linux initramfs tools use for `BOOTIF=`.
    pub(crate) fn bootif(&self) -> String {
        let o = self.0;
        format!(
            "01-{:02x}-{:02x}-{:02x}-{:02x}-{:02x}-{:02x}",
            o[0], o[1], o[2], o[3], o[4], o[5]
        )
    }

    /// `aabbccddeeff`: for file names.
    pub(crate) fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parse a MAC from raw bytes (a DHCP chaddr); `None` unless there are at least six.
    pub(crate) fn from_slice(b: &[u8]) -> Option<MacAddr> {
        let six: [u8; 6] = b.get(..6)?.try_into().ok()?;
        Some(MacAddr(six))
    }
}

impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError {
            input: s.to_string(),
        };
        let t = s.trim().as_bytes();
        // Where the twelve hex digits are, by spelling; every other byte must be the
        // separator. No allocation: MACs are parsed on every request.
        let (digits, sep): (&[usize], u8) = match t.len() {
            12 => (&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], 0),
            // Cisco: 5254.0012.3456
            14 => (&[0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13], b'.'),
            17 if t[2] == b':' || t[2] == b'-' => {
                (&[0, 1, 3, 4, 6, 7, 9, 10, 12, 13, 15, 16], t[2])
            }
            _ => return Err(err()),
        };
        let hex = |b: u8| char::from(b).to_digit(16).map(|d| d as u8);
        let mut out = [0u8; 6];
        for (i, o) in out.iter_mut().enumerate() {
            let hi = hex(t[digits[i * 2]]).ok_or_else(err)?;
            let lo = hex(t[digits[i * 2 + 1]]).ok_or_else(err)?;
            *o = hi << 4 | lo;
        }
        // The separators: every position that is not a digit.
        let is_digit = |i: usize| digits.contains(&i);
        if (0..t.len()).any(|i| !is_digit(i) && t[i] != sep) {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // By hand rather than six `{:02x}`: MACs are formatted for every machine of an
        // inventory at load and for every request, and `write!` costs ten times as much.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [b':'; 17];
        for (i, b) in self.0.iter().enumerate() {
            out[i * 3] = HEX[usize::from(b >> 4)];
            out[i * 3 + 1] = HEX[usize::from(b & 0xf)];
        }
        // Only ASCII hex digits and colons were written.
        f.pad(std::str::from_utf8(&out).unwrap_or_default())
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_common_spelling_is_the_same_mac() {
        let want = MacAddr([0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]);
        for s in [
            "52:54:00:ab:cd:ef",
            "52:54:00:AB:CD:EF",
            "52-54-00-ab-cd-ef",
            "5254.00ab.cdef",
            "525400ABCDEF",
            " 52:54:00:ab:cd:ef ",
        ] {
            assert_eq!(s.parse::<MacAddr>().unwrap(), want, "{s}");
        }
        assert_eq!(want.to_string(), "52:54:00:ab:cd:ef");
        assert_eq!(want.bootif(), "01-52-54-00-ab-cd-ef");
        assert_eq!(want.hex(), "525400abcdef");
    }

    #[test]
    fn malformed_macs_are_refused() {
        for s in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:ef:01",
            "52:54-00:ab:cd:ef",
            "52:54:00:ab:cd:eg",
            "5254.00ab.cdeg",
            "52.54.00.ab.cd.ef",
            "5254-00ab.cdef",
            "+2:54:00:ab:cd:ef",
            "+2:54:00:ab:cd:ef",
            "525400abcdefa",
            "52::54:00:ab:cdef",
        ] {
            assert!(s.parse::<MacAddr>().is_err(), "{s:?} should be refused");
        }
    }
}
