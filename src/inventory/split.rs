//! Reading a big `machines:` section on every core, a piece at a time.
//!
//! A 100,000-machine inventory is a 14 MB file whose node tree, built whole, costs seconds
//! and hundreds of megabytes. Its `machines:` section is, in the way operators and
//! generators write it, one block mapping whose entries all start at the same indentation.
//! YAML continuation lines (of a multi-line scalar, a flow collection or a nested block)
//! must be indented more than the key they belong to, so every line at exactly the entries'
//! indentation that is not a comment starts a new machine: the section can be cut there
//! into pieces that are each a YAML document of their own. Each piece is parsed, read into
//! machines and dropped, on as many threads as there are cores; the rest of the file (with
//! the section's lines left empty, so every line keeps its number) is parsed as before.
//!
//! Anything unusual — a flow-style or aliased section, anchors, tabs, a line less indented
//! than the entries, a piece that does not parse, the same key in two pieces — makes the
//! caller parse the whole file the ordinary way, so errors read exactly as they always did.
//! Splitting is only worth it for big sections ([`MIN_SPLIT_BYTES`]).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::yaml::{self, Kind, Node, Problem, Report};

/// Sections smaller than this are parsed with the rest of the file.
pub(super) const MIN_SPLIT_BYTES: usize = 512 * 1024;

/// The file cut in two: everything but the section's body, and the body in pieces.
#[derive(Debug)]
pub(super) struct Split<'t> {
    /// The file with the body's lines emptied (line numbers kept).
    pub(super) header: String,
    /// The 1-based line of `machines:`.
    pub(super) key_line: usize,
    /// Pieces of the body: the 1-based line number of each piece's first line, its text.
    pub(super) pieces: Vec<(usize, &'t str)>,
}

/// Cut `text` as described above; `None` when it cannot be cut safely or is too small.
/// `pieces` is how many pieces to aim for.
pub(super) fn split(text: &str, min_bytes: usize, pieces: usize) -> Option<Split<'_>> {
    // Line numbers here are counted at '\n' only: a file with other line breaks YAML knows
    // (a lone CR; NEL, LS, PS) is read whole.
    if text.len() < min_bytes || text.contains(['\r', '\u{85}', '\u{2028}', '\u{2029}']) {
        return None;
    }
    // Byte offset of each line start.
    let mut starts = Vec::new();
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        starts.push(at);
        at += line.len();
    }
    let line = |i: usize| {
        let end = starts.get(i + 1).copied().unwrap_or(text.len());
        &text[starts[i]..end]
    };
    // The section's key: `machines:` at column 0, nothing after it but a comment.
    let key = (0..starts.len()).find(|&i| {
        line(i)
            .strip_prefix("machines:")
            .is_some_and(|rest| matches!(rest.trim_start().chars().next(), None | Some('#')))
    })?;
    let body_start = key + 1;
    let mut body_end = body_start;
    let mut indent = None;
    let mut cuts = Vec::new();
    while body_end < starts.len() {
        let l = line(body_end);
        let content = l.trim_end_matches(['\n', '\r']);
        let trimmed = content.trim_start_matches(' ');
        if trimmed.is_empty() || trimmed.starts_with('#') {
            body_end += 1;
            continue;
        }
        let n = content.len() - trimmed.len();
        if n == 0 {
            break; // the next top-level key, or a document marker
        }
        if trimmed.starts_with('\t') {
            return None;
        }
        match indent {
            None => {
                // Entries of a block mapping (not a list, not a flow collection).
                if trimmed.starts_with(['-', '{', '[', '&', '*', '!', '?']) {
                    return None;
                }
                indent = Some(n);
                cuts.push(body_end);
            }
            Some(i) if n == i => cuts.push(body_end),
            Some(i) if n < i => return None,
            Some(_) => {}
        }
        if has_anchor_or_alias(trimmed) {
            return None;
        }
        body_end += 1;
    }
    indent?;
    let body_bytes = starts.get(body_end).copied().unwrap_or(text.len()) - starts[body_start];
    if body_bytes < min_bytes {
        return None;
    }
    // Pieces of about equal size, each starting at a cut.
    let want = pieces.max(1);
    let per_piece = body_bytes.div_ceil(want);
    let mut out = Vec::new();
    let mut piece_start = cuts[0];
    for &c in &cuts[1..] {
        if starts[c] - starts[piece_start] >= per_piece {
            out.push((piece_start, c));
            piece_start = c;
        }
    }
    out.push((piece_start, body_end));
    let end_byte = |l: usize| starts.get(l).copied().unwrap_or(text.len());
    let pieces = out
        .iter()
        .map(|&(a, b)| (a + 1, &text[starts[a]..end_byte(b)]))
        .collect();
    // The header: every body line emptied, newline kept.
    let mut header = String::with_capacity(starts[body_start] + (body_end - body_start) + 64);
    header.push_str(&text[..starts[body_start]]);
    for i in body_start..body_end {
        if line(i).ends_with('\n') {
            header.push('\n');
        }
    }
    header.push_str(&text[end_byte(body_end)..]);
    Some(Split {
        header,
        key_line: key + 1,
        pieces,
    })
}

/// Whether the header's tree has the top-level key `machines` at `line`, column 1, with
/// nothing as its value: the section the cut emptied.
pub(super) fn section_is_where_cut(root: &Node, line: usize) -> bool {
    let Kind::Map(entries) = &root.kind else {
        return false;
    };
    entries.iter().any(|(k, v)| {
        k.as_str() == Some("machines")
            && k.pos == yaml::Pos { line, col: 1 }
            && matches!(v.kind, Kind::Null)
    })
}

/// `&name` or `*name` where YAML would read an anchor or an alias (after the start of the
/// value, a space, or a flow indicator). Quoted text may trip it too: that only costs the
/// split, never correctness.
fn has_anchor_or_alias(line: &str) -> bool {
    let b = line.as_bytes();
    b.iter().enumerate().any(|(i, &c)| {
        (c == b'&' || c == b'*')
            && (i == 0 || matches!(b[i - 1], b' ' | b'[' | b'{' | b','))
            && b.get(i + 1).is_some_and(|n| !n.is_ascii_whitespace())
    })
}

/// What reading one machine entry gave, with the problems it found (kept apart, so the
/// caller can drop a duplicate's the way the ordinary path never reads them).
pub(super) struct Read<T> {
    /// The entry's key as written.
    pub(super) key: String,
    pub(super) value: T,
    pub(super) problems: Vec<Problem>,
}

/// A piece's result: not yet read; did not parse; its entries.
type Slot<T> = Option<Option<Vec<Read<T>>>>;

/// Parse every piece and read each entry with `read`, on `threads` threads; pieces come
/// back in file order. `None`: a piece did not parse as a mapping, or a key is in two
/// pieces (the caller then parses the whole file, for the ordinary error).
pub(super) fn read_pieces<T: Send>(
    file: &Path,
    pieces: &[(usize, &str)],
    threads: usize,
    read: &(dyn Fn(&mut Report, &Node, &Node) -> T + Sync),
) -> Option<Vec<Vec<Read<T>>>> {
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Slot<T>>> = pieces.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, pieces.len().max(1)) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(first_line, text)) = pieces.get(i) else {
                    break;
                };
                let got = read_piece(file, first_line, text, read);
                let failed = got.is_none();
                *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(got);
                if failed {
                    // The whole file gets parsed anyway: stop the others early.
                    next.store(pieces.len(), Ordering::Relaxed);
                    break;
                }
            });
        }
    });
    let mut out = Vec::with_capacity(pieces.len());
    for r in results {
        out.push(r.into_inner().unwrap_or_else(|e| e.into_inner())??);
    }
    // A key written the same way in two pieces: YAML's duplicate-key error, from the
    // ordinary parse.
    let mut keys = std::collections::HashSet::with_capacity(out.iter().map(Vec::len).sum());
    if !out.iter().flatten().all(|e| keys.insert(e.key.as_str())) {
        return None;
    }
    Some(out)
}

fn read_piece<T>(
    file: &Path,
    first_line: usize,
    text: &str,
    read: &(dyn Fn(&mut Report, &Node, &Node) -> T + Sync),
) -> Option<Vec<Read<T>>> {
    // The plain YAML machine entries are nearly always written in, else the general parser.
    let mut root = match yaml::fast::parse(text) {
        Some(root) => root,
        None => yaml::parse(file, text).ok()?,
    };
    yaml::shift_lines(&mut root, first_line - 1);
    let Kind::Map(entries) = root.kind else {
        return None;
    };
    let mut r = Report::new(file);
    let mut out = Vec::with_capacity(entries.len());
    for (k, v) in entries {
        let value = read(&mut r, &k, &v);
        out.push(Read {
            key: k.as_str().unwrap_or_default().to_string(),
            value,
            problems: std::mem::take(&mut r.problems),
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INV: &str = "\
defaults:
  vars: { a: 1 }
machines:   # the fleet
  \"52:54:00:00:00:01\":
    hostname: one
    disk: { model: \"*SSD*\" }

# a comment at column 0 inside the section
  \"52:54:00:00:00:02\":
    hostname: two
  \"52:54:00:00:00:03\": { hostname: three }
roles:
  web: {}
";

    #[test]
    fn cuts_at_entries_and_keeps_line_numbers() {
        let s = split(INV, 0, 3).expect("splits");
        assert_eq!(s.header.lines().count(), INV.lines().count());
        assert!(s.header.contains("machines:   # the fleet\n\n\n"));
        assert!(s.header.ends_with("roles:\n  web: {}\n"));
        let firsts: Vec<usize> = s.pieces.iter().map(|p| p.0).collect();
        assert_eq!(firsts[0], 4);
        // Rejoined, the pieces are the body exactly.
        let body: String = s.pieces.iter().map(|p| p.1).collect();
        let start = INV.find("  \"52:54:00:00:00:01\"").unwrap();
        let end = INV.find("roles:").unwrap();
        assert_eq!(body, &INV[start..end]);
        for (line, text) in &s.pieces {
            assert_eq!(
                INV.lines().nth(line - 1).unwrap(),
                text.lines().next().unwrap()
            );
        }
    }

    #[test]
    fn does_not_cut_what_it_cannot_cut_safely() {
        for bad in [
            "machines: {}\n",
            "machines:\n  - a\n",
            "machines:\n  a: &x { b: 1 }\n  c: *x\n",
            "machines:\n    a: 1\n  b: 2\n",
            "machines:\n\ta: 1\n",
            "roles: {}\n",
            // found by the fuzzer: CRs are line breaks to YAML, not here
            "# a\rb\r\nmachines:\n  52:54:00:00:00:01: {}\n",
        ] {
            assert!(split(bad, 0, 2).is_none(), "{bad:?}");
        }
        // Small sections are not worth it.
        assert!(split(INV, MIN_SPLIT_BYTES, 2).is_none());
    }
}
