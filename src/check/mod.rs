//! `smarthost check`: the DNS and certificate checks of the troubleshooting steps (SPF of the
//! sending domain, block lists, the MX of the tenant, the connector certificate). The evaluators
//! are generic over [`dns::Lookup`] so they are tested over a table; `cli::check` prints.
//! `upstream` tests a route's upstream step by step (`smarthost test upstream`); `doctor` gathers
//! every check into a table of findings (`smarthost doctor`).

pub mod cert;
pub mod dns;
pub mod dnsbl;
pub mod doctor;
pub mod mx;
pub mod spf;
pub mod upstream;

/// A Unix time as `2026-11-29` (certificate dates in `check`, `doctor` and `test upstream`).
pub(crate) fn date(unix: i64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| unix.to_string())
}
