//! `smarthost check`: the DNS and certificate checks of the troubleshooting steps (SPF of the
//! sending domain, block lists, the MX of the tenant, the connector certificate). The evaluators
//! are generic over [`dns::Lookup`] so they are tested over a table; `cli::check` prints.

pub mod cert;
pub mod dns;
pub mod dnsbl;
pub mod mx;
pub mod spf;
