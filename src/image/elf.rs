//! Just enough of ELF (64-bit, little-endian) for the stem cell's builder: a kernel
//! module's `.modinfo` section, and a program's loader (`PT_INTERP`) and the shared
//! libraries it names (`DT_NEEDED`), so libraries are resolved from Debian's packages
//! rather than from whatever the build host has installed.

fn le16(d: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        d.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}
fn le32(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        d.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn le64(d: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        d.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

pub(crate) fn is_elf64le(d: &[u8]) -> bool {
    d.len() >= 64 && d[..4] == *b"\x7fELF" && d[4] == 2 && d[5] == 1
}

/// `e_machine` values of the architectures the stem cell is built for.
pub(crate) const EM_X86_64: u16 = 62;
pub(crate) const EM_AARCH64: u16 = 183;

/// The machine an ELF64 file is built for (`e_machine`): [`EM_X86_64`], [`EM_AARCH64`], ...
pub(crate) fn machine(d: &[u8]) -> Option<u16> {
    if !is_elf64le(d) {
        return None;
    }
    le16(d, 0x12)
}

/// A name for an `e_machine` value, for error messages.
pub(crate) fn machine_name(m: u16) -> String {
    match m {
        EM_X86_64 => "x86-64".into(),
        EM_AARCH64 => "aarch64".into(),
        3 => "i386".into(),
        40 => "arm".into(),
        243 => "riscv".into(),
        n => format!("ELF machine {n}"),
    }
}

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;

/// A program header: (type, file offset, virtual address, size in the file).
fn program_headers(d: &[u8]) -> Option<Vec<(u32, usize, u64, usize)>> {
    if !is_elf64le(d) {
        return None;
    }
    let phoff = le64(d, 0x20)? as usize;
    let phentsize = le16(d, 0x36)? as usize;
    let phnum = le16(d, 0x38)? as usize;
    (0..phnum)
        .map(|i| {
            let at = phoff.checked_add(i.checked_mul(phentsize)?)?;
            Some((
                le32(d, at)?,
                le64(d, at + 8)? as usize,
                le64(d, at + 16)?,
                le64(d, at + 32)? as usize,
            ))
        })
        .collect()
}

fn c_string(d: &[u8], at: usize) -> Option<String> {
    let rest = d.get(at..)?;
    let end = rest.iter().position(|b| *b == 0)?;
    String::from_utf8(rest[..end].to_vec()).ok()
}

/// The dynamic loader a program asks for (`/lib64/ld-linux-x86-64.so.2`), if any.
pub(crate) fn interpreter(d: &[u8]) -> Option<String> {
    let (_, off, _, _) = program_headers(d)?.into_iter().find(|p| p.0 == PT_INTERP)?;
    c_string(d, off)
}

/// Whether the file is ELF and asks for a dynamic loader.
pub(crate) fn is_dynamic_program(d: &[u8]) -> bool {
    interpreter(d).is_some()
}

/// The `DT_NEEDED` entries (sonames) of a program or shared library, in order; empty for
/// a static one; `None` if it is not ELF or its dynamic section cannot be read.
pub(crate) fn needed(d: &[u8]) -> Option<Vec<String>> {
    let phdrs = program_headers(d)?;
    let Some(&(_, dyn_off, _, dyn_size)) = phdrs.iter().find(|p| p.0 == PT_DYNAMIC) else {
        return Some(Vec::new());
    };
    let mut names = Vec::new();
    let mut strtab = None;
    let mut at = dyn_off;
    while at + 16 <= dyn_off.checked_add(dyn_size)? {
        let (tag, val) = (le64(d, at)?, le64(d, at + 8)?);
        match tag {
            DT_NULL => break,
            DT_NEEDED => names.push(val as usize),
            DT_STRTAB => strtab = Some(val),
            _ => {}
        }
        at += 16;
    }
    // DT_STRTAB is an address: the loadable segment that holds it says where it is in the file.
    let addr = strtab?;
    let (_, off, vaddr, _) = phdrs
        .iter()
        .copied()
        .find(|p| p.0 == PT_LOAD && p.2 <= addr && addr < p.2 + p.3 as u64)?;
    let str_off = off + (addr - vaddr) as usize;
    names
        .into_iter()
        .map(|n| c_string(d, str_off.checked_add(n)?))
        .collect()
}

/// The contents of the named section.
pub(crate) fn section<'a>(d: &'a [u8], name: &str) -> Option<&'a [u8]> {
    if !is_elf64le(d) {
        return None;
    }
    let shoff = le64(d, 0x28)? as usize;
    let shentsize = le16(d, 0x3a)? as usize;
    let shnum = le16(d, 0x3c)? as usize;
    let shstrndx = le16(d, 0x3e)? as usize;
    let header = |i: usize| -> Option<(u32, usize, usize)> {
        let at = shoff.checked_add(i.checked_mul(shentsize)?)?;
        Some((
            le32(d, at)?,
            le64(d, at + 0x18)? as usize,
            le64(d, at + 0x20)? as usize,
        ))
    };
    let (_, stroff, strsize) = header(shstrndx)?;
    let names = d.get(stroff..stroff.checked_add(strsize)?)?;
    (0..shnum).find_map(|i| {
        let (n, off, size) = header(i)?;
        let rest = names.get(n as usize..)?;
        let end = rest.iter().position(|b| *b == 0)?;
        if &rest[..end] == name.as_bytes() {
            d.get(off..off.checked_add(size)?)
        } else {
            None
        }
    })
}

/// A minimal dynamically linked ELF64 file (for tests): one PT_LOAD over the whole file,
/// PT_INTERP (when given) and PT_DYNAMIC with DT_NEEDED entries and DT_STRTAB.
#[cfg(test)]
pub(crate) fn fake_program(interp: Option<&str>, needed: &[&str]) -> Vec<u8> {
    fake_program_for(EM_X86_64, interp, needed)
}

/// [`fake_program`] for the machine `m`.
#[cfg(test)]
pub(crate) fn fake_program_for(m: u16, interp: Option<&str>, needed: &[&str]) -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    let nph = if interp.is_some() { 3 } else { 2 };
    let mut d = vec![0u8; 64 + 56 * nph];
    d[..4].copy_from_slice(b"\x7fELF");
    d[4] = 2;
    d[5] = 1;
    d[6] = 1;
    d[0x12..0x14].copy_from_slice(&m.to_le_bytes());
    d[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
    d[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
    d[0x38..0x3a].copy_from_slice(&(nph as u16).to_le_bytes());
    let interp_off = d.len();
    if let Some(i) = interp {
        d.extend_from_slice(i.as_bytes());
        d.push(0);
    }
    let str_off = d.len();
    let mut name_at = Vec::new();
    d.push(0);
    for n in needed {
        name_at.push(d.len() - str_off);
        d.extend_from_slice(n.as_bytes());
        d.push(0);
    }
    d.resize(d.len().next_multiple_of(8), 0);
    let dyn_off = d.len();
    for a in &name_at {
        d.extend_from_slice(&DT_NEEDED.to_le_bytes());
        d.extend_from_slice(&(*a as u64).to_le_bytes());
    }
    d.extend_from_slice(&DT_STRTAB.to_le_bytes());
    d.extend_from_slice(&(BASE + str_off as u64).to_le_bytes());
    d.extend_from_slice(&[0u8; 16]);
    let total = d.len();
    let ph = |d: &mut Vec<u8>, i: usize, ty: u32, off: usize, size: usize| {
        let at = 64 + 56 * i;
        d[at..at + 4].copy_from_slice(&ty.to_le_bytes());
        d[at + 8..at + 16].copy_from_slice(&(off as u64).to_le_bytes());
        d[at + 16..at + 24].copy_from_slice(&(BASE + off as u64).to_le_bytes());
        d[at + 32..at + 40].copy_from_slice(&(size as u64).to_le_bytes());
    };
    ph(&mut d, 0, PT_LOAD, 0, total);
    ph(&mut d, 1, PT_DYNAMIC, dyn_off, total - dyn_off);
    if let Some(i) = interp {
        ph(&mut d, 2, PT_INTERP, interp_off, i.len() + 1);
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpreter_and_needed_libraries() {
        let p = fake_program(
            Some("/lib64/ld-linux-x86-64.so.2"),
            &["libz.so.1", "libc.so.6"],
        );
        assert_eq!(
            interpreter(&p).as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2")
        );
        assert_eq!(needed(&p).unwrap(), ["libz.so.1", "libc.so.6"]);
        assert_eq!(machine(&p), Some(EM_X86_64));
        let a = fake_program_for(EM_AARCH64, Some("/lib/ld-linux-aarch64.so.1"), &[]);
        assert_eq!(machine(&a), Some(EM_AARCH64));
        assert_eq!(machine_name(EM_AARCH64), "aarch64");
        assert_eq!(machine(b"#!/bin/sh\n"), None);
        let lib = fake_program(None, &["libc.so.6"]);
        assert_eq!(interpreter(&lib), None);
        assert_eq!(needed(&lib).unwrap(), ["libc.so.6"]);
        assert!(needed(b"#!/bin/sh\n").is_none());
        // Truncated files are refused, never a panic.
        for n in [0, 10, 64, 100, p.len() - 20] {
            let _ = needed(&p[..n]);
            let _ = interpreter(&p[..n]);
        }
    }
}
