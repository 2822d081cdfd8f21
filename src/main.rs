//! The `stemcell` binary: everything is in the library; see `stemcell::cli`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    stemcell::cli::main()
}
