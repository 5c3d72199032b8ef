//! `[cluster]`: several relays sharing per-mailbox limits through Redis (issue 9), and the node name.
//! The Redis password comes from `password_env` or `password_file`, never from the URL or this file,
//! and no message repeats it.

use super::document::{Report, Section};
use super::{Env, defaults, keys, secrets};
use crate::config::{ClusterConfig, RedisUrl};
use std::time::Duration;

/// The node name and the `[cluster]` section (`None` when absent: limits are kept in memory).
pub fn cluster(
    report: &mut Report,
    top: &Section<'_, '_>,
    env: Env<'_>,
) -> (String, Option<ClusterConfig>) {
    let Some(section) = report.table(top, "cluster", "[cluster]") else {
        return (defaults::machine_hostname(env), None);
    };
    keys::check(report, &section, &[keys::CLUSTER]);
    let node = match report.string(&section, "node") {
        Some(at) if valid_node(at.value) => at.value.to_string(),
        Some(at) => {
            report.error(
                &at.span,
                format!(
                    "`cluster.node` {:?}: use 1 to 64 letters, digits, '.', '-' or '_' (it names \
                     this relay in metrics, the admin API and Redis keys)",
                    at.value
                ),
            );
            String::new()
        }
        None => defaults::machine_hostname(env),
    };
    let redis = match report.string(&section, "redis") {
        Some(at) => match RedisUrl::parse(at.value) {
            Ok(url) => Some(url),
            Err(message) => {
                report.error(&at.span, format!("`cluster.redis`: {message}"));
                None
            }
        },
        None => {
            report.error(
                &section.span,
                "[cluster] needs `redis`, the Redis server the nodes share, e.g. \
                 redis = \"redis://10.0.0.5:6379/0\" (rediss:// for TLS)",
            );
            None
        }
    };
    let password = match (
        section.key_span("password_env"),
        section.key_span("password_file"),
    ) {
        (Some(_), Some(second)) => {
            report.error(
                &second,
                "`cluster.password_env` and `cluster.password_file` are both set: keep one",
            );
            None
        }
        (Some(_), None) => secrets::from_env(report, &section, "password_env", env),
        (None, Some(_)) => secrets::from_file(report, &section, "password_file"),
        (None, None) => None,
    };
    let d = ClusterConfig::DEFAULTS;
    let expected_nodes = report.count(&section, "expected_nodes", d.expected_nodes as usize);
    let expected_nodes = match u32::try_from(expected_nodes) {
        Ok(n) if n <= 1000 => n,
        _ => {
            if let Some(span) = section.key_span("expected_nodes") {
                report.error(&span, "`cluster.expected_nodes` must be between 1 and 1000");
            }
            d.expected_nodes
        }
    };
    let lease_ttl = report.duration(&section, "lease_ttl", d.lease_ttl);
    if lease_ttl < Duration::from_secs(1)
        && let Some(span) = section.key_span("lease_ttl")
    {
        report.error(
            &span,
            "`cluster.lease_ttl` must be at least 1s (leases are renewed every third of it)",
        );
    }
    let timeout = report.duration(&section, "timeout", d.timeout);
    let config = redis.map(|redis| ClusterConfig {
        redis,
        password,
        expected_nodes,
        lease_ttl: lease_ttl.max(Duration::from_secs(1)),
        timeout,
    });
    (node, config)
}

fn valid_node(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        && !name.starts_with(['.', '-'])
}

#[cfg(test)]
mod tests {
    use super::super::{ConfigError, load_str_with_env};
    use crate::config::Config;
    use std::time::Duration;

    const BASE: &str = "[[listener]]\naddress = \"127.0.0.1:2525\"\n[[route]]\nname = \"r\"\n\
                        domains = [\"*\"]\ntransport = \"drop\"\n";

    fn env(name: &str) -> Option<String> {
        (name == "REDIS_PW").then(|| "s3cret-Redis".to_string())
    }

    fn load(cluster: &str) -> Result<Config, Vec<ConfigError>> {
        load_str_with_env(&format!("{cluster}\n{BASE}"), "test.toml", &env).map_err(|e| e.errors)
    }

    #[test]
    fn absent_means_local_limits_and_the_machine_name() {
        let config = load("").unwrap();
        assert!(config.cluster.is_none());
        assert!(!config.node.is_empty());
    }

    #[test]
    fn every_key_with_defaults() {
        let config = load(
            "[cluster]\nredis = \"rediss://redis.contoso.com:6380/2\"\nnode = \"relay-a\"\n\
             password_env = \"REDIS_PW\"",
        )
        .unwrap();
        assert_eq!(config.node, "relay-a");
        let c = config.cluster.unwrap();
        assert_eq!(c.redis.display(), "rediss://redis.contoso.com:6380/2");
        assert!(c.redis.tls());
        assert_eq!(c.password.unwrap().expose(), "s3cret-Redis");
        assert_eq!(c.expected_nodes, 2);
        assert_eq!(c.lease_ttl, Duration::from_secs(30));
        assert_eq!(c.timeout, Duration::from_millis(500));

        let c = load(
            "[cluster]\nredis = \"redis://127.0.0.1\"\nexpected_nodes = 3\nlease_ttl = \"3s\"\n\
             timeout = \"200ms\"",
        )
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(c.redis.display(), "redis://127.0.0.1:6379/0");
        assert_eq!(c.expected_nodes, 3);
        assert_eq!(c.lease_ttl, Duration::from_secs(3));
        assert_eq!(c.timeout, Duration::from_millis(200));
    }

    #[test]
    fn redis_urls() {
        use crate::config::RedisUrl;
        let url = RedisUrl::parse("rediss://relay@[2001:db8::5]:6380/3").unwrap();
        assert!(url.tls);
        assert_eq!(url.username.as_deref(), Some("relay"));
        assert_eq!(
            (url.host.as_str(), url.port, url.db),
            ("2001:db8::5", 6380, 3)
        );
        assert_eq!(url.display(), "rediss://relay@[2001:db8::5]:6380/3");
        assert_eq!(
            RedisUrl::parse("redis://redis.contoso.com")
                .unwrap()
                .display(),
            "redis://redis.contoso.com:6379/0"
        );
        for bad in [
            "redis://:pw@host",
            "redis://user:pw@host",
            "redis://",
            "redis://host:port",
            "redis://host/x",
            "tcp://host",
        ] {
            let message = RedisUrl::parse(bad).unwrap_err();
            assert!(!message.contains("pw"), "{bad}: {message}");
        }
    }

    #[test]
    fn errors_never_repeat_a_password() {
        let errors = load("[cluster]\nredis = \"redis://:hunter2@10.0.0.5:6379/0\"").unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].line, Some(2));
        assert!(errors[0].message.contains("password_env"), "{errors:?}");
        assert!(!errors[0].message.contains("hunter2"));

        let errors =
            load("[cluster]\nnode = \"a b\"\nredis = \"http://x\"\npassword = \"p\"").unwrap_err();
        let lines: Vec<_> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![Some(2), Some(3), Some(4)], "{errors:?}");
        assert!(errors[2].message.contains("password_env"), "{errors:?}");

        let errors = load("[cluster]\nnode = \"a\"").unwrap_err();
        assert!(errors[0].message.contains("needs `redis`"), "{errors:?}");
    }
}
