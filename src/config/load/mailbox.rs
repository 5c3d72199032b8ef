//! What a route's mailbox may do: `[route.limits]` (Microsoft counts per mailbox) and sender
//! rewriting (`rewrite_sender`, `allowed_senders`: the fix for `5.7.60 SendAsDenied`).

use super::document::{At, Report, Section};
use super::keys;
use crate::config::{MailboxLimits, SenderRewrite};
use crate::smtp::command::is_valid_mailbox;

/// `[route.limits]` over the preset's limits, and its `max_connections` (which belongs to the
/// transport and is handed to it).
pub fn limits(
    report: &mut Report,
    route: &Section<'_, '_>,
    preset: &MailboxLimits,
) -> (MailboxLimits, Option<At<usize>>) {
    let Some(section) = report.table(route, "limits", "[route.limits]") else {
        return (preset.clone(), None);
    };
    keys::check(report, &section, &[keys::ROUTE_LIMITS]);
    let rate = |report: &mut Report, key: &str, default| {
        report.rate(&section, key).map_or(default, |at| at.value)
    };
    let limits = MailboxLimits {
        message_rate: rate(report, "message_rate", preset.message_rate),
        recipient_rate: rate(report, "recipient_rate", preset.recipient_rate),
        recipients_per_message: report.count(
            &section,
            "recipients_per_message",
            preset.recipients_per_message,
        ),
        throttle_backoff: report.duration(&section, "throttle_backoff", preset.throttle_backoff),
    };
    let max_connections = section.get("max_connections").and_then(|value| {
        let count = report.count(&section, "max_connections", 0);
        (count > 0).then(|| At {
            value: count,
            span: value.span(),
        })
    });
    if let (Some(at), Some(route_span)) = (&max_connections, route.key_span("max_connections")) {
        report.error(
            &at.span,
            format!(
                "`max_connections` is written both in [[route]] (line {}) and in \
                 [route.limits]: keep one",
                report.line(route_span.start)
            ),
        );
    }
    (limits, max_connections)
}

/// `rewrite_sender` and `allowed_senders`.
pub fn rewrite(report: &mut Report, route: &Section<'_, '_>) -> Option<SenderRewrite> {
    let address = report.string(route, "rewrite_sender").and_then(|at| {
        let address = at.value.trim();
        if is_valid_mailbox(address) {
            Some(address.to_string())
        } else {
            report.error(
                &at.span,
                format!(
                    "`route.rewrite_sender` {:?} is not a valid address: write local-part@domain, \
                     e.g. \"scanner@contoso.com\" (the mailbox the route signs in as)",
                    at.value
                ),
            );
            None
        }
    });
    let allowed = report.strings(route, "allowed_senders").map(|list| {
        if !route.has("rewrite_sender") {
            report.error(
                &list.span,
                "`allowed_senders` lists the senders that pass unchanged: it needs \
                 `rewrite_sender` (the address every other sender becomes)",
            );
        }
        list.value
            .iter()
            .filter_map(|at| {
                let address = at.value.trim();
                if is_valid_mailbox(address) {
                    Some(address.to_ascii_lowercase())
                } else {
                    report.error(
                        &at.span,
                        format!(
                            "`route.allowed_senders`: {:?} is not a valid address: write \
                             local-part@domain",
                            at.value
                        ),
                    );
                    None
                }
            })
            .collect()
    });
    Some(SenderRewrite {
        address: address?,
        allowed_senders: allowed.unwrap_or_default(),
    })
}
