//! OAuth 2.0 access tokens from Microsoft Entra ID, for SMTP XOAUTH2 and for Microsoft Graph.
//!
//! A [`TokenProvider`] gets, caches and renews the access tokens of one credential:
//! - App-only (client credentials) with a client secret, or with a certificate-signed JWT client
//!   assertion ([`assertion`]).
//! - Delegated (a person signed in once with `smarthost oauth login`, the device-code flow,
//!   [`device`]): the refresh token in the route's `token_file` ([`token_file`]) is exchanged for access
//!   tokens, and the rotated refresh token written back.
//!
//! Invariants:
//! - A cached token is handed out only while it has at least [`MIN_REMAINING`] seconds left (HVE refuses
//!   shorter ones with `501 5.5.127 ... Token will expire soon`); otherwise it is renewed.
//! - One renewal at a time: callers that arrive during a renewal wait for it and share its outcome,
//!   success or failure, so a failing endpoint is asked once, not once per waiting delivery.
//! - When a renewal fails, a token that has not expired yet (more than a minute left) is still handed
//!   out: a short outage of the identity platform does not stop delivery.
//! - Time comes from a [`Clock`] so expiry is tested without sleeping. Client assertions use the wall
//!   clock: they are checked by Entra against real time.
//! - No secret (client secret, assertion, refresh or access token) appears in an error, a log line or
//!   `Debug` output: errors quote Entra's `error` and `error_description`, scrubbed of the values sent.

pub mod assertion;
pub mod device;
pub(crate) mod endpoint;
pub mod token_file;

use crate::clock::{Clock, SystemClock};
use crate::config::{OAuthConfig, OAuthGrant, Secret};
use assertion::{AssertionSigner, JWT_BEARER};
use endpoint::{Endpoint, EndpointError, OAuthFailure};
use serde_json::Value;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use tracing::{error, info, warn};

/// Seconds a token must still be valid to be handed out.
pub const MIN_REMAINING: u64 = 600;

/// When a renewal fails, the current token is still handed out while it has this long left.
const STILL_USABLE: u64 = 60;

/// What to do when a delegated route has no refresh token yet.
pub const LOGIN_ADVICE: &str = "run `smarthost oauth login --route NAME`";

/// An access token and when it expires (Unix seconds). Never logged: `Debug` redacts it.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub value: Secret,
    pub expires_at: u64,
}

/// Why no access token could be had. The text is for the operator: it names the endpoint and quotes
/// Entra's answer, and never contains a secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OAuthError {
    /// The endpoint was not reached or its answer was unusable (network, TLS, timeout, not JSON), or
    /// the local credential (certificate, token file) could not be used.
    #[error("{0}")]
    Failed(String),
    /// The identity platform answered with an OAuth error (`invalid_client`, `invalid_grant`, ...).
    #[error("{message}")]
    Refused { error: String, message: String },
    /// Delegated sign-in: nobody has signed in for this route yet.
    #[error("{0}")]
    NotSignedIn(String),
}

/// Gets, caches and renews the access tokens of one credential.
pub struct TokenProvider {
    config: OAuthConfig,
    clock: Arc<dyn Clock>,
    endpoint: Endpoint,
    /// Loaded at construction, so a bad certificate is a start-up error.
    signer: Option<AssertionSigner>,
    cache: Mutex<Cache>,
    /// Held during a renewal.
    renewal: tokio::sync::Mutex<()>,
    requests: AtomicU64,
}

#[derive(Default)]
struct Cache {
    token: Option<AccessToken>,
    /// Counts renewals; a caller that waited sees it moved and takes `last` instead of renewing again.
    renewals: u64,
    last: Option<Result<AccessToken, OAuthError>>,
}

impl fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenProvider")
            .field("token_endpoint", &self.config.token_endpoint)
            .field("client_id", &self.config.client_id)
            .field("scope", &self.config.scope)
            .field("grant", &grant_kind(&self.config.grant))
            .finish_non_exhaustive()
    }
}

fn grant_kind(grant: &OAuthGrant) -> &'static str {
    match grant {
        OAuthGrant::ClientSecret(_) => "client secret",
        OAuthGrant::ClientCertificate { .. } => "client certificate",
        OAuthGrant::DeviceCode { .. } => "delegated (device code)",
    }
}

/// Providers alive in this process, for [`TokenProvider::shared`].
fn registry() -> &'static Mutex<Vec<Weak<TokenProvider>>> {
    static REGISTRY: OnceLock<Mutex<Vec<Weak<TokenProvider>>>> = OnceLock::new();
    REGISTRY.get_or_init(Mutex::default)
}

impl TokenProvider {
    /// A provider of its own (not shared), on the system clock. Errors (unreadable certificate or key,
    /// unreadable `ca_file`) name the file.
    pub fn new(config: &OAuthConfig) -> anyhow::Result<Arc<TokenProvider>> {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    /// A provider of its own on the given clock.
    pub fn with_clock(
        config: &OAuthConfig,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Arc<TokenProvider>> {
        let signer = match &config.grant {
            OAuthGrant::ClientCertificate {
                certificate,
                private_key,
            } => Some(AssertionSigner::load(certificate, private_key)?),
            _ => None,
        };
        Ok(Arc::new(TokenProvider {
            endpoint: Endpoint::new(config.ca_file.as_deref())?,
            config: config.clone(),
            clock,
            signer,
            cache: Mutex::default(),
            renewal: tokio::sync::Mutex::new(()),
            requests: AtomicU64::new(0),
        }))
    }

    /// The provider for this credential shared by every route (SMTP or Graph) that uses the same
    /// configuration (token endpoint, client, scope, grant), so they share one token and one renewal.
    pub fn shared(config: &OAuthConfig) -> anyhow::Result<Arc<TokenProvider>> {
        Self::shared_with_clock(config, Arc::new(SystemClock))
    }

    /// [`TokenProvider::shared`]; a new provider gets `clock`, an existing one keeps its own. (Tests
    /// create the shared provider with a manual clock before the relay starts, and keep it.)
    pub fn shared_with_clock(
        config: &OAuthConfig,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Arc<TokenProvider>> {
        let mut providers = registry().lock().unwrap_or_else(|p| p.into_inner());
        providers.retain(|p| p.strong_count() > 0);
        if let Some(found) = providers
            .iter()
            .filter_map(Weak::upgrade)
            .find(|p| &p.config == config)
        {
            return Ok(found);
        }
        let provider = Self::with_clock(config, clock)?;
        providers.push(Arc::downgrade(&provider));
        Ok(provider)
    }

    pub fn config(&self) -> &OAuthConfig {
        &self.config
    }

    /// Requests sent to the token endpoint so far (for tests and metrics).
    pub fn token_requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// A token with at least [`MIN_REMAINING`] seconds left: the cached one, or a new one.
    pub async fn access_token(&self) -> Result<AccessToken, OAuthError> {
        let seen = {
            let cache = self.lock();
            if let Some(token) = self.usable(&cache) {
                return Ok(token);
            }
            cache.renewals
        };
        let _renewal = self.renewal.lock().await;
        {
            let cache = self.lock();
            if let Some(token) = self.usable(&cache) {
                return Ok(token);
            }
            if cache.renewals != seen
                && let Some(last) = &cache.last
            {
                // Someone renewed while we waited: share their outcome instead of asking again.
                match last {
                    Ok(token) if token.expires_at > self.clock.now() => return Ok(token.clone()),
                    Ok(_) => {}
                    Err(e) => return Err(e.clone()),
                }
            }
        }
        let result = self.request_token().await;
        let mut cache = self.lock();
        cache.renewals += 1;
        crate::admin::metrics::metrics().token_refreshes.inc();
        let result = match result {
            Ok(token) => {
                cache.token = Some(token.clone());
                Ok(token)
            }
            // The endpoint is down or refuses, but the old token still works for a while: ordinary
            // client submission accepts it (HVE would not, and says so; the caller then drops it).
            Err(e) => match cache
                .token
                .clone()
                .filter(|t| t.expires_at > self.clock.now().saturating_add(STILL_USABLE))
            {
                Some(old) => {
                    warn!(
                        client_id = %self.config.client_id,
                        expires_in = old.expires_at.saturating_sub(self.clock.now()),
                        "cannot renew the access token, using the current one while it lasts: {e}"
                    );
                    Ok(old)
                }
                None => Err(e),
            },
        };
        cache.last = Some(result.clone());
        result
    }

    /// Drops `token` after the upstream refused it (535, 401), so the next call gets a new one.
    pub fn invalidate(&self, token: &AccessToken) {
        let mut cache = self.lock();
        if cache.token.as_ref().is_some_and(|t| t.value == token.value) {
            cache.token = None;
            info!(client_id = %self.config.client_id, "access token dropped after the upstream refused it");
        }
        if matches!(&cache.last, Some(Ok(t)) if t.value == token.value) {
            cache.last = None;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn usable(&self, cache: &Cache) -> Option<AccessToken> {
        let now = self.clock.now();
        cache
            .token
            .as_ref()
            .filter(|t| t.expires_at >= now.saturating_add(MIN_REMAINING))
            .cloned()
    }

    async fn request_token(&self) -> Result<AccessToken, OAuthError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let now = self.clock.now();
        let config = &self.config;
        let url = &config.token_endpoint;
        let (answer, sent_refresh) = match &config.grant {
            OAuthGrant::ClientSecret(secret) => {
                let form = [
                    ("grant_type", "client_credentials"),
                    ("client_id", config.client_id.as_str()),
                    ("client_secret", secret.expose()),
                    ("scope", config.scope.as_str()),
                ];
                let answer = self
                    .endpoint
                    .post_form(url, &form, &[secret.expose()])
                    .await;
                (
                    answer.map_err(|e| self.refused("client credentials", e)),
                    None,
                )
            }
            OAuthGrant::ClientCertificate { certificate, .. } => {
                let signer = self.signer.as_ref().ok_or_else(|| {
                    OAuthError::Failed("internal error: the certificate was not loaded".into())
                })?;
                let assertion = signer
                    .sign(&config.client_id, url, SystemClock.now())
                    .map_err(|e| {
                        OAuthError::Failed(format!(
                            "cannot sign a client assertion with the key of {}: {e}",
                            certificate.display()
                        ))
                    })?;
                let form = [
                    ("grant_type", "client_credentials"),
                    ("client_id", config.client_id.as_str()),
                    ("client_assertion_type", JWT_BEARER),
                    ("client_assertion", assertion.as_str()),
                    ("scope", config.scope.as_str()),
                ];
                let answer = self.endpoint.post_form(url, &form, &[&assertion]).await;
                let what = format!(
                    "the certificate credential (thumbprint x5t {})",
                    signer.thumbprint()
                );
                (answer.map_err(|e| self.refused(&what, e)), None)
            }
            OAuthGrant::DeviceCode { token_file, .. } => {
                let stored = read_token_file(token_file).await?;
                let form = [
                    ("grant_type", "refresh_token"),
                    ("client_id", config.client_id.as_str()),
                    ("refresh_token", stored.refresh_token.as_str()),
                    ("scope", config.scope.as_str()),
                ];
                let answer = self
                    .endpoint
                    .post_form(url, &form, &[&stored.refresh_token])
                    .await;
                (
                    answer.map_err(|e| self.refused("the signed-in account's refresh token", e)),
                    Some(stored),
                )
            }
        };
        let answer = answer?;
        let token = parse_token(&answer, now, url)?;
        if let (Some(stored), OAuthGrant::DeviceCode { token_file, .. }) =
            (sent_refresh, &config.grant)
        {
            self.keep_rotated_refresh_token(&answer, stored, token_file)
                .await;
        }
        info!(
            client_id = %config.client_id,
            grant = grant_kind(&config.grant),
            expires_in = token.expires_at.saturating_sub(now),
            "OAuth 2.0 access token obtained"
        );
        Ok(token)
    }

    /// Entra rotates refresh tokens: keep the new one. When it cannot be written the old one still
    /// works for a while, so delivery goes on and the operator is told.
    async fn keep_rotated_refresh_token(
        &self,
        answer: &Value,
        stored: token_file::StoredToken,
        token_file: &Path,
    ) {
        let Some(new) = answer.get("refresh_token").and_then(Value::as_str) else {
            return;
        };
        if new.is_empty() || new == stored.refresh_token {
            return;
        }
        let rotated = token_file::StoredToken {
            refresh_token: new.to_string(),
            obtained_at: self.clock.now(),
            account: stored.account,
        };
        let path = token_file.to_path_buf();
        let written = tokio::task::spawn_blocking(move || token_file::write(&path, &rotated)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                error!(file = %token_file.display(), "cannot store the renewed refresh token: {e}")
            }
            Err(e) => {
                error!(file = %token_file.display(), "cannot store the renewed refresh token: {e}")
            }
        }
    }

    /// The error for a failed request with `what` the relay presented.
    fn refused(&self, what: &str, err: EndpointError) -> OAuthError {
        let config = &self.config;
        match err {
            EndpointError::Transport(text) => OAuthError::Failed(format!(
                "cannot get an access token for client {} from the token endpoint: {text}",
                config.client_id
            )),
            EndpointError::OAuth(f) => OAuthError::Refused {
                message: format!(
                    "the token endpoint {} refused {what} of client {}: {}{}",
                    config.token_endpoint,
                    config.client_id,
                    f.summary(),
                    hint(&f)
                ),
                error: f.error,
            },
        }
    }
}

async fn read_token_file(path: &Path) -> Result<token_file::StoredToken, OAuthError> {
    let owned = path.to_path_buf();
    let read = tokio::task::spawn_blocking(move || token_file::read(&owned))
        .await
        .map_err(|e| OAuthError::Failed(format!("internal error: {e}")))?;
    match read {
        Ok(Some(stored)) => Ok(stored),
        Ok(None) => Err(OAuthError::NotSignedIn(format!(
            "no signed-in account for this route: {LOGIN_ADVICE} (the refresh token is expected in {})",
            path.display()
        ))),
        Err(e) => Err(OAuthError::Failed(format!(
            "cannot read the OAuth token file {}: {e}; {LOGIN_ADVICE} to write it again",
            path.display()
        ))),
    }
}

/// `access_token` and `expires_in` from a token answer.
fn parse_token(answer: &Value, now: u64, url: &str) -> Result<AccessToken, OAuthError> {
    let Some(value) = answer
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    else {
        return Err(OAuthError::Failed(format!(
            "{url} answered without an access_token"
        )));
    };
    if let Some(kind) = answer.get("token_type").and_then(Value::as_str)
        && !kind.eq_ignore_ascii_case("bearer")
    {
        return Err(OAuthError::Failed(format!(
            "{url} issued a \"{kind}\" token; XOAUTH2 and Graph need a Bearer token"
        )));
    }
    // Microsoft's v2.0 endpoint sends a number; older endpoints a string. One hour when absent.
    let expires_in = answer
        .get("expires_in")
        .and_then(as_seconds)
        .unwrap_or(3600);
    Ok(AccessToken {
        value: Secret::new(value),
        expires_at: now.saturating_add(expires_in),
    })
}

/// A number of seconds sent as a JSON number or as a string of digits.
pub(crate) fn as_seconds(value: &Value) -> Option<u64> {
    value
        .as_u64()
        .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
}

/// What the operator should do about the Entra errors met most often.
pub(crate) fn hint(f: &OAuthFailure) -> String {
    const HINTS: &[(u64, &str)] = &[
        (
            7000215,
            "check the client secret: it must be the secret's Value, not its Secret ID",
        ),
        (
            7000222,
            "the client secret has expired: create a new one in the app registration (Certificates & secrets)",
        ),
        (
            700016,
            "check client_id and tenant: the application is not known in this tenant",
        ),
        (90002, "check the tenant: it was not found"),
        (
            900023,
            "check the tenant: it is not a valid tenant id or domain",
        ),
        (
            700027,
            "upload the certificate (its public part) to the app registration (Certificates & secrets), and check the key",
        ),
        (
            700024,
            "the client assertion is outside its validity: check the system clock",
        ),
        (
            70011,
            "check the scope (SMTP: https://outlook.office365.com/.default; Graph: https://graph.microsoft.com/.default)",
        ),
        (
            65001,
            "grant admin consent for the application's API permissions",
        ),
        (
            7000218,
            "allow public client flows in the app registration (Authentication) for device-code sign-in",
        ),
    ];
    const SIGN_IN_AGAIN: &[u64] = &[700082, 50173, 70008, 50076, 50078, 50079, 54005, 70043];
    if let Some((_, text)) = HINTS.iter().find(|(code, _)| f.has_code(*code)) {
        return format!(" ({text})");
    }
    if f.error == "invalid_grant" || SIGN_IN_AGAIN.iter().any(|c| f.has_code(*c)) {
        return format!(" (the sign-in is no longer valid: {LOGIN_ADVICE})");
    }
    String::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn token_answers_parse_with_numeric_or_string_lifetimes() {
        let t = parse_token(
            &json!({"token_type": "Bearer", "expires_in": 3599, "access_token": "eyJ0"}),
            1000,
            "u",
        )
        .unwrap();
        assert_eq!((t.value.expose(), t.expires_at), ("eyJ0", 4599));
        let t = parse_token(&json!({"expires_in": "5400", "access_token": "x"}), 0, "u").unwrap();
        assert_eq!(t.expires_at, 5400);
        assert!(parse_token(&json!({"expires_in": 1}), 0, "u").is_err());
        assert!(parse_token(&json!({"access_token": "x", "token_type": "mac"}), 0, "u").is_err());
    }

    #[test]
    fn known_entra_errors_get_advice() {
        let failure = |error: &str, description: &str| OAuthFailure {
            status: 400,
            error: error.into(),
            description: description.into(),
            codes: vec![],
        };
        assert!(
            hint(&failure(
                "invalid_client",
                "AADSTS7000215: Invalid client secret"
            ))
            .contains("Value, not its Secret ID")
        );
        assert!(
            hint(&failure(
                "invalid_grant",
                "AADSTS700082: The refresh token has expired"
            ))
            .contains("oauth login")
        );
        assert_eq!(hint(&failure("temporarily_unavailable", "")), "");
    }
}
