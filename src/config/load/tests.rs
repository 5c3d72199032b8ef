use super::*;
use crate::config::{AuthMechanism, RetrySchedule, Secret, SmtpRoute, TlsMode};
use std::time::Duration;

mod client_cert;
mod listeners;
mod m365;
mod users;

const PASSWORD: &str = "s3cret-Value!";
const CLIENT_SECRET: &str = "cl1ent~S3cret.Value";

fn fake_env(name: &str) -> Option<String> {
    match name {
        "SMARTHOST_TEST_PASSWORD" | "SMARTHOST_M365_PASSWORD" => Some(PASSWORD.to_string()),
        "SMARTHOST_M365_CLIENT_SECRET" | "SMARTHOST_TEST_CLIENT_SECRET" => {
            Some(CLIENT_SECRET.to_string())
        }
        "SMARTHOST_EMPTY" => Some(String::new()),
        _ => None,
    }
}

fn load(text: &str) -> Result<Config, ConfigErrors> {
    load_str_with_env(text, "test.toml", &fake_env)
}

fn errors(text: &str) -> Vec<ConfigError> {
    match load(text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => {
            assert_eq!(e.source, "test.toml");
            e.errors
        }
    }
}

/// Appended to each case, so that a case writes only what it tests and its lines count from 1.
const BASE: &str = r#"
[[listener]]
address = "127.0.0.1:2525"

[[route]]
name = "base"
domains = ["base.example"]
transport = "drop"
"#;

/// A route head that is valid on its own, for cases about route keys (4 lines).
const ROUTE: &str = "[[route]]\nname = \"r\"\ndomains = [\"r.example\"]\nhost = \"smtp.example\"\n";

fn smtp_route(config: &Config, name: &str) -> SmtpRoute {
    let route = config.routes.iter().find(|r| r.name == name).unwrap();
    match &route.transport {
        Transport::Smtp(smtp) => smtp.clone(),
        other => panic!("route {name} is {other:?}"),
    }
}

#[test]
fn each_mistake_is_reported_with_its_line() {
    let route = ROUTE;
    let cases: Vec<(String, usize, &str)> = vec![
        // Unknown keys, with hints.
        ("foo = 1".into(), 1, "unknown key `foo` at the top level"),
        ("[limits]\nmax_recipient = 5".into(), 2, "unknown key `max_recipient` in [limits] (did you mean `max_recipients`?)"),
        ("max_message_size = \"10MiB\"".into(), 1, "unknown key `max_message_size` at the top level (it belongs in [limits])"),
        ("[queue]\nretries = 3".into(), 2, "unknown key `retries` in [queue]"),
        ("[[listener]]\naddress = \"127.0.0.1:25\"\nport = 25".into(), 3, "unknown key `port` in [[listener]]"),
        (format!("{route}hostt = \"x\""), 5, "unknown key `hostt` in [[route]] (did you mean `host`?)"),
        (format!("{route}[route.auth]\nusername = \"u\"\npassword_env = \"SMARTHOST_TEST_PASSWORD\"\npassword = \"pw\""), 8, "unknown key `password` in [route.auth] (the password is read from the environment variable named by `password_env`"),
        // Types.
        ("[limits]\nmax_recipients = \"500\"".into(), 2, "`limits.max_recipients` must be an integer, found string"),
        ("[limits]\nmax_recipients = 5.0".into(), 2, "must be an integer, found float"),
        ("limits = 5".into(), 1, "`limits` must be a table, [limits], found integer"),
        ("[[listener]]\naddress = \"127.0.0.1:25\"\nrelay_from = [10]".into(), 3, "`listener.relay_from` must contain only strings, found integer"),
        ("[[listener]]\naddress = \"127.0.0.1:25\"\nrelay_from = \"10.0.0.0/8\"".into(), 3, "`listener.relay_from` must be an array of strings, found string"),
        (format!("{route}allow_plaintext_auth = \"yes\""), 5, "`route.allow_plaintext_auth` must be true or false"),
        (format!("{route}auth = \"login\""), 5, "`route.auth` must be a table, [route.auth], found string"),
        // Top level.
        ("hostname = \"relay 01\"".into(), 1, "`hostname` \"relay 01\" is not a valid host name"),
        ("data_dir = \"\"".into(), 1, "`data_dir` is empty"),
        // Listeners.
        ("[[listener]]\naddress = \"127.0.0.1:25\"\nrelay_from = [\"10.0.0.0/8\", \"10.0.0/8\"]".into(), 3, "invalid address range \"10.0.0/8\""),
        ("[[listener]]\naddress = \"127.0.0.1:25\"\nrelay_from = [\"10.0.0.0/33\"]".into(), 3, "the prefix length is at most 32"),
        ("[[listener]]\naddress = \"0.0.0.0\"".into(), 2, "`listener.address`: invalid address \"0.0.0.0\""),
        ("[[listener]]\naddress = \"localhost:25\"".into(), 2, "invalid address \"localhost:25\""),
        ("[[listener]]\nrelay_from = []".into(), 1, "[[listener]] needs `address`"),
        ("[[listener]]\naddress = \"127.0.0.1:25\"\n[[listener]]\naddress = \"127.0.0.1:25\"".into(), 4, "listener address 127.0.0.1:25 is already used on line 2"),
        // Limits and queue.
        ("[limits]\nmax_message_size = \"35 MBs\"".into(), 2, "`limits.max_message_size`: invalid size \"35 MBs\""),
        ("[limits]\nmax_message_size = 0".into(), 2, "`limits.max_message_size` must be greater than zero"),
        ("[limits]\nmax_message_size = -1".into(), 2, "must be greater than zero"),
        ("[limits]\nmax_message_size = true".into(), 2, "must be a size such as \"35MiB\", found boolean"),
        ("[limits]\ncommand_timeout = \"5 minutes ago\"".into(), 2, "`limits.command_timeout`: invalid duration \"5 minutes ago\""),
        ("[limits]\ndata_timeout = 600".into(), 2, "`limits.data_timeout` must be a duration such as \"30s\" or \"5m\", found integer"),
        ("[limits]\ndata_timeout = \"0s\"".into(), 2, "`limits.data_timeout` must be longer than zero"),
        ("[limits]\nmax_recipients = 0".into(), 2, "`limits.max_recipients` must be at least 1"),
        ("[limits]\nmax_connections = -5".into(), 2, "`limits.max_connections` must be at least 1"),
        ("[limits]\nmax_connections = 99999999999999999999".into(), 2, "`limits.max_connections` is too large"),
        ("[queue]\nmax_concurrent_deliveries = 0".into(), 2, "must be at least 1"),
        // The retry schedule, [queue] and per route.
        ("[queue]\nretry_initial = \"15m\"".into(), 2, "unknown key `retry_initial` in [queue] (the retry schedule is now a list of waits, the last one repeating: retry = [\"15m\", \"30m\", \"60m\", \"240m\"])"),
        ("[queue]\nretry_max = \"4h\"".into(), 2, "unknown key `retry_max` in [queue] (the retry schedule is now a list"),
        ("[queue]\nretry = []".into(), 2, "`queue.retry` is empty: give at least one duration"),
        ("[queue]\nretry = \"15m\"".into(), 2, "`queue.retry` must be an array of durations such as [\"15m\", \"30m\"], found string"),
        ("[queue]\nretry = [\"15m\", 30]".into(), 2, "`queue.retry` must contain only durations such as \"15m\", found integer"),
        ("[queue]\nretry = [\"15m\",\n  \"0s\"]".into(), 3, "`queue.retry` must be longer than zero"),
        ("[queue]\nretry = [\"15 minutes later\"]".into(), 2, "`queue.retry`: invalid duration \"15 minutes later\""),
        ("[queue]\ndelay_notice = \"2d\"".into(), 2, "`queue.delay_notice` (2days) is not shorter than the default `expire` (2days): the delay notice would never be sent; make delay_notice shorter, or write delay_notice = \"never\""),
        ("[queue]\nexpire = \"6h\"".into(), 2, "the default `delay_notice` (12h) is not shorter than `queue.expire` (6h)"),
        ("[queue]\nexpire = \"1d\"\ndelay_notice = \"1d\"".into(), 3, "`queue.delay_notice` (1day) is not shorter than `queue.expire` (1day)"),
        // An unusable value is reported once, not compared as well.
        ("[queue]\nexpire = \"0s\"\ndelay_notice = \"3d\"".into(), 2, "`queue.expire` must be longer than zero"),
        ("[queue]\ndelay_notice = \"0s\"".into(), 2, "`queue.delay_notice` must be longer than zero"),
        ("[queue]\ndelay_notice = \"soon\"".into(), 2, "`queue.delay_notice`: invalid duration \"soon\""),
        ("[queue]\ndelay_notice = false".into(), 2, "`queue.delay_notice` must be a duration such as \"12h\", or \"never\", found boolean"),
        ("[queue]\nexpire = \"never\"".into(), 2, "`queue.expire`: invalid duration \"never\""),
        (format!("{route}retry = []"), 5, "`route.retry` is empty"),
        (format!("{route}retry = [\"1m\", \"-1m\"]"), 5, "`route.retry`: invalid duration \"-1m\""),
        (format!("{route}expire = \"6h\""), 5, "`delay_notice` of [queue] (12h) is not shorter than `route.expire` (6h)"),
        (format!("{route}delay_notice = \"3d\""), 5, "`route.delay_notice` (3days) is not shorter than `expire` of [queue] (2days)"),
        (format!("[queue]\ndelay_notice = \"1h\"\n{route}expire = \"30m\""), 7, "`delay_notice` of [queue] (1h) is not shorter than `route.expire` (30m)"),
        (format!("[queue]\nexpire = \"6h\"\ndelay_notice = \"never\"\n{route}delay_notice = \"12h\""), 8, "`route.delay_notice` (12h) is not shorter than `expire` of [queue] (6h)"),
        (format!("{route}delay_notice = \"0s\""), 5, "`route.delay_notice` must be longer than zero"),
        ("[[route]]\nname = \"r\"\ndomains = [\"r.example\"]\ntransport = \"drop\"\nexpire = 3600".into(), 5, "`route.expire` must be a duration such as \"30s\" or \"5m\", found integer"),
        // Bounces and disk space.
        ("[queue]\nndr_copy_to = \"postmaster\"".into(), 2, "`queue.ndr_copy_to` \"postmaster\" is not a valid address: write local-part@domain"),
        ("[queue]\nndr_copy_to = \"<postmaster@contoso.com>\"".into(), 2, "(write it without < >)"),
        ("[queue]\nndr_copy_to = \"post master@contoso.com\"".into(), 2, "is not a valid address"),
        ("[queue]\nndr_copy_to = [\"postmaster@contoso.com\"]".into(), 2, "`queue.ndr_copy_to` must be a string, found array"),
        ("[queue]\nbounce_original_max = \"lots\"".into(), 2, "`queue.bounce_original_max`: invalid size \"lots\""),
        ("[queue]\nmin_free_space = -1".into(), 2, "`queue.min_free_space` must not be negative"),
        ("[queue]\nmin_free_space = \"100 MiBs\"".into(), 2, "`queue.min_free_space`: invalid size"),
        // Routes.
        ("[[route]]\ndomains = [\"r.example\"]\ntransport = \"drop\"".into(), 1, "[[route]] needs `name`"),
        ("[[route]]\nname = \" \"\ndomains = [\"r.example\"]\ntransport = \"drop\"".into(), 2, "`route.name` is empty"),
        ("[[route]]\nname = \"a\"\ndomains = [\"a.example\"]\ntransport = \"drop\"\n[[route]]\nname = \"a\"\ndomains = [\"b.example\"]\ntransport = \"drop\"".into(), 6, "route name `a` is already used on line 2"),
        ("[[route]]\nname = \"r\"\ntransport = \"drop\"".into(), 1, "[[route]] needs `domains`"),
        ("[[route]]\nname = \"r\"\ndomains = []\ntransport = \"drop\"".into(), 3, "`route.domains` is empty"),
        ("[[route]]\nname = \"r\"\ndomains = [\"@contoso.com\"]\ntransport = \"drop\"".into(), 3, "`route.domains`: invalid domain \"@contoso.com\""),
        ("[[route]]\nname = \"a\"\ndomains = [\"contoso.com\"]\ntransport = \"drop\"\n[[route]]\nname = \"b\"\ndomains = [\"*\", \"Contoso.COM.\"]\ntransport = \"drop\"".into(), 7, "domain \"contoso.com\" is already routed by route `a` (line 3)"),
        ("[[route]]\nname = \"a\"\ndomains = [\"*.contoso.com\"]\ntransport = \"drop\"\n[[route]]\nname = \"b\"\ndomains = [\"*.contoso.com\"]\ntransport = \"drop\"".into(), 7, "domain \"*.contoso.com\" is already routed by route `a`"),
        ("[[route]]\nname = \"a\"\ndomains = [\"*\"]\ntransport = \"drop\"\n[[route]]\nname = \"b\"\ndomains = [\"*\"]\ntransport = \"drop\"".into(), 7, "domain \"*\" is already routed by route `a`"),
        ("[[route]]\nname = \"r\"\ndomains = [\"x.example\",\n  \"x.example\"]\ntransport = \"drop\"".into(), 4, "domain \"x.example\" is listed twice (line 3)"),
        ("[[route]]\nname = \"r\"\ndomains = [\"r.example\"]\ntransport = \"lmtp\"".into(), 4, "`route.transport`: unknown value \"lmtp\", expected \"smtp\", \"graph\" or \"drop\""),
        ("[[route]]\nname = \"r\"\ndomains = [\"r.example\"]".into(), 1, "[[route]] needs `host`"),
        ("[[route]]\nname = \"r\"\ndomains = [\"r.example\"]\ntransport = \"smtp\"\nhost = \"\"".into(), 5, "`route.host` is empty"),
        ("[[route]]\nname = \"r\"\ndomains = [\"r.example\"]\nhost = \"smtp.office365.com:587\"".into(), 4, "`route.host`: host \"smtp.office365.com:587\" contains a port"),
        ("[[route]]\nname = \"r\"\ndomains = [\"r.example\"]\ntransport = \"drop\"\nhost = \"smtp.example\"".into(), 5, "`host` is only for transport = \"smtp\"; this route is \"drop\""),
        ("[[route]]\nname = \"r\"\ndomains = [\"r.example\"]\ntransport = \"drop\"\ntls = \"none\"".into(), 5, "`tls` is only for transport = \"smtp\""),
        ("[[route]]\nname = \"r\"\ndomains = [\"r.example\"]\ntransport = \"drop\"\n[route.auth]\nusername = \"u\"".into(), 5, "`auth` is only for transport = \"smtp\""),
        ("[[route]]\nname = \"r\"\ndomains = [\"r.example\"]\ntransport = \"drop\"\npath = \"\"".into(), 5, "`route.path` is empty"),
        (format!("{route}path = \"outbox\""), 5, "`path` is only for transport = \"drop\"; this route is \"smtp\""),
        (format!("{route}port = 70000"), 5, "`route.port` 70000 is out of range (1 to 65535)"),
        (format!("{route}port = 0"), 5, "`route.port` 0 is out of range"),
        (format!("{route}port = -25"), 5, "`route.port` -25 is out of range"),
        (format!("{route}tls = \"ssl\""), 5, "`route.tls`: unknown value \"ssl\", expected \"starttls\", \"implicit\", \"opportunistic\" or \"none\""),
        (format!("{route}connect_timeout = \"30 seconds please\""), 5, "`route.connect_timeout`: invalid duration"),
        (format!("{route}max_connections = 0"), 5, "`route.max_connections` must be at least 1"),
        (format!("{route}ca_file = \"/nonexistent/smarthost/ca.pem\""), 5, "cannot read `route.ca_file` \"/nonexistent/smarthost/ca.pem\""),
        (format!("{route}ca_file = \"/\""), 5, "cannot read `route.ca_file` \"/\": it is a directory"),
        // Credentials.
        (format!("{route}tls = \"none\"\n[route.auth]\nusername = \"u\"\npassword_env = \"SMARTHOST_TEST_PASSWORD\""), 6, "refusing to send a password in the clear (tls = \"none\")"),
        (format!("{route}tls = \"none\"\nallow_plaintext_auth = false\n[route.auth]\nusername = \"u\"\npassword_env = \"SMARTHOST_TEST_PASSWORD\""), 7, "refusing to send a password in the clear"),
        (format!("{route}tls = \"opportunistic\"\nallow_plaintext_auth = true\n[route.auth]\nusername = \"u\"\npassword_env = \"SMARTHOST_TEST_PASSWORD\""), 6, "allow_plaintext_auth has no effect with tls = \"opportunistic\""),
        (format!("{route}tls = \"none\"\nauth = {{ username = \"u\", password_env = \"SMARTHOST_TEST_PASSWORD\" }}"), 6, "set allow_plaintext_auth = true in this route"),
        (format!("{route}[route.auth]\nusername = \"u\"\npassword_env = \"SMARTHOST_TEST_PASSWORD\"\npassword_file = \"/etc/x\""), 5, "[route.auth] has both `password_env` and `password_file`"),
        (format!("{route}[route.auth]\nusername = \"u\""), 5, "[route.auth] needs `password_env` (an environment variable) or `password_file`"),
        (format!("{route}[route.auth]\npassword_env = \"SMARTHOST_TEST_PASSWORD\""), 5, "[route.auth] needs `username`"),
        (format!("{route}[route.auth]\nusername = \"u\"\npassword_env = \"SMARTHOST_UNSET\""), 7, "environment variable SMARTHOST_UNSET (password_env) is not set"),
        (format!("{route}[route.auth]\nusername = \"u\"\npassword_env = \"SMARTHOST_EMPTY\""), 7, "environment variable SMARTHOST_EMPTY (password_env) is empty"),
        (format!("{route}[route.auth]\nusername = \"u\"\npassword_file = \"/nonexistent/smarthost/m365.pass\""), 7, "cannot read password_file \"/nonexistent/smarthost/m365.pass\": No such file"),
        (format!("{route}[route.auth]\nmechanism = \"cram-md5\"\nusername = \"u\"\npassword_env = \"SMARTHOST_TEST_PASSWORD\""), 6, "`route.auth.mechanism`: unknown value \"cram-md5\", expected \"login\", \"plain\" or \"xoauth2\""),
        (format!("{route}[route.auth]\nmechanism = \"LOGIN\"\nusername = \"u\"\npassword_env = \"SMARTHOST_TEST_PASSWORD\""), 6, "unknown value \"LOGIN\""),
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

#[test]
fn a_file_without_the_essentials_is_refused() {
    let route = "[[route]]\nname = \"r\"\ndomains = [\"*\"]\ntransport = \"drop\"\n";
    let listener = "[[listener]]\naddress = \"127.0.0.1:25\"\n";
    let cases: Vec<(String, Option<usize>, &str)> = vec![
        (route.into(), None, "no [[listener]]"),
        (
            format!("listener = []\n{route}"),
            Some(1),
            "`listener` is empty",
        ),
        (
            format!("[listener]\naddress = \"127.0.0.1:25\"\n{route}"),
            Some(1),
            "write [[listener]] with double brackets",
        ),
        (
            format!("listener = \"127.0.0.1:25\"\n{route}"),
            Some(1),
            "`listener` must be tables, [[listener]], found string",
        ),
        (listener.into(), None, "no [[route]]"),
        (
            format!("route = []\n{listener}"),
            Some(1),
            "`route` is empty",
        ),
        ("".into(), None, "no [[listener]]"),
    ];
    for (text, line, fragment) in &cases {
        let got = errors(text);
        assert!(
            got.iter()
                .any(|e| e.line == *line && e.message.contains(fragment)),
            "for:\n{text}\nexpected {line:?}: {fragment}\ngot: {got:#?}"
        );
    }
    assert_eq!(
        errors("").len(),
        2,
        "both the listener and the route are missing"
    );
}

#[test]
fn syntax_errors_are_reported_with_their_lines() {
    let got = errors(
        "data_dir = \"/x\nhostname = \"h\"\n[limits]\nmax_recipients = 1\nmax_recipients = 2\n",
    );
    let lines: Vec<_> = got.iter().map(|e| e.line).collect();
    assert_eq!(lines, [Some(1), Some(5)], "{got:#?}");
    assert!(got.iter().all(|e| e.message.starts_with("TOML syntax: ")));
    assert!(got[1].message.contains("duplicate key"), "{got:#?}");
}

#[test]
fn every_error_in_a_file_is_reported_at_once_in_file_order() {
    let text = r#"hostname = "relay 01"
colour = "blue"

[[listener]]
address = "0.0.0.0"
relay_from = ["10.0.0.0/8", "300.1.2.3"]

[limits]
max_message_size = "lots"
max_recipients = 0

[queue]
expire = "soon"

[[route]]
name = "m365"
domains = ["*"]
host = "smtp.office365.com"
port = 99999
tls = "none"
[route.auth]
username = "relay@contoso.com"
password_env = "SMARTHOST_UNSET"

[[route]]
name = "m365"
domains = ["*"]
transport = "drop"
tls = "starttls"
"#;
    let expected: &[(usize, &str)] = &[
        (1, "not a valid host name"),
        (2, "unknown key `colour`"),
        (5, "invalid address \"0.0.0.0\""),
        (6, "invalid address range \"300.1.2.3\""),
        (9, "invalid size \"lots\""),
        (10, "must be at least 1"),
        (13, "invalid duration \"soon\""),
        (19, "out of range"),
        (21, "refusing to send a password"),
        (23, "SMARTHOST_UNSET (password_env) is not set"),
        (26, "route name `m365` is already used on line 16"),
        (
            27,
            "domain \"*\" is already routed by route `m365` (line 17)",
        ),
        (29, "`tls` is only for transport = \"smtp\""),
    ];
    let got = errors(text);
    let got_pairs: Vec<_> = got
        .iter()
        .map(|e| (e.line.unwrap(), e.message.as_str()))
        .collect();
    assert_eq!(got.len(), expected.len(), "{got_pairs:#?}");
    for ((line, message), (want_line, fragment)) in got_pairs.iter().zip(expected) {
        assert!(
            line == want_line && message.contains(fragment),
            "expected {want_line}: {fragment}\ngot: {got_pairs:#?}"
        );
    }
}

#[test]
fn errors_print_as_file_line_message() {
    let e = load_str_with_env(
        "[limits]\nmax_recipients = 0\n",
        "smarthost.toml",
        &fake_env,
    )
    .unwrap_err();
    let printed = e.to_string();
    assert!(
        printed.starts_with("smarthost.toml:2: `limits.max_recipients` must be at least 1\n"),
        "{printed}"
    );
    assert!(printed.ends_with("smarthost.toml: no [[route]]: add at least one, e.g. a `drop` route that writes mail to a folder (see smarthost.example.toml)\n"), "{printed}");
}

#[test]
fn a_missing_file_is_one_error_without_a_line() {
    let path = Path::new("/nonexistent/smarthost/smarthost.toml");
    let e = load_file(path).unwrap_err();
    assert_eq!(e.source, "/nonexistent/smarthost/smarthost.toml");
    assert_eq!(e.errors.len(), 1);
    assert_eq!(e.errors[0].line, None);
    assert!(
        e.errors[0].message.starts_with("cannot read: No such file"),
        "{e}"
    );
}

#[test]
fn load_file_reads_a_file_with_a_byte_order_mark_and_crlf_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("smarthost.toml");
    let text = "\u{feff}[[listener]]\r\naddress = \"127.0.0.1:25\"\r\n[[route]]\r\nname = \"r\"\r\ndomains = [\"*\"]\r\ntransport = \"drop\"\r\n[limits]\r\nmax_recipients = 0\r\n";
    std::fs::write(&path, text).unwrap();
    let e = load_file(&path).unwrap_err();
    assert_eq!(e.errors.len(), 1, "{e}");
    assert_eq!(e.errors[0].line, Some(8), "{e}");
    std::fs::write(&path, text.replace("= 0", "= 7")).unwrap();
    assert_eq!(load_file(&path).unwrap().limits.max_recipients, 7);
}

#[test]
fn a_full_configuration_maps_to_its_values() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
    let text = format!(
        r#"
data_dir = "/var/lib/smarthost"
hostname = "relay01.contoso.com"

[[listener]]
address = "0.0.0.0:25"
relay_from = ["10.0.0.0/8", "192.168.10.0/24", "::1/128", "192.168.20.7", "172.16.0.0/255.240.0.0"]

[[listener]]
address = "[::]:587"

[limits]
max_message_size = "10MB"
max_recipients = 100
max_connections = 50
command_timeout = "30s"
data_timeout = "1h"

[queue]
max_concurrent_deliveries = 4
retry = ["5m", "10m", "1h"]
delay_notice = "4h"
expire = "3d"
ndr_copy_to = "postmaster@contoso.com"
bounce_original_max = "1MiB"
min_free_space = "1GB"

[[route]]
name = "m365"
domains = ["*"]
transport = "smtp"
host = "smtp.office365.com"
port = 2587
tls = "starttls"
ca_file = "{ca}"
connect_timeout = "10s"
command_timeout = "2m"
max_connections = 3
[route.auth]
mechanism = "plain"
username = "relay@contoso.com"
password_env = "SMARTHOST_M365_PASSWORD"

[[route]]
name = "local"
domains = ["Contoso.com", "*.contoso.com."]
transport = "drop"
path = "local-outbox"

[[route]]
name = "archive"
domains = ["archive.example"]
transport = "drop"
path = "/srv/archive"
"#,
        ca = ca.display()
    );
    let config = load(&text).unwrap();
    assert_eq!(config.data_dir, PathBuf::from("/var/lib/smarthost"));
    assert_eq!(config.hostname, "relay01.contoso.com");

    assert_eq!(config.listeners.len(), 2);
    let first = &config.listeners[0];
    assert_eq!(first.address, "0.0.0.0:25".parse().unwrap());
    let nets: Vec<String> = first.relay_from.iter().map(|n| n.to_string()).collect();
    assert_eq!(
        nets,
        [
            "10.0.0.0/8",
            "192.168.10.0/24",
            "::1/128",
            "192.168.20.7/32",
            "172.16.0.0/12"
        ]
    );
    assert!(first.may_relay("10.1.2.3".parse().unwrap()));
    assert!(first.may_relay("::ffff:192.168.10.9".parse().unwrap()));
    assert!(!first.may_relay("192.168.11.1".parse().unwrap()));
    assert_eq!(config.listeners[1].address, "[::]:587".parse().unwrap());
    assert!(config.listeners[1].relay_from.is_empty());

    let limits = &config.limits;
    assert_eq!(limits.max_message_size, 10_000_000);
    assert_eq!(limits.max_recipients, 100);
    assert_eq!(limits.max_connections, 50);
    assert_eq!(limits.command_timeout, Duration::from_secs(30));
    assert_eq!(limits.data_timeout, Duration::from_secs(3600));
    assert_eq!(config.queue.max_concurrent_deliveries, 4);
    let schedule = RetrySchedule {
        retry: vec![
            Duration::from_secs(300),
            Duration::from_secs(600),
            Duration::from_secs(3600),
        ],
        delay_notice: Some(Duration::from_secs(4 * 3600)),
        expire: Duration::from_secs(3 * 86_400),
    };
    assert_eq!(config.queue.schedule, schedule);
    assert_eq!(
        config.queue.ndr_copy_to.as_deref(),
        Some("postmaster@contoso.com")
    );
    assert_eq!(config.queue.bounce_original_max, 1024 * 1024);
    assert_eq!(config.queue.min_free_space, 1_000_000_000);
    assert!(config.routes.iter().all(|r| r.schedule == schedule));

    let names: Vec<_> = config.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["m365", "local", "archive"]);
    assert_eq!(config.routes[0].domains, [DomainPattern::Any]);
    let m365 = smtp_route(&config, "m365");
    assert_eq!(m365.host, "smtp.office365.com");
    assert_eq!(m365.port, 2587);
    assert_eq!(m365.tls, TlsMode::StartTls);
    assert_eq!(m365.ca_file, Some(ca));
    assert_eq!(m365.connect_timeout, Duration::from_secs(10));
    assert_eq!(m365.command_timeout, Duration::from_secs(120));
    assert_eq!(m365.max_connections, 3);
    let auth = m365.auth.unwrap();
    assert_eq!(auth.mechanism, AuthMechanism::Plain);
    assert_eq!(auth.username, "relay@contoso.com");
    assert_eq!(auth.password().unwrap().clone(), Secret::new(PASSWORD));

    assert_eq!(
        config.routes[1].domains,
        [
            DomainPattern::Exact("contoso.com".into()),
            DomainPattern::Subdomains("contoso.com".into())
        ]
    );
    match &config.routes[1].transport {
        Transport::Drop { path } => {
            assert_eq!(path, Path::new("/var/lib/smarthost/local-outbox"))
        }
        other => panic!("{other:?}"),
    }
    match &config.routes[2].transport {
        Transport::Drop { path } => assert_eq!(path, Path::new("/srv/archive")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unwritten_keys_take_their_defaults() {
    let text = r#"
[[listener]]
address = "127.0.0.1:25"
[[route]]
name = "up"
domains = ["*"]
host = "mail.example"
[[route]]
name = "files"
domains = ["files.example"]
transport = "drop"
"#;
    let config = load(text).unwrap();
    assert_eq!(config.data_dir, PathBuf::from("./smarthost-data"));
    assert!(
        values::is_host_name(&config.hostname),
        "{}",
        config.hostname
    );
    assert!(config.listeners[0].relay_from.is_empty());
    let limits = &config.limits;
    assert_eq!(limits.max_message_size, 35 * 1024 * 1024);
    assert_eq!(limits.max_recipients, 500);
    assert_eq!(limits.max_connections, 1000);
    assert_eq!(limits.command_timeout, Duration::from_secs(300));
    assert_eq!(limits.data_timeout, Duration::from_secs(600));
    assert_eq!(config.queue.max_concurrent_deliveries, 20);
    // IIS: 15, 30, 60, then every 240 minutes; delay notification 12 h; expiration 2 days.
    let iis = RetrySchedule {
        retry: [15, 30, 60, 240]
            .map(|m| Duration::from_secs(m * 60))
            .to_vec(),
        delay_notice: Some(Duration::from_secs(12 * 3600)),
        expire: Duration::from_secs(2 * 86_400),
    };
    assert_eq!(config.queue.schedule, iis);
    assert_eq!(config.queue.ndr_copy_to, None);
    assert_eq!(config.queue.bounce_original_max, 256 * 1024);
    assert_eq!(config.queue.min_free_space, 100 * 1024 * 1024);
    assert!(config.routes.iter().all(|r| r.schedule == iis));
    let up = smtp_route(&config, "up");
    assert_eq!((up.tls, up.port), (TlsMode::StartTls, 587));
    assert_eq!(up.ca_file, None);
    assert!(up.auth.is_none());
    assert_eq!(up.connect_timeout, Duration::from_secs(30));
    assert_eq!(up.command_timeout, Duration::from_secs(300));
    assert_eq!(up.max_connections, 10);
    match &config.routes[1].transport {
        Transport::Drop { path } => assert_eq!(path, Path::new("./smarthost-data/outbox")),
        other => panic!("{other:?}"),
    }
}

/// A route's `retry`, `delay_notice` and `expire` each replace [queue]'s on their own.
#[test]
fn route_schedules_override_the_queue_key_by_key() {
    let text = r#"
[[listener]]
address = "127.0.0.1:25"

[queue]
retry = ["10m", "1h"]
delay_notice = "4h"
expire = "1d"

[[route]]
name = "inherits"
domains = ["a.example"]
transport = "drop"

[[route]]
name = "retry-only"
domains = ["b.example"]
transport = "drop"
retry = ["1m"]

[[route]]
name = "never-notify"
domains = ["c.example"]
host = "smtp.example"
delay_notice = "never"

[[route]]
name = "patient"
domains = ["*"]
host = "smtp.example"
retry = ["5m", "5m", "1h"]
delay_notice = "2d"
expire = "5d"
"#;
    let config = load(text).unwrap_or_else(|e| panic!("{e}"));
    let minutes = |list: &[u64]| list.iter().map(|m| Duration::from_secs(m * 60)).collect();
    let hours = |h: u64| Duration::from_secs(h * 3600);
    let queue = RetrySchedule {
        retry: minutes(&[10, 60]),
        delay_notice: Some(hours(4)),
        expire: hours(24),
    };
    assert_eq!(config.queue.schedule, queue);
    let expected = [
        ("inherits", queue.clone()),
        (
            "retry-only",
            RetrySchedule {
                retry: minutes(&[1]),
                ..queue.clone()
            },
        ),
        (
            "never-notify",
            RetrySchedule {
                delay_notice: None,
                ..queue.clone()
            },
        ),
        (
            "patient",
            RetrySchedule {
                retry: minutes(&[5, 5, 60]),
                delay_notice: Some(hours(48)),
                expire: hours(120),
            },
        ),
    ];
    for (name, schedule) in expected {
        let route = config.routes.iter().find(|r| r.name == name).unwrap();
        assert_eq!(route.schedule, schedule, "{name}");
    }
}

/// "never" turns the delay notice off, so no expiry is too short for it; zero sizes mean
/// "headers only" and "no check".
#[test]
fn never_and_zero_are_accepted_where_they_mean_something() {
    let text = format!(
        "[queue]\ndelay_notice = \"Never\"\nexpire = \"1h\"\nbounce_original_max = 0\n\
         min_free_space = \"0MiB\"\n{BASE}"
    );
    let config = load(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.queue.schedule.delay_notice, None);
    assert_eq!(config.queue.schedule.expire, Duration::from_secs(3600));
    assert_eq!(config.queue.bounce_original_max, 0);
    assert_eq!(config.queue.min_free_space, 0);
    assert_eq!(config.routes[0].schedule, config.queue.schedule);
}

#[test]
fn the_port_defaults_to_the_tls_mode() {
    let cases = [
        ("starttls", TlsMode::StartTls, 587),
        ("implicit", TlsMode::Implicit, 465),
        ("opportunistic", TlsMode::Opportunistic, 25),
        ("none", TlsMode::None, 25),
    ];
    for (written, mode, port) in cases {
        let text = format!("{ROUTE}tls = \"{written}\"\n{BASE}");
        let route = smtp_route(&load(&text).unwrap(), "r");
        assert_eq!((route.tls, route.port), (mode, port), "{written}");
    }
}

/// With "opportunistic" the SMTP client signs in only after STARTTLS succeeded, so only "none"
/// needs the second, explicit consent.
#[test]
fn plaintext_auth_needs_tls_none_and_explicit_consent() {
    let auth = "[route.auth]\nusername = \"u\"\npassword_env = \"SMARTHOST_TEST_PASSWORD\"";
    for (route_keys, tls) in [
        ("tls = \"none\"\nallow_plaintext_auth = true", TlsMode::None),
        ("tls = \"opportunistic\"", TlsMode::Opportunistic),
        (
            "tls = \"opportunistic\"\nallow_plaintext_auth = false",
            TlsMode::Opportunistic,
        ),
        (
            "tls = \"starttls\"\nallow_plaintext_auth = true",
            TlsMode::StartTls,
        ),
    ] {
        let text = format!("{ROUTE}{route_keys}\n{auth}\n{BASE}");
        let route = smtp_route(&load(&text).unwrap_or_else(|e| panic!("{e}")), "r");
        assert_eq!(route.tls, tls);
        assert_eq!(
            route.auth.unwrap().mechanism,
            AuthMechanism::Login,
            "{route_keys}"
        );
    }
}

#[test]
fn password_files_lose_their_trailing_line_break() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, Option<&str>)] = &[
        ("pw\n", Some("pw")),
        ("pw\r\n", Some("pw")),
        ("pw", Some("pw")),
        (" pw with spaces \n", Some(" pw with spaces ")),
        ("\n", None),
        ("", None),
    ];
    for (i, (content, expected)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("pass{i}"));
        std::fs::write(&path, content).unwrap();
        let text = format!(
            "{ROUTE}[route.auth]\nusername = \"u\"\npassword_file = '{}'\n{BASE}",
            path.display()
        );
        match (load(&text), expected) {
            (Ok(config), Some(want)) => {
                let auth = smtp_route(&config, "r").auth.unwrap();
                assert_eq!(auth.password().unwrap().expose(), *want, "{content:?}");
            }
            (Err(e), None) => {
                assert_eq!(e.errors.len(), 1, "{e}");
                assert!(e.errors[0].message.ends_with(": it is empty"), "{e}");
            }
            (got, want) => panic!("{content:?}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn secrets_appear_neither_in_debug_output_nor_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pass");
    std::fs::write(&file, format!("{PASSWORD}\n")).unwrap();
    let text = format!(
        "{ROUTE}[route.auth]\nusername = \"u\"\npassword_env = \"SMARTHOST_TEST_PASSWORD\"\n\
         [[route]]\nname = \"f\"\ndomains = [\"f.example\"]\nhost = \"smtp.example\"\n\
         [route.auth]\nusername = \"u\"\npassword_file = '{}'\n{BASE}",
        file.display()
    );
    let config = load(&text).unwrap();
    assert_eq!(
        smtp_route(&config, "f")
            .auth
            .unwrap()
            .password()
            .unwrap()
            .expose(),
        PASSWORD
    );
    let debug = format!("{config:?}");
    assert!(!debug.contains(PASSWORD), "{debug}");
    assert!(debug.contains("Secret(<redacted>)"));

    // A password pasted where the variable's name belongs is not echoed back.
    let text = format!(
        "{ROUTE}tls = \"none\"\n[route.auth]\nusername = \"u\"\npassword_env = \"{PASSWORD}\"\n{BASE}"
    );
    let e = load(&text).unwrap_err();
    assert_eq!(e.errors.len(), 2, "{e}");
    assert!(
        e.to_string()
            .contains("must be the name of an environment variable"),
        "{e}"
    );
    assert!(!e.to_string().contains(PASSWORD), "{e}");
}

#[test]
fn default_config_relays_from_this_machine_into_the_outbox() {
    let config = default_config();
    assert_eq!(config.data_dir, PathBuf::from("./smarthost-data"));
    assert!(values::is_host_name(&config.hostname));
    assert_eq!(config.listeners.len(), 1);
    let listener = &config.listeners[0];
    assert_eq!(listener.address, "127.0.0.1:2525".parse().unwrap());
    assert!(listener.may_relay("127.0.0.1".parse().unwrap()));
    assert!(listener.may_relay("::1".parse().unwrap()));
    assert!(!listener.may_relay("10.0.0.1".parse().unwrap()));
    assert_eq!(config.limits.max_message_size, 35 * 1024 * 1024);
    assert_eq!(config.queue.max_concurrent_deliveries, 20);
    assert_eq!(config.routes.len(), 1);
    let route = &config.routes[0];
    assert_eq!(route.name, "outbox");
    assert_eq!(route.domains, [DomainPattern::Any]);
    match &route.transport {
        Transport::Drop { path } => assert_eq!(path, Path::new("./smarthost-data/outbox")),
        other => panic!("{other:?}"),
    }
}

const EXAMPLE: &str = include_str!("../../../smarthost.example.toml");

#[test]
fn the_example_file_loads() {
    let config = load_str_with_env(EXAMPLE, "smarthost.example.toml", &fake_env)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.hostname, "relay01.contoso.com");
    assert_eq!(config.listeners[0].address, "0.0.0.0:25".parse().unwrap());
    let m365 = smtp_route(&config, "m365");
    assert_eq!((m365.host.as_str(), m365.port), ("smtp.office365.com", 587));
    assert_eq!(m365.tls, TlsMode::StartTls);
    assert_eq!(m365.max_connections, 3);
    let auth = m365.auth.unwrap();
    assert_eq!(auth.mechanism, AuthMechanism::XOAuth2);
    assert_eq!(auth.username, "scanner@contoso.com");
    let crate::config::Credential::OAuth(oauth) = &auth.credential else {
        panic!("{auth:?}");
    };
    assert_eq!(
        oauth.grant,
        crate::config::OAuthGrant::ClientSecret(Secret::new(CLIENT_SECRET))
    );
    assert_eq!(
        oauth.token_endpoint,
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    );
    assert_eq!(oauth.scope, "https://outlook.office365.com/.default");
    let route = &config.routes[0];
    assert_eq!(route.mode, Some(crate::config::M365Mode::ClientSubmission));
    assert_eq!(
        route.rewrite_sender.as_ref().unwrap().address,
        "scanner@contoso.com"
    );
    assert_eq!(
        route.limits.message_rate,
        Some(crate::config::Rate {
            count: 30,
            per: Duration::from_secs(60)
        })
    );
    assert_eq!(config.queue.schedule, RetrySchedule::default());
    assert_eq!(route.schedule, RetrySchedule::default());

    let unset = load_str_with_env(EXAMPLE, "smarthost.example.toml", &|_| None).unwrap_err();
    assert_eq!(unset.errors.len(), 1, "{unset}");
    assert!(
        unset.errors[0]
            .message
            .contains("SMARTHOST_M365_CLIENT_SECRET"),
        "{unset}"
    );
}

#[test]
fn the_example_file_documents_every_key() {
    for (header, keys) in keys::SECTIONS {
        for key in *keys {
            let documented = EXAMPLE.lines().any(|line| {
                let line = line.trim_start_matches(['#', ' ']);
                line.starts_with(&format!("{key} = "))
                    || line.starts_with(&format!("{key}  "))
                    || line.starts_with(&format!("[{key}]"))
                    || line.starts_with(&format!("[[{key}]]"))
                    || line.starts_with(&format!("[route.{key}]"))
            });
            assert!(
                documented,
                "{header} `{key}` is not in smarthost.example.toml"
            );
        }
    }
}

/// Uncommenting a line `# key = value` of the example must not change the configuration: the
/// values shown as defaults are the defaults.
#[test]
fn the_example_file_shows_the_true_defaults() {
    let (main, _) = EXAMPLE.split_once("# More examples").unwrap();
    // `ndr_copy_to` has no default; the example shows an address.
    let queue_defaults: Vec<&str> = keys::QUEUE
        .iter()
        .copied()
        .filter(|key| *key != "ndr_copy_to")
        .collect();
    // The route shows its mode's values, which are its defaults too.
    let shown_defaults = [
        keys::LIMITS,
        queue_defaults.as_slice(),
        &[
            "host",
            "port",
            "tls",
            "connect_timeout",
            "command_timeout",
            "allow_plaintext_auth",
            "flow",
            "authority_host",
            "scope",
        ],
        keys::ROUTE_LIMITS,
        keys::AUTH_LOCKOUT,
        // The listener's own ("tls" and "allow_plaintext_auth" are listed above).
        &[
            "min_tls",
            "auth",
            "require_auth",
            "max_connections_per_ip",
            "max_messages_per_connection",
            "session_timeout",
        ],
    ];
    let mut uncommented = 0;
    let text: String = main
        .lines()
        .map(|line| {
            let key = line
                .strip_prefix("# ")
                .and_then(|rest| rest.split_once(" = "))
                .map(|(k, _)| k);
            if key.is_some_and(|key| shown_defaults.iter().any(|keys| keys.contains(&key))) {
                uncommented += 1;
                format!("{}\n", &line[2..])
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    assert_eq!(uncommented, 36);
    let with = load(&text).unwrap_or_else(|e| panic!("{e}"));
    let without = load(EXAMPLE).unwrap();
    assert_eq!(format!("{with:?}"), format!("{without:?}"));
}

/// The commented examples at the end load when uncommented (apart from the files they name).
#[test]
fn the_commented_examples_are_valid() {
    let (main, examples) = EXAMPLE.split_once("# More examples").unwrap();
    let examples: String = examples
        .lines()
        .filter_map(|line| line.strip_prefix("# "))
        .filter(|line| line.starts_with('[') || line.contains(" = "))
        .map(|line| format!("{line}\n"))
        .collect();
    assert!(examples.contains("[[route]]"));
    let text = format!("{main}\n{examples}");
    let e = load(&text).unwrap_err();
    let messages: Vec<_> = e.errors.iter().map(|e| e.message.as_str()).collect();
    let expected = [
        "cannot read `route.client_certificate` \"/etc/smarthost/relay.contoso.com.pem\"",
        "cannot read `route.client_private_key` \"/etc/smarthost/relay.contoso.com.key\"",
        "cannot read client_secret_file \"/etc/smarthost/hve-client.secret\"",
        "cannot read `route.oauth.certificate_file` \"/etc/smarthost/graph-app.crt\"",
        "cannot read `route.oauth.private_key_file` \"/etc/smarthost/graph-app.key\"",
        "cannot read `route.ca_file` \"/etc/smarthost/fabrikam-ca.pem\"",
        "cannot read password_file \"/etc/smarthost/fabrikam.pass\"",
    ];
    assert_eq!(messages.len(), expected.len(), "{e}");
    for (message, start) in messages.iter().zip(expected) {
        assert!(message.starts_with(start), "{start}\n{e}");
    }
}
