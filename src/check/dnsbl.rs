//! DNS block lists: is an address listed (an A record under `<reversed address>.<list>`), and what
//! the answer code means (Spamhaus ZEN's codes explained).

use super::dns::{DnsError, Lookup};
use std::net::{IpAddr, Ipv4Addr};

/// The lists asked when none are given.
pub const DEFAULT_LISTS: [&str; 2] = ["zen.spamhaus.org", "bl.spamcop.net"];

/// What one list said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listing {
    /// No A record: not listed.
    NotListed,
    /// Listed: each answer with its meaning, and the list's TXT reason when it gives one.
    Listed {
        answers: Vec<(IpAddr, String)>,
        reason: Option<String>,
    },
    /// The list refused to answer (Spamhaus's 127.255.255.x): not known.
    Refused(String),
    /// No answer at all.
    Error(DnsError),
}

/// `192.0.2.1` → `1.2.0.192`; IPv6: the 32 nibbles, last first.
pub fn reversed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}")
        }
        IpAddr::V6(_) => {
            let mut parts = nibbles(ip);
            parts.reverse();
            parts.join(".")
        }
    }
}

/// The 32 hexadecimal nibbles of an IPv6 address, first first (IPv4: its four octets).
pub fn nibbles(ip: IpAddr) -> Vec<String> {
    match ip {
        IpAddr::V4(v4) => v4.octets().iter().map(u8::to_string).collect(),
        IpAddr::V6(v6) => v6
            .octets()
            .iter()
            .flat_map(|b| [b >> 4, b & 0xf])
            .map(|n| format!("{n:x}"))
            .collect(),
    }
}

/// Asks `list` about `ip`.
pub async fn query<L: Lookup>(dns: &L, list: &str, ip: IpAddr) -> Listing {
    let list = list.trim().trim_end_matches('.').to_ascii_lowercase();
    let name = format!("{}.{list}", reversed(ip));
    let answers = match dns.addresses(&name, false).await {
        Ok(a) => a,
        Err(e) => return Listing::Error(e),
    };
    if answers.is_empty() {
        return Listing::NotListed;
    }
    if let Some(refused) = answers.iter().find_map(|a| refusal(*a)) {
        return Listing::Refused(refused);
    }
    let reason = dns.txt(&name).await.ok().and_then(|t| t.into_iter().next());
    Listing::Listed {
        answers: answers.iter().map(|a| (*a, meaning(&list, *a))).collect(),
        reason,
    }
}

/// Spamhaus's answers that say the query was not answered.
fn refusal(answer: IpAddr) -> Option<String> {
    let advice = "ask through a resolver of your own (not a public one such as 8.8.8.8 or \
                  1.1.1.1, nor a forwarder to one): pass --dns-server, or use a Spamhaus DQS key";
    match answer {
        IpAddr::V4(v4) if v4 == Ipv4Addr::new(127, 255, 255, 252) => {
            Some("127.255.255.252: the query was malformed (typing error in the list name?)".into())
        }
        IpAddr::V4(v4) if v4 == Ipv4Addr::new(127, 255, 255, 254) => Some(format!(
            "127.255.255.254: the query came through a public or open resolver, which the list \
             refuses; {advice}"
        )),
        IpAddr::V4(v4) if v4 == Ipv4Addr::new(127, 255, 255, 255) => Some(format!(
            "127.255.255.255: too many queries from this resolver (rate limited); {advice}"
        )),
        _ => None,
    }
}

/// What an answer code means.
pub fn meaning(list: &str, answer: IpAddr) -> String {
    let IpAddr::V4(v4) = answer else {
        return "listed".into();
    };
    let [a, b, c, d] = v4.octets();
    if !list.ends_with("spamhaus.org") {
        return if (a, b, c) == (127, 0, 0) {
            format!("listed (code 127.0.0.{d})")
        } else {
            format!("listed ({v4})")
        };
    }
    if (a, b, c) != (127, 0, 0) {
        return format!("unexpected answer {v4}");
    }
    match d {
        2 => "SBL: the Spamhaus Block List, a source of spam (see check.spamhaus.org)".into(),
        3 => "SBL CSS: the address sent snowshoe spam or has a bad reputation; secure the \
              host, then request removal at check.spamhaus.org"
            .into(),
        4..=7 => "XBL: the address is infected or exploited (a bot, an open proxy); clean the \
                  hosts behind it, then request removal at check.spamhaus.org"
            .into(),
        9 => "DROP: the network is hijacked or run by spammers".into(),
        10 | 11 => "PBL: an end-user (dynamic) address that should not send mail directly; \
                    send through Microsoft 365 client submission, or ask the ISP for a static \
                    address and remove it at check.spamhaus.org"
            .into(),
        _ => format!("listed (code 127.0.0.{d})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_reversed() {
        assert_eq!(reversed("192.0.2.1".parse().unwrap()), "1.2.0.192");
        let v6 = reversed("2001:db8::1".parse().unwrap());
        assert!(v6.starts_with("1.0.0.0.0.0.0.0."), "{v6}");
        assert!(v6.ends_with(".8.b.d.0.1.0.0.2"), "{v6}");
        assert_eq!(v6.split('.').count(), 32);
    }

    #[test]
    fn zen_codes_are_explained() {
        let zen = "zen.spamhaus.org";
        assert!(meaning(zen, "127.0.0.2".parse().unwrap()).starts_with("SBL:"));
        assert!(meaning(zen, "127.0.0.3".parse().unwrap()).starts_with("SBL CSS"));
        assert!(meaning(zen, "127.0.0.4".parse().unwrap()).starts_with("XBL"));
        assert!(meaning(zen, "127.0.0.9".parse().unwrap()).starts_with("DROP"));
        assert!(meaning(zen, "127.0.0.11".parse().unwrap()).starts_with("PBL"));
        assert!(
            refusal("127.255.255.254".parse().unwrap())
                .unwrap()
                .contains("public")
        );
        assert!(refusal("127.0.0.2".parse().unwrap()).is_none());
    }
}
