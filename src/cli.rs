//! The command line: parses arguments, owns the signals and the exit codes, and calls the
//! library. `main.rs` only calls [`main`].

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
    /// Build the stem cell's kernel and initrd.
    Image {
        #[command(subcommand)]
        command: crate::image::ImageCommand,
    },
    /// Build operating system images from os/NAME.yaml (mmdebstrap).
    Os {
        #[command(subcommand)]
        command: crate::os::OsCommand,
    },
    /// List machines and their states (over the API of a running server).
    Machines {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show one machine with its events.
    Machine {
        #[command(flatten)]
        api: ApiArgs,
        mac: String,
    },
    /// Re-arm a machine: its next netboot reinstalls (needs the admin token). With --power,
    /// also set its next boot to the network, once, and power-cycle it through its BMC;
    /// with --role instead of a MAC, every machine of the role, --parallel at a time.
    Reinstall {
        #[command(flatten)]
        api: ApiArgs,
        #[arg(required_unless_present = "role", conflicts_with = "role")]
        mac: Option<String>,
        /// Every listed machine of this role (needs --power).
        #[arg(long, requires = "power")]
        role: Option<String>,
        /// Netboot it through its BMC now (inventory `power:`).
        #[arg(long)]
        power: bool,
        /// With --role: machines rebuilt at once.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
        parallel: u16,
        /// With --role: start no further machine after this many failed.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
        max_failures: u16,
    },
    /// A machine's power through its BMC: status, on, off, cycle, or pxe (the next boot
    /// from the network, once). Through the running server (needs the admin token).
    Power {
        #[command(flatten)]
        api: ApiArgs,
        mac: String,
        #[arg(value_parser = ["status", "on", "off", "cycle", "pxe"])]
        action: String,
    },
}

#[derive(clap::Args)]
struct ApiArgs {
    /// The server's URL (default: http.url from --config, else http://127.0.0.1:8080).
    #[arg(long, env = "STEMCELL_SERVER")]
    server: Option<String>,
    /// A config file to take the URL and the admin token file from.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The token file (default: admin_token_file from --config): the admin token, or,
    /// for `machines` and `machine` under http.read_auth, the read token.
    #[arg(long)]
    token_file: Option<PathBuf>,
}

impl ApiArgs {
    fn resolve(&self) -> Result<(String, Option<PathBuf>), String> {
        let config = match &self.config {
            Some(p) => Some(crate::config::Config::load(p).map_err(|e| e.to_string())?),
            None => None,
        };
        let server = self
            .server
            .clone()
            .or_else(|| config.as_ref().map(|c| c.display_url()))
            .unwrap_or_else(|| "http://127.0.0.1:8080".into());
        let token_file = self
            .token_file
            .clone()
            .or_else(|| config.and_then(|c| c.admin_token_file));
        Ok((server, token_file))
    }
}

fn api_command(
    api: &ApiArgs,
    f: impl FnOnce(&str, Option<String>) -> anyhow::Result<String>,
) -> ExitCode {
    let (server, token_file) = match api.resolve() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("stemcell: {e}");
            return ExitCode::from(64);
        }
    };
    let token = token_file
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|t| t.trim().to_string());
    match f(&server, token) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("stemcell: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Log lines go to stderr; for `serve` (`buffered`) through [`crate::logwriter`]'s thread.
/// The returned guard writes out what is buffered when dropped.
fn init_tracing(buffered: bool) -> Option<crate::logwriter::Guard> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("STEMCELL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_target(false);
    let guard = if buffered {
        crate::logwriter::start().ok()
    } else {
        None
    };
    if guard.is_some() {
        fmt.with_writer(|| crate::logwriter::Line).init();
    } else {
        fmt.with_writer(std::io::stderr).init();
    }
    guard
}

fn fail(f: crate::server::Fatal) -> ExitCode {
    eprintln!("stemcell: {:#}", f.error);
    ExitCode::from(f.code)
}

/// `stemcell serve`: prepare, then run until SIGINT or SIGTERM or until a service stops.
async fn serve(config: &std::path::Path) -> Result<(), crate::server::Fatal> {
    let prepared = crate::server::prepare(config).await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let signals = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received");
            shutdown.cancel();
        })
    };
    let result = crate::server::run(prepared, shutdown).await;
    signals.abort();
    result
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The `stemcell` command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let log = init_tracing(matches!(cli.command, Command::Serve { .. }));
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
            let result = rt.block_on(serve(&config));
            // Every log line out before the last word.
            drop(log);
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(f) => fail(f),
            }
        }
        Command::Check { config } => match crate::server::check(&config) {
            Ok(n) => {
                println!("{}: ok ({n} machines)", config.display());
                ExitCode::SUCCESS
            }
            Err(f) => fail(f),
        },
        Command::Image { command } => match crate::image::run(&command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("stemcell: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Os { command } => match crate::os::run_command(&command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("stemcell: {e}");
                ExitCode::FAILURE
            }
        },
        // Reads send the token too: with http.read_auth the read API needs it.
        Command::Machines { api } => {
            api_command(&api, |s, t| crate::client::machines(s, t.as_deref()))
        }
        Command::Machine { api, mac } => {
            api_command(&api, |s, t| crate::client::machine(s, &mac, t.as_deref()))
        }
        Command::Reinstall {
            api,
            mac,
            role,
            power,
            parallel,
            max_failures,
        } => api_command(&api, |s, t| {
            let t = t.ok_or_else(|| {
                anyhow::anyhow!("the admin token is needed: pass --token-file or --config")
            })?;
            match (mac, role) {
                (Some(mac), _) if power => crate::client::reinstall_power(s, &mac, &t),
                (Some(mac), _) => crate::client::reinstall(s, &mac, &t),
                (None, Some(role)) => crate::client::rolling(
                    s,
                    &role,
                    &t,
                    usize::from(parallel),
                    usize::from(max_failures),
                ),
                (None, None) => anyhow::bail!("name a MAC or --role"),
            }
        }),
        Command::Power { api, mac, action } => api_command(&api, |s, t| {
            let t = t.ok_or_else(|| {
                anyhow::anyhow!("the admin token is needed: pass --token-file or --config")
            })?;
            crate::client::power(s, &mac, &action, &t)
        }),
        Command::Render { config, mac } => {
            let mac = match mac.parse::<crate::mac::MacAddr>() {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("stemcell: {e}");
                    return ExitCode::from(2);
                }
            };
            match crate::server::render_machine(&config, mac) {
                Ok(s) => {
                    print!("{s}");
                    ExitCode::SUCCESS
                }
                Err(f) => fail(f),
            }
        }
    }
}
