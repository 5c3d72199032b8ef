//! OAuth 2.0 access tokens from Microsoft Entra ID for XOAUTH2 and Graph. (Being written: issue 4.)

use crate::config::{OAuthConfig, Secret};
use std::sync::Arc;

/// An access token and when it expires (Unix seconds). Never logged: `Debug` redacts it.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub value: Secret,
    pub expires_at: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("{0}")]
    Failed(String),
}

/// Gets, caches and renews the access tokens of one credential.
#[derive(Debug)]
pub struct TokenProvider {
    config: OAuthConfig,
}

impl TokenProvider {
    pub fn new(config: &OAuthConfig) -> anyhow::Result<Arc<TokenProvider>> {
        Ok(Arc::new(TokenProvider {
            config: config.clone(),
        }))
    }

    /// A token with at least 600 seconds left (HVE refuses shorter ones).
    pub async fn access_token(&self) -> Result<AccessToken, OAuthError> {
        Err(OAuthError::Failed(format!(
            "OAuth 2.0 is not implemented yet in this build (client {})",
            self.config.client_id
        )))
    }

    /// Drops `token` from the cache after the upstream refused it (535, 401), so the next call gets
    /// a fresh one.
    pub fn invalidate(&self, token: &AccessToken) {
        let _ = token;
    }
}
