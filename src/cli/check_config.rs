//! `smarthost check-config FILE`: validates a configuration and reports every error with its line.

use crate::config;
use std::path::Path;

/// Prints the verdict; returns whether the file is valid.
pub fn run(path: &Path) -> bool {
    match config::load_file(path) {
        Ok(config) => {
            for warning in &config.warnings {
                eprintln!("{warning}");
            }
            println!(
                "{}: OK ({} listener(s), {} route(s), data in {})",
                path.display(),
                config.listeners.len(),
                config.routes.len(),
                config.data_dir.display()
            );
            true
        }
        Err(errors) => {
            eprint!("{errors}");
            eprintln!(
                "{}: {} error(s); the configuration was not accepted",
                path.display(),
                errors.errors.len()
            );
            false
        }
    }
}
