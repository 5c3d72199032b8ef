//! The value syntaxes of the configuration file, as pure functions: text in, value or the
//! explanation to show out. The caller adds the key and the line.

use crate::config::{DomainPattern, Rate};
use ipnet::IpNet;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// `35MiB`, `35 MB`, `1024KB`, `1.5GiB`, `1048576`. Decimal units are powers of 1000 and binary
/// units powers of 1024, as their names say; unit letters are case-insensitive.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let invalid = || {
        format!(
            "invalid size {text:?}: write a number of bytes, or a number with B, KB, MB, GB, KiB, \
             MiB or GiB (\"35MiB\")"
        )
    };
    let text_trimmed = text.trim();
    let number_end = text_trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(text_trimmed.len());
    let (number, unit) = text_trimmed.split_at(number_end);
    let number = number.replace('_', "");
    let multiplier: u128 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return Err(invalid()),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((&number, ""));
    if whole.is_empty() || fraction.contains('.') || (number.contains('.') && fraction.is_empty()) {
        return Err(invalid());
    }
    // Exact decimal arithmetic: "1.5GiB" is 1.5 × 2^30 bytes, not a float's approximation.
    let digits: u128 = format!("{whole}{fraction}")
        .parse()
        .map_err(|_| invalid())?;
    let scale = 10u128
        .checked_pow(u32::try_from(fraction.len()).map_err(|_| invalid())?)
        .ok_or_else(invalid)?;
    let bytes = digits
        .checked_mul(multiplier)
        .map(|product| product / scale)
        .ok_or_else(invalid)?;
    u64::try_from(bytes).map_err(|_| format!("size {text:?} is too large"))
}

/// humantime's syntax: `30s`, `5m`, `2h`, `1d`, `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("invalid duration {text:?} ({e}): write e.g. \"30s\", \"5m\", \"2h\" or \"1d\"")
    })
}

/// A CIDR range (`10.0.0.0/8`), a range with a netmask (`10.0.0.0/255.0.0.0`, as IIS showed
/// them) or a single address (`192.168.1.20`, meaning /32 or /128). Host bits are cleared.
pub fn parse_net(text: &str) -> Result<IpNet, String> {
    let invalid = || {
        format!(
            "invalid address range {text:?}: write an IP address or a CIDR range such as \
             \"10.0.0.0/8\" or \"::1/128\""
        )
    };
    let text_trimmed = text.trim();
    let Some((address, prefix)) = text_trimmed.split_once('/') else {
        let ip: IpAddr = text_trimmed.parse().map_err(|_| invalid())?;
        return Ok(IpNet::from(ip));
    };
    let ip: IpAddr = address.parse().map_err(|_| invalid())?;
    let net = if let Ok(length) = prefix.parse::<u8>() {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        IpNet::new(ip, length).map_err(|_| {
            format!("invalid address range {text:?}: the prefix length is at most {max}")
        })?
    } else {
        let mask: IpAddr = prefix.parse().map_err(|_| invalid())?;
        if mask.is_ipv4() != ip.is_ipv4() {
            return Err(invalid());
        }
        IpNet::with_netmask(ip, mask).map_err(|_| {
            format!("invalid address range {text:?}: {prefix} is not a contiguous netmask")
        })?
    };
    Ok(net.trunc())
}

/// `IP:port`, with IPv6 in brackets. Host names are not accepted: a listener binds an address.
pub fn parse_listen_address(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse().map_err(|_| {
        format!(
            "invalid address {text:?}: write IP:port, such as \"0.0.0.0:25\", \"10.0.0.5:25\" \
             or \"[::]:25\""
        )
    })
}

/// `*`, `*.contoso.com` or `contoso.com`; lower-cased, without a trailing dot.
pub fn parse_domain_pattern(text: &str) -> Result<DomainPattern, String> {
    let invalid = || {
        format!(
            "invalid domain {text:?}: write \"contoso.com\" (exactly that domain), \
             \"*.contoso.com\" (its subdomains) or \"*\" (every other domain)"
        )
    };
    let lower = text.trim().to_lowercase();
    let domain = lower.strip_suffix('.').unwrap_or(&lower);
    if domain == "*" {
        return Ok(DomainPattern::Any);
    }
    let (subdomains, name) = match domain.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, domain),
    };
    let label_ok = |label: &str| {
        !label.is_empty()
            && label
                .chars()
                .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
    };
    if !name.split('.').all(label_ok) {
        return Err(invalid());
    }
    Ok(if subdomains {
        DomainPattern::Subdomains(name.to_string())
    } else {
        DomainPattern::Exact(name.to_string())
    })
}

/// The pattern as it would be written, for messages and duplicate detection.
pub fn pattern_text(pattern: &DomainPattern) -> String {
    match pattern {
        DomainPattern::Any => "*".to_string(),
        DomainPattern::Subdomains(domain) => format!("*.{domain}"),
        DomainPattern::Exact(domain) => domain.clone(),
    }
}

/// A host name as RFC 1123 allows it: ASCII letters, digits and hyphens in dot-separated labels.
/// This is what goes into EHLO and `Received:`, so nothing else may slip through.
pub fn is_host_name(text: &str) -> bool {
    let name = text.strip_suffix('.').unwrap_or(text);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// An upstream host: a DNS name or an IP address (IPv6 with or without brackets, stored without).
pub fn parse_upstream_host(text: &str) -> Result<String, String> {
    let trimmed = text.trim();
    let unbracketed = trimmed
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(trimmed);
    if unbracketed.parse::<IpAddr>().is_ok() || is_host_name(unbracketed) {
        return Ok(unbracketed.to_string());
    }
    if let Some((host, port)) = trimmed.rsplit_once(':')
        && port.parse::<u16>().is_ok()
        && host.parse::<Ipv6Addr>().is_err()
    {
        return Err(format!(
            "host {text:?} contains a port: write the host alone and the port in `port`"
        ));
    }
    Err(format!(
        "invalid host {text:?}: write a host name (\"smtp.office365.com\") or an IP address"
    ))
}

/// What `password_env` may name. Anything else is more likely a password pasted into the wrong
/// key, which must then not be repeated in an error message.
pub fn is_env_var_name(text: &str) -> bool {
    let mut bytes = text.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `"30/1m"`, `"10000/1d"`, `"100/10m"`, `"30/m"` (a bare unit means one of it), or `"unlimited"`
/// (`None`). The count is at least 1 and the window longer than zero.
pub fn parse_rate(text: &str) -> Result<Option<Rate>, String> {
    let invalid = || {
        format!(
            "invalid rate {text:?}: write a count and a window, such as \"30/1m\" (30 per minute) \
             or \"10000/1d\" (10,000 per day), or \"unlimited\""
        )
    };
    let trimmed = text.trim();
    if trimmed.eq_ignore_ascii_case("unlimited") {
        return Ok(None);
    }
    let (count, window) = trimmed.split_once('/').ok_or_else(invalid)?;
    let count: u32 = count
        .trim()
        .replace('_', "")
        .parse()
        .map_err(|_| invalid())?;
    if count == 0 {
        return Err(format!(
            "invalid rate {text:?}: the count must be at least 1 (or write \"unlimited\")"
        ));
    }
    let window = window.trim();
    let window = if window.starts_with(|c: char| c.is_ascii_alphabetic()) {
        format!("1{window}")
    } else {
        window.to_string()
    };
    let per = humantime::parse_duration(&window).map_err(|_| invalid())?;
    if per.is_zero() {
        return Err(format!(
            "invalid rate {text:?}: the window must be longer than zero"
        ));
    }
    Ok(Some(Rate { count, per }))
}

/// A plain domain (`contoso.com`, lower-cased, without a trailing dot): no pattern, no address.
pub fn parse_plain_domain(text: &str) -> Result<String, String> {
    match parse_domain_pattern(text) {
        Ok(DomainPattern::Exact(domain)) => Ok(domain),
        _ => Err(format!(
            "invalid domain {text:?}: write a domain name such as \"contoso.com\" (no \"*\", no \
             address)"
        )),
    }
}

/// The Microsoft 365 MX endpoint of a domain: `contoso.com` → `contoso-com.mail.protection.outlook.com`
/// (dots become hyphens). Tenants created lately may have an MX under `mx.microsoft` instead; then
/// `host` is written out.
pub fn tenant_mx_host(domain: &str) -> String {
    format!(
        "{}.mail.protection.outlook.com",
        domain.to_ascii_lowercase().replace('.', "-")
    )
}

/// An `https://` URL (or `http://` to this machine, for tests and local proxies: a secret or token
/// must not cross a network in the clear). Returned without a trailing `/`.
pub fn parse_endpoint_url(text: &str) -> Result<String, String> {
    let trimmed = text.trim().trim_end_matches('/');
    let (scheme, rest) = trimmed.split_once("://").ok_or_else(|| {
        format!(
            "invalid URL {text:?}: write it in full, e.g. \"https://login.microsoftonline.com/...\""
        )
    })?;
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host),
    };
    if host.is_empty()
        || rest.contains(char::is_whitespace)
        || !(host.parse::<IpAddr>().is_ok() || is_host_name(host))
    {
        return Err(format!("invalid URL {text:?}: it has no valid host name"));
    }
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    match scheme.to_ascii_lowercase().as_str() {
        "https" => Ok(trimmed.to_string()),
        "http" if loopback => Ok(trimmed.to_string()),
        "http" => Err(format!(
            "URL {text:?} is not https: credentials and tokens must not travel in the clear \
             (http:// is allowed only to this machine)"
        )),
        _ => Err(format!("invalid URL {text:?}: it must start with https://")),
    }
}

/// A route name made safe as a file name (`token_file`'s default): anything but letters, digits,
/// `-`, `_` and `.` becomes `_`, and a leading `.` too.
pub fn file_name_for(name: &str) -> String {
    let mut safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe.starts_with('.') || safe.is_empty() {
        safe.insert(0, '_');
    }
    safe
}

/// Levenshtein distance, for "did you mean" hints on misspelt keys.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let cases: &[(&str, Option<u64>)] = &[
            ("35MiB", Some(35 * 1024 * 1024)),
            ("35 MiB", Some(35 * 1024 * 1024)),
            ("35mib", Some(35 * 1024 * 1024)),
            ("35MB", Some(35_000_000)),
            ("1024KB", Some(1_024_000)),
            ("10KiB", Some(10_240)),
            ("1.5GiB", Some(1_610_612_736)),
            ("0.5KB", Some(500)),
            ("1048576", Some(1_048_576)),
            ("1_048_576", Some(1_048_576)),
            ("512B", Some(512)),
            ("", None),
            ("MiB", None),
            ("35MBs", None),
            ("35 M", None),
            ("-5MB", None),
            ("1.MB", None),
            ("1.2.3MB", None),
            ("99999999999GiB", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_size(text).ok(), *expected, "{text:?}");
        }
    }

    #[test]
    fn durations() {
        let cases: &[(&str, Option<u64>)] = &[
            ("30s", Some(30)),
            ("5m", Some(300)),
            ("2h", Some(7200)),
            ("1d", Some(86_400)),
            ("1h 30m", Some(5400)),
            ("5", None),
            ("five minutes", None),
        ];
        for (text, expected) in cases {
            assert_eq!(
                parse_duration(text).ok().map(|d| d.as_secs()),
                *expected,
                "{text:?}"
            );
        }
    }

    #[test]
    fn address_ranges() {
        let cases: &[(&str, Option<&str>)] = &[
            ("10.0.0.0/8", Some("10.0.0.0/8")),
            ("10.1.2.3/8", Some("10.0.0.0/8")),
            ("192.168.1.20", Some("192.168.1.20/32")),
            ("::1", Some("::1/128")),
            ("fd00::/8", Some("fd00::/8")),
            ("10.0.0.0/255.0.0.0", Some("10.0.0.0/8")),
            (" 10.0.0.0/8 ", Some("10.0.0.0/8")),
            ("10.0.0/8", None),
            ("10.0.0.0/33", None),
            ("10.0.0.0/255.0.255.0", None),
            ("10.0.0.0/ffff::", None),
            ("contoso.com", None),
            ("", None),
        ];
        for (text, expected) in cases {
            let got = parse_net(text).ok().map(|net| net.to_string());
            assert_eq!(got.as_deref(), *expected, "{text:?}");
        }
    }

    #[test]
    fn domain_patterns() {
        use DomainPattern::*;
        let cases: &[(&str, Option<DomainPattern>)] = &[
            ("*", Some(Any)),
            ("contoso.com", Some(Exact("contoso.com".into()))),
            ("Contoso.COM.", Some(Exact("contoso.com".into()))),
            ("*.contoso.com", Some(Subdomains("contoso.com".into()))),
            ("localhost", Some(Exact("localhost".into()))),
            ("", None),
            ("@contoso.com", None),
            ("*contoso.com", None),
            ("a.*.com", None),
            ("contoso..com", None),
            ("*.", Some(Any)),
            ("*.*", None),
            ("user@contoso.com", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_domain_pattern(text).ok(), *expected, "{text:?}");
        }
    }

    #[test]
    fn upstream_hosts() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("smtp.office365.com", Ok("smtp.office365.com")),
            ("10.0.0.7", Ok("10.0.0.7")),
            ("2001:db8::1", Ok("2001:db8::1")),
            ("[2001:db8::1]", Ok("2001:db8::1")),
            ("smtp.office365.com:587", Err("contains a port")),
            ("smtp office365", Err("invalid host")),
            ("", Err("invalid host")),
        ];
        for (text, expected) in cases {
            match (parse_upstream_host(text), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, *want, "{text:?}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{text:?}: {got}"),
                (got, want) => panic!("{text:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn host_names() {
        for good in [
            "relay01",
            "relay01.contoso.com",
            "a-b.c",
            "relay01.contoso.com.",
        ] {
            assert!(is_host_name(good), "{good}");
        }
        for bad in [
            "",
            "relay 01",
            "-a.b",
            "a..b",
            "a_b",
            "relay\r\n",
            "[10.0.0.1]",
        ] {
            assert!(!is_host_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn env_var_names() {
        assert!(is_env_var_name("SMARTHOST_M365_PASSWORD"));
        assert!(is_env_var_name("_x1"));
        assert!(!is_env_var_name("1X"));
        assert!(!is_env_var_name("Pa$$w0rd!"));
        assert!(!is_env_var_name(""));
    }

    #[test]
    fn rates() {
        let minute = Duration::from_secs(60);
        let day = Duration::from_secs(86_400);
        let rate = |count, per| Some(Some(Rate { count, per }));
        let cases: &[(&str, Option<Option<Rate>>)] = &[
            ("30/1m", rate(30, minute)),
            ("30/m", rate(30, minute)),
            (" 30 / 1m ", rate(30, minute)),
            ("10000/1d", rate(10_000, day)),
            ("10_000/1d", rate(10_000, day)),
            ("100/10m", rate(100, 10 * minute)),
            ("unlimited", Some(None)),
            ("Unlimited", Some(None)),
            ("0/1m", None),
            ("30/0s", None),
            ("30", None),
            ("30 per minute", None),
            ("-1/1m", None),
            ("x/1m", None),
            ("30/fortnight", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_rate(text).ok(), *expected, "{text:?}");
        }
    }

    #[test]
    fn tenant_mx_hosts_replace_dots_with_hyphens() {
        assert_eq!(
            tenant_mx_host("contoso.com"),
            "contoso-com.mail.protection.outlook.com"
        );
        assert_eq!(
            tenant_mx_host("Fabrikam.co.UK"),
            "fabrikam-co-uk.mail.protection.outlook.com"
        );
    }

    #[test]
    fn endpoint_urls() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            (
                "https://login.microsoftonline.com/contoso.com/oauth2/v2.0/token",
                Ok("https://login.microsoftonline.com/contoso.com/oauth2/v2.0/token"),
            ),
            (
                "https://graph.microsoft.com/v1.0/",
                Ok("https://graph.microsoft.com/v1.0"),
            ),
            (
                "http://127.0.0.1:8080/token",
                Ok("http://127.0.0.1:8080/token"),
            ),
            ("http://localhost/token", Ok("http://localhost/token")),
            ("http://[::1]:99/token", Ok("http://[::1]:99/token")),
            ("http://login.example/token", Err("is not https")),
            ("login.microsoftonline.com/x", Err("write it in full")),
            ("ftp://login.example/x", Err("must start with https://")),
            ("https:///x", Err("no valid host name")),
            ("https://bad host/x", Err("no valid host name")),
        ];
        for (text, expected) in cases {
            match (parse_endpoint_url(text), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, *want, "{text:?}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{text:?}: {got}"),
                (got, want) => panic!("{text:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn file_names_for_route_names() {
        assert_eq!(file_name_for("m365"), "m365");
        assert_eq!(file_name_for("m365 scanners/1"), "m365_scanners_1");
        assert_eq!(file_name_for("../etc"), "_.._etc");
        assert_eq!(file_name_for(""), "_");
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("max_recipient", "max_recipients"), 1);
        assert_eq!(edit_distance("hots", "host"), 2);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }
}
