//! The operator docs, executed: docs/first-role.md is a walk-through a newcomer follows
//! from an empty folder to `stemcell render` printing a new role's install script. This
//! test runs its blocks in order in an empty folder, with the real binary first on PATH:
//! a block marked `file=PATH` is written to PATH, an `sh` block is run with bash (it must
//! succeed), and a `text` block right after an `sh` block lists lines that the command's
//! output (stdout, then stderr) must contain, in that order. A doc that drifts from what
//! stemcell does fails here.

mod common;

use std::path::Path;
use std::process::Command;

#[derive(Debug)]
enum Block {
    File { path: String, body: String },
    Run(String),
    Expect(String),
}

/// The fenced blocks of a Markdown text, with their info strings.
fn blocks(md: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut lines = md.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.strip_prefix("```") else {
            continue;
        };
        let mut body = String::new();
        for l in lines.by_ref() {
            if l.starts_with("```") {
                break;
            }
            body.push_str(l);
            body.push('\n');
        }
        let mut words = info.split_whitespace();
        let lang = words.next().unwrap_or("");
        if let Some(path) = words.find_map(|w| w.strip_prefix("file=")) {
            out.push(Block::File {
                path: path.to_string(),
                body,
            });
        } else if lang == "sh" {
            out.push(Block::Run(body));
        } else if lang == "text" {
            out.push(Block::Expect(body));
        }
    }
    out
}

/// Runs a doc's blocks in `dir`; panics naming the block that does not hold.
fn follow(doc: &Path, dir: &Path) -> usize {
    let md = std::fs::read_to_string(doc).unwrap();
    let bin_dir = Path::new(common::BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut last_output: Option<(String, String)> = None;
    let mut steps = 0;
    for block in blocks(&md) {
        steps += 1;
        match block {
            Block::File { path: p, body } => {
                let target = dir.join(&p);
                std::fs::create_dir_all(target.parent().unwrap()).unwrap();
                std::fs::write(&target, body).unwrap();
                last_output = None;
            }
            Block::Run(script) => {
                let out = Command::new("bash")
                    .args(["-euo", "pipefail", "-c", &script])
                    .current_dir(dir)
                    .env("PATH", &path)
                    .output()
                    .unwrap();
                let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
                let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
                assert!(
                    out.status.success(),
                    "{}: this block failed ({}):\n{script}\nstdout:\n{stdout}\nstderr:\n{stderr}",
                    doc.display(),
                    out.status
                );
                last_output = Some((script, stdout + &stderr));
            }
            Block::Expect(want) => {
                let (script, got) = last_output.take().unwrap_or_else(|| {
                    panic!(
                        "{}: a text block that follows no sh block:\n{want}",
                        doc.display()
                    )
                });
                let mut rest = got.as_str();
                for line in want.lines().filter(|l| !l.trim().is_empty()) {
                    match rest.find(line) {
                        Some(i) => rest = &rest[i + line.len()..],
                        None => panic!(
                            "{}: after\n{script}\nthe output lacks (in this order) the line\n  {line}\noutput:\n{got}",
                            doc.display()
                        ),
                    }
                }
            }
        }
    }
    steps
}

#[test]
fn first_role_walkthrough_holds() {
    let dir = tempfile::tempdir().unwrap();
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/first-role.md");
    let steps = follow(&doc, dir.path());
    assert!(steps >= 10, "docs/first-role.md has only {steps} blocks");
    // What the newcomer ends with: the role's script rendered for the machine.
    let rendered = Command::new(common::BIN)
        .args(["render", "--config", "site/stemcell.yaml", "--mac"])
        .arg("52:54:00:aa:bb:01")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&rendered.stdout);
    assert!(rendered.status.success(), "{text}");
    assert!(
        text.contains("echo \"install: making xfs for the data volume\""),
        "{text}"
    );
}

#[test]
fn a_wrong_expectation_fails() {
    // The harness itself can fail: a doc whose expected output is not printed.
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("wrong.md");
    std::fs::write(
        &doc,
        "```sh\necho one; echo two\n```\n\n```text\ntwo\none\n```\n",
    )
    .unwrap();
    let r = std::panic::catch_unwind(|| follow(&doc, dir.path()));
    assert!(r.is_err(), "lines out of order were accepted");
    std::fs::write(
        &doc,
        "```sh\necho one; echo two\n```\n\n```text\none\ntwo\n```\n",
    )
    .unwrap();
    assert_eq!(follow(&doc, dir.path()), 2);
}
