//! The configuration as the API shows it, written out by hand so that no secret can slip in through a
//! new field: passwords, client secrets and the admin token appear only as `"<redacted>"`, user
//! password hashes not at all.

use crate::config::{
    AuthMechanism, Config, Credential, DomainPattern, ListenerTls, M365Mode, OAuthConfig,
    OAuthGrant, Rate, RetrySchedule, RouteConfig, TlsMode, TlsVersion, Transport,
};
use serde_json::{Value, json};
use std::time::Duration;

const REDACTED: &str = "<redacted>";

/// `GET routes` (and the status page): where each route sends, no credentials.
pub fn routes(config: &Config) -> Vec<Value> {
    config.routes.iter().map(route_summary).collect()
}

fn route_summary(route: &RouteConfig) -> Value {
    let mut v = json!({
        "name": route.name,
        "domains": domains(&route.domains),
    });
    match &route.transport {
        Transport::Smtp(s) => {
            v["transport"] = json!("smtp");
            v["host"] = json!(s.host);
            v["port"] = json!(s.port);
            v["tls"] = json!(tls_mode(s.tls));
        }
        Transport::Graph(g) => {
            v["transport"] = json!("graph");
            v["mailbox"] = json!(g.mailbox);
            v["base_url"] = json!(g.base_url);
        }
        Transport::Drop { path } => {
            v["transport"] = json!("drop");
            v["path"] = json!(path.display().to_string());
        }
    }
    v
}

fn domains(domains: &[DomainPattern]) -> Vec<String> {
    domains
        .iter()
        .map(|d| match d {
            DomainPattern::Any => "*".to_string(),
            DomainPattern::Subdomains(s) => format!("*.{s}"),
            DomainPattern::Exact(s) => s.clone(),
        })
        .collect()
}

fn tls_mode(mode: TlsMode) -> &'static str {
    match mode {
        TlsMode::StartTls => "starttls",
        TlsMode::Implicit => "implicit",
        TlsMode::Opportunistic => "opportunistic",
        TlsMode::None => "none",
    }
}

fn secs(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn rate(r: &Option<Rate>) -> Value {
    match r {
        Some(r) => json!(format!("{}/{}", r.count, secs(r.per))),
        None => Value::Null,
    }
}

fn schedule(s: &RetrySchedule) -> Value {
    json!({
        "retry": s.retry.iter().map(|d| secs(*d)).collect::<Vec<_>>(),
        "delay_notice": s.delay_notice.map(secs),
        "expire": secs(s.expire),
    })
}

fn path(p: &Option<std::path::PathBuf>) -> Value {
    p.as_ref()
        .map_or(Value::Null, |p| json!(p.display().to_string()))
}

fn oauth(o: &OAuthConfig) -> Value {
    let grant = match &o.grant {
        OAuthGrant::ClientSecret(_) => {
            json!({ "flow": "client_secret", "client_secret": REDACTED })
        }
        OAuthGrant::ClientCertificate {
            certificate,
            private_key,
        } => json!({
            "flow": "certificate",
            "certificate_file": certificate.display().to_string(),
            "private_key_file": private_key.display().to_string(),
        }),
        OAuthGrant::DeviceCode {
            device_endpoint,
            token_file,
        } => json!({
            "flow": "device_code",
            "device_endpoint": device_endpoint,
            "token_file": token_file.display().to_string(),
        }),
    };
    json!({
        "tenant": o.tenant,
        "client_id": o.client_id,
        "grant": grant,
        "token_endpoint": o.token_endpoint,
        "scope": o.scope,
        "ca_file": path(&o.ca_file),
    })
}

fn route(r: &RouteConfig) -> Value {
    let mut v = route_summary(r);
    v["schedule"] = schedule(&r.schedule);
    v["mode"] = match r.mode {
        None => Value::Null,
        Some(M365Mode::ClientSubmission) => json!("client_submission"),
        Some(M365Mode::DirectSend) => json!("direct_send"),
        Some(M365Mode::Connector) => json!("connector"),
        Some(M365Mode::Hve) => json!("hve"),
        Some(M365Mode::Graph) => json!("graph"),
    };
    v["limits"] = json!({
        "message_rate": rate(&r.limits.message_rate),
        "recipient_rate": rate(&r.limits.recipient_rate),
        "recipients_per_message": r.limits.recipients_per_message,
        "throttle_backoff": secs(r.limits.throttle_backoff),
    });
    v["rewrite_sender"] = match &r.rewrite_sender {
        None => Value::Null,
        Some(rw) => json!({ "address": rw.address, "allowed_senders": rw.allowed_senders }),
    };
    v["accepted_domains"] = json!(r.accepted_domains);
    match &r.transport {
        Transport::Smtp(s) => {
            v["ca_file"] = path(&s.ca_file);
            v["connect_timeout"] = json!(secs(s.connect_timeout));
            v["command_timeout"] = json!(secs(s.command_timeout));
            v["max_connections"] = json!(s.max_connections);
            v["client_certificate"] = match &s.client_cert {
                None => Value::Null,
                Some(c) => json!({
                    "certificate": c.certificate.display().to_string(),
                    "private_key": c.private_key.display().to_string(),
                }),
            };
            v["auth"] = match &s.auth {
                None => Value::Null,
                Some(a) => {
                    let mechanism = match a.mechanism {
                        AuthMechanism::Login => "login",
                        AuthMechanism::Plain => "plain",
                        AuthMechanism::XOAuth2 => "xoauth2",
                    };
                    let mut auth = json!({ "mechanism": mechanism, "username": a.username });
                    match &a.credential {
                        Credential::Password(_) => auth["password"] = json!(REDACTED),
                        Credential::OAuth(o) => auth["oauth"] = oauth(o),
                    }
                    auth
                }
            };
        }
        Transport::Graph(g) => {
            v["oauth"] = oauth(&g.oauth);
            v["ca_file"] = path(&g.ca_file);
            v["timeout"] = json!(secs(g.timeout));
            v["max_connections"] = json!(g.max_connections);
        }
        Transport::Drop { .. } => {}
    }
    v
}

/// `GET config`: the whole configuration, secrets redacted.
pub fn config(config: &Config) -> Value {
    let listeners: Vec<Value> = config
        .listeners
        .iter()
        .map(|l| {
            json!({
                "address": l.address.to_string(),
                "relay_from": l.relay_from.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                "allow_from": l.allow_from.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                "deny_from": l.deny_from.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                "tls": match l.tls {
                    ListenerTls::None => "none",
                    ListenerTls::StartTls => "starttls",
                    ListenerTls::Implicit => "implicit",
                },
                "certificate": path(&l.certificate),
                "private_key": path(&l.private_key),
                "min_tls": match l.min_tls {
                    TlsVersion::Tls10 => "1.0",
                    TlsVersion::Tls11 => "1.1",
                    TlsVersion::Tls12 => "1.2",
                    TlsVersion::Tls13 => "1.3",
                },
                "auth": l.auth,
                "require_auth": l.require_auth,
                "allow_plaintext_auth": l.allow_plaintext_auth,
                "max_connections_per_ip": l.max_connections_per_ip,
                "max_messages_per_connection": l.max_messages_per_connection,
                "session_timeout": secs(l.session_timeout),
            })
        })
        .collect();
    let q = &config.queue;
    json!({
        "data_dir": config.data_dir.display().to_string(),
        "hostname": config.hostname,
        "listeners": listeners,
        "limits": {
            "max_message_size": config.limits.max_message_size,
            "max_recipients": config.limits.max_recipients,
            "max_connections": config.limits.max_connections,
            "command_timeout": secs(config.limits.command_timeout),
            "data_timeout": secs(config.limits.data_timeout),
        },
        "queue": {
            "max_concurrent_deliveries": q.max_concurrent_deliveries,
            "schedule": schedule(&q.schedule),
            "ndr_copy_to": q.ndr_copy_to,
            "bounce_original_max": q.bounce_original_max,
            "min_free_space": q.min_free_space,
        },
        "routes": config.routes.iter().map(route).collect::<Vec<_>>(),
        "users": config.users.iter().map(|u| json!({
            "name": u.name,
            "password_hash": REDACTED,
            "allowed_senders": u.allowed_senders,
        })).collect::<Vec<_>>(),
        "auth_lockout": {
            "max_failures": config.auth_lockout.max_failures,
            "window": secs(config.auth_lockout.window),
            "duration": secs(config.auth_lockout.duration),
        },
        "admin": {
            "enabled": config.admin.enabled,
            "address": config.admin.address.to_string(),
            "token": config.admin.token.as_ref().map(|_| REDACTED),
        },
        "node": config.node,
        "cluster": config.cluster.as_ref().map(|c| json!({
            // RedisUrl never holds a password (it comes from password_env/password_file).
            "redis": c.redis.display(),
            "password": c.password.as_ref().map(|_| REDACTED),
            "expected_nodes": c.expected_nodes,
            "lease_ttl": secs(c.lease_ttl),
            "timeout": secs(c.timeout),
        })),
    })
}
