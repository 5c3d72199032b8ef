//! The subcommands. Each returns `anyhow::Result`; `main` maps errors to exit codes.

pub mod badmail;
pub mod check;
pub mod check_config;
pub mod doctor;
pub mod explain;
pub mod logs;
pub mod oauth;
pub mod passwd;
pub mod queue;
pub mod reload;
pub mod send;
pub mod serve;
pub mod service;
pub mod test_upstream;

/// A single-threaded runtime for a one-shot subcommand; `None` after saying why it could not start
/// (the caller exits with 2).
pub(crate) fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("smarthost: cannot start the runtime: {e}");
            None
        }
    }
}
