//! A fast path for the plain YAML that machine entries are written in.
//!
//! The general parser spends about 300 instructions a byte; a 100,000-machine inventory
//! is 14 MB. Machine entries are nearly always a small subset of YAML: block mappings of
//! `key: value` lines, plain or quoted scalars, and one-line flow collections such as
//! `vars: { rack: r12, slot: 3 }`. This reads exactly that subset, line by line, into the
//! same tree (the same nodes, texts, quoting and positions) the general parser builds, and
//! gives up — `None` — on anything else: block sequences, multi-line scalars or flow
//! collections, escapes, anchors, aliases, tags, empty values, duplicate keys, tabs,
//! non-ASCII text, odd indentation. The caller then parses the text with the general parser,
//! so giving up is never wrong, only slower. The tests compare both parsers' trees.

use std::collections::HashSet;

use super::{is_null, Kind, Node, Pos};

/// The longest line the fast path reads (an implicit key may not span more than 1,024
/// characters, so no key on a shorter line can).
const MAX_LINE: usize = 1000;

/// The tree of `text` if it is in the subset, else `None`.
pub(crate) fn parse(text: &str) -> Option<Node> {
    // Printable ASCII and newlines only (YAML refuses control characters; tabs and CRs
    // are the general parser's).
    if !text
        .bytes()
        .all(|b| b == b'\n' || (b' '..=b'~').contains(&b))
    {
        return None;
    }
    let mut lines: Vec<Line<'_>> = Vec::new();
    for (i, l) in text.split('\n').enumerate() {
        // YAML's implicit keys end within 1,024 characters of their start; lines that
        // long are left to the general parser, which enforces it.
        if l.len() > MAX_LINE {
            return None;
        }
        let body = l.trim_start_matches(' ');
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        lines.push(Line {
            no: i + 1,
            indent: l.len() - body.len(),
            text: l,
        });
    }
    let first = lines.first()?;
    if first.text.starts_with("---") || first.text.starts_with('%') {
        return None;
    }
    let mut at = 0;
    let root = block_map(&lines, &mut at, first.indent)?;
    (at == lines.len()).then_some(root)
}

struct Line<'t> {
    /// 1-based line number.
    no: usize,
    indent: usize,
    /// The whole line, indentation included.
    text: &'t str,
}

/// Characters that may not start a plain scalar here (YAML indicators).
fn indicator(c: u8) -> bool {
    b"-?:,[]{}#&*!|>'\"%@`\\".contains(&c)
}

fn block_map<'t>(lines: &[Line<'t>], at: &mut usize, indent: usize) -> Option<Node> {
    let mut entries: Vec<(Node, Node)> = Vec::new();
    let mut raws: Vec<&'t str> = Vec::new();
    let mut big: HashSet<&'t str> = HashSet::new();
    let pos = Pos {
        line: lines[*at].no,
        col: indent + 1,
    };
    while let Some(line) = lines.get(*at) {
        if line.indent < indent {
            break;
        }
        if line.indent > indent {
            return None;
        }
        let mut c = Cursor {
            s: line.text.as_bytes(),
            i: indent,
            line: line.no,
        };
        let (key, raw) = c.key()?;
        // Duplicate keys are the general parser's to report. Small maps are searched, big
        // ones (a piece's machines) indexed.
        if raws.len() < 16 {
            if raws.contains(&raw) {
                return None;
            }
            raws.push(raw);
            if raws.len() == 16 {
                big = raws.iter().copied().collect();
            }
        } else if !big.insert(raw) {
            return None;
        }
        // `:` then the end of the line, a comment, or a space and the value.
        c.i += 1;
        c.spaces();
        *at += 1;
        let value = if c.done_or_comment() {
            // The value is the block below, more indented.
            let next = lines.get(*at).filter(|l| l.indent > indent)?;
            block_map(lines, at, next.indent)?
        } else {
            let v = c.block_value()?;
            c.spaces();
            if !c.done_or_comment() {
                return None;
            }
            v
        };
        entries.push((key, value));
    }
    entries.shrink_to_fit();
    Some(Node {
        kind: Kind::Map(entries),
        pos,
    })
}

fn same_text(a: &Node, b: &Node) -> bool {
    match (&a.kind, &b.kind) {
        (Kind::Scalar { text: x, .. }, Kind::Scalar { text: y, .. }) => x == y,
        _ => false,
    }
}

fn scalar(text: &str, quoted: bool, pos: Pos) -> Node {
    let kind = if !quoted && is_null(text) {
        Kind::Null
    } else {
        Kind::Scalar {
            text: text.to_string(),
            quoted,
        }
    };
    Node { kind, pos }
}

struct Cursor<'t> {
    s: &'t [u8],
    i: usize,
    line: usize,
}

impl<'t> Cursor<'t> {
    fn pos(&self) -> Pos {
        Pos {
            line: self.line,
            col: self.i + 1,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.i += 1;
        }
    }

    /// At the end of the line, or at a comment (which needs a space before it).
    fn done_or_comment(&self) -> bool {
        match self.peek() {
            None => true,
            Some(b'#') => self.i > 0 && self.s[self.i - 1] == b' ',
            _ => false,
        }
    }

    fn text(&self, from: usize, to: usize) -> &'t str {
        // ASCII checked by `parse`.
        let s: &'t [u8] = self.s;
        std::str::from_utf8(&s[from..to]).unwrap_or_default()
    }

    /// A block mapping key and its text, leaving the cursor on its `:` (followed by a space
    /// or the end).
    fn key(&mut self) -> Option<(Node, &'t str)> {
        let pos = self.pos();
        let key = match self.peek()? {
            b'"' | b'\'' => {
                let from = self.i + 1;
                let n = self.quoted()?;
                (n, self.text(from, self.i - 1))
            }
            c if indicator(c) => return None,
            _ => {
                let from = self.i;
                while let Some(c) = self.peek() {
                    if c == b':' && matches!(self.s.get(self.i + 1), None | Some(b' ')) {
                        break;
                    }
                    if c == b'#' && self.s[self.i - 1] == b' ' {
                        return None;
                    }
                    self.i += 1;
                }
                let text = self.text(from, self.i);
                if text.ends_with(' ') || text.contains(['{', '}', '[', ']', ',']) {
                    return None;
                }
                if is_null(text) {
                    return None; // a null key
                }
                (scalar(text, false, pos), text)
            }
        };
        let colon_ok =
            self.peek() == Some(b':') && matches!(self.s.get(self.i + 1), None | Some(b' '));
        colon_ok.then_some(key)
    }

    /// A quoted scalar without escapes; the cursor after its closing quote.
    fn quoted(&mut self) -> Option<Node> {
        let pos = self.pos();
        let q = self.peek()?;
        let from = self.i + 1;
        let len = self.s[from..].iter().position(|&c| c == q)?;
        let to = from + len;
        let text = self.text(from, to);
        if text.contains('\\') || (q == b'\'' && self.s.get(to + 1) == Some(&b'\'')) {
            return None;
        }
        self.i = to + 1;
        Some(scalar(text, true, pos))
    }

    /// The value after `key: ` on the key's line.
    fn block_value(&mut self) -> Option<Node> {
        match self.peek()? {
            b'"' | b'\'' => self.quoted(),
            b'{' | b'[' => self.flow(0),
            c if indicator(c) => None,
            _ => {
                let pos = self.pos();
                let from = self.i;
                let mut end = self.s.len();
                while let Some(c) = self.peek() {
                    if c == b'#' && self.s[self.i - 1] == b' ' {
                        end = self.i;
                        break;
                    }
                    self.i += 1;
                }
                let text = self.text(from, end).trim_end_matches(' ');
                if text.contains(": ")
                    || text.ends_with(':')
                    || text.contains(['{', '}', '[', ']', ','])
                {
                    return None;
                }
                self.i = from + text.len();
                Some(scalar(text, false, pos))
            }
        }
    }

    /// A flow collection closed on this line.
    fn flow(&mut self, depth: usize) -> Option<Node> {
        if depth > 8 {
            return None;
        }
        let pos = self.pos();
        let open = self.peek()?;
        let close = if open == b'{' { b'}' } else { b']' };
        self.i += 1;
        let mut entries: Vec<(Node, Node)> = Vec::new();
        let mut items: Vec<Node> = Vec::new();
        self.spaces();
        if self.peek() == Some(close) {
            self.i += 1;
        } else {
            loop {
                if open == b'{' {
                    let key = self.flow_scalar()?;
                    let null = matches!(key.kind, Kind::Null);
                    if null
                        || self.peek() != Some(b':')
                        || entries.iter().any(|(k, _)| same_text(k, &key))
                    {
                        return None;
                    }
                    self.i += 1;
                    if self.peek() != Some(b' ') {
                        return None;
                    }
                    self.spaces();
                    let value = self.flow_item(depth)?;
                    entries.push((key, value));
                } else {
                    let item = self.flow_item(depth)?;
                    if self.peek() == Some(b':') {
                        return None; // `[a: b]`: a mapping inside a list
                    }
                    items.push(item);
                }
                self.spaces();
                match self.peek()? {
                    b',' => {
                        self.i += 1;
                        self.spaces();
                        if matches!(self.peek(), Some(b'}' | b']')) {
                            return None; // a trailing comma
                        }
                    }
                    c if c == close => {
                        self.i += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        let kind = if open == b'{' {
            Kind::Map(entries)
        } else {
            Kind::Seq(items)
        };
        Some(Node { kind, pos })
    }

    fn flow_item(&mut self, depth: usize) -> Option<Node> {
        match self.peek()? {
            b'{' | b'[' => self.flow(depth + 1),
            _ => self.flow_scalar(),
        }
    }

    /// A scalar inside a flow collection: quoted, or plain up to `,` `:` `}` `]`.
    fn flow_scalar(&mut self) -> Option<Node> {
        let c = self.peek()?;
        if c == b'"' || c == b'\'' {
            let n = self.quoted()?;
            self.spaces();
            return Some(n);
        }
        if indicator(c) {
            return None;
        }
        let pos = self.pos();
        let from = self.i;
        while let Some(c) = self.peek() {
            match c {
                b',' | b'}' | b']' | b'[' | b'{' | b'#' => break,
                b':' if matches!(
                    self.s.get(self.i + 1),
                    Some(b' ' | b',' | b'}' | b']') | None
                ) =>
                {
                    break
                }
                _ => self.i += 1,
            }
        }
        if matches!(self.peek(), Some(b'[' | b'{' | b'#')) {
            return None;
        }
        let text = self.text(from, self.i).trim_end_matches(' ');
        Some(scalar(text, false, pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn general(text: &str) -> Option<Node> {
        super::super::parse(Path::new("t.yaml"), text).ok()
    }

    /// Where the fast path reads a text, it reads what the general parser reads.
    fn same(text: &str) -> bool {
        match parse(text) {
            Some(fast) => {
                assert_eq!(Some(&fast), general(text).as_ref(), "{text}");
                true
            }
            None => false,
        }
    }

    #[test]
    fn machine_entries_read_as_the_general_parser_reads_them() {
        let entries = "  \"52:54:00:00:00:01\":\n    hostname: m1   # the first\n    role: web\n    ip: 198.18.1.0\n    vars: { rack: \"r000\", slot: 0, l: [a, 'b', 3], e: {}, s: [], n: ~, x: null }\n\n# a comment\n  52-54-00-00-00-02:\n    hostname: m2\n    disk: { model: \"*SSD*\", min_size: 100G }\n    interfaces:\n      boot: 52:54:00:00:00:02\n      data: '52:54:00:00:01:02'\n    network:\n      bond0: { members: [boot, data], mode: 802.3ad, dhcp: true }\n";
        assert!(same(entries), "the usual entries must take the fast path");
        for ok in [
            "a: 1\n",
            "a: b c d\n",
            "a: 'x y'\nb: \"\"\n",
            "k: {a: 1}\n",
            "k: { a: { b: [1, [2, 3]] } }   # c\n",
            "  a:\n    b:\n      c: d\n  e: f\n",
            "a: 1#not a comment\n",
            "a: http://x:8080/y\n",
        ] {
            assert!(same(ok), "{ok:?} should take the fast path");
        }
    }

    #[test]
    fn anything_else_is_left_to_the_general_parser() {
        for odd in [
            "a:\n  - 1\n",
            "a: |\n  x\n",
            "a: &x 1\nb: *x\n",
            "a: !!str 1\n",
            "a: \"x\\ny\"\n",
            "a: 'it''s'\n",
            "a:\n",
            "a: 1\na: 2\n",
            "a: {b: 1, b: 2}\n",
            "a: {b: 1,\n  c: 2}\n",
            "a: b\n  c\n",
            "a: x: y\n",
            "a:\tb\n",
            "a: é\n",
            "a: [b: c]\n",
            "a: {b: 1,}\n",
            "  a: 1\n b: 2\n",
            "a: 1\n  b: 2\n",
            "? a\n: b\n",
            "- a\n",
            "~: 1\n~: 2\n",
            "a: {~: 1, null: 2}\n",
            // found by the fuzzer: a NUL inside a flow mapping
            "db:\n  vars: { dis\0\0: /dev/sda }\n",
            "a: b\x7f\n",
        ] {
            assert!(parse(odd).is_none(), "{odd:?} should be left alone");
        }
        // Found by the fuzzer: a quoted key longer than YAML's 1,024-character limit for
        // implicit keys, which the general parser refuses.
        let long = format!("a:\n  \"52:{}\":\n    b: c\n", "&".repeat(1100));
        assert!(general(&long).is_none(), "the general parser refuses it");
        assert!(
            parse(&long).is_none(),
            "a key over 1,024 characters is left alone"
        );
        let flow = format!("a: {{ {}: 1 }}\n", "k".repeat(1100));
        assert!(parse(&flow).is_none());
    }

    /// Many small random documents from YAML-ish pieces: whenever the fast path takes one,
    /// the trees are equal.
    #[test]
    fn random_documents_agree() {
        let keys = [
            "a",
            "b2",
            "\"q k\"",
            "'s'",
            "52:54:00:00:00:01",
            "x-y",
            "\"\"",
            "n_1",
        ];
        let values = [
            "1",
            "-2",
            "true",
            "~",
            "null",
            "\"s p\"",
            "'t'",
            "plain text",
            "{}",
            "[]",
            "{ a: 1, b: [x, y] }",
            "[1, 'two', \"3\"]",
            "{a: {b: c}}",
            "v # c",
            "a:b",
            "http://h:1/p",
            "x#y",
            "*",
            "&a b",
            "[a, b",
            "{a}",
            "{a: }",
            "'x'' y'",
            "\"e\\t\"",
            "|",
            "- z",
            "[ ]",
            "{ }",
            "[a,b]",
            "{a: 1, a: 2}",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut taken = 0;
        for _ in 0..3000 {
            let mut doc = String::new();
            let mut indent = 0;
            for _ in 0..1 + next(6) {
                let k = keys[next(keys.len())];
                match next(5) {
                    0 if indent < 6 => {
                        doc.push_str(&format!("{}{k}:\n", " ".repeat(indent)));
                        indent += 2;
                    }
                    1 if indent >= 2 => {
                        indent -= 2;
                        doc.push_str(&format!(
                            "{}{k}: {}\n",
                            " ".repeat(indent),
                            values[next(values.len())]
                        ));
                    }
                    _ => doc.push_str(&format!(
                        "{}{k}: {}\n",
                        " ".repeat(indent),
                        values[next(values.len())]
                    )),
                }
                if next(8) == 0 {
                    doc.push_str("\n# c\n");
                }
            }
            if same(&doc) {
                taken += 1;
            }
        }
        assert!(taken > 300, "the fast path took only {taken} of 3000");
    }
}
