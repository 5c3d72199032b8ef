//! A `transport = "smtp"` route: upstream, TLS policy, `[route.auth]` (password or XOAUTH2 with
//! `[route.oauth]`), the client certificate, and `accepted_domains`, each over the preset of the
//! route's `mode`.

use super::document::{At, Report, Section};
use super::m365::{AcceptedDomains, AuthRule, HostDefault, Preset, mode_name};
use super::oauth::{OAuthContext, TokenUse};
use super::{Env, defaults, keys, oauth, secrets, values};
use crate::config::{
    AuthConfig, AuthMechanism, ClientCert, Credential, M365Mode, SmtpRoute, TlsMode,
};
use std::path::Path;
use std::time::SystemTime;

/// What an smtp route is read against.
pub struct SmtpContext<'a> {
    pub preset: &'a Preset,
    pub route_name: Option<&'a str>,
    pub data_dir: &'a Path,
    pub env: Env<'a>,
    /// `[route.limits] max_connections`, standing in for the route's own key.
    pub limits_max_connections: Option<usize>,
}

/// The route, and the recipient domains it is restricted to (empty: no restriction).
pub fn smtp_transport(
    report: &mut Report,
    section: &Section<'_, '_>,
    context: &SmtpContext<'_>,
) -> (Option<SmtpRoute>, Vec<String>) {
    let preset = context.preset;
    let mode = preset.mode.map(mode_name).unwrap_or_default();
    let tenant = tenant_domain(report, section, preset);
    let host = host(report, section, preset, tenant.as_deref());
    let tls = match report.string(section, "tls") {
        None => preset.tls.unwrap_or(TlsMode::StartTls),
        Some(at) => match at.value {
            "starttls" => TlsMode::StartTls,
            "implicit" => TlsMode::Implicit,
            "opportunistic" => TlsMode::Opportunistic,
            "none" => TlsMode::None,
            other => {
                report.error(
                    &at.span,
                    format!(
                        "`route.tls`: unknown value {other:?}, expected \"starttls\", \"implicit\", \
                         \"opportunistic\" or \"none\""
                    ),
                );
                TlsMode::StartTls
            }
        },
    };
    let default_port = preset.port.unwrap_or_else(|| defaults::port(tls));
    let port = match report.integer(section, "port") {
        None => default_port,
        Some(at) => u16::try_from(at.value)
            .ok()
            .filter(|port| *port != 0)
            .unwrap_or_else(|| {
                report.error(
                    &at.span,
                    format!("`route.port` {} is out of range (1 to 65535)", at.value),
                );
                default_port
            }),
    };
    let ca_file = secrets::readable_path(report, section, "ca_file");
    let d = defaults::smtp_route();
    let connect_timeout = report.duration(section, "connect_timeout", d.connect_timeout);
    let command_timeout = report.duration(section, "command_timeout", d.command_timeout);
    let max_connections = report.count(
        section,
        "max_connections",
        context
            .limits_max_connections
            .or(preset.max_connections)
            .unwrap_or(d.max_connections),
    );

    let accepted = accepted_domains(report, section, preset, tenant.as_deref());
    let client_cert = client_certificate(report, section, preset, tls, &accepted);
    let restriction = match preset.accepted_domains {
        AcceptedDomains::CertificateNames => Vec::new(),
        AcceptedDomains::Restricts | AcceptedDomains::RestrictsDefaultTenant => accepted,
    };

    let auth_section = report.table(section, "auth", "[route.auth]");
    let oauth_section = report.table(section, "oauth", "[route.oauth]");
    match (&auth_section, preset.auth) {
        (None, AuthRule::Required) => report.error(
            &section.span,
            format!(
                "mode = \"{mode}\" needs [route.auth]: the upstream accepts mail only from a \
                 signed-in mailbox (mechanism = \"xoauth2\" with [route.oauth], or a password \
                 while Microsoft still allows it)"
            ),
        ),
        (Some(auth), AuthRule::Refused) => report.error(
            &auth.span,
            format!(
                "mode = \"{mode}\" takes no [route.auth]: the tenant's MX endpoint offers no \
                 sign-in{}; to sign in as a mailbox use mode = \"m365-client-submission\"",
                if preset.mode == Some(M365Mode::Connector) {
                    " (the connector recognises the relay by its certificate)"
                } else {
                    ""
                }
            ),
        ),
        _ => {}
    }
    if let (None, Some(oauth_section)) = (&auth_section, &oauth_section) {
        report.error(
            &oauth_section.span,
            "[route.oauth] needs a [route.auth] with mechanism = \"xoauth2\" and username = the \
             mailbox to send as",
        );
    }
    plaintext_rule(
        report,
        section,
        auth_section.as_ref(),
        oauth_section.is_some(),
        tls,
    );
    let auth = auth_section
        .and_then(|auth_section| auth(report, &auth_section, oauth_section.as_ref(), context));

    let route = SmtpRoute {
        host: match host {
            Some(host) => host,
            None => return (None, restriction),
        },
        port,
        tls,
        ca_file,
        auth,
        connect_timeout,
        command_timeout,
        max_connections,
        client_cert,
    };
    (Some(route), restriction)
}

/// `tenant_domain`: only for the modes that derive the MX host from it.
fn tenant_domain(
    report: &mut Report,
    section: &Section<'_, '_>,
    preset: &Preset,
) -> Option<String> {
    let at = report.string(section, "tenant_domain")?;
    if preset.host != HostDefault::TenantMx {
        report.error(
            &at.span,
            "`tenant_domain` is only for mode = \"m365-direct-send\" or \"m365-connector\", which \
             derive the host from it",
        );
        return None;
    }
    values::parse_plain_domain(at.value)
        .map_err(|message| report.error(&at.span, format!("`route.tenant_domain`: {message}")))
        .ok()
}

fn host(
    report: &mut Report,
    section: &Section<'_, '_>,
    preset: &Preset,
    tenant: Option<&str>,
) -> Option<String> {
    if preset.host == HostDefault::None && section.has("mode") && !section.has("host") {
        // An unknown mode (reported) probably meant to give the host.
        return None;
    }
    if section.has("host") || preset.host == HostDefault::None {
        return report.required_string(section, "host").and_then(|at| {
            values::parse_upstream_host(at.value)
                .map_err(|message| report.error(&at.span, format!("`route.host`: {message}")))
                .ok()
        });
    }
    match preset.host {
        HostDefault::Fixed(host) => Some(host.to_string()),
        HostDefault::TenantMx => {
            if tenant.is_none() && !section.has("tenant_domain") {
                report_missing_tenant(report, section, preset);
            }
            tenant.map(values::tenant_mx_host)
        }
        HostDefault::None => None,
    }
}

fn report_missing_tenant(report: &mut Report, section: &Section<'_, '_>, preset: &Preset) {
    let mode = preset.mode.map(mode_name).unwrap_or_default();
    report.error(
        &section.span,
        format!(
            "mode = \"{mode}\" needs `tenant_domain`: your domain in Microsoft 365, e.g. \
             tenant_domain = \"contoso.com\" (the host contoso-com.mail.protection.outlook.com \
             comes from it)"
        ),
    );
}

/// `accepted_domains` as written, or the preset's default; lower-case, without duplicates.
fn accepted_domains(
    report: &mut Report,
    section: &Section<'_, '_>,
    preset: &Preset,
    tenant: Option<&str>,
) -> Vec<String> {
    let mode = preset.mode.map(mode_name).unwrap_or_default();
    let Some(list) = report.strings(section, "accepted_domains") else {
        match preset.accepted_domains {
            AcceptedDomains::CertificateNames if !section.has("accepted_domains") => report.error(
                &section.span,
                format!(
                    "mode = \"{mode}\" needs `accepted_domains`: the tenant's accepted domains; \
                     the client certificate's name must be one of them"
                ),
            ),
            AcceptedDomains::RestrictsDefaultTenant => {
                // The host needs the tenant too; report it missing once.
                if tenant.is_none() && section.has("host") && !section.has("tenant_domain") {
                    report_missing_tenant(report, section, preset);
                }
                return tenant.map(str::to_string).into_iter().collect();
            }
            _ => {}
        }
        return Vec::new();
    };
    if list.value.is_empty() {
        report.error(
            &list.span,
            "`route.accepted_domains` is empty: list the domains, or leave the key out",
        );
    }
    let mut domains: Vec<String> = Vec::new();
    for at in &list.value {
        match values::parse_plain_domain(at.value) {
            Ok(domain) if !domains.contains(&domain) => domains.push(domain),
            Ok(_) => {}
            Err(message) => report.error(&at.span, format!("`route.accepted_domains`: {message}")),
        }
    }
    domains
}

/// `client_certificate` and `client_private_key` (PEM files), checked now: readable, the key
/// belongs to the certificate, not expired, and for a connector named after an accepted domain.
fn client_certificate(
    report: &mut Report,
    section: &Section<'_, '_>,
    preset: &Preset,
    tls: TlsMode,
    accepted: &[String],
) -> Option<ClientCert> {
    let mode = preset.mode.map(mode_name).unwrap_or_default();
    let (has_cert, has_key) = (
        section.has("client_certificate"),
        section.has("client_private_key"),
    );
    match (has_cert, has_key) {
        (false, false) => {
            if preset.client_certificate_required {
                report.error(
                    &section.span,
                    format!(
                        "mode = \"{mode}\" needs `client_certificate` and `client_private_key` \
                         (PEM files): the inbound connector recognises the relay by this \
                         certificate"
                    ),
                );
            }
            return None;
        }
        (true, false) | (false, true) => {
            let (has, lacks) = if has_cert {
                ("client_certificate", "client_private_key")
            } else {
                ("client_private_key", "client_certificate")
            };
            report.error(
                &section.span,
                format!("[[route]] has `{has}` but no `{lacks}`: give both (PEM files)"),
            );
        }
        (true, true) => {}
    }
    let certificate = secrets::readable_path(report, section, "client_certificate");
    let private_key = secrets::readable_path(report, section, "client_private_key");
    let cert_span = section.get("client_certificate").map(|v| v.span());
    if let (Some(span), TlsMode::None) = (&cert_span, tls) {
        report.error(
            span,
            "a client certificate is presented in TLS, and this route has tls = \"none\"",
        );
    }
    if let (Some(path), Some(span)) = (&certificate, &cert_span)
        && secrets::readable_file(path).is_ok()
    {
        // Only a connector's certificate must carry an accepted domain.
        let names: &[String] = if preset.accepted_domains == AcceptedDomains::CertificateNames {
            accepted
        } else {
            &[]
        };
        match crate::deliver::connector::check_client_certificate(path, names, SystemTime::now()) {
            Ok(checked) => {
                for warning in checked.warnings {
                    report.warning(span, format!("`route.client_certificate`: {warning}"));
                }
            }
            Err(message) => report.error(span, format!("`route.client_certificate`: {message}")),
        }
        if let Some(key) = &private_key
            && secrets::readable_file(key).is_ok()
            && let Err(message) = crate::deliver::connector::check_key_pair(path, key)
        {
            let key_span = section
                .get("client_private_key")
                .map_or(span.clone(), |v| v.span());
            report.error(&key_span, format!("`route.client_private_key`: {message}"));
        }
    }
    Some(ClientCert {
        certificate: certificate?,
        private_key: private_key?,
    })
}

/// The SMTP client signs in only over TLS unless the route says tls = "none" (with
/// "opportunistic" and no STARTTLS it gives up instead). So a secret in the clear is possible only
/// with "none", and then only when the route says so a second time.
fn plaintext_rule(
    report: &mut Report,
    section: &Section<'_, '_>,
    auth_section: Option<&Section<'_, '_>>,
    has_oauth: bool,
    tls: TlsMode,
) {
    let allow_plaintext = report.boolean(section, "allow_plaintext_auth");
    match (auth_section, tls, &allow_plaintext) {
        (Some(auth_section), TlsMode::None, None | Some(At { value: false, .. })) => {
            let xoauth2 = match auth_section.get("mechanism").map(|v| v.get_ref()) {
                Some(toml::de::DeValue::String(m)) => m == "xoauth2",
                _ => has_oauth,
            };
            let what = if xoauth2 {
                "an OAuth token"
            } else {
                "a password"
            };
            report.error(
                &auth_section.span,
                format!(
                    "refusing to send {what} in the clear (tls = \"none\"): use tls = \"starttls\" \
                     or \"implicit\", or set allow_plaintext_auth = true in this route if the \
                     network to the upstream is trusted"
                ),
            )
        }
        (_, TlsMode::Opportunistic, Some(At { value: true, span })) => report.error(
            span,
            "allow_plaintext_auth has no effect with tls = \"opportunistic\": the password is \
             sent only after STARTTLS succeeds; plaintext sign-in needs tls = \"none\"",
        ),
        _ => {}
    }
}

fn auth(
    report: &mut Report,
    section: &Section<'_, '_>,
    oauth_section: Option<&Section<'_, '_>>,
    context: &SmtpContext<'_>,
) -> Option<AuthConfig> {
    keys::check(report, section, &[keys::AUTH]);
    let mechanism = match report.string(section, "mechanism") {
        None if section.has("mechanism") => None,
        // A [route.oauth] says how the route signs in.
        None if oauth_section.is_some() => Some(AuthMechanism::XOAuth2),
        None => Some(AuthMechanism::Login),
        Some(at) => match at.value {
            "login" => Some(AuthMechanism::Login),
            "plain" => Some(AuthMechanism::Plain),
            "xoauth2" => Some(AuthMechanism::XOAuth2),
            other => {
                report.error(
                    &at.span,
                    format!(
                        "`route.auth.mechanism`: unknown value {other:?}, expected \"login\", \
                         \"plain\" or \"xoauth2\""
                    ),
                );
                None
            }
        },
    };
    let username = report
        .required_string(section, "username")
        .map(|at| at.value.trim().to_string());
    let credential = match mechanism {
        Some(AuthMechanism::XOAuth2) => {
            for key in ["password_env", "password_file"] {
                if let Some(span) = section.key_span(key) {
                    report.error(
                        &span,
                        format!(
                            "`{key}` is not used with mechanism = \"xoauth2\": the relay signs in \
                             with an OAuth token from [route.oauth]"
                        ),
                    );
                }
            }
            match oauth_section {
                None => {
                    report.error(
                        &section.span,
                        "mechanism = \"xoauth2\" needs a [route.oauth] table: tenant, client_id \
                         and the app's credential",
                    );
                    None
                }
                Some(oauth_section) => {
                    let oauth_context = OAuthContext {
                        token_use: TokenUse::Smtp,
                        route_name: context.route_name,
                        data_dir: context.data_dir,
                        inherited_ca_file: None,
                        env: context.env,
                    };
                    oauth::oauth(report, oauth_section, &oauth_context).map(Credential::OAuth)
                }
            }
        }
        Some(mechanism) => {
            if let Some(oauth_section) = oauth_section {
                let name = if mechanism == AuthMechanism::Plain {
                    "plain"
                } else {
                    "login"
                };
                report.error(
                    &oauth_section.span,
                    format!(
                        "[route.oauth] is used only with mechanism = \"xoauth2\"; this route signs \
                         in with a password (mechanism = \"{name}\")"
                    ),
                );
            }
            password(report, section, context.env).map(Credential::Password)
        }
        None => None,
    };
    Some(AuthConfig {
        mechanism: mechanism?,
        username: username?,
        credential: credential?,
    })
}

fn password(
    report: &mut Report,
    section: &Section<'_, '_>,
    env: Env<'_>,
) -> Option<crate::config::Secret> {
    match (section.has("password_env"), section.has("password_file")) {
        (true, true) => {
            report.error(
                &section.span,
                "[route.auth] has both `password_env` and `password_file`: keep one",
            );
            None
        }
        (false, false) => {
            report.error(
                &section.span,
                "[route.auth] needs `password_env` (an environment variable) or `password_file`, \
                 or mechanism = \"xoauth2\" with a [route.oauth] table",
            );
            None
        }
        (true, false) => secrets::from_env(report, section, "password_env", env),
        (false, true) => secrets::from_file(report, section, "password_file"),
    }
}
