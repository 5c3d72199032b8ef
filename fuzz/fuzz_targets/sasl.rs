//! SASL decoding (`smtp::sasl`) and the server's AUTH state machine (`policy::sasl_server`).
//! Invariants: decoders never panic and round-trip with their encoders; credentials and the
//! exchange's steps never show a password in `Debug`; an exchange that returned `Credentials` or
//! `Failed` is over (then every line gets `503`), one that returned `Challenge` is not;
//! `Credentials` always carry a non-empty user name and password.
//!
//! Input: UTF-8 text, one line per client line (as the session hands them over, without line
//! endings). The first line is the AUTH command's argument: `MECHANISM [initial-response]`; the
//! others answer the challenges. Every line also goes through each decoder, and its tab-separated
//! parts (authzid, user, password) through each encoder and back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smarthost::policy::sasl_server::{SaslExchange, SaslStep};
use smarthost::smtp::sasl::{
    decode_login_line, decode_plain, decode_xoauth2, login_encode, plain_initial_response,
    xoauth2_initial_response,
};

/// A password worth looking for in `Debug` output: long enough not to appear there by chance.
fn findable(password: &str) -> bool {
    password.len() >= 12 && password.chars().all(|c| c.is_ascii_alphanumeric())
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let command = lines.next().unwrap_or_default();
    let client_lines: Vec<&str> = lines.collect();
    for line in std::iter::once(command).chain(client_lines.iter().copied()) {
        decoders(line);
        let mut parts = line.splitn(3, '\t');
        let (z, u, p) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        encoders(z, u, p);
    }

    // The server's state machine.
    let (mechanism, initial) = match command.split_once(' ') {
        Some((mechanism, initial)) => (mechanism, Some(initial)),
        None => (command, None),
    };
    let (mut exchange, mut step) = SaslExchange::start(mechanism, initial);
    let mut lines = client_lines.iter();
    loop {
        check_step(&step);
        match step {
            SaslStep::Challenge(_) => assert!(!exchange.is_done(), "challenge, yet done"),
            SaslStep::Credentials { .. } | SaslStep::Failed(_) => {
                assert!(exchange.is_done(), "over, yet waiting");
                // Once over, always over.
                if let Some(line) = lines.next() {
                    match exchange.next(line) {
                        SaslStep::Failed(reply) => assert_eq!(reply.code, 503),
                        other => panic!("a finished exchange went on: {other:?}"),
                    }
                }
                break;
            }
        }
        let Some(line) = lines.next() else { break };
        step = exchange.next(line);
    }
});

/// Decoders on arbitrary text: errors, never panics; round trips; `Debug` redacts.
fn decoders(raw: &str) {
    if let Ok(creds) = decode_plain(raw) {
        assert!(!creds.username.is_empty() && !creds.password.is_empty());
        let again = decode_plain(&plain_initial_response(
            &creds.authzid,
            &creds.username,
            &creds.password,
        ));
        assert_eq!(again.as_ref(), Ok(&creds));
        if findable(&creds.password)
            && !creds.username.contains(&creds.password)
            && !creds.authzid.contains(&creds.password)
        {
            assert!(!format!("{creds:?}").contains(&creds.password));
        }
    }
    if let Ok(text) = decode_login_line(raw) {
        assert_eq!(decode_login_line(&login_encode(&text)), Ok(text));
    }
    if let Ok(creds) = decode_xoauth2(raw) {
        assert!(!creds.user.is_empty() && !creds.access_token.is_empty());
        if findable(&creds.access_token) && !creds.user.contains(&creds.access_token) {
            assert!(!format!("{creds:?}").contains(&creds.access_token));
        }
    }
    let _ = decode_xoauth2(&login_encode(raw));
}

/// Encoders → decoders give back what was encoded.
fn encoders(z: &str, u: &str, p: &str) {
    let plain = decode_plain(&plain_initial_response(z, u, p));
    if [z, u, p].iter().any(|s| s.contains('\0')) || u.is_empty() || p.is_empty() {
        assert!(plain.is_err(), "{plain:?}");
    } else {
        let creds = plain.expect("an encoded PLAIN response decodes");
        assert_eq!(
            (
                creds.authzid.as_str(),
                creds.username.as_str(),
                creds.password.as_str()
            ),
            (z, u, p)
        );
    }
    assert_eq!(decode_login_line(&login_encode(p)).as_deref(), Ok(p));
    if !u.is_empty() && !u.contains('\x01') && !p.trim().is_empty() && !p.contains('\x01') {
        let creds = decode_xoauth2(&xoauth2_initial_response(u, p)).expect("XOAUTH2 decodes");
        assert_eq!(
            (creds.user.as_str(), creds.access_token.as_str()),
            (u, p.trim())
        );
    }
}

fn check_step(step: &SaslStep) {
    match step {
        SaslStep::Challenge(text) => {
            assert!(
                text.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
            );
        }
        SaslStep::Credentials { username, password } => {
            assert!(!username.is_empty());
            assert!(!password.expose().is_empty());
            if findable(password.expose()) && !username.contains(password.expose()) {
                assert!(
                    !format!("{step:?}").contains(password.expose()),
                    "password in Debug"
                );
            }
        }
        SaslStep::Failed(reply) => {
            assert!(reply.is_permanent(), "{reply:?}");
            assert!(reply.enhanced().is_some(), "{reply:?}");
        }
    }
}
