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
