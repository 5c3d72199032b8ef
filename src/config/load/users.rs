//! `[[user]]` (the accounts of inbound AUTH) and `[auth_lockout]`.

use super::document::{Report, Section};
use super::keys;
use crate::config::{AuthLockout, UserConfig};
use crate::policy::users::{SenderPattern, check_password_hash};
use std::collections::HashMap;

/// The longest user name accepted (SASL allows more; no device needs it).
const MAX_NAME: usize = 256;

pub fn users(report: &mut Report, top: &Section<'_, '_>) -> Vec<UserConfig> {
    let Some(list) = report.tables(top, "user", "[[user]]") else {
        return Vec::new();
    };
    // Lower-cased name → the line it was first defined on.
    let mut seen: HashMap<String, (String, usize)> = HashMap::new();
    let mut users = Vec::new();
    for section in &list.value {
        keys::check(report, section, &[keys::USER]);
        let name = report.required_string(section, "name").and_then(|at| {
            if let Err(problem) = check_name(at.value) {
                report.error(&at.span, format!("`user.name` {:?} {problem}", at.value));
                return None;
            }
            let line = report.line(at.span.start);
            match seen.get(&at.value.to_lowercase()) {
                Some((first, first_line)) if first == at.value => {
                    report.error(
                        &at.span,
                        format!(
                            "user {:?} is already defined on line {first_line}",
                            at.value
                        ),
                    );
                    None
                }
                Some((first, first_line)) => {
                    report.error(
                        &at.span,
                        format!(
                            "user {:?} differs from {first:?} (line {first_line}) only in case: \
                             user names are matched exactly, so two such names would be \
                             confused; keep one",
                            at.value
                        ),
                    );
                    None
                }
                None => {
                    seen.insert(at.value.to_lowercase(), (at.value.to_string(), line));
                    Some(at.value.to_string())
                }
            }
        });
        let password_hash = report
            .required_string(section, "password_hash")
            .and_then(|at| match check_password_hash(at.value) {
                Ok(()) => Some(at.value.trim().to_string()),
                Err(problem) => {
                    report.error(
                        &at.span,
                        format!(
                            "`user.password_hash` is not a usable argon2 hash: {problem}; run \
                             `smarthost passwd` and put the line it prints here"
                        ),
                    );
                    None
                }
            });
        let allowed_senders = report
            .strings(section, "allowed_senders")
            .map(|list| {
                if list.value.is_empty() {
                    report.error(
                        &list.span,
                        "`user.allowed_senders` is empty: leave it out to let the user send as \
                         anyone",
                    );
                }
                list.value
                    .iter()
                    .filter_map(|at| match SenderPattern::parse(at.value) {
                        Ok(pattern) => Some(match pattern {
                            SenderPattern::Address(address) => address,
                            SenderPattern::Domain(domain) => format!("*@{domain}"),
                        }),
                        Err(problem) => {
                            let hint = match at.value.trim() {
                                "<>" | "" => " (the null sender <> is always allowed)",
                                "*" => " (leave allowed_senders out to allow any sender)",
                                _ => "",
                            };
                            report.error(
                                &at.span,
                                format!("`user.allowed_senders`: {problem}{hint}"),
                            );
                            None
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        if let (Some(name), Some(password_hash)) = (name, password_hash) {
            users.push(UserConfig {
                name,
                password_hash,
                allowed_senders,
            });
        }
    }
    users
}

fn check_name(name: &str) -> Result<(), &'static str> {
    if name.chars().any(char::is_control) {
        return Err("contains a control character");
    }
    if name.trim() != name {
        return Err("starts or ends with a space");
    }
    if name.len() > MAX_NAME {
        return Err("is longer than 256 bytes");
    }
    Ok(())
}

pub fn auth_lockout(report: &mut Report, top: &Section<'_, '_>) -> AuthLockout {
    let d = AuthLockout::default();
    let Some(section) = report.table(top, "auth_lockout", "[auth_lockout]") else {
        return d;
    };
    keys::check(report, &section, &[keys::AUTH_LOCKOUT]);
    let max_failures = match report.integer(&section, "max_failures") {
        None => d.max_failures,
        Some(at) => match u32::try_from(at.value) {
            Ok(n) => n,
            Err(_) => {
                report.error(
                    &at.span,
                    "`auth_lockout.max_failures` must be between 0 (never lock) and 4294967295",
                );
                d.max_failures
            }
        },
    };
    AuthLockout {
        max_failures,
        window: report.duration(&section, "window", d.window),
        duration: report.duration(&section, "duration", d.duration),
    }
}
