//! The one classification of upstream outcomes: every reply and every I/O failure of a delivery attempt
//! is either [`Class::Transient`] (keep the message, try again later) or [`Class::Permanent`] (give up on
//! the recipient and bounce), and known Microsoft 365 replies carry a short explanation for the operator.
//!
//! Rules, in order:
//! - I/O errors, timeouts, DNS and TLS failures are transient: nothing about the message is wrong.
//! - Replies at connection level (greeting, EHLO/HELO, STARTTLS, AUTH) are never permanent. They are about
//!   the relay's configuration, credentials or network standing, never about a message or a recipient;
//!   the administrator fixes the cause and the queue drains. Bouncing every queued message because a
//!   password expired is the failure this rule exists to prevent.
//! - A few 5xx replies to MAIL/RCPT/DATA are also about the relay itself (its credentials, its connector,
//!   its IP address, its mailbox's daily quota) or pass with time; the table below marks them transient.
//!   Everything else follows the reply code: 2xx success, 4xx transient, 5xx permanent. A code outside
//!   2xx–5xx is unexpected and therefore transient.

use crate::smtp::Reply;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Try again later.
    Transient,
    /// Do not try again; the recipient fails.
    Permanent,
}

/// Where in the SMTP dialogue a reply (or a failure) happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Connect,
    Greeting,
    Ehlo,
    StartTls,
    TlsHandshake,
    Auth,
    MailFrom,
    RcptTo,
    Data,
    /// The reply after the message content and its terminating dot.
    EndOfData,
    Rset,
    Quit,
}

impl Stage {
    /// Stages that belong to setting up the connection rather than to one message.
    pub fn is_connection_level(self) -> bool {
        matches!(
            self,
            Stage::Connect
                | Stage::Greeting
                | Stage::Ehlo
                | Stage::StartTls
                | Stage::TlsHandshake
                | Stage::Auth
        )
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Connect => "connect",
            Stage::Greeting => "greeting",
            Stage::Ehlo => "EHLO",
            Stage::StartTls => "STARTTLS",
            Stage::TlsHandshake => "TLS handshake",
            Stage::Auth => "AUTH",
            Stage::MailFrom => "MAIL FROM",
            Stage::RcptTo => "RCPT TO",
            Stage::Data => "DATA",
            Stage::EndOfData => "end of data",
            Stage::Rset => "RSET",
            Stage::Quit => "QUIT",
        })
    }
}

/// The class of a reply wherever it came: by its code, except for the known replies that concern the
/// relay rather than the message (see the module docs). A positive reply is classed transient only in
/// the sense that it is not a permanent failure; callers check [`Reply::is_positive`] first.
pub fn classify_reply(reply: &Reply) -> Class {
    if let Some(known) = lookup(reply)
        && let Some(class) = known.class
    {
        return class;
    }
    if reply.is_permanent() && reply.code < 600 {
        Class::Permanent
    } else {
        Class::Transient
    }
}

/// The class of a reply given the command it answered: connection-level replies are never permanent.
pub fn classify_at(stage: Stage, reply: &Reply) -> Class {
    if stage.is_connection_level() {
        Class::Transient
    } else {
        classify_reply(reply)
    }
}

/// I/O errors, timeouts, DNS and TLS failures: always worth another try.
pub fn classify_io_error(_err: &std::io::Error) -> Class {
    Class::Transient
}

/// What a known upstream reply means and what the operator should do about it.
pub fn explain(reply: &Reply) -> Option<&'static str> {
    lookup(reply).map(|known| known.explanation)
}

/// How a known reply is recognised.
enum Pattern {
    /// Enhanced status code `class.subject.detail` with `detail` in `lo..=hi`.
    Code(u8, u16, u16, u16),
    /// Same subject/detail under either class (Microsoft sends some as 4xx and as 5xx).
    AnyClass(u16, u16),
    /// Enhanced code and a case-insensitive fragment of the text.
    CodeText(u8, u16, u16, &'static str),
    /// A case-insensitive fragment of the text, whatever the code.
    Text(&'static str),
}

struct Known {
    pattern: Pattern,
    /// `None`: classify by the reply code.
    class: Option<Class>,
    explanation: &'static str,
}

use Class::Transient;
use Pattern::{AnyClass, Code, CodeText, Text};

const CONCURRENCY: &str = "too many concurrent connections for the mailbox (Microsoft allows 3): lower max_connections for this route";

/// The Microsoft 365 replies worth recognising (reference/microsoft-365.md). More specific entries
/// come first: the first match wins.
const KNOWN: &[Known] = &[
    Known {
        pattern: Code(5, 7, 30, 30),
        class: Some(Transient),
        explanation: "Basic authentication is disabled for SMTP client submission: use OAuth 2.0 (XOAUTH2) or Microsoft Graph",
    },
    Known {
        pattern: Code(5, 7, 139, 139),
        class: Some(Transient),
        explanation: "SMTP AUTH is disabled for the mailbox or tenant (Security Defaults block it): enable SMTP client authentication for the mailbox",
    },
    Known {
        pattern: Code(5, 7, 3, 3),
        class: Some(Transient),
        explanation: "authentication failed: wrong credentials or token, SMTP AUTH disabled for the mailbox, or MFA/Conditional Access blocks it",
    },
    Known {
        pattern: Code(5, 7, 57, 57),
        class: Some(Transient),
        explanation: "the upstream wants authentication (or TLS before it): configure AUTH for this route, or use the tenant's MX endpoint",
    },
    Known {
        pattern: Code(5, 7, 60, 60),
        class: None,
        explanation: "the authenticated mailbox may not send as this sender (SendAsDenied): grant Send As, rewrite the sender, or use a connector; the message must be sent again after the fix",
    },
    Known {
        pattern: CodeText(4, 3, 2, "thread limit"),
        class: None,
        explanation: CONCURRENCY,
    },
    Known {
        pattern: CodeText(4, 3, 2, "concurrent connections"),
        class: None,
        explanation: CONCURRENCY,
    },
    Known {
        pattern: CodeText(5, 2, 0, "SubmissionQuotaExceeded"),
        class: Some(Transient),
        explanation: "the mailbox reached its 10,000 recipients per day: wait, or spread the mail over several mailboxes",
    },
    Known {
        pattern: Code(5, 1, 8, 8),
        class: Some(Transient),
        explanation: "the sending mailbox is blocked for sending spam: secure it and release it in the Defender portal (restricted users)",
    },
    Known {
        pattern: Code(5, 7, 64, 64),
        class: Some(Transient),
        explanation: "the inbound connector no longer matches the relay's IP address or certificate: fix the connector",
    },
    Known {
        pattern: AnyClass(4, 62),
        class: None,
        explanation: "mail was routed to the wrong region or tenant: check the connector configuration",
    },
    Known {
        pattern: Code(5, 7, 68, 68),
        class: Some(Transient),
        explanation: "the tenant rejects Direct Send (RejectDirectSend): use a partner/on-premises connector or client submission",
    },
    Known {
        pattern: Text("Spamhaus"),
        class: Some(Transient),
        explanation: "the relay's IP address is listed by Spamhaus: get it delisted there",
    },
    Known {
        pattern: Text("FBLW15"),
        class: Some(Transient),
        explanation: "the relay's IP address is on Microsoft's block list: delist it at sender.office.com",
    },
    Known {
        pattern: Code(5, 7, 606, 649),
        class: Some(Transient),
        explanation: "the relay's IP address is banned by Microsoft: delist it at sender.office.com",
    },
    Known {
        pattern: Code(5, 7, 705, 705),
        class: Some(Transient),
        explanation: "the tenant exceeded its sending threshold: contact Microsoft support",
    },
    Known {
        pattern: Code(5, 7, 708, 708),
        class: Some(Transient),
        explanation: "the sending IP address is not accepted (low reputation, trial tenant): contact support or use a certificate connector",
    },
    Known {
        pattern: Code(5, 7, 750, 750),
        class: None,
        explanation: "the sending domain is not registered in the tenant: add and verify the domain, or use a certificate connector",
    },
    Known {
        pattern: Code(4, 7, 650, 650),
        class: None,
        explanation: "rate limited by Microsoft: send more slowly",
    },
    Known {
        pattern: Code(4, 7, 652, 652),
        class: None,
        explanation: "too many connections from this IP address: lower max_connections",
    },
    Known {
        pattern: Code(4, 7, 500, 699),
        class: None,
        explanation: "throttled because the sending pattern changed: the relay retries later; a connector helps",
    },
    Known {
        pattern: AnyClass(2, 121),
        class: Some(Transient),
        explanation: "the recipient's per-hour receive limit from this sender was reached: retried later",
    },
    Known {
        pattern: AnyClass(2, 122),
        class: Some(Transient),
        explanation: "the recipient's per-hour receive limit was reached: retried later",
    },
    Known {
        pattern: Code(5, 4, 1, 1),
        class: None,
        explanation: "the recipient does not exist (directory-based edge blocking)",
    },
    Known {
        pattern: Code(4, 7, 66, 66),
        class: None,
        explanation: "the upstream refuses TLS 1.0/1.1: TLS 1.2 or newer is needed",
    },
];

fn lookup(reply: &Reply) -> Option<&'static Known> {
    let enhanced = reply.enhanced();
    let text = reply.lines.join(" ").to_ascii_lowercase();
    KNOWN.iter().find(|known| match known.pattern {
        Code(class, subject, lo, hi) => enhanced.is_some_and(|e| {
            e.class == class && e.subject == subject && (lo..=hi).contains(&e.detail)
        }),
        AnyClass(subject, detail) => {
            enhanced.is_some_and(|e| e.class != 2 && e.subject == subject && e.detail == detail)
        }
        CodeText(class, subject, detail, fragment) => {
            enhanced.is_some_and(|e| (e.class, e.subject, e.detail) == (class, subject, detail))
                && text.contains(&fragment.to_ascii_lowercase())
        }
        Text(fragment) => !reply.is_positive() && text.contains(&fragment.to_ascii_lowercase()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(line: &str) -> Reply {
        let (code, text) = line.split_once(' ').unwrap_or((line, ""));
        Reply::new(code.parse().unwrap(), text)
    }

    #[test]
    fn replies_are_classified_by_code_and_known_exceptions() {
        use Class::*;
        let cases = [
            ("250 2.0.0 OK", Transient),
            ("451 4.3.0 Temporary failure", Transient),
            ("421 4.7.66 TLS 1.0 and 1.1 are not supported", Transient),
            ("550 5.1.1 User unknown", Permanent),
            ("554 5.6.0 Message rejected", Permanent),
            ("550 no enhanced code", Permanent),
            (
                "550 5.7.30 Basic authentication is not supported for Client Submission",
                Transient,
            ),
            ("535 5.7.3 Authentication unsuccessful", Transient),
            (
                "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant",
                Transient,
            ),
            (
                "530 5.7.57 Client not authenticated to send mail during MAIL FROM",
                Transient,
            ),
            (
                "550 5.7.60 SMTP; Client does not have permissions to send as this sender",
                Permanent,
            ),
            (
                "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException",
                Transient,
            ),
            ("554 5.2.0 Some other store failure", Permanent),
            ("550 5.1.8 Access denied, bad outbound sender", Transient),
            (
                "550 5.7.64 TenantAttribution; Relay Access Denied",
                Transient,
            ),
            (
                "550 5.7.68 TenantInboundAttribution; Direct Send not allowed",
                Transient,
            ),
            (
                "550 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using Spamhaus",
                Transient,
            ),
            (
                "550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent ... blocked using FBLW15",
                Transient,
            ),
            ("550 5.7.1 Relaying denied", Permanent),
            ("550 5.7.606 Access denied, banned sending IP", Transient),
            ("550 5.7.649 Access denied, banned sending IP", Transient),
            ("550 5.7.650 not in the ban range", Permanent),
            (
                "550 5.7.750 Service unavailable. Client blocked from sending from unregistered domains",
                Permanent,
            ),
            (
                "550 5.2.121 Recipient's per hour message receive limit exceeded",
                Transient,
            ),
            (
                "550 5.2.122 The recipient has exceeded their limit",
                Transient,
            ),
            (
                "550 5.4.1 Recipient address rejected: Access denied",
                Permanent,
            ),
            ("354 Start mail input", Transient),
            ("600 out of range", Transient),
        ];
        for (line, expected) in cases {
            assert_eq!(classify_reply(&reply(line)), expected, "{line}");
        }
    }

    #[test]
    fn connection_level_rejections_are_never_permanent() {
        let rejections = [
            "554 5.7.1 No SMTP service here",
            "550 5.7.30 Basic authentication is not supported for Client Submission",
            "504 5.7.4 Unrecognized authentication type",
            "535 5.7.8 Error: authentication failed",
            "502 5.5.1 EHLO not implemented",
        ];
        let stages = [Stage::Greeting, Stage::Ehlo, Stage::StartTls, Stage::Auth];
        for line in rejections {
            for stage in stages {
                assert_eq!(
                    classify_at(stage, &reply(line)),
                    Class::Transient,
                    "{stage}: {line}"
                );
            }
        }
        let rcpt = reply("550 5.1.1 User unknown");
        assert_eq!(classify_at(Stage::RcptTo, &rcpt), Class::Permanent);
        assert_eq!(
            classify_at(Stage::EndOfData, &reply("554 5.6.0 Bad")),
            Class::Permanent
        );
        assert_eq!(
            classify_at(
                Stage::MailFrom,
                &reply("530 5.7.57 Client not authenticated")
            ),
            Class::Transient
        );
    }

    #[test]
    fn known_replies_are_explained() {
        let cases = [
            ("550 5.7.30 Basic authentication is not supported", "OAuth"),
            ("535 5.7.3 Authentication unsuccessful", "wrong credentials"),
            (
                "535 5.7.139 Authentication unsuccessful",
                "enable SMTP client authentication",
            ),
            (
                "530 5.7.57 Client not authenticated to send mail",
                "authentication",
            ),
            (
                "550 5.7.60 SMTP; Client does not have permissions",
                "Send As",
            ),
            (
                "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded",
                "concurrent connections",
            ),
            (
                "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException",
                "10,000",
            ),
            ("550 5.1.8 Access denied, bad outbound sender", "Defender"),
            (
                "550 5.7.64 TenantAttribution; Relay Access Denied",
                "connector",
            ),
            (
                "451 4.4.62 Mail sent to the wrong Office 365 region",
                "region",
            ),
            (
                "550 5.7.68 TenantInboundAttribution; Direct Send not allowed",
                "Direct Send",
            ),
            (
                "550 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using Spamhaus",
                "Spamhaus",
            ),
            ("550 5.7.1 blocked using FBLW15", "sender.office.com"),
            (
                "550 5.7.606 Access denied, banned sending IP [192.0.2.1]",
                "sender.office.com",
            ),
            ("550 5.7.620 Access denied, banned sending IP", "banned"),
            (
                "550 5.7.705 Access denied, tenant has exceeded threshold",
                "threshold",
            ),
            (
                "550 5.7.708 Access denied, traffic not accepted from this IP",
                "not accepted",
            ),
            (
                "550 5.7.750 Client blocked from sending from unregistered domains",
                "verify the domain",
            ),
            (
                "451 4.7.500 Server busy. Please try again later. (AS900)",
                "sending pattern",
            ),
            ("451 4.7.699 Server busy", "sending pattern"),
            (
                "451 4.7.650 The mail server is temporarily rate limited",
                "rate limited",
            ),
            ("451 4.7.652 too many connections", "too many connections"),
            ("550 5.2.121 per hour message receive limit", "per-hour"),
            (
                "550 5.2.122 The recipient has exceeded their limit",
                "per-hour",
            ),
            (
                "550 5.4.1 Recipient address rejected: Access denied",
                "does not exist",
            ),
            ("421 4.7.66 TLS 1.0 and 1.1 are not supported", "TLS 1.2"),
        ];
        for (line, fragment) in cases {
            let explanation =
                explain(&reply(line)).unwrap_or_else(|| panic!("no explanation for {line}"));
            assert!(explanation.contains(fragment), "{line}: {explanation}");
        }
        for line in [
            "550 5.1.1 User unknown",
            "250 2.0.0 OK",
            "451 4.7.1 Try later",
            "550 5.2.0 other",
        ] {
            assert_eq!(explain(&reply(line)), None, "{line}");
        }
    }
}
