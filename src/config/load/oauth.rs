//! `[route.oauth]`: how the relay gets OAuth 2.0 access tokens from Microsoft Entra ID, for SMTP
//! (`mechanism = "xoauth2"`) and for Microsoft Graph. The client secret is read from the
//! environment or a file and never repeated in a message.

use super::document::{Report, Section};
use super::{Env, keys, secrets, values};
use crate::config::{OAuthConfig, OAuthGrant};
use std::path::{Path, PathBuf};

/// What the token is for: it decides the default scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenUse {
    Smtp,
    Graph,
}

pub const DEFAULT_AUTHORITY: &str = "login.microsoftonline.com";

/// The scope asked for when `scope` is not written.
pub fn default_scope(token_use: TokenUse, delegated: bool) -> &'static str {
    match (token_use, delegated) {
        (TokenUse::Smtp, false) => "https://outlook.office365.com/.default",
        (TokenUse::Smtp, true) => "https://outlook.office.com/SMTP.Send offline_access",
        (TokenUse::Graph, false) => "https://graph.microsoft.com/.default",
        (TokenUse::Graph, true) => "https://graph.microsoft.com/Mail.Send offline_access",
    }
}

/// What every `[route.oauth]` is read against.
pub struct OAuthContext<'a> {
    pub token_use: TokenUse,
    /// The route's name, for the default `token_file`.
    pub route_name: Option<&'a str>,
    pub data_dir: &'a Path,
    /// Trust anchors used when `[route.oauth]` writes no `ca_file` (a Graph route's `ca_file`).
    pub inherited_ca_file: Option<PathBuf>,
    pub env: Env<'a>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flow {
    ClientCredentials,
    DeviceCode,
}

pub fn oauth(
    report: &mut Report,
    section: &Section<'_, '_>,
    context: &OAuthContext<'_>,
) -> Option<OAuthConfig> {
    keys::check(report, section, &[keys::OAUTH]);
    let tenant = report.required_string(section, "tenant").and_then(|at| {
        let tenant = at.value.trim();
        if tenant.contains(|c: char| c.is_whitespace() || matches!(c, '/' | '?' | '#' | '@')) {
            report.error(
                &at.span,
                format!(
                    "`route.oauth.tenant` {:?} is not a tenant: write the tenant id (a GUID) or \
                     its domain, e.g. \"contoso.onmicrosoft.com\"",
                    at.value
                ),
            );
            return None;
        }
        Some(tenant.to_string())
    });
    let client_id = report.required_string(section, "client_id").and_then(|at| {
        if at.value.trim().contains(char::is_whitespace) {
            report.error(
                &at.span,
                "`route.oauth.client_id` must be the application (client) id of the Entra app",
            );
            return None;
        }
        Some(at.value.trim().to_string())
    });
    let flow = match report.string(section, "flow") {
        None => Some(Flow::ClientCredentials),
        Some(at) => match at.value {
            "client-credentials" => Some(Flow::ClientCredentials),
            "device-code" => Some(Flow::DeviceCode),
            other => {
                report.error(
                    &at.span,
                    format!(
                        "`route.oauth.flow`: unknown value {other:?}, expected \
                         \"client-credentials\" (the relay signs in as the app, the default) or \
                         \"device-code\" (a person signs in once with `smarthost oauth login`)"
                    ),
                );
                None
            }
        },
    };
    let (token_endpoint, authority) = token_endpoint(report, section, tenant.as_deref());
    let delegated = flow == Some(Flow::DeviceCode);
    let grant = match flow {
        Some(Flow::ClientCredentials) => client_credentials(report, section, context),
        Some(Flow::DeviceCode) => device_code(
            report,
            section,
            context,
            token_endpoint.as_deref(),
            authority.as_deref().zip(tenant.as_deref()),
        ),
        None => None,
    };
    let scope = match report.string(section, "scope") {
        Some(at) if at.value.trim().is_empty() => {
            report.error(&at.span, "`route.oauth.scope` is empty");
            None
        }
        Some(at) => Some(at.value.trim().to_string()),
        None => Some(default_scope(context.token_use, delegated).to_string()),
    };
    let ca_file = if section.has("ca_file") {
        secrets::readable_path(report, section, "ca_file")
    } else {
        context.inherited_ca_file.clone()
    };
    Some(OAuthConfig {
        tenant: tenant?,
        client_id: client_id?,
        grant: grant?,
        token_endpoint: token_endpoint?,
        scope: scope?,
        ca_file,
    })
}

/// The token endpoint, and the authority host it was built from (`None` when written out).
fn token_endpoint(
    report: &mut Report,
    section: &Section<'_, '_>,
    tenant: Option<&str>,
) -> (Option<String>, Option<String>) {
    let authority = report.string(section, "authority_host").and_then(|at| {
        let host = at.value.trim();
        let host = host.strip_prefix("https://").unwrap_or(host);
        let host = host.trim_end_matches('/');
        if values::is_host_name(host) {
            Some(host.to_ascii_lowercase())
        } else {
            report.error(
                &at.span,
                format!(
                    "`route.oauth.authority_host` {:?} is not a host name: write e.g. \
                     \"login.microsoftonline.us\"",
                    at.value
                ),
            );
            None
        }
    });
    let Some(at) = report.string(section, "token_endpoint") else {
        if section.has("token_endpoint") || (section.has("authority_host") && authority.is_none()) {
            return (None, None);
        }
        let authority = authority.unwrap_or_else(|| DEFAULT_AUTHORITY.to_string());
        // Without a tenant (reported) there is no endpoint either; `None` keeps reading going.
        let endpoint = tenant.map(|t| format!("https://{authority}/{t}/oauth2/v2.0/token"));
        return (endpoint, Some(authority));
    };
    if let Some(span) = section.key_span("authority_host") {
        report.error(
            &span,
            "[route.oauth] has both `authority_host` and `token_endpoint`: keep one \
             (token_endpoint is the whole URL; authority_host only its host)",
        );
    }
    match values::parse_endpoint_url(at.value) {
        Ok(url) => (Some(url), None),
        Err(message) => {
            report.error(&at.span, format!("`route.oauth.token_endpoint`: {message}"));
            (None, None)
        }
    }
}

fn client_credentials(
    report: &mut Report,
    section: &Section<'_, '_>,
    context: &OAuthContext<'_>,
) -> Option<OAuthGrant> {
    for key in ["device_endpoint", "token_file"] {
        if let Some(span) = section.key_span(key) {
            report.error(
                &span,
                format!(
                    "`{key}` is only for flow = \"device-code\"; this [route.oauth] signs in as \
                     the app (client credentials)"
                ),
            );
        }
    }
    let certificate = section.has("certificate_file") || section.has("private_key_file");
    let written: Vec<&str> = [
        ("client_secret_env", section.has("client_secret_env")),
        ("client_secret_file", section.has("client_secret_file")),
        ("certificate_file", certificate),
    ]
    .iter()
    .filter(|(_, written)| *written)
    .map(|(key, _)| *key)
    .collect();
    match written.as_slice() {
        [] => {
            report.error(
                &section.span,
                "[route.oauth] needs the app's credential: `client_secret_env` (an environment \
                 variable), `client_secret_file`, or `certificate_file` with `private_key_file` \
                 (Microsoft's advice); or flow = \"device-code\" for a person to sign in once",
            );
            None
        }
        ["client_secret_env"] => {
            secrets::from_env(report, section, "client_secret_env", context.env)
                .map(OAuthGrant::ClientSecret)
        }
        ["client_secret_file"] => {
            secrets::from_file(report, section, "client_secret_file").map(OAuthGrant::ClientSecret)
        }
        ["certificate_file"] => {
            let mut both = true;
            for (key, other) in [
                ("certificate_file", "private_key_file"),
                ("private_key_file", "certificate_file"),
            ] {
                if !section.has(key) {
                    report.error(
                        &section.span,
                        format!(
                            "[route.oauth] has `{other}` but no `{key}`: give both (PEM files)"
                        ),
                    );
                    both = false;
                }
            }
            let certificate = secrets::readable_path(report, section, "certificate_file");
            let private_key = secrets::readable_path(report, section, "private_key_file");
            let (certificate, private_key) = (certificate?, private_key?);
            both.then_some(OAuthGrant::ClientCertificate {
                certificate,
                private_key,
            })
        }
        several => {
            let names: Vec<String> = several.iter().map(|k| format!("`{k}`")).collect();
            report.error(
                &section.span,
                format!(
                    "[route.oauth] has {}: keep one credential",
                    names.join(" and ")
                ),
            );
            None
        }
    }
}

fn device_code(
    report: &mut Report,
    section: &Section<'_, '_>,
    context: &OAuthContext<'_>,
    token_endpoint: Option<&str>,
    authority_and_tenant: Option<(&str, &str)>,
) -> Option<OAuthGrant> {
    for key in [
        "client_secret_env",
        "client_secret_file",
        "certificate_file",
        "private_key_file",
    ] {
        if let Some(span) = section.key_span(key) {
            report.error(
                &span,
                format!(
                    "`{key}` is not used with flow = \"device-code\": a person signs in, the app \
                     is a public client without a secret"
                ),
            );
        }
    }
    let device_endpoint = match report.string(section, "device_endpoint") {
        Some(at) => match values::parse_endpoint_url(at.value) {
            Ok(url) => Some(url),
            Err(message) => {
                report.error(
                    &at.span,
                    format!("`route.oauth.device_endpoint`: {message}"),
                );
                None
            }
        },
        None if section.has("device_endpoint") => None,
        None => match authority_and_tenant {
            Some((authority, tenant)) => Some(format!(
                "https://{authority}/{tenant}/oauth2/v2.0/devicecode"
            )),
            // A written token endpoint: the device endpoint is its neighbour.
            None => match token_endpoint.map(|url| url.strip_suffix("/token")) {
                Some(Some(base)) => Some(format!("{base}/devicecode")),
                Some(None) => {
                    report.error(
                        &section.span,
                        "[route.oauth] needs `device_endpoint`: it cannot be derived from a \
                         token_endpoint that does not end in /token",
                    );
                    None
                }
                None => None,
            },
        },
    };
    let token_file = match report.string(section, "token_file") {
        Some(at) if at.value.trim().is_empty() => {
            report.error(&at.span, "`route.oauth.token_file` is empty");
            None
        }
        // `join` keeps an absolute path as it is.
        Some(at) => Some(context.data_dir.join(at.value)),
        None if section.has("token_file") => None,
        None => Some(context.data_dir.join("oauth").join(format!(
            "{}.json",
            values::file_name_for(context.route_name.unwrap_or("route"))
        ))),
    };
    Some(OAuthGrant::DeviceCode {
        device_endpoint: device_endpoint?,
        token_file: token_file?,
    })
}
