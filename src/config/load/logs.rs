//! `[logs]`: the W3C extended log files (IIS's SMTP log) and the format of the process log.

use super::document::{Report, Section};
use super::keys;
use crate::config::LogsConfig;

pub fn logs(report: &mut Report, top: &Section<'_, '_>) -> LogsConfig {
    let d = LogsConfig::default();
    let Some(section) = report.table(top, "logs", "[logs]") else {
        return d;
    };
    keys::check(report, &section, &[keys::LOGS]);
    let w3c = report.boolean(&section, "w3c").map_or(d.w3c, |at| at.value);
    let json = report
        .boolean(&section, "json")
        .map_or(d.json, |at| at.value);
    let retention_days = match report.integer(&section, "retention_days") {
        None => d.retention_days,
        Some(at) => match u32::try_from(at.value) {
            Ok(days) if days <= 36_500 => days,
            _ => {
                report.error(
                    &at.span,
                    format!(
                        "`logs.retention_days` must be between 0 (keep forever) and 36500, not {}",
                        at.value
                    ),
                );
                d.retention_days
            }
        },
    };
    LogsConfig {
        w3c,
        json,
        retention_days,
    }
}
