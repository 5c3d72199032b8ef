//! The server side of SMTP AUTH (RFC 4954) as a pure state machine: the session feeds it the AUTH
//! command and each client line, and writes what it returns. No I/O, no password checks: the
//! exchange ends in [`SaslStep::Credentials`], which the session verifies (`UserDb::verify`, in
//! `spawn_blocking`), or in [`SaslStep::Failed`] with the reply to send.
//!
//! Mechanisms: PLAIN (RFC 4616) and LOGIN, both of which need TLS or a trusted network since the
//! password travels in the clear. CRAM-MD5 is not offered: it needs the plaintext password on the
//! server, and `[[user]]` keeps only argon2 hashes.
//!
//! Invariants:
//! - The password is held only in [`Secret`] (redacted `Debug`), and the exchange itself never holds
//!   it: it is handed out in the step that completes the exchange.
//! - A `Failed` step is a protocol problem (cancelled, undecodable, an authorization identity other
//!   than the user): no password was tried, so the session need not count it as a failed login.
//! - Once an exchange returned `Credentials` or `Failed`, it is over; further lines fail with `503`.

use crate::config::Secret;
use crate::smtp::Reply;
use crate::smtp::sasl::{
    LOGIN_PASSWORD_CHALLENGE, LOGIN_USERNAME_CHALLENGE, SaslError, decode_login_line, decode_plain,
};

/// The mechanisms offered, in the order of the EHLO keyword (`250-AUTH PLAIN LOGIN`).
pub const MECHANISMS: &[&str] = &["PLAIN", "LOGIN"];

/// What the session does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaslStep {
    /// Send `334 <text>` and feed the client's next line to [`SaslExchange::next`]. The text is
    /// already base64 (empty for PLAIN's empty challenge).
    Challenge(String),
    /// The client has said who it is; verify the password.
    Credentials { username: String, password: Secret },
    /// Send this reply; the exchange is over.
    Failed(Reply),
}

/// One AUTH exchange in progress.
#[derive(Debug)]
pub struct SaslExchange {
    state: State,
}

#[derive(Debug)]
enum State {
    /// PLAIN without an initial response: the empty challenge was sent.
    PlainResponse,
    LoginUsername,
    LoginPassword {
        username: String,
    },
    Done,
}

impl SaslExchange {
    /// Starts an exchange for `AUTH <mechanism> [initial-response]`. `initial_response` is the text
    /// after the mechanism (`Some("")` or `Some("=")` for an explicitly empty one).
    pub fn start(mechanism: &str, initial_response: Option<&str>) -> (SaslExchange, SaslStep) {
        let mut exchange = SaslExchange { state: State::Done };
        let step = if mechanism.eq_ignore_ascii_case("PLAIN") {
            match initial_response {
                Some(response) => plain(response),
                None => {
                    exchange.state = State::PlainResponse;
                    SaslStep::Challenge(String::new())
                }
            }
        } else if mechanism.eq_ignore_ascii_case("LOGIN") {
            // The user name may come as an initial response (draft-murchison-sasl-login §2.1).
            match initial_response {
                Some(response) => exchange.login_username(response),
                None => {
                    exchange.state = State::LoginUsername;
                    SaslStep::Challenge(LOGIN_USERNAME_CHALLENGE.to_string())
                }
            }
        } else {
            SaslStep::Failed(Reply::new(504, "5.5.4 Unrecognized authentication type"))
        };
        (exchange, step)
    }

    /// Feeds the client's answer to the last challenge (without its line ending).
    pub fn next(&mut self, client_line: &str) -> SaslStep {
        match std::mem::replace(&mut self.state, State::Done) {
            State::PlainResponse => plain(client_line),
            State::LoginUsername => self.login_username(client_line),
            State::LoginPassword { username } => match decode_login_line(client_line) {
                Ok(password) if password.is_empty() => failed_empty(),
                Ok(password) => SaslStep::Credentials {
                    username,
                    password: Secret::new(password),
                },
                Err(e) => failed(e),
            },
            State::Done => SaslStep::Failed(Reply::new(
                503,
                "5.5.1 No authentication exchange in progress",
            )),
        }
    }

    /// Whether the exchange is waiting for a client line.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn login_username(&mut self, line: &str) -> SaslStep {
        match decode_login_line(line) {
            Ok(username) if username.is_empty() => failed_empty(),
            Ok(username) => {
                self.state = State::LoginPassword { username };
                SaslStep::Challenge(LOGIN_PASSWORD_CHALLENGE.to_string())
            }
            Err(e) => failed(e),
        }
    }
}

fn plain(response: &str) -> SaslStep {
    match decode_plain(response) {
        Ok(creds) if !creds.authzid.is_empty() && creds.authzid != creds.username => {
            SaslStep::Failed(Reply::new(
                535,
                "5.7.8 Authentication credentials invalid: the authorization identity must be \
                 empty or the user name",
            ))
        }
        Ok(creds) => SaslStep::Credentials {
            username: creds.username,
            password: Secret::new(creds.password),
        },
        Err(e) => failed(e),
    }
}

fn failed(error: SaslError) -> SaslStep {
    SaslStep::Failed(match error {
        SaslError::Cancelled => Reply::new(501, "5.0.0 Authentication cancelled"),
        SaslError::InvalidBase64 | SaslError::NotUtf8 => {
            Reply::new(501, "5.5.2 Cannot decode response")
        }
        // The message names the expected shape, never the input.
        SaslError::Malformed(shape) => {
            Reply::new(501, format!("5.5.2 Cannot decode response: {shape}"))
        }
    })
}

fn failed_empty() -> SaslStep {
    failed(SaslError::Malformed(
        "the user name and the password must not be empty",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    fn b64(s: &str) -> String {
        STANDARD.encode(s)
    }

    fn creds(username: &str, password: &str) -> SaslStep {
        SaslStep::Credentials {
            username: username.to_string(),
            password: Secret::new(password),
        }
    }

    fn challenge(text: &str) -> SaslStep {
        SaslStep::Challenge(text.to_string())
    }

    fn fail(code: u16, text: &str) -> SaslStep {
        SaslStep::Failed(Reply::new(code, text))
    }

    /// Runs one exchange: the AUTH command, then each client line; every step is compared.
    fn exchange(mechanism: &str, initial: Option<&str>, lines: &[&str], expected: &[SaslStep]) {
        let (mut exchange, first) = SaslExchange::start(mechanism, initial);
        let mut steps = vec![first];
        for line in lines {
            steps.push(exchange.next(line));
        }
        assert_eq!(steps, expected, "{mechanism} {initial:?} {lines:?}");
        assert!(exchange.is_done());
    }

    const CANCELLED: (u16, &str) = (501, "5.0.0 Authentication cancelled");
    const UNDECODABLE: (u16, &str) = (501, "5.5.2 Cannot decode response");
    const EMPTY: (u16, &str) = (
        501,
        "5.5.2 Cannot decode response: the user name and the password must not be empty",
    );
    const SHAPE: (u16, &str) = (
        501,
        "5.5.2 Cannot decode response: PLAIN needs authzid NUL username NUL password",
    );
    const AUTHZID: (u16, &str) = (
        535,
        "5.7.8 Authentication credentials invalid: the authorization identity must be empty or \
         the user name",
    );

    #[test]
    fn plain_exchanges() {
        let tim = b64("\0tim\0tanstaaftanstaaf");
        let cases: Vec<(Option<String>, Vec<String>, Vec<SaslStep>)> = vec![
            // Initial response.
            (
                Some(tim.clone()),
                vec![],
                vec![creds("tim", "tanstaaftanstaaf")],
            ),
            // Empty challenge, then the response.
            (
                None,
                vec![tim.clone()],
                vec![challenge(""), creds("tim", "tanstaaftanstaaf")],
            ),
            // authzid equal to the user is the same thing.
            (Some(b64("tim\0tim\0pw")), vec![], vec![creds("tim", "pw")]),
            (
                Some(b64("boss\0tim\0pw")),
                vec![],
                vec![fail(AUTHZID.0, AUTHZID.1)],
            ),
            (
                None,
                vec!["*".into()],
                vec![challenge(""), fail(CANCELLED.0, CANCELLED.1)],
            ),
            (
                Some("*".into()),
                vec![],
                vec![fail(CANCELLED.0, CANCELLED.1)],
            ),
            (
                Some("not base64!".into()),
                vec![],
                vec![fail(UNDECODABLE.0, UNDECODABLE.1)],
            ),
            (
                None,
                vec!["%%%".into()],
                vec![challenge(""), fail(UNDECODABLE.0, UNDECODABLE.1)],
            ),
            (
                Some(b64("\0tim\0\u{0}")),
                vec![],
                vec![fail(SHAPE.0, SHAPE.1)],
            ),
            (Some(b64("\0tim\0")), vec![], vec![fail(SHAPE.0, SHAPE.1)]),
            // `AUTH PLAIN =`: an explicitly empty initial response, which has no credentials.
            (Some(String::new()), vec![], vec![fail(SHAPE.0, SHAPE.1)]),
            (Some("=".into()), vec![], vec![fail(SHAPE.0, SHAPE.1)]),
            // Non-ASCII passwords, and a trailing CR the session left in.
            (
                Some(b64("\0jürgen\0pässwörd")),
                vec![],
                vec![creds("jürgen", "pässwörd")],
            ),
            (
                None,
                vec![format!("{tim}\r")],
                vec![challenge(""), creds("tim", "tanstaaftanstaaf")],
            ),
        ];
        for (initial, lines, expected) in cases {
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            exchange("PLAIN", initial.as_deref(), &lines, &expected);
        }
    }

    #[test]
    fn login_exchanges() {
        let user = LOGIN_USERNAME_CHALLENGE;
        let pass = LOGIN_PASSWORD_CHALLENGE;
        let cases: Vec<(Option<String>, Vec<String>, Vec<SaslStep>)> = vec![
            (
                None,
                vec![b64("scanner"), b64("pa55 word")],
                vec![
                    challenge(user),
                    challenge(pass),
                    creds("scanner", "pa55 word"),
                ],
            ),
            // The user name as the initial response.
            (
                Some(b64("scanner")),
                vec![b64("pw")],
                vec![challenge(pass), creds("scanner", "pw")],
            ),
            (
                None,
                vec!["*".into()],
                vec![challenge(user), fail(CANCELLED.0, CANCELLED.1)],
            ),
            (
                None,
                vec![b64("scanner"), "*".into()],
                vec![
                    challenge(user),
                    challenge(pass),
                    fail(CANCELLED.0, CANCELLED.1),
                ],
            ),
            (
                None,
                vec!["@@@".into()],
                vec![challenge(user), fail(UNDECODABLE.0, UNDECODABLE.1)],
            ),
            (
                None,
                vec![b64("scanner"), STANDARD.encode(b"\xff\xfe")],
                vec![
                    challenge(user),
                    challenge(pass),
                    fail(UNDECODABLE.0, UNDECODABLE.1),
                ],
            ),
            (
                None,
                vec![String::new()],
                vec![challenge(user), fail(EMPTY.0, EMPTY.1)],
            ),
            (Some(String::new()), vec![], vec![fail(EMPTY.0, EMPTY.1)]),
            (
                None,
                vec![b64("scanner"), String::new()],
                vec![challenge(user), challenge(pass), fail(EMPTY.0, EMPTY.1)],
            ),
        ];
        for (initial, lines, expected) in cases {
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            exchange("LOGIN", initial.as_deref(), &lines, &expected);
        }
    }

    #[test]
    fn mechanisms_are_matched_without_case_and_others_are_refused() {
        let unknown = fail(504, "5.5.4 Unrecognized authentication type");
        let cases = [
            ("plain", None, challenge("")),
            ("Login", None, challenge(LOGIN_USERNAME_CHALLENGE)),
            ("CRAM-MD5", None, unknown.clone()),
            ("XOAUTH2", Some("dXNlcj1h"), unknown.clone()),
            ("DIGEST-MD5", None, unknown.clone()),
            ("", None, unknown.clone()),
        ];
        for (mechanism, initial, expected) in cases {
            let (exchange, step) = SaslExchange::start(mechanism, initial);
            assert_eq!(step, expected, "{mechanism}");
            assert_eq!(exchange.is_done(), !matches!(step, SaslStep::Challenge(_)));
        }
        for mechanism in MECHANISMS {
            let (_, step) = SaslExchange::start(mechanism, None);
            assert!(matches!(step, SaslStep::Challenge(_)), "{mechanism}");
        }
    }

    #[test]
    fn a_finished_exchange_takes_no_more_lines() {
        let (mut exchange, step) = SaslExchange::start("PLAIN", Some(&b64("\0u\0p")));
        assert_eq!(step, creds("u", "p"));
        assert_eq!(
            exchange.next(&b64("\0u\0p")),
            fail(503, "5.5.1 No authentication exchange in progress")
        );
    }

    #[test]
    fn passwords_never_show_in_debug_output() {
        let (mut exchange, _) = SaslExchange::start("LOGIN", Some(&b64("scanner")));
        let step = exchange.next(&b64("s3cret-pw"));
        let shown = format!("{step:?} {exchange:?}");
        assert!(
            shown.contains("scanner") && !shown.contains("s3cret"),
            "{shown}"
        );
        let (_, step) = SaslExchange::start("PLAIN", Some(&b64("boss\0tim\0s3cret-pw")));
        assert!(!format!("{step:?}").contains("s3cret"));
        let (_, step) = SaslExchange::start("PLAIN", Some(&b64("\0tim\0s3cret-pw\0x")));
        assert!(!format!("{step:?}").contains("s3cret"));
    }
}
