//! Install-template rendering with hostile variable values: the input is a few values, each
//! with the YAML style it is written in, plus a role command-line template. See
//! `stemcell::fuzzing::render_hostile_vars` for the properties: values the inventory must
//! refuse (quotes, `$`, newlines, ...) are refused; accepted ones never bring a shell
//! metacharacter or a line into the rendered scripts (base.sh.j2, debian.sh.j2 and the
//! snippet it includes), and never an unsafe character into a kernel command line.
#![no_main]

use std::path::Path;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

const KICKSTARTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../kickstarts");
const OS_SPECS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/lab/os");

#[derive(Debug, Arbitrary)]
struct Input {
    values: Vec<(String, u8)>,
    cmdline: String,
}

fuzz_target!(|input: Input| {
    let values: Vec<(String, u8)> = input.values.into_iter().take(8).collect();
    stemcell::fuzzing::render_hostile_vars(
        &values,
        &input.cmdline,
        Path::new(KICKSTARTS),
        Path::new(OS_SPECS),
    );
});
