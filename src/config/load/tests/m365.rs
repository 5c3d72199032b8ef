//! The Microsoft 365 keys of issue 4: `mode` presets, `[route.oauth]`, Graph routes,
//! `[route.limits]`, sender rewriting, `accepted_domains` and client certificates.

use super::*;
use crate::config::{
    Credential, GraphRoute, M365Mode, MailboxLimits, OAuthConfig, OAuthGrant, Rate, SenderRewrite,
};

/// A route head without a host, for the modes that fill it in (3 lines).
const M: &str = "[[route]]\nname = \"r\"\ndomains = [\"r.example\"]\n";

/// An smtp route signing in with XOAUTH2: `route_keys` from line 5, `oauth_keys` from line
/// 11 + the lines of `route_keys`.
fn smtp_oauth(route_keys: &str, oauth_keys: &str) -> String {
    format!(
        "{ROUTE}{route_keys}[route.auth]\nmechanism = \"xoauth2\"\nusername = \"m@contoso.com\"\n\
         [route.oauth]\ntenant = \"contoso.com\"\nclient_id = \"app\"\n{oauth_keys}"
    )
}

/// A graph route: `route_keys` from line 6, `oauth_keys` from line 10 + its lines.
fn graph(route_keys: &str, oauth_keys: &str) -> String {
    format!(
        "[[route]]\nname = \"g\"\ndomains = [\"g.example\"]\ntransport = \"graph\"\n\
         mailbox = \"m@contoso.com\"\n{route_keys}[route.oauth]\ntenant = \"contoso.com\"\n\
         client_id = \"app\"\nclient_secret_env = \"SMARTHOST_TEST_CLIENT_SECRET\"\n{oauth_keys}"
    )
}

const SECRET_ENV: &str = "client_secret_env = \"SMARTHOST_TEST_CLIENT_SECRET\"\n";
const AUTH_PASSWORD: &str =
    "[route.auth]\nusername = \"m@contoso.com\"\npassword_env = \"SMARTHOST_TEST_PASSWORD\"\n";

fn route<'c>(config: &'c Config, name: &str) -> &'c RouteConfig {
    config.routes.iter().find(|r| r.name == name).unwrap()
}

fn graph_route(config: &Config, name: &str) -> GraphRoute {
    match &route(config, name).transport {
        Transport::Graph(graph) => graph.clone(),
        other => panic!("route {name} is {other:?}"),
    }
}

fn oauth_of(smtp: &SmtpRoute) -> OAuthConfig {
    match &smtp.auth.as_ref().unwrap().credential {
        Credential::OAuth(oauth) => oauth.clone(),
        other => panic!("{other:?}"),
    }
}

fn rate(count: u32, seconds: u64) -> Option<Rate> {
    Some(Rate {
        count,
        per: Duration::from_secs(seconds),
    })
}

#[test]
fn m365_mistakes_are_reported_with_their_lines() {
    let route = ROUTE;
    let cases: Vec<(String, usize, &str)> = vec![
        // Modes.
        (
            format!("{M}mode = \"direct-send\""),
            4,
            "`route.mode`: unknown value \"direct-send\" (did you mean \"m365-direct-send\"?)",
        ),
        (
            format!("{M}mode = \"exchange\""),
            4,
            "expected one of \"m365-client-submission\", \"m365-direct-send\", \"m365-connector\", \"m365-hve\", \"m365-graph\"",
        ),
        (
            format!("{M}mode = \"m365-client-submission\""),
            1,
            "mode = \"m365-client-submission\" needs [route.auth]",
        ),
        (
            format!("{M}mode = \"m365-hve\""),
            1,
            "mode = \"m365-hve\" needs [route.auth]",
        ),
        (
            format!("{M}mode = \"m365-direct-send\""),
            1,
            "mode = \"m365-direct-send\" needs `tenant_domain`",
        ),
        (
            format!("{M}mode = \"m365-direct-send\"\nhost = \"mx.example\""),
            1,
            "needs `tenant_domain`",
        ),
        (
            format!(
                "{M}mode = \"m365-direct-send\"\ntenant_domain = \"contoso.com\"\n{AUTH_PASSWORD}"
            ),
            6,
            "mode = \"m365-direct-send\" takes no [route.auth]",
        ),
        (
            format!(
                "{M}mode = \"m365-connector\"\ntenant_domain = \"contoso.com\"\naccepted_domains = [\"contoso.com\"]"
            ),
            1,
            "mode = \"m365-connector\" needs `client_certificate` and `client_private_key`",
        ),
        (
            format!("{M}mode = \"m365-direct-send\"\ntenant_domain = \"*.contoso.com\""),
            5,
            "`route.tenant_domain`: invalid domain \"*.contoso.com\"",
        ),
        (
            format!("{route}tenant_domain = \"contoso.com\""),
            5,
            "`tenant_domain` is only for mode = \"m365-direct-send\" or \"m365-connector\"",
        ),
        (
            format!("{route}mode = \"m365-graph\"\ntransport = \"smtp\""),
            6,
            "mode = \"m365-graph\" sends with transport = \"graph\", and this route says transport = \"smtp\"",
        ),
        (
            format!("{M}mode = \"m365-direct-send\"\ntransport = \"drop\""),
            5,
            "mode = \"m365-direct-send\" sends with transport = \"smtp\"",
        ),
        // Keys of another transport.
        (
            format!("{M}transport = \"drop\"\nmailbox = \"m@contoso.com\""),
            5,
            "`mailbox` is only for transport = \"graph\"; this route is \"drop\"",
        ),
        (
            format!("{route}timeout = \"30s\""),
            5,
            "`timeout` is only for transport = \"graph\"; this route is \"smtp\"",
        ),
        (
            format!("{M}transport = \"drop\"\n[route.oauth]\ntenant = \"t\""),
            5,
            "`oauth` is only for transport = \"smtp\" or \"graph\"; this route is \"drop\"",
        ),
        (
            graph("host = \"smtp.example\"\n", ""),
            6,
            "`host` is only for transport = \"smtp\"; this route is \"graph\"",
        ),
        (
            graph("accepted_domains = [\"contoso.com\"]\n", ""),
            6,
            "`accepted_domains` is only for transport = \"smtp\"",
        ),
        // Graph routes.
        (
            format!("{M}transport = \"graph\"\nmailbox = \"m@contoso.com\""),
            1,
            "a graph route needs [route.oauth]",
        ),
        (
            graph("", "").replace("mailbox = \"m@contoso.com\"\n", ""),
            1,
            "a graph route needs `mailbox`",
        ),
        (
            graph("", "").replace("m@contoso.com", "m @contoso.com"),
            5,
            "`route.mailbox` \"m @contoso.com\" is not a mailbox",
        ),
        (
            graph("graph_base_url = \"http://graph.example/v1.0\"\n", ""),
            6,
            "`route.graph_base_url`: URL \"http://graph.example/v1.0\" is not https",
        ),
        (
            graph("timeout = \"0s\"\n", ""),
            6,
            "`route.timeout` must be longer than zero",
        ),
        (
            graph(
                "[route.auth]\nusername = \"m@contoso.com\"\npassword_env = \"SMARTHOST_TEST_PASSWORD\"\n",
                "",
            ),
            8,
            "`password_env` is not used by a graph route",
        ),
        (
            graph(
                "[route.auth]\nmechanism = \"login\"\nusername = \"m@contoso.com\"\n",
                "",
            ),
            7,
            "mechanism may only be \"xoauth2\"",
        ),
        // XOAUTH2 and [route.oauth].
        (
            format!("{route}[route.auth]\nmechanism = \"xoauth2\"\nusername = \"u\""),
            5,
            "mechanism = \"xoauth2\" needs a [route.oauth] table",
        ),
        (
            format!(
                "{route}[route.auth]\nmechanism = \"xoauth2\"\nusername = \"u\"\npassword_env = \"SMARTHOST_TEST_PASSWORD\"\n[route.oauth]\ntenant = \"t\"\nclient_id = \"c\"\n{SECRET_ENV}"
            ),
            8,
            "`password_env` is not used with mechanism = \"xoauth2\"",
        ),
        (
            format!(
                "{route}[route.auth]\nmechanism = \"login\"\nusername = \"u\"\npassword_env = \"SMARTHOST_TEST_PASSWORD\"\n[route.oauth]\ntenant = \"t\"\nclient_id = \"c\"\n{SECRET_ENV}"
            ),
            9,
            "[route.oauth] is used only with mechanism = \"xoauth2\"; this route signs in with a password (mechanism = \"login\")",
        ),
        (
            format!("{route}[route.oauth]\ntenant = \"t\"\nclient_id = \"c\"\n{SECRET_ENV}"),
            5,
            "[route.oauth] needs a [route.auth] with mechanism = \"xoauth2\"",
        ),
        (
            smtp_oauth("tls = \"none\"\n", SECRET_ENV),
            6,
            "refusing to send an OAuth token in the clear",
        ),
        (
            smtp_oauth("", ""),
            8,
            "[route.oauth] needs the app's credential",
        ),
        (
            smtp_oauth("", SECRET_ENV).replace("tenant = \"contoso.com\"\n", ""),
            8,
            "[route.oauth] needs `tenant`",
        ),
        (
            smtp_oauth("", SECRET_ENV).replace("client_id = \"app\"\n", ""),
            8,
            "[route.oauth] needs `client_id`",
        ),
        (
            smtp_oauth("", SECRET_ENV).replace("\"contoso.com\"", "\"contoso.com/v2\""),
            9,
            "`route.oauth.tenant` \"contoso.com/v2\" is not a tenant",
        ),
        (
            smtp_oauth(
                "",
                "client_secret_env = \"SMARTHOST_TEST_CLIENT_SECRET\"\nclient_secret_file = \"/x\"",
            ),
            8,
            "[route.oauth] has `client_secret_env` and `client_secret_file`: keep one credential",
        ),
        (
            smtp_oauth(
                "",
                "client_secret_env = \"SMARTHOST_TEST_CLIENT_SECRET\"\nclient_secret = \"abc\"",
            ),
            12,
            "unknown key `client_secret` in [route.oauth] (the client secret is read from the environment variable named by `client_secret_env`",
        ),
        (
            smtp_oauth(
                "",
                "client_secret_env = \"SMARTHOST_TEST_CLIENT_SECRET\"\ntenant_id = \"x\"",
            ),
            12,
            "unknown key `tenant_id` in [route.oauth] (did you mean `tenant`?)",
        ),
        (
            smtp_oauth("", "client_secret_env = \"SMARTHOST_UNSET\""),
            11,
            "environment variable SMARTHOST_UNSET (client_secret_env) is not set",
        ),
        (
            smtp_oauth("", "client_secret_env = \"not a name!\""),
            11,
            "`route.oauth.client_secret_env` must be the name of an environment variable",
        ),
        (
            smtp_oauth(
                "",
                "client_secret_file = \"/nonexistent/smarthost/client.secret\"",
            ),
            11,
            "cannot read client_secret_file \"/nonexistent/smarthost/client.secret\"",
        ),
        (
            smtp_oauth("", "flow = \"implicit\""),
            11,
            "`route.oauth.flow`: unknown value \"implicit\"",
        ),
        (
            smtp_oauth(
                "",
                "flow = \"device-code\"\nclient_secret_env = \"SMARTHOST_TEST_CLIENT_SECRET\"",
            ),
            12,
            "`client_secret_env` is not used with flow = \"device-code\"",
        ),
        (
            smtp_oauth(
                "",
                "client_secret_env = \"SMARTHOST_TEST_CLIENT_SECRET\"\ntoken_file = \"t.json\"",
            ),
            12,
            "`token_file` is only for flow = \"device-code\"",
        ),
        (
            smtp_oauth(
                "",
                "client_secret_env = \"SMARTHOST_TEST_CLIENT_SECRET\"\ndevice_endpoint = \"https://x.example/dc\"",
            ),
            12,
            "`device_endpoint` is only for flow = \"device-code\"",
        ),
        (
            smtp_oauth(
                "",
                "client_secret_env = \"SMARTHOST_TEST_CLIENT_SECRET\"\ntoken_endpoint = \"http://login.example/token\"",
            ),
            12,
            "`route.oauth.token_endpoint`: URL \"http://login.example/token\" is not https",
        ),
        (
            smtp_oauth(
                "",
                "client_secret_env = \"SMARTHOST_TEST_CLIENT_SECRET\"\nauthority_host = \"login.microsoftonline.us\"\ntoken_endpoint = \"https://x.example/token\"",
            ),
            12,
            "[route.oauth] has both `authority_host` and `token_endpoint`",
        ),
        (
            smtp_oauth(
                "",
                "client_secret_env = \"SMARTHOST_TEST_CLIENT_SECRET\"\nauthority_host = \"login microsoftonline\"",
            ),
            12,
            "`route.oauth.authority_host` \"login microsoftonline\" is not a host name",
        ),
        (
            smtp_oauth(
                "",
                "flow = \"device-code\"\ntoken_endpoint = \"https://x.example/oauth/get\"",
            ),
            8,
            "[route.oauth] needs `device_endpoint`",
        ),
        (
            smtp_oauth(
                "",
                "client_secret_env = \"SMARTHOST_TEST_CLIENT_SECRET\"\nscope = \" \"",
            ),
            12,
            "`route.oauth.scope` is empty",
        ),
        (
            smtp_oauth(
                "",
                "client_secret_env = \"SMARTHOST_TEST_CLIENT_SECRET\"\nca_file = \"/nonexistent/ca.pem\"",
            ),
            12,
            "cannot read `route.oauth.ca_file` \"/nonexistent/ca.pem\"",
        ),
        // [route.limits].
        (
            format!("{route}[route.limits]\nmessage_rate = \"30 per minute\""),
            6,
            "`route.limits.message_rate`: invalid rate \"30 per minute\"",
        ),
        (
            format!("{route}[route.limits]\nrecipient_rate = \"0/1d\""),
            6,
            "the count must be at least 1 (or write \"unlimited\")",
        ),
        (
            format!("{route}[route.limits]\nmessage_rate = 30"),
            6,
            "`route.limits.message_rate` must be a rate such as \"30/1m\", or \"unlimited\", found integer",
        ),
        (
            format!("{route}[route.limits]\nrecipients_per_message = 0"),
            6,
            "`route.limits.recipients_per_message` must be at least 1",
        ),
        (
            format!("{route}[route.limits]\nthrottle_backoff = \"soon\""),
            6,
            "`route.limits.throttle_backoff`: invalid duration \"soon\"",
        ),
        (
            format!("{route}[route.limits]\nmessage_rte = \"1/1m\""),
            6,
            "unknown key `message_rte` in [route.limits] (did you mean `message_rate`?)",
        ),
        (
            format!("{route}[route.limits]\nmax_connections = 0"),
            6,
            "`route.limits.max_connections` must be at least 1",
        ),
        (
            format!("{route}max_connections = 3\n[route.limits]\nmax_connections = 3"),
            7,
            "`max_connections` is written both in [[route]] (line 5) and in [route.limits]: keep one",
        ),
        (
            format!("{M}transport = \"drop\"\n[route.limits]\nmax_connections = 2"),
            6,
            "`max_connections` is only for transport = \"smtp\" or \"graph\"; this route is \"drop\"",
        ),
        (
            format!("{route}limits = 5"),
            5,
            "`route.limits` must be a table, [route.limits], found integer",
        ),
        // Sender rewriting.
        (
            format!("{route}rewrite_sender = \"scanner\""),
            5,
            "`route.rewrite_sender` \"scanner\" is not a valid address",
        ),
        (
            format!("{route}allowed_senders = [\"a@contoso.com\"]"),
            5,
            "`allowed_senders` lists the senders that pass unchanged: it needs `rewrite_sender`",
        ),
        (
            format!("{route}rewrite_sender = \"s@contoso.com\"\nallowed_senders = [\"nobody\"]"),
            6,
            "`route.allowed_senders`: \"nobody\" is not a valid address",
        ),
        (
            format!("{route}sender = \"s@contoso.com\""),
            5,
            "unknown key `sender` in [[route]] (did you mean `rewrite_sender`?)",
        ),
        // Accepted domains.
        (
            format!("{route}accepted_domains = []"),
            5,
            "`route.accepted_domains` is empty",
        ),
        (
            format!("{route}accepted_domains = [\"contoso.com\", \"*.contoso.com\"]"),
            5,
            "`route.accepted_domains`: invalid domain \"*.contoso.com\"",
        ),
        (
            format!("{route}accepted_domains = [\"user@contoso.com\"]"),
            5,
            "invalid domain \"user@contoso.com\"",
        ),
    ];
    for (snippet, line, fragment) in &cases {
        let text = format!("{snippet}\n{BASE}");
        let got = errors(&text);
        assert!(
            got.len() == 1 && got[0].line == Some(*line) && got[0].message.contains(fragment),
            "for:\n{snippet}\nexpected line {line}: {fragment}\ngot: {got:#?}"
        );
    }
}

/// (snippet, host, port, tls, max_connections, limits).
type PresetCase = (String, &'static str, u16, TlsMode, usize, MailboxLimits);

#[test]
fn modes_fill_in_microsoft_365_endpoints() {
    let submission_limits = MailboxLimits {
        message_rate: rate(30, 60),
        recipient_rate: rate(10_000, 86_400),
        recipients_per_message: 500,
        throttle_backoff: Duration::from_secs(60),
    };
    let cases: Vec<PresetCase> = vec![
        (
            format!("{M}mode = \"m365-client-submission\"\n{AUTH_PASSWORD}"),
            "smtp.office365.com",
            587,
            TlsMode::StartTls,
            3,
            submission_limits.clone(),
        ),
        (
            format!("{M}mode = \"m365-direct-send\"\ntenant_domain = \"Contoso.com\""),
            "contoso-com.mail.protection.outlook.com",
            25,
            TlsMode::Opportunistic,
            10,
            MailboxLimits::default(),
        ),
        (
            format!("{M}mode = \"m365-direct-send\"\ntenant_domain = \"fabrikam.co.uk\""),
            "fabrikam-co-uk.mail.protection.outlook.com",
            25,
            TlsMode::Opportunistic,
            10,
            MailboxLimits::default(),
        ),
        (
            format!("{M}mode = \"m365-hve\"\n{AUTH_PASSWORD}"),
            "smtp.hve.mx.microsoft",
            587,
            TlsMode::StartTls,
            10,
            MailboxLimits::default(),
        ),
        // Every value written out wins over the preset.
        (
            format!(
                "{M}mode = \"m365-client-submission\"\nhost = \"smtp-legacy.office365.com\"\n\
                 port = 25\ntls = \"implicit\"\nmax_connections = 1\n[route.limits]\n\
                 message_rate = \"10/1m\"\nrecipient_rate = \"unlimited\"\n\
                 recipients_per_message = 1000\nthrottle_backoff = \"5m\"\n{AUTH_PASSWORD}"
            ),
            "smtp-legacy.office365.com",
            25,
            TlsMode::Implicit,
            1,
            MailboxLimits {
                message_rate: rate(10, 60),
                recipient_rate: None,
                recipients_per_message: 1000,
                throttle_backoff: Duration::from_secs(300),
            },
        ),
        (
            format!(
                "{M}mode = \"m365-direct-send\"\ntenant_domain = \"contoso.com\"\nhost = \"127.0.0.1\"\nport = 2525\ntls = \"none\""
            ),
            "127.0.0.1",
            2525,
            TlsMode::None,
            10,
            MailboxLimits::default(),
        ),
        // max_connections may be written in [route.limits] too.
        (
            format!(
                "{route}[route.limits]\nmax_connections = 2\nmessage_rate = \"100/10m\"",
                route = ROUTE
            ),
            "smtp.example",
            587,
            TlsMode::StartTls,
            2,
            MailboxLimits {
                message_rate: rate(100, 600),
                ..MailboxLimits::default()
            },
        ),
    ];
    for (snippet, host, port, tls, max_connections, limits) in cases {
        let text = format!("{snippet}\n{BASE}");
        let config = load(&text).unwrap_or_else(|e| panic!("{snippet}\n{e}"));
        let smtp = smtp_route(&config, "r");
        assert_eq!(
            (
                smtp.host.as_str(),
                smtp.port,
                smtp.tls,
                smtp.max_connections
            ),
            (host, port, tls, max_connections),
            "{snippet}"
        );
        assert_eq!(route(&config, "r").limits, limits, "{snippet}");
    }
}

#[test]
fn direct_send_reaches_only_the_tenants_domains() {
    let text = format!(
        "{M}mode = \"m365-direct-send\"\ntenant_domain = \"contoso.com\"\n\
         [[route]]\nname = \"two\"\ndomains = [\"two.example\"]\nmode = \"m365-direct-send\"\n\
         tenant_domain = \"contoso.com\"\naccepted_domains = [\"Contoso.com\", \"contoso.co.uk.\", \"contoso.com\"]\n\
         [[route]]\nname = \"plain\"\ndomains = [\"plain.example\"]\nhost = \"smtp.example\"\n\
         accepted_domains = [\"fabrikam.com\"]\n{BASE}"
    );
    let config = load(&text).unwrap_or_else(|e| panic!("{e}"));
    let r = route(&config, "r");
    assert_eq!(r.mode, Some(M365Mode::DirectSend));
    assert_eq!(r.accepted_domains, ["contoso.com"]);
    assert!(smtp_route(&config, "r").auth.is_none());
    assert_eq!(
        route(&config, "two").accepted_domains,
        ["contoso.com", "contoso.co.uk"]
    );
    assert_eq!(route(&config, "plain").accepted_domains, ["fabrikam.com"]);
    assert_eq!(route(&config, "plain").mode, None);
    assert!(route(&config, "base").accepted_domains.is_empty());
}

#[test]
fn oauth_defaults_depend_on_the_use_and_the_flow() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("app.crt");
    let key = dir.path().join("app.key");
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\n").unwrap();
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\n").unwrap();
    let text = format!(
        "data_dir = \"/var/lib/smarthost\"\n\
         {smtp_secret}\n\
         [[route]]\nname = \"device\"\ndomains = [\"device.example\"]\nmode = \"m365-client-submission\"\n\
         [route.auth]\nusername = \"person@contoso.com\"\n\
         [route.oauth]\ntenant = \"contoso.com\"\nclient_id = \"app\"\nflow = \"device-code\"\n\
         [[route]]\nname = \"us cloud/1\"\ndomains = [\"us.example\"]\nmode = \"m365-client-submission\"\n\
         [route.auth]\nmechanism = \"xoauth2\"\nusername = \"m@contoso.us\"\n\
         [route.oauth]\ntenant = \"contoso.us\"\nclient_id = \"app\"\nflow = \"device-code\"\n\
         authority_host = \"https://login.microsoftonline.us/\"\ntoken_file = \"/srv/token.json\"\n\
         [[route]]\nname = \"local\"\ndomains = [\"local.example\"]\nhost = \"smtp.example\"\n\
         [route.auth]\nusername = \"m@contoso.com\"\n\
         [route.oauth]\ntenant = \"contoso.com\"\nclient_id = \"app\"\nflow = \"device-code\"\n\
         token_endpoint = \"http://127.0.0.1:8080/t1/oauth2/v2.0/token\"\n\
         scope = \"https://outlook.office.com/SMTP.Send\"\nca_file = '{cert}'\n\
         {graph}\
         certificate_file = '{cert}'\nprivate_key_file = '{key}'\n{BASE}",
        smtp_secret = smtp_oauth("", SECRET_ENV),
        graph = graph("ca_file = '{cert}'\n", "")
            .replace("{cert}", &cert.display().to_string())
            .replace(SECRET_ENV, ""),
        cert = cert.display(),
        key = key.display(),
    );
    let config = load(&text).unwrap_or_else(|e| panic!("{text}\n{e}"));

    let app = oauth_of(&smtp_route(&config, "r"));
    assert_eq!(
        app,
        OAuthConfig {
            tenant: "contoso.com".into(),
            client_id: "app".into(),
            grant: OAuthGrant::ClientSecret(Secret::new(CLIENT_SECRET)),
            token_endpoint: "https://login.microsoftonline.com/contoso.com/oauth2/v2.0/token"
                .into(),
            scope: "https://outlook.office365.com/.default".into(),
            ca_file: None,
        }
    );
    assert_eq!(
        smtp_route(&config, "r").auth.unwrap().mechanism,
        AuthMechanism::XOAuth2
    );

    // Without `mechanism`, a [route.oauth] means XOAUTH2.
    let device = smtp_route(&config, "device");
    assert_eq!(
        device.auth.as_ref().unwrap().mechanism,
        AuthMechanism::XOAuth2
    );
    let device = oauth_of(&device);
    assert_eq!(
        device.grant,
        OAuthGrant::DeviceCode {
            device_endpoint: "https://login.microsoftonline.com/contoso.com/oauth2/v2.0/devicecode"
                .into(),
            token_file: PathBuf::from("/var/lib/smarthost/oauth/device.json"),
        }
    );
    assert_eq!(
        device.scope,
        "https://outlook.office.com/SMTP.Send offline_access"
    );

    let us = oauth_of(&smtp_route(&config, "us cloud/1"));
    assert_eq!(
        us.token_endpoint,
        "https://login.microsoftonline.us/contoso.us/oauth2/v2.0/token"
    );
    assert_eq!(
        us.grant,
        OAuthGrant::DeviceCode {
            device_endpoint: "https://login.microsoftonline.us/contoso.us/oauth2/v2.0/devicecode"
                .into(),
            token_file: PathBuf::from("/srv/token.json"),
        }
    );

    let local = oauth_of(&smtp_route(&config, "local"));
    assert_eq!(
        local.token_endpoint,
        "http://127.0.0.1:8080/t1/oauth2/v2.0/token"
    );
    assert_eq!(
        local.grant,
        OAuthGrant::DeviceCode {
            device_endpoint: "http://127.0.0.1:8080/t1/oauth2/v2.0/devicecode".into(),
            token_file: PathBuf::from("/var/lib/smarthost/oauth/local.json"),
        }
    );
    assert_eq!(local.scope, "https://outlook.office.com/SMTP.Send");
    assert_eq!(local.ca_file, Some(cert.clone()));

    let g = graph_route(&config, "g");
    assert_eq!(g.mailbox, "m@contoso.com");
    assert_eq!(g.base_url, "https://graph.microsoft.com/v1.0");
    assert_eq!(g.timeout, Duration::from_secs(60));
    assert_eq!(g.max_connections, 4);
    assert_eq!(g.ca_file, Some(cert.clone()));
    assert_eq!(g.oauth.scope, "https://graph.microsoft.com/.default");
    assert_eq!(
        g.oauth.ca_file,
        Some(cert.clone()),
        "inherited from the route"
    );
    assert_eq!(
        g.oauth.grant,
        OAuthGrant::ClientCertificate {
            certificate: cert,
            private_key: key,
        }
    );
    assert_eq!(route(&config, "g").mode, None);
}

#[test]
fn the_token_file_name_is_made_safe() {
    let text = format!(
        "[[route]]\nname = \"us cloud/1\"\ndomains = [\"us.example\"]\nhost = \"smtp.example\"\n\
         [route.auth]\nusername = \"m@contoso.us\"\n\
         [route.oauth]\ntenant = \"contoso.us\"\nclient_id = \"app\"\nflow = \"device-code\"\n{BASE}"
    );
    let config = load(&text).unwrap_or_else(|e| panic!("{e}"));
    match oauth_of(&smtp_route(&config, "us cloud/1")).grant {
        OAuthGrant::DeviceCode { token_file, .. } => assert_eq!(
            token_file,
            PathBuf::from("./smarthost-data/oauth/us_cloud_1.json")
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn graph_routes_come_from_the_mode_or_the_transport() {
    let text = format!(
        "[[route]]\nname = \"mode\"\ndomains = [\"mode.example\"]\nmode = \"m365-graph\"\n\
         graph_base_url = \"https://graph.microsoft.us/v1.0/\"\ntimeout = \"2m\"\n\
         [route.limits]\nmax_connections = 2\nmessage_rate = \"10000/10m\"\n\
         [route.auth]\nusername = \"from-auth@contoso.com\"\n\
         [route.oauth]\ntenant = \"contoso.com\"\nclient_id = \"app\"\n{SECRET_ENV}\
         [[route]]\nname = \"transport\"\ndomains = [\"transport.example\"]\ntransport = \"graph\"\n\
         mailbox = \"scanner@contoso.com\"\nmax_connections = 1\n\
         [route.oauth]\ntenant = \"contoso.com\"\nclient_id = \"app\"\n{SECRET_ENV}\
         scope = \"https://graph.microsoft.us/.default\"\n{BASE}"
    );
    let config = load(&text).unwrap_or_else(|e| panic!("{e}"));
    let by_mode = graph_route(&config, "mode");
    assert_eq!(route(&config, "mode").mode, Some(M365Mode::Graph));
    assert_eq!(by_mode.mailbox, "from-auth@contoso.com");
    assert_eq!(by_mode.base_url, "https://graph.microsoft.us/v1.0");
    assert_eq!(by_mode.timeout, Duration::from_secs(120));
    assert_eq!(by_mode.max_connections, 2);
    assert_eq!(by_mode.ca_file, None);
    assert_eq!(
        route(&config, "mode").limits.message_rate,
        rate(10_000, 600)
    );
    let by_transport = graph_route(&config, "transport");
    assert_eq!(by_transport.mailbox, "scanner@contoso.com");
    assert_eq!(by_transport.max_connections, 1);
    assert_eq!(
        by_transport.oauth.scope,
        "https://graph.microsoft.us/.default"
    );
}

#[test]
fn sender_rewriting_is_read_with_its_allowed_senders() {
    let text = format!(
        "{ROUTE}rewrite_sender = \" scanner@contoso.com \"\n\
         allowed_senders = [\"HelpDesk@Contoso.com\", \"it@contoso.com\"]\n\
         [[route]]\nname = \"files\"\ndomains = [\"files.example\"]\ntransport = \"drop\"\n\
         rewrite_sender = \"scanner@contoso.com\"\n{BASE}"
    );
    let config = load(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        route(&config, "r").rewrite_sender,
        Some(SenderRewrite {
            address: "scanner@contoso.com".into(),
            allowed_senders: vec!["helpdesk@contoso.com".into(), "it@contoso.com".into()],
        })
    );
    assert_eq!(
        route(&config, "files")
            .rewrite_sender
            .as_ref()
            .unwrap()
            .allowed_senders,
        Vec::<String>::new()
    );
    assert_eq!(route(&config, "base").rewrite_sender, None);
}

#[test]
fn client_secrets_appear_neither_in_debug_output_nor_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, format!("{CLIENT_SECRET}\r\n")).unwrap();
    let text = format!(
        "{}\n{BASE}",
        smtp_oauth("", &format!("client_secret_file = '{}'", file.display()))
    );
    let config = load(&text).unwrap_or_else(|e| panic!("{e}"));
    let oauth = oauth_of(&smtp_route(&config, "r"));
    assert_eq!(
        oauth.grant,
        OAuthGrant::ClientSecret(Secret::new(CLIENT_SECRET))
    );
    let debug = format!("{config:?}");
    assert!(!debug.contains(CLIENT_SECRET), "{debug}");

    // The secret pasted where the variable's name belongs, with another mistake beside it.
    let text = format!(
        "{}\n{BASE}",
        smtp_oauth(
            "tls = \"none\"\n",
            &format!("client_secret_env = \"{CLIENT_SECRET}\"")
        )
    );
    let e = load(&text).unwrap_err();
    assert_eq!(e.errors.len(), 2, "{e}");
    assert!(!e.to_string().contains(CLIENT_SECRET), "{e}");
}

#[test]
fn several_missing_pieces_are_reported_together() {
    let text = format!(
        "{M}mode = \"m365-connector\"\n\
         [[route]]\nname = \"g\"\ndomains = [\"g.example\"]\ntransport = \"graph\"\n{BASE}"
    );
    let got = errors(&text);
    let got: Vec<_> = got
        .iter()
        .map(|e| (e.line.unwrap(), e.message.as_str()))
        .collect();
    let expected: &[(usize, &str)] = &[
        (1, "needs `tenant_domain`"),
        (1, "needs `accepted_domains`"),
        (1, "needs `client_certificate` and `client_private_key`"),
        (5, "a graph route needs `mailbox`"),
        (5, "a graph route needs [route.oauth]"),
    ];
    assert_eq!(got.len(), expected.len(), "{got:#?}");
    for (want_line, fragment) in expected {
        assert!(
            got.iter()
                .any(|(line, message)| line == want_line && message.contains(fragment)),
            "{want_line}: {fragment}\n{got:#?}"
        );
    }
}
