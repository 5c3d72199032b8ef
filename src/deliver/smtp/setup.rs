//! Setting up a connection before any transaction: TCP (each resolved address in turn), implicit TLS
//! or STARTTLS, the greeting, EHLO (HELO when allowed), AUTH. Every failure here is about the relay's
//! configuration or network, never about a message: the caller defers every recipient.
//!
//! Credentials leave this module only on the wire: commands that carry them are logged as `<redacted>`,
//! and replies to AUTH are scrubbed of anything the server might echo back.

use super::connection::{Connection, Failure, Peer, Upstream, lost, read, said};
use super::wire::{Stream, Wire};
use crate::config::{AuthConfig, AuthMechanism, SmtpRoute, TlsMode};
use crate::deliver::classify::{Stage, classify_at, explain};
use crate::deliver::oauth::AccessToken;
use crate::smtp::Reply;
use crate::smtp::sasl::{login_encode, plain_initial_response, xoauth2_initial_response};
use base64::Engine;
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use tokio::net::TcpStream;
use tracing::{debug, info};

/// The service extensions the upstream announced in its EHLO reply (RFC 5321 §4.1.1.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Extensions {
    pub(crate) pipelining: bool,
    /// `SIZE` offered; `Some(0)` means no fixed limit.
    pub(crate) size: Option<u64>,
    pub(crate) eight_bit_mime: bool,
    pub(crate) smtputf8: bool,
    pub(crate) starttls: bool,
    /// Upper-case mechanism names.
    pub(crate) auth: Vec<String>,
}

impl Extensions {
    pub(crate) fn from_ehlo(reply: &Reply) -> Self {
        let mut ext = Extensions::default();
        // The first line is the server's name and greeting text.
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            let keyword = keyword.to_ascii_uppercase();
            match keyword.as_str() {
                "PIPELINING" => ext.pipelining = true,
                "SIZE" => ext.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "8BITMIME" => ext.eight_bit_mime = true,
                "SMTPUTF8" => ext.smtputf8 = true,
                "STARTTLS" => ext.starttls = true,
                _ => {
                    // `AUTH PLAIN LOGIN`, and the pre-standard `AUTH=PLAIN LOGIN` some servers still send.
                    let first = keyword
                        .strip_prefix("AUTH=")
                        .or_else(|| (keyword == "AUTH").then_some(""));
                    if let Some(first) = first {
                        let mechanisms = std::iter::once(first.to_string())
                            .chain(words.map(str::to_ascii_uppercase))
                            .filter(|m| !m.is_empty());
                        for m in mechanisms {
                            if !ext.auth.contains(&m) {
                                ext.auth.push(m);
                            }
                        }
                    }
                }
            }
        }
        ext
    }
}

/// What is known while the connection is being set up, before there is a [`Connection`].
struct Setup<'a> {
    up: &'a Upstream,
    wire: Wire,
    peer: Peer,
}

/// Opens a connection ready for a transaction: TCP, TLS per the route, greeting, EHLO, AUTH.
pub(super) async fn open(up: &Upstream) -> Result<Connection, Failure> {
    let route = &up.route;
    // The token first: without one there is no point in connecting.
    let token = match &route.auth {
        Some(auth) if auth.mechanism == AuthMechanism::XOAuth2 => {
            Some(access_token(up, auth).await?)
        }
        _ => None,
    };
    let (tcp, peer) = connect_tcp(route).await?;
    info!(upstream = %peer, "connected");
    let stream = if route.tls == TlsMode::Implicit {
        Stream::Tls(Box::new(
            handshake(
                up,
                tcp,
                &peer,
                "TLS is required for this route (tls = \"implicit\")",
            )
            .await?,
        ))
    } else {
        Stream::Plain(tcp)
    };
    let mut setup = Setup {
        up,
        wire: Wire::new(stream, route.command_timeout).with_log(&up.log, peer.addr),
        peer,
    };
    let greeting = setup.read(Stage::Greeting, "the greeting").await?;
    if greeting.code != 220 {
        let failure = setup.rejected(Stage::Greeting, "the greeting", &greeting, "");
        setup.quit().await;
        return Err(failure);
    }
    let mut ext = setup.ehlo().await?;
    let wants_tls = match route.tls {
        TlsMode::StartTls => {
            if !ext.starttls {
                let failure = Failure::transient(format!(
                    "STARTTLS is required for this route (tls = \"starttls\") but {} did not offer it in reply to EHLO",
                    setup.peer
                ));
                setup.quit().await;
                return Err(failure);
            }
            true
        }
        TlsMode::Opportunistic => ext.starttls,
        TlsMode::Implicit | TlsMode::None => false,
    };
    if wants_tls {
        let required = route.tls == TlsMode::StartTls;
        let upgraded;
        (setup, upgraded) = setup.starttls(required).await?;
        if upgraded {
            ext = setup.ehlo().await?;
        }
    }
    if let Some(auth) = &route.auth {
        setup.authenticate(auth, &ext, token.as_ref()).await?;
    }
    Ok(Connection::new(setup.wire, setup.peer, ext))
}

impl Setup<'_> {
    async fn read(&mut self, stage: Stage, command: &str) -> Result<Reply, Failure> {
        read(&mut self.wire, &self.peer, stage, command).await
    }

    async fn send(&mut self, line: &str, logged: &str, command: &str) -> Result<(), Failure> {
        debug!(upstream = %self.peer, "C: {logged}");
        // The W3C log: AUTH with its mechanism only, SASL responses (`<redacted>`, `*`, ...) not at
        // all.
        if let Some(mechanism) = logged.strip_prefix("AUTH ") {
            let mechanism = mechanism.split(' ').next().unwrap_or("");
            self.wire.log_command(&format!("AUTH {mechanism}"));
        } else if logged.starts_with(|c: char| c.is_ascii_alphabetic()) {
            self.wire.log_command(logged);
        }
        self.wire
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .map_err(|e| lost(&self.peer, &format!("while sending {command}"), e))
    }

    /// A negative reply during set-up: never permanent (see `classify`), with a note when given.
    fn rejected(&self, stage: Stage, command: &str, reply: &Reply, note: &str) -> Failure {
        let mut reason = said(&self.peer, reply, stage, command);
        reason.push_str(note);
        Failure {
            class: classify_at(stage, reply),
            reason,
            refused_token: None,
        }
    }

    /// EHLO, or HELO when EHLO is refused and the route needs no extension (no TLS, no AUTH).
    async fn ehlo(&mut self) -> Result<Extensions, Failure> {
        let ehlo = format!("EHLO {}", self.up.helo_name);
        self.send(&ehlo, &ehlo, "EHLO").await?;
        let reply = self.read(Stage::Ehlo, "EHLO").await?;
        if reply.is_positive() {
            return Ok(Extensions::from_ehlo(&reply));
        }
        let route = &self.up.route;
        let needs_extensions =
            route.auth.is_some() || matches!(route.tls, TlsMode::StartTls | TlsMode::Implicit);
        if !reply.is_permanent() || needs_extensions {
            let note = if needs_extensions && reply.is_permanent() {
                " (EHLO is needed for STARTTLS/AUTH, which this route requires)"
            } else {
                ""
            };
            let failure = self.rejected(Stage::Ehlo, "EHLO", &reply, note);
            self.quit().await;
            return Err(failure);
        }
        info!(upstream = %self.peer, "EHLO refused ({}), trying HELO", reply.one_line());
        let helo = format!("HELO {}", self.up.helo_name);
        self.send(&helo, &helo, "HELO").await?;
        let reply = self.read(Stage::Ehlo, "HELO").await?;
        if reply.is_positive() {
            Ok(Extensions::default())
        } else {
            let failure = self.rejected(Stage::Ehlo, "HELO", &reply, "");
            self.quit().await;
            Err(failure)
        }
    }

    /// STARTTLS and the handshake. `false`: the server declined and plaintext may go on
    /// (opportunistic only). A failed handshake is never followed by plaintext: the attempt is deferred.
    async fn starttls(mut self, required: bool) -> Result<(Self, bool), Failure> {
        let why = if required {
            "STARTTLS is required for this route (tls = \"starttls\")"
        } else {
            "the upstream offered STARTTLS (tls = \"opportunistic\")"
        };
        self.send("STARTTLS", "STARTTLS", "STARTTLS").await?;
        let reply = self.read(Stage::StartTls, "STARTTLS").await?;
        if reply.code != 220 {
            if required {
                let failure = self.rejected(
                    Stage::StartTls,
                    "STARTTLS",
                    &reply,
                    "; STARTTLS is required for this route (tls = \"starttls\")",
                );
                self.quit().await;
                return Err(failure);
            }
            info!(upstream = %self.peer, "STARTTLS refused ({}), going on without TLS", reply.one_line());
            return Ok((self, false));
        }
        let tcp = self
            .wire
            .into_tcp_for_tls()
            .map_err(|e| Failure::transient(format!("{}: {e}; {why}", self.peer)))?;
        let tls = handshake(self.up, tcp, &self.peer, why).await?;
        let wire = Wire::new(Stream::Tls(Box::new(tls)), self.up.route.command_timeout)
            .with_log(&self.up.log, self.peer.addr);
        Ok((Setup { wire, ..self }, true))
    }

    async fn authenticate(
        &mut self,
        auth: &AuthConfig,
        ext: &Extensions,
        token: Option<&AccessToken>,
    ) -> Result<(), Failure> {
        if !matches!(self.wire.stream(), Stream::Tls(_)) && self.up.route.tls != TlsMode::None {
            // Opportunistic TLS that did not happen: an attacker who strips STARTTLS must not get the
            // password. Plaintext AUTH needs an explicit `tls = "none"`.
            let failure = Failure::transient(format!(
                "{} did not negotiate TLS, and credentials are sent only over TLS (set tls = \"none\" on the route to allow plaintext AUTH)",
                self.peer
            ));
            self.quit().await;
            return Err(failure);
        }
        let name = match auth.mechanism {
            AuthMechanism::Login => "LOGIN",
            AuthMechanism::Plain => "PLAIN",
            AuthMechanism::XOAuth2 => "XOAUTH2",
        };
        let command = format!("AUTH {name}");
        let note = if ext.auth.iter().any(|m| m == name) {
            String::new()
        } else {
            info!(upstream = %self.peer, "AUTH {name} not advertised (offered: {:?}); trying it anyway", ext.auth);
            format!(" (note: the upstream did not advertise AUTH {name})")
        };
        if auth.mechanism == AuthMechanism::XOAuth2 {
            let Some(token) = token else {
                self.quit().await;
                return Err(Failure::transient(
                    "internal error: AUTH XOAUTH2 without an access token".into(),
                ));
            };
            return self.xoauth2(&auth.username, token, note).await;
        }
        let Some(password) = auth.password().map(|p| p.expose()) else {
            self.quit().await;
            return Err(Failure::transient(format!(
                "AUTH {name} needs a password, but the route has OAuth 2.0 credentials (use mechanism = \"xoauth2\")"
            )));
        };
        // Each step: (the line sent, what the log shows). `secret` is what a server could echo back.
        let (steps, secret): (Vec<(String, &str)>, String) = match auth.mechanism {
            AuthMechanism::Login => {
                let encoded = login_encode(password);
                let steps = vec![
                    ("AUTH LOGIN".to_string(), "AUTH LOGIN"),
                    (login_encode(&auth.username), "<redacted>"),
                    (encoded.clone(), "<redacted>"),
                ];
                (steps, encoded)
            }
            AuthMechanism::Plain => {
                let initial = plain_initial_response("", &auth.username, password);
                let steps = vec![(format!("AUTH PLAIN {initial}"), "AUTH PLAIN <redacted>")];
                (steps, initial)
            }
            AuthMechanism::XOAuth2 => unreachable!("handled above"),
        };
        let secrets = [secret, password.to_string()];
        let last = steps.len() - 1;
        for (i, (line, logged)) in steps.iter().enumerate() {
            self.send(line, logged, &command).await?;
            let mut reply = self.read(Stage::Auth, &command).await?;
            scrub(&mut reply, &secrets);
            let expected = if i == last {
                reply.is_positive()
            } else {
                reply.code == 334
            };
            if !expected {
                if reply.code == 334 {
                    // A challenge we have no answer for: cancel the exchange (RFC 4954 §4).
                    let _ = self.send("*", "*", &command).await;
                    let _ = self.read(Stage::Auth, &command).await;
                }
                let mut note = note;
                if reply.is_permanent() && explain(&reply).is_none() {
                    note.push_str("; authentication failed: check the route's credentials");
                }
                let failure = self.rejected(Stage::Auth, &command, &reply, &note);
                self.quit().await;
                return Err(failure);
            }
        }
        info!(upstream = %self.peer, user = %auth.username, "authenticated with AUTH {name}");
        Ok(())
    }

    /// SASL XOAUTH2 with the initial response in the command (one line, over 2,500 bytes with a
    /// Microsoft token). A failing server may first send `334 <base64 JSON error>`; an empty line
    /// answers it and the final reply follows. A 5xx marks the token as refused (see `Failure`).
    async fn xoauth2(
        &mut self,
        user: &str,
        token: &AccessToken,
        mut note: String,
    ) -> Result<(), Failure> {
        const COMMAND: &str = "AUTH XOAUTH2";
        let initial = xoauth2_initial_response(user, token.value.expose());
        let secrets = [initial.clone(), token.value.expose().to_string()];
        self.send(
            &format!("{COMMAND} {initial}"),
            "AUTH XOAUTH2 <redacted>",
            COMMAND,
        )
        .await?;
        let mut reply = self.read(Stage::Auth, COMMAND).await?;
        if reply.code == 334 {
            let challenge = reply.lines.join("");
            if let Some(details) = base64::engine::general_purpose::STANDARD
                .decode(challenge.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .filter(|d| !d.trim().is_empty())
            {
                let one_line = details.split_whitespace().collect::<Vec<_>>().join(" ");
                let mut shown = Reply::new(334, one_line);
                scrub(&mut shown, &secrets);
                note.push_str(&format!(" (the server's details: {})", shown.lines[0]));
            }
            self.send("", "<empty response>", COMMAND).await?;
            reply = self.read(Stage::Auth, COMMAND).await?;
        }
        scrub(&mut reply, &secrets);
        if reply.is_positive() {
            info!(upstream = %self.peer, %user, "authenticated with AUTH XOAUTH2");
            return Ok(());
        }
        if reply.is_permanent() && explain(&reply).is_none() {
            note.push_str(&format!(
                "; the access token was refused: check the app's permission (SMTP.SendAsApp with admin consent) and its access to the mailbox {user}"
            ));
        }
        let mut failure = self.rejected(Stage::Auth, COMMAND, &reply, &note);
        if reply.is_permanent() {
            failure.refused_token = Some(token.clone());
        }
        self.quit().await;
        Err(failure)
    }

    async fn quit(&mut self) {
        if self.send("QUIT", "QUIT", "QUIT").await.is_ok()
            && let Ok(reply) = self.wire.read_reply().await
        {
            self.wire.log_reply(&reply, false);
        }
        self.wire.shutdown().await;
    }
}

/// An access token for XOAUTH2 from the route's provider. A failure defers every recipient with the
/// reason (Entra's answer quoted): authentication problems are never the recipients' fault.
async fn access_token(up: &Upstream, auth: &AuthConfig) -> Result<AccessToken, Failure> {
    let route = &up.route;
    let Some(tokens) = &up.tokens else {
        return Err(Failure::transient(format!(
            "AUTH XOAUTH2 to {}:{} needs OAuth 2.0 credentials ([route.oauth]), but the route has a password",
            route.host, route.port
        )));
    };
    tokens.access_token().await.map_err(|e| {
        Failure::transient(format!(
            "no OAuth 2.0 access token for {} (AUTH XOAUTH2 to {}:{}): {e}",
            auth.username, route.host, route.port
        ))
    })
}

/// Resolves the route's host and tries each address in turn, each within the connect timeout.
async fn connect_tcp(route: &SmtpRoute) -> Result<(TcpStream, Peer), Failure> {
    let timeout = route.connect_timeout;
    let target = format!("{}:{}", route.host, route.port);
    let addrs: Vec<SocketAddr> = match tokio::time::timeout(
        timeout,
        tokio::net::lookup_host((route.host.as_str(), route.port)),
    )
    .await
    {
        Ok(Ok(addrs)) => addrs.collect(),
        Ok(Err(e)) => return Err(Failure::transient(format!("cannot resolve {target}: {e}"))),
        Err(_) => {
            return Err(Failure::transient(format!(
                "cannot resolve {target}: no answer within {}",
                humantime::format_duration(timeout)
            )));
        }
    };
    if addrs.is_empty() {
        return Err(Failure::transient(format!(
            "cannot resolve {target}: no addresses"
        )));
    }
    let mut errors = Vec::new();
    for addr in addrs {
        let peer = Peer {
            host: route.host.clone(),
            addr,
        };
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) if is_self_connect(&tcp) => {
                // Nothing listens on a local port and the kernel gave us that very port: a TCP
                // self-connect. Drop it at once, or it would hold the upstream's port.
                errors.push(format!("{peer}: connection refused (nothing is listening)"));
            }
            Ok(Ok(tcp)) => {
                let _ = tcp.set_nodelay(true);
                return Ok((tcp, peer));
            }
            Ok(Err(e)) => errors.push(format!("{peer}: {e}")),
            Err(_) => errors.push(format!(
                "{peer}: no connection within {}",
                humantime::format_duration(timeout)
            )),
        }
        info!("cannot connect: {}", errors.last().expect("just pushed"));
    }
    let reason = match errors.as_slice() {
        [only] => format!("cannot connect to {only}"),
        all => format!(
            "cannot connect to {target} at any of its addresses: {}",
            all.join("; ")
        ),
    };
    Err(Failure::transient(reason))
}

fn is_self_connect(tcp: &TcpStream) -> bool {
    matches!((tcp.local_addr(), tcp.peer_addr()), (Ok(local), Ok(peer)) if local == peer)
}

/// The TLS handshake, with the certificate and the host name verified against the route's roots.
async fn handshake(
    up: &Upstream,
    tcp: TcpStream,
    peer: &Peer,
    why: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Failure> {
    let name = ServerName::try_from(up.route.host.clone()).map_err(|e| {
        Failure::transient(format!(
            "{peer}: \"{}\" is not a valid TLS server name: {e}",
            up.route.host
        ))
    })?;
    let timeout = up.route.command_timeout;
    let tls = match tokio::time::timeout(timeout, up.tls.connect(name, tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            return Err(Failure::transient(format!(
                "{peer}: TLS handshake failed: {e}; {why}"
            )));
        }
        Err(_) => {
            let reason = format!(
                "{peer}: TLS handshake failed: no answer within {}; {why}",
                humantime::format_duration(timeout)
            );
            return Err(Failure::transient(reason));
        }
    };
    let (_, session) = tls.get_ref();
    let (version, cipher) = super::tls::negotiated(session);
    info!(upstream = %peer, %version, %cipher, "TLS established");
    Ok(tls)
}

/// Removes anything secret a server might echo back in a reply to AUTH.
pub(crate) fn scrub(reply: &mut Reply, secrets: &[String]) {
    for line in &mut reply.lines {
        for secret in secrets.iter().filter(|s| !s.is_empty()) {
            if line.contains(secret.as_str()) {
                *line = line.replace(secret.as_str(), "<redacted>");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_are_read_from_the_ehlo_reply() {
        let reply = Reply::multiline(
            250,
            [
                "smtp.example Hello [192.0.2.1]",
                "SIZE 157286400",
                "PIPELINING",
                "8BITMIME",
                "STARTTLS",
                "AUTH LOGIN XOAUTH2",
                "AUTH=PLAIN login",
                "smtputf8",
            ]
            .map(String::from)
            .to_vec(),
        );
        let ext = Extensions::from_ehlo(&reply);
        assert_eq!(
            ext,
            Extensions {
                pipelining: true,
                size: Some(157_286_400),
                eight_bit_mime: true,
                smtputf8: true,
                starttls: true,
                auth: vec!["LOGIN".into(), "XOAUTH2".into(), "PLAIN".into()],
            }
        );
        let bare = Extensions::from_ehlo(&Reply::multiline(250, vec!["x".into(), "SIZE".into()]));
        assert_eq!(bare.size, Some(0));
        assert!(!bare.pipelining && bare.auth.is_empty());
        // The greeting line is not an extension even when it looks like one.
        assert!(!Extensions::from_ehlo(&Reply::new(250, "PIPELINING")).pipelining);
    }

    #[test]
    fn replies_to_auth_are_scrubbed_of_secrets() {
        let mut reply = Reply::new(535, "5.7.8 bad credentials for cGFzcw== (pass)");
        scrub(
            &mut reply,
            &["cGFzcw==".into(), "pass".into(), String::new()],
        );
        assert_eq!(
            reply.lines[0],
            "5.7.8 bad credentials for <redacted> (<redacted>)"
        );
    }
}
