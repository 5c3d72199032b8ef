//! SMTP commands as the server receives them (RFC 5321 §4.1), parsed with `smtp-proto`.
//! (Being written: see issue 2.)

use super::Reply;

/// Longest command line accepted, CRLF included. RFC 5321 allows 512 octets plus what extensions add;
/// SMTPUTF8 addresses, SIZE/BODY parameters and (later) XOAUTH2 initial responses need more.
pub const MAX_COMMAND_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    Mail(MailFrom),
    Rcpt(RcptTo),
    Data,
    Rset,
    Noop,
    Quit,
    Help,
    Vrfy(String),
    Expn(String),
    StartTls,
    Auth {
        mechanism: String,
        initial_response: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyType {
    SevenBit,
    EightBitMime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailFrom {
    /// The reverse path without angle brackets; empty for the null sender `<>`.
    pub address: String,
    /// The SIZE= parameter, when given.
    pub size: Option<u64>,
    pub body: BodyType,
    pub smtputf8: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptTo {
    /// The forward path without angle brackets.
    pub address: String,
}

/// Parses one command line (with its line ending). The error is the reply to send back
/// (`500 5.5.2` unknown command, `501 5.5.4` syntax, `555 5.5.4` unsupported parameter, ...).
pub fn parse_command(line: &[u8]) -> Result<Command, Reply> {
    let _ = line;
    todo!("grammar helper")
}
