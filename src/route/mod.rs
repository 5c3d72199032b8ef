//! Recipient domain → route. The most specific pattern wins: an exact domain, then the longest
//! `*.suffix`, then `*`. Among equals, the route written first wins.

use crate::config::{DomainPattern, RouteConfig};

#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<RouteConfig>,
}

/// How specific a pattern's match is; larger is more specific.
fn specificity(pattern: &DomainPattern, domain: &str) -> Option<usize> {
    match pattern {
        DomainPattern::Any => Some(0),
        DomainPattern::Exact(d) => (d == domain).then_some(usize::MAX),
        DomainPattern::Subdomains(suffix) => {
            let matches = domain.len() > suffix.len()
                && domain.ends_with(suffix.as_str())
                && domain.as_bytes()[domain.len() - suffix.len() - 1] == b'.';
            matches.then_some(suffix.len() + 1)
        }
    }
}

/// The domain of an address, lower-cased, without a trailing dot; `None` for a bare local part.
pub fn recipient_domain(address: &str) -> Option<String> {
    let (_, domain) = address.rsplit_once('@')?;
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    (!domain.is_empty()).then_some(domain)
}

impl Router {
    pub fn new(routes: Vec<RouteConfig>) -> Self {
        Router { routes }
    }

    pub fn routes(&self) -> &[RouteConfig] {
        &self.routes
    }

    /// The index of the route for `address`, or `None` when no route takes its domain.
    pub fn route_for(&self, address: &str) -> Option<usize> {
        let domain = recipient_domain(address)?;
        let mut best: Option<(usize, usize)> = None;
        for (index, route) in self.routes.iter().enumerate() {
            for pattern in &route.domains {
                if let Some(score) = specificity(pattern, &domain)
                    && best.is_none_or(|(_, s)| score > s)
                {
                    best = Some((index, score));
                }
            }
        }
        best.map(|(index, _)| index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Transport;
    use std::path::PathBuf;

    fn route(name: &str, patterns: &[DomainPattern]) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            domains: patterns.to_vec(),
            transport: Transport::Drop {
                path: PathBuf::from("/tmp"),
            },
            schedule: Default::default(),
            mode: None,
            limits: Default::default(),
            rewrite_sender: None,
            accepted_domains: Vec::new(),
        }
    }

    #[test]
    fn most_specific_route_wins() {
        use DomainPattern::*;
        let router = Router::new(vec![
            route("default", &[Any]),
            route("subs", &[Subdomains("contoso.com".into())]),
            route("deep", &[Subdomains("eu.contoso.com".into())]),
            route("exact", &[Exact("contoso.com".into())]),
        ]);
        let cases = [
            ("a@contoso.com", Some("exact")),
            ("a@CONTOSO.COM.", Some("exact")),
            ("a@mail.contoso.com", Some("subs")),
            ("a@x.eu.contoso.com", Some("deep")),
            ("a@notcontoso.com", Some("default")),
            ("a@example.org", Some("default")),
            ("postmaster", None),
        ];
        for (address, expected) in cases {
            let got = router
                .route_for(address)
                .map(|i| router.routes()[i].name.as_str());
            assert_eq!(got, expected, "{address}");
        }
    }

    #[test]
    fn without_default_route_unknown_domains_have_none() {
        let router = Router::new(vec![route(
            "only",
            &[DomainPattern::Exact("contoso.com".into())],
        )]);
        assert_eq!(router.route_for("a@fabrikam.com"), None);
        assert_eq!(router.route_for("a@contoso.com"), Some(0));
    }
}
