//! Talking to the Microsoft identity platform: a form POST over HTTPS (certificates verified, system
//! roots plus the configured `ca_file`), a JSON answer back. Entra's error answers
//! (`{"error": "invalid_client", "error_description": "AADSTS7000215: ...", "error_codes": [...]}`)
//! become [`EndpointError::OAuth`] with the description quoted, so the operator sees what Entra said.
//!
//! Nothing secret leaves this module in an error: the caller names the form values that are secret and
//! they are scrubbed from every text taken from the answer.

use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// A whole request (connect, send, answer) must finish within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this much of a non-JSON answer is quoted in an error.
const QUOTED_BODY: usize = 300;

/// The HTTPS client for token and device-code endpoints.
#[derive(Clone)]
pub(crate) struct Endpoint {
    http: reqwest::Client,
}

/// Why a POST did not give a usable answer.
#[derive(Debug, Clone)]
pub(crate) enum EndpointError {
    /// Not reached, TLS failed, timed out, or the answer was not an OAuth answer.
    Transport(String),
    /// An OAuth error answer (RFC 6749 §5.2) as Entra sends it.
    OAuth(OAuthFailure),
}

#[derive(Debug, Clone)]
pub(crate) struct OAuthFailure {
    pub(crate) status: u16,
    /// `invalid_client`, `invalid_grant`, `authorization_pending`, ...
    pub(crate) error: String,
    /// Entra's text (`AADSTS7000215: Invalid client secret provided. ...`) on one line, scrubbed.
    pub(crate) description: String,
    /// Entra's numeric codes (`7000215`).
    pub(crate) codes: Vec<u64>,
}

impl OAuthFailure {
    /// `HTTP 401 invalid_client: AADSTS7000215: Invalid client secret provided. ...`
    pub(crate) fn summary(&self) -> String {
        let mut text = format!("HTTP {} {}", self.status, self.error);
        if !self.description.is_empty() {
            text.push_str(": ");
            text.push_str(&self.description);
        }
        text
    }

    /// Whether Entra named this AADSTS code.
    pub(crate) fn has_code(&self, code: u64) -> bool {
        self.codes.contains(&code) || self.description.contains(&format!("AADSTS{code}:"))
    }
}

impl Endpoint {
    /// The client trusts the system roots and the certificates in `ca_file`.
    pub(crate) fn new(ca_file: Option<&Path>) -> anyhow::Result<Self> {
        let tls = crate::deliver::smtp::tls::client_config(ca_file)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("smarthost/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Endpoint { http })
    }

    /// POSTs `form` to `url`; a 2xx JSON object is the answer. `secrets` are scrubbed from errors.
    pub(crate) async fn post_form(
        &self,
        url: &str,
        form: &[(&str, &str)],
        secrets: &[&str],
    ) -> Result<Value, EndpointError> {
        let scrub = |text: &str| scrub(text, secrets);
        let response = self
            .http
            .post(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(form)
            .send()
            .await
            .map_err(|e| EndpointError::Transport(scrub(&format!("{url}: {}", chain(&e)))))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| {
            EndpointError::Transport(scrub(&format!(
                "{url}: HTTP {}: reading the answer failed: {}",
                status.as_u16(),
                chain(&e)
            )))
        })?;
        let json: Option<Value> = serde_json::from_slice(&body).ok().filter(Value::is_object);
        match json {
            Some(value) if status.is_success() => Ok(value),
            Some(value) if value.get("error").and_then(Value::as_str).is_some() => {
                let text = |key: &str| value.get(key).and_then(Value::as_str).unwrap_or_default();
                Err(EndpointError::OAuth(OAuthFailure {
                    status: status.as_u16(),
                    error: scrub(text("error")),
                    description: scrub(&one_line(text("error_description"))),
                    codes: value
                        .get("error_codes")
                        .and_then(Value::as_array)
                        .map(|codes| codes.iter().filter_map(Value::as_u64).collect())
                        .unwrap_or_default(),
                }))
            }
            _ => {
                let text = String::from_utf8_lossy(&body);
                let mut quoted: String = one_line(&text).chars().take(QUOTED_BODY).collect();
                if quoted.is_empty() {
                    quoted = "(empty)".into();
                }
                let what = if status.is_success() {
                    "the answer is not a JSON object"
                } else {
                    "not an OAuth error answer"
                };
                Err(EndpointError::Transport(scrub(&format!(
                    "{url}: HTTP {} ({what}): {quoted}",
                    status.as_u16()
                ))))
            }
        }
    }
}

/// An error with its causes: reqwest's own text hides the interesting part (`invalid peer
/// certificate: UnknownIssuer`, `Connection refused`) in the source chain.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let shown = cause.to_string();
        if !text.contains(&shown) {
            text.push_str(": ");
            text.push_str(&shown);
        }
        source = cause.source();
    }
    text
}

/// Entra's descriptions span lines (`...\r\nTrace ID: ...\r\nCorrelation ID: ...`): one line for logs.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Replaces every secret (at least 4 characters long, to not mangle ordinary words) by `<redacted>`.
pub(crate) fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut text = text.to_string();
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        if text.contains(secret) {
            text = text.replace(secret, "<redacted>");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_become_one_line_and_secrets_are_scrubbed() {
        assert_eq!(
            one_line("AADSTS7000215: Invalid client secret.\r\nTrace ID: 1\r\n"),
            "AADSTS7000215: Invalid client secret. Trace ID: 1"
        );
        assert_eq!(
            scrub(
                "secret s3cr3t-value in s3cr3t-value",
                &["s3cr3t-value", "", "ab"]
            ),
            "secret <redacted> in <redacted>"
        );
        let failure = OAuthFailure {
            status: 401,
            error: "invalid_client".into(),
            description: "AADSTS7000215: Invalid client secret provided.".into(),
            codes: vec![],
        };
        assert!(failure.has_code(7000215) && !failure.has_code(700016));
        assert_eq!(
            failure.summary(),
            "HTTP 401 invalid_client: AADSTS7000215: Invalid client secret provided."
        );
    }
}
