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
    /// Make the running relay read its configuration file again (as SIGHUP does), without dropping
    /// sessions. A configuration with errors is refused (exit status 1) and the running one kept.
    Reload {
        #[command(flatten)]
        target: smarthost::cli::queue::Target,
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
    /// What an upstream reply means and what to do about it, e.g.
    /// smarthost explain "550 5.7.30 Basic authentication is not supported" (or only "5.7.30").
    /// Exit status 0 for a reply smarthost knows, 1 otherwise; "-" reads the reply from stdin.
    Explain {
        /// The reply as the server sent it, or its status code; several words are joined.
        #[arg(required = true, num_args = 1.., allow_hyphen_values = true)]
        reply: Vec<String>,
    },
    /// OAuth 2.0 sign-in for routes where a person signs in once (flow = "device-code").
    Oauth {
        #[command(subcommand)]
        command: smarthost::cli::oauth::OauthCommand,
    },
    /// Hash a password for a [[user]] of inbound AUTH and print the line for its password_hash.
    /// Reads the password twice from the terminal without echo, or the first line of stdin when
    /// that is not a terminal.
    Passwd,
    /// DNS and certificate checks for Direct Send and connectors: `check spf DOMAIN --ip IP`,
    /// `check dnsbl IP`, `check mx DOMAIN`, `check cert FILE --domain D`. Exit status 0 when all
    /// is well, 1 otherwise, 2 when the check could not run.
    Check {
        #[command(subcommand)]
        command: smarthost::cli::check::CheckCommand,
    },
    /// Tests of the live path: `test upstream [--route NAME] [--send --to ADDR]` connects to a
    /// route's upstream step by step and says what fails and how to fix it.
    Test {
        #[command(subcommand)]
        command: smarthost::cli::test_upstream::TestCommand,
    },
    /// Check everything at once (configuration, data directory, certificates, SPF, every route's
    /// upstream) and print a table of findings. Exit status 0 when nothing failed, 1 otherwise.
    Doctor(smarthost::cli::doctor::DoctorArgs),
    /// Write a message (text or --html body, --attach files) and send it to an SMTP server
    /// (--server, --tls, --user/--password-env) or, with --via-queue, through the local relay's
    /// Pickup folder. Exit status 0 when every recipient was accepted, 1 otherwise, 2 for usage.
    Send(Box<smarthost::cli::send::SendArgs>),
    /// Run as a Windows service: `service install [--config FILE]`, `service uninstall`
    /// (only on Windows; on Linux use dist/smarthost.service with systemd).
    Service {
        #[command(subcommand)]
        command: smarthost::cli::service::ServiceCommand,
    },
    /// The W3C extended log files (data_dir/logs/smtpsvc-YYYYMMDD.log, as IIS SMTP wrote them), e.g.
    /// smarthost logs export --since "2026-11-29 00:00" --csv smtp.csv [--outbound].
    Logs {
        #[command(flatten)]
        target: smarthost::cli::queue::Target,
        #[command(subcommand)]
        command: smarthost::cli::logs::LogsCommand,
    },
}

/// glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), after which
/// message-sized buffers (1 MiB messages) come from the heap and stay resident when freed: 117 MiB
/// at rest after the 1 MiB benchmark. A fixed threshold keeps blocks of 256 KiB and more in their
/// own mappings, returned to the system when freed (BENCHMARKS.md).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    // SAFETY: mallopt only sets allocator parameters; called once, before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1024 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => {
            let config_path = config.clone();
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
            init_logging(config.logs.json);
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("smarthost: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(smarthost::cli::serve::run(config, config_path)) {
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
        Command::Reload { target } => control_exit(smarthost::cli::reload::run(&target)),
        Command::Queue { target, command } => {
            control_exit(smarthost::cli::queue::run(&target, command))
        }
        Command::Badmail { target, command } => {
            control_exit(smarthost::cli::badmail::run(&target, command))
        }
        Command::Explain { reply } => {
            let text = if reply == ["-"] {
                let mut text = String::new();
                if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut text) {
                    eprintln!("smarthost: cannot read the reply from stdin: {e}");
                    return ExitCode::from(2);
                }
                text
            } else {
                reply.join(" ")
            };
            if smarthost::cli::explain::run(&text) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Command::Oauth { command } => match smarthost::cli::oauth::run(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("smarthost: {e}");
                ExitCode::from(e.exit_code())
            }
        },
        Command::Logs { target, command } => {
            control_exit(smarthost::cli::logs::run(&target, command))
        }
        Command::Service { command } => match run_service(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("smarthost: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Send(args) => control_exit(smarthost::cli::send::run(&args)),
        Command::Check { command } => ExitCode::from(smarthost::cli::check::run(command)),
        Command::Test { command } => ExitCode::from(smarthost::cli::test_upstream::run(command)),
        Command::Doctor(args) => ExitCode::from(smarthost::cli::doctor::run(&args)),
        Command::Passwd => match smarthost::cli::passwd::run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("smarthost: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

#[cfg(windows)]
use smarthost::cli::service::service_main;
// The SCM's entry point (the macro's FFI glue lives here: the library forbids unsafe code).
#[cfg(windows)]
windows_service::define_windows_service!(ffi_service_main, service_main);

#[cfg(windows)]
fn run_service(command: smarthost::cli::service::ServiceCommand) -> anyhow::Result<()> {
    smarthost::cli::service::run(command, ffi_service_main)
}

#[cfg(not(windows))]
fn run_service(command: smarthost::cli::service::ServiceCommand) -> anyhow::Result<()> {
    smarthost::cli::service::run(command)
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

/// The process log: text on stderr, or (`[logs] json = true`) JSON lines on stdout for collectors.
fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("SMARTHOST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    if json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stdout)
            .init();
        return;
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
