//! SPF (RFC 7208) evaluation of one address for one domain, with the records looked at, and the
//! record to publish for Direct Send or a connector (`v=spf1 ip4:IP include:spf.protection.outlook.com
//! -all`, merged into the existing record).
//!
//! Supported: `ip4`, `ip6`, `a`, `mx` (with `/cidr` and `//cidr6`), `include`, `exists`, `ptr`
//! (counted, never matches: RFC 7208 says not to use it), `all`, the qualifiers `+ - ~ ?`,
//! `redirect=` (`exp=` and unknown modifiers are ignored), the macros `%{d}`, `%{i}`, `%{v}`,
//! `%{h}` with the `r` transformer and digits, `%%`, `%_`, `%-`. Limits: 10 DNS-querying terms,
//! 2 void look-ups, 10 MX names; a domain included from itself is a loop (permerror).

use super::dns::{DnsError, Lookup};
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

/// The include Microsoft 365 publishes for its outbound servers.
pub const MICROSOFT_INCLUDE: &str = "spf.protection.outlook.com";
const MAX_LOOKUPS: u32 = 10;
const MAX_VOID: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpfResult {
    Pass,
    Fail,
    SoftFail,
    Neutral,
    None,
    PermError,
    TempError,
}

impl fmt::Display for SpfResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SpfResult::Pass => "pass",
            SpfResult::Fail => "fail",
            SpfResult::SoftFail => "softfail",
            SpfResult::Neutral => "neutral",
            SpfResult::None => "none",
            SpfResult::PermError => "permerror",
            SpfResult::TempError => "temperror",
        })
    }
}

/// One record looked at: how deep (0 = the domain asked about), the domain, and its record (or
/// what was found instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainEntry {
    pub depth: usize,
    pub domain: String,
    pub record: Result<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfOutcome {
    pub result: SpfResult,
    /// Why: the term that matched, or the error.
    pub reason: String,
    pub chain: Vec<ChainEntry>,
    /// The domain's own record, when it has exactly one.
    pub record: Option<String>,
    /// DNS-querying terms used.
    pub lookups: u32,
}

/// Evaluates SPF for `ip` sending as `domain`.
pub async fn check<L: Lookup>(dns: &L, domain: &str, ip: IpAddr) -> SpfOutcome {
    let domain = normalise(domain);
    let mut eval = Evaluator {
        dns,
        ip,
        lookups: 0,
        voids: 0,
        chain: Vec::new(),
        stack: Vec::new(),
    };
    let (result, reason) = match eval.check_host(domain.clone(), 0).await {
        Ok(Verdict { result, reason }) => (result, reason),
        Err(Abort::Perm(reason)) => (SpfResult::PermError, reason),
        Err(Abort::Temp(reason)) => (SpfResult::TempError, reason),
    };
    let record = eval
        .chain
        .iter()
        .find(|e| e.depth == 0)
        .and_then(|e| e.record.clone().ok());
    SpfOutcome {
        result,
        reason,
        chain: eval.chain,
        record,
        lookups: eval.lookups,
    }
}

/// The record to publish so that `ip` passes and Microsoft 365's servers stay allowed: the
/// existing record's terms (its `all` qualifier or redirect kept), the address and the Microsoft
/// include added when missing. `None`: nothing to add.
pub fn suggested_record(existing: Option<&str>, ip: IpAddr, covered: bool) -> Option<String> {
    let address = match ip {
        IpAddr::V4(v4) => format!("ip4:{v4}"),
        IpAddr::V6(v6) => format!("ip6:{v6}"),
    };
    let mut terms: Vec<String> = Vec::new();
    let mut all = "-all".to_string();
    let mut redirect = None;
    let mut has_microsoft = false;
    let mut has_address = covered;
    for term in existing
        .map(|r| r.split_ascii_whitespace().skip(1).collect::<Vec<_>>())
        .unwrap_or_default()
    {
        let lower = term.to_ascii_lowercase();
        let bare = lower.trim_start_matches(['+', '-', '~', '?']);
        if bare == "all" {
            all = term.to_string();
            continue;
        }
        if lower.starts_with("redirect=") {
            redirect = Some(term.to_string());
            continue;
        }
        if bare == format!("include:{MICROSOFT_INCLUDE}") {
            has_microsoft = true;
        }
        if bare == address || bare == format!("{address}/32") || bare == format!("{address}/128") {
            has_address = true;
        }
        terms.push(term.to_string());
    }
    if has_address && has_microsoft {
        return None;
    }
    let mut out = vec!["v=spf1".to_string()];
    if !has_address {
        out.push(address);
    }
    out.extend(terms);
    if !has_microsoft {
        out.push(format!("include:{MICROSOFT_INCLUDE}"));
    }
    // A redirect is ignored when the record has `all`: keep whichever the record had.
    out.push(match (redirect, existing) {
        (Some(r), _) => r,
        _ => all,
    });
    Some(out.join(" "))
}

struct Verdict {
    result: SpfResult,
    reason: String,
}

enum Abort {
    Perm(String),
    Temp(String),
}

impl From<DnsError> for Abort {
    fn from(e: DnsError) -> Self {
        Abort::Temp(format!("DNS look-up failed: {e}"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Qualifier {
    Pass,
    Fail,
    SoftFail,
    Neutral,
}

impl Qualifier {
    fn result(self) -> SpfResult {
        match self {
            Qualifier::Pass => SpfResult::Pass,
            Qualifier::Fail => SpfResult::Fail,
            Qualifier::SoftFail => SpfResult::SoftFail,
            Qualifier::Neutral => SpfResult::Neutral,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Mechanism {
    All,
    Include(String),
    A(Option<String>, u8, u8),
    Mx(Option<String>, u8, u8),
    Ptr,
    Ip(IpAddr, u8),
    Exists(String),
}

type Terms = (Vec<(Qualifier, Mechanism, String)>, Option<String>);

struct Evaluator<'a, L> {
    dns: &'a L,
    ip: IpAddr,
    lookups: u32,
    voids: u32,
    chain: Vec<ChainEntry>,
    stack: Vec<String>,
}

type Boxed<'b, T> = Pin<Box<dyn Future<Output = T> + 'b>>;

impl<L: Lookup> Evaluator<'_, L> {
    fn count_lookup(&mut self, term: &str) -> Result<(), Abort> {
        self.lookups += 1;
        if self.lookups > MAX_LOOKUPS {
            return Err(Abort::Perm(format!(
                "more than {MAX_LOOKUPS} DNS look-ups (at `{term}`): receivers stop there; \
                 flatten includes or remove unused ones"
            )));
        }
        Ok(())
    }

    fn count_void(&mut self, term: &str, empty: bool) -> Result<(), Abort> {
        if empty {
            self.voids += 1;
            if self.voids > MAX_VOID {
                return Err(Abort::Perm(format!(
                    "more than {MAX_VOID} look-ups found nothing (at `{term}`): remove terms \
                     naming domains without records"
                )));
            }
        }
        Ok(())
    }

    fn check_host(&mut self, domain: String, depth: usize) -> Boxed<'_, Result<Verdict, Abort>> {
        Box::pin(async move {
            if self.stack.contains(&domain) {
                return Err(Abort::Perm(format!(
                    "loop: {domain} includes itself (through {})",
                    self.stack.join(" → ")
                )));
            }
            let records: Vec<String> = self
                .dns
                .txt(&domain)
                .await?
                .into_iter()
                .filter(|r| is_spf(r))
                .collect();
            let record = match records.as_slice() {
                [] => {
                    self.chain.push(ChainEntry {
                        depth,
                        domain: domain.clone(),
                        record: Err("no SPF record".into()),
                    });
                    return Ok(Verdict {
                        result: SpfResult::None,
                        reason: format!("{domain} has no SPF record"),
                    });
                }
                [one] => one.clone(),
                several => {
                    self.chain.push(ChainEntry {
                        depth,
                        domain: domain.clone(),
                        record: Err(format!(
                            "{} SPF records: {}",
                            several.len(),
                            several.join(" | ")
                        )),
                    });
                    return Err(Abort::Perm(format!(
                        "{domain} has {} SPF records: there must be exactly one; merge them",
                        several.len()
                    )));
                }
            };
            self.chain.push(ChainEntry {
                depth,
                domain: domain.clone(),
                record: Ok(record.clone()),
            });
            let (terms, redirect) = parse(&record, &domain, self.ip)
                .map_err(|e| Abort::Perm(format!("{domain}: {e}")))?;
            self.stack.push(domain.clone());
            let outcome = self.evaluate(&domain, terms, redirect, depth).await;
            self.stack.pop();
            outcome
        })
    }

    async fn evaluate(
        &mut self,
        domain: &str,
        terms: Vec<(Qualifier, Mechanism, String)>,
        redirect: Option<String>,
        depth: usize,
    ) -> Result<Verdict, Abort> {
        for (qualifier, mechanism, text) in terms {
            if self.matches(&mechanism, &text, domain, depth).await? {
                return Ok(Verdict {
                    result: qualifier.result(),
                    reason: format!("`{text}` in the record of {domain} matched {}", self.ip),
                });
            }
        }
        if let Some(target) = redirect {
            self.count_lookup(&format!("redirect={target}"))?;
            let verdict = self.check_host(target.clone(), depth + 1).await?;
            if verdict.result == SpfResult::None {
                return Err(Abort::Perm(format!(
                    "redirect={target}: {target} has no SPF record"
                )));
            }
            return Ok(verdict);
        }
        Ok(Verdict {
            result: SpfResult::Neutral,
            reason: format!(
                "nothing in the record of {domain} matched {} (no `all`)",
                self.ip
            ),
        })
    }

    async fn matches(
        &mut self,
        mechanism: &Mechanism,
        text: &str,
        domain: &str,
        depth: usize,
    ) -> Result<bool, Abort> {
        let v6 = self.ip.is_ipv6();
        match mechanism {
            Mechanism::All => Ok(true),
            Mechanism::Ip(net, prefix) => Ok(in_prefix(self.ip, *net, *prefix)),
            Mechanism::Include(target) => {
                self.count_lookup(text)?;
                let verdict = self.check_host(target.clone(), depth + 1).await?;
                match verdict.result {
                    SpfResult::Pass => Ok(true),
                    SpfResult::Fail | SpfResult::SoftFail | SpfResult::Neutral => Ok(false),
                    SpfResult::None => {
                        Err(Abort::Perm(format!("`{text}`: {target} has no SPF record")))
                    }
                    SpfResult::PermError => Err(Abort::Perm(verdict.reason)),
                    SpfResult::TempError => Err(Abort::Temp(verdict.reason)),
                }
            }
            Mechanism::A(target, p4, p6) => {
                self.count_lookup(text)?;
                let name = target.clone().unwrap_or_else(|| domain.to_string());
                let found = self.dns.addresses(&name, v6).await?;
                self.count_void(text, found.is_empty())?;
                let prefix = if v6 { *p6 } else { *p4 };
                Ok(found.iter().any(|a| in_prefix(self.ip, *a, prefix)))
            }
            Mechanism::Mx(target, p4, p6) => {
                self.count_lookup(text)?;
                let name = target.clone().unwrap_or_else(|| domain.to_string());
                let hosts = self.dns.mx(&name).await?;
                self.count_void(text, hosts.is_empty())?;
                if hosts.len() > 10 {
                    return Err(Abort::Perm(format!(
                        "`{text}`: {name} has {} MX records, more than 10",
                        hosts.len()
                    )));
                }
                let prefix = if v6 { *p6 } else { *p4 };
                for (_, host) in hosts {
                    let found = self.dns.addresses(&host, v6).await?;
                    if found.iter().any(|a| in_prefix(self.ip, *a, prefix)) {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Mechanism::Exists(name) => {
                self.count_lookup(text)?;
                let found = self.dns.addresses(name, false).await?;
                self.count_void(text, found.is_empty())?;
                Ok(!found.is_empty())
            }
            Mechanism::Ptr => {
                self.count_lookup(text)?;
                Ok(false)
            }
        }
    }
}

fn is_spf(record: &str) -> bool {
    let lower = record.to_ascii_lowercase();
    lower == "v=spf1" || lower.starts_with("v=spf1 ")
}

fn normalise(domain: &str) -> String {
    domain.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn in_prefix(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// The record's terms in order, and its `redirect=` target; a syntax error is a permerror
/// (RFC 7208 section 4.6: the whole record is checked before anything is evaluated).
fn parse(record: &str, domain: &str, ip: IpAddr) -> Result<Terms, String> {
    let mut terms = Vec::new();
    let mut redirect = None;
    for term in record.split_ascii_whitespace().skip(1) {
        let lower = term.to_ascii_lowercase();
        // A modifier: name=value, the `=` before any `:` or `/`.
        if let Some(eq) = lower.find('=')
            && !lower[..eq].contains([':', '/'])
        {
            let name = &lower[..eq];
            if name.is_empty() || !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
                return Err(format!("`{term}` is not a valid term"));
            }
            if name == "redirect" {
                if redirect.is_some() {
                    return Err("two redirect= modifiers".into());
                }
                redirect = Some(expand(&term[eq + 1..], domain, ip)?);
            }
            continue;
        }
        let (qualifier, rest) = match lower.as_bytes()[0] {
            b'+' => (Qualifier::Pass, &term[1..]),
            b'-' => (Qualifier::Fail, &term[1..]),
            b'~' => (Qualifier::SoftFail, &term[1..]),
            b'?' => (Qualifier::Neutral, &term[1..]),
            _ => (Qualifier::Pass, term),
        };
        let (name, argument) = match rest.find([':', '/']) {
            Some(i) => (rest[..i].to_ascii_lowercase(), &rest[i..]),
            None => (rest.to_ascii_lowercase(), ""),
        };
        let bad = || format!("`{term}` is not a valid term");
        let target = |argument: &str| -> Result<String, String> {
            match argument.strip_prefix(':') {
                Some(spec) if !spec.is_empty() => expand(spec, domain, ip),
                _ => Err(bad()),
            }
        };
        let mechanism = match name.as_str() {
            "all" if argument.is_empty() => Mechanism::All,
            "include" => Mechanism::Include(target(argument)?),
            "exists" => Mechanism::Exists(target(argument)?),
            "ptr" => Mechanism::Ptr,
            "a" | "mx" => {
                let (spec, cidr) = match argument.find('/') {
                    Some(i) => (&argument[..i], &argument[i..]),
                    None => (argument, ""),
                };
                let target = if spec.is_empty() {
                    None
                } else {
                    Some(target(spec)?)
                };
                let (p4, p6) = dual_cidr(cidr).ok_or_else(bad)?;
                if name == "a" {
                    Mechanism::A(target, p4, p6)
                } else {
                    Mechanism::Mx(target, p4, p6)
                }
            }
            "ip4" | "ip6" => {
                let value = argument.strip_prefix(':').ok_or_else(bad)?;
                let (address, prefix) = match value.split_once('/') {
                    Some((a, p)) => (a, Some(p)),
                    None => (value, None),
                };
                let address: IpAddr = address.parse().map_err(|_| bad())?;
                let max = if address.is_ipv4() { 32 } else { 128 };
                if (name == "ip4") != address.is_ipv4() {
                    return Err(bad());
                }
                let prefix = match prefix {
                    Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
                    None => max,
                };
                Mechanism::Ip(address, prefix)
            }
            _ => return Err(format!("unknown mechanism `{term}`")),
        };
        terms.push((qualifier, mechanism, term.to_string()));
    }
    Ok((terms, redirect))
}

/// `/24`, `//64`, `/24//64` or nothing → (IPv4 prefix, IPv6 prefix).
fn dual_cidr(cidr: &str) -> Option<(u8, u8)> {
    if cidr.is_empty() {
        return Some((32, 128));
    }
    let (v4, v6) = match cidr.split_once("//") {
        Some((v4, v6)) => (v4, Some(v6)),
        None => (cidr, None),
    };
    let p4 = match v4.strip_prefix('/') {
        Some(p) => p.parse::<u8>().ok().filter(|p| *p <= 32)?,
        None if v4.is_empty() => 32,
        None => return None,
    };
    let p6 = match v6 {
        Some(p) => p.parse::<u8>().ok().filter(|p| *p <= 128)?,
        None => 128,
    };
    Some((p4, p6))
}

/// Macro expansion (RFC 7208 section 7) for the letters that need no sender: d, i, v, h.
fn expand(spec: &str, domain: &str, ip: IpAddr) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = spec.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some('_') => out.push(' '),
            Some('-') => out.push_str("%20"),
            Some('{') => {
                let body: String = chars.by_ref().take_while(|c| *c != '}').collect();
                let mut body_chars = body.chars();
                let letter = body_chars.next().map(|c| c.to_ascii_lowercase());
                let rest: String = body_chars.collect();
                let value = match letter {
                    Some('d') => domain.to_string(),
                    Some('i') => match ip {
                        IpAddr::V4(v4) => v4.to_string(),
                        IpAddr::V6(_) => super::dnsbl::nibbles(ip).join("."),
                    },
                    Some('v') if ip.is_ipv4() => "in-addr".into(),
                    Some('v') => "ip6".into(),
                    Some('h') => domain.to_string(),
                    _ => {
                        return Err(format!(
                            "the macro %{{{body}}} needs the sender, which this check does not have"
                        ));
                    }
                };
                let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                let reverse = rest[digits.len()..].starts_with(['r', 'R']);
                let mut parts: Vec<&str> = value.split('.').collect();
                if reverse {
                    parts.reverse();
                }
                if let Ok(keep) = digits.parse::<usize>()
                    && keep < parts.len()
                {
                    parts.drain(..parts.len() - keep);
                }
                out.push_str(&parts.join("."));
            }
            _ => return Err(format!("bad macro in `{spec}`")),
        }
    }
    Ok(normalise(&out))
}

#[cfg(test)]
mod tests;
