//! The DNS look-ups the checks need, behind [`Lookup`] so the evaluators run over a table in unit
//! tests; [`DnsResolver`] is the real one (hickory-resolver: the system's resolver configuration,
//! or one name server given with `--dns-server`).

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveError, TokioResolver};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// A look-up that got no answer (timeout, SERVFAIL, unreachable server): RFC 7208's temperror.
/// A name that does not exist or has no records of the type is not an error: an empty answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsError(pub String);

impl std::fmt::Display for DnsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The record types the checks look up. Names are absolute, without the trailing dot.
pub trait Lookup {
    /// TXT records, each one's character-strings joined (RFC 7208 section 3.3).
    fn txt(&self, name: &str) -> impl Future<Output = Result<Vec<String>, DnsError>>;
    /// A records (`v6 = false`) or AAAA records (`v6 = true`).
    fn addresses(
        &self,
        name: &str,
        v6: bool,
    ) -> impl Future<Output = Result<Vec<IpAddr>, DnsError>>;
    /// MX records: preference and exchange (lower-case, no trailing dot).
    fn mx(&self, name: &str) -> impl Future<Output = Result<Vec<(u16, String)>, DnsError>>;
}

/// The real resolver.
pub struct DnsResolver {
    resolver: TokioResolver,
    /// What is asked, for messages: "the system resolver" or the address given.
    pub server: String,
}

impl DnsResolver {
    /// `server`: one name server (UDP, then TCP for truncated answers); `None`: the system's
    /// configuration (`/etc/resolv.conf`, on Windows the adapters' servers).
    pub fn new(server: Option<SocketAddr>) -> Result<Self, String> {
        let mut options = ResolverOpts::default();
        options.timeout = Duration::from_secs(3);
        options.attempts = 2;
        // Every answer fresh: the checks are run after a change in DNS.
        options.cache_size = 0;
        options.ndots = 0;
        match server {
            Some(address) => {
                let mut config = ResolverConfig::new();
                config.add_name_server(NameServerConfig::new(address, Protocol::Udp));
                config.add_name_server(NameServerConfig::new(address, Protocol::Tcp));
                let resolver =
                    TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
                        .with_options(options)
                        .build();
                Ok(DnsResolver {
                    resolver,
                    server: address.to_string(),
                })
            }
            None => {
                let mut builder = TokioResolver::builder_tokio().map_err(|e| {
                    format!(
                        "cannot read the system's DNS configuration ({e}); give a server with \
                         --dns-server IP:53"
                    )
                })?;
                let system = builder.options_mut();
                system.timeout = options.timeout;
                system.attempts = options.attempts;
                system.cache_size = 0;
                Ok(DnsResolver {
                    resolver: builder.build(),
                    server: "the system resolver".to_string(),
                })
            }
        }
    }

    async fn records(&self, name: &str, kind: RecordType) -> Result<Vec<RData>, DnsError> {
        let absolute = format!("{}.", name.trim_end_matches('.'));
        match self.resolver.lookup(absolute.as_str(), kind).await {
            Ok(lookup) => Ok(lookup
                .record_iter()
                .filter(|r| r.record_type() == kind)
                .map(|r| r.data().clone())
                .collect()),
            Err(e) if no_records(&e) => Ok(Vec::new()),
            Err(e) => Err(DnsError(format!("{kind} {name}: {e}"))),
        }
    }
}

fn no_records(e: &ResolveError) -> bool {
    e.is_no_records_found() || e.is_nx_domain()
}

impl Lookup for DnsResolver {
    async fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        let records = self.records(name, RecordType::TXT).await?;
        Ok(records
            .into_iter()
            .filter_map(|r| match r {
                RData::TXT(txt) => Some(
                    txt.txt_data()
                        .iter()
                        .map(|part| String::from_utf8_lossy(part))
                        .collect::<String>(),
                ),
                _ => None,
            })
            .collect())
    }

    async fn addresses(&self, name: &str, v6: bool) -> Result<Vec<IpAddr>, DnsError> {
        let kind = if v6 { RecordType::AAAA } else { RecordType::A };
        let records = self.records(name, kind).await?;
        Ok(records
            .into_iter()
            .filter_map(|r| match r {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect())
    }

    async fn mx(&self, name: &str) -> Result<Vec<(u16, String)>, DnsError> {
        let records = self.records(name, RecordType::MX).await?;
        Ok(records
            .into_iter()
            .filter_map(|r| match r {
                RData::MX(mx) => Some((
                    mx.preference(),
                    mx.exchange()
                        .to_ascii()
                        .trim_end_matches('.')
                        .to_ascii_lowercase(),
                )),
                _ => None,
            })
            .collect())
    }
}

/// A table of records for unit tests: names lower-case without the trailing dot.
#[cfg(test)]
#[derive(Default)]
pub struct FakeDns {
    pub txt: std::collections::HashMap<String, Vec<String>>,
    pub addresses: std::collections::HashMap<String, Vec<IpAddr>>,
    pub mx: std::collections::HashMap<String, Vec<(u16, String)>>,
    /// Names whose look-ups time out.
    pub broken: Vec<String>,
}

#[cfg(test)]
impl FakeDns {
    fn fail(&self, name: &str) -> Result<(), DnsError> {
        if self.broken.iter().any(|b| b == name) {
            return Err(DnsError(format!("{name}: timed out")));
        }
        Ok(())
    }
}

#[cfg(test)]
impl Lookup for FakeDns {
    async fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        self.fail(name)?;
        Ok(self.txt.get(name).cloned().unwrap_or_default())
    }
    async fn addresses(&self, name: &str, v6: bool) -> Result<Vec<IpAddr>, DnsError> {
        self.fail(name)?;
        let all = self.addresses.get(name).cloned().unwrap_or_default();
        Ok(all.into_iter().filter(|ip| ip.is_ipv6() == v6).collect())
    }
    async fn mx(&self, name: &str) -> Result<Vec<(u16, String)>, DnsError> {
        self.fail(name)?;
        Ok(self.mx.get(name).cloned().unwrap_or_default())
    }
}
