//! SASL encodings used in SMTP AUTH (RFC 4954): PLAIN (RFC 4616), LOGIN, XOAUTH2.
//! Pure functions: strings in, base64 out (and back, for the server side).
//!
//! Invariants:
//! - Secrets (passwords, access tokens) never appear in `Debug` output or in [`SaslError`]: the
//!   credential types redact them by hand and errors name only what was wrong, never the input.
//! - Decoding is lenient where clients differ harmlessly (surrounding whitespace, missing `=` padding)
//!   and strict where the meaning would change (extra or missing NUL separators, invalid UTF-8).
//! - A response of `*` is the client cancelling the exchange (RFC 4954 §4); every decoder reports it
//!   as [`SaslError::Cancelled`] so the session can answer `501` without guessing.

use std::fmt;

use base64::Engine;
use base64::alphabet;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// `Username:`, the first LOGIN challenge, base64-encoded.
pub const LOGIN_USERNAME_CHALLENGE: &str = "VXNlcm5hbWU6";
/// `Password:`, the second LOGIN challenge, base64-encoded.
pub const LOGIN_PASSWORD_CHALLENGE: &str = "UGFzc3dvcmQ6";

/// Some clients omit the padding; the bytes are the same either way.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a client's SASL response could not be used. Never carries the response itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    #[error("authentication cancelled by the client")]
    Cancelled,
    #[error("response is not valid base64")]
    InvalidBase64,
    #[error("response is not valid UTF-8")]
    NotUtf8,
    #[error("malformed response: {0}")]
    Malformed(&'static str),
}

/// The decoded PLAIN response (RFC 4616): `authzid NUL authcid NUL passwd`.
#[derive(Clone, PartialEq, Eq)]
pub struct PlainCredentials {
    /// The identity to act as; empty when the client asks to act as itself.
    pub authzid: String,
    pub username: String,
    pub password: String,
}

impl fmt::Debug for PlainCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlainCredentials")
            .field("authzid", &self.authzid)
            .field("username", &self.username)
            .field("password", &format_args!("<redacted>"))
            .finish()
    }
}

/// The decoded XOAUTH2 response: `user=U ^A auth=Bearer T ^A ^A`.
#[derive(Clone, PartialEq, Eq)]
pub struct Xoauth2Credentials {
    pub user: String,
    pub access_token: String,
}

impl fmt::Debug for Xoauth2Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Xoauth2Credentials")
            .field("user", &self.user)
            .field("access_token", &format_args!("<redacted>"))
            .finish()
    }
}

/// The PLAIN initial response: base64 of `authzid NUL user NUL password`.
pub fn plain_initial_response(authzid: &str, user: &str, password: &str) -> String {
    STANDARD.encode(format!("{authzid}\0{user}\0{password}"))
}

/// One LOGIN response line (the user name or the password), base64-encoded.
pub fn login_encode(s: &str) -> String {
    STANDARD.encode(s)
}

/// The XOAUTH2 initial response: base64 of `user=U \x01 auth=Bearer T \x01 \x01`.
pub fn xoauth2_initial_response(user: &str, access_token: &str) -> String {
    STANDARD.encode(format!("user={user}\x01auth=Bearer {access_token}\x01\x01"))
}

/// Decodes a PLAIN response. The user name and password must be non-empty (RFC 4616 §2).
pub fn decode_plain(b64: &str) -> Result<PlainCredentials, SaslError> {
    const SHAPE: &str = "PLAIN needs authzid NUL username NUL password";
    let bytes = decode(b64)?;
    let mut parts = bytes.split(|&b| b == 0);
    let (Some(authzid), Some(username), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed(SHAPE));
    };
    if username.is_empty() || password.is_empty() {
        return Err(SaslError::Malformed(SHAPE));
    }
    Ok(PlainCredentials {
        authzid: utf8(authzid)?,
        username: utf8(username)?,
        password: utf8(password)?,
    })
}

/// Decodes one LOGIN response line (user name or password).
pub fn decode_login_line(b64: &str) -> Result<String, SaslError> {
    utf8(&decode(b64)?)
}

/// Decodes an XOAUTH2 response. Other key-value pairs (`host=`, `port=`, as in OAUTHBEARER) are
/// ignored; the terminating `^A^A` is not required, some clients send only one.
pub fn decode_xoauth2(b64: &str) -> Result<Xoauth2Credentials, SaslError> {
    let text = utf8(&decode(b64)?)?;
    let mut user = None;
    let mut access_token = None;
    for pair in text.split('\x01').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("user", value)) => user = Some(value),
            Some(("auth", value)) => {
                let token = value
                    .split_once(' ')
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("Bearer"))
                    .map(|(_, token)| token.trim())
                    .ok_or(SaslError::Malformed("XOAUTH2 auth= must be a Bearer token"))?;
                access_token = Some(token);
            }
            Some(_) => {}
            None => return Err(SaslError::Malformed("XOAUTH2 needs key=value pairs")),
        }
    }
    match (user, access_token) {
        (Some(user), Some(token)) if !user.is_empty() && !token.is_empty() => {
            Ok(Xoauth2Credentials {
                user: user.to_owned(),
                access_token: token.to_owned(),
            })
        }
        _ => Err(SaslError::Malformed("XOAUTH2 needs user= and auth=Bearer")),
    }
}

fn decode(b64: &str) -> Result<Vec<u8>, SaslError> {
    let b64 = b64.trim();
    match b64 {
        "*" => Err(SaslError::Cancelled),
        // `=` is the explicitly empty initial response (RFC 4954 §4).
        "=" => Ok(Vec::new()),
        _ => LENIENT.decode(b64).map_err(|_| SaslError::InvalidBase64),
    }
}

fn utf8(bytes: &[u8]) -> Result<String, SaslError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| SaslError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_encodings_match_known_vectors() {
        // RFC 4616 §4 example user, and the Google XOAUTH2 documentation example.
        assert_eq!(
            plain_initial_response("", "tim", "tanstaaftanstaaf"),
            "AHRpbQB0YW5zdGFhZnRhbnN0YWFm"
        );
        assert_eq!(
            plain_initial_response("Ursel", "Kurt", "xipj3plmq"),
            STANDARD.encode("Ursel\0Kurt\0xipj3plmq")
        );
        assert_eq!(login_encode("Username:"), LOGIN_USERNAME_CHALLENGE);
        assert_eq!(login_encode("Password:"), LOGIN_PASSWORD_CHALLENGE);
        assert_eq!(login_encode("tim"), "dGlt");
        assert_eq!(login_encode(""), "");
        assert_eq!(
            xoauth2_initial_response(
                "someuser@example.com",
                "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg"
            ),
            "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
        );
    }

    #[test]
    fn plain_responses_decode() {
        let creds = decode_plain("AHRpbQB0YW5zdGFhZnRhbnN0YWFm").unwrap();
        assert_eq!(creds.authzid, "");
        assert_eq!(creds.username, "tim");
        assert_eq!(creds.password, "tanstaaftanstaaf");

        let with_authzid =
            decode_plain(&plain_initial_response("boss", "tim", "pässwörd")).unwrap();
        assert_eq!(
            (
                with_authzid.authzid.as_str(),
                with_authzid.password.as_str()
            ),
            ("boss", "pässwörd")
        );
        // Without padding and with a line ending, as some clients send it.
        assert_eq!(
            decode_plain(" AHRpbQB0YW5zdGFhZnRhbnN0YWFm\r\n").unwrap(),
            creds
        );
        assert_eq!(
            decode_plain(STANDARD.encode("\0a\0b").trim_end_matches('='))
                .unwrap()
                .username,
            "a"
        );
    }

    #[test]
    fn bad_plain_responses_are_refused() {
        let cases = [
            ("*", SaslError::Cancelled),
            ("not base64!", SaslError::InvalidBase64),
            (
                "=",
                SaslError::Malformed("PLAIN needs authzid NUL username NUL password"),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(decode_plain(input), Err(expected), "{input:?}");
        }
        for raw in [&b"tim"[..], b"\0tim", b"\0tim\0", b"\0\0pw", b"a\0b\0c\0d"] {
            assert!(
                matches!(
                    decode_plain(&STANDARD.encode(raw)),
                    Err(SaslError::Malformed(_))
                ),
                "{raw:?}"
            );
        }
        assert_eq!(
            decode_plain(&STANDARD.encode(b"\0tim\0\xff\xfe")),
            Err(SaslError::NotUtf8)
        );
    }

    #[test]
    fn login_lines_decode() {
        assert_eq!(decode_login_line("dGlt").unwrap(), "tim");
        assert_eq!(decode_login_line("dGlt\r\n").unwrap(), "tim");
        assert_eq!(decode_login_line("").unwrap(), "");
        assert_eq!(decode_login_line("*"), Err(SaslError::Cancelled));
        assert_eq!(decode_login_line("@@@@"), Err(SaslError::InvalidBase64));
        assert_eq!(
            decode_login_line(&STANDARD.encode(b"\xc3\x28")),
            Err(SaslError::NotUtf8)
        );
    }

    #[test]
    fn xoauth2_responses_decode() {
        let creds =
            decode_xoauth2(&xoauth2_initial_response("someuser@example.com", "tok.en")).unwrap();
        assert_eq!(creds.user, "someuser@example.com");
        assert_eq!(creds.access_token, "tok.en");

        let lenient = STANDARD.encode("host=x\x01user=u@x\x01auth=bearer T\x01");
        assert_eq!(decode_xoauth2(&lenient).unwrap().access_token, "T");

        for raw in [
            "user=u\x01\x01",
            "auth=Bearer T\x01\x01",
            "user=u\x01auth=Basic T\x01\x01",
            "user=u\x01auth=BearerT\x01\x01",
            "user=\x01auth=Bearer T\x01\x01",
            "user=u\x01auth=Bearer \x01\x01",
            "garbage",
        ] {
            assert!(
                matches!(
                    decode_xoauth2(&STANDARD.encode(raw)),
                    Err(SaslError::Malformed(_))
                ),
                "{raw:?}"
            );
        }
        assert_eq!(decode_xoauth2("*"), Err(SaslError::Cancelled));
    }

    #[test]
    fn secrets_never_show_in_debug_or_errors() {
        let plain = decode_plain(&plain_initial_response("", "tim", "s3cret-pw")).unwrap();
        let shown = format!("{plain:?} {plain:#?}");
        assert!(!shown.contains("s3cret-pw"), "{shown}");
        assert!(
            shown.contains("tim") && shown.contains("<redacted>"),
            "{shown}"
        );

        let oauth = decode_xoauth2(&xoauth2_initial_response("u@x", "s3cret-token")).unwrap();
        let shown = format!("{oauth:?} {oauth:#?}");
        assert!(!shown.contains("s3cret-token"), "{shown}");

        for bad in [
            "\0tim\0s3cret-pw\0extra",
            "user=u\x01auth=Basic s3cret-token\x01\x01",
        ] {
            let encoded = STANDARD.encode(bad);
            let errors = [decode_plain(&encoded).err(), decode_xoauth2(&encoded).err()];
            for error in errors.into_iter().flatten() {
                let shown = format!("{error} {error:?}");
                assert!(!shown.contains("s3cret"), "{shown}");
            }
        }
    }
}
