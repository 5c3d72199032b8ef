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
    /// Look at and manage the queue of the running relay (like mailq, postqueue and postsuper).
    Queue {
        #[command(flatten)]
        target: smarthost::cli::queue::Target,
        #[command(subcommand)]
        command: smarthost::cli::queue::QueueCommand,
    },
    /// Messages that could be neither delivered nor bounced (the Badmail folder of the running relay).
    Badmail {
        #[command(flatten)]
        target: smarthost::cli::queue::Target,
        #[command(subcommand)]
        command: smarthost::cli::badmail::BadmailCommand,
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
        Command::Queue { target, command } => {
            control_exit(smarthost::cli::queue::run(&target, command))
        }
        Command::Badmail { target, command } => {
            control_exit(smarthost::cli::badmail::run(&target, command))
        }
    }
}

/// 0 done, 1 the relay refused (unknown id, ...), 2 usage, configuration or no relay to ask.
fn control_exit(result: Result<(), smarthost::cli::queue::CommandError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smarthost: {e}");
            ExitCode::from(e.exit_code())
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
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
