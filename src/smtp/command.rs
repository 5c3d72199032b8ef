//! SMTP commands as the server receives them (RFC 5321 §4.1), parsed with `smtp-proto`.
//!
//! Invariants of [`parse_command`]:
//! - It never panics, whatever the bytes; an `Err` is always a complete reply with an enhanced code.
//! - Only the first line counts: bytes after the first LF are ignored, a missing line ending is tolerated.
//! - Addresses in [`MailFrom`] and [`RcptTo`] are valid UTF-8 without control characters, written as the
//!   client wrote them (quoted local parts keep their quotes) minus the angle brackets and any source
//!   route. The null sender is the empty string and only MAIL can carry it.
//! - A parameter the server does not advertise is refused with `555`, never silently dropped, except the
//!   DSN parameters (RET, ENVID, NOTIFY, ORCPT) and MAIL's `AUTH=` (RFC 4954), which clients send
//!   unconditionally and which carry nothing the relay acts on.
//! - Verbs of extensions we do not offer (BDAT, ETRN, ATRN, BURL, LHLO) get `502`, unknown verbs `500`.
//!
//! Deliberately lenient, because old devices depend on it: `MAIL FROM:user@host` without angle brackets
//! is read as `MAIL FROM:<user@host>` (as IIS and Postfix with `strict_rfc821_envelopes = no` do), and
//! spaces after the colon are accepted. Whether an address is acceptable is the session's decision;
//! [`is_valid_mailbox`] is the syntax check it can use.

use std::borrow::Cow;
use std::net::{Ipv4Addr, Ipv6Addr};

use smtp_proto::{Error as ProtoError, Request};

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
    /// `mechanism` is upper-cased and syntactically a SASL mechanism name (RFC 4422 §3.1), not
    /// necessarily one we offer. `initial_response` is `None` when absent and `Some("")` for `=`, the
    /// explicitly empty response (RFC 4954 §4).
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
    /// The SIZE= parameter, when given. A value too large for `u64` is `u64::MAX`, so that the session
    /// answers it with `552` like any other oversized declaration.
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
    if line.len() > MAX_COMMAND_LINE {
        return Err(Reply::new(500, "5.5.2 Line too long"));
    }
    // smtp-proto wants the LF to know where the line ends; without it it would ask for more data.
    let line: Cow<'_, [u8]> = match memchr::memchr(b'\n', line) {
        Some(lf) => Cow::Borrowed(&line[..=lf]),
        None => {
            let mut owned = line.to_vec();
            owned.extend_from_slice(b"\r\n");
            Cow::Owned(owned)
        }
    };
    parse_line(&line, true)
}

fn parse_line(line: &[u8], may_repair: bool) -> Result<Command, Reply> {
    match Request::parse(&mut line.iter()) {
        Ok(request) => convert(request, line),
        Err(ProtoError::SyntaxError { syntax }) => {
            let repaired = match syntax.get(..4) {
                _ if !may_repair => None,
                Some("MAIL" | "RCPT") => add_missing_brackets(line),
                Some("EHLO" | "HELO") => squeeze_spaces_after_verb(line),
                _ => None,
            };
            match repaired {
                Some(repaired) => parse_line(&repaired, false),
                None => Err(syntax_error(syntax)),
            }
        }
        Err(ProtoError::InvalidParameter { param: "SIZE" }) => oversized_mail(line),
        // A complete line never needs more data: smtp-proto ran past the LF looking for the next
        // part of the command (`RCPT TO` without its colon).
        Err(ProtoError::NeedsMoreData { .. }) => Err(syntax_error(&verb_of(line))),
        Err(error) => Err(map_error(error)),
    }
}

fn convert(request: Request<Cow<'_, str>>, line: &[u8]) -> Result<Command, Reply> {
    Ok(match request {
        Request::Ehlo { host } => Command::Ehlo(greeting_host(host, "EHLO")?),
        Request::Helo { host } => Command::Helo(greeting_host(host, "HELO")?),
        Request::Mail { from } => Command::Mail(mail_from(&from, line)?),
        Request::Rcpt { to } => Command::Rcpt(rcpt_to(&to, line)?),
        Request::Data => Command::Data,
        Request::Rset => Command::Rset,
        Request::Noop { .. } => Command::Noop,
        Request::Quit => Command::Quit,
        Request::Help { .. } => Command::Help,
        Request::Vrfy { value } => Command::Vrfy(value.into_owned()),
        Request::Expn { value } => Command::Expn(value.into_owned()),
        Request::StartTls => Command::StartTls,
        Request::Auth {
            initial_response, ..
        } => auth(&initial_response, line)?,
        Request::Lhlo { .. }
        | Request::Bdat { .. }
        | Request::Etrn { .. }
        | Request::Atrn { .. }
        | Request::Burl { .. } => return Err(not_implemented()),
    })
}

fn map_error(error: ProtoError) -> Reply {
    match error {
        ProtoError::SyntaxError { syntax } => syntax_error(syntax),
        ProtoError::InvalidSenderAddress => Reply::new(501, "5.1.7 Bad sender address syntax"),
        ProtoError::InvalidRecipientAddress => {
            Reply::new(501, "5.1.3 Bad recipient address syntax")
        }
        ProtoError::InvalidParameter { param } => {
            Reply::new(501, format!("5.5.4 Invalid {param} parameter"))
        }
        ProtoError::UnsupportedParameter { param } => unsupported_parameter(&param),
        ProtoError::UnknownCommand
        | ProtoError::NeedsMoreData { .. }
        | ProtoError::ResponseTooLong
        | ProtoError::InvalidResponse { .. } => unrecognized(),
    }
}

fn unrecognized() -> Reply {
    Reply::new(500, "5.5.2 Command unrecognized")
}

fn not_implemented() -> Reply {
    Reply::new(502, "5.5.1 Command not implemented")
}

/// Turns smtp-proto's syntax hint into ours; the hint's first word is the verb.
fn syntax_error(syntax: &str) -> Reply {
    let verb = syntax.split(' ').next().unwrap_or_default();
    let usage = match verb {
        "BDAT" | "ETRN" | "ATRN" | "BURL" | "LHLO" => return not_implemented(),
        "MAIL" => "MAIL FROM:<address>",
        "RCPT" => "RCPT TO:<address>",
        "EHLO" => "EHLO hostname",
        "HELO" => "HELO hostname",
        "AUTH" => "AUTH mechanism [initial-response]",
        "VRFY" => "VRFY address",
        "EXPN" => "EXPN list",
        _ if syntax.contains(' ') => syntax,
        _ => return Reply::new(501, "5.5.4 Syntax error"),
    };
    Reply::new(501, format!("5.5.4 Syntax: {usage}"))
}

fn unsupported_parameter(param: &str) -> Reply {
    // The name comes from the client: echo it only when it cannot garble the reply line.
    if !param.is_empty() && param.len() <= 32 && param.bytes().all(|b| b.is_ascii_graphic()) {
        Reply::new(555, format!("5.5.4 Unsupported parameter {param}"))
    } else {
        Reply::new(555, "5.5.4 Unsupported parameter")
    }
}

fn greeting_host(host: Cow<'_, str>, verb: &str) -> Result<String, Reply> {
    // The host ends up in the Received header: no control characters, no replacement characters.
    if host.contains(char::REPLACEMENT_CHARACTER) || host.chars().any(char::is_control) {
        return Err(syntax_error(verb));
    }
    Ok(host.into_owned())
}

fn mail_from(from: &smtp_proto::MailFrom<Cow<'_, str>>, line: &[u8]) -> Result<MailFrom, Reply> {
    use smtp_proto::{
        MAIL_BODY_8BITMIME, MAIL_BODY_BINARYMIME, MAIL_BY_NOTIFY, MAIL_BY_RETURN, MAIL_CONPERM,
        MAIL_REQUIRETLS, MAIL_SMTPUTF8,
    };
    let refused = [
        (from.flags & MAIL_BODY_BINARYMIME != 0, "BODY=BINARYMIME"),
        (from.flags & MAIL_REQUIRETLS != 0, "REQUIRETLS"),
        (from.flags & MAIL_CONPERM != 0, "CONPERM"),
        (
            from.by != 0 || from.flags & (MAIL_BY_NOTIFY | MAIL_BY_RETURN) != 0,
            "BY",
        ),
        (from.hold_for != 0, "HOLDFOR"),
        (from.hold_until != 0, "HOLDUNTIL"),
        (from.solicit.is_some(), "SOLICIT"),
        (from.trans_id.is_some(), "TRANSID"),
        (from.mtrk.is_some(), "MTRK"),
        (from.mt_priority != 0, "MT-PRIORITY"),
    ];
    if let Some((_, name)) = refused.iter().find(|(present, _)| *present) {
        return Err(unsupported_parameter(name));
    }
    let (address, path_end) = envelope_address(line).ok_or_else(bad_sender)?;
    // Read from the line: smtp-proto's saturating arithmetic wraps around for very long numbers.
    let size = param_value(&line[path_end..], b"SIZE").map(|(start, len)| {
        let digits = &line[path_end + start..path_end + start + len];
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return from.size as u64;
        }
        digits.iter().fold(0u64, |n, &d| {
            n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
        })
    });
    Ok(MailFrom {
        address,
        size,
        body: if from.flags & MAIL_BODY_8BITMIME != 0 {
            BodyType::EightBitMime
        } else {
            BodyType::SevenBit
        },
        smtputf8: from.flags & MAIL_SMTPUTF8 != 0,
    })
}

fn bad_sender() -> Reply {
    Reply::new(501, "5.1.7 Bad sender address syntax")
}

fn bad_recipient() -> Reply {
    Reply::new(501, "5.1.3 Bad recipient address syntax")
}

/// smtp-proto refuses a SIZE that does not fit its `usize`. Such a client is declaring more than any
/// limit we could have, so read the rest of the command and let the session refuse it with `552`.
fn oversized_mail(line: &[u8]) -> Result<Command, Reply> {
    let invalid = || map_error(ProtoError::InvalidParameter { param: "SIZE" });
    let path_end = envelope_address(line)
        .map(|(_, end)| end)
        .ok_or_else(invalid)?;
    let (start, len) = param_value(&line[path_end..], b"SIZE").ok_or_else(invalid)?;
    let digits = &line[path_end + start..path_end + start + len];
    // `SIZE=1` is this function's own patch: if smtp-proto still refuses the line, its complaint is
    // not the size, and patching again would recurse until the stack overflows.
    if digits.is_empty() || digits == b"1" || !digits.iter().all(u8::is_ascii_digit) {
        return Err(invalid());
    }
    let mut patched = Vec::with_capacity(line.len());
    patched.extend_from_slice(&line[..path_end + start]);
    patched.push(b'1');
    patched.extend_from_slice(&line[path_end + start + len..]);
    match parse_line(&patched, false)? {
        Command::Mail(mut mail) => {
            mail.size = Some(u64::MAX);
            Ok(Command::Mail(mail))
        }
        _ => Err(invalid()),
    }
}

fn rcpt_to(to: &smtp_proto::RcptTo<Cow<'_, str>>, line: &[u8]) -> Result<RcptTo, Reply> {
    use smtp_proto::{RCPT_CONNEG, RCPT_RRVS_CONTINUE, RCPT_RRVS_REJECT};
    if to.flags & (RCPT_RRVS_REJECT | RCPT_RRVS_CONTINUE) != 0 || to.rrvs != 0 {
        return Err(unsupported_parameter("RRVS"));
    }
    if to.flags & RCPT_CONNEG != 0 {
        return Err(unsupported_parameter("CONNEG"));
    }
    let (address, _) = envelope_address(line).ok_or_else(bad_recipient)?;
    if address.is_empty() {
        return Err(bad_recipient());
    }
    Ok(RcptTo { address })
}

/// The path between the first `<` and its matching `>`, as the client wrote it. smtp-proto has
/// validated it already, but its copy drops the quotes of a quoted local part (and would turn
/// `<postmaster>` into the null path), so the text is taken from the line itself.
/// Returns the address and the index just past the `>`.
fn envelope_address(line: &[u8]) -> Option<(String, usize)> {
    let open = memchr::memchr(b'<', line)?;
    let mut in_quote = false;
    let mut escaped = false;
    let mut close = None;
    for (i, &b) in line.iter().enumerate().skip(open + 1) {
        match b {
            _ if escaped => escaped = false,
            b'\\' if in_quote => escaped = true,
            b'"' => in_quote = !in_quote,
            b'>' if !in_quote => {
                close = Some(i);
                break;
            }
            _ => {}
        }
    }
    let close = close?;
    let mut path = line[open + 1..close].trim_ascii();
    // RFC 5321 §4.1.2: a source route (`@a,@b:user@c`) must be accepted and ignored.
    if path.first() == Some(&b'@') {
        let colon = memchr::memchr(b':', path)?;
        path = &path[colon + 1..];
    }
    let address = std::str::from_utf8(path).ok()?;
    // C0, DEL and the C1 controls (U+0080..U+009F, two bytes in UTF-8; NEL is a line break to some
    // log readers).
    if address.chars().any(char::is_control) {
        return None;
    }
    Some((address.to_owned(), close + 1))
}

/// Finds `KEY=value` among whitespace-separated parameters; returns the value's offset and length.
fn param_value(params: &[u8], key: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < params.len() {
        if params[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let end = params[i..]
            .iter()
            .position(u8::is_ascii_whitespace)
            .map_or(params.len(), |n| i + n);
        let token = &params[i..end];
        if let Some(eq) = memchr::memchr(b'=', token)
            && token[..eq].eq_ignore_ascii_case(key)
        {
            return Some((i + eq + 1, end - (i + eq + 1)));
        }
        i = end;
    }
    None
}

fn auth(initial_response: &str, line: &[u8]) -> Result<Command, Reply> {
    // smtp-proto reduces the mechanism to a bit of its known list; the session needs the name itself
    // (to answer 504 for one we do not offer), so it is read from the line: the word after the verb.
    let mut words = line
        .split(u8::is_ascii_whitespace)
        .filter(|w| !w.is_empty());
    let _verb = words.next();
    let mechanism = words.next().unwrap_or_default();
    let is_sasl_name = (1..=20).contains(&mechanism.len())
        && mechanism
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if !is_sasl_name {
        return Err(syntax_error("AUTH"));
    }
    let mechanism = String::from_utf8_lossy(mechanism).to_ascii_uppercase();
    let initial_response = match initial_response {
        "" => None,
        "=" => Some(String::new()),
        other => Some(other.to_owned()),
    };
    Ok(Command::Auth {
        mechanism,
        initial_response,
    })
}

/// The first word of the line, upper-cased, for choosing the usage hint of a syntax error.
fn verb_of(line: &[u8]) -> String {
    let word = line
        .split(u8::is_ascii_whitespace)
        .find(|w| !w.is_empty())
        .unwrap_or_default();
    String::from_utf8_lossy(word).to_ascii_uppercase()
}

/// `EHLO  host` (two spaces): smtp-proto reads an empty host; devices that pad with spaces exist.
fn squeeze_spaces_after_verb(line: &[u8]) -> Option<Vec<u8>> {
    let verb_start = line.iter().position(|&b| b != b' ')?;
    let verb_end = verb_start + line[verb_start..].iter().position(|&b| b == b' ')?;
    let argument = verb_end + line[verb_end..].iter().position(|&b| b != b' ')?;
    if argument == verb_end + 1 {
        return None;
    }
    let mut squeezed = line[verb_start..=verb_end].to_vec();
    squeezed.extend_from_slice(&line[argument..]);
    Some(squeezed)
}

/// Inserts the angle brackets an old client left out: `MAIL FROM:a@b` → `MAIL FROM:<a@b>`.
/// Returns `None` when the line is not of that shape, so the original syntax error stands.
fn add_missing_brackets(line: &[u8]) -> Option<Vec<u8>> {
    let start = line.iter().position(|&b| b != b' ')?;
    let rest = &line[start..];
    let keyword: &[u8] = if rest.len() >= 4 && rest[..4].eq_ignore_ascii_case(b"MAIL") {
        b"FROM"
    } else if rest.len() >= 4 && rest[..4].eq_ignore_ascii_case(b"RCPT") {
        b"TO"
    } else {
        return None;
    };
    let mut i = start + 4;
    let skip_spaces = |mut i: usize| {
        while line.get(i) == Some(&b' ') {
            i += 1;
        }
        i
    };
    i = skip_spaces(i);
    if !line
        .get(i..i + keyword.len())?
        .eq_ignore_ascii_case(keyword)
    {
        return None;
    }
    i = skip_spaces(i + keyword.len());
    if line.get(i) != Some(&b':') {
        return None;
    }
    let token_start = skip_spaces(i + 1);
    let token_len = line[token_start..]
        .iter()
        .position(u8::is_ascii_whitespace)
        .unwrap_or(line.len() - token_start);
    let token = &line[token_start..token_start + token_len];
    if token.is_empty() || token.iter().any(|b| matches!(b, b'<' | b'>' | b'"')) {
        return None;
    }
    let mut repaired = Vec::with_capacity(line.len() + 2);
    repaired.extend_from_slice(&line[..token_start]);
    repaired.push(b'<');
    repaired.extend_from_slice(token);
    repaired.push(b'>');
    repaired.extend_from_slice(&line[token_start + token_len..]);
    Some(repaired)
}

/// Whether `addr` is syntactically a mailbox `local@domain` (RFC 5321 §4.1.2, RFC 6531 for UTF-8):
/// a dot-atom or quoted local part, and a domain that is either a host name (letters, digits, hyphens
/// and dots; the last label not all digits) or an address literal `[1.2.3.4]` / `[IPv6:...]`.
/// Source routes and extra `@` outside a quoted local part are refused.
pub fn is_valid_mailbox(addr: &str) -> bool {
    let Some((local, domain)) = split_mailbox(addr) else {
        return false;
    };
    local.len() <= 64 && is_valid_local_part(local) && is_valid_domain(domain)
}

fn split_mailbox(addr: &str) -> Option<(&str, &str)> {
    if addr.starts_with('"') {
        let bytes = addr.as_bytes();
        let mut escaped = false;
        for (i, &b) in bytes.iter().enumerate().skip(1) {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => {
                    return (bytes.get(i + 1) == Some(&b'@'))
                        .then(|| (&addr[..=i], &addr[i + 2..]));
                }
                _ => {}
            }
        }
        None
    } else {
        let (local, domain) = addr.split_once('@')?;
        (!domain.contains('@')).then_some((local, domain))
    }
}

fn is_valid_local_part(local: &str) -> bool {
    if let Some(inner) = local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            let ok = match c {
                '\\' => chars.next().is_some_and(|e| (' '..='~').contains(&e)),
                '"' => false,
                ' '..='~' => true,
                c => !c.is_ascii() && !c.is_control(),
            };
            if !ok {
                return false;
            }
        }
        true
    } else {
        !local.is_empty()
            && local.split('.').all(|atom| {
                !atom.is_empty()
                    && atom.chars().all(|c| {
                        c.is_ascii_alphanumeric()
                            || "!#$%&'*+-/=?^_`{|}~".contains(c)
                            || (!c.is_ascii() && !c.is_control())
                    })
            })
    }
}

fn is_valid_domain(domain: &str) -> bool {
    if let Some(literal) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        return match literal.get(..5) {
            Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => {
                literal[5..].parse::<Ipv6Addr>().is_ok()
            }
            _ => literal.parse::<Ipv4Addr>().is_ok(),
        };
    }
    let labels_ok = domain.split('.').all(|label| {
        (1..=63).contains(&label.len())
            && !label.starts_with('-')
            && !label.ends_with('-')
            // Non-ASCII letters: an internationalised domain (U-labels) under SMTPUTF8.
            && label.chars().all(|c| c.is_alphanumeric() || c == '-')
    });
    // An all-numeric last label is an IP address written without brackets, not a domain.
    let last_is_numeric = domain
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    domain.len() <= 255 && labels_ok && !last_is_numeric
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(address: &str, size: Option<u64>, body: BodyType, smtputf8: bool) -> Command {
        Command::Mail(MailFrom {
            address: address.into(),
            size,
            body,
            smtputf8,
        })
    }

    fn plain_mail(address: &str) -> Command {
        mail(address, None, BodyType::SevenBit, false)
    }

    fn rcpt(address: &str) -> Command {
        Command::Rcpt(RcptTo {
            address: address.into(),
        })
    }

    fn auth(mechanism: &str, initial_response: Option<&str>) -> Command {
        Command::Auth {
            mechanism: mechanism.into(),
            initial_response: initial_response.map(Into::into),
        }
    }

    #[test]
    fn commands_parse_to_the_expected_values() {
        use BodyType::*;
        let cases: Vec<(&[u8], Command)> = vec![
            (
                b"EHLO client.example\r\n",
                Command::Ehlo("client.example".into()),
            ),
            (
                b"ehlo client.example\r\n",
                Command::Ehlo("client.example".into()),
            ),
            (b"EhLo [192.0.2.1]\r\n", Command::Ehlo("[192.0.2.1]".into())),
            (
                b"EHLO   spaced.example   \r\n",
                Command::Ehlo("spaced.example".into()),
            ),
            (
                b"EHLO MFP_Floor2 extra words\r\n",
                Command::Ehlo("MFP_Floor2".into()),
            ),
            (b"HELO printer\r\n", Command::Helo("printer".into())),
            (b"helo printer\n", Command::Helo("printer".into())),
            (b"MAIL FROM:<a@b.example>\r\n", plain_mail("a@b.example")),
            (b"mail from:<a@b.example>\r\n", plain_mail("a@b.example")),
            (b"MAIL FROM: <a@b.example>\r\n", plain_mail("a@b.example")),
            (
                b"MAIL FROM:   <a@b.example>  \r\n",
                plain_mail("a@b.example"),
            ),
            (b"MAIL FROM:<a@b.example>\n", plain_mail("a@b.example")),
            (b"MAIL FROM:<a@b.example>", plain_mail("a@b.example")),
            (b"MAIL FROM:<>\r\n", plain_mail("")),
            (b"MAIL FROM: <>\r\n", plain_mail("")),
            (b"MAIL FROM:a@b.example\r\n", plain_mail("a@b.example")),
            (
                b"MAIL FROM: a@b.example SIZE=10\r\n",
                mail("a@b.example", Some(10), SevenBit, false),
            ),
            (
                b"MAIL FROM:<@relay.example:a@b.example>\r\n",
                plain_mail("a@b.example"),
            ),
            (
                b"MAIL FROM:<\"john doe\"@b.example>\r\n",
                plain_mail("\"john doe\"@b.example"),
            ),
            (b"MAIL FROM:<postmaster>\r\n", plain_mail("postmaster")),
            (
                b"MAIL FROM:<a@b.example> SIZE=12345\r\n",
                mail("a@b.example", Some(12345), SevenBit, false),
            ),
            (
                b"MAIL FROM:<a@b.example> size=0\r\n",
                mail("a@b.example", Some(0), SevenBit, false),
            ),
            (
                b"MAIL FROM:<a@b.example> SIZE=99999999999\r\n",
                mail("a@b.example", Some(99_999_999_999), SevenBit, false),
            ),
            (
                b"MAIL FROM:<a@b.example> SIZE=18446744073709551614\r\n",
                mail("a@b.example", Some(u64::MAX - 1), SevenBit, false),
            ),
            (
                b"MAIL FROM:<a@b.example> SIZE=18446744073709551616\r\n",
                mail("a@b.example", Some(u64::MAX), SevenBit, false),
            ),
            (
                b"MAIL FROM:a@b.example SIZE=1844674407370955161500\r\n",
                mail("a@b.example", Some(u64::MAX), SevenBit, false),
            ),
            (
                b"EHLO\thost.example\r\n",
                Command::Ehlo("host.example".into()),
            ),
            (
                b"MAIL FROM:<a@b.example> SIZE=999999999999999999999999999 BODY=8BITMIME\r\n",
                mail("a@b.example", Some(u64::MAX), EightBitMime, false),
            ),
            (
                b"MAIL FROM:<a@b.example> BODY=8BITMIME\r\n",
                mail("a@b.example", None, EightBitMime, false),
            ),
            (
                b"MAIL FROM:<a@b.example> BODY=7BIT\r\n",
                plain_mail("a@b.example"),
            ),
            (
                b"MAIL FROM:<a@b.example> SMTPUTF8\r\n",
                mail("a@b.example", None, SevenBit, true),
            ),
            (
                b"MAIL FROM:<a@b.example>  SIZE=5   BODY=8BITMIME  SMTPUTF8\r\n",
                mail("a@b.example", Some(5), EightBitMime, true),
            ),
            (
                "MAIL FROM:<jöran@bücher.example> SMTPUTF8\r\n".as_bytes(),
                mail("jöran@bücher.example", None, SevenBit, true),
            ),
            (
                b"MAIL FROM:<a@b.example> RET=HDRS ENVID=QQ314159\r\n",
                plain_mail("a@b.example"),
            ),
            (
                b"MAIL FROM:<a@b.example> AUTH=<>\r\n",
                plain_mail("a@b.example"),
            ),
            (b"RCPT TO:<c@d.example>\r\n", rcpt("c@d.example")),
            (b"rcpt to:<c@d.example>\r\n", rcpt("c@d.example")),
            (b"RCPT TO: <c@d.example>\r\n", rcpt("c@d.example")),
            (b"RCPT TO:c@d.example\r\n", rcpt("c@d.example")),
            (b"RCPT TO:<Postmaster>\r\n", rcpt("Postmaster")),
            (
                b"RCPT TO:<c@d.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;c@d.example\r\n",
                rcpt("c@d.example"),
            ),
            (b"DATA\r\n", Command::Data),
            (b"data\n", Command::Data),
            (b"RSET\r\n", Command::Rset),
            (b"NOOP\r\n", Command::Noop),
            (b"NOOP anything at all\r\n", Command::Noop),
            (b"QUIT\r\n", Command::Quit),
            (b"HELP\r\n", Command::Help),
            (b"HELP MAIL\r\n", Command::Help),
            (b"VRFY someone\r\n", Command::Vrfy("someone".into())),
            (b"EXPN staff\r\n", Command::Expn("staff".into())),
            (b"STARTTLS\r\n", Command::StartTls),
            (b"starttls\r\n", Command::StartTls),
            (b"AUTH PLAIN\r\n", auth("PLAIN", None)),
            (
                b"auth plain AHRpbQB0YW5zdGFhZnRhbnN0YWFm\r\n",
                auth("PLAIN", Some("AHRpbQB0YW5zdGFhZnRhbnN0YWFm")),
            ),
            (b"AUTH PLAIN =\r\n", auth("PLAIN", Some(""))),
            (b"AUTH LOGIN\r\n", auth("LOGIN", None)),
            (b"AUTH LOGIN dGlt\r\n", auth("LOGIN", Some("dGlt"))),
            (
                b"AUTH XOAUTH2 dXNlcj1h\r\n",
                auth("XOAUTH2", Some("dXNlcj1h")),
            ),
            (b"AUTH CRAM-MD5\r\n", auth("CRAM-MD5", None)),
            (b"AUTH X-UNKNOWN-MECH\r\n", auth("X-UNKNOWN-MECH", None)),
            // Only the first line counts.
            (b"QUIT\r\nMAIL FROM:<a@b>\r\n", Command::Quit),
        ];
        for (line, expected) in cases {
            assert_eq!(
                parse_command(line),
                Ok(expected),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn bad_commands_get_the_expected_reply_codes() {
        let cases: Vec<(&[u8], u16, &str)> = vec![
            (b"\r\n", 500, "5.5.2"),
            (b"FOO bar\r\n", 500, "5.5.2"),
            (b"MAILFROM:<a@b.example>\r\n", 500, "5.5.2"),
            (b"TURN\r\n", 500, "5.5.2"),
            (b"\xff\xfe\xfd\r\n", 500, "5.5.2"),
            (b"\x00\x01\x02 \x03\r\n", 500, "5.5.2"),
            (b"QUIT\xff\r\n", 500, "5.5.2"),
            (b"EHLO\r\n", 501, "5.5.4"),
            (b"EHLO \r\n", 501, "5.5.4"),
            (b"HELO\r\n", 501, "5.5.4"),
            (b"EHLO a\x01b\r\n", 501, "5.5.4"),
            (b"EHLO \xff\xfe\r\n", 501, "5.5.4"),
            (b"MAIL\r\n", 501, "5.5.4"),
            (b"MAIL FROM\r\n", 501, "5.5.4"),
            (b"MAIL FROM:\r\n", 501, "5.5.4"),
            (b"MAIL TO:<a@b.example>\r\n", 501, "5.5.4"),
            (b"MAIL FROM <a@b.example>\r\n", 501, "5.5.4"),
            (b"MAIL FROM:<a@b.example\r\n", 501, "5.5.4"),
            (b"MAIL FROM:<a@b@c.example>\r\n", 501, "5.1.7"),
            (b"MAIL FROM:<a..b@c.example>\r\n", 501, "5.1.7"),
            (b"MAIL FROM:<nodomain>\r\n", 501, "5.1.7"),
            (b"MAIL FROM:nodomain\r\n", 501, "5.1.7"),
            (b"MAIL FROM:<a\xff@b.example>\r\n", 501, "5.1.7"),
            (b"MAIL FROM:<a@b.example> SIZE=abc\r\n", 501, "5.5.4"),
            (b"MAIL FROM:<a@b.example> SIZE=\r\n", 501, "5.5.4"),
            (b"MAIL FROM:<a@b.example> BODY=9BIT\r\n", 501, "5.5.4"),
            (b"MAIL FROM:<a@b.example> BODY=BINARYMIME\r\n", 555, "5.5.4"),
            (b"MAIL FROM:<a@b.example> REQUIRETLS\r\n", 555, "5.5.4"),
            (b"MAIL FROM:<a@b.example> HOLDFOR=60\r\n", 555, "5.5.4"),
            (b"MAIL FROM:<a@b.example> MT-PRIORITY=3\r\n", 555, "5.5.4"),
            (b"MAIL FROM:<a@b.example> X-FOO=bar\r\n", 555, "5.5.4"),
            (b"MAIL FROM:<a@b.example> \xff\r\n", 501, "5.5.4"),
            (b"RCPT\r\n", 501, "5.5.4"),
            (b"RCPT TO:\r\n", 501, "5.5.4"),
            (b"RCPT TO:<>\r\n", 501, "5.1.3"),
            (b"RCPT TO:<c@d@e.example>\r\n", 501, "5.1.3"),
            (b"RCPT TO:<c@d.example> CONNEG\r\n", 555, "5.5.4"),
            (b"RCPT TO:<c@d.example> X-FOO\r\n", 555, "5.5.4"),
            (b"RCPT TO:<c@d.example> NOTIFY=SOMETIMES\r\n", 501, "5.5.4"),
            (b"AUTH\r\n", 501, "5.5.4"),
            (b"AUTH PL@IN\r\n", 501, "5.5.4"),
            (b"AUTH THIS-MECHANISM-NAME-IS-TOO-LONG\r\n", 501, "5.5.4"),
            (b"VRFY\r\n", 501, "5.5.4"),
            (b"BDAT 100 LAST\r\n", 502, "5.5.1"),
            (b"BDAT\r\n", 502, "5.5.1"),
            (b"ETRN example.com\r\n", 502, "5.5.1"),
            (b"ETRN\r\n", 502, "5.5.1"),
            (b"ATRN a.example,b.example\r\n", 502, "5.5.1"),
            (b"BURL imap://x LAST\r\n", 502, "5.5.1"),
            (b"LHLO client.example\r\n", 502, "5.5.1"),
        ];
        for (line, code, enhanced) in cases {
            let shown = String::from_utf8_lossy(line);
            let reply = parse_command(line).expect_err(&shown);
            assert_eq!(reply.code, code, "{shown:?} → {reply}");
            assert!(reply.lines[0].starts_with(enhanced), "{shown:?} → {reply}");
        }
    }

    #[test]
    fn replies_read_well() {
        let reply = |line: &[u8]| parse_command(line).unwrap_err().one_line();
        assert_eq!(reply(b"FOO\r\n"), "500 5.5.2 Command unrecognized");
        assert_eq!(reply(b"MAIL\r\n"), "501 5.5.4 Syntax: MAIL FROM:<address>");
        assert_eq!(reply(b"RCPT TO\r\n"), "501 5.5.4 Syntax: RCPT TO:<address>");
        assert_eq!(reply(b"EHLO\r\n"), "501 5.5.4 Syntax: EHLO hostname");
        assert_eq!(reply(b"BDAT 1\r\n"), "502 5.5.1 Command not implemented");
        assert_eq!(
            reply(b"MAIL FROM:<a@b.example> REQUIRETLS\r\n"),
            "555 5.5.4 Unsupported parameter REQUIRETLS"
        );
        assert_eq!(
            reply(b"MAIL FROM:<a@b.example> X-\x01\r\n"),
            "555 5.5.4 Unsupported parameter"
        );
    }

    #[test]
    fn overlong_lines_are_refused() {
        let mut line = b"NOOP ".to_vec();
        line.resize(MAX_COMMAND_LINE + 1, b'x');
        assert_eq!(parse_command(&line).unwrap_err().code, 500);
        line.truncate(MAX_COMMAND_LINE - 2);
        line.extend_from_slice(b"\r\n");
        assert_eq!(parse_command(&line), Ok(Command::Noop));
    }

    /// Found by fuzzing (`fuzz/fuzz_targets/smtp_command.rs`): smtp-proto refused the SIZE value
    /// even after it was patched to `1` (a CR inside the parameters), and `oversized_mail` patched
    /// and re-parsed the line for ever: one command line overflowed the stack and aborted the relay.
    #[test]
    fn size_refused_after_patching_is_a_syntax_error_not_endless_recursion() {
        let line = b"MAIL FROM:<a@I> SIZE=9999999999\rI> SIZE=99\n";
        let reply = parse_command(line).unwrap_err();
        assert_eq!(
            (reply.code, reply.lines[0].as_str()),
            (501, "5.5.4 Invalid SIZE parameter")
        );
        assert_eq!(
            parse_command(b"MAIL FROM:<a@b.example> SIZE=1\rx\r\n").map_err(|r| r.code),
            Err(501)
        );
    }

    /// Found by fuzzing: only C0 controls and DEL were refused, so `RCPT TO:<r@\u{9f}.>` (and a
    /// NEL, U+0085, in a local part) reached the session as an address.
    #[test]
    fn addresses_with_c1_control_characters_are_refused() {
        for line in [
            "RCPT TO:<r@\u{9f}.>\r\n",
            "RCPT TO:<a\u{85}b@example.com>\r\n",
            "MAIL FROM:<a\u{80}@example.com>\r\n",
        ] {
            let reply = parse_command(line.as_bytes()).unwrap_err();
            assert_eq!(reply.code, 501, "{line:?}");
        }
        assert!(parse_command("RCPT TO:<j\u{f6}rg@example.com>\r\n".as_bytes()).is_ok());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let pieces: [&[u8]; 14] = [
            b"MAIL", b"RCPT", b" FROM:", b"TO:", b"<", b">", b"\"", b"\\", b"@", b"=", b"\r",
            b"\xff", b"\x00", b"SIZE=",
        ];
        // Every sequence of up to four pieces: cheap, exhaustive over the awkward combinations.
        let mut stack = vec![(Vec::new(), 0)];
        while let Some((prefix, depth)) = stack.pop() {
            let mut line = prefix.clone();
            line.extend_from_slice(b"\r\n");
            let _ = parse_command(&line);
            let _ = parse_command(&prefix);
            if depth < 4 {
                for piece in pieces {
                    let mut next = prefix.clone();
                    next.extend_from_slice(piece);
                    stack.push((next, depth + 1));
                }
            }
        }
    }

    #[test]
    fn mailbox_syntax() {
        let valid = [
            "a@b.example",
            "first.last@sub.b.example",
            "x+tag@b-c.example",
            "\"john doe\"@b.example",
            "\"a@b\"@c.example",
            "\"quote\\\"inside\"@c.example",
            "user@[192.0.2.1]",
            "user@[IPv6:2001:db8::1]",
            "user@localhost",
            "jöran@bücher.example",
            "!#$%&'*+-/=?^_`{|}~@b.example",
        ];
        for addr in valid {
            assert!(is_valid_mailbox(addr), "{addr} should be valid");
        }
        let invalid = [
            "",
            "a",
            "@b.example",
            "a@",
            "a@b@c.example",
            "@a:b@c.example",
            "@a,@b:c@d.example",
            ".a@b.example",
            "a.@b.example",
            "a..b@c.example",
            "a b@c.example",
            "a@b..example",
            "a@.b.example",
            "a@b.example.",
            "a@-b.example",
            "a@b-.example",
            "a@b_c.example",
            "a@1.2.3.4",
            "a@[1.2.3]",
            "a@[300.1.1.1]",
            "a@[IPv6:nonsense]",
            "a@[b.example]",
            "\"unterminated@b.example",
            "\"a\"b@c.example",
            "a\u{7}@b.example",
            "a@b.exam\u{0}ple",
        ];
        for addr in invalid {
            assert!(!is_valid_mailbox(addr), "{addr:?} should be invalid");
        }
        let long_local = format!("{}@b.example", "x".repeat(65));
        assert!(!is_valid_mailbox(&long_local));
        let long_label = format!("a@{}.example", "x".repeat(64));
        assert!(!is_valid_mailbox(&long_label));
    }
}
