//! `[admin]`: the admin HTTP API and page. Off by default, on loopback by default, and never without a
//! bearer token (`token_env` or `token_file`; the value is never repeated in a message).

use super::document::{Report, Section};
use super::{Env, keys, secrets, values};
use crate::config::AdminConfig;

pub fn admin(report: &mut Report, top: &Section<'_, '_>, env: Env<'_>) -> AdminConfig {
    let d = AdminConfig::default();
    let Some(section) = report.table(top, "admin", "[admin]") else {
        return d;
    };
    keys::check(report, &section, &[keys::ADMIN]);
    let enabled = report
        .boolean(&section, "enabled")
        .map_or(d.enabled, |at| at.value);
    let address = match report.string(&section, "address") {
        None => d.address,
        Some(at) => match values::parse_listen_address(at.value) {
            Ok(address) => address,
            Err(message) => {
                report.error(&at.span, format!("`admin.address`: {message}"));
                d.address
            }
        },
    };
    let token = match (
        section.key_span("token_env"),
        section.key_span("token_file"),
    ) {
        (Some(_), Some(second)) => {
            report.error(
                &second,
                "`admin.token_env` and `admin.token_file` are both set: keep one",
            );
            None
        }
        (Some(_), None) => secrets::from_env(report, &section, "token_env", env),
        (None, Some(_)) => secrets::from_file(report, &section, "token_file"),
        (None, None) => {
            if enabled {
                report.error(
                    &section.span,
                    "[admin] is enabled without a bearer token: set `token_env` (the name of an \
                     environment variable) or `token_file`",
                );
            }
            None
        }
    };
    AdminConfig {
        enabled,
        address,
        token,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ConfigError, load_str_with_env};
    use crate::config::Config;

    const BASE: &str = "[[listener]]\naddress = \"127.0.0.1:2525\"\n[[route]]\nname = \"r\"\n\
                        domains = [\"*\"]\ntransport = \"drop\"\n";

    fn env(name: &str) -> Option<String> {
        (name == "SMARTHOST_ADMIN_TOKEN").then(|| "t0ken-Value".to_string())
    }

    fn load(admin: &str) -> Result<Config, Vec<ConfigError>> {
        load_str_with_env(&format!("{admin}\n{BASE}"), "test.toml", &env).map_err(|e| e.errors)
    }

    #[test]
    fn off_and_on_loopback_by_default() {
        let config = load("").unwrap();
        assert!(!config.admin.enabled);
        assert_eq!(config.admin.address.to_string(), "127.0.0.1:8025");
        assert!(config.admin.token.is_none());
        let config =
            load("[admin]\nenabled = true\ntoken_env = \"SMARTHOST_ADMIN_TOKEN\"").unwrap();
        assert!(config.admin.enabled);
        assert_eq!(config.admin.address.to_string(), "127.0.0.1:8025");
        assert_eq!(config.admin.token.unwrap().expose(), "t0ken-Value");
    }

    #[test]
    fn token_from_a_file_without_its_line_break() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "from-file\r\n").unwrap();
        let config = load(&format!(
            "[admin]\nenabled = true\naddress = \"0.0.0.0:9000\"\ntoken_file = {:?}",
            path.display().to_string()
        ))
        .unwrap();
        assert_eq!(config.admin.address.to_string(), "0.0.0.0:9000");
        assert_eq!(config.admin.token.unwrap().expose(), "from-file");
    }

    #[test]
    fn errors_with_their_lines_and_never_the_token() {
        let errors = load("[admin]\nenabled = true").unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, Some(1));
        assert!(errors[0].message.contains("without a bearer token"));

        let errors = load(
            "[admin]\nenabled = true\naddress = \"localhost:80\"\ntoken = \"x\"\ntoken_env = \"NOPE\"",
        )
        .unwrap_err();
        let lines: Vec<_> = errors.iter().map(|e| (e.line, e.message.clone())).collect();
        assert_eq!(errors.len(), 3, "{lines:?}");
        assert!(
            lines
                .iter()
                .any(|(l, m)| *l == Some(3) && m.contains("`admin.address`"))
        );
        assert!(
            lines
                .iter()
                .any(|(l, m)| *l == Some(4) && m.contains("unknown key `token`"))
        );
        assert!(
            lines
                .iter()
                .any(|(l, m)| *l == Some(5) && m.contains("NOPE"))
        );

        let errors = load(
            "[admin]\nenabled = true\ntoken_env = \"SMARTHOST_ADMIN_TOKEN\"\ntoken_file = \"/x\"",
        )
        .unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, Some(4));
        assert!(errors[0].message.contains("keep one"));

        // A token written in place of a variable name is not repeated.
        let errors = load("[admin]\nenabled = true\ntoken_env = \"my secret token!\"").unwrap_err();
        assert_eq!(errors[0].line, Some(3));
        assert!(!errors[0].message.contains("my secret token!"));
    }
}
