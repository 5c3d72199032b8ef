//! `smarthost oauth login --route NAME`: delegated sign-in with the device-code flow for a route whose
//! `[route.oauth]` has `flow = "device-code"`. A person opens the page shown, enters the code and signs
//! in with the mailbox's account; the refresh token is stored in the route's `token_file` (mode 0600)
//! and the relay turns it into access tokens from then on. Tokens are never printed.
//!
//! Exit codes: 0 signed in; 1 the sign-in failed (declined, expired, refused); 2 bad arguments or
//! configuration.

use crate::config::{self, Config, Credential, OAuthConfig, OAuthGrant, Transport};
use crate::deliver::oauth::device::{DeviceLogin, Progress};
use crate::deliver::oauth::token_file;
use clap::Subcommand;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Subcommand)]
pub enum OauthCommand {
    /// Sign in a person for a route with flow = "device-code" (the device-code flow: open the page
    /// shown, enter the code, sign in with the mailbox's account) and store the refresh token.
    Login {
        /// The route's name ([[route]] name = ...).
        #[arg(long, value_name = "NAME")]
        route: String,
        /// The relay's configuration file.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

/// Why `oauth login` did not sign anyone in.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Bad arguments or configuration (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The sign-in itself failed (exit 1).
    #[error("{0}")]
    Failed(String),
}

impl LoginError {
    pub fn exit_code(&self) -> u8 {
        match self {
            LoginError::Usage(_) => 2,
            LoginError::Failed(_) => 1,
        }
    }
}

pub fn run(command: OauthCommand) -> Result<(), LoginError> {
    match command {
        OauthCommand::Login { route, config } => {
            let Some(path) = config else {
                return Err(LoginError::Usage(
                    "oauth login needs --config FILE: the built-in configuration has no OAuth route"
                        .into(),
                ));
            };
            let config = config::load_file(&path).map_err(|errors| {
                LoginError::Usage(format!(
                    "{errors}{}: the configuration has errors",
                    path.display()
                ))
            })?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| LoginError::Failed(format!("cannot start the runtime: {e}")))?;
            let mut out = std::io::stdout();
            runtime
                .block_on(login(&config, &route, &mut out))
                .map(|_| ())
        }
    }
}

/// The route's delegated OAuth configuration and the mailbox it should sign in as.
fn delegated_route<'a>(
    config: &'a Config,
    name: &str,
) -> Result<(&'a OAuthConfig, &'a str), LoginError> {
    let Some(route) = config.routes.iter().find(|r| r.name == name) else {
        let names: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
        return Err(LoginError::Usage(format!(
            "no route named {name:?} in the configuration (routes: {})",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        )));
    };
    let found = match &route.transport {
        Transport::Smtp(smtp) => smtp.auth.as_ref().and_then(|auth| match &auth.credential {
            Credential::OAuth(oauth) => Some((oauth, auth.username.as_str())),
            Credential::Password(_) => None,
        }),
        Transport::Graph(graph) => Some((&graph.oauth, graph.mailbox.as_str())),
        Transport::Drop { .. } => None,
    };
    let Some((oauth, mailbox)) = found else {
        return Err(LoginError::Usage(format!(
            "route {name:?} does not sign in with OAuth 2.0 (it has no [route.oauth])"
        )));
    };
    if !matches!(oauth.grant, OAuthGrant::DeviceCode { .. }) {
        return Err(LoginError::Usage(format!(
            "route {name:?} signs in as the app (client credentials): it needs no `oauth login` \
             (set flow = \"device-code\" in [route.oauth] for a person to sign in instead)"
        )));
    }
    Ok((oauth, mailbox))
}

/// Runs the device-code flow for route `name`, writing instructions to `out`; returns the token file.
pub async fn login(
    config: &Config,
    name: &str,
    out: &mut impl Write,
) -> Result<PathBuf, LoginError> {
    let (oauth, mailbox) = delegated_route(config, name)?;
    let OAuthGrant::DeviceCode { token_file, .. } = &oauth.grant else {
        unreachable!("checked by delegated_route");
    };
    let login = DeviceLogin::new(oauth).map_err(|e| LoginError::Usage(format!("{e:#}")))?;
    let failed = |e: &dyn std::fmt::Display| LoginError::Failed(format!("sign-in failed: {e}"));
    let auth = login.start().await.map_err(|e| failed(&e))?;
    let say = |out: &mut dyn Write, text: String| {
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    };
    say(
        out,
        format!(
            "Signing in for route {name:?} (client {}, scope {}); sign in as {mailbox}.",
            oauth.client_id,
            login.scope()
        ),
    );
    say(out, auth.message.clone());
    say(
        out,
        format!(
            "Waiting for the sign-in (the code {} is valid for {} minutes)...",
            auth.user_code,
            auth.expires_in.div_ceil(60)
        ),
    );
    let stored = login
        .wait(&auth, |progress| {
            if let Progress::SlowDown(interval) = progress {
                eprintln!("(the server asked to poll less often: every {interval} s)");
            }
        })
        .await
        .map_err(|e| failed(&e))?;
    let account = stored.account.clone();
    write_token_file(token_file, stored).await?;
    match &account {
        Some(account) if !account.eq_ignore_ascii_case(mailbox) => say(
            out,
            format!(
                "Signed in as {account}. Note: the route sends as {mailbox}; the signed-in account needs Send As permission for it, or sign in again as {mailbox}."
            ),
        ),
        Some(account) => say(out, format!("Signed in as {account}.")),
        None => say(out, "Signed in.".to_string()),
    }
    say(
        out,
        format!(
            "The refresh token is stored in {} (mode 0600); the relay uses it from its next token renewal.",
            token_file.display()
        ),
    );
    Ok(token_file.clone())
}

async fn write_token_file(path: &Path, stored: token_file::StoredToken) -> Result<(), LoginError> {
    let owned = path.to_path_buf();
    tokio::task::spawn_blocking(move || token_file::write(&owned, &stored))
        .await
        .map_err(|e| LoginError::Failed(format!("internal error: {e}")))?
        .map_err(|e| {
            LoginError::Failed(format!(
                "signed in, but cannot store the refresh token in {}: {e}",
                path.display()
            ))
        })
}
