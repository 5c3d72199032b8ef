//! `mode = "m365-..."`: the Microsoft 365 presets (reference/microsoft-365.md). A preset fills in
//! what the route does not write (host, port, TLS, connections, mailbox limits) and adds rules
//! (authentication required or refused, a client certificate required, the tenant's domain).
//! Every value it fills in can be written out in the route instead; the rules stay.

use super::document::{At, Report, Section};
use crate::config::{M365Mode, MailboxLimits, Rate, TlsMode};
use std::time::Duration;

/// The spellings of `mode`, as written in the file.
pub const MODES: &[(&str, M365Mode)] = &[
    ("m365-client-submission", M365Mode::ClientSubmission),
    ("m365-direct-send", M365Mode::DirectSend),
    ("m365-connector", M365Mode::Connector),
    ("m365-hve", M365Mode::Hve),
    ("m365-graph", M365Mode::Graph),
];

pub fn mode_name(mode: M365Mode) -> &'static str {
    MODES
        .iter()
        .find(|(_, m)| *m == mode)
        .map_or("", |(name, _)| name)
}

/// `mode = ...`; `None` when absent or unknown (reported).
pub fn mode(report: &mut Report, section: &Section<'_, '_>) -> Option<At<M365Mode>> {
    let at = report.string(section, "mode")?;
    if let Some((_, mode)) = MODES.iter().find(|(name, _)| *name == at.value) {
        return Some(At {
            value: *mode,
            span: at.span,
        });
    }
    let written = at
        .value
        .trim()
        .to_ascii_lowercase()
        .replace(['_', ' '], "-");
    let close = MODES
        .iter()
        .find(|(name, _)| *name == written || name.strip_prefix("m365-") == Some(&written));
    let message = match close {
        Some((name, _)) => format!(
            "`route.mode`: unknown value {:?} (did you mean {name:?}?)",
            at.value
        ),
        None => {
            let names: Vec<String> = MODES.iter().map(|(name, _)| format!("{name:?}")).collect();
            format!(
                "`route.mode`: unknown value {:?}, expected one of {}",
                at.value,
                names.join(", ")
            )
        }
    };
    report.error(&at.span, message);
    None
}

/// Where a preset's upstream host comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostDefault {
    /// No preset: `host` is required.
    None,
    Fixed(&'static str),
    /// `<tenant_domain with dots as hyphens>.mail.protection.outlook.com`.
    TenantMx,
}

/// Whether the route signs in at the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthRule {
    Optional,
    Required,
    /// The endpoint offers no AUTH (the MX endpoint): a `[route.auth]` is a mistake.
    Refused,
}

/// What `accepted_domains` means and whether it must be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptedDomains {
    /// Optional; when written, recipients outside them are refused at RCPT.
    Restricts,
    /// Direct Send: restricts recipients, and defaults to `[tenant_domain]`.
    RestrictsDefaultTenant,
    /// Connector: required; names the domains the client certificate must match. It does not
    /// restrict recipients: a connector relays to the Internet too.
    CertificateNames,
}

/// What a mode fills in and requires.
#[derive(Debug, Clone)]
pub struct Preset {
    pub mode: Option<M365Mode>,
    pub host: HostDefault,
    pub port: Option<u16>,
    pub tls: Option<TlsMode>,
    pub max_connections: Option<usize>,
    pub limits: MailboxLimits,
    pub auth: AuthRule,
    pub client_certificate_required: bool,
    pub accepted_domains: AcceptedDomains,
}

const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(86_400);

/// Microsoft's limits for one mailbox on client submission: 30 messages a minute, 10,000 recipients
/// a day, 500 recipients a message, 3 connections.
fn mailbox_limits() -> MailboxLimits {
    MailboxLimits {
        message_rate: Some(Rate {
            count: 30,
            per: MINUTE,
        }),
        recipient_rate: Some(Rate {
            count: 10_000,
            per: DAY,
        }),
        recipients_per_message: 500,
        ..MailboxLimits::default()
    }
}

pub fn preset(mode: Option<M365Mode>) -> Preset {
    let plain = Preset {
        mode,
        host: HostDefault::None,
        port: None,
        tls: None,
        max_connections: None,
        limits: MailboxLimits::default(),
        auth: AuthRule::Optional,
        client_certificate_required: false,
        accepted_domains: AcceptedDomains::Restricts,
    };
    match mode {
        None => plain,
        Some(M365Mode::ClientSubmission) => Preset {
            host: HostDefault::Fixed("smtp.office365.com"),
            port: Some(587),
            tls: Some(TlsMode::StartTls),
            max_connections: Some(3),
            limits: mailbox_limits(),
            auth: AuthRule::Required,
            ..plain
        },
        Some(M365Mode::DirectSend) => Preset {
            host: HostDefault::TenantMx,
            port: Some(25),
            tls: Some(TlsMode::Opportunistic),
            auth: AuthRule::Refused,
            accepted_domains: AcceptedDomains::RestrictsDefaultTenant,
            ..plain
        },
        Some(M365Mode::Connector) => Preset {
            host: HostDefault::TenantMx,
            port: Some(25),
            tls: Some(TlsMode::StartTls),
            auth: AuthRule::Refused,
            client_certificate_required: true,
            accepted_domains: AcceptedDomains::CertificateNames,
            ..plain
        },
        Some(M365Mode::Hve) => Preset {
            host: HostDefault::Fixed("smtp.hve.mx.microsoft"),
            port: Some(587),
            tls: Some(TlsMode::StartTls),
            auth: AuthRule::Required,
            ..plain
        },
        // Graph routes are read by `graph.rs` (4 connections, Graph's limit per mailbox); only the
        // limits are used from here.
        Some(M365Mode::Graph) => plain,
    }
}
