//! AUTH in the session (RFC 4954): where it is allowed, the SASL exchange
//! ([`SaslExchange`]), the password check off the async threads, and the lockout.
//!
//! Failed logins count towards the lockout of the client's address (`[auth_lockout]`); a locked
//! address gets `454 4.7.0` without its password being tried. Protocol failures (cancelled,
//! undecodable) are client errors but not failed logins: no password was tried.

use super::{Closed, Line, Session};
use crate::config::Secret;
use crate::policy::lockout::TurnDecision;
use crate::policy::sasl_server::{SaslExchange, SaslStep};
use crate::smtp::Reply;

impl Session {
    /// Whether EHLO lists AUTH now.
    pub(super) fn auth_offered(&self) -> bool {
        let config = &self.listener.config;
        config.auth && (self.tls.is_some() || config.allow_plaintext_auth)
    }

    pub(super) async fn auth(
        &mut self,
        mechanism: &str,
        initial_response: Option<String>,
    ) -> Result<(), Closed> {
        let config = &self.listener.config;
        if !config.auth {
            return self.error_reply(Reply::new(
                502,
                "5.5.1 AUTH is not offered on this listener",
            ));
        }
        if !self.esmtp {
            return self.error_reply(Reply::new(503, "5.5.1 Send EHLO first"));
        }
        if self.tls.is_none() && !config.allow_plaintext_auth {
            return self.error_reply(Reply::new(
                538,
                "5.7.11 Encryption required for requested authentication mechanism",
            ));
        }
        if self.user.is_some() {
            return self.error_reply(Reply::new(503, "5.5.1 Already authenticated"));
        }
        if self.transaction.is_some() {
            return self.error_reply(Reply::new(
                503,
                "5.5.1 AUTH not permitted during a mail transaction",
            ));
        }
        if let Some(until) = self
            .context
            .lockout
            .is_locked(self.client_ip, self.context.clock.now())
        {
            tracing::warn!(
                client = %self.peer,
                until,
                "AUTH refused: the client address is locked out after failed attempts"
            );
            return self.error_reply(Reply::new(454, "4.7.0 Temporary authentication failure"));
        }

        let (mut exchange, mut step) = SaslExchange::start(mechanism, initial_response.as_deref());
        loop {
            match step {
                SaslStep::Challenge(text) => {
                    self.queue_reply(&Reply::new(334, text));
                    let line = match self.next_line().await? {
                        Line::Complete(line) => line,
                        Line::TooLong => {
                            return self.error_reply(Reply::new(
                                500,
                                "5.5.6 Authentication exchange line is too long",
                            ));
                        }
                    };
                    let line = String::from_utf8_lossy(&line);
                    step = exchange.next(line.trim_end_matches(['\r', '\n']));
                }
                SaslStep::Credentials { username, password } => {
                    return self.verify(mechanism, username, password).await;
                }
                SaslStep::Failed(reply) => {
                    tracing::info!(client = %self.peer, mechanism, reply = %reply.one_line(), "AUTH failed");
                    return self.error_reply(reply);
                }
            }
        }
    }

    /// Checks the password (argon2: slow on purpose, so on a blocking thread), then answers.
    async fn verify(
        &mut self,
        mechanism: &str,
        username: String,
        password: Secret,
    ) -> Result<(), Closed> {
        // A turn per password check, so that attempts sent in parallel count towards the lockout
        // before their passwords are checked (hardening finding, see policy::lockout).
        let lockout = self.context.lockout.clone();
        let turn = loop {
            let released = lockout.turn_released();
            tokio::pin!(released);
            released.as_mut().enable();
            match lockout.try_turn(self.client_ip, self.context.clock.now()) {
                TurnDecision::Go(turn) => break turn,
                TurnDecision::Locked(until) => {
                    tracing::warn!(
                        client = %self.peer,
                        until,
                        "AUTH refused: the client address is locked out after failed attempts"
                    );
                    return self
                        .error_reply(Reply::new(454, "4.7.0 Temporary authentication failure"));
                }
                TurnDecision::Wait => released.await,
            }
        };
        let users = self.context.users.clone();
        let name = username.clone();
        let verified = tokio::task::spawn_blocking(move || users.verify(&name, password.expose()))
            .await
            .unwrap_or(false);
        let locked = turn.finish(verified, self.context.clock.now());
        if verified {
            tracing::info!(client = %self.peer, user = %username, mechanism, "authenticated");
            self.user = Some(username);
            self.queue_reply(&Reply::new(235, "2.7.0 Authentication successful"));
            return Ok(());
        }
        tracing::warn!(
            client = %self.peer,
            user = ?username,
            mechanism,
            locked,
            "authentication failed: unknown user or wrong password"
        );
        self.error_reply(Reply::new(535, "5.7.8 Authentication credentials invalid"))
    }
}
