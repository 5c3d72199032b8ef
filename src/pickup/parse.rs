//! A Pickup file → envelope and content, with no I/O.
//!
//! The file is an RFC 5322 message, as IIS reads it:
//! 1. Optional envelope lines at the very top: `x-sender: <address>` (at most one; empty or `<>` is
//!    the null sender) and `x-receiver: <address>` (one per recipient), names in any case. They give
//!    the envelope and are removed from the content.
//! 2. The header section: `Name: value` lines and their folded continuations (lines that begin
//!    with a space or tab). It ends at an empty (or white-space-only) line, or at the first line
//!    that is not a header field: the four-line example of the IIS documentation has no empty line
//!    between `subject:` and the body, so one is added. A body line that looks like a header field
//!    (`Note: call me`) therefore needs the empty line before it.
//! 3. The body.
//!
//! Without `x-sender`, the sender is the address in `From:` (`Sender:` when `From:` holds no
//! address, or several); without `x-receiver`, the recipients are every address in `To:`, `Cc:`
//! and `Bcc:` (duplicates once, compared without regard to case). `Bcc:` is always removed from
//! the content.
//!
//! The content comes out as CRLF text: bare LF and bare CR become CRLF, a missing final line end is
//! added. A UTF-8 byte order mark is dropped; a UTF-16 file (Notepad's "Unicode") is converted to
//! UTF-8. Any other bytes pass unchanged.

use super::address::parse_address_list;
use std::borrow::Cow;
use std::fmt;

/// A Pickup file that can be queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PickupMessage {
    /// Envelope sender; empty for the null sender (`x-sender: <>`).
    pub sender: String,
    /// Envelope recipients, without duplicates, in the order found.
    pub recipients: Vec<String>,
    /// The message as it is to be stored: CRLF text, envelope lines and `Bcc:` removed.
    pub content: Vec<u8>,
    /// The header section has a `Date:` field.
    pub has_date: bool,
    /// The header section has a `Message-ID:` field.
    pub has_message_id: bool,
}

impl PickupMessage {
    /// Some address is not ASCII: the message needs SMTPUTF8 upstream.
    pub fn smtputf8(&self) -> bool {
        !self.sender.is_ascii() || self.recipients.iter().any(|r| !r.is_ascii())
    }

    /// Adds `Date:` and `Message-ID:` at the top when the file has none, as a submission agent
    /// does (RFC 6409 §8.2, §8.3): files written by hand or by scripts seldom have them, and
    /// receivers score their absence as spam.
    pub fn add_missing_headers(&mut self, date: &str, message_id: &str) {
        let mut top = String::new();
        if !self.has_date {
            top.push_str(&format!("Date: {date}\r\n"));
            self.has_date = true;
        }
        if !self.has_message_id {
            top.push_str(&format!("Message-ID: {message_id}\r\n"));
            self.has_message_id = true;
        }
        self.content.splice(0..0, top.into_bytes());
    }
}

/// A Pickup file that cannot be queued, with what could be read of it (for the Badmail record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// What is wrong, for people (without the file's name).
    pub reason: String,
    /// The envelope sender, when one was found.
    pub sender: Option<String>,
    /// The valid recipients found.
    pub recipients: Vec<String>,
    /// The content as it would have been queued, when the file's structure could be read; `None`
    /// when it is not a message at all (then the original bytes are what to keep).
    pub content: Option<Vec<u8>>,
}

impl Rejected {
    fn unreadable(reason: impl Into<String>) -> Rejected {
        Rejected {
            reason: reason.into(),
            sender: None,
            recipients: Vec::new(),
            content: None,
        }
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Reads a Pickup file. See the module documentation for the rules.
pub fn parse_pickup(bytes: &[u8]) -> Result<PickupMessage, Rejected> {
    let text = decode(bytes).map_err(Rejected::unreadable)?;
    if text.iter().all(u8::is_ascii_whitespace) {
        return Err(Rejected::unreadable("the file is empty"));
    }
    if memchr::memchr(0, &text).is_some() {
        return Err(Rejected::unreadable(
            "it is not a text file (it contains NUL bytes)",
        ));
    }
    let lines = split_lines(&text);
    let mut problems = Vec::new();

    // Envelope lines.
    let mut at = 0;
    let mut x_sender: Option<&[u8]> = None;
    let mut x_receivers: Vec<&[u8]> = Vec::new();
    while let Some((name, value)) = lines.get(at).and_then(|line| field(line)) {
        if name.eq_ignore_ascii_case(b"x-sender") {
            if x_sender.is_some() {
                problems.push("more than one x-sender line".to_string());
            }
            x_sender = Some(value);
        } else if name.eq_ignore_ascii_case(b"x-receiver") {
            x_receivers.push(value);
        } else {
            break;
        }
        at += 1;
    }

    // Header section: each field as a range of lines.
    let mut fields: Vec<(usize, usize)> = Vec::new();
    let first = at;
    let body_start = loop {
        let Some(line) = lines.get(at) else {
            break at;
        };
        if line.iter().all(|&b| b == b' ' || b == b'\t') {
            break at + 1;
        }
        if matches!(line[0], b' ' | b'\t')
            && let Some(last) = fields.last_mut()
        {
            last.1 = at + 1;
        } else if field(line).is_some() {
            fields.push((at, at + 1));
        } else {
            break at;
        }
        at += 1;
    };
    if fields.is_empty() {
        return Err(Rejected::unreadable(match lines.get(first) {
            Some(line) if !line.iter().all(|&b| b == b' ' || b == b'\t') => format!(
                "it is not a message: it must begin with header fields such as `From:` and `To:`, \
                 but {} `{}` is not a header field (`Name: value`)",
                if first == 0 {
                    "its first line".to_string()
                } else {
                    format!("line {}", first + 1)
                },
                excerpt(line)
            ),
            _ => "it is not a message: it has no header fields (`From:`, `To:`, ...) at the top"
                .to_string(),
        }));
    }
    let name_of = |&(start, _): &(usize, usize)| field(lines[start]).map_or(&[][..], |(n, _)| n);
    let value_of = |&(start, end): &(usize, usize)| {
        let mut value = field(lines[start]).map_or(&[][..], |(_, v)| v).to_vec();
        for line in &lines[start + 1..end] {
            value.extend_from_slice(line);
        }
        String::from_utf8_lossy(&value).into_owned()
    };
    let named = |wanted: &'static str| {
        fields
            .iter()
            .filter(move |f| name_of(f).eq_ignore_ascii_case(wanted.as_bytes()))
    };

    // Content: header fields without Bcc, the separating empty line, the body; all CRLF.
    let mut content = Vec::with_capacity(text.len() + lines.len() + 2);
    for f in &fields {
        if name_of(f).eq_ignore_ascii_case(b"bcc") {
            continue;
        }
        for line in &lines[f.0..f.1] {
            content.extend_from_slice(line);
            content.extend_from_slice(b"\r\n");
        }
    }
    content.extend_from_slice(b"\r\n");
    for line in &lines[body_start..] {
        content.extend_from_slice(line);
        content.extend_from_slice(b"\r\n");
    }

    // Envelope sender.
    let addresses_of = |label: &str, value: &str, problems: &mut Vec<String>| {
        let mut valid = Vec::new();
        match parse_address_list(value) {
            Ok(found) => {
                for address in found {
                    if is_valid(&address) {
                        valid.push(address);
                    } else {
                        problems.push(format!("{label}: `{address}` is not a valid address"));
                    }
                }
            }
            Err(e) => problems.push(format!("{label}: {e}")),
        }
        valid
    };
    let sender = match x_sender {
        Some(value) => {
            let value = String::from_utf8_lossy(value);
            let value = value.trim();
            if value.is_empty() || value == "<>" {
                Some(String::new())
            } else {
                let found = addresses_of("x-sender", value, &mut problems);
                if found.len() > 1 {
                    problems.push(format!("x-sender: `{value}` has more than one address"));
                }
                found.into_iter().next()
            }
        }
        None => {
            let mut from = Vec::new();
            for f in named("from") {
                from.extend(addresses_of("From", &value_of(f), &mut problems));
            }
            if from.len() == 1 {
                from.pop()
            } else {
                let mut sender = Vec::new();
                for f in named("sender") {
                    sender.extend(addresses_of("Sender", &value_of(f), &mut problems));
                }
                sender.into_iter().chain(from).next()
            }
        }
    };

    // Envelope recipients.
    let mut recipients: Vec<String> = Vec::new();
    let mut add = |found: Vec<String>| {
        for address in found {
            if !recipients.iter().any(|r| r.eq_ignore_ascii_case(&address)) {
                recipients.push(address);
            }
        }
    };
    if x_receivers.is_empty() {
        for f in &fields {
            let name = name_of(f);
            for label in ["To", "Cc", "Bcc"] {
                if name.eq_ignore_ascii_case(label.as_bytes()) {
                    add(addresses_of(label, &value_of(f), &mut problems));
                }
            }
        }
    } else {
        for value in &x_receivers {
            let value = String::from_utf8_lossy(value);
            let found = addresses_of("x-receiver", &value, &mut problems);
            if found.is_empty() && parse_address_list(&value).is_ok_and(|a| a.is_empty()) {
                problems.push("an x-receiver line has no address".to_string());
            }
            add(found);
        }
    }

    if problems.is_empty() {
        if sender.is_none() {
            problems
                .push("no sender: no x-sender line and no address in From (or Sender)".to_string());
        }
        if recipients.is_empty() {
            problems
                .push("no recipients: no x-receiver line and no To, Cc or Bcc address".to_string());
        }
    }
    if !problems.is_empty() {
        return Err(Rejected {
            reason: problems.join("; "),
            sender,
            recipients,
            content: Some(content),
        });
    }
    Ok(PickupMessage {
        sender: sender.expect("checked above"),
        recipients,
        content,
        has_date: named("date").next().is_some(),
        has_message_id: named("message-id").next().is_some(),
    })
}

/// The text as UTF-8 or 8-bit bytes: UTF-16 (with its byte order mark) converted, a UTF-8 byte
/// order mark dropped.
fn decode(bytes: &[u8]) -> Result<Cow<'_, [u8]>, String> {
    let utf16 = |rest: &[u8], unit: fn([u8; 2]) -> u16| {
        if !rest.len().is_multiple_of(2) {
            return Err("it begins like UTF-16 text but has an odd number of bytes".to_string());
        }
        let units: Vec<u16> = rest.chunks_exact(2).map(|c| unit([c[0], c[1]])).collect();
        String::from_utf16(&units)
            .map(|s| Cow::Owned(s.into_bytes()))
            .map_err(|_| "it begins like UTF-16 text but is not valid UTF-16".to_string())
    };
    if let Some(rest) = bytes.strip_prefix(b"\xFF\xFE") {
        utf16(rest, u16::from_le_bytes)
    } else if let Some(rest) = bytes.strip_prefix(b"\xFE\xFF") {
        utf16(rest, u16::from_be_bytes)
    } else {
        Ok(Cow::Borrowed(
            bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes),
        ))
    }
}

/// Lines without their ends; CRLF, LF and a bare CR each end a line.
fn split_lines(text: &[u8]) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    let mut start = 0;
    while let Some(offset) = memchr::memchr2(b'\r', b'\n', &text[start..]) {
        let end = start + offset;
        lines.push(&text[start..end]);
        start = if text[end] == b'\r' && text.get(end + 1) == Some(&b'\n') {
            end + 2
        } else {
            end + 1
        };
    }
    if start < text.len() {
        lines.push(&text[start..]);
    }
    lines
}

/// `Name: value` (white space allowed before the colon, RFC 5322 §4.5.6) → (name, value).
fn field(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = memchr::memchr(b':', line)?;
    let mut name = &line[..colon];
    while let [rest @ .., b' ' | b'\t'] = name {
        name = rest;
    }
    let valid = !name.is_empty() && name.iter().all(|&b| (33..=126).contains(&b));
    valid.then(|| (name, &line[colon + 1..]))
}

/// An address we can put in an envelope: well formed, and not damaged by a charset conversion.
fn is_valid(address: &str) -> bool {
    !address.contains('\u{FFFD}') && crate::smtp::command::is_valid_mailbox(address)
}

/// The start of a line, printable, for a message.
fn excerpt(line: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(line)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    match text.char_indices().nth(60) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(file: &str) -> PickupMessage {
        parse_pickup(file.as_bytes()).unwrap_or_else(|e| panic!("{file:?}: {e}"))
    }

    fn content(m: &PickupMessage) -> &str {
        std::str::from_utf8(&m.content).unwrap()
    }

    const SEED: &str = "from:testuser@internaldomain.com\n\
                        to:tbill@externaldomainname.com\n\
                        subject:This is a test.\n\
                        this is a test.\n";
    const SEED_CRLF: &str = "from:testuser@internaldomain.com\r\n\
                             to:tbill@externaldomainname.com\r\n\
                             subject:This is a test.\r\n\
                             \r\n\
                             this is a test.\r\n";

    #[test]
    fn files_become_envelope_and_crlf_content() {
        let notepad = SEED.replace('\n', "\r\n");
        let notepad = notepad.trim_end();
        // (file, sender, recipients, content)
        let cases: &[(&str, &str, &[&str], &str)] = &[
            // The seed's four lines, as Notepad (CRLF, no final line end) and as Linux writes them.
            (
                SEED,
                "testuser@internaldomain.com",
                &["tbill@externaldomainname.com"],
                SEED_CRLF,
            ),
            (
                notepad,
                "testuser@internaldomain.com",
                &["tbill@externaldomainname.com"],
                SEED_CRLF,
            ),
            // An empty line already there is kept, not doubled; bare CR is a line end too.
            (
                "From: a@x.com\nTo: b@y.com\n\nline 1\rline 2\r\n\nlast",
                "a@x.com",
                &["b@y.com"],
                "From: a@x.com\r\nTo: b@y.com\r\n\r\nline 1\r\nline 2\r\n\r\nlast\r\n",
            ),
            // A white-space-only line ends the header section too.
            (
                "From: a@x.com\nTo: b@y.com\n  \t\nbody\n",
                "a@x.com",
                &["b@y.com"],
                "From: a@x.com\r\nTo: b@y.com\r\n\r\nbody\r\n",
            ),
            // Headers only.
            (
                "From: a@x.com\nTo: b@y.com",
                "a@x.com",
                &["b@y.com"],
                "From: a@x.com\r\nTo: b@y.com\r\n\r\n",
            ),
            // x-sender/x-receiver give the envelope and go; To is then only a header.
            (
                "x-sender: env@x.com\nX-Receiver: <r1@y.com>\nx-receiver: r2@y.com\nFrom: Boss <boss@x.com>\nTo: list@y.com\n\nhi\n",
                "env@x.com",
                &["r1@y.com", "r2@y.com"],
                "From: Boss <boss@x.com>\r\nTo: list@y.com\r\n\r\nhi\r\n",
            ),
            // IIS drop files (and ours) read back: x-sender empty is the null sender.
            (
                "x-sender: \r\nx-receiver: r@y.com\r\nSubject: bounce\r\n\r\nbody\r\n",
                "",
                &["r@y.com"],
                "Subject: bounce\r\n\r\nbody\r\n",
            ),
            (
                "x-sender: <>\nx-receiver: r@y.com\nSubject: s\n",
                "",
                &["r@y.com"],
                "Subject: s\r\n\r\n",
            ),
            // Bcc (folded) is removed but its addresses are recipients; duplicates once.
            (
                "From: \"Scanner, 3rd floor\" <scan@x.com>\nTo: A <a@y.com>, b@y.com\nCc: B@Y.com (again)\nBcc: c@y.com,\n d@y.com\nSubject: s\n\nbody\n",
                "scan@x.com",
                &["a@y.com", "b@y.com", "c@y.com", "d@y.com"],
                "From: \"Scanner, 3rd floor\" <scan@x.com>\r\nTo: A <a@y.com>, b@y.com\r\nCc: B@Y.com (again)\r\nSubject: s\r\n\r\nbody\r\n",
            ),
            // Several To fields, groups, folded lines, names in any case.
            (
                "FROM: a@x.com\nto: undisclosed-recipients:;\nTO: Team: t1@y.com,\n\tt2@y.com;\ncc:c@y.com\n\nb\n",
                "a@x.com",
                &["t1@y.com", "t2@y.com", "c@y.com"],
                "FROM: a@x.com\r\nto: undisclosed-recipients:;\r\nTO: Team: t1@y.com,\r\n\tt2@y.com;\r\ncc:c@y.com\r\n\r\nb\r\n",
            ),
            // Bcc only.
            (
                "From: a@x.com\nBcc: hidden@y.com\n\nb",
                "a@x.com",
                &["hidden@y.com"],
                "From: a@x.com\r\n\r\nb\r\n",
            ),
            // From with two authors: Sender is the envelope sender; From alone with two: the first.
            (
                "From: a@x.com, b@x.com\nSender: s@x.com\nTo: r@y.com\n",
                "s@x.com",
                &["r@y.com"],
                "From: a@x.com, b@x.com\r\nSender: s@x.com\r\nTo: r@y.com\r\n\r\n",
            ),
            (
                "From: a@x.com, b@x.com\nTo: r@y.com\n",
                "a@x.com",
                &["r@y.com"],
                "From: a@x.com, b@x.com\r\nTo: r@y.com\r\n\r\n",
            ),
            // A UTF-8 byte order mark is dropped; 8-bit text passes unchanged.
            (
                "\u{feff}From: Jörg <j@x.com>\nTo: r@y.com\n\nGrüße\n",
                "j@x.com",
                &["r@y.com"],
                "From: Jörg <j@x.com>\r\nTo: r@y.com\r\n\r\nGrüße\r\n",
            ),
            // A body line that looks like a header needs the empty line; one that does not, not.
            (
                "From: a@x.com\nTo: r@y.com\nHello world: this is body\n",
                "a@x.com",
                &["r@y.com"],
                "From: a@x.com\r\nTo: r@y.com\r\n\r\nHello world: this is body\r\n",
            ),
        ];
        for (file, sender, recipients, want) in cases {
            let m = ok(file);
            assert_eq!(m.sender, *sender, "{file:?}");
            assert_eq!(m.recipients, *recipients, "{file:?}");
            assert_eq!(content(&m), *want, "{file:?}");
        }
    }

    #[test]
    fn utf16_files_from_notepad_are_converted() {
        let text = "From: a@x.com\r\nTo: r@y.com\r\n\r\nÄrger\r\n";
        let mut le = vec![0xFF, 0xFE];
        le.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
        let mut be = vec![0xFE, 0xFF];
        be.extend(text.encode_utf16().flat_map(u16::to_be_bytes));
        for file in [le, be] {
            let m = parse_pickup(&file).unwrap();
            assert_eq!(m.content, text.as_bytes());
        }
        assert!(
            parse_pickup(b"\xFF\xFEa")
                .unwrap_err()
                .reason
                .contains("odd number of bytes")
        );
    }

    #[test]
    fn unusable_files_are_rejected_with_a_reason_and_what_was_found() {
        // (file, reason contains, sender, recipients, content kept)
        type Case<'a> = (&'a [u8], &'a str, Option<&'a str>, &'a [&'a str], bool);
        let cases: &[Case] = &[
            (b"", "the file is empty", None, &[], false),
            (b" \r\n\n", "the file is empty", None, &[], false),
            (
                b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR",
                "not a text file (it contains NUL bytes)",
                None,
                &[],
                false,
            ),
            (
                b"Dear all,\nplease find attached\n",
                "its first line `Dear all,` is not a header field",
                None,
                &[],
                false,
            ),
            (
                b"x-sender: a@x.com\nx-receiver: b@y.com\nhello\n",
                "line 3 `hello` is not a header field",
                None,
                &[],
                false,
            ),
            (
                b"\nFrom: a@x.com\nTo: b@y.com\n",
                "it has no header fields",
                None,
                &[],
                false,
            ),
            (
                b"From: scan@x.com\nSubject: scan\n\nbody",
                "no recipients: no x-receiver line and no To, Cc or Bcc address",
                Some("scan@x.com"),
                &[],
                true,
            ),
            (
                b"To: r@y.com\nSubject: s\n",
                "no sender: no x-sender line and no address in From",
                None,
                &["r@y.com"],
                true,
            ),
            (
                b"Subject: s\n",
                "no sender: no x-sender line and no address in From (or Sender); no recipients",
                None,
                &[],
                true,
            ),
            (
                b"From: a@x.com\nTo: Bob, r@y.com\n",
                "To: `Bob` is not an address: it has no `@domain`",
                Some("a@x.com"),
                &[],
                true,
            ),
            (
                b"From: a@x.com\nTo: r@y.com, x@-bad-.com\n",
                "To: `x@-bad-.com` is not a valid address",
                Some("a@x.com"),
                &["r@y.com"],
                true,
            ),
            (
                b"From: John Doe john@x.com\nTo: r@y.com\n",
                "From: `John Doe john@x.com` is not an address",
                None,
                &["r@y.com"],
                true,
            ),
            (
                b"From: a@x.\xff.com\nTo: r@y.com\n",
                "is not a valid address",
                None,
                &["r@y.com"],
                true,
            ),
            (
                b"x-sender: a@x.com\nx-sender: b@x.com\nx-receiver: r@y.com\nSubject: s\n",
                "more than one x-sender line",
                Some("b@x.com"),
                &["r@y.com"],
                true,
            ),
            (
                b"x-sender: a@x.com\nx-receiver:\nSubject: s\n",
                "an x-receiver line has no address",
                Some("a@x.com"),
                &[],
                true,
            ),
            (
                b"x-sender: a@x.com, b@x.com\nx-receiver: r@y.com\nSubject: s\n",
                "has more than one address",
                Some("a@x.com"),
                &["r@y.com"],
                true,
            ),
        ];
        for (file, reason, sender, recipients, kept) in cases {
            let rejected = parse_pickup(file).expect_err(&String::from_utf8_lossy(file));
            assert!(
                rejected.reason.contains(reason),
                "{:?}: {}",
                String::from_utf8_lossy(file),
                rejected.reason
            );
            assert_eq!(rejected.sender.as_deref(), *sender, "{rejected:?}");
            assert_eq!(rejected.recipients, *recipients, "{rejected:?}");
            assert_eq!(rejected.content.is_some(), *kept, "{rejected:?}");
        }
    }

    #[test]
    fn missing_date_and_message_id_are_added_at_the_top() {
        let mut m = ok(SEED);
        assert!(!m.has_date && !m.has_message_id);
        m.add_missing_headers("Mon, 1 Dec 2025 10:00:00 +0000", "<1@relay>");
        assert_eq!(
            content(&m),
            format!("Date: Mon, 1 Dec 2025 10:00:00 +0000\r\nMessage-ID: <1@relay>\r\n{SEED_CRLF}")
        );
        let mut m = ok(
            "Date: Sun, 30 Nov 2025 09:00:00 +0100\nmessage-id: <x@y>\nFrom: a@x.com\nTo: r@y.com\n",
        );
        assert!(m.has_date && m.has_message_id);
        let before = m.content.clone();
        m.add_missing_headers("later", "<2@relay>");
        assert_eq!(m.content, before);
    }

    #[test]
    fn header_fields_are_recognised_by_their_name() {
        let cases: &[(&str, Option<(&str, &str)>)] = &[
            ("from:a@x.com", Some(("from", "a@x.com"))),
            (
                "Subject : obsolete space",
                Some(("Subject", " obsolete space")),
            ),
            ("X-Mailer:", Some(("X-Mailer", ""))),
            ("this is a test.", None),
            ("Hello world: body", None),
            (": no name", None),
            ("  Folded: continuation", None),
        ];
        for (line, want) in cases {
            let got = field(line.as_bytes()).map(|(n, v)| {
                (
                    std::str::from_utf8(n).unwrap(),
                    std::str::from_utf8(v).unwrap(),
                )
            });
            assert_eq!(got, *want, "{line:?}");
        }
    }
}
