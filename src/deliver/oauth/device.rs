//! The device-code flow (RFC 8628) for delegated sign-in: `smarthost oauth login` asks the device
//! authorization endpoint for a code, a person enters it at the verification page and signs in, and
//! the relay polls the token endpoint until the sign-in is done. What it keeps is the refresh token; the
//! running relay turns it into access tokens ([`super::TokenProvider`]).

use super::OAuthError;
use super::endpoint::{Endpoint, EndpointError};
use super::token_file::StoredToken;
use crate::config::{OAuthConfig, OAuthGrant, Secret};
use base64::Engine;
use serde_json::Value;
use std::time::Duration;

/// The grant type of the polling requests.
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// RFC 8628 §3.5: the default polling interval, and what `slow_down` adds to it.
const DEFAULT_INTERVAL: u64 = 5;
const SLOW_DOWN_STEP: u64 = 5;

/// What the person must do: open `verification_uri` and enter `user_code`.
#[derive(Debug)]
pub struct DeviceAuthorization {
    device_code: Secret,
    pub user_code: String,
    pub verification_uri: String,
    /// Entra's ready-made instruction ("To sign in, use a web browser to open the page ...").
    pub message: String,
    /// Seconds the code is valid.
    pub expires_in: u64,
    /// Seconds between polls.
    pub interval: u64,
}

/// Progress reports while waiting for the person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Pending,
    /// The server asked to poll less often; the new interval in seconds.
    SlowDown(u64),
}

/// A delegated sign-in for one route's OAuth configuration.
pub struct DeviceLogin {
    endpoint: Endpoint,
    config: OAuthConfig,
    device_endpoint: String,
    scope: String,
}

impl DeviceLogin {
    /// Fails when the configuration is not the device-code flow.
    pub fn new(config: &OAuthConfig) -> anyhow::Result<Self> {
        let OAuthGrant::DeviceCode {
            device_endpoint, ..
        } = &config.grant
        else {
            anyhow::bail!(
                "this route does not use delegated sign-in (flow = \"device-code\"): it needs no `oauth login`"
            );
        };
        Ok(DeviceLogin {
            endpoint: Endpoint::new(config.ca_file.as_deref())?,
            device_endpoint: device_endpoint.clone(),
            scope: with_offline_access(&config.scope),
            config: config.clone(),
        })
    }

    /// The scope asked for: the configured one, with `offline_access` (without it there is no refresh
    /// token and the relay could not renew access).
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// Asks for a device code.
    pub async fn start(&self) -> Result<DeviceAuthorization, OAuthError> {
        let form = [
            ("client_id", self.config.client_id.as_str()),
            ("scope", self.scope.as_str()),
        ];
        let answer = self
            .endpoint
            .post_form(&self.device_endpoint, &form, &[])
            .await
            .map_err(|e| match e {
                EndpointError::Transport(text) => {
                    OAuthError::Failed(format!("cannot get a device code: {text}"))
                }
                EndpointError::OAuth(f) => OAuthError::Refused {
                    error: f.error.clone(),
                    message: format!(
                        "the device authorization endpoint {} refused client {}: {}{}",
                        self.device_endpoint,
                        self.config.client_id,
                        f.summary(),
                        super::hint(&f)
                    ),
                },
            })?;
        let text = |key: &str| answer.get(key).and_then(Value::as_str).map(String::from);
        let number = |key: &str| answer.get(key).and_then(super::as_seconds);
        let (Some(device_code), Some(user_code)) = (text("device_code"), text("user_code")) else {
            return Err(OAuthError::Failed(format!(
                "{} answered without device_code and user_code",
                self.device_endpoint
            )));
        };
        // Entra says `verification_uri`; the v1 endpoint and older drafts said `verification_url`.
        let verification_uri = text("verification_uri")
            .or_else(|| text("verification_url"))
            .unwrap_or_else(|| "https://microsoft.com/devicelogin".into());
        let message = text("message").unwrap_or_else(|| {
            format!(
                "To sign in, use a web browser to open the page {verification_uri} and enter the code {user_code} to authenticate."
            )
        });
        Ok(DeviceAuthorization {
            device_code: Secret::new(device_code),
            user_code,
            verification_uri,
            message,
            expires_in: number("expires_in").unwrap_or(900),
            interval: number("interval").unwrap_or(DEFAULT_INTERVAL),
        })
    }

    /// Polls the token endpoint until the person signed in (or declined, or the code expired).
    pub async fn wait(
        &self,
        auth: &DeviceAuthorization,
        mut progress: impl FnMut(Progress),
    ) -> Result<StoredToken, OAuthError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(auth.expires_in);
        let mut interval = auth.interval.max(1);
        let url = &self.config.token_endpoint;
        loop {
            tokio::time::sleep(Duration::from_secs(interval)).await;
            if tokio::time::Instant::now() > deadline {
                return Err(expired());
            }
            let form = [
                ("grant_type", DEVICE_CODE_GRANT),
                ("client_id", self.config.client_id.as_str()),
                ("device_code", auth.device_code.expose()),
            ];
            let secrets = [auth.device_code.expose()];
            match self.endpoint.post_form(url, &form, &secrets).await {
                Ok(answer) => return signed_in(&answer, url),
                Err(EndpointError::OAuth(f)) => match f.error.as_str() {
                    "authorization_pending" => progress(Progress::Pending),
                    "slow_down" => {
                        interval += SLOW_DOWN_STEP;
                        progress(Progress::SlowDown(interval));
                    }
                    "expired_token" | "code_expired" => return Err(expired()),
                    "access_denied" | "authorization_declined" => {
                        return Err(OAuthError::Refused {
                            error: f.error.clone(),
                            message: format!("sign-in was declined: {}", f.summary()),
                        });
                    }
                    _ => {
                        return Err(OAuthError::Refused {
                            error: f.error.clone(),
                            message: format!(
                                "the token endpoint {url} refused the sign-in: {}{}",
                                f.summary(),
                                super::hint(&f)
                            ),
                        });
                    }
                },
                // A network hiccup while a person is typing: keep polling until the code expires.
                Err(EndpointError::Transport(text)) => {
                    tracing::warn!("polling the token endpoint failed (trying again): {text}");
                }
            }
        }
    }
}

fn expired() -> OAuthError {
    OAuthError::Refused {
        error: "expired_token".into(),
        message: "the code expired before the sign-in was completed: run `smarthost oauth login` again and sign in within the time shown".into(),
    }
}

fn signed_in(answer: &Value, url: &str) -> Result<StoredToken, OAuthError> {
    let text = |key: &str| answer.get(key).and_then(Value::as_str);
    let Some(refresh_token) = text("refresh_token").filter(|t| !t.is_empty()) else {
        return Err(OAuthError::Failed(format!(
            "{url} signed the account in but sent no refresh token: the scope must include offline_access"
        )));
    };
    let account = ["id_token", "access_token"]
        .iter()
        .filter_map(|key| text(key))
        .find_map(account_in_jwt);
    Ok(StoredToken {
        refresh_token: refresh_token.to_string(),
        obtained_at: crate::clock::Clock::now(&crate::clock::SystemClock),
        account,
    })
}

/// The signed-in user's name from a JWT's claims, without verifying it (it is only shown and kept
/// as information; the relay never decides anything by it). Microsoft access tokens for Exchange
/// are JWTs; when a token is opaque there is simply no name.
pub fn account_in_jwt(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    ["upn", "preferred_username", "unique_name", "email"]
        .iter()
        .find_map(|key| claims.get(key).and_then(Value::as_str))
        .filter(|name| !name.is_empty())
        .map(String::from)
}

/// `scope` with `offline_access` added when it is missing.
fn with_offline_access(scope: &str) -> String {
    if scope.split_whitespace().any(|s| s == "offline_access") {
        scope.to_string()
    } else {
        format!("{} offline_access", scope.trim())
            .trim()
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    #[test]
    fn offline_access_is_added_once() {
        assert_eq!(
            with_offline_access("https://outlook.office.com/SMTP.Send"),
            "https://outlook.office.com/SMTP.Send offline_access"
        );
        assert_eq!(
            with_offline_access("https://outlook.office.com/SMTP.Send offline_access"),
            "https://outlook.office.com/SMTP.Send offline_access"
        );
    }

    #[test]
    fn the_account_is_read_from_a_jwt_and_opaque_tokens_have_none() {
        let claims = URL_SAFE_NO_PAD.encode(r#"{"upn":"scanner@contoso.example","aud":"x"}"#);
        assert_eq!(
            account_in_jwt(&format!("eyJhbGciOiJub25lIn0.{claims}.sig")).as_deref(),
            Some("scanner@contoso.example")
        );
        assert_eq!(account_in_jwt("opaque-token"), None);
        assert_eq!(account_in_jwt("a.!!!.c"), None);
    }
}
