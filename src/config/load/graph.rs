//! A `transport = "graph"` route (or `mode = "m365-graph"`): Microsoft Graph `sendMail` as one
//! mailbox, with an app token from `[route.oauth]`.

use super::document::{Report, Section};
use super::oauth::{OAuthContext, TokenUse};
use super::{Env, keys, oauth, secrets, values};
use crate::config::GraphRoute;
use std::path::Path;
use std::time::Duration;

pub const DEFAULT_BASE_URL: &str = "https://graph.microsoft.com/v1.0";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Graph allows 4 concurrent requests per app and mailbox.
const DEFAULT_MAX_CONNECTIONS: usize = 4;

pub struct GraphContext<'a> {
    pub route_name: Option<&'a str>,
    pub data_dir: &'a Path,
    pub env: Env<'a>,
    /// `[route.limits] max_connections`, standing in for the route's own key.
    pub limits_max_connections: Option<usize>,
}

pub fn graph_transport(
    report: &mut Report,
    section: &Section<'_, '_>,
    context: &GraphContext<'_>,
) -> Option<GraphRoute> {
    let auth_username = report
        .table(section, "auth", "[route.auth]")
        .and_then(|auth| auth_username(report, &auth));
    let mailbox = match report.string(section, "mailbox") {
        Some(at) => {
            let mailbox = at.value.trim();
            if mailbox.is_empty() || mailbox.contains(|c: char| c.is_whitespace() || c == '/') {
                report.error(
                    &at.span,
                    format!(
                        "`route.mailbox` {:?} is not a mailbox: write its address (user principal \
                         name) or its object id",
                        at.value
                    ),
                );
                None
            } else {
                Some(mailbox.to_string())
            }
        }
        None if section.has("mailbox") => None,
        None => {
            if auth_username.is_none() && !section.has("auth") {
                report.error(
                    &section.span,
                    "a graph route needs `mailbox`: the mailbox whose sendMail is called, e.g. \
                     mailbox = \"scanner@contoso.com\"",
                );
            }
            auth_username
        }
    };
    let base_url = match report.string(section, "graph_base_url") {
        None => Some(DEFAULT_BASE_URL.to_string()),
        Some(at) => values::parse_endpoint_url(at.value)
            .map_err(|message| report.error(&at.span, format!("`route.graph_base_url`: {message}")))
            .ok(),
    };
    let ca_file = secrets::readable_path(report, section, "ca_file");
    let timeout = report.duration(section, "timeout", DEFAULT_TIMEOUT);
    let max_connections = report.count(
        section,
        "max_connections",
        context
            .limits_max_connections
            .unwrap_or(DEFAULT_MAX_CONNECTIONS),
    );
    let oauth = match report.table(section, "oauth", "[route.oauth]") {
        Some(oauth_section) => {
            let oauth_context = OAuthContext {
                token_use: TokenUse::Graph,
                route_name: context.route_name,
                data_dir: context.data_dir,
                inherited_ca_file: ca_file.clone(),
                env: context.env,
            };
            oauth::oauth(report, &oauth_section, &oauth_context)
        }
        None => {
            if !section.has("oauth") {
                report.error(
                    &section.span,
                    "a graph route needs [route.oauth]: tenant, client_id and the app's credential \
                     (application permission Mail.Send)",
                );
            }
            None
        }
    };
    Some(GraphRoute {
        base_url: base_url?,
        mailbox: mailbox?,
        oauth: oauth?,
        ca_file,
        timeout,
        max_connections,
    })
}

/// A graph route may keep the `[route.auth]` of an SMTP route it was switched from: its username
/// is the mailbox; a password has no use.
fn auth_username(report: &mut Report, section: &Section<'_, '_>) -> Option<String> {
    keys::check(report, section, &[keys::AUTH]);
    for key in ["password_env", "password_file"] {
        if let Some(span) = section.key_span(key) {
            report.error(
                &span,
                format!("`{key}` is not used by a graph route: it signs in with [route.oauth]"),
            );
        }
    }
    if let Some(at) = report.string(section, "mechanism")
        && at.value != "xoauth2"
    {
        report.error(
            &at.span,
            "a graph route signs in with an OAuth token: mechanism may only be \"xoauth2\"",
        );
    }
    report
        .required_string(section, "username")
        .map(|at| at.value.trim().to_string())
}
