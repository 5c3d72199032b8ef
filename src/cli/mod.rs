//! The subcommands. Each returns `anyhow::Result`; `main` maps errors to exit codes.

pub mod check_config;
pub mod serve;
