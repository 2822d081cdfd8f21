//! A YAML tree that remembers where every node came from.
//!
//! Owns turning operator-written YAML into nodes with `line:col` positions, so config and
//! inventory errors can say `inventory.yaml:12:5: unknown role "wbe"`. Most YAML parsers
//! silently keep the last of two equal mapping keys; this one refuses them and names both
//! places. Typed reading (what keys exist, what values mean) belongs to `config` and
//! `inventory`; this module only offers small helpers for it (`MapReader`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

pub(crate) mod fast;

/// A position in a file: 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, PartialOrd, Ord)]
pub(crate) struct Pos {
    pub(crate) line: usize,
    pub(crate) col: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// One problem in one file, at one place.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}:{}: {}", file.display(), pos, message)]
pub(crate) struct Problem {
    pub(crate) file: PathBuf,
    pub(crate) pos: Pos,
    pub(crate) message: String,
}

/// Every problem found in a file (validation goes on after the first, so an operator sees
/// them all at once). Never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Problems(pub(crate) Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

impl Problems {}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Kind {
    /// `~`, `null`, or nothing.
    Null,
    /// Any scalar, as written; `quoted` is true for '…' and "…" and block scalars (never
    /// read as a number, boolean or null).
    Scalar {
        text: String,
        quoted: bool,
    },
    Seq(Vec<Node>),
    /// Keys are kept in order; duplicate keys were refused at parse time.
    Map(Vec<(Node, Node)>),
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Node {
    pub(crate) kind: Kind,
    pub(crate) pos: Pos,
}

impl Node {
    pub(crate) fn describe(&self) -> &'static str {
        match &self.kind {
            Kind::Null => "nothing",
            Kind::Scalar { .. } => "a scalar",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }
}

fn pos_of(span: &Span) -> Pos {
    Pos {
        line: span.start.line(),
        col: span.start.col() + 1,
    }
}

/// A container under construction.
enum Open {
    Seq {
        pos: Pos,
        items: Vec<Node>,
        anchor: usize,
    },
    Map {
        pos: Pos,
        entries: Vec<(Node, Node)>,
        /// A key read, waiting for its value.
        pending: Option<Node>,
        anchor: usize,
        /// Key index, built once a map grows large (see `first_definition`).
        seen: HashMap<String, Pos>,
    },
}

/// Builds the node tree from parser events.
struct Builder<'f> {
    file: &'f Path,
    stack: Vec<Open>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    /// Nodes written out in the file, and nodes copied in by aliases: aliases may copy at
    /// most [`ALIAS_BUDGET`] nodes or as many as the file itself holds, whichever is more,
    /// so nested aliases ("billion laughs") are an error, not an exhausted memory.
    written: usize,
    aliased: usize,
}

/// Nodes aliases may copy in, at least.
const ALIAS_BUDGET: usize = 100_000;

/// Nodes in `node`'s tree, counting no further than `limit`.
fn tree_size(node: &Node, limit: usize) -> usize {
    let mut n = 0;
    let mut todo = vec![node];
    while let Some(x) = todo.pop() {
        n += 1;
        if n > limit {
            break;
        }
        match &x.kind {
            Kind::Seq(items) => todo.extend(items.iter()),
            Kind::Map(entries) => {
                for (k, v) in entries {
                    todo.push(k);
                    todo.push(v);
                }
            }
            _ => {}
        }
    }
    n
}

impl Builder<'_> {
    fn problem(&self, pos: Pos, message: String) -> Problems {
        Problems(vec![Problem {
            file: self.file.to_path_buf(),
            pos,
            message,
        }])
    }

    /// Attach a finished node to whatever is open, checking duplicate keys.
    fn attach(&mut self, node: Node) -> Result<(), Problems> {
        let file = self.file;
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Open::Seq { items, .. }) => items.push(node),
            Some(Open::Map {
                entries,
                pending,
                seen,
                ..
            }) => match pending.take() {
                Some(key) => entries.push((key, node)),
                None => {
                    if let Some(first) = first_definition(entries, seen, &node) {
                        return Err(Problems(vec![Problem {
                            file: file.to_path_buf(),
                            pos: node.pos,
                            message: format!(
                                "duplicate key {} (first defined at line {}, column {}); YAML would silently keep only the last one",
                                key_text(&node),
                                first.line,
                                first.col
                            ),
                        }]));
                    }
                    *pending = Some(node);
                }
            },
        }
        Ok(())
    }

    /// Close the innermost container and attach it where it belongs.
    fn close(&mut self, pos: Pos) -> Result<(), Problems> {
        let (node, anchor) = match self.stack.pop() {
            Some(Open::Seq {
                pos,
                mut items,
                anchor,
            }) => {
                items.shrink_to_fit();
                (
                    Node {
                        kind: Kind::Seq(items),
                        pos,
                    },
                    anchor,
                )
            }
            Some(Open::Map {
                pos,
                mut entries,
                anchor,
                ..
            }) => {
                // Trimmed as they close: a 100,000-machine tree is mostly small maps.
                entries.shrink_to_fit();
                (
                    Node {
                        kind: Kind::Map(entries),
                        pos,
                    },
                    anchor,
                )
            }
            None => return Err(self.problem(pos, "unbalanced YAML structure".into())),
        };
        self.anchored(anchor, &node);
        self.attach(node)
    }

    fn anchored(&mut self, anchor: usize, node: &Node) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
    }
}

/// Where `key` was first defined in a map being built, if it was. Small maps (almost all
/// of them) are scanned; large ones (the machines of a big inventory) get an index as they
/// grow, so a 100,000-machine inventory does not compare every key with every other.
fn first_definition(
    entries: &[(Node, Node)],
    seen: &mut HashMap<String, Pos>,
    key: &Node,
) -> Option<Pos> {
    match &key.kind {
        Kind::Scalar { text, .. } if entries.len() >= 16 => {
            if seen.is_empty() {
                for (k, _) in entries {
                    if let Kind::Scalar { text, .. } = &k.kind {
                        seen.entry(text.clone()).or_insert(k.pos);
                    }
                }
            }
            match seen.get(text) {
                Some(p) => Some(*p),
                None => {
                    seen.insert(text.clone(), key.pos);
                    None
                }
            }
        }
        _ => entries
            .iter()
            .find(|(k, _)| same_key(k, key))
            .map(|(k, _)| k.pos),
    }
}

/// Parse one YAML document. An empty file is `Null`. More than one document, an unknown
/// alias or a duplicate key is an error with its position.
pub(crate) fn parse(file: &Path, text: &str) -> Result<Node, Problems> {
    let mut b = Builder {
        file,
        stack: Vec::new(),
        anchors: HashMap::new(),
        root: None,
        written: 0,
        aliased: 0,
    };
    let mut documents = 0usize;
    let mut parser = Parser::new_from_str(text);
    while let Some(ev) = parser.next_event() {
        let (ev, span) = ev.map_err(|e| {
            let m = e.marker();
            let at = Pos {
                line: m.line(),
                col: m.col() + 1,
            };
            b.problem(at, format!("YAML syntax error: {}", e.info()))
        })?;
        let pos = pos_of(&span);
        match ev {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(b.problem(
                        pos,
                        "a second YAML document ('---'); this file holds exactly one".into(),
                    ));
                }
            }
            Event::Scalar(value, style, anchor, tag) => {
                b.written += 1;
                let quoted = !matches!(style, ScalarStyle::Plain) || tag.is_some();
                let kind = if !quoted && is_null(&value) {
                    Kind::Null
                } else {
                    // The scanner's buffer has room to spare; an inventory keeps
                    // hundreds of thousands of these.
                    let mut text = Cow::into_owned(value);
                    text.shrink_to_fit();
                    Kind::Scalar { text, quoted }
                };
                let node = Node { kind, pos };
                b.anchored(anchor, &node);
                b.attach(node)?;
            }
            Event::Alias(id) => {
                let Some(node) = b.anchors.get(&id) else {
                    return Err(b.problem(pos, "alias to an unknown anchor".into()));
                };
                let budget = ALIAS_BUDGET.max(b.written);
                b.aliased += tree_size(node, budget);
                if b.aliased > budget {
                    return Err(b.problem(
                        pos,
                        format!("aliases expand to more than {budget} nodes (nested aliases, a \"billion laughs\"?); write the values out or use fewer levels of aliases"),
                    ));
                }
                let mut node = node.clone();
                node.pos = pos;
                b.attach(node)?;
            }
            Event::SequenceStart(anchor, _) => {
                b.written += 1;
                b.stack.push(Open::Seq {
                    pos,
                    items: Vec::new(),
                    anchor,
                })
            }
            Event::MappingStart(anchor, _) => {
                b.written += 1;
                b.stack.push(Open::Map {
                    pos,
                    entries: Vec::new(),
                    pending: None,
                    anchor,
                    seen: HashMap::new(),
                })
            }
            Event::SequenceEnd | Event::MappingEnd => b.close(pos)?,
            Event::StreamEnd => break,
            _ => {}
        }
    }
    Ok(b.root.unwrap_or(Node {
        kind: Kind::Null,
        pos: Pos { line: 1, col: 1 },
    }))
}

/// Move every position in `node`'s tree `by` lines down: for a piece of a file parsed on
/// its own (see `inventory::split`).
pub(crate) fn shift_lines(node: &mut Node, by: usize) {
    node.pos.line += by;
    match &mut node.kind {
        Kind::Seq(items) => items.iter_mut().for_each(|n| shift_lines(n, by)),
        Kind::Map(entries) => entries.iter_mut().for_each(|(k, v)| {
            shift_lines(k, by);
            shift_lines(v, by);
        }),
        Kind::Null | Kind::Scalar { .. } => {}
    }
}

fn is_null(s: &str) -> bool {
    matches!(s, "" | "~" | "null" | "Null" | "NULL")
}

fn same_key(a: &Node, b: &Node) -> bool {
    match (&a.kind, &b.kind) {
        (Kind::Scalar { text: x, .. }, Kind::Scalar { text: y, .. }) => x == y,
        (Kind::Null, Kind::Null) => true,
        _ => false,
    }
}

fn key_text(n: &Node) -> String {
    match &n.kind {
        Kind::Scalar { text, .. } => format!("{text:?}"),
        other => format!(
            "<{}>",
            Node {
                kind: other.clone(),
                pos: n.pos
            }
            .describe()
        ),
    }
}

/// Collects problems for one file while a typed reader walks a tree.
pub(crate) struct Report {
    pub(crate) file: PathBuf,
    pub(crate) problems: Vec<Problem>,
}

impl Report {
    pub(crate) fn new(file: &Path) -> Report {
        Report {
            file: file.to_path_buf(),
            problems: Vec::new(),
        }
    }

    pub(crate) fn add(&mut self, pos: Pos, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.clone(),
            pos,
            message: message.into(),
        });
    }

    pub(crate) fn finish<T>(mut self, value: T) -> Result<T, Problems> {
        if self.problems.is_empty() {
            Ok(value)
        } else {
            self.problems.sort_by_key(|p| p.pos);
            Err(Problems(self.problems))
        }
    }

    /// A required string scalar.
    pub(crate) fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.kind {
            Kind::Scalar { text, .. } => Some(text.clone()),
            _ => {
                self.add(
                    node.pos,
                    format!("{what} must be a string, found {}", node.describe()),
                );
                None
            }
        }
    }

    /// A string scalar parsed with `FromStr`, with `expected` saying what would be valid.
    pub(crate) fn parsed<T: std::str::FromStr>(
        &mut self,
        node: &Node,
        what: &str,
        expected: &str,
    ) -> Option<T> {
        let s = self.string(node, what)?;
        match s.trim().parse::<T>() {
            Ok(v) => Some(v),
            Err(_) => {
                self.add(node.pos, format!("{what}: {s:?} is not {expected}"));
                None
            }
        }
    }

    pub(crate) fn boolean(&mut self, node: &Node, what: &str) -> Option<bool> {
        match node.as_str() {
            Some("true" | "yes" | "on") => Some(true),
            Some("false" | "no" | "off") => Some(false),
            _ => {
                self.add(node.pos, format!("{what} must be true or false"));
                None
            }
        }
    }

    /// Entries of a mapping node (`Null` is an empty mapping), or a problem.
    pub(crate) fn map<'n>(&mut self, node: &'n Node, what: &str) -> Option<MapReader<'n>> {
        match &node.kind {
            Kind::Map(entries) => Some(MapReader {
                entries,
                pos: node.pos,
                taken: vec![false; entries.len()],
            }),
            Kind::Null => Some(MapReader {
                entries: &[],
                pos: node.pos,
                taken: Vec::new(),
            }),
            _ => {
                self.add(
                    node.pos,
                    format!(
                        "{what} must be a mapping (key: value), found {}",
                        node.describe()
                    ),
                );
                None
            }
        }
    }

    /// Items of a list node (`Null` is empty; a single scalar is a one-item list).
    pub(crate) fn list<'n>(&mut self, node: &'n Node, what: &str) -> Option<Vec<&'n Node>> {
        match &node.kind {
            Kind::Seq(items) => Some(items.iter().collect()),
            Kind::Null => Some(Vec::new()),
            Kind::Scalar { .. } => Some(vec![node]),
            Kind::Map(_) => {
                self.add(node.pos, format!("{what} must be a list, found a mapping"));
                None
            }
        }
    }
}

/// Reads known keys from a mapping and reports the rest as unknown.
pub(crate) struct MapReader<'n> {
    entries: &'n [(Node, Node)],
    pub(crate) pos: Pos,
    taken: Vec<bool>,
}

impl<'n> MapReader<'n> {
    /// The value of `key`, if present.
    pub(crate) fn get(&mut self, key: &str) -> Option<&'n Node> {
        let i = self
            .entries
            .iter()
            .position(|(k, _)| k.as_str() == Some(key))?;
        self.taken[i] = true;
        Some(&self.entries[i].1)
    }

    /// All entries (for maps keyed by data: MACs, role names, variables).
    pub(crate) fn entries(&mut self) -> &'n [(Node, Node)] {
        self.taken.iter_mut().for_each(|t| *t = true);
        self.entries
    }

    /// Report every key not read, with the keys that would be valid.
    pub(crate) fn deny_unknown(self, report: &mut Report, context: &str, valid: &[&str]) {
        for (i, (k, _)) in self.entries.iter().enumerate() {
            if !self.taken[i] {
                let name = k.as_str().unwrap_or("?");
                let hint = suggestion(name, valid)
                    .map(|s| format!(" (did you mean {s:?}?)"))
                    .unwrap_or_default();
                report.add(
                    k.pos,
                    format!(
                        "unknown key {name:?} in {context}{hint}; valid keys: {}",
                        valid.join(", ")
                    ),
                );
            }
        }
    }
}

/// The valid name closest to a typo, if any is close enough.
pub(crate) fn suggestion<'a>(name: &str, valid: &[&'a str]) -> Option<&'a str> {
    valid
        .iter()
        .map(|v| (edit_distance(name, v), *v))
        .filter(|(d, v)| *d <= 2.max(v.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, v)| v)
}

/// Optimal string alignment distance: insertions, deletions, substitutions and swaps of
/// two neighbours each cost 1, so the common typo `wbe` is one step from `web`.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Node, Problems> {
        parse(Path::new("t.yaml"), s)
    }

    #[test]
    fn positions_are_one_based() {
        let n = p("a:\n  b: 1\n").unwrap();
        let Kind::Map(e) = &n.kind else { panic!() };
        let Kind::Map(inner) = &e[0].1.kind else {
            panic!()
        };
        assert_eq!(inner[0].0.pos, Pos { line: 2, col: 3 });
        assert_eq!(inner[0].1.pos, Pos { line: 2, col: 6 });
    }

    #[test]
    fn duplicate_keys_name_both_lines() {
        let e = p("machines:\n  a: 1\n  b: 2\n  a: 3\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("t.yaml:4:3: duplicate key \"a\""), "{msg}");
        assert!(msg.contains("line 2, column 3"), "{msg}");
    }

    #[test]
    fn duplicate_keys_in_large_maps_are_found_too() {
        let mut text = String::from("machines:\n");
        for i in 0..40 {
            text.push_str(&format!("  k{i}: {i}\n"));
        }
        text.push_str("  k3: again\n");
        let e = p(&text).unwrap_err().to_string();
        assert!(e.starts_with("t.yaml:42:3: duplicate key \"k3\""), "{e}");
        assert!(e.contains("line 5, column 3"), "{e}");
    }

    #[test]
    fn syntax_errors_have_positions() {
        let e = p("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.to_string().starts_with("t.yaml:"), "{e}");
        assert!(e.to_string().contains("YAML syntax error"), "{e}");
        let e = p("a: 1\n---\nb: 2\n").unwrap_err();
        assert!(e.to_string().contains("second YAML document"), "{e}");
    }

    #[test]
    fn quoting_and_null_are_kept_apart() {
        let n = p("a: ~\nb: 'null'\nc:\n").unwrap();
        let Kind::Map(e) = &n.kind else { panic!() };
        assert_eq!(e[0].1.kind, Kind::Null);
        assert!(matches!(&e[1].1.kind, Kind::Scalar { text, quoted: true } if text == "null"));
        assert_eq!(e[2].1.kind, Kind::Null);
        assert_eq!(p("").unwrap().kind, Kind::Null);
    }

    #[test]
    fn aliases_expand_and_unknown_keys_suggest() {
        let n = p("x: &v {k: 1}\ny: *v\n").unwrap();
        let Kind::Map(e) = &n.kind else { panic!() };
        assert!(matches!(e[1].1.kind, Kind::Map(_)));
        let mut r = Report::new(Path::new("t.yaml"));
        let root = p("hostnam: a\n").unwrap();
        let mut m = r.map(&root, "machine").unwrap();
        assert!(m.get("hostname").is_none());
        m.deny_unknown(&mut r, "machine", &["hostname", "role"]);
        let e = r.finish(()).unwrap_err();
        assert!(e.to_string().contains("did you mean \"hostname\""), "{e}");
        assert!(e.to_string().starts_with("t.yaml:1:1:"), "{e}");
    }

    #[test]
    fn nested_aliases_are_an_error_not_an_exhausted_memory() {
        // Regression: this aborted `check` (and a hot reload took the server down).
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            text.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        let t0 = std::time::Instant::now();
        let e = p(&text).unwrap_err().to_string();
        assert!(e.contains("aliases expand to more than"), "{e}");
        assert!(e.starts_with("t.yaml:"), "with its position: {e}");
        assert!(t0.elapsed() < std::time::Duration::from_secs(2));
        // Ordinary use of aliases is fine.
        let n = p("d: &d {disk: /dev/vda, console: ttyS0}\nm1: *d\nm2: *d\n").unwrap();
        assert_eq!(
            tree_size(&n, usize::MAX),
            19,
            "a root, three keys, three maps of two pairs"
        );
    }

    #[test]
    fn a_swapped_pair_of_letters_suggests_the_right_name() {
        // Regression: plain Levenshtein put `wbe` at 2 from both `web` and `db`.
        assert_eq!(suggestion("wbe", &["db", "web"]), Some("web"));
        assert_eq!(suggestion("wbe", &["web", "db"]), Some("web"));
        assert_eq!(edit_distance("hostanme", "hostname"), 1);
        assert_eq!(suggestion("zzzzzz", &["db", "web"]), None);
    }
}
