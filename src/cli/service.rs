//! `smarthost service`: the Windows service. `install` registers the service "smarthost" with the
//! Service Control Manager (start type automatic, restarted after a failure), `uninstall` stops and
//! removes it, and `run` is what the SCM starts: it runs the relay until the SCM says stop.
//!
//! The registered command line is `smarthost.exe service run --config FILE` rather than
//! `serve --config FILE`: a process the SCM starts must connect to it (the service dispatcher)
//! within 30 seconds, or it is killed. `run` does exactly what `serve` does otherwise.
//!
//! On other systems every subcommand says to use `dist/smarthost.service` (systemd).

use clap::Subcommand;
use std::path::PathBuf;

/// The service's name in the SCM (`sc query smarthost`, `net start smarthost`).
pub const SERVICE_NAME: &str = "smarthost";

#[derive(Debug, Clone, Subcommand)]
pub enum ServiceCommand {
    /// Register the "smarthost" service (start type automatic, runs as LocalSystem). The
    /// configuration is checked first; its path is stored as an absolute path.
    Install {
        /// The configuration file (default: %ProgramData%\smarthost\smarthost.toml).
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Stop the service if it runs and remove it. The data directory is left in place.
    Uninstall,
    /// The service's entry point, started by the Service Control Manager (not by hand: to run the
    /// relay in a console, use `smarthost serve`).
    Run {
        /// The configuration file.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[cfg(not(windows))]
pub fn run(_command: ServiceCommand) -> anyhow::Result<()> {
    anyhow::bail!(
        "the service subcommand is only on Windows; on Linux use dist/smarthost.service (systemd)"
    )
}

#[cfg(windows)]
pub use windows::{run, service_main};

#[cfg(windows)]
mod windows {
    use super::{SERVICE_NAME, ServiceCommand};
    use anyhow::Context;
    use std::ffi::OsString;
    use std::path::{Path, PathBuf};
    use std::sync::OnceLock;
    use std::time::Duration;
    use windows_service::service::{
        ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
        ServiceErrorControl, ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod,
        ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
    };
    use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
    use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};

    /// The configuration file of `service run`, handed from the command line to `service_main`
    /// (the SCM passes its own, different arguments there).
    static CONFIG: OnceLock<PathBuf> = OnceLock::new();

    /// `C:\ProgramData\smarthost\smarthost.toml`: in the default data directory.
    fn default_config_path() -> PathBuf {
        crate::config::default_config()
            .data_dir
            .join("smarthost.toml")
    }

    /// `service_main` is the function the SCM calls on its own thread; the binary turns it into
    /// the `extern "system"` entry point with `windows_service::define_windows_service!` and
    /// passes that here (the macro's `unsafe` stays out of this `forbid(unsafe_code)` crate).
    pub fn run(
        command: ServiceCommand,
        entry: extern "system" fn(u32, *mut *mut u16),
    ) -> anyhow::Result<()> {
        match command {
            ServiceCommand::Install { config } => install(config),
            ServiceCommand::Uninstall => uninstall(),
            ServiceCommand::Run { config } => {
                let _ = CONFIG.set(config.unwrap_or_else(default_config_path));
                windows_service::service_dispatcher::start(SERVICE_NAME, entry).context(
                    "cannot connect to the Service Control Manager (`service run` is started by \
                     the SCM; to run the relay in a console use `smarthost serve`)",
                )
            }
        }
    }

    fn install(config: Option<PathBuf>) -> anyhow::Result<()> {
        let config = config.unwrap_or_else(default_config_path);
        let config = std::path::absolute(&config)
            .with_context(|| format!("cannot make {} absolute", config.display()))?;
        if let Err(errors) = crate::config::load_file(&config) {
            anyhow::bail!(
                "{errors}not installed: the configuration {} has errors",
                config.display()
            );
        }
        let executable_path = std::env::current_exe().context("cannot find smarthost.exe")?;
        let manager = ServiceManager::local_computer(
            None::<&str>,
            ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
        )
        .context("cannot open the Service Control Manager (run as Administrator)")?;
        let info = ServiceInfo {
            name: OsString::from(SERVICE_NAME),
            display_name: OsString::from("smarthost SMTP relay"),
            service_type: ServiceType::OWN_PROCESS,
            start_type: ServiceStartType::AutoStart,
            error_control: ServiceErrorControl::Normal,
            executable_path,
            launch_arguments: vec![
                OsString::from("service"),
                OsString::from("run"),
                OsString::from("--config"),
                config.clone().into_os_string(),
            ],
            dependencies: vec![],
            account_name: None, // LocalSystem
            account_password: None,
        };
        let service = manager
            .create_service(
                &info,
                ServiceAccess::CHANGE_CONFIG | ServiceAccess::QUERY_STATUS,
            )
            .context("cannot create the service \"smarthost\"")?;
        service
            .set_description(
                "SMTP relay for devices and applications that send through Microsoft 365 \
                 (replaces the IIS 6 SMTP virtual server).",
            )
            .context("cannot set the service's description")?;
        // Restart after 10 s, 60 s, then every 5 minutes; the count resets after a day.
        let restart = |secs| ServiceAction {
            action_type: ServiceActionType::Restart,
            delay: Duration::from_secs(secs),
        };
        let failure_actions = ServiceFailureActions {
            reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(86_400)),
            reboot_msg: None,
            command: None,
            actions: Some(vec![restart(10), restart(60), restart(300)]),
        };
        if let Err(e) = service
            .update_failure_actions(failure_actions)
            .and_then(|()| service.set_failure_actions_on_non_crash_failures(true))
        {
            eprintln!("smarthost: warning: cannot set the restart-on-failure actions: {e}");
        }
        println!(
            "installed the service \"smarthost\" (start type automatic) with {}\n\
             start it with:  sc start smarthost   (or: Start-Service smarthost)",
            config.display()
        );
        Ok(())
    }

    fn uninstall() -> anyhow::Result<()> {
        let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
            .context("cannot open the Service Control Manager (run as Administrator)")?;
        let service = manager
            .open_service(
                SERVICE_NAME,
                ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE,
            )
            .context("cannot open the service \"smarthost\" (is it installed?)")?;
        // Marked for deletion first, so that it goes as soon as it has stopped.
        service
            .delete()
            .context("cannot delete the service \"smarthost\"")?;
        if service.query_status()?.current_state != ServiceState::Stopped {
            let _ = service.stop();
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while service.query_status()?.current_state != ServiceState::Stopped {
                if std::time::Instant::now() > deadline {
                    eprintln!(
                        "smarthost: the service has not stopped yet; it is removed when it stops"
                    );
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        println!("removed the service \"smarthost\"; the data directory is left in place");
        Ok(())
    }

    /// Runs on the SCM's thread: reports Running, runs the relay until Stop or Shutdown, reports
    /// Stopped with exit code 0, or with a service-specific code (1 failed, 2 configuration
    /// errors) that the SCM writes to the System event log.
    pub fn service_main(_arguments: Vec<OsString>) {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let handler = move |control| match control {
            ServiceControl::Stop | ServiceControl::Shutdown | ServiceControl::Preshutdown => {
                let _ = stop_tx.send(true);
                ServiceControlHandlerResult::NoError
            }
            ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
            _ => ServiceControlHandlerResult::NotImplemented,
        };
        let Ok(status) = service_control_handler::register(SERVICE_NAME, handler) else {
            return;
        };
        let report = |state, accept, exit_code, wait_hint: u64| {
            let _ = status.set_service_status(ServiceStatus {
                service_type: ServiceType::OWN_PROCESS,
                current_state: state,
                controls_accepted: accept,
                exit_code,
                checkpoint: 0,
                wait_hint: Duration::from_secs(wait_hint),
                process_id: None,
            });
        };
        report(
            ServiceState::StartPending,
            ServiceControlAccept::empty(),
            ServiceExitCode::Win32(0),
            30,
        );
        let code = match relay(stop_rx, || {
            report(
                ServiceState::Running,
                ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN,
                ServiceExitCode::Win32(0),
                0,
            )
        }) {
            Ok(()) => ServiceExitCode::Win32(0),
            Err(code) => ServiceExitCode::ServiceSpecific(code),
        };
        report(
            ServiceState::Stopped,
            ServiceControlAccept::empty(),
            code,
            0,
        );
    }

    /// The relay under the SCM: the process log goes to `data_dir\service.log` (a service has no
    /// console).
    fn relay(
        mut stop: tokio::sync::watch::Receiver<bool>,
        running: impl FnOnce(),
    ) -> Result<(), u32> {
        let path = CONFIG.get().cloned().unwrap_or_else(default_config_path);
        let config = match crate::config::load_file(&path) {
            Ok(c) => c,
            Err(errors) => {
                // No data_dir to log into: next to the configuration file.
                let log = path.with_extension("errors.txt");
                let _ = std::fs::write(&log, format!("{errors}"));
                return Err(2);
            }
        };
        init_file_logging(&config.data_dir, config.logs.json);
        let runtime = tokio::runtime::Runtime::new().map_err(|e| {
            tracing::error!("cannot start the runtime: {e}");
            1u32
        })?;
        runtime.block_on(async move {
            let relay = match crate::cli::serve::start(config).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("not started: {e:#}");
                    return Err(1);
                }
            };
            tracing::info!(listening = ?relay.local_addrs, "smarthost service running");
            running();
            let _ = stop.wait_for(|stop| *stop).await;
            tracing::info!(
                "stop requested: no new connections; undelivered mail stays in the spool"
            );
            relay.shutdown().await;
            tracing::info!("stopped");
            Ok(())
        })
    }

    fn init_file_logging(data_dir: &Path, json: bool) {
        use tracing_subscriber::EnvFilter;
        let filter =
            EnvFilter::try_from_env("SMARTHOST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
        let _ = std::fs::create_dir_all(data_dir);
        let Ok(file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("service.log"))
        else {
            return;
        };
        let writer = std::sync::Mutex::new(file);
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(writer);
        let _ = if json {
            builder.json().try_init()
        } else {
            builder.try_init()
        };
    }
}
