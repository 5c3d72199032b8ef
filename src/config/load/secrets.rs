//! Secrets (passwords, client secrets) from the environment or a file, and the files a route names.
//! Messages name the variable or the file, never the value.

use super::document::{Report, Section};
use super::{Env, values};
use crate::config::Secret;
use std::path::{Path, PathBuf};

/// The secret in the environment variable named by `key` (`password_env`, `client_secret_env`).
pub fn from_env(
    report: &mut Report,
    section: &Section<'_, '_>,
    key: &str,
    env: Env<'_>,
) -> Option<Secret> {
    let at = report.string(section, key)?;
    if !values::is_env_var_name(at.value) {
        // Possibly the secret itself: do not repeat it.
        report.error(
            &at.span,
            format!(
                "`{}` must be the name of an environment variable (letters, digits and _), not \
                 the secret itself",
                section.name(key)
            ),
        );
        return None;
    }
    match env(at.value) {
        None => {
            report.error(
                &at.span,
                format!("environment variable {} ({key}) is not set", at.value),
            );
            None
        }
        Some(value) if value.is_empty() => {
            report.error(
                &at.span,
                format!("environment variable {} ({key}) is empty", at.value),
            );
            None
        }
        Some(value) => Some(Secret::new(value)),
    }
}

/// The secret in the file named by `key` (`password_file`, `client_secret_file`); the line break
/// that `echo secret > file` and Notepad leave at the end is not part of it.
pub fn from_file(report: &mut Report, section: &Section<'_, '_>, key: &str) -> Option<Secret> {
    let at = report.string(section, key)?;
    let problem = match std::fs::read(at.value) {
        Err(e) => e.to_string(),
        Ok(bytes) => match String::from_utf8(bytes) {
            Err(_) => "it is not UTF-8 text".to_string(),
            Ok(text) => {
                let secret = text.trim_end_matches(['\r', '\n']);
                if !secret.is_empty() {
                    return Some(Secret::new(secret));
                }
                "it is empty".to_string()
            }
        },
    };
    report.error(
        &at.span,
        format!("cannot read {key} {:?}: {problem}", at.value),
    );
    None
}

/// A file that must be readable now, so that a wrong path stops the start, not the first delivery.
/// The path is returned even when unreadable (the error is reported), so that reading goes on.
pub fn readable_path(report: &mut Report, section: &Section<'_, '_>, key: &str) -> Option<PathBuf> {
    let at = report.string(section, key)?;
    if at.value.trim().is_empty() {
        report.error(&at.span, format!("`{}` is empty", section.name(key)));
        return None;
    }
    if let Err(problem) = readable_file(Path::new(at.value)) {
        report.error(
            &at.span,
            format!(
                "cannot read `{}` {:?}: {problem}",
                section.name(key),
                at.value
            ),
        );
    }
    Some(PathBuf::from(at.value))
}

pub fn readable_file(path: &Path) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    match file.metadata() {
        Ok(metadata) if metadata.is_dir() => Err("it is a directory".to_string()),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}
