//! The retry schedule keys (`retry`, `delay_notice`, `expire`), read the same way in `[queue]` and in
//! `[[route]]`: each key written replaces the one inherited, each independently.

use super::document::{Report, Section};
use crate::config::RetrySchedule;
use std::time::Duration;

/// Where the values a section does not write come from, for messages.
#[derive(Clone, Copy)]
pub enum Inherited {
    /// `[queue]`: the built-in defaults (IIS's).
    Defaults,
    /// `[[route]]`: the `[queue]` schedule (itself possibly defaults).
    Queue,
}

impl Inherited {
    fn label(self, key: &str) -> String {
        match self {
            Inherited::Defaults => format!("the default `{key}`"),
            Inherited::Queue => format!("`{key}` of [queue]"),
        }
    }
}

/// `base` with the section's own keys applied. `delay_notice` must be shorter than `expire`
/// (otherwise the notice could never be sent); checked only when the section writes one of the two,
/// so that an inherited combination is reported once, where it is written.
pub fn schedule(
    report: &mut Report,
    section: &Section<'_, '_>,
    base: &RetrySchedule,
    inherited: Inherited,
) -> RetrySchedule {
    let retry = report
        .durations(section, "retry")
        .map_or_else(|| base.retry.clone(), |at| at.value);
    let notice = report.duration_or_never(section, "delay_notice");
    let expire = report.optional_duration(section, "expire");
    // A key written but unusable is reported already; comparing its stand-in would mislead.
    let usable = (notice.is_some() || !section.has("delay_notice"))
        && (expire.is_some() || !section.has("expire"));
    let schedule = RetrySchedule {
        retry,
        delay_notice: notice.as_ref().map_or(base.delay_notice, |at| at.value),
        expire: expire.as_ref().map_or(base.expire, |at| at.value),
    };

    let span = notice
        .map(|at| at.span)
        .or_else(|| expire.map(|at| at.span))
        .filter(|_| usable);
    if let (Some(span), Some(delay)) = (span, schedule.delay_notice)
        && delay >= schedule.expire
    {
        let label = |key: &str| {
            if section.has(key) {
                format!("`{}`", section.name(key))
            } else {
                inherited.label(key)
            }
        };
        report.error(
            &span,
            format!(
                "{} ({}) is not shorter than {} ({}): the delay notice would never be sent; \
                 make delay_notice shorter, or write delay_notice = \"never\"",
                label("delay_notice"),
                show(delay),
                label("expire"),
                show(schedule.expire),
            ),
        );
    }
    schedule
}

fn show(duration: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(duration)
}
