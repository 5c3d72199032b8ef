//! SMTP replies (RFC 5321 §4.2): the value both sides pass around, its wire form, and an incremental
//! parser for replies read from an upstream server.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A complete SMTP reply: a three-digit code and one or more lines of text. The text keeps the enhanced
/// status code (RFC 3463) when there is one, exactly as it is sent on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

/// An enhanced status code `class.subject.detail`, e.g. `5.7.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnhancedCode {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

impl Reply {
    /// A one-line reply. `text` normally starts with the enhanced status code.
    pub fn new(code: u16, text: impl Into<String>) -> Self {
        Reply {
            code,
            lines: vec![text.into()],
        }
    }

    pub fn multiline(code: u16, lines: Vec<String>) -> Self {
        debug_assert!(!lines.is_empty());
        Reply { code, lines }
    }

    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }

    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// The enhanced status code at the start of the first line, if the server sent one.
    pub fn enhanced(&self) -> Option<EnhancedCode> {
        let first = self.lines.first()?;
        let token = first.split_whitespace().next()?;
        let mut parts = token.splitn(3, '.');
        let class: u8 = parts.next()?.parse().ok()?;
        let subject: u16 = parts.next()?.parse().ok()?;
        let detail: u16 = parts.next()?.parse().ok()?;
        if !matches!(class, 2 | 4 | 5) || subject > 999 || detail > 999 {
            return None;
        }
        Some(EnhancedCode {
            class,
            subject,
            detail,
        })
    }

    /// The reply as it goes on the wire: `250-first\r\n250 last\r\n`.
    pub fn to_wire(&self) -> String {
        let mut out = String::new();
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            out.push_str(&format!("{}{}{}\r\n", self.code, sep, line));
        }
        if self.lines.is_empty() {
            out.push_str(&format!("{} \r\n", self.code));
        }
        out
    }

    /// The whole reply on one line, for logs, queue listings and bounces.
    pub fn one_line(&self) -> String {
        let mut out = self.code.to_string();
        for line in &self.lines {
            out.push(' ');
            out.push_str(line);
        }
        out
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.one_line())
    }
}

/// Why bytes from an upstream could not be read as a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyParseError {
    #[error("malformed reply line: {0:?}")]
    Malformed(String),
    #[error("reply line changed code in the middle of a multi-line reply: {0:?}")]
    CodeChanged(String),
    #[error("reply longer than {0} lines")]
    TooLong(usize),
}

/// Assembles a reply from the lines an upstream server sends (each without its line ending).
#[derive(Debug, Default)]
pub struct ReplyParser {
    code: Option<u16>,
    lines: Vec<String>,
}

/// More lines than any sane server sends for one reply (EHLO lists are ~20).
const MAX_REPLY_LINES: usize = 200;

impl ReplyParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one line. Returns the reply once its last line has been fed.
    pub fn feed_line(&mut self, line: &str) -> Result<Option<Reply>, ReplyParseError> {
        let line = line.trim_end_matches(['\r', '\n']);
        let bytes = line.as_bytes();
        if bytes.len() < 3 || !bytes[..3].iter().all(u8::is_ascii_digit) {
            return Err(ReplyParseError::Malformed(line.to_string()));
        }
        let code: u16 = line[..3].parse().expect("three digits");
        if !(200..600).contains(&code) {
            return Err(ReplyParseError::Malformed(line.to_string()));
        }
        let (last, text) = match bytes.get(3) {
            None => (true, ""),
            Some(b' ') => (true, &line[4..]),
            Some(b'-') => (false, &line[4..]),
            Some(_) => return Err(ReplyParseError::Malformed(line.to_string())),
        };
        if let Some(previous) = self.code
            && previous != code
        {
            return Err(ReplyParseError::CodeChanged(line.to_string()));
        }
        self.code = Some(code);
        self.lines.push(text.to_string());
        if self.lines.len() > MAX_REPLY_LINES {
            return Err(ReplyParseError::TooLong(MAX_REPLY_LINES));
        }
        if last {
            self.code = None;
            Ok(Some(Reply {
                code,
                lines: std::mem::take(&mut self.lines),
            }))
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_of_single_and_multiline_replies() {
        assert_eq!(Reply::new(250, "2.0.0 OK").to_wire(), "250 2.0.0 OK\r\n");
        let r = Reply::multiline(
            250,
            vec!["relay".into(), "PIPELINING".into(), "SIZE 10".into()],
        );
        assert_eq!(
            r.to_wire(),
            "250-relay\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
        );
    }

    #[test]
    fn enhanced_codes_are_read_from_the_first_line() {
        let cases = [
            ("5.7.1 Relay denied", Some((5, 7, 1))),
            (
                "4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded",
                Some((4, 3, 2)),
            ),
            ("5.7.139 Authentication unsuccessful", Some((5, 7, 139))),
            ("Ok", None),
            ("7.1.1 not a class", None),
            ("", None),
        ];
        for (text, expected) in cases {
            let got = Reply::new(550, text)
                .enhanced()
                .map(|e| (e.class, e.subject, e.detail));
            assert_eq!(got, expected, "{text}");
        }
    }

    #[test]
    fn parser_assembles_multiline_replies() {
        let mut p = ReplyParser::new();
        assert_eq!(p.feed_line("250-mx.example Hello").unwrap(), None);
        assert_eq!(p.feed_line("250-PIPELINING\r\n").unwrap(), None);
        let r = p.feed_line("250 STARTTLS").unwrap().unwrap();
        assert_eq!(r.code, 250);
        assert_eq!(r.lines, vec!["mx.example Hello", "PIPELINING", "STARTTLS"]);
        // The parser is ready for the next reply.
        let r = p.feed_line("220 2.0.0 SMTP server ready").unwrap().unwrap();
        assert_eq!(r.code, 220);
    }

    #[test]
    fn parser_rejects_garbage() {
        let cases = ["", "25", "abc def", "250x", "999 no", "099 low"];
        for line in cases {
            assert!(ReplyParser::new().feed_line(line).is_err(), "{line:?}");
        }
        let mut p = ReplyParser::new();
        p.feed_line("250-a").unwrap();
        assert!(matches!(
            p.feed_line("251 b"),
            Err(ReplyParseError::CodeChanged(_))
        ));
    }

    #[test]
    fn bare_code_is_a_complete_reply() {
        let r = ReplyParser::new().feed_line("354").unwrap().unwrap();
        assert_eq!(r.code, 354);
        assert!(r.is_intermediate());
    }
}
