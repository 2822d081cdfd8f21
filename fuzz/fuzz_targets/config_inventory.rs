//! Arbitrary text as stemcell.yaml and as inventory.yaml (with and without the lab's subnet
//! for reservations): loading returns Ok or problems that each start with
//! `file:line:col: `, at a position inside the text, and never panics. Bounded time and
//! memory are enforced by libFuzzer (`-timeout`, `-rss_limit_mb` in fuzz/run.sh). What
//! loads must hold what the validators promise (checked in `stemcell::fuzzing`).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use stemcell::fuzzing::{self, Positioned};

const KICKSTARTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../kickstarts");
const OS_SPECS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/lab/os");

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = Path::new("lab/stemcell.yaml");
    if let Err(problems) = fuzzing::load_config(config, text) {
        check(config, text, &problems);
    }
    let inventory = Path::new("lab/inventory.yaml");
    for lab in [false, true] {
        let loaded = fuzzing::load_inventory(
            inventory,
            text,
            Path::new(KICKSTARTS),
            Path::new(OS_SPECS),
            lab,
        );
        if let Err(problems) = loaded {
            check(inventory, text, &problems);
        }
    }
});

fn check(file: &Path, text: &str, problems: &[Positioned]) {
    assert!(!problems.is_empty(), "an error names at least one problem");
    // Lines as YAML counts them (a line break is CR LF, LF or a lone CR), from 1; a problem
    // at the end of the text may sit one line after its last line break.
    let lines = text.replace("\r\n", "\n").split(['\n', '\r']).count() + 1;
    for p in problems {
        let prefix = format!("{}:{}:{}: ", file.display(), p.line, p.col);
        assert!(
            p.text.starts_with(&prefix),
            "{:?} does not start with {prefix:?}",
            p.text
        );
        assert!(
            p.line >= 1 && p.line <= lines,
            "line {} in a text of {lines} lines",
            p.line
        );
        assert!(p.col >= 1, "column {}", p.col);
        assert!(p.text.len() > prefix.len(), "a message after the position");
    }
}
