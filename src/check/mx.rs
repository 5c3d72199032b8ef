//! A domain's MX records, and whether they are Microsoft 365's: then the endpoint for Direct Send
//! and connectors is the MX host, port 25.

use super::dns::{DnsError, Lookup};

/// The endpoint derived from a domain the way `tenant_domain` does (dots become hyphens).
pub fn derived_endpoint(domain: &str) -> String {
    format!(
        "{}.mail.protection.outlook.com",
        domain
            .trim()
            .trim_end_matches('.')
            .to_ascii_lowercase()
            .replace('.', "-")
    )
}

/// Whether `host` is a Microsoft 365 MX (`*.mail.protection.outlook.com`, or `*.mx.microsoft`
/// for tenants created lately).
pub fn is_microsoft(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host.ends_with(".mail.protection.outlook.com") || host.ends_with(".mx.microsoft")
}

/// The MX records of `domain`, most preferred first.
pub async fn records<L: Lookup>(dns: &L, domain: &str) -> Result<Vec<(u16, String)>, DnsError> {
    let mut records = dns.mx(domain.trim().trim_end_matches('.')).await?;
    records.sort();
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            derived_endpoint("Contoso.com."),
            "contoso-com.mail.protection.outlook.com"
        );
        assert!(is_microsoft("contoso-com.mail.protection.outlook.com."));
        assert!(is_microsoft("contoso-com.j-v1.mx.microsoft"));
        assert!(!is_microsoft("mx.contoso.com"));
        assert!(!is_microsoft("evilmail.protection.outlook.com.example"));
    }
}
