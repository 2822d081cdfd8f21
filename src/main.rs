//! The `stemcell` binary: a thin shell over the library.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "stemcell",
    version,
    about = "PXE/netboot bare-metal bootstrap server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: DHCP, TFTP and HTTP as configured.
    Serve {
        #[arg(long, short, default_value = "/etc/stemcell/stemcell.yaml")]
        config: PathBuf,
    },
    /// Validate the config and inventory and render every machine's templates; binds nothing.
    Check {
        #[arg(long, short, default_value = "/etc/stemcell/stemcell.yaml")]
        config: PathBuf,
    },
    /// Print the boot script and install script a machine would be served now.
    Render {
        #[arg(long, short, default_value = "/etc/stemcell/stemcell.yaml")]
        config: PathBuf,
        #[arg(long)]
        mac: String,
    },
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("STEMCELL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

fn fail(f: stemcell::server::Fatal) -> ExitCode {
    eprintln!("stemcell: {:#}", f.error);
    ExitCode::from(f.code.clamp(1, 255) as u8)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Command::Serve { config } => {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("stemcell: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(stemcell::server::serve(&config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(f) => fail(f),
            }
        }
        Command::Check { config } => match stemcell::server::check(&config) {
            Ok(n) => {
                println!("{}: ok ({n} machines)", config.display());
                ExitCode::SUCCESS
            }
            Err(f) => fail(f),
        },
        Command::Render { config, mac } => {
            let mac = match mac.parse::<stemcell::mac::MacAddr>() {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("stemcell: {e}");
                    return ExitCode::from(2);
                }
            };
            match stemcell::server::render_machine(&config, mac) {
                Ok(s) => {
                    print!("{s}");
                    ExitCode::SUCCESS
                }
                Err(f) => fail(f),
            }
        }
    }
}
