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
