use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// smarthost: an SMTP relay for devices and applications that must send through Microsoft 365.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay (without --config: the built-in configuration, listening on 127.0.0.1:2525
    /// and writing every message into ./smarthost-data/outbox).
    Serve {
        /// The configuration file (see smarthost.example.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check a configuration file and report every error with its line.
    CheckConfig {
        /// The configuration file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => {
            init_logging();
            let config = match config {
                Some(path) => match smarthost::config::load_file(&path) {
                    Ok(c) => c,
                    Err(errors) => {
                        eprint!("{errors}");
                        eprintln!("smarthost: not started: the configuration has errors");
                        return ExitCode::from(2);
                    }
                },
                None => smarthost::config::default_config(),
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("smarthost: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(smarthost::cli::serve::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("smarthost: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { file } => {
            if smarthost::cli::check_config::run(&file) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            }
        }
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("SMARTHOST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
