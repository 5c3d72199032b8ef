//! Delivery status notifications: RFC 3464 `message/delivery-status` inside an RFC 6522
//! `multipart/report`, as a complete RFC 5322 message with CRLF line endings. Pure: no I/O, the
//! time is passed in.
//!
//! The report has three parts:
//! 1. `text/plain; charset=utf-8`: what happened, for the person who sent the message (in the
//!    spirit of Exchange's NDRs), each recipient with the reason the relay recorded;
//! 2. `message/delivery-status`: the same for programs; US-ASCII only, as RFC 3464 requires;
//! 3. the original: `message/rfc822` (whole) for a failure when it is at most `original_max`
//!    bytes, else `text/rfc822-headers` (its header section only). A delay notice always carries
//!    the headers only: the message is still on its way, the sender needs to recognise it, not
//!    to get it back (Postfix does the same).
//!
//! Invariants: nothing taken from the original message, the envelope or an upstream reply can
//! put a CR or LF (or another control character) into a header field or a delivery-status field;
//! no line is longer than 998 bytes outside the attached original; the MIME boundary occurs in
//! none of the parts. The result is 7-bit unless the recipients' reasons, an address or the
//! attached original contain 8-bit bytes; the caller sends it with `BODY=8BITMIME` then (see
//! [`is_eight_bit`]).

use base64::Engine as _;
use std::borrow::Cow;
use std::fmt::Write as _;

/// A failure is final (the recipients were given up); a delay says that the relay keeps trying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnKind {
    Failure,
    Delay,
}

impl DsnKind {
    fn action(self) -> &'static str {
        match self {
            DsnKind::Failure => "failed",
            DsnKind::Delay => "delayed",
        }
    }

    /// The word in the Message-ID.
    fn label(self) -> &'static str {
        match self {
            DsnKind::Failure => "failure",
            DsnKind::Delay => "delay",
        }
    }
}

/// One recipient the notice is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsnRecipient {
    pub address: String,
    /// The relay's reason, e.g. `smtp.office365.com[52.96.1.2]:587 said "550 5.1.1 User unknown"
    /// in reply to RCPT TO:<x@y> (explanation)`.
    pub reason: String,
    /// Unix seconds of the last attempt for this recipient.
    pub last_attempt: Option<u64>,
    /// Given up because the message expired (not because of a permanent reply).
    pub expired: bool,
}

/// Everything a notice is built from.
#[derive(Debug, Clone)]
pub struct DsnRequest<'a> {
    pub kind: DsnKind,
    /// This relay's host name.
    pub reporting_mta: &'a str,
    pub queue_id: &'a str,
    /// The envelope sender of the original, to whom the notice goes.
    pub original_sender: &'a str,
    /// Unix seconds when the original was accepted.
    pub arrival: u64,
    /// Unix seconds now: the notice's Date.
    pub now: u64,
    pub recipients: Vec<DsnRecipient>,
    /// The stored original (CRLF line endings, our `Received:` header on top).
    pub original: &'a [u8],
    /// A failure notice carries the whole original up to this many bytes, else its headers.
    pub original_max: u64,
    /// For a delay: when the relay gives up (unix seconds).
    pub will_retry_until: Option<u64>,
}

/// The returned header section is cut (at a line end) beyond this, whatever `original_max` says.
const HEADERS_MAX: usize = 256 * 1024;
/// The original Subject is shortened to this many characters in ours.
const SUBJECT_MAX: usize = 400;
/// Width of the readable text and of folded header fields.
const WIDTH: usize = 76;

/// Builds the complete notice message.
pub fn build_dsn(req: &DsnRequest<'_>) -> Vec<u8> {
    let mta = clean_ascii(req.reporting_mta);
    let header_section = header_section(req.original);
    let whole = req.kind == DsnKind::Failure && req.original.len() as u64 <= req.original_max;

    let text = readable_text(req, &mta, whole);
    let status = delivery_status(req, &mta);
    let (original_type, original_description, original): (_, _, &[u8]) = if whole {
        ("message/rfc822", "Undelivered message", req.original)
    } else {
        (
            "text/rfc822-headers",
            "Headers of the undelivered message",
            header_section,
        )
    };
    let boundary = boundary(
        req.queue_id,
        &[text.as_bytes(), status.as_bytes(), original],
    );

    let mut out = String::new();
    out.push_str(&fold(
        "From",
        &format!("Mail Delivery System <MAILER-DAEMON@{mta}>"),
    ));
    out.push_str(&fold(
        "To",
        &format!("<{}>", clean(req.original_sender).replace(['<', '>'], "")),
    ));
    let prefix = match req.kind {
        DsnKind::Failure => "Undeliverable:",
        DsnKind::Delay => "Delivery delayed:",
    };
    out.push_str(&subject_field(
        prefix,
        subject_of(header_section).as_deref(),
    ));
    out.push_str(&fold("Date", &rfc2822(req.now)));
    out.push_str(&fold(
        "Message-ID",
        &format!(
            "<{}.{}.{}@{mta}>",
            id_text(req.queue_id),
            req.kind.label(),
            req.now
        ),
    ));
    out.push_str("Auto-Submitted: auto-replied\r\n");
    out.push_str("MIME-Version: 1.0\r\n");
    out.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n"
    ));
    out.push_str("\r\nThis is a delivery status notification in MIME format (RFC 3464).\r\n");

    let mut message = out.into_bytes();
    let mut part = |headers: String, body: &[u8]| {
        message.extend_from_slice(format!("\r\n--{boundary}\r\n{headers}\r\n").as_bytes());
        message.extend_from_slice(body);
    };
    part(
        format!(
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: {}\r\n\
             Content-Description: Notification\r\n",
            transfer_encoding(text.as_bytes())
        ),
        text.as_bytes(),
    );
    part(
        format!(
            "Content-Type: message/delivery-status\r\nContent-Transfer-Encoding: {}\r\n\
             Content-Description: Delivery report\r\n",
            transfer_encoding(status.as_bytes())
        ),
        status.as_bytes(),
    );
    part(
        format!(
            "Content-Type: {original_type}\r\nContent-Transfer-Encoding: {}\r\n\
             Content-Description: {original_description}\r\n",
            transfer_encoding(original)
        ),
        original,
    );
    message.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    message
}

/// The RFC 3463 status of a recipient: `5.4.7` for an expired one in a failure; else the class of
/// the notice (5 for a failure, 4 for a delay) with the subject and detail of the enhanced code in
/// the quoted reply, or `.0.0` when there is none.
pub fn status_of(reason: &str, kind: DsnKind, expired: bool) -> String {
    let class = match kind {
        DsnKind::Failure if expired => return "5.4.7".to_string(),
        DsnKind::Failure => 5,
        DsnKind::Delay => 4,
    };
    match diagnostic_of(reason).and_then(|reply| enhanced_code(&reply)) {
        Some((subject, detail)) => format!("{class}.{subject}.{detail}"),
        None => format!("{class}.0.0"),
    }
}

/// The upstream's reply quoted in a reason (`... said "550 5.1.1 User unknown" in reply to ...`),
/// on one line; `None` when the reason quotes no reply (a timeout, a refused connection, ...).
pub fn diagnostic_of(reason: &str) -> Option<String> {
    const SAID: &str = " said \"";
    let start = reason.find(SAID)? + SAID.len();
    let rest = &reason[start..];
    // The reply itself may contain quotes: end at the context the transport writes after it.
    let end = [
        "\" in reply to ",
        "\" in its greeting",
        "\" after the message content",
    ]
    .iter()
    .filter_map(|context| rest.find(context))
    .min()
    .or_else(|| rest.rfind('"'))?;
    let reply = rest[..end].trim();
    let code = reply.as_bytes();
    let valid = code.len() >= 3
        && code[..3].iter().all(u8::is_ascii_digit)
        && code.get(3).is_none_or(|&b| b == b' ' || b == b'-');
    valid.then(|| clean(reply))
}

/// The upstream host named at the start of a reason (`smtp.office365.com[52.96.1.2]:587 ...`).
pub fn remote_mta_of(reason: &str) -> Option<String> {
    let (host, _) = reason.split_once('[')?;
    let valid = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'));
    valid.then(|| host.to_string())
}

/// Whether `content` has bytes beyond US-ASCII, so that it must be sent with `BODY=8BITMIME`.
pub fn is_eight_bit(content: &[u8]) -> bool {
    !content.is_ascii()
}

/// `(subject, detail)` of the enhanced status code after the reply code (`550 5.1.1 ...`).
fn enhanced_code(reply: &str) -> Option<(u16, u16)> {
    let rest = reply.get(4..)?;
    let token = rest.split(' ').next()?;
    let mut numbers = token.split('.');
    let class = numbers.next()?;
    let subject = numbers.next()?;
    let detail = numbers.next()?;
    let number = |text: &str| {
        (!text.is_empty() && text.len() <= 3 && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse::<u16>().ok())
            .flatten()
    };
    if numbers.next().is_some() || !["2", "4", "5"].contains(&class) {
        return None;
    }
    Some((number(subject)?, number(detail)?))
}

fn readable_text(req: &DsnRequest<'_>, mta: &str, whole: bool) -> String {
    let mut text = String::new();
    wrap(&mut text, "", &format!("This is the mail system at {mta}."));
    text.push_str("\r\n");
    match req.kind {
        DsnKind::Failure => {
            wrap(
                &mut text,
                "",
                "Your message could not be delivered to the recipients below. The mail system \
                 has given up on them and will not try again.",
            );
        }
        DsnKind::Delay => {
            let until = match req.will_retry_until {
                Some(until) => format!("until {}", rfc2822(until)),
                None => "for a while".to_string(),
            };
            wrap(
                &mut text,
                "",
                &format!(
                    "Your message has not been delivered yet to the recipients below. No action \
                     is required on your part: the mail system will keep trying {until}, and \
                     will tell you if it gives up."
                ),
            );
        }
    }
    for rcpt in &req.recipients {
        text.push_str("\r\n");
        wrap(&mut text, "  ", &format!("<{}>", clean(&rcpt.address)));
        let reason = if rcpt.expired && req.kind == DsnKind::Failure {
            format!(
                "Not delivered within {} of being accepted, so the mail system gave up. The last \
                 attempt: {}",
                human_duration(req.now.saturating_sub(req.arrival)),
                rcpt.reason
            )
        } else {
            rcpt.reason.clone()
        };
        wrap(&mut text, "    ", &clean(&reason));
    }
    text.push_str("\r\n");
    let attached = if whole {
        "Your original message is attached.".to_string()
    } else if req.kind == DsnKind::Delay {
        "The headers of your message are attached.".to_string()
    } else {
        format!(
            "The headers of your original message are attached; the message itself ({}) is \
             larger than this system returns.",
            human_size(req.original.len() as u64)
        )
    };
    wrap(&mut text, "", &attached);
    text.push_str("\r\n");
    wrap(
        &mut text,
        "",
        &format!(
            "Queue ID {}, accepted {}.",
            id_text(req.queue_id),
            rfc2822(req.arrival)
        ),
    );
    text
}

fn delivery_status(req: &DsnRequest<'_>, mta: &str) -> String {
    let mut status = String::new();
    status.push_str(&fold("Reporting-MTA", &format!("dns; {mta}")));
    status.push_str(&fold("X-Smarthost-Queue-ID", &id_text(req.queue_id)));
    if !req.original_sender.is_empty() {
        status.push_str(&fold(
            "X-Smarthost-Sender",
            &address_field(req.original_sender),
        ));
    }
    status.push_str(&fold("Arrival-Date", &rfc2822(req.arrival)));
    for rcpt in &req.recipients {
        status.push_str("\r\n");
        status.push_str(&fold("Final-Recipient", &address_field(&rcpt.address)));
        status.push_str(&fold("Action", req.kind.action()));
        status.push_str(&fold(
            "Status",
            &status_of(&rcpt.reason, req.kind, rcpt.expired),
        ));
        if let Some(host) = remote_mta_of(&rcpt.reason) {
            status.push_str(&fold("Remote-MTA", &format!("dns; {host}")));
        }
        // Without a reply the relay's own words still help a program (Postfix: "X-Postfix; ...").
        let diagnostic = match diagnostic_of(&rcpt.reason) {
            Some(reply) => format!("smtp; {reply}"),
            None => format!("X-Smarthost; {}", rcpt.reason),
        };
        status.push_str(&fold("Diagnostic-Code", &clean_ascii(&diagnostic)));
        if let Some(at) = rcpt.last_attempt {
            status.push_str(&fold("Last-Attempt-Date", &rfc2822(at)));
        }
        if req.kind == DsnKind::Delay
            && let Some(until) = req.will_retry_until
        {
            status.push_str(&fold("Will-Retry-Until", &rfc2822(until)));
        }
    }
    status
}

/// `rfc822; x@y`, or for an address with non-ASCII characters (SMTPUTF8) the RFC 6533 `utf-8`
/// type with those characters written as `\x{HEX}`, keeping the field ASCII.
fn address_field(address: &str) -> String {
    let address = clean(address);
    if address.is_ascii() {
        return format!("rfc822; {address}");
    }
    let mut escaped = String::new();
    for c in address.chars() {
        if c.is_ascii() && c != '\\' {
            escaped.push(c);
        } else {
            let _ = write!(escaped, "\\x{{{:X}}}", u32::from(c));
        }
    }
    format!("utf-8; {escaped}")
}

/// The header section of a message, up to and including the line end of its last field; the
/// whole message when it has no body. Cut at a line end beyond [`HEADERS_MAX`].
fn header_section(message: &[u8]) -> &[u8] {
    let end = memchr::memmem::find(message, b"\r\n\r\n").map_or(message.len(), |at| at + 2);
    let section = &message[..end];
    if section.len() <= HEADERS_MAX {
        return section;
    }
    let cut =
        memchr::memmem::rfind(&section[..HEADERS_MAX], b"\r\n").map_or(HEADERS_MAX, |at| at + 2);
    &section[..cut]
}

/// The first Subject field, unfolded and trimmed, as raw bytes.
fn subject_of(headers: &[u8]) -> Option<Vec<u8>> {
    let mut lines = headers
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    while let Some(line) = lines.next() {
        // A continuation line belongs to the field before it, whatever it looks like.
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if line.first().is_some_and(|&b| b == b' ' || b == b'\t')
            || !line[..colon]
                .trim_ascii_end()
                .eq_ignore_ascii_case(b"subject")
        {
            continue;
        }
        let mut value = line[colon + 1..].to_vec();
        for next in lines.by_ref() {
            if !next.first().is_some_and(|&b| b == b' ' || b == b'\t') {
                break;
            }
            value.extend_from_slice(next);
        }
        return Some(value.trim_ascii().to_vec());
    }
    None
}

/// `Subject: {prefix} {original}`. An ASCII original is copied as it is (encoded words stay
/// encoded words); one with 8-bit bytes (UTF-8, or else taken as Latin-1, which old devices send)
/// becomes RFC 2047 encoded words, so that our header section stays ASCII.
fn subject_field(prefix: &str, original: Option<&[u8]>) -> String {
    let text: Cow<'_, str> = match original {
        None | Some([]) => Cow::Borrowed("(no subject)"),
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => Cow::Borrowed(text),
            Err(_) => Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect()),
        },
    };
    let mut text = clean(&text);
    if let Some((cut, _)) = text.char_indices().nth(SUBJECT_MAX) {
        text.truncate(cut);
        text.push_str("...");
    }
    if text.is_ascii() {
        return fold("Subject", &format!("{prefix} {text}"));
    }
    // 45 bytes of UTF-8 are 60 characters of base64: each word stays under RFC 2047's 75.
    let mut field = format!("Subject: {prefix}");
    let mut chunk = String::new();
    let flush = |chunk: &mut String, field: &mut String| {
        if !chunk.is_empty() {
            let encoded = base64::engine::general_purpose::STANDARD.encode(chunk.as_bytes());
            let _ = write!(field, "\r\n =?utf-8?B?{encoded}?=");
            chunk.clear();
        }
    };
    for c in text.chars() {
        if chunk.len() + c.len_utf8() > 45 {
            flush(&mut chunk, &mut field);
        }
        chunk.push(c);
    }
    flush(&mut chunk, &mut field);
    field.push_str("\r\n");
    field
}

/// A header field (or delivery-status field) folded at spaces to about [`WIDTH`] columns.
/// `value` must be clean (see [`clean`]); a line without spaces stays long, never broken.
fn fold(name: &str, value: &str) -> String {
    let mut out = format!("{name}:");
    let mut line = out.len();
    for (i, word) in value.split(' ').enumerate() {
        // Never fold before an empty word: a continuation line may not be blank.
        if i > 0 && !word.is_empty() && line + 1 + word.len() > WIDTH {
            out.push_str("\r\n");
            line = 0;
        }
        out.push(' ');
        out.push_str(word);
        line += 1 + word.len();
    }
    out.push_str("\r\n");
    out
}

/// Appends `text` wrapped at [`WIDTH`] columns, every line starting with `indent`.
fn wrap(out: &mut String, indent: &str, text: &str) {
    let mut line = String::new();
    for word in text.split_whitespace() {
        // No line may exceed 998 bytes, whatever an upstream put into its reply.
        let word = match word.char_indices().nth(900) {
            Some((cut, _)) => &word[..cut],
            None => word,
        };
        if !line.is_empty() && indent.len() + line.len() + 1 + word.len() > WIDTH {
            let _ = write!(out, "{indent}{line}\r\n");
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        let _ = write!(out, "{indent}{line}\r\n");
    }
}

/// Control characters (CR and LF among them) become spaces.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// [`clean`], and characters beyond US-ASCII become `?`.
fn clean_ascii(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            c if c.is_control() => ' ',
            c if !c.is_ascii() => '?',
            c => c,
        })
        .collect()
}

/// The queue id as it may appear in a Message-ID and a boundary.
fn id_text(id: &str) -> String {
    let text: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(40)
        .collect();
    if text.is_empty() {
        "unknown".to_string()
    } else {
        text
    }
}

/// A boundary made of the queue id that occurs in none of `parts`. `=_` cannot occur in
/// quoted-printable or base64 text, so the first candidate nearly always fits.
fn boundary(queue_id: &str, parts: &[&[u8]]) -> String {
    let base = format!("=_smarthost_{}", id_text(queue_id));
    (0u32..)
        .map(|n| {
            if n == 0 {
                base.clone()
            } else {
                format!("{base}_{n}")
            }
        })
        .find(|candidate| {
            parts
                .iter()
                .all(|part| memchr::memmem::find(part, candidate.as_bytes()).is_none())
        })
        .expect("finite content cannot contain every candidate")
}

/// `7bit`, `8bit`, or `binary` when a line is longer than SMTP allows.
fn transfer_encoding(content: &[u8]) -> &'static str {
    if content.split(|&b| b == b'\n').any(|line| line.len() > 999) {
        "binary"
    } else if is_eight_bit(content) {
        "8bit"
    } else {
        "7bit"
    }
}

/// `Sat, 29 Nov 2026 10:11:12 +0000`.
fn rfc2822(unix: u64) -> String {
    let at = i64::try_from(unix)
        .ok()
        .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    at.format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_else(|_| "Thu, 01 Jan 1970 00:00:00 +0000".to_string())
}

/// `2 days 3 hours`, `45 minutes`.
fn human_duration(secs: u64) -> String {
    let units = [(86_400, "day"), (3600, "hour"), (60, "minute")];
    let mut parts = Vec::new();
    let mut rest = secs;
    for (size, name) in units {
        let n = rest / size;
        rest %= size;
        if n > 0 && parts.len() < 2 {
            parts.push(format!("{n} {name}{}", if n == 1 { "" } else { "s" }));
        }
    }
    if parts.is_empty() {
        "less than a minute".to_string()
    } else {
        parts.join(" ")
    }
}

/// `1.5 MiB`, `300 KiB`, `512 bytes`.
fn human_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / f64::from(1u32 << 20)),
        b if b >= 1 << 10 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::{MessageParser, MimeHeaders};

    const NOW: u64 = 1_796_033_472; // Mon, 30 Nov 2026 10:11:12 +0000
    const ARRIVAL: u64 = NOW - 2 * 86_400 - 300;
    const QID: &str = "19C8E1F2A3B4C0001";
    const USER_UNKNOWN: &str = "smtp.office365.com[52.96.1.2]:587 said \"550 5.1.1 User unknown\" \
                                in reply to RCPT TO:<gone@fabrikam.com> (the mailbox does not exist)";
    const THROTTLED: &str = "smtp.office365.com[52.96.1.2]:587 said \"451 4.7.500 Server busy. \
                             Please try again later\" in reply to MAIL FROM:<scan@contoso.com>";

    fn original(body: &str) -> Vec<u8> {
        format!(
            "Received: from scanner1 ([10.0.0.21]) by relay01.contoso.com with ESMTP id {QID};\r\n\
             \tSun, 27 Nov 2026 10:06:12 +0000\r\n\
             From: Scanner <scan@contoso.com>\r\n\
             To: gone@fabrikam.com, slow@fabrikam.com\r\n\
             Subject: Scan from MFP\r\n\
             Message-ID: <scan.1@contoso.com>\r\n\
             \r\n\
             {body}"
        )
        .into_bytes()
    }

    fn request<'a>(kind: DsnKind, original: &'a [u8]) -> DsnRequest<'a> {
        DsnRequest {
            kind,
            reporting_mta: "relay01.contoso.com",
            queue_id: QID,
            original_sender: "scan@contoso.com",
            arrival: ARRIVAL,
            now: NOW,
            recipients: vec![
                DsnRecipient {
                    address: "gone@fabrikam.com".into(),
                    reason: USER_UNKNOWN.into(),
                    last_attempt: Some(NOW - 60),
                    expired: false,
                },
                DsnRecipient {
                    address: "slow@fabrikam.com".into(),
                    reason: THROTTLED.into(),
                    last_attempt: Some(NOW - 30),
                    expired: true,
                },
            ],
            original,
            original_max: 256 * 1024,
            will_retry_until: None,
        }
    }

    /// The groups of `name: value` fields of a delivery-status part, unfolded.
    fn status_groups(part: &[u8]) -> Vec<Vec<(String, String)>> {
        let text = std::str::from_utf8(part).expect("delivery-status is ASCII");
        assert!(text.is_ascii(), "{text}");
        let unfolded = text.replace("\r\n ", " ").replace("\r\n\t", " ");
        unfolded
            .split("\r\n\r\n")
            .filter(|group| !group.trim().is_empty())
            .map(|group| {
                group
                    .split("\r\n")
                    .filter(|line| !line.is_empty())
                    .map(|line| {
                        let (name, value) = line.split_once(':').expect("a field");
                        (name.to_string(), value.trim().to_string())
                    })
                    .collect()
            })
            .collect()
    }

    fn field<'g>(group: &'g [(String, String)], name: &str) -> Option<&'g str> {
        group
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The readable text with its line breaks undone, for phrase checks.
    fn words(text: &str) -> String {
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// The top-level header section of a built notice.
    fn top_headers(dsn: &[u8]) -> &str {
        let end = memchr::memmem::find(dsn, b"\r\n\r\n").unwrap();
        std::str::from_utf8(&dsn[..end]).unwrap()
    }

    fn assert_lines_fit(dsn: &[u8], except: &[u8]) {
        let outside = match memchr::memmem::find(dsn, except) {
            Some(at) if !except.is_empty() => [&dsn[..at], &dsn[at + except.len()..]].concat(),
            _ => dsn.to_vec(),
        };
        for line in outside.split(|&b| b == b'\n') {
            assert!(line.len() <= 999, "line of {} bytes", line.len());
            assert!(line.iter().all(|&b| b != b'\r') || line.ends_with(b"\r"));
        }
    }

    #[test]
    fn a_failure_notice_parses_back_field_by_field() {
        let original = original("Please find the scan attached.\r\n");
        let dsn = build_dsn(&request(DsnKind::Failure, &original));
        assert!(top_headers(&dsn).is_ascii());
        assert!(
            !dsn.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'),
            "bare LF"
        );
        assert_lines_fit(&dsn, &original);

        let msg = MessageParser::default().parse(&dsn).unwrap();
        let from = msg.from().unwrap().first().unwrap();
        assert_eq!(from.name(), Some("Mail Delivery System"));
        assert_eq!(from.address(), Some("MAILER-DAEMON@relay01.contoso.com"));
        let to = msg.to().unwrap().first().unwrap();
        assert_eq!(to.address(), Some("scan@contoso.com"));
        assert_eq!(msg.subject(), Some("Undeliverable: Scan from MFP"));
        assert_eq!(msg.date().unwrap().to_timestamp(), NOW as i64);
        assert_eq!(
            msg.message_id(),
            Some(format!("{QID}.failure.{NOW}@relay01.contoso.com").as_str())
        );
        assert_eq!(
            msg.header_raw("Auto-Submitted").map(str::trim),
            Some("auto-replied")
        );
        assert_eq!(msg.header_raw("MIME-Version").map(str::trim), Some("1.0"));
        let ctype = msg.content_type().unwrap();
        assert_eq!(
            (ctype.ctype(), ctype.subtype()),
            ("multipart", Some("report"))
        );
        assert_eq!(ctype.attribute("report-type"), Some("delivery-status"));
        let boundary = ctype.attribute("boundary").unwrap();
        assert!(boundary.contains(QID), "{boundary}");

        let parts: Vec<_> = msg.parts[0]
            .sub_parts()
            .unwrap()
            .iter()
            .map(|&id| &msg.parts[id as usize])
            .collect();
        assert_eq!(parts.len(), 3);
        let types: Vec<_> = parts
            .iter()
            .map(|p| {
                let t = p.content_type().unwrap();
                format!("{}/{}", t.ctype(), t.subtype().unwrap_or(""))
            })
            .collect();
        assert_eq!(
            types,
            ["text/plain", "message/delivery-status", "message/rfc822"]
        );
        assert_eq!(
            parts[0].content_type().unwrap().attribute("charset"),
            Some("utf-8")
        );

        // 1. The readable explanation.
        let text = words(parts[0].text_contents().unwrap());
        for phrase in [
            "This is the mail system at relay01.contoso.com.",
            "could not be delivered to the recipients below",
            "will not try again",
            "<gone@fabrikam.com>",
            USER_UNKNOWN,
            "<slow@fabrikam.com>",
            "Not delivered within 2 days 5 minutes of being accepted",
            THROTTLED,
            "Your original message is attached.",
            QID,
        ] {
            assert!(text.contains(&words(phrase)), "{phrase:?} not in {text}");
        }

        // 2. The delivery status, per message and per recipient.
        let groups = status_groups(parts[1].contents());
        assert_eq!(groups.len(), 3, "{groups:#?}");
        let message = &groups[0];
        assert_eq!(
            field(message, "Reporting-MTA"),
            Some("dns; relay01.contoso.com")
        );
        assert_eq!(field(message, "X-Smarthost-Queue-ID"), Some(QID));
        assert_eq!(
            field(message, "X-Smarthost-Sender"),
            Some("rfc822; scan@contoso.com")
        );
        assert_eq!(
            field(message, "Arrival-Date"),
            Some(rfc2822(ARRIVAL).as_str())
        );
        let gone = &groups[1];
        assert_eq!(
            field(gone, "Final-Recipient"),
            Some("rfc822; gone@fabrikam.com")
        );
        assert_eq!(field(gone, "Action"), Some("failed"));
        assert_eq!(field(gone, "Status"), Some("5.1.1"));
        assert_eq!(field(gone, "Remote-MTA"), Some("dns; smtp.office365.com"));
        assert_eq!(
            field(gone, "Diagnostic-Code"),
            Some("smtp; 550 5.1.1 User unknown")
        );
        assert_eq!(
            field(gone, "Last-Attempt-Date"),
            Some(rfc2822(NOW - 60).as_str())
        );
        assert_eq!(field(gone, "Will-Retry-Until"), None);
        let slow = &groups[2];
        assert_eq!(
            field(slow, "Final-Recipient"),
            Some("rfc822; slow@fabrikam.com")
        );
        assert_eq!(field(slow, "Action"), Some("failed"));
        assert_eq!(field(slow, "Status"), Some("5.4.7"));
        assert_eq!(
            field(slow, "Diagnostic-Code"),
            Some("smtp; 451 4.7.500 Server busy. Please try again later")
        );

        // 3. The original, whole.
        let returned = parts[2].message().unwrap();
        assert_eq!(returned.subject(), Some("Scan from MFP"));
        assert_eq!(returned.message_id(), Some("scan.1@contoso.com"));
        assert_eq!(returned.raw_message(), &original[..]);
    }

    #[test]
    fn a_large_original_is_returned_as_its_headers_only() {
        let body = "x".repeat(200).repeat(10) + "\r\n";
        let original = original(&body);
        let mut req = request(DsnKind::Failure, &original);
        req.original_max = 1000;
        let dsn = build_dsn(&req);
        let msg = MessageParser::default().parse(&dsn).unwrap();
        let parts = msg.parts[0].sub_parts().unwrap();
        assert_eq!(parts.len(), 3);
        let third = &msg.parts[parts[2] as usize];
        let ctype = third.content_type().unwrap();
        assert_eq!(
            (ctype.ctype(), ctype.subtype()),
            ("text", Some("rfc822-headers"))
        );
        let headers = third.contents();
        let end = memchr::memmem::find(&original, b"\r\n\r\n").unwrap() + 2;
        assert_eq!(headers, &original[..end]);
        assert!(memchr::memmem::find(&dsn, b"xxxxxxxx").is_none());
        let text = words(msg.parts[parts[0] as usize].text_contents().unwrap());
        assert!(
            text.contains("The headers of your original message are attached; the message itself (2 KiB) is larger"),
            "{text}"
        );
        // The limit is inclusive.
        req.original_max = original.len() as u64;
        let msg_bytes = build_dsn(&req);
        let msg = MessageParser::default().parse(&msg_bytes).unwrap();
        let third = &msg.parts[msg.parts[0].sub_parts().unwrap()[2] as usize];
        assert_eq!(third.message().unwrap().raw_message(), &original[..]);
    }

    #[test]
    fn a_delay_notice_says_until_when_it_keeps_trying() {
        let original = original("body\r\n");
        let mut req = request(DsnKind::Delay, &original);
        req.recipients.truncate(1);
        req.recipients[0] = DsnRecipient {
            address: "slow@fabrikam.com".into(),
            reason: THROTTLED.into(),
            last_attempt: Some(NOW - 30),
            expired: false,
        };
        let until = ARRIVAL + 2 * 86_400;
        req.will_retry_until = Some(until);
        let dsn = build_dsn(&req);
        let msg = MessageParser::default().parse(&dsn).unwrap();
        assert_eq!(msg.subject(), Some("Delivery delayed: Scan from MFP"));
        assert_eq!(
            msg.message_id(),
            Some(format!("{QID}.delay.{NOW}@relay01.contoso.com").as_str())
        );
        let parts: Vec<_> = msg.parts[0]
            .sub_parts()
            .unwrap()
            .iter()
            .map(|&id| &msg.parts[id as usize])
            .collect();
        let text = words(parts[0].text_contents().unwrap());
        assert!(text.contains("has not been delivered yet"), "{text}");
        assert!(
            text.contains("No action is required on your part"),
            "{text}"
        );
        assert!(
            text.contains(&format!("keep trying until {}", rfc2822(until))),
            "{text}"
        );
        assert!(
            text.contains("The headers of your message are attached."),
            "{text}"
        );
        let groups = status_groups(parts[1].contents());
        assert_eq!(groups.len(), 2);
        let slow = &groups[1];
        assert_eq!(field(slow, "Action"), Some("delayed"));
        assert_eq!(field(slow, "Status"), Some("4.7.500"));
        assert_eq!(
            field(slow, "Will-Retry-Until"),
            Some(rfc2822(until).as_str())
        );
        assert_eq!(
            field(slow, "Last-Attempt-Date"),
            Some(rfc2822(NOW - 30).as_str())
        );
        // A delay returns the headers, however small the message.
        let ctype = parts[2].content_type().unwrap();
        assert_eq!(ctype.subtype(), Some("rfc822-headers"));
    }

    #[test]
    fn subjects_are_copied_unfolded_and_non_ascii_ones_encoded() {
        // Long enough to need several encoded words.
        let japanese = "\u{65e5}\u{672c}\u{8a9e}\u{306e}\u{4ef6}\u{540d}".repeat(10);
        let cases: &[(&[u8], &str)] = &[
            (
                "Scan vom Kopierer B\u{fc}ro 2.OG".as_bytes(),
                "Undeliverable: Scan vom Kopierer B\u{fc}ro 2.OG",
            ),
            // Latin-1, as old devices send it.
            (b"Scan B\xfcro", "Undeliverable: Scan B\u{fc}ro"),
            (b"=?iso-8859-1?Q?B=FCro?=", "Undeliverable: B\u{fc}ro"),
            (b"Monthly\r\n report", "Undeliverable: Monthly report"),
            (japanese.as_bytes(), ""),
            (b"", "Undeliverable: (no subject)"),
        ];
        for (subject, expected) in cases {
            let mut original = b"From: a@contoso.com\r\nSubject: ".to_vec();
            original.extend_from_slice(subject);
            original.extend_from_slice(b"\r\n\r\nbody\r\n");
            let dsn = build_dsn(&request(DsnKind::Failure, &original));
            let headers = top_headers(&dsn);
            assert!(headers.is_ascii(), "{headers}");
            assert!(headers.lines().all(|line| line.len() <= 78), "{headers}");
            let msg = MessageParser::default().parse(&dsn).unwrap();
            let want = if expected.is_empty() {
                format!("Undeliverable: {}", std::str::from_utf8(subject).unwrap())
            } else {
                expected.to_string()
            };
            assert_eq!(msg.subject(), Some(want.as_str()), "{headers}");
        }
        let hidden =
            b"Received: from x\r\n\tSubject: fake\r\nSubject: real\r\n\r\nSubject: body\r\n";
        let dsn = build_dsn(&request(DsnKind::Failure, hidden));
        let msg = MessageParser::default().parse(&dsn).unwrap();
        assert_eq!(msg.subject(), Some("Undeliverable: real"));
        let no_subject = b"From: a@contoso.com\r\n\r\nSubject: in the body\r\n";
        let dsn = build_dsn(&request(DsnKind::Failure, no_subject));
        let msg = MessageParser::default().parse(&dsn).unwrap();
        assert_eq!(msg.subject(), Some("Undeliverable: (no subject)"));
    }

    #[test]
    fn a_reason_without_a_quoted_reply_still_gives_status_and_diagnostic() {
        let original = original("body\r\n");
        let mut req = request(DsnKind::Failure, &original);
        req.recipients = vec![
            DsnRecipient {
                address: "a@fabrikam.com".into(),
                reason: "smtp.office365.com[52.96.1.2]:587: timed out after DATA".into(),
                last_attempt: None,
                expired: false,
            },
            DsnRecipient {
                address: "b@nowhere.example".into(),
                reason: "no route takes the domain of <b@nowhere.example> (configuration changed \
                         since it was accepted?)"
                    .into(),
                last_attempt: None,
                expired: false,
            },
        ];
        let dsn = build_dsn(&req);
        let msg = MessageParser::default().parse(&dsn).unwrap();
        let parts = msg.parts[0].sub_parts().unwrap();
        let groups = status_groups(msg.parts[parts[1] as usize].contents());
        let a = &groups[1];
        assert_eq!(field(a, "Status"), Some("5.0.0"));
        assert_eq!(field(a, "Remote-MTA"), Some("dns; smtp.office365.com"));
        assert_eq!(
            field(a, "Diagnostic-Code"),
            Some("X-Smarthost; smtp.office365.com[52.96.1.2]:587: timed out after DATA")
        );
        assert_eq!(field(a, "Last-Attempt-Date"), None);
        let b = &groups[2];
        assert_eq!(field(b, "Status"), Some("5.0.0"));
        assert_eq!(field(b, "Remote-MTA"), None);
        assert!(
            field(b, "Diagnostic-Code")
                .unwrap()
                .starts_with("X-Smarthost; no route takes")
        );
        let text = words(msg.parts[parts[0] as usize].text_contents().unwrap());
        assert!(
            text.contains("no route takes the domain of <b@nowhere.example>"),
            "{text}"
        );
    }

    #[test]
    fn statuses_come_from_the_quoted_reply() {
        use DsnKind::*;
        let said = |reply: &str| {
            format!("mx.example[192.0.2.1]:25 said \"{reply}\" in reply to RCPT TO:<a@b>")
        };
        let cases: Vec<(String, DsnKind, bool, &str)> = vec![
            (said("550 5.1.1 User unknown"), Failure, false, "5.1.1"),
            (
                said("550 5.7.708 Service unavailable. Access denied"),
                Failure,
                false,
                "5.7.708",
            ),
            (said("554 Transaction failed"), Failure, false, "5.0.0"),
            (
                said("552-5.2.2 Mailbox full 5.2.2 really"),
                Failure,
                false,
                "5.2.2",
            ),
            // A temporary reply made final by the relay (e.g. given up) is still a failure.
            (said("452 4.2.2 Over quota"), Failure, false, "5.2.2"),
            (said("451 4.7.500 Server busy"), Failure, true, "5.4.7"),
            (said("451 4.7.500 Server busy"), Delay, false, "4.7.500"),
            (said("421 Service not available"), Delay, false, "4.0.0"),
            // A 5xx that the relay keeps trying (credentials, quota) is delayed, class 4.
            (
                said("535 5.7.139 Authentication unsuccessful"),
                Delay,
                false,
                "4.7.139",
            ),
            (said("550 55.1.1 odd"), Failure, false, "5.0.0"),
            (said("550 5.1.1.1 odd"), Failure, false, "5.0.0"),
            (said("550 5.1"), Failure, false, "5.0.0"),
            ("connection refused".into(), Failure, false, "5.0.0"),
            ("connection refused".into(), Failure, true, "5.4.7"),
            ("connection refused".into(), Delay, false, "4.0.0"),
        ];
        for (reason, kind, expired, want) in &cases {
            assert_eq!(
                status_of(reason, *kind, *expired),
                *want,
                "{reason} {kind:?} {expired}"
            );
        }
    }

    #[test]
    fn diagnostics_are_the_quoted_reply_on_one_line() {
        let cases: &[(&str, Option<&str>)] = &[
            (USER_UNKNOWN, Some("550 5.1.1 User unknown")),
            (
                "h[192.0.2.1]:25 said \"554 5.6.0 \"bad\" content\" after the message content",
                Some("554 5.6.0 \"bad\" content"),
            ),
            (
                "h[192.0.2.1]:25 said \"421 4.3.2 Service not available\" in its greeting",
                Some("421 4.3.2 Service not available"),
            ),
            (
                "h[192.0.2.1]:25 said \"550 5.1.1 x\r\ny\" in reply to RCPT TO:<a@b> (\"quoted\")",
                Some("550 5.1.1 x  y"),
            ),
            ("h[192.0.2.1]:25 said \"hello\" in reply to EHLO", None),
            ("h[192.0.2.1]:25: connection lost after DATA", None),
            (
                "cannot write to drop folder /x: No space left on device",
                None,
            ),
            ("", None),
        ];
        for (reason, want) in cases {
            assert_eq!(diagnostic_of(reason).as_deref(), *want, "{reason:?}");
        }
        assert_eq!(
            remote_mta_of(USER_UNKNOWN).as_deref(),
            Some("smtp.office365.com")
        );
        assert_eq!(remote_mta_of("no route [x]"), None);
        assert_eq!(remote_mta_of("[192.0.2.1]:25 said"), None);
    }

    #[test]
    fn nothing_from_outside_can_add_a_header_line() {
        let original = b"Subject: hi\r\n\tthere\r\nSubject: second\r\n\r\nbody\r\n";
        let mut req = request(DsnKind::Failure, original);
        req.original_sender = "scan@contoso.com>\r\nBcc: victim@example.com";
        req.reporting_mta = "relay01\r\nX-Injected: 1";
        req.queue_id = "QID\r\nX-Injected: 2";
        req.recipients[0].address = "gone@fabrikam.com\r\nX-Injected: 3".into();
        req.recipients[0].reason =
            "said \"550 5.1.1 a\r\nX-Injected: 4\" in reply to RCPT TO:<x>".into();
        let dsn = build_dsn(&req);
        let headers = top_headers(&dsn);
        let names: Vec<&str> = headers
            .split("\r\n")
            .filter(|line| !line.starts_with([' ', '\t']))
            .map(|line| line.split(':').next().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "From",
                "To",
                "Subject",
                "Date",
                "Message-ID",
                "Auto-Submitted",
                "MIME-Version",
                "Content-Type"
            ]
        );
        assert!(!dsn.windows(13).any(|w| w == b"\r\nX-Injected:"));
        assert!(!dsn.windows(6).any(|w| w == b"\r\nBcc:"));
        let msg = MessageParser::default().parse(&dsn).unwrap();
        assert_eq!(msg.subject(), Some("Undeliverable: hi there"));
        let parts = msg.parts[0].sub_parts().unwrap();
        let groups = status_groups(msg.parts[parts[1] as usize].contents());
        assert!(
            groups[1]
                .iter()
                .all(|(name, _)| !name.starts_with("X-Injected"))
        );
    }

    #[test]
    fn the_boundary_never_occurs_in_the_original() {
        let first = format!("=_smarthost_{QID}");
        let body = format!("--{first}\r\n--{first}_1\r\nsneaky\r\n");
        let original = original(&body);
        let dsn = build_dsn(&request(DsnKind::Failure, &original));
        let msg = MessageParser::default().parse(&dsn).unwrap();
        let boundary = msg.content_type().unwrap().attribute("boundary").unwrap();
        assert_eq!(boundary, format!("{first}_2"));
        let parts = msg.parts[0].sub_parts().unwrap();
        assert_eq!(parts.len(), 3);
        let returned = msg.parts[parts[2] as usize].message().unwrap();
        assert_eq!(returned.raw_message(), &original[..]);
    }

    #[test]
    fn long_reasons_and_unicode_addresses_keep_the_report_in_shape() {
        let original = original("b\u{fc}dy\r\n");
        let mut req = request(DsnKind::Failure, &original);
        let long = format!(
            "mx.example[192.0.2.1]:25 said \"550 5.7.1 {}\" in reply to DATA",
            "word ".repeat(400)
        );
        req.recipients[0].reason = long;
        req.recipients[1].address = "j\u{f6}rg@b\u{fc}ro.example".into();
        let dsn = build_dsn(&req);
        assert_lines_fit(&dsn, &original);
        assert!(is_eight_bit(&dsn));
        let msg = MessageParser::default().parse(&dsn).unwrap();
        let parts = msg.parts[0].sub_parts().unwrap();
        let third = &msg.parts[parts[2] as usize];
        assert_eq!(third.content_transfer_encoding(), Some("8bit"));
        let groups = status_groups(msg.parts[parts[1] as usize].contents());
        assert!(
            field(&groups[1], "Diagnostic-Code")
                .unwrap()
                .ends_with("word word")
        );
        assert_eq!(
            field(&groups[2], "Final-Recipient"),
            Some("utf-8; j\\x{F6}rg@b\\x{FC}ro.example")
        );
        let text = msg.parts[parts[0] as usize].text_contents().unwrap();
        assert!(text.contains("<j\u{f6}rg@b\u{fc}ro.example>"), "{text}");
        assert!(
            text.lines().all(|line| line.chars().count() <= WIDTH),
            "{text}"
        );
    }
}
