//! The module graph has no cycles: between top-level modules (`crate::a` used in `b`) and
//! between sibling submodules of one folder (`super::x` or `crate::top::x` used in
//! `top/y.rs`). ARCHITECTURE.md draws the layers this test keeps honest.
//!
//! It reads the source as text: every `crate::name` and `super::name` path outside
//! comments is an edge. A test module's references count too: a test that needs a cycle
//! is a design smell as well.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/dhcp/decide.rs` → ["dhcp", "decide"]; `src/dhcp/mod.rs` → ["dhcp"].
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// Identifiers that follow `prefix::` in code (comments stripped).
fn paths_after<'a>(code: &'a str, prefix: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        let after = &rest[i + prefix.len()..];
        rest = after;
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        if end > 0 {
            out.push(&after[..end]);
        }
    }
    out
}

fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let start = stack.iter().position(|s| s == n).unwrap();
                let mut cycle = stack[start..].to_vec();
                cycle.push(n.to_string());
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, graph, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if let Some(c) = visit(n, graph, &mut state, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

struct Graphs {
    top: BTreeMap<String, BTreeSet<String>>,
    /// Per folder module: sibling → siblings it uses.
    siblings: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

fn graphs() -> Graphs {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let tops: BTreeSet<String> = files
        .iter()
        .filter_map(|f| module_of(&src, f).first().cloned())
        .collect();
    let mut g = Graphs {
        top: BTreeMap::new(),
        siblings: BTreeMap::new(),
    };
    for f in &files {
        let module = module_of(&src, f);
        let Some(top) = module.first().cloned() else {
            continue;
        };
        if top == "lib" || top == "main" {
            continue;
        }
        let code = strip_comments(&std::fs::read_to_string(f).unwrap());
        let node = g.top.entry(top.clone()).or_default();
        for used in paths_after(&code, "crate::") {
            if used != top && tops.contains(used) {
                node.insert(used.to_string());
            }
        }
        // Sibling edges: only for files one level down (`top/x.rs`).
        if module.len() == 2 {
            let me = module[1].clone();
            let dir = src.join(&top);
            let is_sibling = |name: &str| {
                name != me && (dir.join(format!("{name}.rs")).exists() || dir.join(name).is_dir())
            };
            let mut uses: BTreeSet<String> = paths_after(&code, "super::")
                .into_iter()
                .filter(|n| is_sibling(n))
                .map(str::to_string)
                .collect();
            let own = format!("crate::{top}::");
            uses.extend(
                paths_after(&code, &own)
                    .into_iter()
                    .filter(|n| is_sibling(n))
                    .map(str::to_string),
            );
            g.siblings
                .entry(top.clone())
                .or_default()
                .entry(me)
                .or_default()
                .extend(uses);
        }
    }
    g
}

#[test]
fn no_cycles_between_top_level_modules() {
    let g = graphs();
    assert!(
        g.top.len() > 10,
        "the scan found too few modules: {:?}",
        g.top.keys()
    );
    if let Some(c) = find_cycle(&g.top) {
        panic!("module cycle: {}", c.join(" -> "));
    }
}

#[test]
fn no_cycles_between_sibling_submodules() {
    let g = graphs();
    assert!(g.siblings.contains_key("dhcp") && g.siblings.contains_key("http"));
    for (folder, graph) in &g.siblings {
        if let Some(c) = find_cycle(graph) {
            panic!("cycle inside {folder}/: {}", c.join(" -> "));
        }
    }
}

/// The pure layers stay pure: the wire formats and decisions never reach up into the
/// services, HTTP or the composition root.
#[test]
fn lower_layers_do_not_use_upper_ones() {
    let g = graphs();
    let upper = ["server", "http", "cli", "adapters", "client"];
    for low in [
        "mac",
        "yaml",
        "values",
        "jail",
        "journal",
        "logwriter",
        "metrics",
        "slots",
        "leases",
        "dhcp",
        "dhcp6",
        "tftp",
        "state",
        "pg",
        "config",
        "inventory",
        "network",
        "power",
        "secrets",
        "render",
        "boot",
    ] {
        let uses = g.top.get(low).cloned().unwrap_or_default();
        for up in upper {
            assert!(!uses.contains(up), "{low} uses {up}");
        }
    }
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    assert_eq!(find_cycle(&g), None);
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        find_cycle(&g).map(|c| c.join(" -> ")),
        Some("a -> b -> c -> a".to_string())
    );
    assert_eq!(
        paths_after("use crate::dhcp::Subnet; x_crate::no", "crate::"),
        vec!["dhcp"]
    );
}
